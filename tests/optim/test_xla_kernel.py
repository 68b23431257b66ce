"""The JAX update's one-pass CPU kernel (XLA FFI) against its jax.numpy form.

The kernel is chosen per platform when the update is lowered; on this CPU it
is used for every float32 leaf, and a run with it must equal a run without
it bit for bit. Its failures fall back to jax.numpy with one warning.
"""

import os
import subprocess
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfperf.optim import (
  native_build,
  schedule_free_adamw_v1,
  schedule_free_jax,
  xla_kernel,
)

SETTINGS = {
  'learning_rate': 0.02,
  'warmup_steps': 5,
  'b2': 0.9955159689799007,
  'weight_decay': 0.08,
  'r': 0.75,
}
# Odd sizes, and one longer than several of the kernel's chunks, so that
# threads share it.
SHAPES = {'conv': (8, 3, 3, 3), 'bias': (7,), 'dense': (300, 701)}


@pytest.fixture(autouse=True)
def every_leaf_size(monkeypatch):
  """Small leaves take the kernel too, so that it meets every shape here."""
  monkeypatch.setattr(schedule_free_jax, 'KERNEL_MIN_SIZE', 1)


def _params(dtypes=None):
  rng = np.random.default_rng(0)
  return {
    name: jnp.asarray(
      rng.standard_normal(shape), (dtypes or {}).get(name, jnp.float32)
    )
    for name, shape in SHAPES.items()
  }


def _run(num_steps, dtypes=None, **options):
  optimizer = schedule_free_adamw_v1(**SETTINGS, **options)
  params = _params(dtypes)
  state = optimizer.init(params)
  update = jax.jit(optimizer.update, donate_argnums=(1, 2))
  rng = np.random.default_rng(1)
  for _ in range(num_steps):
    scale = 10.0 ** rng.integers(-8, 2, size=1)[0]
    grads = {
      name: jnp.asarray(scale * rng.standard_normal(value.shape), value.dtype)
      for name, value in params.items()
    }
    params, state = update(grads, state, params)
  return {name: np.asarray(value) for name, value in params.items()}, state


def _kernel_calls(dtypes=None, **options) -> int:
  optimizer = schedule_free_adamw_v1(**SETTINGS, **options)
  params = _params(dtypes)
  text = (
    jax.jit(optimizer.update)
    .lower(params, optimizer.init(params), params)
    .as_text()
  )
  return text.count(xla_kernel.TARGET_NAME)


def test_every_float32_leaf_takes_the_kernel_on_cpu():
  assert jax.default_backend() == 'cpu'
  assert _kernel_calls() == len(SHAPES)
  # A bfloat16 parameter goes through jax.numpy.
  assert _kernel_calls({'bias': jnp.bfloat16}) == len(SHAPES) - 1


def test_small_leaves_stay_in_jax_numpy_by_default(monkeypatch):
  monkeypatch.setattr(schedule_free_jax, 'KERNEL_MIN_SIZE', 65536)
  assert _kernel_calls() == 1  # only 'dense' (210300 elements)


def test_vmap_over_the_update_runs_the_kernel_per_element():
  optimizer = schedule_free_adamw_v1(**SETTINGS)
  params = {'w': jnp.linspace(-1.0, 1.0, 12).reshape(3, 4)}
  batched_update = jax.vmap(optimizer.update, in_axes=(0, None, None))
  grads = {'w': jnp.ones((2, 3, 4))}
  new_params, _ = batched_update(grads, optimizer.init(params), params)
  assert new_params['w'].shape == (2, 3, 4)
  single, _ = optimizer.update(
    {'w': jnp.ones((3, 4))}, optimizer.init(params), params
  )
  np.testing.assert_array_equal(new_params['w'][1], single['w'])


