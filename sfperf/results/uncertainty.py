"""How much a score or speedup moves when the studies are resampled.

With five (v0.5) or three (v0.6) studies per workload, a score rests on a
handful of runs. The spread reported here is a nonparametric bootstrap over
studies: for every submission and workload, draw as many studies as it has,
with replacement, from its own per-study times to target; take the median;
apply the held-out and 4x rules, the profile and the score exactly as for
the real table; repeat. The interval is the 5th to 95th percentile of the
resampled values. It shows seed noise only: it cannot show what a different
set of workloads, hardware or tuning would do.
"""

import dataclasses
import math
from typing import Dict, List, Sequence, Tuple

import numpy as np

from sfperf.results.scoring import Scores, scores_from_table

DEFAULT_RESAMPLES = 1000
LOW_PERCENTILE, HIGH_PERCENTILE = 5.0, 95.0


@dataclasses.dataclass(frozen=True)
class Spread:
  """Point estimate with the bootstrap's percentile interval."""

  value: float
  low: float
  high: float
  std: float

  def __str__(self) -> str:
    return f'{self.value:.4f} [{self.low:.4f}, {self.high:.4f}]'


def study_times(scores: Scores) -> Dict[str, Dict[str, np.ndarray]]:
  """Per-study times to target (inf: not reached) for every table cell."""
  return {
    name: {
      workload: np.array(
        [s.time for s in scores.results[name][workload].studies]
      )
      for workload in scores.workloads
      if workload in scores.results[name]
    }
    for name in scores.submissions
  }


def _resampled_tables(
  scores: Scores, num_resamples: int, seed: int
) -> List[Dict[str, Dict[str, float]]]:
  rng = np.random.default_rng(seed)
  per_study = study_times(scores)
  medians: Dict[Tuple[str, str], np.ndarray] = {}
  for name, cells in per_study.items():
    for workload, times in cells.items():
      draws = rng.integers(0, len(times), size=(num_resamples, len(times)))
      medians[name, workload] = np.median(times[draws], axis=1)
  return [
    {
      name: {
        workload: (
          float(medians[name, workload][index])
          if (name, workload) in medians
          else math.inf
        )
        for workload in scores.workloads
      }
      for name in scores.submissions
    }
    for index in range(num_resamples)
  ]


def _spread(value: float, samples: Sequence[float]) -> Spread:
  samples = np.asarray(samples, dtype=float)
  finite = samples[np.isfinite(samples)]
  if not finite.size:
    return Spread(value, math.nan, math.nan, math.nan)
  return Spread(
    value,
    float(np.percentile(finite, LOW_PERCENTILE)),
    float(np.percentile(finite, HIGH_PERCENTILE)),
    float(finite.std()),
  )


def score_spreads(
  scores: Scores, num_resamples: int = DEFAULT_RESAMPLES, seed: int = 0
) -> Dict[str, Spread]:
  """Bootstrap interval of every submission's benchmark score."""
  samples = {name: [] for name in scores.submissions}
  for table in _resampled_tables(scores, num_resamples, seed):
    _, _, _, resampled = scores_from_table(table, scores.catalog)
    for name in scores.submissions:
      samples[name].append(resampled[name])
  return {
    name: _spread(scores.scores[name], samples[name])
    for name in scores.submissions
  }


def speedup(reference_time: float, time: float, unreached_time: float) -> float:
  """t_reference / t: above 1 means faster than the reference.

  An unreached target counts as `unreached_time`, the convention of the
  leaderboard's speedup script (the budget plus one second), so that one
  side not reaching the target still gives a finite ratio.
  """
  reference_time = (
    reference_time if math.isfinite(reference_time) else (unreached_time)
  )
  time = time if math.isfinite(time) else unreached_time
  return reference_time / time


def speedup_table(
  table: Dict[str, Dict[str, float]],
  scores: Scores,
  reference: str,
  self_tuning: bool,
) -> Dict[str, Dict[str, float]]:
  """Per base workload speedup of each submission over `reference`.

  NaN where either side has no logs for the workload: not having run a
  workload is not the same as having run it without reaching the target.
  """
  catalog = scores.catalog
  result = {}
  for name in scores.submissions:
    result[name] = {}
    for workload in catalog.base_workloads:
      ran = (
        workload in scores.results[name]
        and workload in scores.results[reference]
      )
      if not ran:
        result[name][workload] = math.nan
        continue
      unreached = catalog.budget_sec(workload, self_tuning) + 1.0
      result[name][workload] = speedup(
        table[reference][workload], table[name][workload], unreached
      )
  return result


def geometric_mean(values: Sequence[float]) -> float:
  """Geometric mean of the finite values (NaN marks a workload not run)."""
  values = np.asarray(values, dtype=float)
  values = values[np.isfinite(values)]
  return float(np.exp(np.log(values).mean())) if values.size else math.nan


def speedup_spreads(
  scores: Scores,
  reference: str,
  self_tuning: bool,
  num_resamples: int = DEFAULT_RESAMPLES,
  seed: int = 0,
) -> Tuple[Dict[str, Dict[str, Spread]], Dict[str, Spread]]:
  """Bootstrap intervals of per-workload and geometric-mean speedups."""
  point = speedup_table(scores.time_to_target, scores, reference, self_tuning)
  cells = {name: {w: [] for w in point[name]} for name in point}
  means = {name: [] for name in point}
  for table in _resampled_tables(scores, num_resamples, seed):
    resampled = speedup_table(table, scores, reference, self_tuning)
    for name, row in resampled.items():
      for workload, value in row.items():
        cells[name][workload].append(value)
      means[name].append(geometric_mean(list(row.values())))
  per_workload = {
    name: {w: _spread(point[name][w], cells[name][w]) for w in point[name]}
    for name in point
  }
  overall = {
    name: _spread(geometric_mean(list(point[name].values())), means[name])
    for name in point
  }
  return per_workload, overall
