"""Schedule-Free AdamW as the AlgoPerf 2024 (v0.5) entries implemented it.

A closure-form PyTorch optimizer that keeps that version's numerics, quirks
included, so that the 2024 self-tuning winner can be reproduced exactly.
"""

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch

from sfperf.optim import cpu_kernel
from sfperf.optim.foreach import by_device_and_dtype, foreach_by_default


class StepCoefficients(NamedTuple):
  """Scalars of one step of one parameter group."""

  lr: float  # scheduled learning rate, floored at eps
  lr_max: float  # running maximum of `lr`
  weight: float  # averaging weight w_k of this step
  weight_sum: float  # sum of the averaging weights so far
  averaging_weight: float  # c_k = w_k / weight_sum
  step_size: float  # lr * sqrt(1 - beta2^(k+1))


def step_coefficients(
  *,
  k: int,
  lr: float,
  eps: float,
  warmup_steps: int,
  beta2: float,
  r: float,
  weight_lr_power: float,
  lr_max: float,
  weight_sum: float,
) -> StepCoefficients:
  """Computes the step's scalars from a group's settings and counters.

  Args:
    k: 0-based step counter of the group.
    lr: the group's base learning rate.
    eps: the Adam epsilon, also the floor of the scheduled learning rate.
    warmup_steps: length of the linear warmup; 0 disables it.
    beta2: second-moment decay.
    r: power of the step count in the averaging weight.
    weight_lr_power: power of lr_max in the averaging weight.
    lr_max: the group's running maximum of the scheduled learning rate.
    weight_sum: the group's sum of averaging weights before this step.

  Returns:
    The step's `StepCoefficients`.
  """
  # Same floating-point order as the entry: lr * ((k + 1) / warmup_steps).
  warmup = (k + 1) / warmup_steps if k < warmup_steps else 1.0
  scheduled_lr = max(lr * warmup, eps)
  new_lr_max = max(scheduled_lr, lr_max)
  weight = ((k + 1) ** r) * (new_lr_max**weight_lr_power)
  new_weight_sum = weight_sum + weight
  return StepCoefficients(
    lr=scheduled_lr,
    lr_max=new_lr_max,
    weight=weight,
    weight_sum=new_weight_sum,
    averaging_weight=weight / new_weight_sum,
    step_size=scheduled_lr * math.sqrt(1 - beta2 ** (k + 1)),
  )


