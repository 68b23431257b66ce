"""Tests of `sfperf check`: every repository submission, and broken modules."""

import ast
import glob
import os
import textwrap

import pytest

from sfperf import cli
from sfperf.submission_tools import check
from sfperf.submission_tools.common import locate

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SUBMISSIONS = sorted(
  glob.glob(
    os.path.join(REPO, 'submissions', '**', 'submission.py'), recursive=True
  )
)


def _uses_v06_hooks(path: str) -> bool:
  """Whether the module defines prepare_for_eval or takes train_state."""
  with open(path, encoding='utf-8') as handle:
    tree = ast.parse(handle.read())
  for node in tree.body:
    if isinstance(node, ast.FunctionDef):
      if node.name == 'prepare_for_eval':
        return True
      names = [argument.arg for argument in node.args.args]
      if node.name == 'update_params' and 'train_state' in names:
        return True
  return False


def test_every_submission_is_found():
  assert len(SUBMISSIONS) >= 5


@pytest.mark.parametrize(
  'path', SUBMISSIONS, ids=lambda path: os.path.relpath(path, REPO)
)
def test_repository_submission_passes(path):
  report = check.check_submission(locate(path))

  assert report.import_error is None, report.import_error
  assert report.compatible('v0.6'), report.lines()
  assert report.ok
  # Modules with v0.6 hooks are v0.6-only, a finding rather than a failure;
  # all others must also fit v0.5.
  assert report.compatible('v0.5') == (not _uses_v06_hooks(path)), (
    report.lines()
  )
  both = [
    finding
    for finding in report.findings
    if finding.status == check.FAIL and finding.versions == check.BOTH
  ]
  assert not both


def test_cli_prints_verdicts_and_exits_zero(capsys):
  path = os.path.join(REPO, 'submissions/self_tuning/nadamw_baseline')

  code = cli.main(['sfperf', 'check', path])

  out = capsys.readouterr().out
  assert code == 0
  assert 'compatible with v0.6: yes' in out
  assert 'compatible with v0.5: no (' in out
  assert 'prepare_for_eval' in out


# -- Broken modules ---------------------------------------------------------

_GET_BATCH_SIZE = """
def get_batch_size(workload_name):
  if workload_name == 'sfperf_check_no_such_workload':
    raise ValueError(workload_name)
  return 8
"""
_INIT = """
def init_optimizer_state(
    workload, model_params, model_state, hyperparameters, rng):
  return {}
"""
_UPDATE = """
def update_params(
    workload, current_param_container, current_params_types, model_state,
    hyperparameters, batch, loss_type, optimizer_state, eval_results,
    global_step, rng{extra}):
  return optimizer_state, current_param_container, model_state
"""
_DATA = """
def data_selection(
    workload, input_queue, optimizer_state, current_param_container,
    model_state, hyperparameters, global_step, rng):
  return next(input_queue)
"""
_PREPARE = """
def prepare_for_eval(
    workload, current_param_container, current_params_types, model_state,
    hyperparameters, loss_type, optimizer_state, eval_results, global_step,
    rng):
  return optimizer_state, current_param_container, model_state
"""
_HEADER = 'from sfperf.api import spec\n'


def _module(
  *,
  update_extra='',
  update=None,
  data=_DATA,
  get_batch_size=_GET_BATCH_SIZE,
  prepare='',
):
  update = update or _UPDATE.format(extra=update_extra)
  return _HEADER + get_batch_size + _INIT + update + data + prepare


def _write(tmp_path, source, ruleset='self_tuning', name='broken'):
  folder = tmp_path / ruleset / name
  folder.mkdir(parents=True)
  (folder / 'submission.py').write_text(textwrap.dedent(source))
  return folder


def _run(capsys, folder, *flags):
  code = cli.main(['sfperf', 'check', str(folder), *flags])
  return code, capsys.readouterr().out


def test_valid_module_passes_both(tmp_path, capsys):
  code, out = _run(capsys, _write(tmp_path, _module()))

  assert code == 0
  assert 'compatible with v0.5: yes' in out
  assert 'compatible with v0.6: yes' in out
  assert 'FAIL' not in out


def test_missing_function_fails(tmp_path, capsys):
  code, out = _run(capsys, _write(tmp_path, _module(data='')))

  assert code == 2
  assert 'FAIL data_selection: missing' in out
  assert 'compatible with v0.5: no' in out
  assert 'compatible with v0.6: no' in out


def test_wrong_argument_order_fails(tmp_path, capsys):
  swapped = _UPDATE.format(extra='').replace(
    'hyperparameters, batch,', 'batch, hyperparameters,'
  )

  code, out = _run(capsys, _write(tmp_path, _module(update=swapped)))

  assert code == 2
  assert "parameter 5 is 'batch', the API has 'hyperparameters'" in out
  assert 'compatible with v0.6: no' in out


