"""`sfperf score`: score AlgoPerf logs the way the official scorer does."""

import argparse
import sys

from absl import logging

from sfperf.catalog import (
  BENCHMARK_VERSIONS,
  CatalogError,
  load_catalog,
  load_proxy_catalog,
  strip_framework_suffix,
)
from sfperf.results.logs import LogDirError, read_log_root
from sfperf.results.report import markdown_table, write_outputs
from sfperf.results.scoring import TRIAL_CHOICES, score_logs

OFFICIAL_LABEL = 'AlgoPerf logs scored with the official scoring semantics'
PROXY_LABEL = 'local proxy path, not an official AlgoPerf score'


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='sfperf score',
    description=(
      'Score the submissions under LOGDIR (a folder of '
      '<submission>/<study>/<workload>_<framework>/trial_<k>/, or one '
      'submission folder) as the official AlgoPerf scorer does.'
    ),
  )
  parser.add_argument('logdir', metavar='LOGDIR')
  parser.add_argument(
    '--benchmark',
    choices=BENCHMARK_VERSIONS,
    default='v0.6',
    help='benchmark version whose catalog and rules apply (default v0.6)',
  )
  parser.add_argument(
    '--self-tuning',
    action='store_true',
    help='self-tuning ruleset (one trial per study)',
  )
  parser.add_argument(
    '--out',
    required=True,
    metavar='OUTDIR',
    help='folder for scores.csv, time_to_targets.csv/.md and the profile',
  )
  parser.add_argument(
    '--suite',
    choices=('auto', 'algoperf', 'proxy'),
    default='auto',
    help='workload suite: AlgoPerf workloads, the local proxy workloads, '
    'or auto (proxy when every workload found is a proxy workload)',
  )
  parser.add_argument(
    '--trial-choice',
    choices=TRIAL_CHOICES,
    default='fewest_evals',
    help='how a study picks its trial: fewest evals to target (official '
    'code, default) or least time (the written rules)',
  )
  return parser


def _workload_names(logs) -> set:
  return {
    strip_framework_suffix(t.workload)
    for trials in logs.trials.values()
    for t in trials
  }


def main(argv) -> int:
  args = build_parser().parse_args(argv)
  # Per-file warnings are collected, counted and written to warnings.txt;
  # printing each one as well would bury the table.
  logging.set_verbosity(logging.ERROR)
  try:
    logs = read_log_root(args.logdir)
    proxy = load_proxy_catalog(args.benchmark)
    suite = args.suite
    if suite == 'auto':
      suite = (
        'proxy'
        if _workload_names(logs) <= set(proxy.workloads)
        else ('algoperf')
      )
    catalog = proxy if suite == 'proxy' else load_catalog(args.benchmark)
    scores = score_logs(logs, catalog, args.trial_choice)
  except (LogDirError, CatalogError) as e:
    print(f'sfperf score: {e}', file=sys.stderr)
    return 2

  ruleset = 'self-tuning' if args.self_tuning else 'external-tuning'
  label = PROXY_LABEL if suite == 'proxy' else OFFICIAL_LABEL
  try:
    paths = write_outputs(scores, args.out, ruleset, label)
  except OSError as e:
    print(f'sfperf score: cannot write to {args.out}: {e}', file=sys.stderr)
    return 2
  print(markdown_table(scores, ruleset, label), end='')
  if scores.warnings:
    print(f'\n{len(scores.warnings)} warning(s); listed in {paths["warnings"]}')
  print(
    '\nWrote '
    + ', '.join(
      paths[k] for k in ('scores', 'time_to_targets', 'table', 'profile')
    )
  )
  return 0
