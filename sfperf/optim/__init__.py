"""Schedule-Free AdamW optimizers; nothing here knows about AlgoPerf.

Names load lazily, so that importing one framework's optimizer does not
import the other framework (a JAX submission never pays for torch).
"""

import importlib
from typing import Any

_EXPORTS = {
  'ScheduleFreeAdamW': 'sfperf.optim.schedule_free',
  'step_scalars': 'sfperf.optim.schedule_free',
  'ScheduleFreeAdamWV1': 'sfperf.optim.schedule_free_v1',
  'StepCoefficients': 'sfperf.optim.schedule_free_v1',
  'step_coefficients': 'sfperf.optim.schedule_free_v1',
  'ScheduleFreeV1': 'sfperf.optim.schedule_free_jax',
  'ScheduleFreeV1State': 'sfperf.optim.schedule_free_jax',
  'StepScalars': 'sfperf.optim.schedule_free_jax',
  'schedule_free_adamw_v1': 'sfperf.optim.schedule_free_jax',
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
  try:
    module = _EXPORTS[name]
  except KeyError:
    raise AttributeError(
      f'module {__name__!r} has no attribute {name!r}'
    ) from None
  return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(_EXPORTS))
