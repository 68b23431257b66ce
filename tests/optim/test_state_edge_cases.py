"""Optimizer state in the cases Schedule-Free users trip over.

For the 2024 closure form `ScheduleFreeAdamWV1` and the current form
`ScheduleFreeAdamW` (`sfperf.optim.schedule_free`): a step straight after
construction, a state dict saved before any step, a frozen parameter (from
the start, and frozen mid-run, where the two forms differ), and a state
dict loaded into an optimizer over float64 copies of float32 parameters.

Covered elsewhere, so not repeated here: for v1, lr = 0 moves the
parameters only by the eps floor of the scheduled learning rate and leaves
them bit for bit on the first step, and a parameter without a gradient on
some or all steps is left at y with its z and v kept
(`test_schedule_free_v1.py`); for the current form, lr = 0 leaves x at its
initial value and a step before `train()` raises RuntimeError
(`test_schedule_free_current.py`); like-for-like state dict round trips of
both.

Only CPU placements are checked. Loading a CPU state dict into an optimizer
over CUDA parameters (v must land on the GPU, in bfloat16 for v1, and v1's
x0 must stay on the host) needs a GPU machine.
"""

import copy

import torch

from sfperf.optim import ScheduleFreeAdamWV1
from sfperf.optim.schedule_free import ScheduleFreeAdamW

SETTINGS = {
  'lr': 0.05,
  'betas': (0.9, 0.99),
  'weight_decay': 0.1,
  'warmup_steps': 3,
  'r': 0.75,
  'store_x0_on_cpu': True,
}


class Net(torch.nn.Module):
  """A linear layer plus `frozen`, an added offset without a gradient."""

  def __init__(self) -> None:
    super().__init__()
    generator = torch.Generator().manual_seed(0)
    self.weight = torch.nn.Parameter(torch.randn(3, 4, generator=generator))
    self.bias = torch.nn.Parameter(0.1 * torch.randn(3, generator=generator))
    self.frozen = torch.nn.Parameter(torch.randn(3, generator=generator))
    self.frozen.requires_grad_(False)

  def forward(self, inputs: torch.Tensor) -> torch.Tensor:
    return inputs @ self.weight.T + self.bias + self.frozen


def _step(model, optimizer, index: int) -> None:
  generator = torch.Generator().manual_seed(100 + index)
  inputs = torch.randn(8, 4, generator=generator).to(model.weight.dtype)
  targets = torch.randint(0, 3, (8,), generator=generator)

  def closure():
    optimizer.zero_grad()
    loss = torch.nn.functional.cross_entropy(model(inputs), targets)
    loss.backward()
    return loss

  optimizer.step(closure)


def _trainable(model):
  return [param for param in model.parameters() if param.requires_grad]


def test_steps_from_construction_without_modes():
  model = Net()
  optimizer = ScheduleFreeAdamWV1(_trainable(model), **SETTINGS)
  # No train()/eval() to call first: the parameters hold x from the start.
  assert not hasattr(optimizer, 'train') and not hasattr(optimizer, 'eval')
  assert not optimizer.state
  before = model.weight.detach().clone()
  _step(model, optimizer, 0)
  assert optimizer.param_groups[0]['k'] == 1
  assert set(optimizer.state[model.weight]) == {'z', 'exp_avg_sq', 'x0'}
  # First step: c = 1, so x = z.
  assert torch.equal(model.weight, optimizer.state[model.weight]['z'])
  assert not torch.equal(model.weight, before)


def test_state_dict_saved_before_any_step_resumes_identically():
  model = Net()
  optimizer = ScheduleFreeAdamWV1(_trainable(model), **SETTINGS)
  saved = copy.deepcopy(optimizer.state_dict())
  assert saved['state'] == {}

  resumed_model = Net()
  resumed = ScheduleFreeAdamWV1(_trainable(resumed_model), **SETTINGS)
  resumed.load_state_dict(saved)
  for index in range(4):
    _step(model, optimizer, index)
    _step(resumed_model, resumed, index)
  for name, param in model.named_parameters():
    assert torch.equal(param, getattr(resumed_model, name)), name


