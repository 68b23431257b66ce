"""Bad input to `sfperf score`: one clear line, warnings that name the file."""

import math
import os

import pytest

from sfperf.catalog import load_catalog
from sfperf.cli import main as sfperf_main
from sfperf.results.logs import LogDirError, read_log_root
from sfperf.results.scoring import score_logs

HEADER = 'global_step,score,validation/ssim,validation/loss\n'


def write_trial(root, submission, study, trial, text, workload='fastmri_jax'):
  path = os.path.join(root, submission, study, workload, trial)
  os.makedirs(path, exist_ok=True)
  if text is not None:
    with open(os.path.join(path, 'eval_measurements.csv'), 'wb') as f:
      f.write(text if isinstance(text, bytes) else text.encode())
  return path


def good_rows(reach_at=2, time_step=100.0):
  rows = []
  for index in range(4):
    ssim = 0.8 if index >= reach_at else 0.5
    rows.append(f'{index * 10},{(index + 1) * time_step},{ssim},0.3\n')
  return HEADER + ''.join(rows)


@pytest.fixture
def v06():
  return load_catalog('v0.6')


def test_missing_directory_is_one_clear_error(tmp_path, capsys):
  missing = tmp_path / 'nope'
  with pytest.raises(LogDirError, match='does not exist'):
    read_log_root(str(missing))
  code = sfperf_main(
    ['sfperf', 'score', str(missing), '--out', str(tmp_path / 'o')]
  )
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and str(missing) in err[0]


def test_directory_without_trials_is_an_error(tmp_path):
  (tmp_path / 'sub' / 'study_0').mkdir(parents=True)
  with pytest.raises(LogDirError, match='no trials found'):
    read_log_root(str(tmp_path))


def test_nan_metric_warns_and_never_reaches(tmp_path, v06):
  text = HEADER + '1,10,nan,0.3\n2,20,nan,0.3\n'
  write_trial(tmp_path, 'sub', 'study_0', 'trial_1', text)
  write_trial(tmp_path, 'sub', 'study_1', 'trial_1', good_rows())
  scores = score_logs(read_log_root(str(tmp_path)), v06)
  study_times = [s.time for s in scores.results['sub']['fastmri'].studies]
  assert math.isinf(study_times[0]) and study_times[1] == 300.0
  assert any(
    'NaN in validation/ssim' in w and 'study_0' in w for w in scores.warnings
  )


def test_short_lines_and_bad_bytes_become_nan_with_a_warning(tmp_path, v06):
  text = good_rows() + '50,oops,0.9\n' + b'\xff\xfe,1,2,3\n'.decode('latin-1')
  path = write_trial(tmp_path, 'sub', 'study_0', 'trial_1', text)
  scores = score_logs(read_log_root(str(tmp_path)), v06)
  assert scores.time_to_target['sub']['fastmri'] == 300.0
  assert any(
    w.startswith(path) and 'wrong number of fields (line 6)' in w
    for w in scores.warnings
  )
  assert any(
    w.startswith(path) and 'column score' in w and 'not numbers' in w
    for w in scores.warnings
  )


def test_a_value_that_is_not_a_number_is_nan(tmp_path, v06):
  text = HEADER + '1,10,0.5,0.3\n2,20,abc,0.3\n3,30,0.8,0.3\n'
  path = write_trial(tmp_path, 'sub', 'study_0', 'trial_1', text)
  scores = score_logs(read_log_root(str(tmp_path)), v06)
  assert scores.time_to_target['sub']['fastmri'] == 30.0
  assert any(
    w.startswith(path) and 'validation/ssim' in w and '(line 3)' in w
    for w in scores.warnings
  )


def test_missing_metric_column_counts_as_not_reached(tmp_path, v06):
  path = write_trial(
    tmp_path, 'sub', 'study_0', 'trial_1', 'global_step,score\n1,10\n'
  )
  scores = score_logs(read_log_root(str(tmp_path)), v06)
  assert math.isinf(scores.time_to_target['sub']['fastmri'])
  assert any(
    path in w and 'no column validation/ssim' in w for w in scores.warnings
  )


def test_empty_file_and_missing_csv_are_skipped(tmp_path, v06):
  write_trial(tmp_path, 'sub', 'study_0', 'trial_1', '')
  write_trial(tmp_path, 'sub', 'study_0', 'trial_2', None)
  write_trial(tmp_path, 'sub', 'study_0', 'trial_3', good_rows())
  logs = read_log_root(str(tmp_path))
  assert [t.trial for t in logs.trials['sub']] == ['trial_3']
  assert any('empty file' in w for w in logs.warnings)
  assert any('no eval_measurements.csv' in w for w in logs.warnings)


def test_fewest_evals_is_default_and_least_time_is_an_option(tmp_path, v06):
  # trial_1 reaches at eval 2 but slowly; trial_2 at eval 3 but sooner.
  write_trial(tmp_path, 'sub', 'study_0', 'trial_1', good_rows(2, 100.0))
  write_trial(tmp_path, 'sub', 'study_0', 'trial_2', good_rows(3, 50.0))
  logs = read_log_root(str(tmp_path))
  official = score_logs(logs, v06)
  written = score_logs(logs, v06, trial_choice='least_time')
  assert official.time_to_target['sub']['fastmri'] == 300.0
  assert written.time_to_target['sub']['fastmri'] == 200.0


def test_timestamped_sibling_directories_merge(tmp_path, v06):
  write_trial(tmp_path, 'sub', 'study_0', 'trial_1', good_rows())
  write_trial(
    tmp_path, 'sub-2024-05-01-10-11-12', 'study_1', 'trial_1', good_rows()
  )
  logs = read_log_root(str(tmp_path))
  assert list(logs.trials) == ['sub']
  assert {t.study for t in logs.trials['sub']} == {'study_0', 'study_1'}


def test_cli_writes_all_outputs(tmp_path, capsys):
  root = tmp_path / 'logs'
  write_trial(str(root), 'a', 'study_0', 'trial_1', good_rows(1))
  write_trial(str(root), 'b', 'study_0', 'trial_1', good_rows(3))
  out = tmp_path / 'out'
  code = sfperf_main(
    [
      'sfperf',
      'score',
      str(root),
      '--benchmark',
      'v0.6',
      '--self-tuning',
      '--out',
      str(out),
    ]
  )
  assert code == 0
  assert (out / 'scores.csv').read_text().splitlines()[0] == (
    'submission,score'
  )
  ttt = (out / 'time_to_targets.csv').read_text().splitlines()
  assert ttt[1].startswith('a,inf,200.0,')
  assert (out / 'performance_profile.png').read_bytes()[:4] == b'\x89PNG'
  assert (out / 'curves' / 'fastmri.png').read_bytes()[:4] == b'\x89PNG'
  assert (
    (out / 'leaderboard.md').read_text().splitlines()[2].startswith('| 1 | a |')
  )
  trials = (out / 'trials.csv').read_text().splitlines()
  assert trials[0].startswith('submission,workload,study,trial,')
  assert len(trials) == 3
  report = (out / 'report.md').read_text()
  assert report.index('performance_profile.png') < report.index(
    'curves/fastmri.png'
  )
  assert '| fastmri |' in capsys.readouterr().out
