"""`sfperf score` and `sfperf compare`: AlgoPerf scoring on the command line."""

import argparse
import os
import sys
from typing import List

from absl import logging

from sfperf.catalog import (
  BENCHMARK_VERSIONS,
  Catalog,
  CatalogError,
  all_workload_names,
  load_catalog,
  load_proxy_catalog,
  strip_framework_suffix,
)
from sfperf.fsutil import atomic_write_text
from sfperf.results import compare as compare_module
from sfperf.results import uncertainty
from sfperf.results.logs import LogDirError, LogSet, read_log_root
from sfperf.results.report import describe, markdown_table, write_outputs
from sfperf.results.scoring import TRIAL_CHOICES, Scores, score_logs

OFFICIAL_LABEL = 'AlgoPerf logs scored with the official scoring semantics'
PROXY_LABEL = 'local proxy path, not an official AlgoPerf score'


class StrictError(ValueError):
  """--strict found fewer studies or trials than the benchmark requires."""


MAX_RESAMPLES = 100_000


def _resample_count(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f'not an integer: {text!r}') from None
  if not 0 <= value <= MAX_RESAMPLES:
    raise argparse.ArgumentTypeError(
      f'{value} is outside 0..{MAX_RESAMPLES} (0 turns the spread off)'
    )
  return value


def _common_arguments(parser: argparse.ArgumentParser) -> None:
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
  parser.add_argument('--out', required=True, metavar='OUTDIR')
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
  parser.add_argument(
    '--exclude-unrun',
    action='store_true',
    help='leave base workloads that no submission ran out of the score '
    'denominator (default: they count as not reached)',
  )
  parser.add_argument(
    '--bootstrap',
    type=_resample_count,
    default=1000,
    metavar='N',
    help='bootstrap resamples of the studies for the spread of each score '
    '(0: none; default 1000)',
  )


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
  _common_arguments(parser)
  parser.add_argument(
    '--strict',
    action='store_true',
    help="fail unless every workload has the benchmark's number of studies "
    'and trials and no trial was skipped (official --strict)',
  )
  return parser


def build_compare_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='sfperf compare',
    description=(
      'Score the submission(s) under VARIANT_LOGDIR inside a reference '
      'field (for example the published leaderboard logs): rank, scores '
      'with and without the variant, speedups over a reference submission.'
    ),
  )
  parser.add_argument('variant', metavar='VARIANT_LOGDIR')
  parser.add_argument(
    '--field',
    action='append',
    required=True,
    metavar='FIELD_LOGDIR',
    help='a folder of reference submissions; repeat to add more',
  )
  parser.add_argument(
    '--reference',
    help='submission the speedups are relative to (default: baseline if '
    "the field has one, else the field's best)",
  )
  _common_arguments(parser)
  return parser


def _workload_names(logs: LogSet) -> set:
  return {
    strip_framework_suffix(t.workload)
    for trials in logs.trials.values()
    for t in trials
  }


def _catalog_for(args, logs: List[LogSet]) -> tuple:
  """The catalog to score against: AlgoPerf's or the proxy suite's.

  `auto` picks the proxy suite when the logs hold proxy workloads and no
  AlgoPerf workload; logs with neither are an error.
  """
  proxy = load_proxy_catalog(args.benchmark)
  algoperf = load_catalog(args.benchmark)
  names = set().union(*(_workload_names(log_set) for log_set in logs))
  suite = args.suite
  if suite == 'auto':
    has_proxy = bool(names & set(proxy.workloads))
    has_algoperf = bool(names & set(algoperf.workloads))
    if not has_proxy and not has_algoperf:
      raise CatalogError(
        'no workload in the logs is in the '
        f'{args.benchmark} catalog or the proxy suite (found: '
        f'{", ".join(sorted(names))})'
      )
    suite = 'proxy' if has_proxy and not has_algoperf else 'algoperf'
  if suite == 'proxy':
    return proxy, PROXY_LABEL
  _warn_if_other_version(args.benchmark, names, logs)
  return algoperf, OFFICIAL_LABEL


def _warn_if_other_version(benchmark: str, names: set, logs) -> None:
  """v0.5 logs hold held-out variants; scored as v0.6 they lose them."""
  for version in BENCHMARK_VERSIONS:
    if version == benchmark:
      continue
    other = set(load_catalog(version).held_out_workloads)
    mine = set(load_catalog(benchmark).held_out_workloads)
    found = sorted((names & other) - mine)
    if found:
      logs[0].warnings.insert(
        0,
        f'the logs hold {version} held-out workloads ({", ".join(found)}); '
        f'they are scored with the {benchmark} catalog, where they do not '
        f'count: pass --benchmark {version} if these are {version} logs',
      )


def _check_out(out: str) -> None:
  if not out:
    raise CatalogError('--out must name a folder')


