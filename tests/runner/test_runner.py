"""The local runner: files, loop rules, budget, directories, resume, CLI."""

import csv
import json
import os
import types

import pytest

from sfperf.runner import UsageError, cli, run
from tests.runner.conftest import BASELINE

OFFICIAL_EVAL_COLUMNS = [
  'accumulated_eval_time',
  'accumulated_logging_time',
  'accumulated_submission_time',
  'global_step',
  'preemption_count',
  'score',
  'test/accuracy',
  'test/loss',
  'test/num_examples',
  'total_duration',
  'train/accuracy',
  'train/loss',
  'validation/accuracy',
  'validation/loss',
  'validation/num_examples',
]


def _rows(path):
  with open(path, newline='') as f:
    reader = csv.DictReader(f)
    return reader.fieldnames, list(reader)


def _run_self(tmp_path, **kwargs):
  kwargs.setdefault('rng_seed', 0)
  return run(
    BASELINE,
    'digits',
    experiment_dir=str(tmp_path),
    experiment_name='exp',
    tuning_ruleset='self',
    **kwargs,
  )


def test_cli_run_writes_official_files(tmp_path):
  code = cli.main(
    [
      'sfperf run',
      f'--submission_path={BASELINE}',
      '--workload=digits',
      '--framework=pytorch',
      '--tuning_ruleset=self',
      f'--experiment_dir={tmp_path}',
      '--experiment_name=exp',
      '--max_global_steps=5',
      '--rng_seed=3',
    ]
  )
  assert code == 0
  trial = tmp_path / 'exp' / 'digits_pytorch' / 'trial_1'
  names = set(os.listdir(trial))
  assert {
    'eval_measurements.csv',
    'measurements.csv',
    'meta_data_0.json',
    'flags_0.json',
    'checkpoint_5',
  } <= names
  assert 'hparams.json' not in names  # self-tuning

  columns, evals = _rows(trial / 'eval_measurements.csv')
  assert columns == OFFICIAL_EVAL_COLUMNS
  assert [int(r['global_step']) for r in evals] == [1, 5]  # eval after step 1
  assert all(r['score'] == r['accumulated_submission_time'] for r in evals)

  columns, measurements = _rows(trial / 'measurements.csv')
  assert columns == sorted(columns)
  assert {'loss', 'grad_norm'} <= set(columns)  # the baseline's own logging
  final = measurements[-1]
  assert final['score'] and not final['validation/accuracy']
  assert float(final['score']) >= float(evals[-1]['score'])

  meta = json.loads((trial / 'meta_data_0.json').read_text())
  assert meta['rng_seed'] == 3
  assert meta['workload.step_hint'] > 0
  assert meta['workload.target_metric_name'] == 'accuracy'
  flags = json.loads((trial / 'flags_0.json').read_text())
  assert flags['workload'] == 'digits' and flags['max_global_steps'] == 5
  assert not [n for n in names if n.endswith('.tmp')]


@pytest.mark.parametrize(
  ('benchmark', 'free_eval'), [('v0.6', False), ('v0.5', True)]
)
def test_budget_rules(
  tmp_path, fake_clock, digits_timing, benchmark, free_eval
):
  # Each clock reading is one second; a baseline step costs 2 s of
  # submission time (step, plus prepare_for_eval under v0.6). Self-tuning
  # budget 1.5 x 10.
  digits_timing(budget_sec=10.0, eval_period_sec=0.0)
  (result,) = _run_self(tmp_path, benchmark=benchmark, max_global_steps=100)
  budget = 15.0
  scores = [metrics['score'] for _, metrics in result.eval_results]
  assert result.global_step < 100  # stopped by the budget
  assert result.score >= budget
  if free_eval:
    # v0.5: budget checked every step; the crossing step still evaluates.
    assert scores[-1] >= budget
  else:
    # v0.6: checked at eval time; the eval past the budget is skipped.
    assert all(score < budget for score in scores)
    assert scores[-1] + 4 > budget


