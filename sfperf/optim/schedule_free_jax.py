"""Schedule-Free AdamW in JAX, as the AlgoPerf 2024 (v0.5) entries computed it.

The JAX counterpart of `ScheduleFreeAdamWV1`: pure functions over pytrees in
the style of an optax transformation, with x held in the parameters between
steps and y computed from x and z only while the gradient is taken.
"""

import functools
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from sfperf.optim import xla_kernel

Params = Any  # a pytree of float arrays


class ScheduleFreeV1State(NamedTuple):
  """What the optimizer keeps between steps (x lives in the parameters).

  Attributes:
    z: the base iterate, one array per parameter, in the parameter's dtype.
    v: the second moment, one array per parameter, in `v_dtype` (bfloat16
      by default, as the entry).
    k: int32 scalar, the number of steps taken.
    lr_max: float32 scalar, running maximum of the scheduled learning rate.
    weight_sum: float32 scalar, sum of the averaging weights so far.
  """

  z: Params
  v: Params
  k: jax.Array
  lr_max: jax.Array
  weight_sum: jax.Array


class StepScalars(NamedTuple):
  """The per-step scalars shared by every parameter, all float32."""

  lr: jax.Array  # scheduled learning rate, floored at eps
  lr_max: jax.Array  # running maximum of `lr`
  weight_sum: jax.Array  # sum of the averaging weights, this step included
  averaging_weight: jax.Array  # c_k = w_k / weight_sum
  step_size: jax.Array  # lr * sqrt(1 - b2^(k+1))


class ScheduleFreeV1(NamedTuple):
  """The three pure functions of the optimizer; see `schedule_free_adamw_v1`.

  Attributes:
    init: `init(params_x) -> state`.
    gradient_point: `gradient_point(params_x, state) -> params_y`.
    update: `update(grads_at_y, state, params_x) -> (new_params_x,
      new_state)`.
    step_scalars: `step_scalars(state) -> StepScalars` of the next update.
  """

  init: Callable[[Params], ScheduleFreeV1State]
  gradient_point: Callable[[Params, ScheduleFreeV1State], Params]
  update: Callable[
    [Params, ScheduleFreeV1State, Params],
    tuple[Params, ScheduleFreeV1State],
  ]
  step_scalars: Callable[[ScheduleFreeV1State], StepScalars]


def _round_like_torch(value: jax.Array, dtype: Any) -> jax.Array:
  """Rounds a float32 value to `dtype` and back, as an in-place torch op.

  `reduce_precision` rather than a pair of casts, because XLA may drop a
  cast pair as "excess precision" and skip the rounding that the entry's
  bfloat16 buffer performs after every operation.
  """
  info = jnp.finfo(dtype)
  return jax.lax.reduce_precision(
    value, exponent_bits=info.nexp, mantissa_bits=info.nmant
  )


def _lerp(start: jax.Array, end: jax.Array, weight: jax.Array) -> jax.Array:
  """start + weight (end - start), in the two-branch form torch uses.

  For weight >= 0.5 torch computes end - (1 - weight)(end - start), so a
  weight of 1 gives `end` exactly. The branch is chosen on the scalar
  weight, so each element still costs one multiply-add.
  """
  small = jnp.abs(weight) < 0.5
  base = jnp.where(small, start, end)
  factor = jnp.where(small, weight, weight - 1.0)
  return base + factor * (end - start)


def _leaf_update(x, z, v, grad, step, *, beta2, eps):
  """One parameter's update in jax.numpy: returns new (x, z, v).

  Args:
    x, z: the parameter (x) and its base iterate, any float dtype.
    v: the second moment, in the dtype it is stored in.
    grad: float32 gradient at y.
    step: float32[3]: -step_size, -step_size * weight_decay and the
      averaging weight c_k.
    beta2, eps: the optimizer's settings, Python floats.
  """
  x32 = x.astype(jnp.float32)
  z32 = z.astype(jnp.float32)
  v_dtype = v.dtype

  # The entry's order of operations on its bfloat16 buffer.
  v_new = _round_like_torch(v.astype(jnp.float32) * beta2, v_dtype)
  v_new = _round_like_torch(v_new + ((1.0 - beta2) * grad) * grad, v_dtype)
  # Materialize v first. Without the barrier XLA (CPU) recomputes v inside
  # the z loop from a copy of the donated old v, which made the step about
  # twice as slow; with it, the z loop reads the stored 16-bit v.
  v_stored = jax.lax.optimization_barrier(v_new.astype(v_dtype))
  v_new = v_stored.astype(jnp.float32)
  denominator = _round_like_torch(jnp.sqrt(v_new), v_dtype)
  # torch adds a Python scalar to a bfloat16 tensor after rounding it to
  # bfloat16 (1e-8 becomes 1.00117e-8); so does the entry's denominator.
  eps_in_v_dtype = float(np.asarray(eps, v_dtype))
  denominator = _round_like_torch(denominator + eps_in_v_dtype, v_dtype)

  z_new = z32 + (step[0] * grad) / denominator
  z_new = z_new + step[1] * x32
  x_new = _lerp(x32, z_new, step[2])
  return x_new.astype(x.dtype), z_new.astype(z.dtype), v_stored