class ScheduleFreeAdamWV1(torch.optim.Optimizer):
  r"""Schedule-Free AdamW, 2024 AlgoPerf form, parameters holding x.

  Between calls to `step` each parameter holds x, the averaged iterate that
  is evaluated. `step(closure)` moves it to y, runs the closure there
  (forward and backward), moves it back to x and updates. For step
  k = 0, 1, ... of a group, with warmup length T, base lr gamma, decay lambda
  and p = `weight_lr_power`:

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

  with z_0 = x_0 and v_{-1} = 0, and the counters k, gamma^max and S kept
  per group (`group['k']`, `group['lr_max']`, `group['weight_sum']`). There
  is no first moment: beta1 is only the interpolation weight of y.

  Because gamma_k >= eps > 0, every w_k is positive and S_k never vanishes;
  like the entry, the class needs no guard for S_k = 0. The flip side is
  that lr = 0 still moves the parameters, by steps of size about eps.

  Three paths compute the same step, bit for bit: a per-parameter loop (the
  entry's code, `foreach=False`), a multi-tensor path (`foreach=True`, the
  default where all parameters are on CUDA or XPU) that applies each
  operation to all parameters of a group with one `torch._foreach_*` call,
  and, for float32 parameters on the CPU, a one-pass kernel (`fused`, the
  default there; sfperf/optim/schedule_free_v1_cpu.c) that does all of an
  element's operations before moving to the next, so that memory is crossed
  once per step instead of once per operation. Every foreach op is
  elementwise and rounds each tensor exactly as the loop's op does (one
  exception, handled in `_update_foreach`), so only the order in which
  tensors are visited differs, never a value. Where a device has no fused
  kernel for an op (CPU; or on CUDA, an op mixing the bf16 v with a float32
  gradient) torch runs the same per-tensor op from C++. The CPU kernel
  rounds where each op of the loop stores and uses a fused multiply-add
  exactly where torch's CPU kernels do; it is compared with the loop's ops
  on a probe before first use and is not used on any difference. (NaN
  payloads aside: a NaN in v may be stored with other bits, as torch's own
  loops do between vectorized bodies and scalar tails.)

  Memory. Persistent, per parameter: `z` (dtype and device of the
  parameter), `exp_avg_sq` (v, bfloat16, same device) and, only when
  `store_x0_on_cpu=True`, `x0` (a host copy of the parameter as it was at its
  first step, used by `reset`). x itself lives in the parameter, y only
  transiently in it; the state dict is the same for both paths. Transient,
  during `step`: the denominator sqrt(v) + eps in bfloat16, one parameter's
  worth at a time in the loop path, and for all parameters of a group (of
  one device and dtype) at once in the foreach path, that is half the size
  of a float32 copy of the group; the CPU kernel allocates nothing. Nothing
  else of parameter size is allocated; the gradients are read, never
  written.

  .. warning::
    These behaviours of the entry are kept on purpose, for fidelity:

    - v is stored in bfloat16. With 1 - beta2 ~ 0.0045 the EMA increment is
      close to bfloat16 resolution (2^-8 relative), so v is noisy and biased.
    - The decoupled decay is computed at x, not at y as in the later
      `schedulefree` package and paper.
    - The scheduled lr is floored at eps, so it is never 0.
    - The Adam bias correction sqrt(1 - beta2^(k+1)) scales the step size,
      while the averaging weights use the uncorrected lr (paper-style
      correction, "option 3" of schedule_free issue #38).
    - A parameter whose `.grad` is None after the closure is left at y (it is
      not moved back to x) and its z and v are not updated.

  Differences from the entry's class, none of which changes a step: x0 is
  kept only when asked for; it is always a copy (the entry's `.cpu()`
  aliases a CPU-resident parameter, which would make its reset a no-op on a
  CPU-only run); eps must be positive; `load_state_dict` keeps v in bfloat16
  and x0 on the host.

  Example:
    >>> optimizer = ScheduleFreeAdamWV1(model.parameters(), lr=2.5e-3)
    >>> def closure():
    ...   optimizer.zero_grad()
    ...   loss = loss_fn(model(inputs), targets)
    ...   loss.backward()
    ...   return loss
    >>> optimizer.step(closure)  # the model now holds x again
  """

  def __init__(
    self,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_lr_power: float = 2.0,
    warmup_steps: int = 0,
    r: float = 0.0,
    store_x0_on_cpu: bool = False,
    foreach: bool | None = None,
    fused: bool | None = None,
  ) -> None:
    """Builds the optimizer.

    Args:
      params: parameters or parameter groups, as for any torch optimizer.
      lr: base learning rate gamma, reached at the end of warmup.
      betas: (beta1, beta2). beta1 is the interpolation weight of y; 1 -
        beta1 is how far y lies from x towards z. It must be in (0, 1].
      eps: added to sqrt(v), and the floor of the scheduled learning rate.
      weight_decay: decoupled decay lambda, computed at x, applied to z.
      weight_lr_power: power p of lr_max in the averaging weights.
      warmup_steps: linear warmup length in steps; 0 means none.
      r: power of the step count in the averaging weights.
      store_x0_on_cpu: keep a host copy of each parameter as it was at its
        first step, so that `reset` can restore it. Costs host memory equal
        to the model size.
      foreach: True for the multi-tensor path, False for the per-parameter
        loop; None (the default) picks the multi-tensor path when every
        parameter is on a device with fused foreach kernels, else the loop.
        Both give the same bits on any device. Kept on the optimizer,
        not in the parameter groups, so a state dict loads into either path.
      fused: whether float32 CPU parameters take the one-pass CPU kernel
        (same bits as the loop). None (the default) uses it where it builds
        and passes its check, with one warning where it does not; True
        makes that a RuntimeError at the first step; False never uses it.
        Other parameters take the path `foreach` chooses.

    Raises:
      ValueError: if a setting is out of range.
    """
    if not 0.0 < betas[0] <= 1.0:
      raise ValueError(f'betas[0] must be in (0, 1], got {betas[0]}.')
    if not 0.0 <= betas[1] < 1.0:
      raise ValueError(f'betas[1] must be in [0, 1), got {betas[1]}.')
    if not eps > 0.0:
      # eps is both the lr floor (keeping the weight sum positive) and the
      # guard against 0/0 where v = 0.
      raise ValueError(f'eps must be positive, got {eps}.')
    if lr < 0.0:
      raise ValueError(f'lr must be non-negative, got {lr}.')
    if warmup_steps < 0:
      raise ValueError(
        f'warmup_steps must be non-negative, got {warmup_steps}.'
      )
    defaults = {
      'lr': lr,
      'betas': betas,
      'eps': eps,
      'r': r,
      'k': 0,
      'weight_sum': 0.0,
      'lr_max': 0.0,
      'warmup_steps': warmup_steps,
      'weight_lr_power': weight_lr_power,
      'weight_decay': weight_decay,
    }
    super().__init__(params, defaults)
    self.store_x0_on_cpu = store_x0_on_cpu
    self.foreach = foreach
    self.fused = fused

  @property
  def uses_foreach(self) -> bool:
    """Whether `step` takes the multi-tensor path."""
    if self.foreach is not None:
      return self.foreach
    return foreach_by_default(self.param_groups)

  def _init_state(self, param: torch.Tensor) -> None:
    state = self.state[param]
    state['z'] = param.detach().clone()
    state['exp_avg_sq'] = torch.zeros_like(param, dtype=torch.bfloat16)
    if self.store_x0_on_cpu:
      # copy=True matters on CPU, where .cpu() would alias the parameter.
      state['x0'] = param.detach().to(device='cpu', copy=True)

  def _cpu_kernel(self) -> cpu_kernel.CpuKernel | None:
    """The CPU kernel where it is wanted and there is a tensor it can take."""
    if self.fused is False or not any(
      param.device.type == 'cpu' and param.dtype == torch.float32
      for group in self.param_groups
      for param in group['params']
    ):
      return None
    kernel = cpu_kernel.load_kernel(_reference_step)
    if kernel is None and self.fused:
      raise RuntimeError(
        'ScheduleFreeAdamWV1(fused=True): the one-pass CPU kernel is not '
        f'available here ({cpu_kernel.why_unavailable()}); pass fused=None '
        'to fall back to torch ops.'
      )
    return kernel

  @torch.no_grad()
  def _move_to_y(self, kernel: cpu_kernel.CpuKernel | None) -> None:
    for group in self.param_groups:
      weight = 1 - group['betas'][0]
      for param in group['params']:
        if not self.state[param]:
          self._init_state(param)
      params = group['params']
      if kernel is not None:
        (fast_params, fast_zs), params = _split_for_kernel(
          params, [self.state[param]['z'] for param in params]
        )
        kernel.lerp_(fast_params, fast_zs, weight)
      zs = [self.state[param]['z'] for param in params]
      if self.uses_foreach:
        for device_params, device_zs in by_device_and_dtype(params, zs):
          torch._foreach_lerp_(device_params, device_zs, weight)
      else:
        for param, z in zip(params, zs, strict=True):
          param.lerp_(z, weight)

  @torch.no_grad()
  def _update_group(
    self, group: dict[str, Any], kernel: cpu_kernel.CpuKernel | None
  ) -> None:
    beta1, beta2 = group['betas']
    eps = group['eps']
    coefficients = step_coefficients(
      k=group['k'],
      lr=group['lr'],
      eps=eps,
      warmup_steps=group['warmup_steps'],
      beta2=beta2,
      r=group['r'],
      weight_lr_power=group['weight_lr_power'],
      lr_max=group['lr_max'],
      weight_sum=group['weight_sum'],
    )
    group['lr_max'] = coefficients.lr_max
    group['weight_sum'] = coefficients.weight_sum
    # Computed once, as Python floats, the same for both paths.
    scalars = _UpdateScalars(
      back_to_x=1 - 1 / beta1,
      beta2=beta2,
      one_minus_beta2=1 - beta2,
      eps=eps,
      minus_step_size=-coefficients.step_size,
      decay=coefficients.step_size * group['weight_decay'],
      averaging_weight=coefficients.averaging_weight,
    )

    # The entry leaves a parameter without a gradient at y, z and v as
    # they were: it takes no part in the update.
    params = [param for param in group['params'] if param.grad is not None]
    if kernel is not None:
      (fast_params, zs, grads, vs), params = _split_for_kernel(
        params,
        [self.state[param]['z'] for param in params],
        [param.grad for param in params],
        [self.state[param]['exp_avg_sq'] for param in params],
      )
      kernel.update_(fast_params, zs, grads, vs, scalars)
    if self.uses_foreach:
      _update_foreach(self.state, params, scalars)
    else:
      _update_loop(self.state, params, scalars)
    group['k'] += 1

  def step(self, closure: Callable[[], Any]) -> Any:
    """Moves to y, evaluates `closure` there, returns to x and updates.

    Args:
      closure: zeroes the gradients, runs forward and backward, and returns
        the loss. Required: the gradient must be taken at y.

    Returns:
      What `closure` returned.

    Raises:
      ValueError: if `closure` is None.
    """
    if closure is None:
      raise ValueError(
        'ScheduleFreeAdamWV1.step needs a closure: the gradient is taken at '
        'y, which the parameters hold only while the closure runs.'
      )
    kernel = self._cpu_kernel()
    self._move_to_y(kernel)
    with torch.enable_grad():
      loss = closure()
    for group in self.param_groups:
      self._update_group(group, kernel)
    return loss

  @torch.no_grad()
  def reset(self) -> None:
    """Restarts from x0: k, lr_max and weight_sum 0; z = x = x0; v = 0.

    The learning rate is left as it is. Parameters that have not taken a
    step yet have no state and are left unchanged.

    Raises:
      RuntimeError: if the optimizer was built without `store_x0_on_cpu`.
    """
    if not self.store_x0_on_cpu:
      raise RuntimeError(
        'reset() needs the initial parameters; build ScheduleFreeAdamWV1 '
        'with store_x0_on_cpu=True.'
      )
    for group in self.param_groups:
      group['k'] = 0
      group['lr_max'] = 0.0
      group['weight_sum'] = 0.0
      for param in group['params']:
        state = self.state[param]
        if not state:
          continue
        state['z'].copy_(state['x0'])
        param.copy_(state['x0'])
        state['exp_avg_sq'].zero_()

  def load_state_dict(self, state_dict: dict[str, Any]) -> None:
    """Loads a state dict, keeping v in bfloat16 and x0 on the host.

    torch's loader casts every floating state tensor to its parameter's dtype
    and device; this puts v and x0 back where `step` and `reset` keep them,
    so that a resumed run follows the numerics of an uninterrupted one.
    """
    super().load_state_dict(state_dict)
    for state in self.state.values():
      if 'exp_avg_sq' in state:
        state['exp_avg_sq'] = state['exp_avg_sq'].to(torch.bfloat16)
      if 'x0' in state:
        state['x0'] = state['x0'].to('cpu')


