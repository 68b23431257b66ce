"""AlgoPerf scoring: time-to-target, held-out rules, performance profiles.

Follows the official leaderboard scorer (mlcommons/submissions_algorithms,
`scoring/`), quirks included, as ALGOPERF.md section 6 records them:

- time is the `score` column (accumulated submission time) at the first eval
  whose validation metric meets the target, inclusively (`<=` for minimized
  metrics, `>=` for maximized ones); NaN never meets a target;
- per study, the trial that reaches the target at the fewest evals wins (the
  official code's choice; the written rules say least time, available as
  `trial_choice='least_time'`). A tie in eval count goes, as in the
  official code, to the trial listed first by the file system (os.listdir
  order: stable on one disk, but it may differ between machines, and so may
  the official scorer's medians; scores on the published logs do not move);
- per workload, the median over studies with `inf` for a study that never
  reached the target;
- held-out coupling (when the catalog lists held-out workloads, v0.5) and
  the 4x rule (always, as in the official code);
- the performance profile over tau in [1, 4] at 100 points, each workload
  counting 1/n with n the catalog's number of base workloads, and the score
  its trapezoid area divided by 3.
"""

import dataclasses
import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from sfperf.catalog import Catalog, WorkloadSpec, strip_framework_suffix
from sfperf.results.logs import LogSet, TrialLog

TIME_COLUMN = 'score'
TRIAL_CHOICES = ('fewest_evals', 'least_time')
TAU_MIN, TAU_MAX, TAU_POINTS = 1.0, 4.0, 100
SLOWDOWN_LIMIT = 4.0


@dataclasses.dataclass(frozen=True)
class TrialResult:
  trial: TrialLog
  eval_index: Optional[int]  # first eval meeting the target, None if never
  time: float  # submission time at that eval, inf if never


@dataclasses.dataclass(frozen=True)
class StudyResult:
  study: str
  trials: Tuple[TrialResult, ...]
  winner: Optional[TrialResult]

  @property
  def time(self) -> float:
    return self.winner.time if self.winner else math.inf

  @property
  def num_reached(self) -> int:
    return sum(t.eval_index is not None for t in self.trials)


@dataclasses.dataclass(frozen=True)
class WorkloadResult:
  submission: str
  workload: str  # without framework suffix
  studies: Tuple[StudyResult, ...]

  @property
  def median_time(self) -> float:
    return float(np.median([s.time for s in self.studies]))


@dataclasses.dataclass
class Scores:
  """Everything `sfperf score` reports, computed once."""

  catalog: Catalog
  trial_choice: str
  submissions: List[str]
  workloads: List[str]  # columns of the time-to-target table
  results: Dict[str, Dict[str, WorkloadResult]]
  time_to_target: Dict[str, Dict[str, float]]  # before held-out rules
  filtered: Dict[str, Dict[str, float]]  # base workloads, after the rules
  taus: np.ndarray
  profiles: Dict[str, np.ndarray]
  scores: Dict[str, float]
  warnings: List[str]
  excluded_workloads: List[str] = dataclasses.field(default_factory=list)


def trial_time_to_target(trial: TrialLog, spec: WorkloadSpec) -> TrialResult:
  """First eval at which one trial meets the validation target."""
  metric = trial.columns.get(spec.validation_metric)
  times = trial.columns.get(TIME_COLUMN)
  if metric is None or times is None:
    return TrialResult(trial, None, math.inf)
  # An eval with a non-finite metric or a time that is not a positive
  # finite number is broken, not fast: it never counts as reaching.
  with np.errstate(invalid='ignore'):
    valid = np.isfinite(metric) & np.isfinite(times) & (times > 0)
    if spec.minimize:
      reached = valid & (metric <= spec.validation_target_value)
    else:
      reached = valid & (metric >= spec.validation_target_value)
  if not reached.any():
    return TrialResult(trial, None, math.inf)
  index = int(np.argmax(reached))
  return TrialResult(trial, index, float(times[index]))


def study_result(
  study: str,
  trials: Sequence[TrialLog],
  spec: WorkloadSpec,
  trial_choice: str = 'fewest_evals',
) -> StudyResult:
  """Picks the study's winning trial among those that reach the target."""
  listed = sorted(trials, key=lambda t: t.listing_index)
  results = tuple(trial_time_to_target(t, spec) for t in listed)
  reached = [r for r in results if r.eval_index is not None]
  if not reached:
    return StudyResult(study, results, None)
  if trial_choice == 'fewest_evals':
    winner = min(reached, key=lambda r: r.eval_index)
  else:
    winner = min(reached, key=lambda r: (r.time, r.eval_index))
  ordered = tuple(sorted(results, key=lambda r: r.trial.trial_number))
  return StudyResult(study, ordered, winner)


