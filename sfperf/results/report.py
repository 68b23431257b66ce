"""Writes what `sfperf score` produces: CSVs, markdown, a profile PNG."""

import csv
import io
import math
import os
from typing import Dict, List, Optional

import numpy as np

from sfperf.catalog import REPOSITORY_ROOT
from sfperf.fsutil import atomic_path, atomic_write_text
from sfperf.results.scoring import TIME_COLUMN, Scores

SPREAD_NOTE = (
  'Bootstrap over studies: for every submission and workload, as many '
  'studies as it has are drawn with replacement from its own per-study '
  'times to target; the medians, the held-out and 4x rules, the profiles '
  'and the scores are recomputed from them, many times over. The interval '
  'is the 5th to 95th percentile of the recomputed scores. It reflects seed '
  'noise between studies only, not other hardware, workloads or tuning.'
)


def format_seconds(value: float) -> str:
  return 'inf' if not math.isfinite(value) else f'{value:.3f}'


def _full_precision(value: float) -> str:
  return 'inf' if not math.isfinite(value) else repr(float(value))


def _csv(rows: List[List[str]]) -> str:
  buffer = io.StringIO()
  csv.writer(buffer, lineterminator='\n').writerows(rows)
  return buffer.getvalue()


def scores_csv(scores: Scores) -> str:
  rows = [['submission', 'score']]
  rows += [
    [name, _full_precision(scores.scores[name])] for name in scores.submissions
  ]
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
  catalog_path = os.path.relpath(scores.catalog.path, REPOSITORY_ROOT)
  return (
    f'{path_label}; {scores.catalog.benchmark_version} catalog '
    f'({catalog_path}); {ruleset} ruleset; '
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


def study_table(scores: Scores) -> str:
  """Per study: which trial won, at which eval, how many trials reached."""
  lines = [
    '| submission | workload | study | time to target (s) | winning trial '
    '| eval index | trials reaching target |',
    '|---|---|---|---:|---|---:|---:|',
  ]
  for name in scores.submissions:
    for workload in scores.workloads:
      result = scores.results[name].get(workload)
      for study in result.studies if result else ():
        winner = study.winner
        lines.append(
          f'| {name} | {workload} | {study.study} | '
          f'{format_seconds(study.time)} | '
          f'{winner.trial.trial if winner else "-"} | '
          f'{winner.eval_index if winner else "-"} | '
          f'{study.num_reached}/{len(study.trials)} |'
        )
  return '\n'.join(lines) + '\n'


def trials_csv(scores: Scores) -> str:
  """One row per trial: its time to target and whether it won its study."""
  rows = [
    [
      'submission',
      'workload',
      'study',
      'trial',
      'eval_index_at_target',
      'time_to_target',
      'won_study',
      'path',
    ]
  ]
  for name in scores.submissions:
    for workload in scores.workloads:
      result = scores.results[name].get(workload)
      for study in result.studies if result else ():
        for trial in study.trials:
          rows.append(
            [
              name,
              workload,
              study.study,
              trial.trial.trial,
              '' if trial.eval_index is None else str(trial.eval_index),
              _full_precision(trial.time),
              str(trial is study.winner).lower(),
              trial.trial.path,
            ]
          )
  return _csv(rows)


def filtered_table(scores: Scores) -> str:
  """The matrix the profile integrates: base workloads after the rules."""
  names = scores.submissions
  lines = [
    '| workload | ' + ' | '.join(names) + ' |',
    '|---|' + '---:|' * len(names),
  ]
  for workload in scores.catalog.base_workloads:
    cells = [format_seconds(scores.filtered[n][workload]) for n in names]
    lines.append(f'| {workload} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def leaderboard_table(
  scores: Scores, spreads=None, caption: Optional[str] = None
) -> str:
  """Ranked scores as a markdown table that drops into a README.

  `caption`, when given, follows the table, so that a pasted copy still
  says which path, catalog and ruleset produced the numbers.
  """
  ordered = sorted(scores.submissions, key=lambda n: (-scores.scores[n], n))
  header = '| rank | submission | score |'
  rule = '|---:|---|---:|'
  if spreads:
    header += ' 90% bootstrap interval |'
    rule += '---|'
  lines = [header, rule]
  rank = 0
  previous = None
  for position, name in enumerate(ordered, start=1):
    if scores.scores[name] != previous:
      rank, previous = position, scores.scores[name]
    row = f'| {rank} | {name} | {scores.scores[name]:.4f} |'
    if spreads:
      spread = spreads[name]
      row += f' [{spread.low:.4f}, {spread.high:.4f}] |'
    lines.append(row)
  if caption:
    lines += ['', caption]
  return '\n'.join(lines) + '\n'


def _pyplot():
  import matplotlib

  matplotlib.use('Agg')
  from matplotlib import pyplot

  return pyplot


def _save_png(figure, path: str) -> None:
  buffer = io.BytesIO()
  figure.savefig(buffer, format='png')
  _pyplot().close(figure)
  with atomic_path(path) as temp_path:
    with open(temp_path, 'wb') as f:
      f.write(buffer.getvalue())


def plot_profiles(scores: Scores, title: str, path: str) -> None:
  """Performance profile PNG, one step line per submission."""
  plt = _pyplot()
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
  _save_png(figure, path)


def _best_trial(study, spec):
  """The study's trial with the best validation value (for a study that
  never reached the target, the one that came closest)."""

  def best_value(trial):
    values = trial.trial.columns.get(spec.validation_metric)
    if values is None or not np.isfinite(values).any():
      return -math.inf
    finite = values[np.isfinite(values)]
    return -finite.min() if spec.minimize else finite.max()

  return max(study.trials, key=best_value) if study.trials else None


def _drawn_trials(scores: Scores, workload: str):
  """(submission index, study number, trial) to draw for a workload.

  Each study shows the trial that decided its time to target or, when no
  trial reached the target, the trial that came closest.
  """
  spec = scores.catalog.workload(workload)
  for index, name in enumerate(scores.submissions):
    result = scores.results[name].get(workload)
    for number, study in enumerate(result.studies if result else ()):
      trial = study.winner or _best_trial(study, spec)
      if trial is not None:
        yield index, number, trial


def plot_workload_curves(
  scores: Scores, workload: str, self_tuning: bool, path: str, subtitle: str
) -> None:
  """Validation metric against submission time, one line per study.

  The target is a dashed line, the runtime budget a dotted one, and a dot
  marks the eval at which a study reached the target.
  """
  spec = scores.catalog.workload(workload)
  budget = scores.catalog.budget_sec(workload, self_tuning)
  drawn = [
    (index, number, trial)
    for index, number, trial in _drawn_trials(scores, workload)
    if TIME_COLUMN in trial.trial.columns
    and spec.validation_metric in trial.trial.columns
  ]
  finite_times = [
    t.trial.columns[TIME_COLUMN][np.isfinite(t.trial.columns[TIME_COLUMN])]
    for *_, t in drawn
  ]
  last_eval = max(
    [times.max() for times in finite_times if times.size], default=budget
  )
  # Show the budget when it is near the data; when every run stopped far
  # earlier (targets reached), drawing it would squash the curves.
  show_budget = budget <= 1.25 * last_eval
  longest = max(budget, last_eval) if show_budget else last_eval
  scale, unit = (3600.0, 'hours') if longest > 7200 else (1.0, 's')

  plt = _pyplot()
  figure, axes = plt.subplots(figsize=(7, 4.5), dpi=110)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  labelled = set()
  for index, _, trial in drawn:
    color = colors[index % len(colors)]
    times = trial.trial.columns[TIME_COLUMN] / scale
    values = trial.trial.columns[spec.validation_metric]
    label = None if index in labelled else scores.submissions[index]
    labelled.add(index)
    axes.plot(times, values, color=color, alpha=0.8, lw=1.4, label=label)
    if trial.eval_index is not None:
      axes.plot(
        times[trial.eval_index],
        values[trial.eval_index],
        'o',
        color=color,
        markersize=4,
      )
  axes.axhline(
    spec.validation_target_value,
    color='black',
    linestyle='--',
    lw=1,
    label=f'target {spec.validation_target_value:g}',
  )
  if show_budget:
    axes.axvline(
      budget / scale,
      color='gray',
      linestyle=':',
      lw=1.2,
      label=f'budget {budget:g} s',
    )
  else:
    axes.plot([], [], ' ', label=f'budget {budget:g} s (off the right edge)')
  low, high = _metric_view(scores, workload, spec)
  if low is not None:
    axes.set_ylim(low, high)
  axes.set_xlabel(f'submission time ({unit})')
  axes.set_ylabel(spec.validation_metric)
  axes.set_title(
    f'{workload}: one line per study (dot: target reached)\n{subtitle}',
    fontsize=9,
  )
  axes.grid(alpha=0.3)
  axes.legend(fontsize=8, loc='best')
  figure.tight_layout()
  _save_png(figure, path)


def _metric_view(scores: Scores, workload: str, spec):
  """A y-range around the target that still shows where every study went.

  Early evals (far from the target) are cut off so that the approach to the
  target is readable; a study that never comes close stays in view through
  its best value and where it settled.
  """
  curves = [
    trial.trial.columns[spec.validation_metric]
    for *_, trial in _drawn_trials(scores, workload)
    if spec.validation_metric in trial.trial.columns
  ]
  curves = [c[np.isfinite(c)] for c in curves]
  curves = [c for c in curves if c.size]
  if not curves:
    return None, None
  target = spec.validation_target_value
  # Where each study settled: the median of its second half of evals.
  settled = [float(np.median(c[len(c) // 2 :])) for c in curves]
  if spec.minimize:
    bests = [c.min() for c in curves]
    best = min(min(bests), target)
    span = max(target - best, abs(target) * 0.05, 1e-6)
    high = max(target + 3 * span, max(bests), max(settled))
    return best - 0.1 * (high - best), high + 0.05 * (high - best)
  bests = [c.max() for c in curves]
  best = max(max(bests), target)
  span = max(best - target, abs(target) * 0.05, 1e-6)
  low = min(target - 3 * span, min(bests), min(settled))
  return low - 0.05 * (best - low), best + 0.1 * (best - low)


def report_markdown(
  scores: Scores,
  ruleset: str,
  path_label: str,
  curve_files: List[str],
  spreads=None,
) -> str:
  """One page: scores, the profile, per-workload curves, then the tables."""
  lines = [
    '# Scores',
    '',
    f'{describe(scores, ruleset, path_label)}.',
    '',
    leaderboard_table(scores, spreads),
    '![performance profile](performance_profile.png)',
    '',
  ]
  for workload, relative in curve_files:
    lines += [f'## {workload}', '', f'![{workload}]({relative})', '']
  lines += [
    '## Time to target',
    '',
    markdown_table(scores, ruleset, path_label),
    '## What the profile integrates',
    '',
    'Base workloads after the held-out and 4x rules (inf: not counted).',
    '',
    filtered_table(scores),
    '## Studies',
    '',
    study_table(scores),
  ]
  if spreads:
    lines += ['## How the interval is computed', '', SPREAD_NOTE, '']
  if scores.warnings:
    lines += ['## Warnings', '']
    lines += [f'- {w}' for w in scores.warnings]
  return '\n'.join(lines) + '\n'


def write_outputs(
  scores: Scores,
  out_dir: str,
  ruleset: str,
  path_label: str,
  curves: bool = True,
  spreads=None,
) -> Dict[str, str]:
  """Writes every output file; returns name -> path."""
  paths = {
    'scores': os.path.join(out_dir, 'scores.csv'),
    'time_to_targets': os.path.join(out_dir, 'time_to_targets.csv'),
    'table': os.path.join(out_dir, 'time_to_targets.md'),
    'profile': os.path.join(out_dir, 'performance_profile.png'),
    'report': os.path.join(out_dir, 'report.md'),
    'trials': os.path.join(out_dir, 'trials.csv'),
    'leaderboard': os.path.join(out_dir, 'leaderboard.md'),
    'warnings': os.path.join(out_dir, 'warnings.txt'),
  }
  atomic_write_text(paths['scores'], scores_csv(scores))
  atomic_write_text(paths['time_to_targets'], time_to_targets_csv(scores))
  atomic_write_text(paths['trials'], trials_csv(scores))
  atomic_write_text(
    paths['leaderboard'],
    leaderboard_table(
      scores, spreads, f'Scores: {describe(scores, ruleset, path_label)}.'
    ),
  )
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
  curve_files = []
  if curves:
    for workload in scores.workloads:
      if not any(workload in scores.results[n] for n in scores.submissions):
        continue
      relative = os.path.join('curves', f'{workload}.png')
      plot_workload_curves(
        scores,
        workload,
        ruleset == 'self-tuning',
        os.path.join(out_dir, relative),
        f'{path_label}; {scores.catalog.benchmark_version}, {ruleset}',
      )
      curve_files.append((workload, relative))
  atomic_write_text(
    paths['report'],
    report_markdown(scores, ruleset, path_label, curve_files, spreads),
  )
  return paths
