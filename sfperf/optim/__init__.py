"""Schedule-Free AdamW optimizers; nothing here knows about AlgoPerf."""

from sfperf.optim.schedule_free_v1 import (
  ScheduleFreeAdamWV1,
  StepCoefficients,
  step_coefficients,
)

__all__ = ['ScheduleFreeAdamWV1', 'StepCoefficients', 'step_coefficients']
