"""Regression tests for logs that once crashed or misled `sfperf score`."""

import csv
import io
import math
import os

import pytest

from sfperf.catalog import all_workload_names, load_catalog
from sfperf.cli import main as sfperf_main
from sfperf.results.logs import LogDirError, read_log_root
from sfperf.results.report import scores_csv
from sfperf.results.scoring import score_logs
from tests.results.test_bad_logs import HEADER, good_rows, write_trial

GOOD = 'global_step,score,validation/accuracy\n1,0.5,0.5\n10,2.0,0.995\n'


def _score(tmp_path, *args):
  out = tmp_path / 'out'
  code = sfperf_main(
    ['sfperf', 'score', *map(str, args), '--out', str(out), '--bootstrap', '0']
  )
  return code, out


def test_header_only_file_is_skipped_with_a_warning(tmp_path, capsys):
  root = tmp_path / 'logs'
  write_trial(str(root), 'a', 's0', 'trial_1', GOOD, 'digits_pytorch')
  write_trial(
    str(root),
    'b',
    's0',
    'trial_1',
    'global_step,score,validation/accuracy\n',
    'digits_pytorch',
  )
  code, out = _score(tmp_path, root)
  assert code == 0
  warnings = (out / 'warnings.txt').read_text()
  assert 'header only, no evals' in warnings
  assert (out / 'report.md').exists()


def test_unreadable_csv_is_a_warning_not_a_crash(tmp_path, v06=None):
  root = tmp_path / 'logs'
  text = HEADER + '10,200,0.9,0.3\n1,0.5,"' + 'x' * 140000 + '\n'
  path = write_trial(str(root), 'a', 's0', 'trial_1', text)
  write_trial(str(root), 'b', 's0', 'trial_1', good_rows())
  logs = read_log_root(str(root))
  assert [t.submission for trials in logs.trials.values() for t in trials] == [
    'b'
  ]
  assert any(
    w.startswith(path) and 'not readable as CSV' in w for w in logs.warnings
  )


def test_runner_backups_are_not_workloads(tmp_path):
  root = tmp_path / 'logs'
  write_trial(str(root), 'a', 's0', 'trial_1', GOOD, 'digits_pytorch')
  write_trial(
    str(root),
    'a',
    's0',
    'trial_1',
    GOOD,
    'digits_pytorch.backup-20260101-000000',
  )
  write_trial(
    str(root),
    'a',
    os.path.join('s0', '.backup'),
    'trial_1',
    GOOD,
    'digits_pytorch-20260101-000000',
  )
  code, out = _score(tmp_path, root)
  assert code == 0
  assert (out / 'time_to_targets.csv').read_text().splitlines()[1] == ('a,2.0')


def test_only_unknown_workloads_is_one_clear_error(tmp_path, capsys):
  root = tmp_path / 'logs'
  write_trial(str(root), 'a', 's0', 'trial_1', GOOD, 'foo_jax')
  code, _ = _score(tmp_path, root)
  err = capsys.readouterr().err.strip().splitlines()
  assert code == 2 and len(err) == 1 and 'foo' in err[0]


def test_one_unknown_workload_does_not_change_the_suite(tmp_path):
  root = tmp_path / 'logs'
  write_trial(str(root), 'a', 's0', 'trial_1', GOOD, 'digits_pytorch')
  write_trial(str(root), 'a', 's0', 'trial_1', GOOD, 'foo_jax')
  code, out = _score(tmp_path, root)
  assert code == 0
  assert (out / 'time_to_targets.csv').read_text().splitlines()[0] == (
    'submission,digits'
  )


def test_bare_catalog_workload_names_are_read(tmp_path):
  root = tmp_path / 'logs'
  write_trial(str(root), 'a', 's0', 'trial_1', GOOD, 'digits')
  logs = read_log_root(str(root), all_workload_names())
  assert logs.trials['a'][0].workload == 'digits'