class _UpdateScalars(NamedTuple):
  """Python floats of one group's update, shared by both paths."""

  back_to_x: float  # lerp weight from y back to x: 1 - 1/beta1 (< 0)
  beta2: float
  one_minus_beta2: float
  eps: float
  minus_step_size: float  # -lr * sqrt(1 - beta2^(k+1))
  decay: float  # step size times weight decay
  averaging_weight: float  # c_k


def _update_loop(
  state: dict[torch.Tensor, dict[str, torch.Tensor]],
  params: list[torch.Tensor],
  scalars: _UpdateScalars,
) -> None:
  """The entry's per-parameter update; the reference for the foreach path."""
  for param in params:
    grad = param.grad
    z = state[param]['z']
    exp_avg_sq = state[param]['exp_avg_sq']

    param.lerp_(z, scalars.back_to_x)

    # Two in-place ops on the bf16 buffer, each rounding to bf16.
    exp_avg_sq.mul_(scalars.beta2).addcmul_(
      grad, grad, value=scalars.one_minus_beta2
    )
    denominator = exp_avg_sq.sqrt().add_(scalars.eps)
    z.addcdiv_(grad, denominator, value=scalars.minus_step_size)
    z.sub_(param, alpha=scalars.decay)

    param.lerp_(z, scalars.averaging_weight)