def test_runs_with_and_without_the_kernel_are_identical():
  with_kernel, kernel_state = _run(12)
  assert _kernel_calls(cpu_kernel=False) == 0
  without, jnp_state = _run(12, cpu_kernel=False)

  for name in SHAPES:
    np.testing.assert_array_equal(with_kernel[name], without[name])
    np.testing.assert_array_equal(
      np.asarray(kernel_state.z[name]), np.asarray(jnp_state.z[name])
    )
    np.testing.assert_array_equal(
      np.asarray(kernel_state.v[name]).view(np.uint16),
      np.asarray(jnp_state.v[name]).view(np.uint16),
    )
  moved = np.abs(with_kernel['dense'] - np.asarray(_params()['dense']))
  assert moved.max() > 1e-2  # the comparison is not vacuous


def test_the_denominator_adds_eps_rounded_to_bfloat16():
  # At v = 0 and a gradient far below eps, torch's bfloat16 buffer gives
  # sqrt(v) + eps = bf16(1e-8) = 1.00117e-8, not 1e-8.
  grad = np.float32(1e-20)
  step = np.array([-1.0, 0.0, 0.0], np.float32)  # z moves by -g / denom
  x = z = np.zeros(1, np.float32)
  v = np.zeros(1, jnp.bfloat16)
  assert xla_kernel.kernel_available(schedule_free_jax._leaf_update)
  for form in (xla_kernel.kernel_update, schedule_free_jax._leaf_update):
    _, z_new, _ = jax.jit(form, static_argnames=('beta2', 'eps'))(
      x, z, v, np.full(1, grad), step, beta2=0.999, eps=1e-8
    )
    eps_bf16 = float(np.asarray(1e-8, jnp.bfloat16))
    assert eps_bf16 != np.float32(1e-8)
    assert float(z_new[0]) == np.float32(-grad / np.float32(eps_bf16))


@pytest.fixture
def fresh_probe(monkeypatch):
  """No memory of an earlier check (the handler stays registered: XLA keeps
  one per name for the life of the process)."""
  monkeypatch.delenv(native_build.DISABLE_ENV, raising=False)
  xla_kernel.kernel_available.cache_clear()
  yield
  xla_kernel.kernel_available.cache_clear()


_NO_COMPILER = """
import warnings
import jax.numpy as jnp
import numpy as np
from sfperf.optim import schedule_free_adamw_v1, xla_kernel

optimizer = schedule_free_adamw_v1(learning_rate=0.1)
params = {'w': jnp.ones(70_000)}  # above the kernel's minimum size
with warnings.catch_warnings(record=True) as caught:
  warnings.simplefilter('always')
  update = jax.jit(optimizer.update)
  lowered = update.lower(params, optimizer.init(params), params).as_text()
  new_params, _ = update(params, optimizer.init(params), params)
  update(params, optimizer.init(params), params)  # no second warning
assert xla_kernel.TARGET_NAME not in lowered
assert np.all(np.asarray(new_params['w']) < 1), new_params
print('WARNINGS', len(caught))
print(caught[0].message)
"""


def test_no_cxx_compiler_falls_back_with_one_warning(tmp_path):
  # In a new process: this one has the handler registered already.
  environment = dict(
    os.environ,
    CXX=str(tmp_path / 'no-such-compiler'),
    **{native_build.CACHE_ENV: str(tmp_path / 'cache')},
  )
  environment.pop(native_build.DISABLE_ENV, None)
  completed = subprocess.run(
    [sys.executable, '-c', 'import jax\n' + _NO_COMPILER],
    capture_output=True,
    text=True,
    env=environment,
    timeout=120,
  )
  assert completed.returncode == 0, completed.stderr[-2000:]
  assert 'WARNINGS 1' in completed.stdout
  assert 'one-pass CPU kernel not used, no C++ compiler' in completed.stdout
  assert 'no-such-compiler' in completed.stdout


def test_a_kernel_that_differs_from_jax_numpy_is_not_used(fresh_probe):
  def other_eps(x, z, v, grad, step, *, beta2, eps):
    return schedule_free_jax._leaf_update(
      x, z, v, grad, step, beta2=beta2, eps=1e-3
    )

  with pytest.warns(RuntimeWarning, match='not bit-identical.*differs'):
    assert not xla_kernel.kernel_available(other_eps)


def test_the_environment_switch_turns_it_off_silently(fresh_probe, monkeypatch):
  monkeypatch.setenv(native_build.DISABLE_ENV, '1')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert _kernel_calls() == 0
