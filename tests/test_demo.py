"""`sfperf demo`: its inputs, backups, Ctrl-C and per-run wording.

The demo itself trains for minutes; these tests stop short of that.
"""

import datetime
import types

from sfperf import demo, fsutil
from sfperf.catalog import load_proxy_catalog
from sfperf.results.scoring import describe_outcome
from sfperf.runner import run
from tests.runner.conftest import BASELINE


def _one_error_line(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert 'Traceback' not in err[0]
  return err[0]


def test_out_that_is_a_file_is_one_line(tmp_path, capsys):
  out = tmp_path / 'demo_out'
  out.write_text('keep me')
  assert demo.main(['--out', str(out), '--fresh']) == 2
  line = _one_error_line(capsys)
  assert str(out) in line and '--out' in line
  assert out.read_text() == 'keep me'


def test_fresh_backup_names_are_unique_within_a_second(tmp_path, monkeypatch):
  frozen = datetime.datetime(2025, 1, 2, 3, 4, 5)
  fake = types.SimpleNamespace(
    datetime=types.SimpleNamespace(now=lambda: frozen)
  )
  monkeypatch.setattr(fsutil, 'datetime', fake)
  out = tmp_path / 'demo_out'
  names = []
  for number in range(3):
    out.mkdir()
    (out / 'run.txt').write_text(str(number))
    names.append(demo._move_aside(str(out)))
  stem = f'{out}.previous-20250102-030405'
  assert names == [stem, f'{stem}-2', f'{stem}-3']
  contents = [(tmp_path / n / 'run.txt').read_text() for n in names]
  assert contents == ['0', '1', '2']


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, capsys, monkeypatch):
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt

  monkeypatch.setattr(demo, '_run_one', interrupted)
  assert demo.main(['--out', str(tmp_path / 'out'), '--studies', '1']) == 130
  line = _one_error_line(capsys)
  assert 'interrupted; rerun make demo to continue' in line


def test_a_finished_trial_is_skipped(tmp_path):
  # The demo's skip test read the final score row wrongly (global_step is
  # filled there too), so every trial was resumed and scored again.
  experiment_dir = tmp_path / 'logs' / 'nadamw_baseline'
  run(
    BASELINE,
    'digits',
    experiment_dir=str(experiment_dir),
    experiment_name='study_0',
    tuning_ruleset='self',
    rng_seed=0,
    max_global_steps=1,
    save_checkpoints=False,
  )
  assert (
    demo._run_one(str(tmp_path), 'nadamw_baseline', BASELINE, 0, 'v0.6') is None
  )


def test_outcome_names_the_scorers_inclusive_rule():
  spec = load_proxy_catalog('v0.6').workload('digits')
  at_target = spec.validation_target_value
  result = types.SimpleNamespace(
    eval_results=[(5, {spec.validation_metric: at_target, 'score': 3.0})]
  )
  # Exactly at the target: met for the scorer (>=), not for the runner (>).
  text = describe_outcome(result.eval_results, spec)
  assert 'met the target' in text and 'inclusive' in text
  result.eval_results[0][1][spec.validation_metric] = at_target - 0.1
  assert 'not met' in describe_outcome(result.eval_results, spec)