def _missing_columns(trial: TrialLog, spec: WorkloadSpec) -> List[str]:
  return [
    name
    for name in (spec.validation_metric, TIME_COLUMN)
    if name not in trial.columns
  ]


def _warn_invalid_values(
  trial: TrialLog, spec: WorkloadSpec, warnings: List[str]
) -> None:
  metric = trial.columns[spec.validation_metric]
  times = trial.columns[TIME_COLUMN]
  if np.isnan(metric).any():
    warnings.append(
      f'{trial.path}: NaN in {spec.validation_metric}; those evals count as '
      'not reaching the target'
    )
  if np.isinf(metric).any():
    warnings.append(
      f'{trial.path}: infinite value in {spec.validation_metric}; those '
      'evals count as not reaching the target'
    )
  with np.errstate(invalid='ignore'):
    bad_times = ~(np.isfinite(times) & (times > 0))
  if bad_times.any():
    warnings.append(
      f'{trial.path}: {int(bad_times.sum())} eval(s) whose {TIME_COLUMN} is '
      'not a positive finite number; they count as not reaching the target'
    )


def workload_results(
  submission: str,
  trials: Sequence[TrialLog],
  catalog: Catalog,
  trial_choice: str,
  warnings: List[str],
) -> Dict[str, WorkloadResult]:
  """Groups a submission's trials by workload and study and scores them."""
  grouped: Dict[str, Dict[str, List[TrialLog]]] = {}
  for trial in trials:
    workload = strip_framework_suffix(trial.workload)
    if workload not in catalog.workloads:
      warnings.append(
        f'{trial.path}: workload {workload!r} is not in the '
        f'{catalog.benchmark_version} catalog; ignored'
      )
      continue
    spec = catalog.workloads[workload]
    missing = _missing_columns(trial, spec)
    if missing:
      warnings.append(
        f'{trial.path}: no column {" or ".join(missing)}; this trial '
        'counts as not reaching the target'
      )
    else:
      _warn_invalid_values(trial, spec, warnings)
    grouped.setdefault(workload, {}).setdefault(trial.study, []).append(trial)

  results = {}
  for workload, studies in grouped.items():
    spec = catalog.workloads[workload]
    results[workload] = WorkloadResult(
      submission,
      workload,
      tuple(
        study_result(study, studies[study], spec, trial_choice)
        for study in sorted(studies)
      ),
    )
  return results


def apply_held_out_rules(
  table: Dict[str, Dict[str, float]], catalog: Catalog
) -> Dict[str, Dict[str, float]]:
  """The official held-out coupling and 4x rule; returns base columns only.

  1. A held-out variant whose base workload was not reached is not reached.
  2. Any time above 4x the fastest submission's time in its column is inf
     (the official code applies this in every version, held-out or not).
  3. A base workload whose held-out variant was not reached is not reached.
  """
  held_out = catalog.held_out_workloads
  columns = list(catalog.base_workloads) + list(held_out)
  matrix = {
    name: {w: row.get(w, math.inf) for w in columns}
    for name, row in table.items()
  }
  base_of = {w: catalog.workloads[w].base_workload for w in held_out}

  for row in matrix.values():
    for variant in held_out:
      if not math.isfinite(row[base_of[variant]]):
        row[variant] = math.inf

  for column in columns:
    best = min(row[column] for row in matrix.values())
    for row in matrix.values():
      if row[column] > SLOWDOWN_LIMIT * best:
        row[column] = math.inf

  for row in matrix.values():
    for variant in held_out:
      if not math.isfinite(row[variant]):
        row[base_of[variant]] = math.inf
  return {
    name: {w: row[w] for w in catalog.base_workloads}
    for name, row in matrix.items()
  }


def performance_profiles(
  filtered: Dict[str, Dict[str, float]], num_base_workloads: int
) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
  """rho_s(tau): the fraction of base workloads within tau of the fastest."""
  taus = np.linspace(TAU_MIN, TAU_MAX, TAU_POINTS)
  submissions = list(filtered)
  workloads = list(next(iter(filtered.values()))) if filtered else []
  times = np.array(
    [[filtered[s][w] for w in workloads] for s in submissions], dtype=float
  ).reshape(len(submissions), len(workloads))
  best = times.min(axis=0) if len(submissions) else np.array([])
  with np.errstate(invalid='ignore', divide='ignore'):
    ratios = np.where(np.isfinite(best), times / best, np.inf)
  ratios[~np.isfinite(ratios)] = np.inf
  profiles = {}
  for index, submission in enumerate(submissions):
    within = ratios[index][None, :] <= taus[:, None]
    profiles[submission] = within.sum(axis=1) / num_base_workloads
  return taus, profiles


