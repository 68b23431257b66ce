"""The one-pass CPU kernel of the JAX Schedule-Free v1 update, via XLA FFI.

`schedule_free_v1_xla.cc` (the arithmetic of `schedule_free_v1_cpu.c` behind
an XLA FFI handler) is built on first use against jaxlib's headers and
registered as a CPU custom call. On other platforms, and wherever it cannot
be built or fails its check, the update runs as jax.numpy operations: the
kernel is chosen per platform when the update is lowered.

The check runs one update of each form on a probe and requires every bit
of x, z and v to agree: XLA:CPU fuses multiplies and adds where the kernel
(like torch) does, so the two forms compute the same values, and a jitted
step gives the same result with or without the kernel.
"""

import functools
import os
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from sfperf.optim import native_build
from sfperf.optim.native_build import DISABLE_ENV, KernelUnavailable

# `sfperf pack` copies these beside this module when it vendors it.
VENDORED_FILES = ('schedule_free_v1_xla.cc',)
SOURCE = native_build.C_SOURCE.with_name(VENDORED_FILES[0])
TARGET_NAME = 'sfperf_schedule_free_v1_update'


def _threads() -> int:
  return len(os.sched_getaffinity(0))


@functools.cache  # XLA keeps one handler per name for the process's life
def _register() -> None:
  """Builds the handler library and registers it with XLA for the CPU."""
  library = native_build.load_library(
    SOURCE,
    native_build.cxx_compiler(),
    extra_flags=('-std=c++17', f'-I{jax.ffi.include_dir()}'),
    inputs=(native_build.C_SOURCE,),
    symbols=('SfV1Update',),
  )
  jax.ffi.register_ffi_target(
    TARGET_NAME, jax.ffi.pycapsule(library.SfV1Update), platform='cpu'
  )


def kernel_update(x, z, v, grad, step_scalars, *, beta2, eps):
  """One leaf's update through the kernel: returns new (x, z, v).

  Args:
    x, z: float32 arrays; v: bfloat16, same shape; grad: float32.
    step_scalars: float32[3]: -step_size, -step_size * weight_decay and
      the averaging weight.
    beta2, eps: Python floats.
  """
  call = jax.ffi.ffi_call(
    TARGET_NAME,
    (
      jax.ShapeDtypeStruct(x.shape, x.dtype),
      jax.ShapeDtypeStruct(z.shape, z.dtype),
      jax.ShapeDtypeStruct(v.shape, v.dtype),
    ),
    input_output_aliases={0: 0, 1: 1, 2: 2},
    # Under jax.vmap, one call per batch element.
    vmap_method='sequential',
  )
  return call(
    x,
    z,
    v,
    grad,
    step_scalars,
    beta2=np.float32(beta2),
    one_minus_beta2=np.float32(1 - beta2),
    eps=np.float32(eps),
    threads=np.int64(_threads()),
  )


def _probe_cases(beta2: float):
  """(x, z, v, grad) arrays of the probe, float32 and bfloat16."""
  rng = np.random.default_rng(0)
  size = 70_001
  x = rng.standard_normal(size).astype(np.float32)
  z = x + 0.1 * rng.standard_normal(size).astype(np.float32)
  grad = rng.standard_normal(size) * 10.0 ** rng.integers(-8, 4, size)
  v = (rng.random(size) * 1e-3).astype(jnp.bfloat16)
  v[::7] = 0
  yield x, z, v, grad.astype(np.float32)
  v_bits, grad = native_build.rounding_tie_cases(beta2)
  x = rng.standard_normal(len(grad)).astype(np.float32)
  yield x, x + np.float32(0.01), v_bits.view(jnp.bfloat16), grad
  grad = native_build.special_values()
  x = rng.standard_normal(len(grad)).astype(np.float32)
  v = rng.random(len(grad)).astype(jnp.bfloat16)
  yield x, x - np.float32(0.01), v, grad


def _differ(got, want, is_v: bool) -> int:
  """Elements whose bits differ; for v, any NaN matches any NaN."""
  got, want = np.asarray(got), np.asarray(want)
  if is_v:
    both_nan = np.isnan(got.astype(np.float32)) & np.isnan(
      want.astype(np.float32)
    )
    got, want = np.where(both_nan, 0, got), np.where(both_nan, 0, want)
  integer = np.uint16 if got.dtype.itemsize == 2 else np.uint32
  return int(np.sum(got.view(integer) != want.view(integer)))


def _probe_mismatch(reference_update) -> str | None:
  """Runs the kernel and `reference_update` on one probe; names a mismatch.

  The probe covers gradients over twelve decades, v = 0, both lerp
  branches, the rounding ties of v's update where fusing its multiply-add
  matters (`native_build.rounding_tie_cases`), and NaN, infinite, zero and
  subnormal gradients.

  Args:
    reference_update: the jax.numpy form, with `kernel_update`'s signature.
  """
  beta2 = 0.9955159689799007
  kernel_form = jax.jit(functools.partial(kernel_update, beta2=beta2, eps=1e-8))
  jnp_form = jax.jit(functools.partial(reference_update, beta2=beta2, eps=1e-8))
  for x, z, v, grad in _probe_cases(beta2):
    for average in (1.0, 0.7, 0.01):
      scalars = np.array([-7e-4, -6e-5, average], np.float32)
      got = kernel_form(x, z, v, grad, scalars)
      want = jnp_form(x, z, v, grad, scalars)
      for name, got_values, want_values in zip('xzv', got, want, strict=True):
        differ = _differ(got_values, want_values, name == 'v')
        if differ:
          return (
            f'{name} differs in {differ} of {len(x)} elements at averaging '
            f'weight {average}'
          )
  return None


@functools.cache
def kernel_available(reference_update) -> bool:
  """Whether the kernel is registered and agrees with `reference_update`.

  Warns once, saying why, where it is not; $SFPERF_NO_CPU_KERNEL=1 turns
  it off without a warning. Only the CPU backend uses it.
  """
  if native_build.disabled():
    return False
  try:
    _register()
    # Called while the update is traced: run the probe now, not staged into
    # the caller's computation.
    with jax.ensure_compile_time_eval():
      mismatch = _probe_mismatch(reference_update)
    if mismatch is not None:
      raise KernelUnavailable(
        f'its update is not bit-identical to the jax.numpy form ({mismatch})'
      )
  except KernelUnavailable as error:
    warnings.warn(
      f'schedule_free_adamw_v1: one-pass CPU kernel not used, {error}; '
      f'using jax.numpy (same math, slower on CPU). Set {DISABLE_ENV}=1 '
      'to silence.',
      RuntimeWarning,
      stacklevel=3,
    )
    return False
  return True
