"""Schedule-Free AdamW in its current (paper and `schedulefree` >= 1.3) form.

Parameters hold y while training and x while evaluating, switched by
`train()` and `eval()`; with the default settings a step equals the step of
`schedulefree.AdamWScheduleFree` 1.4.1 bit for bit.
"""

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple

import torch

from sfperf.optim.foreach import by_device_and_dtype, foreach_by_default

BiasCorrection = Literal['denominator', 'step_size']
BIAS_CORRECTIONS = ('denominator', 'step_size')


class StepScalars(NamedTuple):
  """Scalars of one step of one parameter group, all Python floats."""

  lr: float  # scheduled learning rate gamma_k
  lr_max: float  # running maximum of `lr`
  weight_sum: float  # S_k, the sum of averaging weights so far
  averaging_weight: float  # c_{k+1} = w_k / S_k, 0 while S_k = 0
  second_moment_divisor: float  # 1 - beta2^(k+1), or 1 for 'step_size'
  y_update_weight: float  # gamma_k * (beta1 * (1 - c_{k+1}) - 1)


def step_scalars(
  *,
  k: int,
  lr: float,
  betas: tuple[float, float],
  warmup_steps: int,
  r: float,
  weight_lr_power: float,
  lr_max: float,
  weight_sum: float,
  bias_correction: BiasCorrection,
) -> StepScalars:
  """Computes a group's step scalars from its settings and counters.

  The floating-point order is the package's, so that the scalars, and with
  them every tensor of the step, are the same bits.

  Args:
    k: 0-based step counter of the group.
    lr: the group's base learning rate.
    betas: (beta1, beta2).
    warmup_steps: length of the linear warmup; 0 disables it.
    r: power of the step count in the averaging weight.
    weight_lr_power: power of lr_max in the averaging weight.
    lr_max: the group's running maximum of the scheduled learning rate.
    weight_sum: the group's sum of averaging weights before this step.
    bias_correction: 'denominator' or 'step_size' (see the class).

  Returns:
    The step's `StepScalars`.
  """
  beta1, beta2 = betas
  warmup = (k + 1) / warmup_steps if k < warmup_steps else 1.0
  bias_correction2 = 1 - beta2 ** (k + 1)
  scheduled_lr = lr * warmup
  if bias_correction == 'step_size':
    scheduled_lr = scheduled_lr * math.sqrt(bias_correction2)
    second_moment_divisor = 1.0
  else:
    second_moment_divisor = bias_correction2
  new_lr_max = max(scheduled_lr, lr_max)
  weight = ((k + 1) ** r) * (new_lr_max**weight_lr_power)
  new_weight_sum = weight_sum + weight
  # With lr = 0 every weight is 0: no averaging, x stays where it is.
  averaging_weight = weight / new_weight_sum if new_weight_sum != 0 else 0.0
  return StepScalars(
    lr=scheduled_lr,
    lr_max=new_lr_max,
    weight_sum=new_weight_sum,
    averaging_weight=averaging_weight,
    second_moment_divisor=second_moment_divisor,
    y_update_weight=scheduled_lr * (beta1 * (1 - averaging_weight) - 1),
  )


def moment_dtype(param_dtype: torch.dtype) -> torch.dtype:
  """The dtype of v for a parameter: its own, but never below float32."""
  return torch.promote_types(param_dtype, torch.float32)