def test_frozen_parameter_left_out_is_untouched_and_stateless():
  model = Net()
  frozen_before = model.frozen.detach().clone()
  optimizer = ScheduleFreeAdamWV1(_trainable(model), **SETTINGS)
  for index in range(5):
    _step(model, optimizer, index)
  assert torch.equal(model.frozen, frozen_before)
  assert model.frozen not in optimizer.state
  assert len(optimizer.state) == 2


def test_frozen_parameter_given_to_the_optimizer_gets_state_but_no_change():
  # Like the entry, `step` builds z, v and x0 for every parameter it holds
  # before the closure can tell which get gradients: a frozen float32
  # parameter costs 2.5 times its size (z, bf16 v, host x0) unless it is
  # left out, as above.
  # It stays bit for bit, since its z is its x and y = x + (1 - b1)(z - x).
  model = Net()
  frozen_before = model.frozen.detach().clone()
  optimizer = ScheduleFreeAdamWV1(model.parameters(), **SETTINGS)
  for index in range(5):
    _step(model, optimizer, index)
  assert model.frozen.grad is None
  assert torch.equal(model.frozen, frozen_before)
  state = optimizer.state[model.frozen]
  assert set(state) == {'z', 'exp_avg_sq', 'x0'}
  assert torch.equal(state['z'], frozen_before)
  assert not state['exp_avg_sq'].any()


def test_parameter_frozen_mid_run_drifts_to_z():
  # Freezing after training has begun does not hold x still: the parameter
  # is moved to y at every step and, having no gradient, left there, so it
  # approaches z geometrically (by a factor b1 per step). Leave it out of a
  # new optimizer (with its state) to freeze it at x.
  model = Net()
  optimizer = ScheduleFreeAdamWV1(model.parameters(), **SETTINGS)
  model.frozen.requires_grad_(True)
  for index in range(5):
    _step(model, optimizer, index)
  model.frozen.requires_grad_(False)
  model.frozen.grad = None
  z = optimizer.state[model.frozen]['z'].clone()
  gap = (model.frozen - z).abs().max()
  assert gap > 0
  for index in range(5, 10):
    _step(model, optimizer, index)
  assert torch.equal(optimizer.state[model.frozen]['z'], z)
  new_gap = (model.frozen - z).abs().max()
  beta1 = SETTINGS['betas'][0]
  torch.testing.assert_close(new_gap, gap * beta1**5, rtol=1e-5, atol=0)


def test_state_dict_loads_into_float64_parameters():
  # torch's loader casts floating state to its parameter's dtype and device;
  # the class then puts v back in bfloat16 and x0 on the host. So z follows
  # the new parameters (float64), v stays bfloat16, and x0 is a host copy in
  # the parameters' dtype.
  model = Net()
  optimizer = ScheduleFreeAdamWV1(_trainable(model), **SETTINGS)
  for index in range(4):
    _step(model, optimizer, index)
  saved = copy.deepcopy(optimizer.state_dict())

  wide_model = copy.deepcopy(model).double()
  wide = ScheduleFreeAdamWV1(_trainable(wide_model), **SETTINGS)
  wide.load_state_dict(saved)
  for name in ('weight', 'bias'):
    param = getattr(wide_model, name)
    state = wide.state[param]
    original = optimizer.state[getattr(model, name)]
    assert state['z'].dtype == torch.float64
    assert torch.equal(state['z'], original['z'].double())
    assert state['exp_avg_sq'].dtype == torch.bfloat16
    assert torch.equal(state['exp_avg_sq'], original['exp_avg_sq'])
    assert state['x0'].device.type == 'cpu'
    assert state['x0'].dtype == torch.float64
    assert torch.equal(state['x0'], original['x0'].double())
  assert wide.param_groups[0]['k'] == 4

  # Training goes on in float64 from the same point: after one more step
  # both agree to float32 rounding, and a reset returns to the same x0.
  _step(model, optimizer, 4)
  _step(wide_model, wide, 4)
  for name in ('weight', 'bias'):
    torch.testing.assert_close(
      getattr(wide_model, name),
      getattr(model, name).double(),
      rtol=1e-5,
      atol=1e-6,
    )
  assert wide_model.weight.dtype == torch.float64
  optimizer.reset()
  wide.reset()
  assert torch.equal(wide_model.weight, model.weight.double())


# The current form: parameters hold y in train mode and x in eval mode.
CURRENT_SETTINGS = {
  'lr': 0.05,
  'betas': (0.9, 0.99),
  'weight_decay': 0.1,
  'warmup_steps': 3,
  'r': 0.75,
}