# Leaves smaller than this stay in jax.numpy, where XLA fuses many of them
# into one loop; each custom call costs microseconds of its own (measured
# slower than jax.numpy for thousands of 100- to 5000-element leaves).
KERNEL_MIN_SIZE = 65536


def _kernel_takes(x, z, v) -> bool:
  """Whether the CPU kernel can update this leaf, and is usable here.

  Only on one device: a custom call has no sharding rule, so XLA would
  gather sharded leaves onto every device to call it.
  """
  return (
    jax.default_backend() == 'cpu'
    and jax.device_count() == 1
    and x.size >= KERNEL_MIN_SIZE
    and x.dtype == jnp.float32
    and z.dtype == jnp.float32
    and v.dtype == jnp.bfloat16
    and x.shape == z.shape == v.shape
    and xla_kernel.kernel_available(_leaf_update)
  )


def schedule_free_adamw_v1(
  learning_rate: float = 1e-3,
  warmup_steps: int = 0,
  b1: float = 0.9,
  b2: float = 0.999,
  eps: float = 1e-8,
  weight_decay: float = 0.0,
  r: float = 0.0,
  weight_lr_power: float = 2.0,
  v_dtype: Any = jnp.bfloat16,
  cpu_kernel: bool = True,
) -> ScheduleFreeV1:
  r"""Schedule-Free AdamW with the 2024 AlgoPerf entry's numerics.

  The parameters hold x, the averaged iterate that is evaluated. A training
  step takes y = `gradient_point(x, state)`, the gradient g there, and then
  `update(g, state, x)`. For step k = 0, 1, ..., with warmup length T, base
  lr gamma, decay lambda and p = `weight_lr_power`:

  .. math::

    y_k &= x_k + (1 - \beta_1)(z_k - x_k), \quad g_k = \nabla f(y_k) \\
    \gamma_k &= \max(\gamma \min(1, (k+1)/T), \epsilon), \quad
      \gamma^{max}_k = \max(\gamma^{max}_{k-1}, \gamma_k) \\
    w_k &= (k+1)^r (\gamma^{max}_k)^p, \quad S_k = S_{k-1} + w_k, \quad
      c_k = w_k / S_k \\
    v_k &= \beta_2 v_{k-1} + (1 - \beta_2) g_k^2, \quad
      \eta_k = \gamma_k \sqrt{1 - \beta_2^{k+1}} \\
    z_{k+1} &= z_k - \eta_k g_k / (\sqrt{v_k} + \epsilon)
      - \eta_k \lambda x_k \\
    x_{k+1} &= (1 - c_k) x_k + c_k z_{k+1}

  with z_0 = x_0 and v_{-1} = 0. Buffers kept (`ScheduleFreeV1State`): z
  and v per parameter, and the scalars k, gamma^max and S. There is no first
  moment: b1 is only the interpolation weight of y.

  As in the entry, v is rounded to bfloat16 after each of its two updates,
  and sqrt(v) and sqrt(v) + eps are rounded to bfloat16 too, with eps itself
  rounded to bfloat16 first as torch does when it adds a Python scalar to a
  bfloat16 tensor (1e-8 becomes 1.00117e-8); the decay is computed at x and
  applied to z; the lr is floored at eps, so S_k > 0 and lr = 0 still moves
  the parameters by steps of about eps.

  On the CPU backend, in a one-device process, each float32 leaf of at
  least `KERNEL_MIN_SIZE` elements is updated by a one-pass native kernel
  (sfperf/optim/xla_kernel.py) that XLA calls as a custom call; it gives
  the same bits as the jax.numpy form used everywhere else (checked on a
  probe before first use; any difference and jax.numpy is used). The
  kernel runs under jax.vmap but cannot be differentiated: to take
  gradients through `update`, build the optimizer with cpu_kernel=False.
  Memory: z and v are the only parameter-sized buffers kept; the update
  allocates none when parameters and state are donated.

  Differences from the PyTorch class `ScheduleFreeAdamWV1`, none of them
  more than float32 rounding: the per-step scalars are float32 here (Python
  floats, i.e. float64, there; S_k accumulates float32 rounding, about
  1e-7 relative per step); x is kept as it is, where the PyTorch class
  recovers it from y by an inverse lerp each step (a few ulps of drift).

  Args:
    learning_rate: base learning rate gamma, reached at the end of warmup.
      A Python float: changing it (the self-tuning reset halves it) means
      building a new optimizer and a new trace.
    warmup_steps: linear warmup length in steps; 0 means none.
    b1: the interpolation weight of y, in (0, 1].
    b2: second-moment decay, in [0, 1).
    eps: added to sqrt(v), and the floor of the scheduled learning rate.
    weight_decay: decoupled decay lambda, computed at x, applied to z.
    r: power of the step count in the averaging weights.
    weight_lr_power: power p of lr_max in the averaging weights.
    v_dtype: dtype of the second moment. bfloat16 is the entry's;
      float32 turns the bfloat16 roundings off.
    cpu_kernel: whether float32 leaves use the one-pass kernel on the CPU
      backend (same bits); False keeps this optimizer on jax.numpy.

  Returns:
    A `ScheduleFreeV1` of pure functions, safe to `jax.jit`, with the
    parameters and state donatable.

  Raises:
    ValueError: if a setting is out of range.
  """
  if not 0.0 < b1 <= 1.0:
    raise ValueError(f'b1 must be in (0, 1], got {b1}.')
  if not 0.0 <= b2 < 1.0:
    raise ValueError(f'b2 must be in [0, 1), got {b2}.')
  if not eps > 0.0:
    raise ValueError(f'eps must be positive, got {eps}.')
  if learning_rate < 0.0:
    raise ValueError(
      f'learning_rate must be non-negative, got {learning_rate}.'
    )
  if warmup_steps < 0:
    raise ValueError(f'warmup_steps must be non-negative, got {warmup_steps}.')

  # log(b2) in float64 once, so that 1 - b2^(k+1) = -expm1((k+1) log b2)
  # loses nothing to cancellation when b2^(k+1) is close to 1.
  log_b2 = math.log(b2) if b2 > 0.0 else -math.inf

  def init(params: Params) -> ScheduleFreeV1State:
    # A copy, so that z and the parameters are distinct buffers and both can
    # be donated to a jitted step.
    return ScheduleFreeV1State(
      z=jax.tree.map(jnp.copy, params),
      v=jax.tree.map(lambda p: jnp.zeros(p.shape, v_dtype), params),
      k=jnp.zeros([], jnp.int32),
      lr_max=jnp.zeros([], jnp.float32),
      weight_sum=jnp.zeros([], jnp.float32),
    )

  def gradient_point(params: Params, state: ScheduleFreeV1State) -> Params:
    return jax.tree.map(
      lambda x, z: (x + (1.0 - b1) * (z - x)).astype(x.dtype),
      params,
      state.z,
    )

  def step_scalars(state: ScheduleFreeV1State) -> StepScalars:
    step = (state.k + 1).astype(jnp.float32)
    if warmup_steps > 0:
      warmup = jnp.minimum(step / warmup_steps, 1.0)
    else:
      warmup = jnp.ones([], jnp.float32)
    lr = jnp.maximum(learning_rate * warmup, eps)
    lr_max = jnp.maximum(lr, state.lr_max)
    weight = step**r * lr_max**weight_lr_power
    weight_sum = state.weight_sum + weight
    bias_correction = -jnp.expm1(step * log_b2)
    return StepScalars(
      lr=lr,
      lr_max=lr_max,
      weight_sum=weight_sum,
      averaging_weight=weight / weight_sum,
      step_size=lr * jnp.sqrt(bias_correction),
    )

  def update_leaf(x, z, v, grad, scalars):
    grad = grad.astype(jnp.float32)
    # The leaf update's scalars, in float32 as the jax.numpy form uses them.
    step = jnp.stack(
      [
        -scalars.step_size,
        -(scalars.step_size * weight_decay),
        scalars.averaging_weight,
      ]
    )
    jnp_form = functools.partial(_leaf_update, beta2=b2, eps=eps)
    if not (cpu_kernel and _kernel_takes(x, z, v)):
      return jnp_form(x, z, v, grad, step)
    kernel_form = functools.partial(xla_kernel.kernel_update, beta2=b2, eps=eps)
    return jax.lax.platform_dependent(
      x, z, v, grad, step, cpu=kernel_form, default=jnp_form
    )

  def update(
    grads: Params, state: ScheduleFreeV1State, params: Params
  ) -> tuple[Params, ScheduleFreeV1State]:
    # Computed once, not folded into every parameter's elementwise loop.
    scalars = jax.lax.optimization_barrier(step_scalars(state))
    treedef = jax.tree.structure(params)
    results = [
      update_leaf(x, z, v, grad, scalars)
      for x, z, v, grad in zip(
        treedef.flatten_up_to(params),
        treedef.flatten_up_to(state.z),
        treedef.flatten_up_to(state.v),
        treedef.flatten_up_to(grads),
        strict=True,
      )
    ]
    new_x, new_z, new_v = (
      treedef.unflatten([result[i] for result in results]) for i in range(3)
    )
    new_state = ScheduleFreeV1State(
      z=new_z,
      v=new_v,
      k=state.k + 1,
      lr_max=scalars.lr_max,
      weight_sum=scalars.weight_sum,
    )
    return new_x, new_state

  return ScheduleFreeV1(init, gradient_point, update, step_scalars)
