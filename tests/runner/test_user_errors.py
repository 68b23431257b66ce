"""Bad inputs to `sfperf run`: one line, exit 2, nothing created or deleted.

Also resuming (another submission, corrupt checkpoints, finished trials)
and Ctrl-C.
"""

import json
import logging
import os
import signal

import pytest

from sfperf.runner import checkpoint, cli, run
from tests.runner.conftest import BASELINE

SCHEDULE_FREE = 'submissions/self_tuning/schedule_free_adamw/submission.py'


@pytest.fixture
def no_hang():
  """Fails a test that runs for more than 60 s instead of hanging CI."""

  def expire(signum, frame):
    raise TimeoutError('the runner hung')

  previous = signal.signal(signal.SIGALRM, expire)
  signal.alarm(60)
  yield
  signal.alarm(0)
  signal.signal(signal.SIGALRM, previous)


def _argv(tmp_path, *extra, submission=BASELINE, self_tuning=True):
  argv = [
    'sfperf run',
    f'--submission_path={submission}',
    '--workload=digits',
    f'--experiment_dir={tmp_path}',
    '--experiment_name=exp',
    '--max_global_steps=2',
    '--rng_seed=0',
  ]
  if self_tuning:
    argv.append('--tuning_ruleset=self')
  return argv + list(extra)


