"""Schedule-Free AdamW as the AlgoPerf 2024 (v0.5) entries implemented it.

A closure-form PyTorch optimizer that keeps that version's numerics, quirks
included, so that the 2024 self-tuning winner can be reproduced exactly.
"""

import math
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch


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

  Memory, per parameter: `z` (dtype and device of the parameter),
  `exp_avg_sq` (v, bfloat16, same device) and, only when
  `store_x0_on_cpu=True`, `x0` (a host copy of the parameter as it was at its
  first step, used by `reset`). x itself lives in the parameter, y only
  transiently in it.

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

  def _init_state(self, param: torch.Tensor) -> None:
    state = self.state[param]
    state['z'] = param.detach().clone()
    state['exp_avg_sq'] = torch.zeros_like(param, dtype=torch.bfloat16)
    if self.store_x0_on_cpu:
      # copy=True matters on CPU, where .cpu() would alias the parameter.
      state['x0'] = param.detach().to(device='cpu', copy=True)

  @torch.no_grad()
  def _move_to_y(self) -> None:
    for group in self.param_groups:
      beta1 = group['betas'][0]
      for param in group['params']:
        if not self.state[param]:
          self._init_state(param)
        param.lerp_(self.state[param]['z'], 1 - beta1)

  @torch.no_grad()
  def _update_group(self, group: dict[str, Any]) -> None:
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
    step_size = coefficients.step_size

    for param in group['params']:
      if param.grad is None:
        continue  # the entry leaves such a parameter at y
      grad = param.grad
      state = self.state[param]
      z = state['z']
      exp_avg_sq = state['exp_avg_sq']

      # Back from y to x: the inverse lerp, weight 1 - 1/beta1 (< 0).
      param.lerp_(z, 1 - 1 / beta1)

      # Two in-place ops on the bf16 buffer, each rounding to bf16.
      exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
      denominator = exp_avg_sq.sqrt().add_(eps)
      z.addcdiv_(grad, denominator, value=-step_size)
      z.sub_(param, alpha=step_size * group['weight_decay'])

      param.lerp_(z, coefficients.averaging_weight)

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
    self._move_to_y()
    with torch.enable_grad():
      loss = closure()
    for group in self.param_groups:
      self._update_group(group)
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