def test_existing_dir_needs_a_flag(tmp_path, capsys):
  _run_self(tmp_path, max_global_steps=1, save_checkpoints=False)
  workload_dir = tmp_path / 'exp' / 'digits_pytorch'
  before = {p: os.path.getmtime(p) for p in workload_dir.rglob('*')}
  code = cli.main(
    [
      'sfperf run',
      f'--submission_path={BASELINE}',
      '--workload=digits',
      '--tuning_ruleset=self',
      f'--experiment_dir={tmp_path}',
      '--experiment_name=exp',
    ]
  )
  assert code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and 'already exists' in err[0]
  assert {p: os.path.getmtime(p) for p in workload_dir.rglob('*')} == before


def test_overwrite_keeps_a_backup(tmp_path):
  _run_self(tmp_path, max_global_steps=1, save_checkpoints=False)
  _run_self(
    tmp_path, max_global_steps=2, overwrite=True, save_checkpoints=False
  )
  # The backup lies in the study's .backup/ dot-directory, which the scorer
  # skips, never beside the workload directory as a second workload.
  assert sorted(os.listdir(tmp_path / 'exp')) == ['.backup', 'digits_pytorch']
  (backup,) = os.listdir(tmp_path / 'exp' / '.backup')
  assert backup.startswith('digits_pytorch-')
  backup_trial = tmp_path / 'exp' / '.backup' / backup / 'trial_1'
  _, old = _rows(backup_trial / 'measurements.csv')
  assert old[-1]['global_step'] == '1'

  _run_self(
    tmp_path, max_global_steps=1, overwrite=True, save_checkpoints=False
  )
  assert len(os.listdir(tmp_path / 'exp' / '.backup')) == 2  # unique names


def test_resume_continues_steps_and_counts_preemptions(tmp_path):
  (first,) = _run_self(tmp_path, max_global_steps=3)
  (second,) = _run_self(tmp_path, max_global_steps=6, resume_last_run=True)
  assert (first.global_step, second.global_step) == (3, 6)
  assert second.preemption_count == 1
  assert second.score > first.score
  trial = tmp_path / 'exp' / 'digits_pytorch' / 'trial_1'
  assert (trial / 'meta_data_1.json').exists()
  _, evals = _rows(trial / 'eval_measurements.csv')
  pairs = [(r['global_step'], r['preemption_count']) for r in evals]
  assert pairs[:2] == [('1', '0'), ('3', '0')]
  assert pairs[-1] == ('6', '1')
  assert all(count == '1' for _, count in pairs[2:])


_RECORDING_SUBMISSION = """
from submissions.self_tuning.nadamw_baseline.submission import (
  data_selection, get_batch_size, init_optimizer_state)
from submissions.self_tuning.nadamw_baseline import submission as _base

SEEN = []


def update_params({params}):
  SEEN.append({seen})
  return _base.update_params(
    workload, current_param_container, current_params_types, model_state,
    hyperparameters, batch, loss_type, optimizer_state, eval_results,
    global_step, rng)
"""
_ARGS = (
  'workload, current_param_container, current_params_types, model_state, '
  'hyperparameters, batch, loss_type, optimizer_state, eval_results, '
  'global_step, rng'
)


@pytest.mark.parametrize('wants_train_state', [True, False])
def test_train_state_only_when_requested(tmp_path, wants_train_state):
  params = _ARGS + (', train_state' if wants_train_state else '')
  seen = 'train_state' if wants_train_state else 'None'
  path = tmp_path / f'recording_{wants_train_state}.py'
  path.write_text(_RECORDING_SUBMISSION.format(params=params, seen=seen))
  run(
    str(path),  # absolute path, loaded from the file
    'digits',
    experiment_dir=str(tmp_path),
    experiment_name='exp',
    tuning_ruleset='self',
    rng_seed=0,
    max_global_steps=2,
    save_checkpoints=False,
  )
  import sys

  module = next(
    m for m in sys.modules.values() if getattr(m, '__file__', None) == str(path)
  )
  assert len(module.SEEN) == 2
  if wants_train_state:
    state = module.SEEN[1]
    assert isinstance(state, types.MappingProxyType)
    assert set(state) == {
      'validation_goal_reached',
      'test_goal_reached',
      'is_time_remaining',
      'last_eval_time',
      'training_complete',
      'accumulated_submission_time',
      'accumulated_eval_time',
      'accumulated_logging_time',
      'last_step_end_time',
    }
  else:
    assert module.SEEN == [None, None]


