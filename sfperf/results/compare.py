"""Scores a variant inside a reference field, as if it had been on that
leaderboard.

A benchmark score is relative to the submissions scored together, so a
variant is only comparable with a field when it is scored with it. This
scores the field alone and the field plus the variant, ranks the variant, and
reports per-workload speedups against one reference submission.
"""

import dataclasses
import math
from typing import Dict, List, Optional

from sfperf.catalog import Catalog
from sfperf.results.logs import LogSet
from sfperf.results.scoring import Scores, score_logs
from sfperf.results.uncertainty import (
  Spread,
  geometric_mean,
  speedup_spreads,
  speedup_table,
)

VARIANT_SUFFIX = ' (variant)'


class CompareError(ValueError):
  """The variant and field cannot be compared as asked."""


@dataclasses.dataclass
class Comparison:
  field_alone: Scores
  with_variants: Scores
  variants: List[str]
  reference: str
  ranks: Dict[str, int]  # submission -> 1-based rank in the joint scoring
  speedups: Dict[str, Dict[str, float]]  # submission -> base workload -> x
  mean_speedups: Dict[str, float]
  speedup_spreads: Optional[Dict[str, Dict[str, Spread]]] = None
  mean_speedup_spreads: Optional[Dict[str, Spread]] = None


def field_only(field: List[LogSet]) -> LogSet:
  """The field's log sets as one; a name in two of them is an error.

  Merging two folders' `baseline` into one submission would pool their
  trials (and let the faster copy win each study), so it is refused.
  """
  trials, warnings, origin = {}, [], {}
  for log_set in field:
    for name, found in log_set.trials.items():
      if name in trials:
        raise CompareError(
          f'submission {name!r} is in two --field folders ({origin[name]} '
          f'and {log_set.root}); rename one of them'
        )
      trials[name] = list(found)
      origin[name] = log_set.root
    warnings.extend(log_set.warnings)
  return LogSet(root=field[0].root, trials=trials, warnings=warnings)


def merge_log_sets(field: List[LogSet], variant: LogSet) -> LogSet:
  """One log set of field and variant; a variant named like a field entry
  gets a ' (variant)' suffix so that both stay in the table."""
  merged = field_only(field)
  trials, warnings = dict(merged.trials), list(merged.warnings)
  field_names = set(trials)
  for name, found in variant.trials.items():
    trials[name + VARIANT_SUFFIX if name in field_names else name] = found
  warnings.extend(variant.warnings)
  return LogSet(root=variant.root, trials=trials, warnings=warnings)


def variant_names(field: List[LogSet], variant: LogSet) -> List[str]:
  field_names = {name for log_set in field for name in log_set.trials}
  return sorted(
    name + VARIANT_SUFFIX if name in field_names else name
    for name in variant.trials
  )


def _ranks(scores: Dict[str, float]) -> Dict[str, int]:
  """Competition ranking: equal scores share a rank."""
  ordered = sorted(scores.values(), reverse=True)
  return {name: ordered.index(value) + 1 for name, value in scores.items()}