def _step_current(model, optimizer, index: int) -> None:
  generator = torch.Generator().manual_seed(100 + index)
  inputs = torch.randn(8, 4, generator=generator).to(model.weight.dtype)
  targets = torch.randint(0, 3, (8,), generator=generator)
  optimizer.zero_grad()
  torch.nn.functional.cross_entropy(model(inputs), targets).backward()
  optimizer.step()


def test_current_form_steps_after_train_from_construction():
  # It starts in eval mode; `train()` before any step moves nothing, since
  # no parameter has state yet (x = y = z).
  model = Net()
  before = copy.deepcopy(model.state_dict())
  optimizer = ScheduleFreeAdamW(_trainable(model), **CURRENT_SETTINGS)
  assert not optimizer.train_mode
  optimizer.train()
  assert torch.equal(model.weight, before['weight'])
  _step_current(model, optimizer, 0)
  assert optimizer.param_groups[0]['k'] == 1
  assert not torch.equal(model.weight, before['weight'])


def test_current_form_frozen_parameter_is_untouched_and_stateless():
  # Unlike v1, state is made only for parameters that get a gradient.
  model = Net()
  frozen_before = model.frozen.detach().clone()
  optimizer = ScheduleFreeAdamW(model.parameters(), **CURRENT_SETTINGS)
  optimizer.train()
  for index in range(5):
    _step_current(model, optimizer, index)
  optimizer.eval()
  # An empty entry at most: the switches look parameters up in the
  # optimizer's defaultdict.
  assert not optimizer.state.get(model.frozen)
  assert torch.equal(model.frozen, frozen_before)


def test_current_form_parameter_frozen_mid_run_keeps_its_x():
  # A parameter frozen after it has state keeps z, v and its y; the mode
  # switches still move it between y and x, so its x stays where it was,
  # up to the rounding of a switch round trip (not drifting as in v1).
  model = Net()
  optimizer = ScheduleFreeAdamW(model.parameters(), **CURRENT_SETTINGS)
  model.frozen.requires_grad_(True)
  optimizer.train()
  for index in range(5):
    _step_current(model, optimizer, index)
  optimizer.eval()
  x_before = model.frozen.detach().clone()
  z_before = optimizer.state[model.frozen]['z'].clone()
  assert not torch.equal(x_before, z_before)

  model.frozen.requires_grad_(False)
  model.frozen.grad = None
  optimizer.train()
  for index in range(5, 10):
    _step_current(model, optimizer, index)
  optimizer.eval()
  assert torch.equal(optimizer.state[model.frozen]['z'], z_before)
  torch.testing.assert_close(model.frozen, x_before, rtol=1e-6, atol=1e-7)


def test_current_form_state_dict_loads_into_float64_parameters():
  # Saved in eval mode, as the contract asks. z and v both follow the new
  # parameters' dtype (v is never narrower than float32, here float64),
  # and the mode comes from the state dict.
  model = Net()
  optimizer = ScheduleFreeAdamW(_trainable(model), **CURRENT_SETTINGS)
  optimizer.train()
  for index in range(4):
    _step_current(model, optimizer, index)
  optimizer.eval()
  saved = copy.deepcopy(optimizer.state_dict())

  wide_model = copy.deepcopy(model).double()
  wide = ScheduleFreeAdamW(_trainable(wide_model), **CURRENT_SETTINGS)
  wide.train()  # overwritten by the saved mode
  wide.load_state_dict(saved)
  assert not wide.train_mode
  for name in ('weight', 'bias'):
    state = wide.state[getattr(wide_model, name)]
    original = optimizer.state[getattr(model, name)]
    for key in ('z', 'exp_avg_sq'):
      assert state[key].dtype == torch.float64
      assert torch.equal(state[key], original[key].double())

  for run_model, run_optimizer in ((model, optimizer), (wide_model, wide)):
    run_optimizer.train()
    _step_current(run_model, run_optimizer, 4)
    run_optimizer.eval()
  for name in ('weight', 'bias'):
    torch.testing.assert_close(
      getattr(wide_model, name),
      getattr(model, name).double(),
      rtol=1e-5,
      atol=1e-6,
    )
