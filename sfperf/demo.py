"""`sfperf demo`: both self-tuning submissions on the digits proxy, scored.

Runs the Schedule-Free AdamW entry and the NAdamW baseline through the local
runner (several seeded studies each), then scores the logs the way the
official scorer does and prints the time-to-target table. Finished trials are
kept and skipped on a second call; `--fresh` moves earlier output aside.
"""

import argparse
import os
import sys
import time
from typing import List, Tuple

from absl import logging

from sfperf.catalog import load_proxy_catalog
from sfperf.fsutil import move_aside
from sfperf.results.logs import read_log_root
from sfperf.results.report import markdown_table, write_outputs
from sfperf.results.scoring import describe_outcome, score_logs
from sfperf.seeds import derive_seed

SUBMISSIONS = (
  (
    'schedule_free_adamw',
    'submissions/self_tuning/schedule_free_adamw/submission.py',
  ),
  ('nadamw_baseline', 'submissions/self_tuning/nadamw_baseline/submission.py'),
)
WORKLOAD = 'digits'
FRAMEWORK = 'pytorch'
LABEL = 'local proxy path (digits, CPU), not an official AlgoPerf score'


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='sfperf demo', description=__doc__.splitlines()[0]
  )
  parser.add_argument(
    '--out', default='demo_out', help='output folder (default demo_out)'
  )
  parser.add_argument(
    '--studies', type=int, default=3, help='studies per submission'
  )
  parser.add_argument(
    '--benchmark',
    choices=('v0.5', 'v0.6'),
    default='v0.6',
    help='whose timing rules and self-tuning budget factor apply',
  )
  parser.add_argument(
    '--fresh',
    action='store_true',
    help='move an earlier demo output aside (kept, renamed) and rerun',
  )
  return parser


def _plan(studies: int) -> List[Tuple[str, str, int]]:
  return [
    (name, path, study)
    for study in range(studies)
    for name, path in SUBMISSIONS
  ]


def _run_one(out: str, name: str, path: str, study: int, benchmark: str):
  from sfperf import runner
  from sfperf.runner.logs import ends_with_final_score

  experiment_dir = os.path.join(out, 'logs', name)
  trial_dir = os.path.join(
    experiment_dir, f'study_{study}', f'{WORKLOAD}_{FRAMEWORK}', 'trial_1'
  )
  if ends_with_final_score(trial_dir):
    return None
  results = runner.run(
    path,
    WORKLOAD,
    experiment_dir=experiment_dir,
    experiment_name=f'study_{study}',
    framework=FRAMEWORK,
    tuning_ruleset='self',
    rng_seed=derive_seed(name, WORKLOAD, study, 1),
    benchmark=benchmark,
    resume_last_run=os.path.isdir(os.path.dirname(trial_dir)),
    save_checkpoints=True,
    save_intermediate_checkpoints=False,
  )
  # The runner leaves out a trial it finds finished on resume.
  return results[0] if results else None


def _move_aside(out: str) -> str:
  """Renames `out` to `<out>.previous-<timestamp>[-N]`; returns the name."""
  return move_aside(out, f'{out.rstrip(os.sep) or out}.previous')


def main(argv) -> int:
  """Runs the demo; user errors are one line and exit 2, Ctrl-C exits 130."""
  args = build_parser().parse_args(argv)
  if args.studies < 1:
    print('sfperf demo: --studies must be at least 1', file=sys.stderr)
    return 2
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    print(
      f'sfperf demo: --out {args.out} is a file, not a folder; choose '
      'another --out',
      file=sys.stderr,
    )
    return 2
  from sfperf.runner import UsageError

  try:
    return _demo(args)
  except UsageError as e:
    print(f'sfperf demo: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    # Finished trials are kept and an interrupted one resumes from its
    # checkpoint, so a rerun (without --fresh) continues where this stopped.
    print(
      '\nsfperf demo: interrupted; rerun make demo to continue',
      file=sys.stderr,
    )
    return 130


def _demo(args) -> int:
  logging.set_verbosity(logging.WARNING)
  if args.fresh and os.path.exists(args.out):
    backup = _move_aside(args.out)
    print(f'Moved the earlier demo output to {backup}')

  plan = _plan(args.studies)
  print(
    f'Running {len(plan)} self-tuning trials on the {WORKLOAD} proxy '
    f'({args.benchmark} rules) into {args.out}/logs'
  )
  catalog = load_proxy_catalog(args.benchmark)
  spec = catalog.workload(WORKLOAD)
  interactive = sys.stdout.isatty()
  started = time.time()
  for number, (name, path, study) in enumerate(plan, start=1):
    prefix = f'[{number}/{len(plan)}] {name} study_{study}'
    if interactive:
      print(f'{prefix}: training...', end='', flush=True)
    run_started = time.time()
    result = _run_one(args.out, name, path, study, args.benchmark)
    if interactive:
      print('\r', end='')
    if result is None:
      print(f'{prefix}: finished earlier, kept')
      continue
    outcome = describe_outcome(result.eval_results, spec)
    print(
      f'{prefix}: {outcome}; stopped at step '
      f'{result.global_step}, {result.score:.1f} s submission time '
      f'({time.time() - run_started:.0f} s wall)'
    )

  scores = score_logs(read_log_root(os.path.join(args.out, 'logs')), catalog)
  paths = write_outputs(
    scores, os.path.join(args.out, 'scores'), 'self-tuning', LABEL
  )
  print()
  print(markdown_table(scores, 'self-tuning', LABEL), end='')
  print(
    f'\nDone in {time.time() - started:.0f} s. Logs: {args.out}/logs; '
    f'table: {paths["table"]}; profile: {paths["profile"]}; '
    f'scores: {paths["scores"]}'
  )
  return 0