class ScheduleFreeAdamW(torch.optim.Optimizer):
  r"""Schedule-Free AdamW; parameters hold y to train and x to evaluate.

  Three sequences: z, the AdamW-style base iterate; x, a weighted average
  of z, the point to evaluate and to save; y, between them, the point where
  gradients are taken. For step k = 0, 1, ... of a group, with base lr
  gamma, warmup length T, decay lambda and p = `weight_lr_power`:

  .. math::

    y_k &= \beta_1 x_k + (1 - \beta_1) z_k, \quad g_k = \nabla f(y_k) \\
    \gamma_k &= \gamma \min(1, (k+1)/T) \, [\sqrt{1 - \beta_2^{k+1}}
      \text{ with 'step\_size'}] \\
    \gamma^{max}_k &= \max(\gamma^{max}_{k-1}, \gamma_k), \quad
      w_k = (k+1)^r (\gamma^{max}_k)^p, \quad S_k = S_{k-1} + w_k, \quad
      c_{k+1} = w_k / S_k \\
    v_k &= \beta_2 v_{k-1} + (1 - \beta_2) g_k^2, \quad
      d_k = \sqrt{v_k / (1 - \beta_2^{k+1})} + \epsilon
      \, [\sqrt{v_k} + \epsilon \text{ with 'step\_size'}] \\
    u_k &= g_k / d_k + \lambda y_k \\
    z_{k+1} &= z_k - \gamma_k u_k \\
    x_{k+1} &= (1 - c_{k+1}) x_k + c_{k+1} z_{k+1}

  with x_0 = y_0 = z_0 the initial parameters, v_{-1} = 0 and c = 0 while
  S_k = 0 (lr = 0). beta1 is only the interpolation weight of y; there is
  no first moment. The decay is computed at y and applied to z.

  x is never stored. In train mode the parameter holds y and a step updates
  it in place by the equivalent fused rule
  y_{k+1} = (1 - c) y_k + c z_k + gamma_k (beta1 (1 - c) - 1) u_k;
  `eval()` turns it into x = (y - (1 - beta1) z) / beta1, computed as
  lerp(y, z, 1 - 1/beta1), and `train()` back into y = lerp(x, z, 1 - beta1).

  Bias correction (`bias_correction`):

  - 'denominator' (default): as above, v is bias-corrected inside d_k; this
    is `schedulefree.AdamWScheduleFree` >= 1.3, and with it every step
    equals that class's step bit for bit (fp32 and fp64 parameters).
  - 'step_size': d_k = sqrt(v_k) + eps and gamma_k carries the factor
    sqrt(1 - beta2^(k+1)), which then also enters the averaging weights and
    scales the decay: the paper's Algorithm 1, `AdamWScheduleFreePaper`, and
    the correction the AlgoPerf v0.6 `schedule_free_adamw_v2` entry applies.

  Train/eval contract (the package's):

  - The optimizer starts in eval mode. Call `train()` before the forward
    and backward pass and `step()`; call `eval()` before evaluating the
    model and before saving a checkpoint, so that both see x. Each call is
    idempotent. A mode is per group and is saved in the state dict.
  - `step()` in eval mode raises `RuntimeError` rather than switching:
    the gradient it would use was taken at x, not at y.
  - A parameter without state (no step with a gradient yet) has
    x = y = z and is left as it is by both switches.
  - A parameter whose `.grad` is None is skipped by `step()`: its value, z
    and v stay as they were. Once it has state, the switches still move it.
  - A `train()` after an `eval()` restores y up to rounding (about one unit
    in the last place per round trip), not bit for bit.

  Memory. Persistent, per parameter: z (dtype and device of the parameter)
  and v (`exp_avg_sq`; same device, dtype float32 or the parameter's if
  wider), so the same two buffers as AdamW. Transient, during `step()`: one
  float32 buffer holding d and then u, one parameter at a time in the loop
  path, and two per group (d and u) in the multi-tensor path. Gradients are
  read, never written (the package divides them in place).

  Differences from `schedulefree.AdamWScheduleFree` 1.4.1, none of which
  changes a step of float32 or float64 parameters: v is kept in at least
  float32 (the package keeps it in the parameter's dtype, so bf16 and fp16
  parameters step differently), also across `load_state_dict`; gradients
  are left untouched; every group must be in train mode for `step()` (the
  package checks the first only) and the error is a `RuntimeError`;
  settings are validated; `lr_max` starts at 0 (the package starts at -1,
  which is the same for lr >= 0).

  Example:
    >>> optimizer = ScheduleFreeAdamW(model.parameters(), warmup_steps=100)
    >>> model.train(); optimizer.train()  # parameters hold y
    >>> loss_fn(model(inputs), targets).backward()
    >>> optimizer.step(); optimizer.zero_grad()
    >>> model.eval(); optimizer.eval()  # parameters hold x
  """

  def __init__(
    self,
    params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
    lr: float = 0.0025,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    warmup_steps: int = 0,
    r: float = 0.0,
    weight_lr_power: float = 2.0,
    bias_correction: BiasCorrection = 'denominator',
    foreach: bool | None = None,
  ) -> None:
    """Builds the optimizer, in eval mode.

    Args:
      params: parameters or parameter groups, as for any torch optimizer.
      lr: base learning rate gamma, reached at the end of warmup.
      betas: (beta1, beta2). beta1 in (0, 1] is the interpolation weight of
        y (1 - beta1 is how far y lies from x towards z); beta2 in [0, 1)
        is the decay of the second moment.
      eps: added to the square root of the second moment.
      weight_decay: decoupled decay lambda, computed at y, applied to z.
      warmup_steps: linear warmup length in steps; 0 means none.
      r: power of the step count in the averaging weights; 0 is uniform.
      weight_lr_power: power p of lr_max in the averaging weights.
      bias_correction: 'denominator' (the package) or 'step_size' (the
        paper and the v2 AlgoPerf entry).
      foreach: True for the multi-tensor path, False for the per-parameter
        loop; None picks the multi-tensor path when every parameter is on a
        device with fused foreach kernels (CUDA, XPU). Both give the same
        bits. Kept on the optimizer, not in the groups, so a state dict
        loads into either path.

    Raises:
      ValueError: if a setting is out of range.
    """
    if not 0.0 < betas[0] <= 1.0:
      # eval() divides by beta1.
      raise ValueError(f'betas[0] must be in (0, 1], got {betas[0]}.')
    if not 0.0 <= betas[1] < 1.0:
      raise ValueError(f'betas[1] must be in [0, 1), got {betas[1]}.')
    if lr < 0.0:
      raise ValueError(f'lr must be non-negative, got {lr}.')
    if eps < 0.0:
      raise ValueError(f'eps must be non-negative, got {eps}.')
    if warmup_steps < 0:
      raise ValueError(
        f'warmup_steps must be non-negative, got {warmup_steps}.'
      )
    if bias_correction not in BIAS_CORRECTIONS:
      raise ValueError(
        f'bias_correction must be one of {BIAS_CORRECTIONS}, got '
        f'{bias_correction!r}.'
      )
    # Group keys as in the package, so that its state dicts load here.
    defaults = {
      'lr': lr,
      'betas': betas,
      'eps': eps,
      'weight_decay': weight_decay,
      'warmup_steps': warmup_steps,
      'r': r,
      'weight_lr_power': weight_lr_power,
      'bias_correction': bias_correction,
      'k': 0,
      'train_mode': False,
      'weight_sum': 0.0,
      'lr_max': 0.0,
      'scheduled_lr': 0.0,
    }
    super().__init__(params, defaults)
    self.foreach = foreach

  def __setstate__(self, state: dict[str, Any]) -> None:
    super().__setstate__(state)
    # A state dict of the package's class lacks `bias_correction`; its
    # correction is the default one.
    for group in self.param_groups:
      for key, value in self.defaults.items():
        group.setdefault(key, value)

  @property
  def uses_foreach(self) -> bool:
    """Whether `step`, `train` and `eval` take the multi-tensor path."""
    if self.foreach is not None:
      return self.foreach
    return foreach_by_default(self.param_groups)

  @property
  def train_mode(self) -> bool:
    """True when every group is in train mode (parameters hold y)."""
    return all(group['train_mode'] for group in self.param_groups)

  @torch.no_grad()
  def train(self) -> None:
    """Switches to train mode: each parameter with state goes from x to y."""
    self._switch(train_mode=True)

  @torch.no_grad()
  def eval(self) -> None:
    """Switches to eval mode: each parameter with state goes from y to x."""
    self._switch(train_mode=False)

  def _switch(self, train_mode: bool) -> None:
    for group in self.param_groups:
      if group['train_mode'] == train_mode:
        continue
      beta1 = group['betas'][0]
      # y = lerp(x, z, 1 - beta1); x = lerp(y, z, 1 - 1/beta1) (< 0).
      weight = 1 - beta1 if train_mode else 1 - 1 / beta1
      params = [p for p in group['params'] if 'z' in self.state[p]]
      zs = [self.state[p]['z'] for p in params]
      if self.uses_foreach:
        for bucket_params, bucket_zs in by_device_and_dtype(params, zs):
          torch._foreach_lerp_(bucket_params, bucket_zs, weight)
      else:
        for param, z in zip(params, zs, strict=True):
          param.lerp_(z, weight)
      group['train_mode'] = train_mode

  @torch.no_grad()
  def step(self, closure: Callable[[], Any] | None = None) -> Any:
    """Takes one step from the gradients at y.

    Args:
      closure: optional; re-evaluates the model (forward and backward at
        the y the parameters hold) and returns the loss.

    Returns:
      What `closure` returned, or None.

    Raises:
      RuntimeError: if a group is in eval mode.
    """
    if not self.train_mode:
      raise RuntimeError(
        'ScheduleFreeAdamW.step() was called in eval mode, where the '
        'parameters hold x; the gradient must be taken at y. Call '
        'optimizer.train() before the forward pass (and optimizer.eval() '
        'before evaluating or saving).'
      )
    loss = None
    if closure is not None:
      with torch.enable_grad():
        loss = closure()
    for group in self.param_groups:
      self._step_group(group)
    return loss

  def _step_group(self, group: dict[str, Any]) -> None:
    scalars = step_scalars(
      k=group['k'],
      lr=group['lr'],
      betas=group['betas'],
      warmup_steps=group['warmup_steps'],
      r=group['r'],
      weight_lr_power=group['weight_lr_power'],
      lr_max=group['lr_max'],
      weight_sum=group['weight_sum'],
      bias_correction=group['bias_correction'],
    )
    group['scheduled_lr'] = scalars.lr
    group['lr_max'] = scalars.lr_max
    group['weight_sum'] = scalars.weight_sum

    params = [p for p in group['params'] if p.grad is not None]
    for param in params:
      state = self.state[param]
      if 'z' not in state:
        state['z'] = param.detach().clone(memory_format=torch.preserve_format)
        state['exp_avg_sq'] = torch.zeros_like(
          param,
          dtype=moment_dtype(param.dtype),
          memory_format=torch.preserve_format,
        )
    settings = _GroupSettings(
      beta2=group['betas'][1],
      one_minus_beta2=1 - group['betas'][1],
      eps=group['eps'],
      weight_decay=group['weight_decay'],
    )
    update = _update_foreach if self.uses_foreach else _update_loop
    update(self.state, params, settings, scalars)
    group['k'] += 1

  def load_state_dict(self, state_dict: dict[str, Any]) -> None:
    """Loads a state dict, keeping v in at least float32.

    torch's loader casts every floating state tensor to its parameter's
    dtype, which would round v of a bf16 parameter to bf16; v is taken from
    `state_dict` again, as saved, so that a resumed run continues the
    numerics of an uninterrupted one.
    """
    saved_ids = [
      index for group in state_dict['param_groups'] for index in group['params']
    ]
    live_params = [p for group in self.param_groups for p in group['params']]
    saved_moments = {
      index: state['exp_avg_sq']
      for index, state in state_dict['state'].items()
      if 'exp_avg_sq' in state
    }
    super().load_state_dict(state_dict)
    for index, param in zip(saved_ids, live_params, strict=False):
      if index in saved_moments:
        self.state[param]['exp_avg_sq'] = saved_moments[index].to(
          device=param.device, dtype=moment_dtype(param.dtype), copy=True
        )


