"""`run`: the official submission_runner's job as a Python function.

Sets up the experiment directory, picks the batch size and hyperparameters,
and trains each trial with `training.train_once`.
"""

import inspect
import itertools
import numbers
import os
from typing import Any, Dict, List, Optional

import torch
from absl import logging

from sfperf import catalog
from sfperf.fsutil import move_aside
from sfperf.runner import checkpoint, loading, logs, training
from sfperf.runner.loading import UsageError

FRAMEWORKS = ('pytorch', 'jax')
TUNING_RULESETS = ('external', 'self')


def _base_workload_name(workload_name: str, known: List[str]) -> str:
  """The base workload a variant belongs to, by substring (official rule)."""
  for base in sorted(known, key=len, reverse=True):
    if base in workload_name:
      return base
  return workload_name


def _display_path(path: str) -> str:
  """`path` relative to the working directory if under it, else absolute."""
  relative = os.path.relpath(path)
  return path if relative.startswith('..') else relative


def _submission_name(submission) -> str:
  path = getattr(submission, '__file__', None)
  return _display_path(path) if path else submission.__name__


def _check_batch_size(
  submission, call: str, value: Any, upper: Optional[int] = None
) -> int:
  """`value` as an int if it is a usable batch size, else UsageError."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise UsageError(
      f'submission {_submission_name(submission)}: {call} returned '
      f'{value!r} ({type(value).__name__}); it must return a positive int'
    )
  value = int(value)
  if value < 1:
    raise UsageError(
      f'submission {_submission_name(submission)}: {call} returned '
      f'{value}; a batch size must be at least 1'
    )
  if upper is not None and value > upper:
    # The training queue drops a partial last batch, as AlgoPerf's input
    # pipelines do, so a batch larger than the split would never be full.
    raise UsageError(
      f'submission {_submission_name(submission)}: {call} returned '
      f'{value}, more than the {upper} training examples of the workload; '
      f'return at most {upper}'
    )
  return value


def resolve_batch_size(submission, workload_name: str, workload) -> int:
  """The submission's global batch size for this workload.

  Tries the full name, then (on ValueError) the base workload name, as the
  official runner does, and for a proxy workload its AlgoPerf analogue
  (`workload.algoperf_analogue`, e.g. 'mnist'). Logs the name used.

  Raises:
    UsageError: get_batch_size raised ValueError for every name or any
      other exception (the official runner lets that propagate), or
      returned something other than an int in [1, num_train_examples].
  """
  known = list(catalog.load_catalog('v0.6').workloads)
  names = [workload_name, _base_workload_name(workload_name, known)]
  analogue = getattr(workload, 'algoperf_analogue', None)
  if analogue:
    names.append(analogue)
  tried = []
  for name in dict.fromkeys(names):
    call = f'get_batch_size({name!r})'
    try:
      batch_size = submission.get_batch_size(name)
    except ValueError:
      tried.append(name)
      continue
    except Exception as e:  # the submission's bug, not the runner's
      raise UsageError(
        f'submission {_submission_name(submission)}: {call} raised '
        f'{loading.describe_error(e)}; fix get_batch_size'
      ) from None
    batch_size = _check_batch_size(
      submission, call, batch_size, workload.num_train_examples
    )
    logging.info('Batch size %d, from %s.', batch_size, call)
    return batch_size
  raise UsageError(
    f'the submission has no batch size for workload {workload_name!r}; '
    f'get_batch_size raised ValueError for {", ".join(map(repr, tried))}'
  )


def resolve_eval_batch_size(submission, workload_name: str, workload) -> int:
  """`get_eval_batch_size(workload_name)` if defined, else the workload's."""
  eval_batch_fn = getattr(submission, 'get_eval_batch_size', None)
  if eval_batch_fn is None:
    return workload.eval_batch_size
  call = f'get_eval_batch_size({workload_name!r})'
  try:
    value = eval_batch_fn(workload_name)
  except Exception as e:  # the submission's bug, not the runner's
    raise UsageError(
      f'submission {_submission_name(submission)}: {call} raised '
      f'{loading.describe_error(e)}; fix get_eval_batch_size'
    ) from None
  return _check_batch_size(submission, call, value)


