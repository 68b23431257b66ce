"""`sfperf run`: the official submission_runner flags, on the local runner.

Example:
  sfperf run --submission_path=submissions/self_tuning/nadamw_baseline/\
submission.py --workload=digits --framework=pytorch --tuning_ruleset=self \
--experiment_dir=runs --experiment_name=baseline --rng_seed=0
"""

import sys
from typing import List, Optional

from absl import flags, logging

from sfperf.catalog import (
  BENCHMARK_VERSIONS,
  CatalogError,
  load_proxy_catalog,
)
from sfperf.results.scoring import describe_outcome
from sfperf.runner.checkpoint import CheckpointError
from sfperf.runner.experiment import FRAMEWORKS, TUNING_RULESETS, run
from sfperf.runner.loading import UsageError
from sfperf.runner.training import SubmissionError


def define_flags() -> flags.FlagValues:
  """A private flag set, so that repeated calls never see stale values."""
  fv = flags.FlagValues()
  flags.DEFINE_string(
    'submission_path',
    None,
    'Path to the submission .py file, relative to the working directory '
    '(every folder on the way needs an __init__.py) or absolute.',
    flag_values=fv,
  )
  flags.DEFINE_string(
    'workload', None, 'Workload to train, e.g. digits.', flag_values=fv
  )
  flags.DEFINE_enum(
    'framework', 'pytorch', FRAMEWORKS, 'Framework.', flag_values=fv
  )
  flags.DEFINE_enum(
    'tuning_ruleset',
    'external',
    TUNING_RULESETS,
    'external: hyperparameters from --tuning_search_space; self: none, and '
    'the self-tuning budget factor of --benchmark applies.',
    flag_values=fv,
  )
  flags.DEFINE_string(
    'tuning_search_space',
    None,
    'JSON search space (external ruleset only): a list of points, used in '
    'order, or a dict of dimensions, sampled with a Halton sequence in a '
    'seeded order.',
    flag_values=fv,
  )
  flags.DEFINE_integer(
    'num_tuning_trials',
    1,
    'Number of search space points to train.',
    flag_values=fv,
  )
  flags.DEFINE_integer(
    'hparam_start_index',
    None,
    'Train only the trials from this 0-based index of the search space on; '
    'index i writes trial_<i+1>. Slices run as separate invocations may '
    'share one experiment: a slice adds its trials to an existing '
    'experiment as long as none of its trial directories exists yet.',
    flag_values=fv,
  )
  flags.DEFINE_integer(
    'hparam_end_index',
    None,
    'Train only the trials before this 0-based index of the search space.',
    flag_values=fv,
  )
  flags.DEFINE_string(
    'experiment_dir', None, 'Root directory of experiments.', flag_values=fv
  )
  flags.DEFINE_string(
    'experiment_name', None, 'Name of this experiment.', flag_values=fv
  )
  flags.DEFINE_integer(
    'max_global_steps',
    None,
    'Stop each trial after this many steps.',
    flag_values=fv,
  )
  flags.DEFINE_integer(
    'rng_seed',
    None,
    'Seed used for every trial; unset draws a fresh seed per trial.',
    flag_values=fv,
  )
  flags.DEFINE_boolean(
    'overwrite',
    False,
    'If <experiment_dir>/<experiment_name>/<workload>_<framework> exists, '
    'move it aside to <experiment_dir>/<experiment_name>/.backup/'
    '<workload>_<framework>-<timestamp> and start over. Nothing is deleted '
    '(the official runner deletes the directory); the scorer skips .backup.',
    flag_values=fv,
  )
  flags.DEFINE_boolean(
    'resume_last_run',
    False,
    'Continue the trials of an existing experiment from their latest '
    'checkpoints.',
    flag_values=fv,
  )
  flags.DEFINE_string(
    'data_dir',
    '~/data',
    'Dataset directory (digits needs none).',
    flag_values=fv,
  )
  flags.DEFINE_boolean(
    'save_checkpoints',
    True,
    'Checkpoint at every eval and at the end.',
    flag_values=fv,
  )
  flags.DEFINE_boolean(
    'save_intermediate_checkpoints',
    True,
    'Keep every checkpoint, not only the latest.',
    flag_values=fv,
  )
  flags.DEFINE_integer(
    'torch_num_threads',
    1,
    'PyTorch intra-op CPU threads; 1 is fastest and steadiest for the small '
    "proxy models. 0 keeps torch's default.",
    flag_values=fv,
  )
  flags.DEFINE_enum(
    'benchmark',
    'v0.6',
    BENCHMARK_VERSIONS,
    'AlgoPerf rules to follow (budget factor, when the budget is checked).',
    flag_values=fv,
  )
  return fv


