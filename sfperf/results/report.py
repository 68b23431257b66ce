"""Writes what `sfperf score` produces: CSVs, markdown, a profile PNG."""

import io
import math
import os
from typing import Dict, List

from sfperf.fsutil import atomic_path, atomic_write_text
from sfperf.results.scoring import Scores


def format_seconds(value: float) -> str:
  return 'inf' if not math.isfinite(value) else f'{value:.3f}'


def _full_precision(value: float) -> str:
  return 'inf' if not math.isfinite(value) else repr(float(value))


def _csv(rows: List[List[str]]) -> str:
  return ''.join(','.join(row) + '\n' for row in rows)


def scores_csv(scores: Scores) -> str:
  rows = [['submission', 'score']]
  rows += [[name, f'{scores.scores[name]:.6f}'] for name in scores.submissions]
  return _csv(rows)


def time_to_targets_csv(scores: Scores) -> str:
  """Median time to target per submission and workload, before the rules."""
  rows = [['submission', *scores.workloads]]
  for name in scores.submissions:
    row = scores.time_to_target[name]
    rows.append([name, *(_full_precision(row[w]) for w in scores.workloads)])
  return _csv(rows)


def _studies_reached(scores: Scores, submission: str, workload: str) -> str:
  result = scores.results[submission].get(workload)
  if result is None:
    return 'not run'
  reached = sum(s.winner is not None for s in result.studies)
  return f'{reached}/{len(result.studies)}'


def describe(scores: Scores, ruleset: str, path_label: str) -> str:
  return (
    f'{path_label}; {scores.catalog.benchmark_version} catalog '
    f'({os.path.relpath(scores.catalog.path)}); {ruleset} ruleset; '
    f'trial choice: {scores.trial_choice.replace("_", " ")}'
  )


def markdown_table(scores: Scores, ruleset: str, path_label: str) -> str:
  """Time-to-target table (seconds; studies reached) and the scores."""
  names = scores.submissions
  held_out = set(scores.catalog.held_out_workloads)
  lines = [
    'Median time to target in seconds '
    f'({describe(scores, ruleset, path_label)})',
    '',
    '| workload | ' + ' | '.join(names) + ' |',
    '|---|' + '---:|' * len(names),
  ]
  for workload in scores.workloads:
    label = f'{workload} (held-out)' if workload in held_out else workload
    cells = []
    for name in names:
      time = scores.time_to_target[name][workload]
      base_time = scores.filtered[name].get(workload, time)
      mark = ''
      if math.isfinite(time) and not math.isfinite(base_time):
        mark = ' (ruled out)'
      reached = _studies_reached(scores, name, workload)
      cells.append(f'{format_seconds(time)}{mark} [{reached}]')
    lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
  lines.append(
    '| **score** | '
    + ' | '.join(f'**{scores.scores[n]:.4f}**' for n in names)
    + ' |'
  )
  lines += [
    '',
    '[k/n]: studies that reached the validation target. "ruled out": a '
    'finite time set to inf by the held-out or 4x rule before profiling.',
    f'Scores integrate the performance profile over tau in '
    f'[{scores.taus[0]:g}, {scores.taus[-1]:g}] with '
    f'{len(scores.catalog.base_workloads)} base workloads in the '
    'denominator; they are relative to the submissions scored together.',
  ]
  return '\n'.join(lines) + '\n'


def plot_profiles(scores: Scores, title: str, path: str) -> None:
  """Performance profile PNG, one step line per submission."""
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt

  figure, axes = plt.subplots(figsize=(7, 4.5), dpi=120)
  for name in scores.submissions:
    axes.step(
      scores.taus,
      scores.profiles[name],
      where='post',
      linewidth=2,
      label=f'{name} ({scores.scores[name]:.4f})',
    )
  axes.set_xlim(scores.taus[0], scores.taus[-1])
  axes.set_ylim(-0.02, 1.02)
  axes.set_xlabel('tau: time to target / fastest time to target')
  axes.set_ylabel('fraction of base workloads')
  axes.set_title(title, fontsize=10)
  axes.grid(alpha=0.3)
  axes.legend(loc='lower right', fontsize=9)
  figure.tight_layout()
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png')
  plt.close(figure)
  with atomic_path(path) as temp_path:
    with open(temp_path, 'wb') as f:
      f.write(buffer.getvalue())


def write_outputs(
  scores: Scores, out_dir: str, ruleset: str, path_label: str
) -> Dict[str, str]:
  """Writes every output file; returns name -> path."""
  paths = {
    'scores': os.path.join(out_dir, 'scores.csv'),
    'time_to_targets': os.path.join(out_dir, 'time_to_targets.csv'),
    'table': os.path.join(out_dir, 'time_to_targets.md'),
    'profile': os.path.join(out_dir, 'performance_profile.png'),
    'warnings': os.path.join(out_dir, 'warnings.txt'),
  }
  atomic_write_text(paths['scores'], scores_csv(scores))
  atomic_write_text(paths['time_to_targets'], time_to_targets_csv(scores))
  atomic_write_text(paths['table'], markdown_table(scores, ruleset, path_label))
  atomic_write_text(
    paths['warnings'], ''.join(w + '\n' for w in scores.warnings)
  )
  plot_profiles(
    scores,
    f'Performance profiles, {scores.catalog.benchmark_version} catalog, '
    f'{ruleset}\n{path_label}',
    paths['profile'],
  )
  return paths