def _update_foreach(
  state: dict[torch.Tensor, dict[str, torch.Tensor]],
  params: list[torch.Tensor],
  scalars: _UpdateScalars,
) -> None:
  """`_update_loop` with each op applied to all tensors at once.

  The ops and their scalars are the loop's, in the loop's order for each
  tensor, so every tensor gets the same roundings, v's bf16 ones included:
  a foreach op mixing the bf16 v with a wider gradient computes in the
  wider type and rounds to bf16 on store, exactly as the in-place tensor op.
  """
  beta2 = torch.tensor(scalars.beta2, dtype=torch.float64)
  grads = [param.grad for param in params]
  zs = [state[param]['z'] for param in params]
  vs = [state[param]['exp_avg_sq'] for param in params]
  for group_params, group_grads, group_zs, group_vs in by_device_and_dtype(
    params, grads, zs, vs
  ):
    torch._foreach_lerp_(group_params, group_zs, scalars.back_to_x)

    # beta2 goes in as a 0-dim CPU tensor: torch's CPU kernel for a bf16
    # list times a Python scalar rounds the scalar to bf16 first (0.99
    # becomes 0.98828125), unlike `Tensor.mul_`, which multiplies by it in
    # float32. A CPU scalar tensor is read at full precision by both.
    torch._foreach_mul_(group_vs, beta2)
    torch._foreach_addcmul_(
      group_vs, group_grads, group_grads, value=scalars.one_minus_beta2
    )
    denominators = torch._foreach_sqrt(group_vs)
    torch._foreach_add_(denominators, scalars.eps)
    torch._foreach_addcdiv_(
      group_zs, group_grads, denominators, value=scalars.minus_step_size
    )
    del denominators  # the one transient buffer, freed before the next ops
    torch._foreach_sub_(group_zs, group_params, alpha=scalars.decay)

    torch._foreach_lerp_(group_params, group_zs, scalars.averaging_weight)


def _split_for_kernel(
  params: list[torch.Tensor], *others: list[torch.Tensor]
) -> tuple[tuple[list[torch.Tensor], ...], list[torch.Tensor]]:
  """Splits aligned lists into the rows the CPU kernel takes and the rest.

  Returns the kernel's rows of `params` and of each of `others`, then the
  parameters it does not take (whose state the torch ops look up).
  """
  columns = (params, *others)
  taken = [cpu_kernel.eligible(row) for row in zip(*columns, strict=True)]
  fast = tuple(
    [tensor for tensor, ok in zip(column, taken, strict=True) if ok]
    for column in columns
  )
  rest = [param for param, ok in zip(params, taken, strict=True) if not ok]
  return fast, rest


def _reference_step(param, z, grad, v, scalars) -> None:
  """`_update_loop` on one tensor: what the CPU kernel is checked against.

  Args:
    param, z, grad, v: one parameter (holding y), its z, gradient and v.
    scalars: the fields of `_UpdateScalars`, in order.
  """
  param.grad = grad
  state = {param: {'z': z, 'exp_avg_sq': v}}
  _update_loop(state, [param], _UpdateScalars(*scalars))
