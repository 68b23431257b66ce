"""The one-pass CPU kernel of ScheduleFreeAdamWV1: check and call from torch.

`schedule_free_v1_cpu.c` is built on first use (sfperf/optim/native_build.py)
and loaded with ctypes. Before the kernel is handed out it runs one step on a
probe set beside the torch ops it replaces; any bit of difference and it is
not used. Every failure (no compiler, a build error, a mismatch) falls back
to the torch ops with one warning that says why.
"""

import ctypes
import functools
from collections.abc import Sequence

import numpy as np
import torch

from sfperf.optim import native_build
from sfperf.optim.native_build import KernelUnavailable


def _declare(library: ctypes.CDLL) -> None:
  pointers = ctypes.POINTER(ctypes.c_void_p)
  sizes = ctypes.POINTER(ctypes.c_int64)
  library.sf_v1_lerp.argtypes = [
    ctypes.c_int64,
    sizes,
    pointers,
    pointers,
    ctypes.c_float,
    ctypes.c_int,
  ]
  library.sf_v1_lerp.restype = None
  library.sf_v1_update.argtypes = [
    ctypes.c_int64,
    sizes,
    pointers,
    pointers,
    pointers,
    pointers,
    *[ctypes.c_float] * 7,
    ctypes.c_int,
    ctypes.c_int,
  ]
  library.sf_v1_update.restype = None


# Tensor subclasses (DTensor, fake and functional tensors) may hold no
# memory of their own where data_ptr() points; only plain ones are taken.
_PLAIN_TYPES = (torch.Tensor, torch.nn.Parameter)


def eligible(tensors: Sequence[torch.Tensor | None]) -> bool:
  """Whether the kernel can take these aligned tensors of one parameter.

  Args:
    tensors: parameter, z, gradient (float32) and optionally v (bfloat16),
      in that order.
  """
  wanted = (torch.float32, torch.float32, torch.float32, torch.bfloat16)
  shape = tensors[0].shape
  return all(
    tensor is not None
    and type(tensor) in _PLAIN_TYPES
    and tensor.device.type == 'cpu'
    and tensor.layout == torch.strided
    and tensor.dtype == dtype
    and tensor.shape == shape
    and tensor.is_contiguous()
    and (tensor.data_ptr() != 0 or tensor.numel() == 0)
    for tensor, dtype in zip(tensors, wanted, strict=False)
  )


OWNER = 'ScheduleFreeAdamWV1'


def _pointer_array(tensors: Sequence[torch.Tensor]) -> ctypes.Array:
  return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _size_array(tensors: Sequence[torch.Tensor]) -> ctypes.Array:
  return (ctypes.c_int64 * len(tensors))(*[t.numel() for t in tensors])


class CpuKernel:
  """Calls into the built library; `load_kernel` gives a checked one."""

  def __init__(self, library: ctypes.CDLL) -> None:
    _declare(library)
    self._library = library

  def lerp_(
    self,
    params: Sequence[torch.Tensor],
    zs: Sequence[torch.Tensor],
    weight: float,
  ) -> None:
    """`param.lerp_(z, weight)` for each pair, with the same bits."""
    if not params:
      return
    self._library.sf_v1_lerp(
      len(params),
      _size_array(params),
      _pointer_array(params),
      _pointer_array(zs),
      weight,
      torch.get_num_threads(),
    )

  def update_(
    self,
    params: Sequence[torch.Tensor],
    zs: Sequence[torch.Tensor],
    grads: Sequence[torch.Tensor],
    vs: Sequence[torch.Tensor],
    scalars: Sequence[float],
  ) -> None:
    """The v1 update of each parameter, bit-identical to `_update_loop`.

    Args:
      params, zs, grads, vs: aligned tensors that pass `eligible`.
      scalars: back_to_x, beta2, one_minus_beta2, eps, minus_step_size,
        decay, averaging_weight (the fields of `_UpdateScalars`).
    """
    if not params:
      return
    back_to_x, beta2, one_minus_beta2, eps, minus_step, decay, average = scalars
    self._library.sf_v1_update(
      len(params),
      _size_array(params),
      _pointer_array(params),
      _pointer_array(zs),
      _pointer_array(grads),
      _pointer_array(vs),
      back_to_x,
      beta2,
      one_minus_beta2,
      eps,
      minus_step,
      -decay,
      average,
      1,  # the parameters hold y
      torch.get_num_threads(),
    )


def _probe_mismatch(kernel: CpuKernel, reference_step) -> str | None:
  """Runs kernel and `reference_step` on `native_build.probe_cases()`, and
  the kernel's lerp beside torch's; names the first mismatch, if any."""
  beta2 = native_build.PROBE_BETA2
  for case in native_build.probe_cases():
    scalars = (
      1 - 1 / native_build.PROBE_BETA1,
      beta2,
      1 - beta2,
      native_build.PROBE_EPS,
      -native_build.PROBE_STEP_SIZE,
      native_build.PROBE_DECAY,
      case.averaging_weight,
    )
    results = []

    def kernel_step(param, z, grad, v, scalars):
      kernel.update_([param], [z], [grad], [v], scalars)

    for step in (kernel_step, reference_step):
      param = torch.from_numpy(case.param.copy())
      z = torch.from_numpy(case.z.copy())
      v = torch.from_numpy(case.v_bits.view(np.int16).copy())
      step(
        param, z, torch.from_numpy(case.grad), v.view(torch.bfloat16), scalars
      )
      results.append((param.numpy(), z.numpy(), v.numpy().view(np.uint16)))
    mismatch = native_build.differences(*results)
    if mismatch is not None:
      return f'{mismatch} at averaging weight {case.averaging_weight}'
  generator = torch.Generator().manual_seed(0)
  moved = torch.randn(1000, generator=generator)
  target = torch.randn(1000, generator=generator)
  for weight in (0.1, -0.111, 0.9):
    expected = moved.clone().lerp_(target, weight)
    kernel.lerp_([moved], [target], weight)
    if not torch.equal(moved, expected):
      return f'lerp with weight {weight} differs'
    moved = expected
  return None


def why_unavailable() -> str:
  """Why `load_kernel` returned None, in a few words."""
  return native_build.why_unavailable(OWNER)


@functools.cache
def load_kernel(reference_step) -> CpuKernel | None:
  """The kernel, checked against `reference_step`; None (with one warning)
  where it cannot be built or differs, and silently where disabled.

  Args:
    reference_step: the torch ops the kernel replaces, as
      `reference_step(param, z, grad, v, scalars)` on one tensor each, with
      scalars as `CpuKernel.update_` takes them.
  """

  def load() -> CpuKernel:
    kernel = CpuKernel(
      native_build.load_library(
        native_build.C_SOURCE,
        native_build.c_compiler(),
        symbols=('sf_v1_lerp', 'sf_v1_update'),
      )
    )
    mismatch = _probe_mismatch(kernel, reference_step)
    if mismatch is not None:
      raise KernelUnavailable(
        f'its step is not bit-identical to the torch ops here ({mismatch})'
      )
    return kernel

  return native_build.checked(OWNER, 'torch ops (same results, slower)', load)