def test_non_utf8_directory_names_are_escaped(tmp_path, capsys):
  root = os.fsencode(str(tmp_path / 'logs'))
  trial = os.path.join(root, b'sub\xff', b's0', b'digits_pytorch', b'trial_1')
  os.makedirs(trial)
  with open(os.path.join(trial, b'eval_measurements.csv'), 'w') as f:
    f.write(GOOD)
  code, out = _score(tmp_path, tmp_path / 'logs')
  assert code == 0
  assert 'sub\\udcff' in (out / 'scores.csv').read_text()


@pytest.mark.parametrize('bad_time', ['-5.0', '0.0', 'inf', 'nan'])
def test_broken_times_never_reach_and_do_not_spoil_others(tmp_path, bad_time):
  root = tmp_path / 'logs'
  write_trial(str(root), 'ok', 's0', 'trial_1', GOOD, 'digits_pytorch')
  bad = (
    f'global_step,score,validation/accuracy\n1,0.5,0.5\n10,{bad_time},0.995\n'
  )
  path = write_trial(str(root), 'bad', 's0', 'trial_1', bad, 'digits_pytorch')
  from sfperf.catalog import load_proxy_catalog

  scores = score_logs(read_log_root(str(root)), load_proxy_catalog('v0.6'))
  assert math.isinf(scores.time_to_target['bad']['digits'])
  assert scores.scores['ok'] == pytest.approx(1.0)
  assert any(
    w.startswith(path) and 'positive finite' in w for w in scores.warnings
  )


def test_infinite_metric_never_reaches(tmp_path):
  root = tmp_path / 'logs'
  text = 'global_step,score,validation/loss\n1,5.0,-inf\n2,9.0,0.1\n'
  path = write_trial(str(root), 'a', 's0', 'trial_1', text, 'criteo1tb_jax')
  scores = score_logs(read_log_root(str(root)), load_catalog('v0.6'))
  assert scores.time_to_target['a']['criteo1tb'] == 9.0
  assert any(
    w.startswith(path) and 'infinite value' in w for w in scores.warnings
  )


def test_duplicated_columns_use_the_first_with_a_warning(tmp_path):
  root = tmp_path / 'logs'
  text = (
    'global_step,score,validation/accuracy,validation/accuracy\n'
    '1,2.0,0.995,0.1\n'
  )
  path = write_trial(str(root), 'a', 's0', 'trial_1', text, 'digits_pytorch')
  logs = read_log_root(str(root))
  assert logs.trials['a'][0].columns['validation/accuracy'][0] == 0.995
  assert any(w.startswith(path) and 'duplicated' in w for w in logs.warnings)


def test_csv_outputs_quote_odd_submission_names(tmp_path):
  root = tmp_path / 'logs'
  write_trial(str(root), 'sub,A', 's0', 'trial_1', GOOD, 'digits_pytorch')
  from sfperf.catalog import load_proxy_catalog

  scores = score_logs(read_log_root(str(root)), load_proxy_catalog('v0.6'))
  rows = list(csv.reader(io.StringIO(scores_csv(scores))))
  assert rows == [['submission', 'score'], ['sub,A', '1.0']]


def test_a_file_is_not_a_log_directory(tmp_path):
  path = tmp_path / 'afile'
  path.write_text('x')
  with pytest.raises(LogDirError, match='is a file'):
    read_log_root(str(path))


def test_empty_out_is_rejected(tmp_path, capsys):
  root = tmp_path / 'logs'
  write_trial(str(root), 'a', 's0', 'trial_1', GOOD, 'digits_pytorch')
  code = sfperf_main(['sfperf', 'score', str(root), '--out', ''])
  assert code == 2 and '--out' in capsys.readouterr().err


def test_a_trial_found_twice_is_reported(tmp_path):
  root = tmp_path / 'logs'
  write_trial(str(root), 'a', 's0', 'trial_1', GOOD, 'digits_pytorch')
  write_trial(
    str(root), 'a-2024-01-01-00-00-00', 's0', 'trial_1', GOOD, 'digits_pytorch'
  )
  logs = read_log_root(str(root))
  assert len(logs.trials['a']) == 2
  assert any('was already read from' in w for w in logs.warnings)