def profile_score(taus: np.ndarray, profile: np.ndarray) -> float:
  """Normalized area under a performance profile, in [0, 1]."""
  return float(np.trapezoid(profile, taus) / (taus[-1] - taus[0]))


def scores_from_table(
  time_to_target: Dict[str, Dict[str, float]], catalog: Catalog
) -> Tuple[Dict[str, Dict[str, float]], np.ndarray, Dict, Dict[str, float]]:
  """Held-out and 4x rules, profiles and scores from median times."""
  filtered = apply_held_out_rules(time_to_target, catalog)
  taus, profiles = performance_profiles(filtered, len(catalog.base_workloads))
  scores = {name: profile_score(taus, profiles[name]) for name in filtered}
  return filtered, taus, profiles, scores


def unrun_base_workloads(
  results: Dict[str, Dict[str, WorkloadResult]], catalog: Catalog
) -> List[str]:
  """Base workloads of the catalog that no submission has logs for."""
  return [
    w
    for w in catalog.base_workloads
    if not any(w in per_workload for per_workload in results.values())
  ]


def score_logs(
  logs: LogSet,
  catalog: Catalog,
  trial_choice: str = 'fewest_evals',
  exclude_unrun: bool = False,
) -> Scores:
  """Scores every submission of a log set against one catalog.

  Args:
    logs: what `read_log_root` found.
    catalog: the benchmark version's (or the proxy suite's) catalog.
    trial_choice: 'fewest_evals' (official code) or 'least_time' (rules).
    exclude_unrun: drop base workloads that no submission ran (such as
      v0.6's finewebedu_lm for older logs) from the score's denominator.
      By default they count as not reached by anyone, as in the rules.
  """
  if trial_choice not in TRIAL_CHOICES:
    raise ValueError(
      f'trial_choice must be one of {", ".join(TRIAL_CHOICES)}, '
      f'got {trial_choice!r}'
    )
  # Shared with the log set: columns are parsed lazily, and a bad value
  # found while scoring is reported in the same list.
  warnings = logs.warnings
  submissions = sorted(logs.trials)
  results = {
    name: workload_results(
      name, logs.trials[name], catalog, trial_choice, warnings
    )
    for name in submissions
  }
  unrun = unrun_base_workloads(results, catalog)
  if unrun and exclude_unrun:
    warnings.append(
      f'no submission ran {", ".join(unrun)}; left out of the score '
      'denominator (--exclude-unrun)'
    )
    catalog = dataclasses.replace(
      catalog,
      base_workloads=tuple(w for w in catalog.base_workloads if w not in unrun),
    )
  elif unrun:
    warnings.append(
      f'no submission ran {", ".join(unrun)}; counted as not reached by '
      'every submission (--exclude-unrun leaves them out of the denominator)'
    )
  columns = list(catalog.base_workloads) + list(catalog.held_out_workloads)
  time_to_target = {
    name: {
      w: results[name][w].median_time if w in results[name] else math.inf
      for w in columns
    }
    for name in submissions
  }
  filtered, taus, profiles, scores = scores_from_table(time_to_target, catalog)
  return Scores(
    catalog=catalog,
    trial_choice=trial_choice,
    submissions=submissions,
    workloads=columns,
    results=results,
    time_to_target=time_to_target,
    filtered=filtered,
    taus=taus,
    profiles=profiles,
    scores=scores,
    warnings=warnings,
    excluded_workloads=unrun if exclude_unrun else [],
  )


def describe_outcome(eval_results, spec: WorkloadSpec) -> str:
  """When a run first met its validation target, as the scorer counts it.

  `eval_results` is the runner's list of (global_step, metrics) pairs. The
  scorer's rule is inclusive (`>=`, `<=` when minimizing), as the official
  scorer counts; the runner stops only on a strict `>`, as AlgoPerf's runner
  does, so a value exactly at the target is met here while that trial
  trained on.
  """
  values = []
  for _, metrics in eval_results:
    value = metrics.get(spec.validation_metric)
    if value is None:
      continue
    values.append(value)
    met = (
      value <= spec.validation_target_value
      if spec.minimize
      else value >= spec.validation_target_value
    )
    if met:
      return (
        f'{spec.validation_metric} {value:.4f} met the target '
        f'{spec.validation_target_value:g} (scorer rule, inclusive '
        f'{"<=" if spec.minimize else ">="}) at {metrics["score"]:.1f} s'
      )
  best = (min if spec.minimize else max)(values) if values else math.nan
  return (
    f'target {spec.validation_target_value:g} not met (scorer rule, '
    f'inclusive; best {spec.validation_metric} {best:.4f})'
  )
