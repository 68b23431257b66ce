"""Tests of `sfperf pack`: a packed submission runs without sfperf."""

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from sfperf import cli
from sfperf.api import standin
from sfperf.submission_tools import check
from sfperf.submission_tools import pack as pack_module
from sfperf.submission_tools.common import locate
from sfperf.submission_tools.pack import (
  PackCheckError,
  PackError,
  pack_submission,
)
from tests.submission_tools.test_check import _module

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SELF_TUNING = os.path.join(REPO, 'submissions/self_tuning/schedule_free_adamw')
EXTERNAL = os.path.join(REPO, 'submissions/external_tuning/schedule_free_adamw')

# Runs in a fresh interpreter (-I -S: no site, no .pth files, so not even
# the editable install makes sfperf importable); its sys.path is set below.
_RUN_PACKED = """
import importlib
import importlib.util
import sys

sys.path[:0] = {paths!r}
assert importlib.util.find_spec('sfperf') is None, 'sfperf is importable'
assert importlib.util.find_spec('submissions') is None

import numpy as np
import torch

from algoperf import spec

submission = importlib.import_module('{name}.submission')


class TinyWorkload:
  step_hint = 100
  target_metric_name = 'accuracy'

  def model_fn(
    self,
    params,
    augmented_and_preprocessed_input_batch,
    model_state,
    mode,
    rng,
    update_batch_norm,
  ):
    assert mode is spec.ForwardPassMode.TRAIN
    return params(augmented_and_preprocessed_input_batch['inputs']), None

  def loss_fn(self, label_batch, logits_batch, mask_batch, label_smoothing):
    per_example = torch.nn.functional.cross_entropy(
      logits_batch,
      label_batch,
      reduction='none',
      label_smoothing=label_smoothing,
    )
    return {{
      'summed': per_example.sum(),
      'n_valid_examples': torch.tensor(len(per_example)),
      'per_example': per_example,
    }}


torch.manual_seed(0)
workload = TinyWorkload()
model = torch.nn.Linear(4, 3)
before = [p.detach().clone() for p in model.parameters()]
batch_size = submission.get_batch_size('ogbg')
assert isinstance(batch_size, int) and batch_size > 0
try:
  submission.get_batch_size('not_a_workload')
  raise AssertionError('no ValueError for an unknown workload')
except ValueError:
  pass

rng = np.zeros(2, dtype=np.int64)
state = submission.init_optimizer_state(workload, model, None, None, rng)
model_state = None
for step in range(3):
  batch = {{'inputs': torch.randn(8, 4), 'targets': torch.randint(0, 3, (8,))}}
  state, model, model_state = submission.update_params(
    workload=workload,
    current_param_container=model,
    current_params_types=None,
    model_state=model_state,
    hyperparameters=None,
    batch=batch,
    loss_type=spec.LossType.SOFTMAX_CROSS_ENTROPY,
    optimizer_state=state,
    eval_results=[],
    global_step=step,
    rng=rng,
  )
change = max(
  (param.detach() - old).abs().max().item()
  for param, old in zip(model.parameters(), before)
)
assert change > 0, 'parameters did not change'
assert not any(name.split('.')[0] == 'sfperf' for name in sys.modules)
# The one-pass CPU kernel was built from the packed copy of its source.
assert sys.modules['{name}.cpu_kernel'].load_kernel(
  sys.modules['{name}.schedule_free_v1']._reference_step
) is not None
assert sys.modules['{name}.native_build'].C_SOURCE.parent.name == '{name}'
print('PACKED-OK', batch_size, change)
"""


def _fake_algoperf(tmp_path):
  """A stand-in `algoperf` package whose spec is the stand-in's source."""
  package = tmp_path / 'fake' / 'algoperf'
  package.mkdir(parents=True)
  (package / '__init__.py').write_text('')
  with open(standin.__file__, encoding='utf-8') as handle:
    (package / 'spec.py').write_text(handle.read())
  return package.parent


def _imports(path):
  with open(path, encoding='utf-8') as handle:
    tree = ast.parse(handle.read())
  names = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.level == 0:
      names.add(node.module)
  return names


