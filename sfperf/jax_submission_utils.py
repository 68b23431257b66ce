"""JAX mechanics of the Schedule-Free AdamW (v1) submissions.

The v0.6 JAX data layout both JAX entries use: one `jax.jit` train step over
a 1-D device mesh with axis 'batch', parameters and optimizer state
replicated, the global batch sharded along its first dimension. Importing it
does not import torch.
"""

import functools
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sfperf.api import spec
from sfperf.optim.schedule_free_jax import (
  ScheduleFreeV1State,
  schedule_free_adamw_v1,
)
from sfperf.submission_utils import train_loss_terms

MESH_AXIS = 'batch'

# Extra `model_fn` arguments as (name, value) pairs: hashable, so they can
# be a static argument of the jitted step.
ModelFnOptions = tuple[tuple[str, Any], ...]


class OptimizerSettings(NamedTuple):
  """Arguments of `schedule_free_adamw_v1`; hashable, a static jit argument."""

  learning_rate: float
  warmup_steps: int
  b1: float
  b2: float
  eps: float
  weight_decay: float
  r: float
  weight_lr_power: float


# AlgoPerf's JAX checkpointing unpacks a submission's optimizer state as
# `opt_state, opt_update_fn = optimizer_state` whenever it saves or looks
# for a checkpoint (every official run does), so the state must be a pair;
# it saves the first element and hands the second back unchanged. The
# submissions here keep a dict of their own first and need no update_fn.
RunnerOptimizerState = tuple[dict[str, Any], None]


def runner_state(entry_state: dict[str, Any]) -> RunnerOptimizerState:
  """The pair AlgoPerf's JAX runner expects, around a submission's dict."""
  return (entry_state, None)


def entry_state(optimizer_state: RunnerOptimizerState) -> dict[str, Any]:
  """The submission's dict out of the runner's pair (see `runner_state`)."""
  state, _ = optimizer_state
  return state


def check_batch_divisible(batch: dict[str, Any], num_devices: int) -> None:
  """Raises ValueError unless every batch array splits evenly over devices.

  jit would otherwise fail deep inside XLA, or pad silently under other
  shardings; the message names the array and the sizes.
  """
  for key, array in batch.items():
    if array is None:
      continue
    size = np.shape(array)[0]
    if size % num_devices:
      raise ValueError(
        f'Global batch dimension of {key!r} is {size}, not divisible by '
        f'the {num_devices} devices of the {MESH_AXIS!r} mesh axis; choose '
        f'a global batch size that is a multiple of {num_devices}.'
      )


def mesh() -> Mesh:
  """The 1-D mesh over all devices, axis MESH_AXIS."""
  return Mesh(np.array(jax.devices()), (MESH_AXIS,))


def replicated() -> NamedSharding:
  """The sharding that puts a full copy on every device of `mesh()`."""
  return NamedSharding(mesh(), PartitionSpec())


def init_state(settings: OptimizerSettings, params_x: Any) -> Any:
  """The optimizer's initial state at x, replicated over the devices."""
  optimizer = schedule_free_adamw_v1(**settings._asdict())
  return jax.device_put(optimizer.init(params_x), replicated())


def _loss_and_state(
  workload: spec.Workload,
  label_smoothing: float,
  model_fn_options: ModelFnOptions,
  params_y: Any,
  model_state: Any,
  batch: dict[str, Any],
  rng: Any,
) -> tuple[jax.Array, Any]:
  loss_dict, new_model_state = train_loss_terms(
    workload,
    params_y,
    model_state,
    batch,
    rng,
    label_smoothing,
    **dict(model_fn_options),
  )
  # Sums over the global batch: under jit the sharded arrays are one
  # logical array, and XLA inserts the cross-device reduction.
  loss = loss_dict['summed'] / loss_dict['n_valid_examples']
  return loss, new_model_state


def _train_step(
  workload: spec.Workload,
  settings: OptimizerSettings,
  label_smoothing: float,
  model_fn_options: ModelFnOptions,
  params_x: Any,
  optimizer_state: ScheduleFreeV1State,
  model_state: Any,
  batch: dict[str, Any],
  rng: Any,
) -> tuple[Any, ScheduleFreeV1State, Any, jax.Array]:
  optimizer = schedule_free_adamw_v1(**settings._asdict())
  params_y = optimizer.gradient_point(params_x, optimizer_state)
  loss_fn = functools.partial(
    _loss_and_state, workload, label_smoothing, model_fn_options
  )
  (loss, new_model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    params_y, model_state, batch, rng
  )
  new_params_x, new_optimizer_state = optimizer.update(
    grads, optimizer_state, params_x
  )
  return new_params_x, new_optimizer_state, new_model_state, loss


@functools.cache
def _jitted_train_step(num_devices: int) -> Any:
  """The train step jitted for the current devices (cached per count)."""
  del num_devices  # the cache key; the mesh reads jax.devices()
  device_mesh = mesh()
  replicated_sharding = NamedSharding(device_mesh, PartitionSpec())
  batch_sharded = NamedSharding(device_mesh, PartitionSpec(MESH_AXIS))
  return jax.jit(
    _train_step,
    static_argnums=(0, 1, 2, 3),
    in_shardings=(
      replicated_sharding,  # params x
      replicated_sharding,  # optimizer state
      replicated_sharding,  # model state
      batch_sharded,  # batch, split along dim 0
      replicated_sharding,  # rng
    ),
    out_shardings=(replicated_sharding,) * 4,
    donate_argnums=(4, 5, 6),
  )


def train_step(
  workload: spec.Workload,
  optimizer_state: dict[str, Any],
  label_smoothing: float,
  model_fn_options: ModelFnOptions,
  params_x: Any,
  model_state: Any,
  batch: dict[str, Any],
  rng: Any,
) -> tuple[Any, Any]:
  """One jitted step: the loss at y in TRAIN mode, then the update of x.

  BatchNorm statistics are updated at y (update_batch_norm=True). The
  inputs params_x, optimizer_state['optimizer_state'] and model_state are
  donated.

  Args:
    optimizer_state: the submission's optimizer state, with the optimizer's
      'settings' (an `OptimizerSettings`) and 'optimizer_state'; the new
      optimizer state replaces the old one in it.

  Returns:
    (new x, new model_state).
  """
  # A no-op when the runner already replicated them (v0.6 does); otherwise
  # the first step would be traced once for single-device arrays and again
  # for the replicated ones it returns.
  params_x, model_state = jax.device_put((params_x, model_state), replicated())
  jitted_step = _jitted_train_step(jax.device_count())
  new_params_x, new_state, new_model_state, loss = jitted_step(
    workload,
    optimizer_state['settings'],
    label_smoothing,
    model_fn_options,
    params_x,
    optimizer_state['optimizer_state'],
    model_state,
    batch,
    rng,
  )
  del loss  # computed for free; the 2024 entries did not log it either
  optimizer_state['optimizer_state'] = new_state
  return new_params_x, new_model_state
