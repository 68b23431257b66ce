"""Tests of the JAX Schedule-Free AdamW (2024 entry math).

Three references: the PyTorch class `ScheduleFreeAdamWV1` (same math, a
model-diff test as AlgoPerf runs between its JAX and PyTorch workloads), its
scalar schedule `step_coefficients`, and optax's
`optax.contrib.schedule_free_adamw`, whose differences from the entry are
pinned down one by one.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch

from sfperf.optim import (
  ScheduleFreeAdamWV1,
  schedule_free_adamw_v1,
  step_coefficients,
)

SHAPES = {'w1': (32, 10), 'b1': (32,), 'w2': (5, 32), 'b2': (5,)}
BATCH_SIZE = 64
NUM_STEPS = 60
WARMUP_STEPS = 20

# The entry's self-tuning settings, at a larger lr so that 60 steps move the
# parameters far (about 0.3) and any difference in the math shows.
ENTRY = {
  'learning_rate': 0.02,
  'b1': 0.9,
  'b2': 0.9955159689799007,
  'eps': 1e-8,
  'weight_decay': 0.08,
  'warmup_steps': WARMUP_STEPS,
  'r': 0.75,
  'weight_lr_power': 2.0,
}

# Largest |x_torch - x_jax| allowed over the trajectory. What differs is
# float32 rounding only: torch computes the per-step scalars in float64 and
# rounds them once, JAX computes them in float32; torch recovers x from y by
# an inverse lerp each step (a few ulps of drift), JAX keeps x. Measured:
# 2.7e-7 after 60 steps (5e-7 before the JAX form rounded eps to bfloat16
# as torch does). The bound leaves room for the one discontinuous effect:
# when two float32 values of v straddle a bfloat16 rounding tie, v differs
# by one bfloat16 ulp (2^-8 relative) and that element's step by up to
# 2^-9 relative, i.e. up to lr * 2^-9 = 4e-5 at lr = 0.02, per flip.
TORCH_TOLERANCE = 1e-4

# Largest |x_ours - x_optax| when every difference is switched off. Again
# float32 only: optax recovers x from y and z each step, dividing by b1.
# Measured: about 1e-6 after 60 steps.
OPTAX_TOLERANCE = 1e-5


def _initial_params() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  return {
    name: (0.3 * rng.standard_normal(shape)).astype(np.float32)
    for name, shape in SHAPES.items()
  }


def _batches() -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(1)
  inputs = rng.standard_normal((NUM_STEPS, BATCH_SIZE, 10)).astype(np.float32)
  labels = rng.integers(0, 5, (NUM_STEPS, BATCH_SIZE))
  return inputs, labels


def _jax_loss(params, inputs, labels):
  hidden = jnp.tanh(inputs @ params['w1'].T + params['b1'])
  logits = hidden @ params['w2'].T + params['b2']
  log_probs = jax.nn.log_softmax(logits)
  picked = jnp.take_along_axis(log_probs, labels[:, None], axis=1)
  return -jnp.sum(picked) / BATCH_SIZE


def _torch_trajectory(**settings) -> dict[str, np.ndarray]:
  """x after every step, stacked: {name: (NUM_STEPS, *shape)}."""
  params = {
    name: torch.nn.Parameter(torch.tensor(value))
    for name, value in _initial_params().items()
  }
  optimizer = ScheduleFreeAdamWV1(
    list(params.values()),
    lr=settings['learning_rate'],
    betas=(settings['b1'], settings['b2']),
    eps=settings['eps'],
    weight_decay=settings['weight_decay'],
    weight_lr_power=settings['weight_lr_power'],
    warmup_steps=settings['warmup_steps'],
    r=settings['r'],
  )
  inputs, labels = _batches()
  trajectory = {name: [] for name in SHAPES}
  for step in range(NUM_STEPS):

    def closure(step=step):
      optimizer.zero_grad()
      hidden = torch.tanh(
        torch.tensor(inputs[step]) @ params['w1'].T + params['b1']
      )
      logits = hidden @ params['w2'].T + params['b2']
      loss = torch.nn.functional.cross_entropy(
        logits, torch.tensor(labels[step]), reduction='sum'
      )
      loss = loss / BATCH_SIZE
      loss.backward()
      return loss

    optimizer.step(closure)
    for name, param in params.items():
      trajectory[name].append(param.detach().numpy().copy())
  return {name: np.stack(values) for name, values in trajectory.items()}


def _jax_trajectory(**settings) -> dict[str, np.ndarray]:
  """x after every step under `schedule_free_adamw_v1`, one jit per call."""
  optimizer = schedule_free_adamw_v1(**settings)

  def step(carry, batch):
    params, state = carry
    grads = jax.grad(_jax_loss)(optimizer.gradient_point(params, state), *batch)
    params, state = optimizer.update(grads, state, params)
    return (params, state), params

  params = jax.tree.map(jnp.asarray, _initial_params())
  run = jax.jit(lambda carry, batches: jax.lax.scan(step, carry, batches)[1])
  return jax.device_get(run((params, optimizer.init(params)), _batches()))


def _optax_trajectory(
  *, learning_rate, b2, eps, weight_decay, match_warmup
) -> dict[str, np.ndarray]:
  """Eval params x after every step under optax's schedule-free AdamW.

  With `match_warmup`, optax's own pieces are assembled as
  `schedule_free_adamw` does, except that the z update's lr schedule is
  shifted one step earlier, so both schedules see lr * min(t, T) / T at
  step t = 1, 2, ...; without it, `schedule_free_adamw` as shipped.
  """
  if match_warmup:

    def weight_schedule(count):
      return learning_rate * jnp.minimum(count, WARMUP_STEPS) / WARMUP_STEPS

    def z_schedule(count):
      return weight_schedule(count + 1)

    base = optax.chain(
      optax.scale_by_rms(
        decay=b2, eps=eps, eps_in_sqrt=False, bias_correction=True
      ),
      optax.add_decayed_weights(weight_decay),
      optax.scale_by_learning_rate(z_schedule),
    )
    optimizer = optax.contrib.schedule_free(base, weight_schedule, b1=0.9)
  else:
    optimizer = optax.contrib.schedule_free_adamw(
      learning_rate,
      warmup_steps=WARMUP_STEPS,
      b1=0.9,
      b2=b2,
      eps=eps,
      weight_decay=weight_decay,
    )

  def step(carry, batch):
    params_y, state = carry
    grads = jax.grad(_jax_loss)(params_y, *batch)
    updates, state = optimizer.update(grads, state, params_y)
    params_y = optax.apply_updates(params_y, updates)
    x = optax.contrib.schedule_free_eval_params(state, params_y)
    return (params_y, state), x

  params = jax.tree.map(jnp.asarray, _initial_params())
  run = jax.jit(lambda carry, batches: jax.lax.scan(step, carry, batches)[1])
  return jax.device_get(run((params, optimizer.init(params)), _batches()))


def _max_difference(first, second) -> float:
  return max(float(np.max(np.abs(first[n] - second[n]))) for n in SHAPES)


@pytest.fixture(scope='module')
def torch_entry() -> dict[str, np.ndarray]:
  # One thread: torch's pool and XLA's contend on a small machine, which
  # slows this tiny model tenfold; the results do not depend on it.
  num_threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    return _torch_trajectory(**ENTRY)
  finally:
    torch.set_num_threads(num_threads)


def test_matches_pytorch_trajectory(torch_entry):
  jax_entry = _jax_trajectory(**ENTRY)

  assert _max_difference(torch_entry, jax_entry) <= TORCH_TOLERANCE
  # The comparison is not vacuous: the parameters moved far from x0.
  initial = {n: v[None] for n, v in _initial_params().items()}
  assert _max_difference(torch_entry, initial) > 1000 * TORCH_TOLERANCE


@pytest.mark.parametrize(
  'change',
  [
    {'r': 0.0},
    {'weight_decay': 0.0},
    {'warmup_steps': 0},
    {'weight_lr_power': 1.0},
  ],
  ids=lambda change: next(iter(change)),
)
def test_trajectory_comparison_detects_different_math(torch_entry, change):
  jax_other = _jax_trajectory(**(ENTRY | change))

  assert _max_difference(torch_entry, jax_other) > 10 * TORCH_TOLERANCE


def test_step_scalars_match_pytorch_schedule():
  settings = ENTRY | {'warmup_steps': 100}
  optimizer = schedule_free_adamw_v1(**settings)
  state = optimizer.init({'w': jnp.zeros(3)})
  step_scalars = jax.jit(optimizer.step_scalars)
  lr_max, weight_sum = 0.0, 0.0
  for k in range(300):
    expected = step_coefficients(
      k=k,
      lr=settings['learning_rate'],
      eps=settings['eps'],
      warmup_steps=settings['warmup_steps'],
      beta2=settings['b2'],
      r=settings['r'],
      weight_lr_power=settings['weight_lr_power'],
      lr_max=lr_max,
      weight_sum=weight_sum,
    )
    lr_max, weight_sum = expected.lr_max, expected.weight_sum
    got = step_scalars(state)
    # float32 against float64; S_k accumulates rounding, 1e-7 per step.
    for field in ('lr', 'lr_max', 'step_size', 'averaging_weight'):
      assert float(getattr(got, field)) == pytest.approx(
        getattr(expected, field), rel=1e-5
      ), (k, field)
    assert float(got.weight_sum) == pytest.approx(weight_sum, rel=1e-5)
    state = state._replace(
      k=state.k + 1, lr_max=got.lr_max, weight_sum=got.weight_sum
    )


def test_first_step_averaging_weight_is_one_and_x_equals_z():
  optimizer = schedule_free_adamw_v1(**ENTRY)
  params = {'w': jnp.array([0.5, -1.0, 2.0])}
  state = optimizer.init(params)

  new_params, new_state = optimizer.update(
    {'w': jnp.array([1.0, -2.0, 0.0])}, state, params
  )

  assert float(optimizer.step_scalars(state).averaging_weight) == 1.0
  np.testing.assert_array_equal(new_params['w'], new_state.z['w'])


def test_zero_learning_rate_is_floored_at_eps():
  optimizer = schedule_free_adamw_v1(learning_rate=0.0, warmup_steps=10)
  state = optimizer.init({'w': jnp.zeros(2)})

  scalars = optimizer.step_scalars(state)

  assert float(scalars.lr) == np.float32(1e-8)
  assert float(scalars.weight_sum) > 0.0
  assert float(scalars.averaging_weight) == 1.0


def test_state_dtypes_and_shapes():
  optimizer = schedule_free_adamw_v1(**ENTRY)
  params = {'matrix': jnp.ones((3, 4)), 'scalar': jnp.array(2.0)}
  state = optimizer.init(params)
  grads = jax.tree.map(jnp.ones_like, params)

  new_params, new_state = jax.jit(optimizer.update)(grads, state, params)

  for tree in (new_params, new_state.z):
    assert jax.tree.map(lambda a: (a.shape, a.dtype), tree) == jax.tree.map(
      lambda a: (a.shape, a.dtype), params
    )
  assert all(v.dtype == jnp.bfloat16 for v in jax.tree.leaves(new_state.v))
  assert new_state.k.dtype == jnp.int32 and int(new_state.k) == 1
  assert new_state.lr_max.dtype == jnp.float32


def test_params_and_state_can_both_be_donated():
  optimizer = schedule_free_adamw_v1(**ENTRY)
  params = {'w': jnp.arange(4.0)}
  state = optimizer.init(params)
  update = jax.jit(optimizer.update, donate_argnums=(1, 2))

  params_after, state_after = update({'w': jnp.ones(4)}, state, params)
  params_after, state_after = update(
    {'w': jnp.ones(4)}, state_after, params_after
  )

  assert int(state_after.k) == 2
  assert np.all(np.isfinite(np.asarray(params_after['w'])))


@pytest.mark.parametrize(
  'bad',
  [
    {'b1': 0.0},
    {'b1': 1.5},
    {'b2': 1.0},
    {'eps': 0.0},
    {'learning_rate': -1.0},
    {'warmup_steps': -1},
  ],
  ids=lambda bad: next(iter(bad)),
)
def test_rejects_out_of_range_settings(bad):
  with pytest.raises(ValueError, match=next(iter(bad))):
    schedule_free_adamw_v1(**bad)


# What it takes to make optax's schedule-free AdamW compute the entry's
# update: no r, fp32 v, no decay, eps negligible, and its z-update warmup
# shifted one step earlier.
MATCHED = {'learning_rate': 0.02, 'b2': 0.99, 'eps': 1e-30, 'weight_decay': 0.0}


def _ours_like_optax(**changes) -> dict[str, np.ndarray]:
  return _jax_trajectory(
    **(
      MATCHED
      | {
        'b1': 0.9,
        'warmup_steps': WARMUP_STEPS,
        'r': 0.0,
        'weight_lr_power': 2.0,
        'v_dtype': jnp.float32,
      }
      | changes
    )
  )


@pytest.fixture(scope='module')
def optax_matched() -> dict[str, np.ndarray]:
  return _optax_trajectory(**MATCHED, match_warmup=True)


def test_optax_equals_entry_with_every_difference_switched_off(optax_matched):
  assert _max_difference(_ours_like_optax(), optax_matched) <= OPTAX_TOLERANCE


@pytest.mark.parametrize(
  'ours_change, optax_change',
  [
    # The entry weights step k by (k+1)^r; optax has no r.
    ({'r': 0.75}, {}),
    # The entry keeps v in bfloat16; optax in the parameters' float32.
    ({'v_dtype': jnp.bfloat16}, {}),
    # The entry computes the decay at x, optax at its params, which are y.
    ({'weight_decay': 0.1}, {'weight_decay': 0.1}),
    # The entry scales the step by sqrt(1 - b2^t) and adds eps to sqrt(v);
    # optax divides v by 1 - b2^t first, so its eps is larger relative to
    # the entry's by 1 / sqrt(1 - b2^t). Visible once eps is not negligible.
    ({'eps': 1e-3}, {'eps': 1e-3}),
  ],
  ids=['r', 'bf16_v', 'decay_at_x', 'bias_correction_placement'],
)
def test_each_remaining_difference_from_optax_is_visible(
  optax_matched, ours_change, optax_change
):
  if optax_change:
    reference = _optax_trajectory(**(MATCHED | optax_change), match_warmup=True)
    # With the same change on both sides and the difference switched off,
    # they would agree; here they must not.
    assert _max_difference(_ours_like_optax(**ours_change), reference) > (
      10 * OPTAX_TOLERANCE
    )
  else:
    ours = _ours_like_optax(**ours_change)
    assert _max_difference(ours, optax_matched) > 10 * OPTAX_TOLERANCE


def test_optax_warmup_offset_is_the_remaining_difference(optax_matched):
  shipped = _optax_trajectory(**MATCHED, match_warmup=False)

  assert _max_difference(shipped, optax_matched) > 100 * OPTAX_TOLERANCE


def test_optax_first_step_with_warmup_leaves_z_and_x_at_init():
  learning_rate, b2 = 0.02, 0.99
  params = jax.tree.map(jnp.asarray, _initial_params())
  inputs, labels = _batches()
  grads = jax.grad(_jax_loss)(params, inputs[0], labels[0])

  optax_optimizer = optax.contrib.schedule_free_adamw(
    learning_rate, warmup_steps=WARMUP_STEPS, b1=0.9, b2=b2
  )
  ours = schedule_free_adamw_v1(
    learning_rate=learning_rate, warmup_steps=WARMUP_STEPS, b2=b2
  )

  @jax.jit
  def first_steps(params, grads):
    optax_state = optax_optimizer.init(params)
    updates, optax_state = optax_optimizer.update(grads, optax_state, params)
    optax_x = optax.contrib.schedule_free_eval_params(
      optax_state, optax.apply_updates(params, updates)
    )
    our_x, our_state = ours.update(grads, ours.init(params), params)
    return optax_x, optax_state, our_x, our_state

  optax_x, optax_state, our_x, our_state = first_steps(params, grads)

  # optax's z update used lr(0) = 0: z is exactly x0, and x = z up to the
  # rounding of recovering x from y and z.
  for name in SHAPES:
    np.testing.assert_array_equal(optax_state.z[name], params[name])
    np.testing.assert_allclose(optax_x[name], params[name], rtol=0, atol=1e-6)
  # ...while its averaging weight already used lr(1) = lr / T.
  first_lr = learning_rate / WARMUP_STEPS
  assert float(optax_state.max_lr) == pytest.approx(first_lr, rel=1e-6)
  assert float(our_state.lr_max) == pytest.approx(first_lr, rel=1e-6)

  # The entry's first step is a sign step of size lr / T: v = (1 - b2) g^2
  # and the step size is lr / T * sqrt(1 - b2). Up to three bfloat16
  # roundings (v, sqrt(v), sqrt(v) + eps; 2^-9 relative each) and eps,
  # below 1e-4 relative where |g| > 1e-3.
  for name in SHAPES:
    moved = np.asarray(our_x[name] - params[name])
    gradient = np.asarray(grads[name])
    nonzero = np.abs(gradient) > 1e-3
    np.testing.assert_allclose(
      moved[nonzero],
      -np.sign(gradient[nonzero]) * learning_rate / WARMUP_STEPS,
      rtol=3 * math.ldexp(1, -9) + 1e-4,
    )