def test_packed_self_tuning_entry_runs_without_sfperf(tmp_path, capsys):
  outdir = tmp_path / 'out'

  code = cli.main(['sfperf', 'pack', SELF_TUNING, str(outdir)])

  assert code == 0, capsys.readouterr()
  folder = outdir / 'submissions' / 'self_tuning' / 'schedule_free_adamw'
  files = sorted(os.listdir(folder))
  assert files == [
    '__init__.py',
    'cpu_kernel.py',
    'divergence_reset.py',
    'entry_2024.py',
    'foreach.py',
    'native_build.py',
    'requirements.txt',
    'schedule_free_v1.py',
    'schedule_free_v1_cpu.c',
    'submission.py',
    'submission_info.yml',
    'submission_utils.py',
    'torch_submission_utils.py',
  ]
  for file_name in files:
    if file_name.endswith('.py'):
      assert not any(
        name.split('.')[0] == 'sfperf' for name in _imports(folder / file_name)
      ), file_name
  assert 'algoperf' in _imports(folder / 'submission.py')

  paths = [
    str(_fake_algoperf(tmp_path)),
    str(folder.parent),
    sysconfig.get_paths()['purelib'],
  ]
  script = _RUN_PACKED.format(paths=paths, name='schedule_free_adamw')
  completed = subprocess.run(
    [sys.executable, '-I', '-S', '-c', script],
    capture_output=True,
    text=True,
    timeout=120,
    cwd=tmp_path,
  )
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert 'PACKED-OK 512' in completed.stdout

  code = cli.main(['sfperf', 'check', str(folder)])
  out = capsys.readouterr().out
  assert code == 0, out
  assert 'compatible with v0.6: yes' in out


def test_submission_info_and_requirements(tmp_path):
  result = pack_submission(
    locate(SELF_TUNING),
    str(tmp_path / 'out'),
    info={'authors': 'Ada, Grace', 'submission_name': 'SF AdamW (sfperf)'},
  )

  folder = tmp_path / 'out' / 'submissions' / 'self_tuning'
  info = (folder / 'schedule_free_adamw' / 'submission_info.yml').read_text()
  fields = {
    line.split(':', 1)[0]: line.split(':', 1)[1].split('  #')[0].strip()
    for line in info.splitlines()
  }
  assert fields['authors'] == '"Ada, Grace"'
  assert fields['submission_name'] == '"SF AdamW (sfperf)"'
  assert fields['ruleset'] == '"self-tuning"'
  assert fields['framework'] == '"PyTorch"'
  assert fields['submission_folder'] == (
    '"submissions/self_tuning/schedule_free_adamw"'
  )
  assert 'affiliations: ""  # TODO' in info
  assert any('affiliations' in todo for todo in result.todos)
  assert not any('authors' in todo for todo in result.todos)
  requirements = folder / 'schedule_free_adamw' / 'requirements.txt'
  lines = requirements.read_text().splitlines()
  assert [line for line in lines if not line.startswith('#')] == []
  assert any('torch' in line and line.startswith('#') for line in lines)
  assert (tmp_path / 'out' / 'PULL_REQUEST_BODY.md').is_file()


def test_external_v05_pack(tmp_path):
  result = pack_submission(locate(EXTERNAL), str(tmp_path / 'out'), api='v0.5')

  folder = tmp_path / 'out' / 'submissions' / 'external_tuning'
  folder = folder / 'schedule_free_adamw'
  with open(
    os.path.join(REPO, 'tuning_search_spaces/schedule_free_adamw_external.json')
  ) as handle:
    expected = json.load(handle)
  assert json.loads((folder / 'tuning_search_space.json').read_text()) == (
    expected
  )
  source = (folder / 'submission.py').read_text()
  assert 'from algorithmic_efficiency import spec' in source
  assert 'from .schedule_free_v1 import ScheduleFreeAdamWV1' in source
  assert result.vendored == (
    'sfperf.entry_2024',
    'sfperf.optim.cpu_kernel',
    'sfperf.optim.foreach',
    'sfperf.optim.native_build',
    'sfperf.optim.schedule_free_v1',
    'sfperf.submission_utils',
    'sfperf.torch_submission_utils',
  )
  assert 'ruleset: "external"' in (folder / 'submission_info.yml').read_text()
  assert 'schedule_free_v1_cpu.c' in result.files

  report = check.check_submission(locate(str(folder)))
  assert report.target == 'v0.5'
  assert report.ok, report.lines()


def test_existing_outdir_is_moved_aside_only_with_overwrite(tmp_path):
  outdir = tmp_path / 'out'
  outdir.mkdir()
  (outdir / 'keep.txt').write_text('mine')

  with pytest.raises(PackError, match='--overwrite'):
    pack_submission(locate(SELF_TUNING), str(outdir))
  assert os.listdir(outdir) == ['keep.txt']

  result = pack_submission(locate(SELF_TUNING), str(outdir), overwrite=True)

  assert (outdir / 'submissions').is_dir()
  assert (outdir / 'keep.txt').exists() is False
  with open(os.path.join(result.moved_aside, 'keep.txt')) as handle:
    assert handle.read() == 'mine'


