"""The 2024 self-tuning entry's divergence-reset rule, framework-free.

Pure decisions on the eval history, shared by the PyTorch and JAX
self-tuning submissions so that both reset on exactly the same evidence.
Importing it imports neither torch nor jax.
"""

from collections.abc import Sequence
from typing import Any

# Divergence reset: checked once past this fraction of the step hint, each
# time a new eval has arrived, with at least RESET_MIN_EVALS evals.
RESET_START_FRACTION = 0.10
RESET_MIN_EVALS = 4
# Absolute, in the units of the validation target metric.
RESET_MARGIN = 0.01
# Target metrics where lower is better; they are negated before comparing.
MINIMIZED_METRICS = ('loss', 'wer')

EvalResults = Sequence[tuple[int, dict[str, Any]]]


def divergence_check_due(
  global_step: int, step_hint: int, num_evals: int, checked_eval_count: int
) -> bool:
  """Whether the reset rule is looked at this step.

  True once global_step > 0.10 * step_hint, and only if more evals have
  arrived than at the last look.
  """
  past_start = global_step > step_hint * RESET_START_FRACTION
  return past_start and checked_eval_count < num_evals


def looks_diverged(eval_results: EvalResults, metric_name: str) -> bool:
  """The entry's divergence rule on the validation target metric.

  With values negated for 'loss' and 'wer' so that higher is better, e0 the
  first eval and e1, e2, e3, e4 the latest four (e1 newest), it holds when
  e1 - e0, e1 - e2, e2 - e3 and e3 - e4 are all below RESET_MARGIN, that is
  when the run is no better than its first eval and has not improved by the
  margin between any of its last four. NaN values make every comparison
  false, so a NaN metric never triggers a reset.

  Args:
    eval_results: (global_step, metrics) pairs, oldest first, with the key
      'validation/<metric_name>' in every metrics dict.
    metric_name: the workload's target metric name, without split prefix.

  Returns:
    True if the rule holds; False with fewer than RESET_MIN_EVALS evals.
  """
  if len(eval_results) < RESET_MIN_EVALS:
    return False
  key = f'validation/{metric_name}'
  sign = -1.0 if metric_name in MINIMIZED_METRICS else 1.0
  first = sign * eval_results[0][1][key]
  e1, e2, e3, e4 = (sign * eval_results[-i][1][key] for i in (1, 2, 3, 4))
  return (
    e1 - first < RESET_MARGIN
    and e1 - e2 < RESET_MARGIN
    and e2 - e3 < RESET_MARGIN
    and e3 - e4 < RESET_MARGIN
  )


def should_reset(
  eval_results: EvalResults,
  metric_name: str,
  global_step: int,
  step_hint: int,
  checked_eval_count: int,
) -> tuple[bool, int]:
  """Decides the divergence reset for one step.

  Args:
    eval_results: (global_step, metrics) pairs, oldest first.
    metric_name: the workload's target metric name.
    global_step: the runner's step counter.
    step_hint: the workload's step hint.
    checked_eval_count: the number of evals at the last look (-1 if none).

  Returns:
    (reset, new checked_eval_count). Like the entry, a look consumes the
    new evals even when there are too few of them to decide.
  """
  num_evals = len(eval_results)
  if not divergence_check_due(
    global_step, step_hint, num_evals, checked_eval_count
  ):
    return False, checked_eval_count
  return looks_diverged(eval_results, metric_name), num_evals