class _GroupSettings(NamedTuple):
  """A group's constant settings, as the step's tensor ops take them."""

  beta2: float
  one_minus_beta2: float
  eps: float
  weight_decay: float


def _update_loop(
  state: dict[torch.Tensor, dict[str, torch.Tensor]],
  params: list[torch.Tensor],
  settings: _GroupSettings,
  scalars: StepScalars,
) -> None:
  """One parameter at a time; the reference for the multi-tensor path."""
  for y in params:
    grad = y.grad
    z = state[y]['z']
    exp_avg_sq = state[y]['exp_avg_sq']

    exp_avg_sq.mul_(settings.beta2).addcmul_(
      grad, grad, value=settings.one_minus_beta2
    )
    if scalars.second_moment_divisor == 1.0:
      # Skipping the division by 1 changes no bit.
      denominator = exp_avg_sq.sqrt()
    else:
      denominator = exp_avg_sq.div(scalars.second_moment_divisor).sqrt_()
    denominator.add_(settings.eps)
    # u = g / d + lambda y, written over d: one transient buffer.
    update = torch.div(grad, denominator, out=denominator)
    if settings.weight_decay != 0:
      update.add_(y, alpha=settings.weight_decay)

    y.lerp_(z, scalars.averaging_weight)
    y.add_(update, alpha=scalars.y_update_weight)
    z.sub_(update, alpha=scalars.lr)