def check_strict(scores: Scores, catalog: Catalog, self_tuning: bool) -> None:
  """The official --strict checks: study and trial counts, skipped files."""
  problems = []
  expected_trials = 1 if self_tuning else catalog.num_trials_external
  required = list(catalog.base_workloads) + list(catalog.held_out_workloads)
  for name in scores.submissions:
    missing = [w for w in required if w not in scores.results[name]]
    if missing:
      problems.append(f'{name}: no logs for {", ".join(missing)}')
    for workload, result in scores.results[name].items():
      if len(result.studies) != catalog.num_studies:
        problems.append(
          f'{name}/{workload}: {len(result.studies)} studies, expected '
          f'{catalog.num_studies}'
        )
      for study in result.studies:
        if len(study.trials) != expected_trials:
          problems.append(
            f'{name}/{study.study}/{workload}: {len(study.trials)} trials, '
            f'expected {expected_trials}'
          )
  skipped = [w for w in scores.warnings if 'trial skipped' in w]
  if problems or skipped:
    shown = (problems + skipped)[:3]
    raise StrictError(
      f'--strict: {len(problems) + len(skipped)} problem(s), e.g. '
      + '; '.join(shown)
    )


def ruleset_warnings(scores: Scores, self_tuning: bool) -> List[str]:
  """Logs whose trial counts contradict the ruleset they are scored under."""
  warnings = []
  for name in scores.submissions:
    counts = [
      len(study.trials)
      for result in scores.results[name].values()
      for study in result.studies
    ]
    if self_tuning and counts and max(counts) > 1:
      warnings.append(
        f'{name}: studies with up to {max(counts)} trials, scored under the '
        'self-tuning ruleset (one trial per study); are these external-'
        'tuning logs? If so, drop --self-tuning'
      )
    if not self_tuning and counts and max(counts) == 1:
      warnings.append(
        f'{name}: every study has one trial, scored under the external-'
        'tuning ruleset; are these self-tuning logs? If so, pass '
        '--self-tuning'
      )
  return warnings


def _print_warnings(warnings: List[str], path: str) -> None:
  if warnings:
    print(f'\n{len(warnings)} warning(s), for example:')
    for warning in warnings[:3]:
      print(f'  {warning}')
    print(f'All of them: {path}')


def _escape_undecodable_output() -> None:
  """File names that are not UTF-8 must not crash printing."""
  for stream in (sys.stdout, sys.stderr):
    if hasattr(stream, 'reconfigure'):
      stream.reconfigure(errors='backslashreplace')


def main(argv) -> int:
  args = build_parser().parse_args(argv)
  _escape_undecodable_output()
  # Per-file warnings are collected, counted and written to warnings.txt;
  # printing each one as well would bury the table.
  logging.set_verbosity(logging.ERROR)
  ruleset = 'self-tuning' if args.self_tuning else 'external-tuning'
  try:
    _check_out(args.out)
    logs = read_log_root(args.logdir, all_workload_names())
    catalog, label = _catalog_for(args, [logs])
    scores = score_logs(
      logs, catalog, args.trial_choice, exclude_unrun=args.exclude_unrun
    )
    for warning in reversed(ruleset_warnings(scores, args.self_tuning)):
      scores.warnings.insert(0, warning)
    if args.strict:
      check_strict(scores, catalog, args.self_tuning)
    spreads = (
      uncertainty.score_spreads(scores, args.bootstrap)
      if args.bootstrap > 0
      else None
    )
    paths = write_outputs(scores, args.out, ruleset, label, spreads=spreads)
  except (LogDirError, CatalogError, StrictError) as e:
    print(f'sfperf score: {e}', file=sys.stderr)
    return 2
  except OSError as e:
    print(f'sfperf score: cannot write to {args.out}: {e}', file=sys.stderr)
    return 2
  print(markdown_table(scores, ruleset, label), end='')
  if spreads:
    print(
      f'\nScores with a 90% interval from {args.bootstrap} bootstrap '
      'resamples of the studies:'
    )
    for name in scores.submissions:
      print(f'  {name}: {spreads[name]}')
  _print_warnings(scores.warnings, paths['warnings'])
  print(
    f'\nWrote {len(paths)} files and the curves to {args.out}; '
    f'{paths["report"]} is the overview.'
  )
  return 0


def compare_main(argv) -> int:
  args = build_compare_parser().parse_args(argv)
  _escape_undecodable_output()
  logging.set_verbosity(logging.ERROR)
  ruleset = 'self-tuning' if args.self_tuning else 'external-tuning'
  try:
    _check_out(args.out)
    known = all_workload_names()
    variant = read_log_root(args.variant, known)
    field = [read_log_root(path, known) for path in args.field]
    catalog, label = _catalog_for(args, field + [variant])
    comparison = compare_module.compare(
      variant,
      field,
      catalog,
      args.self_tuning,
      reference=args.reference,
      trial_choice=args.trial_choice,
      exclude_unrun=args.exclude_unrun,
      num_resamples=args.bootstrap,
    )
    joint = comparison.with_variants
    for warning in reversed(ruleset_warnings(joint, args.self_tuning)):
      joint.warnings.insert(0, warning)
    text = compare_module.markdown(
      comparison,
      args.self_tuning,
      f'Scored together: {describe(joint, ruleset, label)}.',
    )
    paths = write_outputs(joint, args.out, ruleset, label)
    atomic_write_text(os.path.join(args.out, 'compare.md'), text)
  except (LogDirError, CatalogError, compare_module.CompareError) as e:
    print(f'sfperf compare: {e}', file=sys.stderr)
    return 2
  except OSError as e:
    print(f'sfperf compare: cannot write to {args.out}: {e}', file=sys.stderr)
    return 2
  print(text, end='')
  _print_warnings(joint.warnings, paths['warnings'])
  print(f'\nWrote {os.path.join(args.out, "compare.md")}, {paths["scores"]}')
  return 0
