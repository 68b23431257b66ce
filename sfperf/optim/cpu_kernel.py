"""The one-pass CPU kernel of ScheduleFreeAdamWV1: check and call from torch.

`schedule_free_v1_cpu.c` is built on first use (sfperf/optim/native_build.py)
and loaded with ctypes. Before the kernel is handed out it runs one step on a
probe set beside the torch ops it replaces; any bit of difference and it is
not used. Every failure (no compiler, a build error, a mismatch) falls back
to the torch ops with one warning that says why.
"""

import ctypes
import functools
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from sfperf.optim import native_build
from sfperf.optim.native_build import DISABLE_ENV, KernelUnavailable


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


def _pointer_array(tensors: Sequence[torch.Tensor]) -> ctypes.Array:
  return (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])


def _size_array(tensors: Sequence[torch.Tensor]) -> ctypes.Array:
  return (ctypes.c_int64 * len(tensors))(*[t.numel() for t in tensors])


class CpuKernel:
  """Calls into the built library; use `load_kernel()` to get one."""

  def __init__(self, library: ctypes.CDLL) -> None:
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


def _reference_update(param, z, grad, v, scalars) -> None:
  """The torch ops the kernel replaces (kept in step with `_update_loop`)."""
  back_to_x, beta2, one_minus_beta2, eps, minus_step, decay, average = scalars
  param.lerp_(z, back_to_x)
  v.mul_(beta2).addcmul_(grad, grad, value=one_minus_beta2)
  denominator = v.sqrt().add_(eps)
  z.addcdiv_(grad, denominator, value=minus_step)
  z.sub_(param, alpha=decay)
  param.lerp_(z, average)


def _probe_cases(generator: torch.Generator, beta2: float):
  """(size, averaging weight, param, z, grad, v) cases of the probe."""
  for size, average in ((1, 1.0), (37, 0.3), (1000, 0.7), (70_001, 0.01)):
    param = torch.randn(size, generator=generator)
    z = param + 0.1 * torch.randn(size, generator=generator)
    exponent = torch.randint(-8, 4, (size,), generator=generator)
    grad = torch.randn(size, generator=generator) * 10.0**exponent
    v = (torch.rand(size, generator=generator) * 1e-3).to(torch.bfloat16)
    v[::7] = 0
    yield size, average, param, z, grad, v
  v_bits, grad = native_build.rounding_tie_cases(beta2)
  param = torch.randn(len(grad), generator=generator)
  v = torch.from_numpy(v_bits.view(np.int16)).view(torch.bfloat16).clone()
  yield len(grad), 0.2, param, param + 0.01, torch.from_numpy(grad), v
  grad = torch.from_numpy(native_build.special_values())
  param = torch.randn(len(grad), generator=generator)
  v = torch.rand(len(grad), generator=generator).to(torch.bfloat16)
  yield len(grad), 0.6, param, param - 0.01, grad, v


def _same_bits(got: torch.Tensor, want: torch.Tensor, is_v: bool) -> bool:
  """Equal bit for bit; for v, any NaN matches any NaN (torch itself stores
  NaN with two different bit patterns)."""
  if is_v:
    both_nan = got.isnan() & want.isnan()
    got, want = got.masked_fill(both_nan, 0), want.masked_fill(both_nan, 0)
  integer = torch.int16 if got.element_size() == 2 else torch.int32
  return torch.equal(got.view(integer), want.view(integer))


def _probe_mismatch(kernel: CpuKernel) -> str | None:
  """Runs kernel and torch ops on the same probe; names the first mismatch.

  The probe covers both lerp branches, gradients over twelve decades,
  v = 0 (where the denominator is eps), lengths that leave vector tails,
  the rounding ties of v's update where fusing its multiply-add matters
  (`native_build.rounding_tie_cases`), and NaN, infinite, zero and
  subnormal gradients (a build with unsafe float flags fails on these).
  """
  generator = torch.Generator().manual_seed(0)
  beta2 = 0.9955159689799007
  for size, average, param, z, grad, v in _probe_cases(generator, beta2):
    scalars = (1 - 1 / 0.9, beta2, 1 - beta2, 1e-8, -7e-4, 6e-5, average)
    expected = [t.clone() for t in (param, z, v)]
    _reference_update(expected[0], expected[1], grad, expected[2], scalars)
    kernel.update_([param], [z], [grad], [v], scalars)
    for name, got, want in zip('pzv', (param, z, v), expected, strict=True):
      if not _same_bits(got, want, name == 'v'):
        return f'{name} differs in some of {size} elements'
  moved = torch.randn(1000, generator=generator)
  target = torch.randn(1000, generator=generator)
  for weight in (0.1, -0.111, 0.9):
    expected = moved.clone().lerp_(target, weight)
    kernel.lerp_([moved], [target], weight)
    if not torch.equal(moved, expected):
      return f'lerp with weight {weight} differs'
    moved = expected
  return None


_why_unavailable: list[str] = []


def why_unavailable() -> str:
  """Why `load_kernel()` returned None, in a few words."""
  if native_build.disabled():
    return f'{DISABLE_ENV} is set'
  return _why_unavailable[-1] if _why_unavailable else 'not loaded yet'


@functools.cache
def load_kernel() -> CpuKernel | None:
  """The checked kernel, or None (with one warning) where it cannot be used.

  $SFPERF_NO_CPU_KERNEL=1 turns it off without a warning.
  """
  if native_build.disabled():
    return None
  try:
    kernel = CpuKernel(
      native_build.load_library(
        native_build.C_SOURCE,
        native_build.c_compiler(),
        symbols=('sf_v1_lerp', 'sf_v1_update'),
      )
    )
    _declare(kernel._library)
    mismatch = _probe_mismatch(kernel)
    if mismatch is not None:
      raise KernelUnavailable(
        f'its step is not bit-identical to the torch ops here ({mismatch})'
      )
  except KernelUnavailable as error:
    _why_unavailable.append(str(error))
    warnings.warn(
      f'ScheduleFreeAdamWV1: one-pass CPU kernel not used, {error}; using '
      f'torch ops (same results, slower). Set {DISABLE_ENV}=1 to silence.',
      RuntimeWarning,
      stacklevel=3,
    )
    return None
  return kernel