def main(argv: Optional[List[str]] = None) -> int:
  """Parses flags, runs, and turns user errors into one line and exit 2."""
  argv = list(sys.argv if argv is None else argv)
  fv = define_flags()
  if any(arg in ('-h', '--help', '--helpfull') for arg in argv[1:]):
    print(
      f'usage: {argv[0]} --submission_path=PATH --workload=NAME '
      '--experiment_dir=DIR --experiment_name=NAME [flags]\n\n'
      "Trains a submission like AlgoPerf's submission_runner.py.\n"
    )
    print(fv.module_help(__name__))
    return 0
  try:
    positional = fv(argv)[1:]
  except flags.Error as e:
    print(f'{argv[0]}: {e}', file=sys.stderr)
    return 2
  if positional:
    print(
      f'{argv[0]}: unexpected argument(s) {" ".join(positional)}; every '
      'input is a --flag=value (see --help)',
      file=sys.stderr,
    )
    return 2
  logging.set_verbosity(logging.INFO)
  for name in (
    'submission_path',
    'workload',
    'experiment_dir',
    'experiment_name',
  ):
    if fv[name].value is None:
      print(f'{argv[0]}: --{name} is required', file=sys.stderr)
      return 2
  try:
    results = run(
      fv.submission_path,
      fv.workload,
      experiment_dir=fv.experiment_dir,
      experiment_name=fv.experiment_name,
      framework=fv.framework,
      tuning_ruleset=fv.tuning_ruleset,
      tuning_search_space=fv.tuning_search_space,
      num_tuning_trials=fv.num_tuning_trials,
      max_global_steps=fv.max_global_steps,
      rng_seed=fv.rng_seed,
      overwrite=fv.overwrite,
      resume_last_run=fv.resume_last_run,
      data_dir=fv.data_dir,
      benchmark=fv.benchmark,
      save_checkpoints=fv.save_checkpoints,
      save_intermediate_checkpoints=fv.save_intermediate_checkpoints,
      torch_num_threads=fv.torch_num_threads or None,
      hparam_start_index=fv.hparam_start_index,
      hparam_end_index=fv.hparam_end_index,
      flag_values=fv.flag_values_dict(),
    )
  except (UsageError, CatalogError, CheckpointError) as e:
    # CheckpointError: a checkpoint that reads but cannot be restored into
    # this submission's state (see sfperf.runner.checkpoint).
    print(f'{argv[0]}: {e}', file=sys.stderr)
    return 2
  except SubmissionError as e:
    # The submission's own code failed: its message and step, one line; the
    # traceback is in the trial directory. A hyperparameter missing from the
    # search space is a bad input (2), anything else the submission's bug.
    print(f'{argv[0]}: {e}', file=sys.stderr)
    return 2 if e.missing_hyperparameter else 1
  except KeyboardInterrupt:
    # Checkpoints and logs are written atomically, so what is on disk is
    # whole and the trial continues from its latest checkpoint.
    print(
      f'\n{argv[0]}: interrupted; resume with --resume_last_run',
      file=sys.stderr,
    )
    return 130
  spec = load_proxy_catalog(fv.benchmark).workloads.get(fv.workload)
  for result in results:
    # Strict `>`, as AlgoPerf's runner stops; the scorer counts `>=`.
    logging.info(
      'Trial %d: score %.2fs, step %d; runner stop rule (strict >): '
      'validation target %s, test target %s; %s -> %s',
      result.trial_index,
      result.score,
      result.global_step,
      'reached' if result.reached_target else 'not reached',
      'reached' if result.test_goal_reached else 'not reached',
      describe_outcome(result.eval_results, spec) if spec else '',
      result.trial_dir,
    )
  return 0


if __name__ == '__main__':
  sys.exit(main())
