"""Times reading and scoring a directory of AlgoPerf logs, phase by phase.

    .venv/bin/python benchmarks/score_speed.py \
        [LOGDIR (default ../shared/algoperf_v05_logs/external_tuning)] \
        [--benchmark v0.5] [--repeats 5]

Prints files per second, the median in-process time of each phase (walking
and reading the files, scoring), and checks that the fast reader gives the
same times to target and scores as a slow reference reader that parses every
cell of every file with the csv module. Target for the published v0.5
external-tuning pack: under 0.3 s in process on the project's 2-core machine.
"""

import argparse
import csv
import statistics
import sys
import time

import numpy as np
from absl import logging

from sfperf.catalog import load_catalog
from sfperf.results import logs as logs_module
from sfperf.results.logs import read_log_root
from sfperf.results.scoring import score_logs


def _slow_reader(path, warnings):
  """Every cell of the file, parsed eagerly with the csv module."""
  with open(path, encoding='utf-8', errors='replace', newline='') as f:
    rows = [row for row in csv.reader(f) if row]
  header = rows[0]
  columns = {name: [] for name in header}
  for row in rows[1:]:
    for name, cell in zip(header, row, strict=False):
      columns[name].append(float(cell) if cell.strip() else np.nan)
  return {name: np.array(values) for name, values in columns.items()}


def _time(function, repeats):
  durations, result = [], None
  for _ in range(repeats):
    start = time.perf_counter()
    result = function()
    durations.append(time.perf_counter() - start)
  return statistics.median(durations), result


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    'logdir', nargs='?', default='../shared/algoperf_v05_logs/external_tuning'
  )
  parser.add_argument('--benchmark', default='v0.5')
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  logging.set_verbosity(logging.ERROR)
  catalog = load_catalog(args.benchmark)

  read_sec, logs = _time(lambda: read_log_root(args.logdir), args.repeats)
  score_sec, scores = _time(lambda: score_logs(logs, catalog), args.repeats)
  total_sec, _ = _time(
    lambda: score_logs(read_log_root(args.logdir), catalog), args.repeats
  )
  num_files = sum(len(trials) for trials in logs.trials.values())

  fast_reader = logs_module.read_eval_csv
  logs_module.read_eval_csv = _slow_reader
  try:
    slow_sec, slow = _time(
      lambda: score_logs(read_log_root(args.logdir), catalog), 1
    )
  finally:
    logs_module.read_eval_csv = fast_reader
  identical = (
    slow.scores == scores.scores
    and slow.time_to_target == scores.time_to_target
  )

  print(f'logdir: {args.logdir}')
  print(f'files: {num_files}')
  print(f'read_sec: {read_sec:.4f}')
  print(f'score_sec: {score_sec:.4f}')
  print(f'total_sec: {total_sec:.4f}')
  print(f'files_per_sec: {num_files / total_sec:.0f}')
  print(f'slow_reference_total_sec: {slow_sec:.4f}')
  print(f'speedup_vs_slow_reference: {slow_sec / total_sec:.1f}')
  print(f'identical_to_slow_reference: {identical}')
  return 0 if identical else 1


if __name__ == '__main__':
  sys.exit(main())
