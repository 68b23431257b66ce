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

import jax
import jax.numpy as jnp
import numpy as np

from sfperf.optim import native_build
from sfperf.optim.native_build import KernelUnavailable

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


def _probe_mismatch(reference_update) -> str | None:
  """Runs the kernel and `reference_update` on `native_build.probe_cases()`;
  names the first mismatch, if any.

  Args:
    reference_update: the jax.numpy form, with `kernel_update`'s signature.
  """
  settings = {'beta2': native_build.PROBE_BETA2, 'eps': native_build.PROBE_EPS}
  kernel_form = jax.jit(functools.partial(kernel_update, **settings))
  jnp_form = jax.jit(functools.partial(reference_update, **settings))
  for case in native_build.probe_cases():
    step = np.array(
      [
        -native_build.PROBE_STEP_SIZE,
        -native_build.PROBE_DECAY,
        case.averaging_weight,
      ],
      np.float32,
    )
    args = (case.param, case.z, case.v_bits.view(jnp.bfloat16), case.grad)
    results = [
      [np.asarray(value) for value in form(*args, step)]
      for form in (kernel_form, jnp_form)
    ]
    mismatch = native_build.differences(*results)
    if mismatch is not None:
      return f'{mismatch} at averaging weight {case.averaging_weight}'
  return None


@functools.cache
def kernel_available(reference_update) -> bool:
  """Whether the kernel is registered and agrees with `reference_update`.

  Warns once, saying why, where it is not; $SFPERF_NO_CPU_KERNEL=1 turns
  it off without a warning. Only the CPU backend uses it.
  """

  def load() -> bool:
    _register()
    # Called while the update is traced: run the probe now, not staged into
    # the caller's computation.
    with jax.ensure_compile_time_eval():
      mismatch = _probe_mismatch(reference_update)
    if mismatch is not None:
      raise KernelUnavailable(
        f'its update is not bit-identical to the jax.numpy form ({mismatch})'
      )
    return True

  available = native_build.checked(
    'schedule_free_adamw_v1', 'jax.numpy (same math, slower on CPU)', load
  )
  return bool(available)
