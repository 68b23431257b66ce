"""`sfperf run --framework=jax`: the JAX entries on the JAX digits proxy.

Runs are short (tens to a hundred steps); the first step of each run
compiles the jitted train step, which dominates their time. The exact-resume
tests use the fake clock of `conftest.py`, so where evals fall does not
depend on the machine.
"""

import csv
import json

import jax
import numpy as np
import pytest

from sfperf import cli as sfperf_cli
from sfperf.api import spec
from sfperf.runner import cli, jax_prng, jax_trial_checkpoint, run, training
from tests.runner.conftest import BASELINE
from workloads.digits.workload_jax import DigitsJaxWorkload

SELF_TUNING = 'submissions/self_tuning/schedule_free_adamw_jax/submission.py'
EXTERNAL = 'submissions/external_tuning/schedule_free_adamw_jax/submission.py'
SEARCH_SPACE = 'tuning_search_spaces/schedule_free_adamw_external.json'


def _rows(path):
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


def _state(trial_dir):
  """The final checkpoint's arrays and runner fields."""
  path = jax_trial_checkpoint.latest_checkpoint(str(trial_dir))
  payload = jax_trial_checkpoint.read_checkpoint(path)
  with np.load(f'{path}/{jax_trial_checkpoint.STATE_FILE}') as saved:
    arrays = {key: saved[key] for key in saved.files}
  return payload, arrays


@pytest.fixture
def jax_timing(monkeypatch):
  """Sets the JAX digits budget and eval period for one test."""

  def set_timing(budget_sec, eval_period_sec):
    monkeypatch.setattr(
      DigitsJaxWorkload,
      'max_allowed_runtime_sec',
      property(lambda s: budget_sec),
    )
    monkeypatch.setattr(
      DigitsJaxWorkload,
      'eval_period_time_sec',
      property(lambda s: eval_period_sec),
    )

  return set_timing


def test_prng_keys_are_jax_keys():
  assert np.array_equal(jax_prng.prng_key(7), jax.random.PRNGKey(7))
  assert np.array_equal(
    jax_prng.prng_key(2**40 + 3), np.array([2**8, 3], np.uint32)
  )
  key = jax_prng.prng_key(0)
  assert np.array_equal(
    jax_prng.split(jax_prng.fold_in(key, 5), 4),
    jax.random.split(jax.random.fold_in(key, 5), 4),
  )


def test_workload_matches_the_pytorch_data():
  from workloads.digits import DigitsWorkload

  jax_workload, torch_workload = DigitsJaxWorkload(), DigitsWorkload()
  key = jax_prng.prng_key(3)
  jax_batch = next(jax_workload._build_input_queue(key, 'train', None, 16))
  torch_batch = next(torch_workload._build_input_queue(key, 'train', None, 16))
  assert np.array_equal(
    np.asarray(jax_batch['inputs'])[..., 0],
    torch_batch['inputs'].numpy()[:, 0],
  )
  assert np.array_equal(jax_batch['targets'], torch_batch['targets'].numpy())
  assert jax_batch['inputs'].sharding.spec == jax.sharding.PartitionSpec(
    'batch'
  )


def test_batch_norm_statistics_move_only_when_asked():
  workload = DigitsJaxWorkload()
  params, model_state = workload.init_model_fn(jax_prng.prng_key(0))
  batch = next(
    workload._build_input_queue(jax_prng.prng_key(1), 'train', None, 16)
  )
  train_mode = spec.ForwardPassMode.TRAIN
  train = workload.model_fn(
    params, batch, model_state, train_mode, None, update_batch_norm=True
  )
  frozen = workload.model_fn(
    params, batch, model_state, train_mode, None, update_batch_norm=False
  )
  assert not np.array_equal(train[1]['bn1']['mean'], model_state['bn1']['mean'])
  assert frozen[1] is model_state
  assert np.array_equal(train[0], frozen[0])  # both use batch statistics