def _device_count() -> int:
  """Devices a PyTorch batch is split over: the visible GPUs, or the CPU."""
  return max(torch.cuda.device_count(), 1)


def _jax_device_count() -> int:
  """Devices a JAX batch is sharded over: all local devices (v0.6)."""
  import jax

  return jax.local_device_count()


def _check_divisible(
  name: str, batch_size: int, framework: str = 'pytorch'
) -> None:
  devices = _jax_device_count() if framework == 'jax' else _device_count()
  if batch_size % devices:
    raise UsageError(
      f'{name} {batch_size} is not divisible by the number of devices '
      f'({devices}); choose a multiple of {devices}'
    )


def _fresh_seed(bits: int) -> int:
  return int.from_bytes(os.urandom(bits // 8), 'little')


# Where `--overwrite` keeps what it moves aside, inside the study directory.
# A dot-directory, so that the scorer never reads a backup as a workload.
BACKUP_DIR = '.backup'


def _move_aside(path: str) -> str:
  """Moves `path` to `<parent>/.backup/<name>-<timestamp>`; returns that."""
  return move_aside(
    path,
    os.path.join(os.path.dirname(path), BACKUP_DIR, os.path.basename(path)),
  )


def _check_int(
  name: str, value: Any, minimum: int, allow_none: bool = False
) -> None:
  if value is None and allow_none:
    return
  if (
    isinstance(value, bool)
    or not isinstance(value, numbers.Integral)
    or value < minimum
  ):
    raise UsageError(f'--{name} must be an integer >= {minimum}, got {value!r}')


def _check_directory_path(
  experiment_dir: str, experiment_name: str, workload_dir: str
) -> None:
  """Fails if a part of the workload directory's path is not a directory."""
  root = os.path.abspath(experiment_dir)
  ancestor = root
  while True:
    if os.path.exists(ancestor) and not os.path.isdir(ancestor):
      where = '' if ancestor == root else f' ({ancestor} is a file)'
      raise UsageError(
        f'--experiment_dir {experiment_dir} is not a directory{where}; '
        'choose a directory'
      )
    parent = os.path.dirname(ancestor)
    if parent == ancestor:
      break
    ancestor = parent
  experiment_path = os.path.join(root, experiment_name)
  if os.path.exists(experiment_path) and not os.path.isdir(experiment_path):
    raise UsageError(
      f'--experiment_name {experiment_name}: {experiment_path} is a file; '
      'choose another name'
    )
  if os.path.exists(workload_dir) and not os.path.isdir(workload_dir):
    raise UsageError(
      f'{workload_dir} is a file, not a workload directory; move it away'
    )


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
    framework: 'pytorch' or 'jax'; the workload and the submission must be
      of that framework (for 'jax', workloads with a JAX version: digits).
    tuning_ruleset: 'external' (needs `tuning_search_space`) or 'self'.
    tuning_search_space: search space JSON file (external only), a list of
      points or a dict of dimensions sampled with a Halton sequence.
    num_tuning_trials: how many points of the search space to draw.
    max_global_steps: stop each trial after this many steps.
    rng_seed: seed for every trial; None draws a fresh one per trial.
    overwrite: move an existing `<workload>_<framework>` directory aside to
      `<experiment_dir>/<experiment_name>/.backup/<workload>_<framework>-
      <timestamp>` (nothing is deleted) and start over.
    resume_last_run: continue the trials in an existing directory from their
      latest readable checkpoints; a finished trial is skipped (and left out
      of the results), and a trial of another submission is an error.
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
      torch's default; a JAX run leaves torch alone). One thread is the
      fastest for the small proxy models, and steadier: with several
      threads, any other load on the cores slows the spinning thread pool
      down many times over.
    hparam_start_index: train only the trials from this 0-based index on
      (external only); trial index i still writes `trial_<i+1>`. A second
      slice of the same experiment adds its trials beside the first's
      without `resume_last_run`, as long as none of its trial directories
      exists yet.
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
  # Every input is checked before anything is created or moved, so that a
  # fixed rerun finds no half-made directory in its way.
  if framework not in FRAMEWORKS:
    raise UsageError(
      f'unknown framework {framework!r}; choose one of {", ".join(FRAMEWORKS)}'
    )
  if tuning_ruleset not in TUNING_RULESETS:
    raise UsageError(
      f'unknown tuning ruleset {tuning_ruleset!r}; choose external or self'
    )
  if overwrite and resume_last_run:
    raise UsageError('choose one of --overwrite and --resume_last_run')
  _check_int('num_tuning_trials', num_tuning_trials, 1)
  _check_int('max_global_steps', max_global_steps, 1, allow_none=True)
  _check_int('torch_num_threads', torch_num_threads, 0, allow_none=True)
  self_tuning = tuning_ruleset == 'self'
  _check_trial_slice(hparam_start_index, hparam_end_index, self_tuning)
  rules_catalog = catalog.load_catalog(benchmark)

  workload_obj = loading.make_workload(workload, framework)
  submission = loading.load_submission(submission_path)
  loading.check_submission_framework(submission, framework)
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
  global_eval_batch_size = resolve_eval_batch_size(
    submission, workload, workload_obj
  )
  _check_divisible('global batch size', global_batch_size, framework)
  _check_divisible('eval batch size', global_eval_batch_size, framework)

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
  _check_directory_path(
    os.path.expanduser(experiment_dir), experiment_name, workload_dir
  )
  sliced = hparam_start_index is not None or hparam_end_index is not None
  resume_points = {}
  if os.path.exists(workload_dir) and resume_last_run:
    resume_points = {
      index: _resume_point(
        os.path.join(workload_dir, f'trial_{index + 1}'),
        submission,
        max_global_steps,
        stop_at_targets,
        framework,
      )
      for index, _ in trials
    }
  elif os.path.exists(workload_dir) and sliced and not overwrite:
    _check_new_slice(workload_dir, [index for index, _ in trials], submission)
  elif os.path.exists(workload_dir) and not overwrite:
    raise UsageError(
      f'{workload_dir} already exists; pass --resume_last_run to continue '
      f'it or --overwrite to move it aside to {BACKUP_DIR}/'
    )
  _warn_unused_hooks(submission, rules_catalog)
  if torch_num_threads and framework == 'pytorch':
    torch.set_num_threads(torch_num_threads)
  if overwrite and os.path.exists(workload_dir):
    backup = _move_aside(workload_dir)
    logging.info('Moved the existing %s aside to %s.', workload_dir, backup)

  results = []
  for index, point in trials:
    trial_dir = os.path.join(workload_dir, f'trial_{index + 1}')
    resume_from = resume_points.get(index)
    if resume_from is _FINISHED:
      logging.info(
        'trial_%d already finished; nothing to do (%s).', index + 1, trial_dir
      )
      continue
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
    hyperparameters_source = None
    if point is not None:
      hyperparameters_source = (
        tuning_search_space if hyperparameters is point else hparams_path
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
        resume_from=resume_from,
        hyperparameters_source=hyperparameters_source,
        framework=framework,
      )
    )
  return results


def _check_new_slice(workload_dir: str, indices: List[int], submission) -> None:
  """A slice of trials may join an experiment only where nothing is yet.

  The official runner would ask before writing into an existing experiment;
  here a slice whose trial directories do not exist simply adds them, as
  separate `--hparam_start_index/--hparam_end_index` invocations need, and
  is refused if one of them exists (resume it or choose another slice) or
  if the experiment's trials come from another submission.

  Raises:
    UsageError: a trial directory of the slice exists, or another
      submission trained the experiment.
  """
  for index in indices:
    trial_dir = os.path.join(workload_dir, f'trial_{index + 1}')
    if os.path.lexists(trial_dir):
      raise UsageError(
        f'{trial_dir} already exists; pass --resume_last_run to continue '
        'it, or choose --hparam_start_index/--hparam_end_index for trials '
        'not yet trained'
      )
  for name in sorted(os.listdir(workload_dir)):
    trial_dir = os.path.join(workload_dir, name)
    if name.startswith('trial_') and os.path.isdir(trial_dir):
      _check_same_submission(trial_dir, None, submission)


def _warn_unused_hooks(submission, rules_catalog) -> None:
  """Warns when the submission has v0.6 hooks these rules never call."""
  hooks = rules_catalog.runner_hooks
  version = rules_catalog.benchmark_version
  name = _submission_name(submission)
  if 'prepare_for_eval' not in hooks and callable(
    getattr(submission, 'prepare_for_eval', None)
  ):
    logging.warning(
      '%s defines prepare_for_eval, which %s rules never call; the '
      'evaluator will see whatever update_params leaves in the model.',
      name,
      version,
    )
  try:
    parameters = inspect.signature(submission.update_params).parameters
  except (TypeError, ValueError):
    parameters = {}
  if 'train_state' not in hooks and 'train_state' in parameters:
    logging.warning(
      '%s: update_params takes train_state, which %s rules never pass; it '
      'gets its default.',
      name,
      version,
    )


# `_resume_point` of a trial that has nothing left to train.
_FINISHED = 'finished'


def _resume_point(
  trial_dir: str,
  submission,
  max_global_steps: Optional[int],
  stop_at_targets: bool,
  framework: str = 'pytorch',
) -> Any:
  """How to resume one trial: `_FINISHED`, None (afresh) or (path, payload).

  Reads the trial's newest readable checkpoint (a corrupt newer one is
  skipped with a warning) and checks that this submission wrote it.

  Raises:
    UsageError: the trial path is a file, every checkpoint is corrupt, or
      another submission trained the trial.
  """
  if not os.path.exists(trial_dir):
    return None
  if not os.path.isdir(trial_dir):
    raise UsageError(f'{trial_dir} is a file, not a trial directory')
  checkpoints = training.framework_parts(framework)[1]
  try:
    found = checkpoints.latest_readable_checkpoint(trial_dir)
  except checkpoint.CheckpointError as e:
    raise UsageError(str(e)) from None
  _check_same_submission(
    trial_dir, None if found is None else found[1], submission
  )
  payload = None if found is None else found[1]
  if training.trial_finished(
    trial_dir, payload, max_global_steps, stop_at_targets
  ):
    return _FINISHED
  return found


def _check_same_submission(
  trial_dir: str, payload: Optional[Dict[str, Any]], submission
) -> None:
  """UsageError if the trial was trained by another submission file.

  The checkpoint names its submission; older checkpoints (and trials
  without one) are compared through flags_0.json's submission_path.
  """
  current = training.submission_identity(submission)
  recorded = None
  if payload is not None:
    recorded = payload.get('extra', {}).get(training.SUBMISSION_KEY)
  if recorded is None:
    flags_path = os.path.join(trial_dir, 'flags_0.json')
    try:
      flags_path_value = logs.read_json(flags_path).get('submission_path')
    except (OSError, ValueError, AttributeError):
      flags_path_value = None
    if flags_path_value:
      recorded = loading.submission_identity(flags_path_value)
  if recorded is None or current is None or recorded == current:
    return
  recorded, current = _display_path(recorded), _display_path(current)
  raise UsageError(
    f'{trial_dir} was trained by submission {recorded}, not {current}; '
    f'resume with --submission_path={recorded} or choose another '
    '--experiment_name'
  )