def test_train_state_without_default_fails_v06(tmp_path, capsys):
  code, out = _run(
    capsys, _write(tmp_path, _module(update_extra=', train_state'))
  )

  assert code == 2
  assert 'train_state has no default' in out
  assert 'compatible with v0.6: no' in out
  assert 'compatible with v0.5: no' in out


def test_train_state_with_default_is_v06_only(tmp_path, capsys):
  code, out = _run(
    capsys, _write(tmp_path, _module(update_extra=', train_state=None'))
  )

  assert code == 0
  assert 'compatible with v0.6: yes' in out
  assert 'compatible with v0.5: no (update_params: takes train_state' in out


def test_prepare_for_eval_under_v05_fails(tmp_path, capsys):
  folder = _write(tmp_path, _module(prepare=_PREPARE))

  code_v05, out = _run(capsys, folder, '--api', 'v0.5')
  code_v06, _ = _run(capsys, folder)

  assert code_v05 == 2
  assert 'FAIL [v0.5] prepare_for_eval' in out
  assert 'compatible with v0.6: yes' in out
  assert code_v06 == 0


def test_prepare_for_eval_with_batch_fails_v06(tmp_path, capsys):
  wrong = _PREPARE.replace(
    'hyperparameters, loss_type', 'hyperparameters, batch, loss_type'
  )

  code, out = _run(capsys, _write(tmp_path, _module(prepare=wrong)))

  assert code == 2
  assert "parameter 6 is 'batch'" in out


def test_get_batch_size_key_error_fails(tmp_path, capsys):
  source = _module(
    get_batch_size='\ndef get_batch_size(workload_name):\n'
    '  return {"wmt": 8}[workload_name]\n'
  )

  code, out = _run(capsys, _write(tmp_path, source))

  assert code == 2
  assert 'raised KeyError' in out


def test_get_batch_size_value_error_for_base_workload_warns(tmp_path, capsys):
  source = _module(
    get_batch_size='\ndef get_batch_size(workload_name):\n'
    '  if workload_name != "wmt":\n'
    '    raise ValueError(workload_name)\n'
    '  return 8\n'
  )

  code, out = _run(capsys, _write(tmp_path, source))

  assert code == 0
  assert 'WARN get_batch_size: raises ValueError for criteo1tb' in out


def test_import_error_is_one_line(tmp_path, capsys):
  folder = _write(tmp_path, 'import sfperf_no_such_module\n' + _module())

  code, out = _run(capsys, folder)

  assert code == 2
  assert out.count('\n') == 1
  assert out.startswith('FAIL import:')
  assert 'sfperf_no_such_module' in out


@pytest.mark.parametrize(
  'tail, message',
  [
    ('sys.exit(7)', 'module called sys.exit(7) at import'),
    ('raise SystemExit("bye")', "module called sys.exit('bye') at import"),
    (
      'class Stop(BaseException):\n  pass\nraise Stop("no")',
      'does not import: Stop: no',
    ),
  ],
)
def test_exit_at_import_is_one_fail_line(tmp_path, capsys, tail, message):
  folder = _write(tmp_path, 'import sys\n' + _module() + tail + '\n')

  code, out = _run(capsys, folder)

  assert code == 2
  assert out.count('\n') == 1
  assert out.startswith('FAIL import:')
  assert message in out


def test_check_writes_no_bytecode(tmp_path, capsys, monkeypatch):
  monkeypatch.setattr('sys.dont_write_bytecode', False)
  folder = _write(tmp_path, _module())

  assert _run(capsys, folder)[0] == 0
  assert sorted(os.listdir(folder)) == ['submission.py']


def test_self_tuning_with_search_space_fails(tmp_path, capsys):
  folder = _write(tmp_path, _module())
  (folder / 'tuning_search_space.json').write_text('[{"learning_rate": 1}]')

  code, out = _run(capsys, folder)

  assert code == 2
  assert 'refuses a search space' in out


def test_external_needs_a_loadable_search_space(tmp_path, capsys):
  folder = _write(tmp_path, _module(), ruleset='external_tuning')

  code_missing, out_missing = _run(capsys, folder)
  (folder / 'tuning_search_space.json').write_text('[]')
  code_empty, out_empty = _run(capsys, folder)
  (folder / 'tuning_search_space.json').write_text('[{"learning_rate": 1}]')
  code_good, out_good = _run(capsys, folder)

  assert code_missing == 2
  assert 'none found' in out_missing
  assert code_empty == 2
  assert 'FAIL search space' in out_empty
  assert code_good == 0
  assert 'list of 1 points' in out_good


def test_missing_path_is_one_line(tmp_path, capsys):
  code = cli.main(['sfperf', 'check', str(tmp_path / 'nothing')])

  assert code == 2
  assert 'no submission.py there' in capsys.readouterr().err