@pytest.mark.parametrize(
  ('flag', 'named'),
  [
    ('--workload=imagenet_resnet', 'imagenet_resnet'),
    ('--submission_path=submissions/nope.py', 'submissions/nope.py'),
    ('--framework=jax', 'is a PyTorch submission'),
  ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, flag, named):
  argv = [
    'sfperf run',
    f'--submission_path={BASELINE}',
    '--workload=digits',
    '--tuning_ruleset=self',
    f'--experiment_dir={tmp_path}',
    '--experiment_name=exp',
    flag,
  ]
  assert cli.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and named in err[0]
  assert not (tmp_path / 'exp').exists()


def test_external_ruleset_trials_and_hparams(tmp_path):
  space = tmp_path / 'space.json'
  space.write_text(json.dumps([{'learning_rate': 0.1}, {'learning_rate': 0.2}]))
  results = run(
    BASELINE,
    'digits',
    experiment_dir=str(tmp_path),
    experiment_name='exp',
    tuning_search_space=str(space),
    num_tuning_trials=2,
    rng_seed=0,
    max_global_steps=1,
    save_checkpoints=False,
  )
  assert [r.trial_index for r in results] == [1, 2]
  assert results[1].hyperparameters == {'learning_rate': 0.2}
  hparams = tmp_path / 'exp' / 'digits_pytorch' / 'trial_2' / 'hparams.json'
  assert json.loads(hparams.read_text()) == {'learning_rate': 0.2}

  space.write_text(json.dumps({'learning_rate': {'min': 0.1, 'max': 1.0}}))
  with pytest.raises(UsageError, match='scaling'):
    run(
      BASELINE,
      'digits',
      experiment_dir=str(tmp_path),
      experiment_name='other',
      tuning_search_space=str(space),
    )
  with pytest.raises(UsageError, match='no search space'):
    run(
      BASELINE,
      'digits',
      experiment_dir=str(tmp_path),
      experiment_name='other',
      tuning_ruleset='self',
      tuning_search_space=str(space),
    )


def test_v05_rules_call_neither_v06_hook(tmp_path):
  # v0.5's runner had no prepare_for_eval and no train_state argument; a
  # module that defines both sees neither under v0.5 rules.
  source = _RECORDING_SUBMISSION.format(
    params=_ARGS + ', train_state=None', seen='train_state'
  ) + (
    '\n\nPREPARED = []\n\n\n'
    'def prepare_for_eval(workload, current_param_container, **kwargs):\n'
    '  PREPARED.append(1)\n'
    '  return (kwargs["optimizer_state"], current_param_container, '
    'kwargs["model_state"])\n'
  )
  for benchmark in ('v0.5', 'v0.6'):
    path = tmp_path / f'hooks_{benchmark.replace(".", "")}.py'
    path.write_text(source)
    run(
      str(path),
      'digits',
      experiment_dir=str(tmp_path),
      experiment_name=f'exp_{benchmark}',
      tuning_ruleset='self',
      rng_seed=0,
      max_global_steps=2,
      save_checkpoints=False,
      benchmark=benchmark,
    )
    import sys

    module = next(
      m
      for m in sys.modules.values()
      if getattr(m, '__file__', None) == str(path)
    )
    if benchmark == 'v0.5':
      assert module.SEEN == [None, None] and module.PREPARED == []
    else:
      assert all(isinstance(s, types.MappingProxyType) for s in module.SEEN)
      assert module.PREPARED


def test_help_lists_the_official_flags(capsys):
  from sfperf.cli import main as sfperf_main

  assert sfperf_main(['sfperf', 'run', '--help']) == 0
  out = capsys.readouterr().out
  for flag in ('--submission_path', '--tuning_ruleset', '--benchmark'):
    assert flag in out
