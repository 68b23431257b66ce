"""Failures of the submission's own code, hooks the rules never call, slices
of one experiment run as separate invocations, and the modes of the files a
trial writes."""

import json
import logging
import os

import pytest

from sfperf.runner import UsageError, checkpoint, cli, run
from sfperf.runner.training import SubmissionError
from tests.runner.conftest import BASELINE

CURRENT = 'submissions/self_tuning/schedule_free_adamw_current/submission.py'
EXTERNAL_SF = 'submissions/external_tuning/schedule_free_adamw/submission.py'

_RAISING_SUBMISSION = """
from submissions.self_tuning.nadamw_baseline import submission as baseline
from submissions.self_tuning.nadamw_baseline.submission import (
  data_selection, get_batch_size, init_optimizer_state)


def update_params(*args, global_step, **kwargs):
  if global_step == 1:
    raise ValueError('boom\\nsecond line')
  return baseline.update_params(*args, global_step=global_step, **kwargs)
"""


def _argv(tmp_path, *extra, submission=BASELINE):
  return [
    'sfperf run',
    f'--submission_path={submission}',
    '--workload=digits',
    f'--experiment_dir={tmp_path}',
    '--experiment_name=exp',
    '--max_global_steps=3',
    '--rng_seed=0',
    *extra,
  ]


def _error_line(capsys):
  """The command's own lines on stderr (absl may log there too): one."""
  err = capsys.readouterr().err
  assert 'Traceback' not in err
  lines = [line for line in err.splitlines() if line.startswith('sfperf run:')]
  assert len(lines) == 1, err
  return lines[0]


def test_exception_in_submission_is_one_line_and_keeps_the_trial(
  tmp_path, capsys
):
  path = tmp_path / 'raising.py'
  path.write_text(_RAISING_SUBMISSION)

  code = cli.main(
    _argv(tmp_path, '--tuning_ruleset=self', submission=str(path))
  )

  assert code == 1
  line = _error_line(capsys)
  trial = tmp_path / 'exp' / 'digits_pytorch' / 'trial_1'
  assert f'{path} raised ValueError: boom (in update_params at step 1)' in line
  assert f'the trial directory {trial} is kept for inspection' in line
  assert (trial / 'checkpoint_1').is_file()
  traceback_text = (trial / 'traceback_0.txt').read_text()
  assert 'Traceback' in traceback_text and 'second line' in traceback_text

  with pytest.raises(SubmissionError) as raised:
    run(
      str(path),
      'digits',
      experiment_dir=str(tmp_path),
      experiment_name='library',
      tuning_ruleset='self',
      rng_seed=0,
      max_global_steps=3,
    )
  assert raised.value.global_step == 1
  assert isinstance(raised.value.__cause__, ValueError)


def test_ctrl_c_in_submission_is_not_a_submission_error(tmp_path, monkeypatch):
  from submissions.self_tuning.nadamw_baseline import submission

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(submission, 'update_params', interrupted)
  with pytest.raises(KeyboardInterrupt):
    run(
      BASELINE,
      'digits',
      experiment_dir=str(tmp_path),
      experiment_name='exp',
      tuning_ruleset='self',
      rng_seed=0,
      max_global_steps=2,
    )


def test_v05_rules_warn_about_prepare_for_eval(tmp_path, capsys, caplog):
  argv = _argv(tmp_path, '--tuning_ruleset=self', '--benchmark=v0.5')

  with caplog.at_level(logging.WARNING):
    code = cli.main([*argv[:1], f'--submission_path={CURRENT}', *argv[2:]])

  assert code == 1
  warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
  assert any(
    'defines prepare_for_eval, which v0.5 rules never call' in r.getMessage()
    for r in warnings
  )
  assert any(
    'update_params takes train_state, which v0.5 rules never pass'
    in r.getMessage()
    for r in warnings
  )
  line = _error_line(capsys)
  assert 'raised RuntimeError: The eval at step 1 ran without ' in line
  assert '(in update_params at step 1)' in line