def _update_foreach(
  state: dict[torch.Tensor, dict[str, torch.Tensor]],
  params: list[torch.Tensor],
  settings: _GroupSettings,
  scalars: StepScalars,
) -> None:
  """`_update_loop` with each operation applied to a list of tensors.

  Same operations and scalars in the same order for each tensor, so the
  same roundings; only the order in which tensors are visited differs.
  """
  grads = [p.grad for p in params]
  zs = [state[p]['z'] for p in params]
  moments = [state[p]['exp_avg_sq'] for p in params]
  for ys, bucket_grads, bucket_zs, bucket_moments in by_device_and_dtype(
    params, grads, zs, moments
  ):
    torch._foreach_mul_(bucket_moments, settings.beta2)
    torch._foreach_addcmul_(
      bucket_moments,
      bucket_grads,
      bucket_grads,
      value=settings.one_minus_beta2,
    )
    if scalars.second_moment_divisor == 1.0:
      denominators = torch._foreach_sqrt(bucket_moments)
    else:
      denominators = torch._foreach_div(
        bucket_moments, scalars.second_moment_divisor
      )
      torch._foreach_sqrt_(denominators)
    torch._foreach_add_(denominators, settings.eps)
    updates = torch._foreach_div(bucket_grads, denominators)
    del denominators
    if settings.weight_decay != 0:
      torch._foreach_add_(updates, ys, alpha=settings.weight_decay)

    torch._foreach_lerp_(ys, bucket_zs, scalars.averaging_weight)
    torch._foreach_add_(ys, updates, alpha=scalars.y_update_weight)
    torch._foreach_sub_(bucket_zs, updates, alpha=scalars.lr)