def _tmp_submission(tmp_path, source):
  folder = tmp_path / 'src' / 'self_tuning' / 'variant'
  folder.mkdir(parents=True)
  (folder / 'submission.py').write_text(textwrap.dedent(source))
  return locate(str(folder))


@pytest.mark.parametrize(
  'source, message',
  [
    ('from sfperf.api import API_SOURCE\n', 'only `from sfperf.api import'),
    ('import sfperf.divergence_reset\n', 'cannot be vendored'),
    ('from sfperf.catalog import load_catalog\n', 'uses __file__'),
    ('from sfperf.api import standin\n', 'has an upstream equivalent'),
  ],
)
def test_non_vendorable_imports_fail_clearly(tmp_path, source, message):
  located = _tmp_submission(tmp_path, source)

  with pytest.raises(PackError, match=message):
    pack_submission(located, str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


def test_third_party_imports_are_pinned(tmp_path):
  located = _tmp_submission(
    tmp_path,
    """
    import schedulefree
    import torch

    from sfperf.optim import schedule_free_v1 as sf
    """,
  )

  # Imports only, no API functions: nothing to check.
  result = pack_submission(located, str(tmp_path / 'out'), verify=False)

  version = importlib.metadata.version('schedulefree')
  assert result.requirements == (f'schedulefree=={version}',)
  folder = tmp_path / 'out' / 'submissions' / 'self_tuning' / 'variant'
  assert 'from . import schedule_free_v1 as sf' in (
    (folder / 'submission.py').read_text()
  )


# -- A failed pack leaves nothing behind --------------------------------------


def _pack_cli(capsys, located, outdir, *flags):
  code = cli.main(['sfperf', 'pack', located.folder, str(outdir), *flags])
  captured = capsys.readouterr()
  return code, captured.out, captured.err


def _one_line(err):
  lines = err.strip().splitlines()
  assert len(lines) == 1, lines
  assert 'Traceback' not in err
  return lines[0]


def _only(parent, *names):
  """The parent holds exactly `names`: no scratch folder was left behind."""
  assert sorted(os.listdir(parent)) == sorted(names)


def test_syntax_error_is_one_line(tmp_path, capsys):
  located = _tmp_submission(tmp_path, _module() + 'def broken(:\n')

  code, out, err = _pack_cli(capsys, located, tmp_path / 'out')

  assert code == 2
  line = _one_line(err)
  assert 'submission.py:' in line and 'SyntaxError' in line
  assert out == ''
  _only(tmp_path, 'src')


@pytest.mark.parametrize(
  'source, message',
  [
    (
      'import sys\n' + _module() + 'sys.exit(7)\n',
      'module called sys.exit(7) at import',
    ),
    (_module(data=''), 'data_selection: missing'),
    (
      _module() + 'raise RuntimeError("needs a GPU")\n',
      'RuntimeError: needs a GPU',
    ),
  ],
  ids=['sys_exit', 'missing_data_selection', 'raises'],
)
def test_failed_check_of_packed_copy_writes_nothing(
  tmp_path, capsys, source, message
):
  located = _tmp_submission(tmp_path, source)

  code, _, err = _pack_cli(capsys, located, tmp_path / 'out')

  assert code == 2
  line = _one_line(err)
  assert message in line
  assert 'fails sfperf check for v0.6' in line
  assert '.out.' not in line  # the scratch folder is not named
  _only(tmp_path, 'src')
  with pytest.raises(PackCheckError) as raised:
    pack_submission(located, str(tmp_path / 'out'))
  assert not raised.value.report.ok


def test_failed_overwrite_keeps_the_old_outdir(tmp_path, capsys):
  outdir = tmp_path / 'out'
  outdir.mkdir()
  (outdir / 'keep.txt').write_text('mine')
  located = _tmp_submission(tmp_path, _module(data=''))

  code, _, err = _pack_cli(capsys, located, outdir, '--overwrite')

  assert code == 2
  assert 'data_selection' in _one_line(err)
  assert os.listdir(outdir) == ['keep.txt']
  _only(tmp_path, 'src', 'out')


def test_fixed_submission_packs_without_overwrite(tmp_path, capsys):
  located = _tmp_submission(tmp_path, _module(data=''))
  assert _pack_cli(capsys, located, tmp_path / 'out')[0] == 2

  with open(located.module_path, 'w', encoding='utf-8') as handle:
    handle.write(_module())
  code, out, err = _pack_cli(capsys, located, tmp_path / 'out')

  assert code == 0, err
  assert 'compatible with v0.6: yes' in out
  _only(tmp_path, 'src', 'out')


def test_outdir_gets_the_umask_mode(tmp_path):
  previous = os.umask(0o022)
  try:
    result = pack_submission(
      _tmp_submission(tmp_path, _module()), str(tmp_path / 'out')
    )
  finally:
    os.umask(previous)

  def mode(path):
    return os.stat(path).st_mode & 0o777

  assert mode(result.outdir) == 0o755
  assert mode(result.submission_folder) == 0o755
  assert mode(os.path.join(result.submission_folder, 'submission.py')) == (
    0o644
  )
  assert '__pycache__' not in os.listdir(result.submission_folder)


@pytest.mark.parametrize(
  'assignment',
  [
    "VENDORED_FILES = ['kernel.c']",  # a list
    "VENDORED_FILES = ('sub/kernel.c',)",  # a folder
    "VENDORED_FILES = ('helper.py',)",  # a module, not a data file
    'VENDORED_FILES = (NAME,)',  # not a literal
  ],
)
def test_malformed_vendored_files_fail_clearly(assignment):
  tree = ast.parse(assignment + '\n')
  with pytest.raises(PackError, match='must be a tuple of plain file names'):
    pack_module._declared_files(tree, 'module.py')


def test_a_vendored_file_that_is_missing_fails(tmp_path, monkeypatch):
  module = tmp_path / 'reader.py'
  module.write_text("VENDORED_FILES = ('table.bin',)\n")
  monkeypatch.setattr(pack_module, '_module_file', lambda name: str(module))
  with pytest.raises(PackError, match='names table.bin, which is not beside'):
    pack_module.vendored_files(['sfperf.reader'])
  (tmp_path / 'table.bin').write_bytes(b'\0')
  assert pack_module.vendored_files(['sfperf.reader']) == {
    'table.bin': str(tmp_path / 'table.bin')
  }


_RUN_PACKED_JAX_KERNEL = """
import importlib
import importlib.util
import sys

sys.path[:0] = {paths!r}
assert importlib.util.find_spec('sfperf') is None, 'sfperf is importable'

import jax
import jax.numpy as jnp

optimizer_module = importlib.import_module('{name}.schedule_free_jax')
kernel_module = sys.modules['{name}.xla_kernel']
optimizer = optimizer_module.schedule_free_adamw_v1(learning_rate=0.1)
params = {{'w': jnp.ones(70_000)}}  # above the kernel's minimum size
lowered = jax.jit(optimizer.update).lower(
  params, optimizer.init(params), params
)
assert kernel_module.TARGET_NAME in lowered.as_text()
assert kernel_module.SOURCE.parent.name == '{name}'
assert not any(name.split('.')[0] == 'sfperf' for name in sys.modules)
print('PACKED-JAX-KERNEL-OK')
"""


def test_packed_jax_entry_builds_its_kernel_from_the_packed_sources(tmp_path):
  source = os.path.join(REPO, 'submissions/self_tuning/schedule_free_adamw_jax')
  result = pack_submission(locate(source), str(tmp_path / 'out'))
  assert {'schedule_free_v1_cpu.c', 'schedule_free_v1_xla.cc'} <= set(
    result.files
  )
  assert 'sfperf.optim.cpu_kernel' not in result.vendored  # no torch import

  folder = tmp_path / 'out' / 'submissions' / 'self_tuning'
  script = _RUN_PACKED_JAX_KERNEL.format(
    paths=[str(folder), sysconfig.get_paths()['purelib']],
    name='schedule_free_adamw_jax',
  )
  completed = subprocess.run(
    [sys.executable, '-I', '-S', '-c', script],
    capture_output=True,
    text=True,
    timeout=180,
    cwd=tmp_path,
    env={**os.environ, 'SFPERF_KERNEL_CACHE': str(tmp_path / 'cache')},
  )
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert 'PACKED-JAX-KERNEL-OK' in completed.stdout
  assert list((tmp_path / 'cache').glob('schedule_free_v1_xla-*.so'))


@pytest.mark.parametrize(
  ('folder', 'shown'),
  [
    ('schedule_free_adamw', 'Schedule Free AdamW'),
    ('schedule_free_adamw_jax', 'Schedule Free AdamW JAX'),
    ('nadamw_baseline', 'NAdamW Baseline'),
    ('my__variant2', 'My Variant2'),
  ],
)
def test_display_name_keeps_the_usual_spellings(folder, shown):
  assert pack_module.display_name(folder) == shown
