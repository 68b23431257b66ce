"""`run`: the official submission_runner's job as a Python function.

Sets up the experiment directory, picks the batch size and hyperparameters,
and trains each trial with `training.train_once`.
"""

import datetime
import itertools
import os
from typing import Any, Dict, List, Optional

import torch
from absl import logging

from sfperf import catalog
from sfperf.runner import loading, logs, training
from sfperf.runner.loading import UsageError

FRAMEWORKS = ('pytorch', 'jax')
TUNING_RULESETS = ('external', 'self')


def _base_workload_name(workload_name: str, known: List[str]) -> str:
  """The base workload a variant belongs to, by substring (official rule)."""
  for base in sorted(known, key=len, reverse=True):
    if base in workload_name:
      return base
  return workload_name


def resolve_batch_size(submission, workload_name: str, workload) -> int:
  """The submission's global batch size for this workload.

  Tries the full name, then (on ValueError) the base workload name, as the
  official runner does, and for a proxy workload its AlgoPerf analogue
  (`workload.algoperf_analogue`, e.g. 'mnist'). Logs the name used.
  """
  known = list(catalog.load_catalog('v0.6').workloads)
  names = [workload_name, _base_workload_name(workload_name, known)]
  analogue = getattr(workload, 'algoperf_analogue', None)
  if analogue:
    names.append(analogue)
  tried = []
  for name in dict.fromkeys(names):
    try:
      batch_size = submission.get_batch_size(name)
    except ValueError:
      tried.append(name)
      continue
    logging.info('Batch size %d, from get_batch_size(%r).', batch_size, name)
    return batch_size
  raise UsageError(
    f'the submission has no batch size for workload {workload_name!r}; '
    f'get_batch_size raised ValueError for {", ".join(map(repr, tried))}'
  )


def _device_count() -> int:
  return max(torch.cuda.device_count(), 1)


def _check_divisible(name: str, batch_size: int) -> None:
  devices = _device_count()
  if batch_size % devices:
    raise UsageError(
      f'{name} {batch_size} is not divisible by the number of devices '
      f'({devices}); choose a multiple of {devices}'
    )


