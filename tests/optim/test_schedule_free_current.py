"""Tests of ScheduleFreeAdamW, the current (paper and package) form.

Two references. `schedulefree` 1.4.1, the published package, step by step:
the classes must agree bit for bit (`torch.equal`), because both apply the
same elementwise tensor operations, in the same order, with the same Python
float scalars, and CPU kernels are deterministic; any tolerance would hide a
changed operation. And a float64 NumPy restatement of the docstring's
three-sequence update (x, y and z kept separately), which checks that the
fused in-place form is the documented math.
"""

import copy

import numpy as np
import pytest
import schedulefree
import torch

from sfperf.optim import ScheduleFreeAdamW, step_scalars

NUM_STEPS = 60
# Large lr and decay so that a wrong rule shows; warmup within the run.
SETTINGS = {
  'lr': 0.02,
  'betas': (0.9, 0.99),
  'eps': 1e-8,
  'weight_decay': 0.5,
  'warmup_steps': 10,
  'r': 0.0,
  'weight_lr_power': 2.0,
}
# Steps after which the test switches to eval mode (twice) and back.
EVAL_AFTER = (7, 20, 21, 45)
PACKAGE_CLASSES = {
  'denominator': schedulefree.AdamWScheduleFree,
  'step_size': schedulefree.AdamWScheduleFreePaper,
}


class TinyNet(torch.nn.Module):
  """Several tensors; `sometimes` gets a gradient on even steps only and
  `unused` never does."""

  def __init__(self, dtype: torch.dtype = torch.float32) -> None:
    super().__init__()
    generator = torch.Generator().manual_seed(0)

    def param(*shape):
      return torch.nn.Parameter(
        torch.randn(*shape, generator=generator, dtype=dtype)
      )

    self.conv = param(4, 2, 3, 3)
    self.weight = param(5, 16)
    self.bias = param(5)
    self.sometimes = param(5)
    self.unused = param(3)

  def loss(self, inputs: torch.Tensor, step: int) -> torch.Tensor:
    features = torch.nn.functional.conv2d(inputs, self.conv)  # [n, 4, 2, 2]
    hidden = torch.tanh(features.flatten(1)) @ self.weight.T + self.bias
    if step % 2 == 0:
      hidden = hidden * self.sometimes
    return (hidden**2).mean() + hidden.sin().sum() / 10