def test_self_tuning_run_writes_official_files_and_scores(tmp_path, capsys):
  logs = tmp_path / 'logs'
  argv = [
    'sfperf run',
    f'--submission_path={SELF_TUNING}',
    '--workload=digits',
    '--framework=jax',
    '--tuning_ruleset=self',
    f'--experiment_dir={logs / "sf_jax"}',
    '--experiment_name=study_0',
    '--rng_seed=0',
    '--max_global_steps=100',
  ]
  assert cli.main(argv) == 0
  trial_dir = logs / 'sf_jax' / 'study_0' / 'digits_jax' / 'trial_1'
  meta = json.loads((trial_dir / 'meta_data_0.json').read_text())
  assert meta['rng_seed'] == 0 and meta['workload.step_hint'] == 4000
  assert meta['jax_version'] == jax.__version__
  flags = json.loads((trial_dir / 'flags_0.json').read_text())
  assert flags['framework'] == 'jax'
  evals = _rows(trial_dir / 'eval_measurements.csv')
  assert evals[0]['global_step'] == '1' and evals[-1]['global_step'] == '100'
  # 100 steps of the entry learn the digits well past chance.
  assert float(evals[-1]['validation/accuracy']) > 0.8
  assert _rows(trial_dir / 'measurements.csv')[-1]['score']
  assert (trial_dir / 'checkpoint_100' / 'state.npz').is_file()

  out = tmp_path / 'score'
  code = sfperf_cli.main(
    ['sfperf', 'score', str(logs), '--self-tuning', '--out', str(out)]
    + ['--bootstrap', '0']
  )
  assert code == 0
  (row,) = _rows(out / 'time_to_targets.csv')
  assert row['submission'] == 'sf_jax' and 'digits' in row
  (trial,) = _rows(out / 'trials.csv')
  assert trial['workload'] == 'digits' and '/digits_jax/' in trial['path']
  capsys.readouterr()


def test_external_entry_with_published_search_space(tmp_path):
  (result,) = run(
    EXTERNAL,
    'digits',
    framework='jax',
    experiment_dir=str(tmp_path),
    experiment_name='exp',
    tuning_search_space=SEARCH_SPACE,
    num_tuning_trials=1,
    rng_seed=0,
    max_global_steps=30,
  )
  trial_dir = tmp_path / 'exp' / 'digits_jax' / 'trial_1'
  hparams = json.loads((trial_dir / 'hparams.json').read_text())
  assert hparams['dropout_rate'] == 0.1 and result.global_step == 30
  assert result.eval_results[-1][1]['validation/accuracy'] > 0.5


def test_pytorch_submission_is_refused_before_any_directory(tmp_path, capsys):
  argv = [
    'sfperf run',
    f'--submission_path={BASELINE}',
    '--workload=digits',
    '--framework=jax',
    '--tuning_ruleset=self',
    f'--experiment_dir={tmp_path}',
    '--experiment_name=exp',
  ]
  assert cli.main(argv) == 2
  (line,) = capsys.readouterr().err.strip().splitlines()
  assert 'PyTorch submission' in line and '--framework=pytorch' in line
  assert not (tmp_path / 'exp').exists()


NUM_STEPS = 30
STOP_STEP = 12


@pytest.mark.parametrize(
  ('path', 'ruleset', 'space'),
  [
    (SELF_TUNING, 'self', None),
    # Dropout 0.1: the resumed run must also draw the same dropout masks.
    pytest.param(EXTERNAL, 'external', SEARCH_SPACE, marks=pytest.mark.slow),
  ],
)
def test_resume_equals_uninterrupted_bit_for_bit(
  tmp_path, fake_clock, jax_timing, path, ruleset, space
):
  # With the fake clock (one second a reading, about three a step here),
  # evals and checkpoints fall every few steps, the budget never ends a run.
  jax_timing(1e6, 10.0)

  def train(root, max_global_steps, resume=False):
    return run(
      path,
      'digits',
      framework='jax',
      experiment_dir=str(root),
      experiment_name='exp',
      tuning_ruleset=ruleset,
      tuning_search_space=space,
      rng_seed=0,
      max_global_steps=max_global_steps,
      resume_last_run=resume,
    )[0]

  whole = train(tmp_path / 'whole', NUM_STEPS)
  train(tmp_path / 'parts', STOP_STEP)
  resumed = train(tmp_path / 'parts', NUM_STEPS, resume=True)
  assert resumed.preemption_count == 1
  assert resumed.global_step == whole.global_step == NUM_STEPS

  trial = ('exp', 'digits_jax', 'trial_1')
  expected, expected_arrays = _state(tmp_path.joinpath('whole', *trial))
  actual, actual_arrays = _state(tmp_path.joinpath('parts', *trial))
  # Parameters, BatchNorm statistics and the whole optimizer state (z, the
  # bfloat16 v, x0, the settings and the entry's own entries), bit for bit.
  assert expected_arrays.keys() == actual_arrays.keys()
  for key, value in expected_arrays.items():
    assert np.array_equal(value, actual_arrays[key]), key
  assert np.array_equal(expected['rng'], actual['rng'])
  for field in (training.BATCHES_DRAWN_KEY, training.RNG_SEED_KEY):
    assert expected['extra'][field] == actual['extra'][field]