def _fresh_seed(bits: int) -> int:
  return int.from_bytes(os.urandom(bits // 8), 'little')


def _move_aside(path: str) -> str:
  """Renames `path` to a timestamped backup beside it; returns the new name."""
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  backup = f'{path}.backup-{stamp}'
  suffix = 1
  while os.path.exists(backup):
    suffix += 1
    backup = f'{path}.backup-{stamp}-{suffix}'
  os.replace(path, backup)
  return backup


def _check_trial_slice(
  start: Optional[int], end: Optional[int], self_tuning: bool
) -> None:
  for name, value in (
    ('hparam_start_index', start),
    ('hparam_end_index', end),
  ):
    if value is None:
      continue
    if self_tuning:
      raise UsageError(
        f'--{name} selects search space points; the self-tuning ruleset '
        'has none, so drop it'
      )
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
      raise UsageError(f'--{name} must be a non-negative integer, got {value}')


def run(
  submission_path: str,
  workload: str,
  *,
  experiment_dir: str,
  experiment_name: str,
  framework: str = 'pytorch',
  tuning_ruleset: str = 'external',
  tuning_search_space: Optional[str] = None,
  num_tuning_trials: int = 1,
  max_global_steps: Optional[int] = None,
  rng_seed: Optional[int] = None,
  overwrite: bool = False,
  resume_last_run: bool = False,
  data_dir: Optional[str] = None,
  benchmark: str = 'v0.6',
  save_checkpoints: bool = True,
  save_intermediate_checkpoints: bool = True,
  budget_factor: Optional[float] = None,
  stop_at_targets: bool = True,
  torch_num_threads: Optional[int] = 1,
  hparam_start_index: Optional[int] = None,
  hparam_end_index: Optional[int] = None,
  flag_values: Optional[Dict[str, Any]] = None,
) -> List[training.TrialResult]:
  """Trains a submission on a workload, one or more trials, like AlgoPerf.

  Args:
    submission_path: the submission's `.py` file, relative to the working
      directory (or the repository root) or absolute.
    workload: a workload the local runner knows (e.g. 'digits').
    experiment_dir: root of all experiments.
    experiment_name: subdirectory of `experiment_dir` for this experiment.
    framework: 'pytorch'; 'jax' is not supported by the local runner yet.
    tuning_ruleset: 'external' (needs `tuning_search_space`) or 'self'.
    tuning_search_space: search space JSON file (external only), a list of
      points or a dict of dimensions sampled with a Halton sequence.
    num_tuning_trials: how many points of the search space to draw.
    max_global_steps: stop each trial after this many steps.
    rng_seed: seed for every trial; None draws a fresh one per trial.
    overwrite: move an existing `<workload>_<framework>` directory aside to
      `<dir>.backup-<timestamp>` (nothing is deleted) and start over.
    resume_last_run: continue the trials in an existing directory from their
      latest checkpoints.
    data_dir: the workload's data directory (digits needs none).
    benchmark: 'v0.5' or 'v0.6'; its catalog gives the timing rules (budget
      factor for self-tuning, budget checked every step or at evals).
    save_checkpoints: write a checkpoint at every eval and at the end.
    save_intermediate_checkpoints: keep older checkpoints too.
    budget_factor: overrides the ruleset's budget multiplier (1 for external,
      the catalog's factor for self-tuning); target setting uses 1.
    stop_at_targets: stop a trial when both targets are reached (official);
      False trains to the budget, as target setting needs.
    torch_num_threads: PyTorch intra-op CPU threads for the run (None leaves
      torch's default). One thread is the fastest for the small proxy
      models, and steadier: with several threads, any other load on the
      cores slows the spinning thread pool down many times over.
    hparam_start_index: train only the trials from this 0-based index on
      (external only); trial index i still writes `trial_<i+1>`. A second
      slice of the same experiment finds the directory there and needs
      `resume_last_run`.
    hparam_end_index: train only the trials before this 0-based index.
    flag_values: what flags_<k>.json records; defaults to these arguments.

  Returns:
    One `TrialResult` per trial, in trial order.

  Raises:
    UsageError: an input is wrong or the directory exists without
      `overwrite` or `resume_last_run`.
  """
  if flag_values is None:
    flag_values = {
      key: value for key, value in locals().items() if key != 'flag_values'
    }
  if framework not in FRAMEWORKS:
    raise UsageError(
      f'unknown framework {framework!r}; choose one of {", ".join(FRAMEWORKS)}'
    )
  if framework == 'jax':
    raise UsageError(
      'framework jax is not yet supported by the local runner; use pytorch'
    )
  if tuning_ruleset not in TUNING_RULESETS:
    raise UsageError(
      f'unknown tuning ruleset {tuning_ruleset!r}; choose external or self'
    )
  if overwrite and resume_last_run:
    raise UsageError('choose one of --overwrite and --resume_last_run')
  self_tuning = tuning_ruleset == 'self'
  _check_trial_slice(hparam_start_index, hparam_end_index, self_tuning)
  if torch_num_threads is not None:
    torch.set_num_threads(torch_num_threads)
  rules_catalog = catalog.load_catalog(benchmark)

  workload_obj = loading.make_workload(workload)
  submission = loading.load_submission(submission_path)
  if self_tuning:
    if tuning_search_space:
      raise UsageError(
        'the self-tuning ruleset takes no search space; drop '
        f'--tuning_search_space={tuning_search_space}'
      )
    points = [None]
  else:
    if not tuning_search_space:
      raise UsageError('the external ruleset needs --tuning_search_space')
    points = loading.load_search_space(tuning_search_space, num_tuning_trials)
  trials = list(
    itertools.islice(enumerate(points), hparam_start_index, hparam_end_index)
  )
  if not trials:
    raise UsageError(
      f'--hparam_start_index={hparam_start_index} and --hparam_end_index='
      f'{hparam_end_index} select none of the {len(points)} trials'
    )

  global_batch_size = resolve_batch_size(submission, workload, workload_obj)
  eval_batch_fn = getattr(submission, 'get_eval_batch_size', None)
  global_eval_batch_size = (
    eval_batch_fn(workload) if eval_batch_fn else workload_obj.eval_batch_size
  )
  _check_divisible('global batch size', global_batch_size)
  _check_divisible('eval batch size', global_eval_batch_size)

  if budget_factor is None:
    budget_factor = (
      rules_catalog.self_tuning_budget_factor if self_tuning else 1.0
    )
  rules = training.Rules(
    budget_sec=workload_obj.max_allowed_runtime_sec * budget_factor,
    budget_checked_every_step=rules_catalog.budget_checked_every_step,
    stop_at_targets=stop_at_targets,
    runner_hooks=rules_catalog.runner_hooks,
  )

  workload_dir = os.path.join(
    os.path.expanduser(experiment_dir),
    experiment_name,
    f'{workload}_{framework}',
  )
  if os.path.exists(workload_dir):
    if overwrite:
      backup = _move_aside(workload_dir)
      logging.info('Moved the existing %s aside to %s.', workload_dir, backup)
    elif not resume_last_run:
      raise UsageError(
        f'{workload_dir} already exists; pass --resume_last_run to continue '
        'it or --overwrite to move it aside to a timestamped backup'
      )

  results = []
  for index, point in trials:
    trial_dir = os.path.join(workload_dir, f'trial_{index + 1}')
    os.makedirs(trial_dir, exist_ok=True)
    hyperparameters = point
    if point is not None:
      hparams_path = os.path.join(trial_dir, logs.HPARAMS_JSON)
      if os.path.exists(hparams_path):
        hyperparameters = loading.to_hyperparameters(
          logs.read_json(hparams_path)
        )
      else:
        logs.write_json(hparams_path, point._asdict())
    seed = rng_seed
    if seed is None:
      seed = _fresh_seed(64 if self_tuning else 32)
    logging.info(
      '--- Trial %d/%d (%s, %s rules) seed %d, hyperparameters %s',
      index + 1,
      len(points),
      workload,
      rules_catalog.benchmark_version,
      seed,
      None if hyperparameters is None else hyperparameters._asdict(),
    )
    results.append(
      training.train_once(
        workload=workload_obj,
        submission=submission,
        hyperparameters=hyperparameters,
        global_batch_size=global_batch_size,
        global_eval_batch_size=global_eval_batch_size,
        rules=rules,
        trial_dir=trial_dir,
        trial_index=index + 1,
        rng_seed=seed,
        flag_values=dict(flag_values),
        data_dir=data_dir,
        max_global_steps=max_global_steps,
        save_checkpoints=save_checkpoints,
        save_intermediate_checkpoints=save_intermediate_checkpoints,
      )
    )
  return results