def compare(
  variant: LogSet,
  field: List[LogSet],
  catalog: Catalog,
  self_tuning: bool,
  reference: Optional[str] = None,
  trial_choice: str = 'fewest_evals',
  exclude_unrun: bool = False,
  num_resamples: int = 0,
) -> Comparison:
  """Scores the field alone and with the variant; speedups vs `reference`."""
  alone = score_logs(field_only(field), catalog, trial_choice, exclude_unrun)
  joint = score_logs(
    merge_log_sets(field, variant), catalog, trial_choice, exclude_unrun
  )
  names = variant_names(field, variant)
  ran = [name for name in names if joint.results[name]]
  if not ran:
    raise CompareError(
      f'no workload of the variant logs ({variant.root}) is in the '
      f'{catalog.benchmark_version} catalog, so it cannot be compared with '
      'the field; see the warnings of `sfperf score` on those logs'
    )
  if reference is None:
    reference = 'baseline' if 'baseline' in alone.scores else None
    if reference is None:
      reference = max(alone.scores, key=alone.scores.get)
  if reference not in joint.scores:
    raise CompareError(
      f'reference submission {reference!r} is not in the field; field '
      f'submissions: {", ".join(sorted(alone.scores))}'
    )
  speedups = speedup_table(joint.time_to_target, joint, reference, self_tuning)
  comparison = Comparison(
    field_alone=alone,
    with_variants=joint,
    variants=names,
    reference=reference,
    ranks=_ranks(joint.scores),
    speedups=speedups,
    mean_speedups={
      name: geometric_mean(list(row.values())) for name, row in speedups.items()
    },
  )
  if num_resamples:
    comparison.speedup_spreads, comparison.mean_speedup_spreads = (
      speedup_spreads(joint, reference, self_tuning, num_resamples)
    )
  return comparison


def _format_speedup(value: float) -> str:
  return 'not run' if not math.isfinite(value) else f'{value:.2f}x'


def markdown(
  comparison: Comparison, self_tuning: bool, provenance: str = ''
) -> str:
  """The variant's rank and score, the field with and without it, speedups."""
  joint, alone = comparison.with_variants, comparison.field_alone
  total = len(joint.scores)
  lines = ['## Leaderboard with the variant', '']
  if provenance:
    lines += [provenance, '']
  lines += ['| rank | submission | score | score without the variant |']
  lines += ['|---:|---|---:|---:|']
  for name in sorted(joint.scores, key=lambda n: (-joint.scores[n], n)):
    before = alone.scores.get(name)
    label = f'**{name}**' if name in comparison.variants else name
    lines.append(
      f'| {comparison.ranks[name]} | {label} | {joint.scores[name]:.4f} | '
      + (f'{before:.4f}' if before is not None else '-')
      + ' |'
    )
  lines += ['']
  for name in comparison.variants:
    lines.append(
      f'{name}: rank {comparison.ranks[name]} of {total}, score '
      f'{joint.scores[name]:.4f}.'
    )
  budget_rule = 'self-tuning budget' if self_tuning else 'budget'
  shown = comparison.variants + [
    name
    for name in joint.submissions
    if name not in comparison.variants and name != comparison.reference
  ]
  lines += [
    '',
    f'## Speedup over {comparison.reference} (t_{comparison.reference} / t;'
    ' above 1 is faster)',
    '',
    '| workload | ' + ' | '.join(shown) + ' |',
  ]
  lines.append('|---|' + '---:|' * len(shown))
  spreads = comparison.speedup_spreads
  for workload in joint.catalog.base_workloads:
    cells = []
    for name in shown:
      cell = _format_speedup(comparison.speedups[name][workload])
      spread = spreads[name][workload] if spreads else None
      if spread and math.isfinite(spread.low):
        cell += f' [{spread.low:.2f}, {spread.high:.2f}]'
      cells.append(cell)
    lines.append(f'| {workload} | ' + ' | '.join(cells) + ' |')
  means = []
  for name in shown:
    cell = f'**{_format_speedup(comparison.mean_speedups[name])}**'
    if comparison.mean_speedup_spreads:
      spread = comparison.mean_speedup_spreads[name]
      cell += f' [{spread.low:.2f}, {spread.high:.2f}]'
    means.append(cell)
  lines.append('| geometric mean | ' + ' | '.join(means) + ' |')
  lines += [
    '',
    "A target not reached counts as the workload's "
    f"{budget_rule} plus one second, the convention of the leaderboard's "
    'speedup script (which reports the inverse ratio). "not run": one side '
    'has no logs for the workload; the geometric mean leaves it out.',
  ]
  if spreads:
    lines.append(
      'Brackets: 5th-95th percentile over bootstrap resamples of the '
      'studies (see `sfperf.results.uncertainty`).'
    )
  return '\n'.join(lines) + '\n'