_STATE_FORM_SUBMISSION = """
from submissions.self_tuning.schedule_free_adamw_jax import submission as entry
from submissions.self_tuning.schedule_free_adamw_jax.submission import (
  data_selection, get_batch_size)


def _update_fn():  # stands for the official baselines' opt_update_fn
  return 'not saved'


def init_optimizer_state(*args, **kwargs):
  state, _ = entry.init_optimizer_state(*args, **kwargs)
  return {FORM}


def update_params(*args, optimizer_state, **kwargs):
  assert optimizer_state[1] is _update_fn, 'update function not handed back'
  optimizer_state = (optimizer_state[0], None)
  new_state, params, model_state = entry.update_params(
    *args, optimizer_state=optimizer_state, **kwargs
  )
  return (new_state[0], _update_fn), params, model_state
"""


def test_a_state_that_is_not_the_runner_pair_is_refused(tmp_path, capsys):
  path = tmp_path / 'dict_state.py'
  path.write_text(_STATE_FORM_SUBMISSION.replace('{FORM}', 'state'))
  argv = [
    'sfperf run',
    f'--submission_path={path}',
    '--workload=digits',
    '--framework=jax',
    '--tuning_ruleset=self',
    f'--experiment_dir={tmp_path}',
    '--experiment_name=exp',
    '--max_global_steps=2',
  ]
  assert cli.main(argv) == 1
  err = capsys.readouterr().err
  (line,) = [x for x in err.splitlines() if x.startswith('sfperf run:')]
  assert 'TypeError' in line and 'in init_optimizer_state' in line
  assert '(opt_state, opt_update_fn)' in line


def test_the_update_function_is_not_saved_and_is_handed_back(
  tmp_path, fake_clock, jax_timing
):
  jax_timing(1e6, 10.0)
  path = tmp_path / 'pair_state.py'
  path.write_text(
    _STATE_FORM_SUBMISSION.replace('{FORM}', '(state, _update_fn)')
  )

  def train(max_global_steps, resume=False):
    return run(
      str(path),
      'digits',
      framework='jax',
      experiment_dir=str(tmp_path),
      experiment_name='exp',
      tuning_ruleset='self',
      rng_seed=0,
      max_global_steps=max_global_steps,
      resume_last_run=resume,
    )[0]

  train(6)
  resumed = train(10, resume=True)  # update_params asserts the function
  assert resumed.preemption_count == 1 and resumed.global_step == 10
  _, arrays = _state(tmp_path / 'exp' / 'digits_jax' / 'trial_1')
  saved_structure = str(arrays['treedef'])
  assert 'max_checked_eval_step' in saved_structure  # the state is saved
  assert '_update_fn' not in saved_structure  # the function is not


def test_the_pair_may_be_a_list_but_its_state_holds_only_arrays():
  check = jax_trial_checkpoint.check_optimizer_state
  check([{'k': np.zeros(2)}, None])  # unpacks as the official runner does
  check(({'k': 1, 'name': 'adamw', 'lr': 0.5}, print))
  for bad in ({'k': 1}, ({'k': 1},), ({'k': 1}, None, None)):
    with pytest.raises(TypeError, match='not the pair'):
      check(bad)
  with pytest.raises(TypeError, match=r"opt_state\['fn'\] is a function"):
    check(({'k': np.zeros(2), 'fn': lambda x: x}, None))