def _one_error_line(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert 'Traceback' not in err[0]
  return err[0]


def _run_self(tmp_path, submission=BASELINE, **kwargs):
  kwargs.setdefault('rng_seed', 0)
  return run(
    submission,
    'digits',
    experiment_dir=str(tmp_path),
    experiment_name='exp',
    tuning_ruleset='self',
    **kwargs,
  )


# --- 1. batch sizes -------------------------------------------------------

_BATCH_SUBMISSION = """
from submissions.self_tuning.nadamw_baseline.submission import (
  data_selection, init_optimizer_state, update_params)


def get_batch_size(workload_name):
  {body}
"""


@pytest.mark.parametrize(
  ('body', 'named'),
  [
    ('return 2048', '2048'),  # more than the 597 training examples
    ('return 0', 'returned 0'),
    ('return -16', 'returned -16'),
    ("return '32'", "'32' (str)"),
    ('return {}[workload_name]', 'KeyError'),
  ],
)
def test_bad_batch_size_is_one_line_before_training(
  tmp_path, capsys, no_hang, body, named
):
  path = tmp_path / 'batch.py'
  path.write_text(_BATCH_SUBMISSION.format(body=body))
  assert cli.main(_argv(tmp_path, submission=str(path))) == 2
  line = _one_error_line(capsys)
  assert named in line and 'batch.py' in line and 'get_batch_size' in line
  assert not (tmp_path / 'exp').exists()


def test_largest_batch_size_trains(tmp_path, no_hang):
  path = tmp_path / 'full_batch.py'
  path.write_text(_BATCH_SUBMISSION.format(body='return 597'))
  (result,) = _run_self(
    tmp_path, str(path), max_global_steps=2, save_checkpoints=False
  )
  assert result.global_step == 2


# --- 2. flags --------------------------------------------------------------


@pytest.mark.parametrize(
  ('flag', 'named'),
  [
    ('--num_tuning_trials=0', '--num_tuning_trials'),
    ('--num_tuning_trials=-2', '--num_tuning_trials'),
    ('--max_global_steps=0', '--max_global_steps'),
    ('--max_global_steps=-1', '--max_global_steps'),
    ('--torch_num_threads=-1', '--torch_num_threads'),
    ('help', 'help'),
  ],
)
def test_bad_flags_are_one_line(tmp_path, capsys, flag, named):
  assert cli.main(_argv(tmp_path, flag)) == 2
  line = _one_error_line(capsys)
  assert named in line
  assert not (tmp_path / 'exp').exists()


def test_external_negative_trials_and_empty_space(tmp_path, capsys):
  space = tmp_path / 'space.json'
  space.write_text(json.dumps([{'learning_rate': 0.1}]))
  argv = _argv(
    tmp_path,
    f'--tuning_search_space={space}',
    '--num_tuning_trials=-1',
    self_tuning=False,
  )
  assert cli.main(argv) == 2
  assert '--num_tuning_trials' in _one_error_line(capsys)

  space.write_text('[]')
  argv = _argv(tmp_path, f'--tuning_search_space={space}', self_tuning=False)
  assert cli.main(argv) == 2
  line = _one_error_line(capsys)
  assert str(space) in line and 'empty' in line
  assert not (tmp_path / 'exp').exists()


# --- 3. search space files -------------------------------------------------


@pytest.mark.parametrize(
  ('make', 'named'),
  [
    (lambda p: p.write_bytes(b'\xff\xfe[{"lr": 1}]'), 'not UTF-8'),
    (lambda p: p.mkdir(), 'is a directory'),
  ],
)
def test_unreadable_search_space_is_one_line(tmp_path, capsys, make, named):
  space = tmp_path / 'space.json'
  make(space)
  argv = _argv(tmp_path, f'--tuning_search_space={space}', self_tuning=False)
  assert cli.main(argv) == 2
  line = _one_error_line(capsys)
  assert str(space) in line and named in line
  assert not (tmp_path / 'exp').exists()


# --- 4. broken submissions -------------------------------------------------

_GOOD_SUBMISSION = """
from submissions.self_tuning.nadamw_baseline.submission import (
  data_selection, get_batch_size, init_optimizer_state, update_params)
"""


@pytest.mark.parametrize(
  ('source', 'named'),
  [
    ('def get_batch_size(:\n', 'SyntaxError'),
    ('import no_such_module_sfperf\n', 'ModuleNotFoundError'),
    ('raise RuntimeError("boom at import")\n', 'RuntimeError: boom'),
    (
      'from submissions.self_tuning.nadamw_baseline.submission import (\n'
      '  get_batch_size, init_optimizer_state)\n',
      'update_params, data_selection',
    ),
  ],
)
def test_broken_submission_is_one_line_and_a_fixed_rerun_works(
  tmp_path, capsys, source, named
):
  path = tmp_path / 'broken.py'
  path.write_text(source)
  assert cli.main(_argv(tmp_path, submission=str(path))) == 2
  line = _one_error_line(capsys)
  assert named in line and 'broken.py' in line
  assert not (tmp_path / 'exp').exists()

  path.write_text(_GOOD_SUBMISSION)
  assert cli.main(_argv(tmp_path, submission=str(path))) == 0


# --- 5. resume -------------------------------------------------------------


def test_resume_with_another_submission_writes_nothing(tmp_path, capsys):
  _run_self(tmp_path, max_global_steps=2)
  trial = tmp_path / 'exp' / 'digits_pytorch' / 'trial_1'
  before = sorted(os.listdir(trial))
  argv = _argv(
    tmp_path,
    '--resume_last_run',
    '--max_global_steps=4',
    submission=SCHEDULE_FREE,
  )
  assert cli.main(argv) == 2
  line = _one_error_line(capsys)
  assert 'nadamw_baseline' in line and 'schedule_free_adamw' in line
  assert sorted(os.listdir(trial)) == before


def test_resume_without_checkpoint_compares_flags(tmp_path, capsys):
  _run_self(tmp_path, max_global_steps=1, save_checkpoints=False)
  argv = _argv(tmp_path, '--resume_last_run', submission=SCHEDULE_FREE)
  assert cli.main(argv) == 2
  assert 'nadamw_baseline' in _one_error_line(capsys)


def test_truncated_latest_checkpoint_falls_back(tmp_path, caplog):
  _run_self(tmp_path, max_global_steps=2)
  trial = tmp_path / 'exp' / 'digits_pytorch' / 'trial_1'
  assert checkpoint.checkpoints(str(trial))[:2] == [
    str(trial / 'checkpoint_2'),
    str(trial / 'checkpoint_1'),
  ]
  data = (trial / 'checkpoint_2').read_bytes()
  (trial / 'checkpoint_2').write_bytes(data[: len(data) // 2])
  with caplog.at_level(logging.WARNING):
    (result,) = _run_self(tmp_path, max_global_steps=3, resume_last_run=True)
  assert 'checkpoint_2' in caplog.text and 'checkpoint_1' in caplog.text
  assert result.global_step == 3 and result.preemption_count == 1


def test_only_checkpoint_empty_is_one_line(tmp_path, capsys):
  _run_self(tmp_path, max_global_steps=2, save_intermediate_checkpoints=False)
  trial = tmp_path / 'exp' / 'digits_pytorch' / 'trial_1'
  (only,) = checkpoint.checkpoints(str(trial))
  with open(only, 'wb'):
    pass
  before = sorted(os.listdir(trial))
  argv = _argv(tmp_path, '--resume_last_run', '--max_global_steps=4')
  assert cli.main(argv) == 2
  line = _one_error_line(capsys)
  assert 'checkpoint_2' in line and 'no earlier checkpoint' in line
  assert sorted(os.listdir(trial)) == before


def _measurements(trial):
  return (trial / 'measurements.csv').read_text()


def test_resuming_a_finished_trial_does_nothing(tmp_path, caplog):
  _run_self(tmp_path, max_global_steps=2)
  trial = tmp_path / 'exp' / 'digits_pytorch' / 'trial_1'
  before = _measurements(trial)
  with caplog.at_level(logging.INFO):
    results = _run_self(tmp_path, max_global_steps=2, resume_last_run=True)
  assert results == []
  assert 'trial_1 already finished; nothing to do' in caplog.text
  assert _measurements(trial) == before
  assert not (trial / 'flags_1.json').exists()
  assert not (trial / 'meta_data_1.json').exists()


def test_resuming_after_the_budget_does_nothing(
  tmp_path, fake_clock, digits_timing
):
  digits_timing(budget_sec=4.0, eval_period_sec=0.0)
  (first,) = _run_self(tmp_path, max_global_steps=100)
  assert first.global_step < 100  # stopped by the budget
  trial = tmp_path / 'exp' / 'digits_pytorch' / 'trial_1'
  before = _measurements(trial)
  assert _run_self(tmp_path, resume_last_run=True) == []
  assert _measurements(trial) == before
  assert not (trial / 'flags_1.json').exists()


# --- 6. experiment paths ---------------------------------------------------


def test_experiment_dir_that_is_a_file(tmp_path, capsys):
  a_file = tmp_path / 'a_file'
  a_file.write_text('keep me')
  assert cli.main(_argv(a_file)) == 2
  line = _one_error_line(capsys)
  assert str(a_file) in line and 'not a directory' in line
  assert a_file.read_text() == 'keep me'

  (tmp_path / 'exp').write_text('keep me too')
  assert cli.main(_argv(tmp_path)) == 2
  assert '--experiment_name' in _one_error_line(capsys)


# --- 7. Ctrl-C -------------------------------------------------------------


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(cli, 'run', interrupted)
  assert cli.main(_argv(tmp_path)) == 130
  line = _one_error_line(capsys)
  assert 'interrupted; resume with --resume_last_run' in line


# --- 10. the strict stop rule is named --------------------------------------


def test_end_of_trial_line_names_the_strict_rule(tmp_path, caplog):
  with caplog.at_level(logging.INFO):
    _run_self(tmp_path, max_global_steps=1, save_checkpoints=False)
  assert 'runner stop rule (strict >): validation target' in caplog.text