def test_v06_rules_do_not_warn(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    run(
      CURRENT,
      'digits',
      experiment_dir=str(tmp_path),
      experiment_name='exp',
      tuning_ruleset='self',
      rng_seed=0,
      max_global_steps=1,
      save_checkpoints=False,
    )
  assert 'never call' not in caplog.text


def test_missing_hyperparameter_names_it_and_the_search_space(tmp_path, capsys):
  space = tmp_path / 'space.json'
  space.write_text(json.dumps([{'lr': 0.001}]))

  code = cli.main(
    _argv(tmp_path, f'--tuning_search_space={space}', submission=EXTERNAL_SF)
  )

  assert code == 2
  line = _error_line(capsys)
  assert "reads hyperparameter 'learning_rate'" in line
  assert f'search space {space} does not give (it has lr)' in line
  assert 'rerun with --overwrite' in line


# -- Slices of one experiment ------------------------------------------------


def _run_slice(tmp_path, space, start, end, **kwargs):
  return run(
    BASELINE,
    'digits',
    experiment_dir=str(tmp_path),
    experiment_name='exp',
    tuning_search_space=str(space),
    num_tuning_trials=3,
    hparam_start_index=start,
    hparam_end_index=end,
    rng_seed=0,
    max_global_steps=1,
    save_checkpoints=False,
    **kwargs,
  )


def test_second_slice_joins_the_experiment(tmp_path):
  space = tmp_path / 'space.json'
  space.write_text(json.dumps([{'learning_rate': 0.1 * i} for i in (1, 2, 3)]))
  workload_dir = tmp_path / 'exp' / 'digits_pytorch'

  _run_slice(tmp_path, space, 0, 1)
  first = (workload_dir / 'trial_1' / 'measurements.csv').read_text()
  results = _run_slice(tmp_path, space, 1, None)

  assert [r.trial_index for r in results] == [2, 3]
  assert sorted(os.listdir(workload_dir)) == ['trial_1', 'trial_2', 'trial_3']
  assert (workload_dir / 'trial_1' / 'measurements.csv').read_text() == first

  # A slice that would write an existing trial is refused, nothing touched.
  with pytest.raises(UsageError, match='trial_2 already exists'):
    _run_slice(tmp_path, space, 1, 2)
  assert not (workload_dir / 'trial_2' / 'flags_1.json').exists()

  # Without a slice, an existing experiment still needs a flag.
  with pytest.raises(UsageError, match='--resume_last_run'):
    _run_slice(tmp_path, space, None, None)


def test_slice_of_another_submission_is_refused(tmp_path):
  space = tmp_path / 'space.json'
  space.write_text(json.dumps([{'learning_rate': 0.1}, {'learning_rate': 0.2}]))
  _run_slice(tmp_path, space, 0, 1)
  other = tmp_path / 'other.py'
  other.write_text(
    'from submissions.self_tuning.nadamw_baseline.submission import (\n'
    '  data_selection, get_batch_size, init_optimizer_state, update_params)\n'
  )

  with pytest.raises(UsageError, match='was trained by submission'):
    run(
      str(other),
      'digits',
      experiment_dir=str(tmp_path),
      experiment_name='exp',
      tuning_search_space=str(space),
      num_tuning_trials=2,
      hparam_start_index=1,
      rng_seed=0,
      max_global_steps=1,
    )
  assert not (tmp_path / 'exp' / 'digits_pytorch' / 'trial_2').exists()


# -- File modes ----------------------------------------------------------------


def test_trial_files_get_the_umask_mode(tmp_path):
  previous = os.umask(0o022)
  try:
    (result,) = run(
      BASELINE,
      'digits',
      experiment_dir=str(tmp_path),
      experiment_name='exp',
      tuning_ruleset='self',
      rng_seed=0,
      max_global_steps=1,
    )
  finally:
    os.umask(previous)

  trial = result.trial_dir
  names = [
    'eval_measurements.csv',
    'measurements.csv',
    'flags_0.json',
    'meta_data_0.json',
  ]
  names += [os.path.basename(path) for path in checkpoint.checkpoints(trial)]
  assert any(name.startswith('checkpoint_') for name in names)
  modes = {
    name: os.stat(os.path.join(trial, name)).st_mode & 0o777 for name in names
  }
  assert modes == dict.fromkeys(names, 0o644)
  assert os.stat(trial).st_mode & 0o777 == 0o755


_PLAIN_VALUE_SUBMISSION = """
from submissions.self_tuning.nadamw_baseline import submission as baseline
from submissions.self_tuning.nadamw_baseline.submission import (
  data_selection, get_batch_size, update_params)


def init_optimizer_state(*args, **kwargs):
  state = baseline.init_optimizer_state(*args, **kwargs)
  state['steps_seen'] = 0  # a plain int: the official runner cannot resume
  return state
"""


def test_a_plain_value_in_the_optimizer_state_warns_then_blocks_resume(
  tmp_path, capsys, caplog
):
  path = tmp_path / 'plain.py'
  path.write_text(_PLAIN_VALUE_SUBMISSION)

  with caplog.at_level(logging.WARNING):
    code = cli.main(
      _argv(tmp_path, '--tuning_ruleset=self', submission=str(path))
    )
  assert code == 0
  warned = [
    r.getMessage() for r in caplog.records if 'steps_seen' in r.getMessage()
  ]
  assert len(warned) == 1
  assert "optimizer_state['steps_seen'] (type int) lacks" in warned[0]
  assert '--resume_last_run will fail' in warned[0]
  capsys.readouterr()

  argv = _argv(
    tmp_path, '--tuning_ruleset=self', '--resume_last_run', submission=str(path)
  )
  code = cli.main(
    [arg.replace('steps=3', 'steps=6') for arg in argv]  # a longer run
  )
  assert code == 2
  line = _error_line(capsys)
  assert "cannot resume: optimizer_state['steps_seen'] (type int)" in line
  assert 'StatefulDict' in line


def test_a_non_dict_optimizer_state_is_refused_at_init(tmp_path, capsys):
  path = tmp_path / 'tuple_state.py'
  path.write_text(
    _PLAIN_VALUE_SUBMISSION.replace(
      "  state['steps_seen'] = 0  # a plain int: the official runner cannot "
      'resume\n  return state',
      '  return (state, None)',
    )
  )
  code = cli.main(
    _argv(tmp_path, '--tuning_ruleset=self', submission=str(path))
  )
  assert code == 1
  line = _error_line(capsys)
  assert 'raised TypeError' in line and 'in init_optimizer_state' in line
  assert 'needs a dict of objects with state_dict()' in line