def batch(step: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
  generator = torch.Generator().manual_seed(1000 + step)
  return torch.randn(6, 2, 4, 4, generator=generator, dtype=dtype)


def take_step(model, optimizer, step: int) -> None:
  optimizer.zero_grad()
  model.loss(batch(step, model.conv.dtype), step).backward()
  optimizer.step()


def assert_same_state(ours, theirs, model_ours, model_theirs) -> None:
  for (name, p_ours), p_theirs in zip(
    model_ours.named_parameters(), model_theirs.parameters(), strict=True
  ):
    assert torch.equal(p_ours, p_theirs), name
    state_ours, state_theirs = ours.state[p_ours], theirs.state[p_theirs]
    assert state_ours.keys() == state_theirs.keys(), name
    for key in state_ours:
      assert torch.equal(state_ours[key], state_theirs[key]), (name, key)


@pytest.mark.parametrize('bias_correction', ['denominator', 'step_size'])
@pytest.mark.parametrize('foreach', [False, True])
def test_equals_the_package_step_by_step(bias_correction, foreach):
  model_ours, model_theirs = TinyNet(), TinyNet()
  ours = ScheduleFreeAdamW(
    model_ours.parameters(),
    bias_correction=bias_correction,
    foreach=foreach,
    **SETTINGS,
  )
  theirs = PACKAGE_CLASSES[bias_correction](
    model_theirs.parameters(), foreach=foreach, **SETTINGS
  )
  initial_unused = model_ours.unused.detach().clone()
  ours.train()
  theirs.train()
  for step in range(NUM_STEPS):
    take_step(model_ours, ours, step)
    take_step(model_theirs, theirs, step)
    assert_same_state(ours, theirs, model_ours, model_theirs)  # y, z, v
    assert ours.param_groups[0]['k'] == theirs.param_groups[0]['k']
    for key in ('scheduled_lr', 'lr_max', 'weight_sum'):
      assert ours.param_groups[0][key] == theirs.param_groups[0][key], key
    if step in EVAL_AFTER:
      ours.eval()
      theirs.eval()
      assert_same_state(ours, theirs, model_ours, model_theirs)  # x
      ours.train()
      theirs.train()
  ours.eval()
  theirs.eval()
  assert_same_state(ours, theirs, model_ours, model_theirs)
  # Never a gradient: no state, never moved.
  assert not ours.state[model_ours.unused]
  assert torch.equal(model_ours.unused, initial_unused)


def test_a_package_state_dict_loads_and_continues_identically():
  model_ours, model_theirs = TinyNet(), TinyNet()
  theirs = schedulefree.AdamWScheduleFree(model_theirs.parameters(), **SETTINGS)
  theirs.train()
  for step in range(15):
    take_step(model_theirs, theirs, step)
  theirs.eval()
  model_ours.load_state_dict(model_theirs.state_dict())
  ours = ScheduleFreeAdamW(model_ours.parameters(), **SETTINGS)
  ours.load_state_dict(copy.deepcopy(theirs.state_dict()))
  assert ours.param_groups[0]['bias_correction'] == 'denominator'
  ours.train()
  theirs.train()
  for step in range(15, 30):
    take_step(model_ours, ours, step)
    take_step(model_theirs, theirs, step)
  assert_same_state(ours, theirs, model_ours, model_theirs)


def reference_run(
  initial: list[np.ndarray],
  grad_fn,
  settings: dict,
  bias_correction: str,
  num_steps: int,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """The docstring's update with x, y and z kept apart, in float64.

  `grad_fn(step, ys)` returns the gradients at y. Returns (x, z).
  """
  beta1, beta2 = settings['betas']
  xs = [p.copy() for p in initial]
  zs = [p.copy() for p in initial]
  vs = [np.zeros_like(p) for p in initial]
  lr_max, weight_sum = 0.0, 0.0
  for k in range(num_steps):
    ys = [beta1 * x + (1 - beta1) * z for x, z in zip(xs, zs, strict=True)]
    grads = grad_fn(k, ys)
    warmup = min(1.0, (k + 1) / settings['warmup_steps'])
    correction = 1 - beta2 ** (k + 1)
    lr = settings['lr'] * warmup
    if bias_correction == 'step_size':
      lr *= np.sqrt(correction)
    lr_max = max(lr_max, lr)
    weight = (k + 1) ** settings['r'] * lr_max ** settings['weight_lr_power']
    weight_sum += weight
    c = weight / weight_sum
    for i, (y, g) in enumerate(zip(ys, grads, strict=True)):
      vs[i] = beta2 * vs[i] + (1 - beta2) * g * g
      if bias_correction == 'step_size':
        d = np.sqrt(vs[i]) + settings['eps']
      else:
        d = np.sqrt(vs[i] / correction) + settings['eps']
      u = g / d + settings['weight_decay'] * y
      zs[i] = zs[i] - lr * u
      xs[i] = (1 - c) * xs[i] + c * zs[i]
  return xs, zs


def quadratic_grads(step: int, ys: list[np.ndarray]) -> list[np.ndarray]:
  """Gradients of a separable nonconvex loss with step-dependent noise."""
  rng = np.random.default_rng(step)
  return [np.sin(3 * y) + y + rng.normal(size=y.shape) for y in ys]


@pytest.mark.parametrize('bias_correction', ['denominator', 'step_size'])
def test_matches_the_three_sequence_form_in_float64(bias_correction):
  settings = dict(SETTINGS, r=0.5)
  rng = np.random.default_rng(7)
  initial = [rng.normal(size=(4, 3)), rng.normal(size=(5,))]
  params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in initial]
  optimizer = ScheduleFreeAdamW(
    params, bias_correction=bias_correction, **settings
  )
  optimizer.train()
  for step in range(NUM_STEPS):
    ys = [p.detach().numpy().copy() for p in params]
    for param, grad in zip(params, quadratic_grads(step, ys), strict=True):
      param.grad = torch.from_numpy(grad)
    optimizer.step()
    if step in EVAL_AFTER:
      optimizer.eval()
      optimizer.train()
  optimizer.eval()
  xs, zs = reference_run(
    initial, quadratic_grads, settings, bias_correction, NUM_STEPS
  )
  # float64 roundoff of ~60 steps of values of order 1, plus the rounding of
  # each eval/train round trip: 1e-12 is a thousand times that.
  for param, x, z in zip(params, xs, zs, strict=True):
    np.testing.assert_allclose(param.detach().numpy(), x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(
      optimizer.state[param]['z'].numpy(), z, rtol=0, atol=1e-12
    )


@pytest.mark.parametrize('foreach', [False, True])
def test_zero_lr_leaves_the_eval_params_at_their_initial_values(foreach):
  model = TinyNet()
  initial = copy.deepcopy(model.state_dict())
  optimizer = ScheduleFreeAdamW(
    model.parameters(), foreach=foreach, **dict(SETTINGS, lr=0.0)
  )
  optimizer.train()
  for step in range(20):
    take_step(model, optimizer, step)
  assert optimizer.param_groups[0]['weight_sum'] == 0.0
  optimizer.eval()
  for name, param in model.named_parameters():
    assert torch.equal(param, initial[name]), name


def test_state_dict_round_trip_mid_run_continues_bit_for_bit():
  model = TinyNet()
  optimizer = ScheduleFreeAdamW(model.parameters(), **SETTINGS)
  optimizer.train()
  for step in range(25):
    take_step(model, optimizer, step)
  # Saved as the package asks: in eval mode, parameters holding x.
  optimizer.eval()
  saved_model = copy.deepcopy(model.state_dict())
  saved_optimizer = copy.deepcopy(optimizer.state_dict())
  assert saved_optimizer['param_groups'][0]['train_mode'] is False

  resumed_model = TinyNet()
  resumed_model.load_state_dict(saved_model)
  resumed = ScheduleFreeAdamW(resumed_model.parameters(), **SETTINGS)
  resumed.load_state_dict(saved_optimizer)
  for run_model, run_optimizer in (
    (model, optimizer),
    (resumed_model, resumed),
  ):
    run_optimizer.train()
    for step in range(25, NUM_STEPS):
      take_step(run_model, run_optimizer, step)
    run_optimizer.eval()
  assert_same_state(optimizer, resumed, model, resumed_model)


def test_second_moment_stays_float32_for_bf16_params_across_a_reload():
  model = TinyNet(dtype=torch.bfloat16)
  optimizer = ScheduleFreeAdamW(model.parameters(), **SETTINGS)
  optimizer.train()
  for step in range(5):
    take_step(model, optimizer, step)
  v = optimizer.state[model.weight]['exp_avg_sq']
  assert v.dtype == torch.float32
  assert optimizer.state[model.weight]['z'].dtype == torch.bfloat16

  reloaded = ScheduleFreeAdamW(model.parameters(), **SETTINGS)
  reloaded.load_state_dict(optimizer.state_dict())
  reloaded_v = reloaded.state[model.weight]['exp_avg_sq']
  assert reloaded_v.dtype == torch.float32
  assert torch.equal(reloaded_v, v)


def test_eval_and_train_are_idempotent():
  model = TinyNet()
  optimizer = ScheduleFreeAdamW(model.parameters(), **SETTINGS)
  optimizer.train()
  for step in range(10):
    take_step(model, optimizer, step)
  optimizer.eval()
  x = [p.detach().clone() for p in model.parameters()]
  optimizer.eval()
  assert all(
    torch.equal(a, b) for a, b in zip(x, model.parameters(), strict=True)
  )
  optimizer.train()
  y = [p.detach().clone() for p in model.parameters()]
  optimizer.train()
  assert all(
    torch.equal(a, b) for a, b in zip(y, model.parameters(), strict=True)
  )
  assert optimizer.train_mode


def test_switches_before_the_first_step_change_nothing():
  model = TinyNet()
  initial = copy.deepcopy(model.state_dict())
  optimizer = ScheduleFreeAdamW(model.parameters(), **SETTINGS)
  optimizer.train()
  optimizer.eval()
  for name, param in model.named_parameters():
    assert torch.equal(param, initial[name]), name


def test_a_step_in_eval_mode_raises_as_the_package_does():
  # Documented choice: like the package, a step in eval mode is an error,
  # not a silent switch (its gradient was taken at x, not y).
  model = TinyNet()
  optimizer = ScheduleFreeAdamW(model.parameters(), **SETTINGS)
  model.loss(batch(0), 0).backward()
  with pytest.raises(RuntimeError, match=r'eval mode.*optimizer\.train\(\)'):
    optimizer.step()
  optimizer.train()
  optimizer.eval()
  with pytest.raises(RuntimeError, match='eval mode'):
    optimizer.step()

  package_model = TinyNet()
  package = schedulefree.AdamWScheduleFree(package_model.parameters())
  package_model.loss(batch(0), 0).backward()
  with pytest.raises(Exception, match='not in train mode'):
    package.step()


def test_gradients_are_not_modified():
  model = TinyNet()
  optimizer = ScheduleFreeAdamW(model.parameters(), **SETTINGS)
  optimizer.train()
  model.loss(batch(0), 0).backward()
  grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
  optimizer.step()
  after = [p.grad for p in model.parameters() if p.grad is not None]
  assert all(torch.equal(a, b) for a, b in zip(grads, after, strict=True))


def test_step_scalars_without_weight_have_no_averaging():
  scalars = step_scalars(
    k=0,
    lr=0.0,
    betas=(0.9, 0.999),
    warmup_steps=0,
    r=0.0,
    weight_lr_power=2.0,
    lr_max=0.0,
    weight_sum=0.0,
    bias_correction='denominator',
  )
  assert scalars.averaging_weight == 0.0
  assert scalars.lr == 0.0


@pytest.mark.parametrize(
  'kwargs, field',
  [
    ({'betas': (0.0, 0.99)}, 'betas\\[0\\]'),
    ({'betas': (0.9, 1.0)}, 'betas\\[1\\]'),
    ({'lr': -1.0}, 'lr'),
    ({'eps': -1.0}, 'eps'),
    ({'warmup_steps': -1}, 'warmup_steps'),
    ({'bias_correction': 'both'}, 'bias_correction'),
  ],
)
def test_settings_out_of_range_are_rejected(kwargs, field):
  with pytest.raises(ValueError, match=field):
    ScheduleFreeAdamW(TinyNet().parameters(), **kwargs)
