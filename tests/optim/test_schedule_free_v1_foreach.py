"""The foreach and CPU-kernel paths of ScheduleFreeAdamWV1 against its loop.

The paths apply the same elementwise arithmetic with the same scalars and
roundings, so they must agree bit for bit: every comparison here is
`torch.equal`, on CPU, in float32 and float64 (which the kernel leaves to
the torch ops). The loop path itself is held to a float64 reference in
test_schedule_free_v1.py; the kernel's build and fallbacks are tested in
test_cpu_kernel.py.
"""

import copy

import pytest
import torch

from sfperf.optim import ScheduleFreeAdamWV1, cpu_kernel, schedule_free_v1

NUM_STEPS = 36
WARMUP_STEPS = 12
DTYPES = {'float32': torch.float32, 'float64': torch.float64}
PATHS = {
  'loop': {'foreach': False, 'fused': False},
  'foreach': {'foreach': True, 'fused': False},
  'kernel': {'foreach': False, 'fused': True},
}


class SmallNet(torch.nn.Module):
  """Conv, norm, linear and embedding tensors of several shapes.

  `sometimes` has a gradient on even steps only; `frozen` is used in the
  forward pass but never gets a gradient; `unused` is never used.
  """

  def __init__(self) -> None:
    super().__init__()
    generator = torch.Generator().manual_seed(0)

    def param(*shape: int, scale: float = 1.0) -> torch.nn.Parameter:
      values = scale * torch.randn(*shape, generator=generator)
      return torch.nn.Parameter(values)

    self.conv = param(4, 2, 3, 3, scale=0.3)
    self.norm_weight = param(4, scale=0.1)
    self.norm_bias = param(4, scale=0.1)
    self.embedding = param(10, 4)
    self.linear = param(3, 8, scale=0.5)
    self.linear_bias = param(3, scale=0.1)
    self.sometimes = param(3)
    self.frozen = param(3)
    self.frozen.requires_grad_(False)
    self.unused = param(5)

  def forward(
    self, images: torch.Tensor, tokens: torch.Tensor, use_extra: bool
  ) -> torch.Tensor:
    features = torch.nn.functional.conv2d(images, self.conv, padding=1)
    features = torch.nn.functional.group_norm(
      features, 2, 1 + self.norm_weight, self.norm_bias
    )
    pooled = features.mean(dim=(2, 3))
    embedded = self.embedding[tokens].mean(dim=1)
    hidden = torch.tanh(torch.cat([pooled, embedded], dim=1))
    logits = hidden @ self.linear.T + self.linear_bias + self.frozen
    return logits + self.sometimes if use_extra else logits


def _groups(model: SmallNet) -> list[dict]:
  """Three groups with different settings; the last mixes grad-less ones."""
  return [
    {'params': [model.conv, model.linear], 'weight_decay': 0.3},
    {
      'params': [model.norm_weight, model.norm_bias, model.linear_bias],
      'lr': 0.01,
      'betas': (0.95, 0.99),
      'weight_decay': 0.0,
    },
    {
      'params': [model.embedding, model.sometimes, model.frozen, model.unused],
      'lr': 0.05,
      'warmup_steps': 4,
      'r': 0.0,
    },
  ]


def _make(dtype: torch.dtype, path: str, store_x0: bool = False):
  model = SmallNet().to(dtype)
  optimizer = ScheduleFreeAdamWV1(
    _groups(model),
    lr=0.02,
    betas=(0.9, 0.9955159689799007),
    weight_decay=0.08,
    warmup_steps=WARMUP_STEPS,
    r=0.75,
    store_x0_on_cpu=store_x0,
    **PATHS[path],
  )
  return model, optimizer


def _step(model, optimizer, index: int) -> dict[str, torch.Tensor]:
  """One step on batch `index`; returns the y the closure saw."""
  generator = torch.Generator().manual_seed(100 + index)
  dtype = model.conv.dtype
  images = torch.randn(6, 2, 5, 5, generator=generator).to(dtype)
  tokens = torch.randint(0, 10, (6, 3), generator=generator)
  labels = torch.randint(0, 3, (6,), generator=generator)
  seen = {}

  def closure():
    optimizer.zero_grad()
    seen.update({n: p.detach().clone() for n, p in model.named_parameters()})
    logits = model(images, tokens, use_extra=index % 2 == 0)
    loss = torch.nn.functional.cross_entropy(logits, labels)
    loss.backward()
    return loss

  optimizer.step(closure)
  return seen


def _assert_same_state(model_a, optimizer_a, model_b, optimizer_b) -> None:
  for (name, param_a), param_b in zip(
    model_a.named_parameters(), model_b.parameters(), strict=True
  ):
    assert torch.equal(param_a, param_b), name
    state_a, state_b = optimizer_a.state[param_a], optimizer_b.state[param_b]
    assert state_a.keys() == state_b.keys(), name
    for key, value in state_a.items():
      assert value.dtype == state_b[key].dtype, (name, key)
      assert torch.equal(value, state_b[key]), (name, key)
  for group_a, group_b in zip(
    optimizer_a.param_groups, optimizer_b.param_groups, strict=True
  ):
    for key in ('k', 'lr_max', 'weight_sum'):
      assert group_a[key] == group_b[key], key


@pytest.mark.parametrize('path', ['foreach', 'kernel'])
@pytest.mark.parametrize('dtype', sorted(DTYPES))
def test_fast_paths_match_the_loop_bit_for_bit(dtype, path):
  loop_model, loop = _make(DTYPES[dtype], 'loop')
  fast_model, fast = _make(DTYPES[dtype], path)
  assert not loop.uses_foreach and fast.uses_foreach is (path == 'foreach')

  for index in range(NUM_STEPS):
    loop_y = _step(loop_model, loop, index)
    fast_y = _step(fast_model, fast, index)
    for name, value in loop_y.items():
      assert torch.equal(value, fast_y[name]), (index, name)
    _assert_same_state(loop_model, loop, fast_model, fast)

  # The run went through warmup and moved every parameter with a gradient,
  # while the gradient-less ones kept their initial values (z = x0).
  assert NUM_STEPS > 2 * WARMUP_STEPS
  assert all(group['k'] == NUM_STEPS for group in fast.param_groups)
  initial = SmallNet().to(DTYPES[dtype])
  for name in ('conv', 'norm_bias', 'embedding', 'sometimes'):
    moved = getattr(fast_model, name) - getattr(initial, name)
    assert moved.abs().max() > 1e-3, name
  for name in ('frozen', 'unused'):
    assert torch.equal(getattr(fast_model, name), getattr(initial, name))
    assert fast_model.unused.grad is None


@pytest.mark.parametrize(
  ('saved_by', 'resumed_by'),
  [('loop', 'foreach'), ('foreach', 'kernel'), ('kernel', 'loop')],
)
def test_state_dict_moves_between_paths(saved_by, resumed_by):
  model, optimizer = _make(torch.float32, saved_by)
  for index in range(15):
    _step(model, optimizer, index)
  saved_optimizer = copy.deepcopy(optimizer.state_dict())
  saved_model = copy.deepcopy(model.state_dict())
  assert all(
    'foreach' not in group and 'fused' not in group
    for group in saved_optimizer['param_groups']
  )

  resumed_model, resumed = _make(torch.float32, resumed_by)
  resumed_model.load_state_dict(saved_model)
  resumed.load_state_dict(saved_optimizer)
  # The path is not state.
  assert (resumed.foreach, resumed.fused) == tuple(PATHS[resumed_by].values())
  for index in range(15, 30):
    _step(model, optimizer, index)
    _step(resumed_model, resumed, index)
  _assert_same_state(model, optimizer, resumed_model, resumed)


def test_reset_gives_the_same_run_on_every_path():
  runs = []
  for path in PATHS:
    model, optimizer = _make(torch.float32, path, store_x0=True)
    for index in range(8):
      _step(model, optimizer, index)
    optimizer.reset()
    for index in range(8, 14):
      _step(model, optimizer, index)
    runs.append((model, optimizer))
  for other in runs[1:]:
    _assert_same_state(*runs[0], *other)
    assert all(
      state['x0'].device.type == 'cpu' for state in other[1].state.values()
    )


@pytest.mark.parametrize('beta2', [0.99, 0.9955159689799007])
def test_bf16_second_moment_rounds_alike_for_every_bf16_value(beta2):
  # Every positive finite bf16 value as v, through one update of each path
  # (the CPU kernel included):
  # a single differently rounded op would show. (A bf16 list times a Python
  # scalar, which rounds beta2 to bf16, differs here at 14488 values for
  # beta2 = 0.99 and only at 17 subnormal ones for the published value.)
  bits = torch.arange(0, 0x7F80, dtype=torch.int32).to(torch.int16)
  v = bits.view(torch.bfloat16).clone()
  grad = torch.linspace(-3e-2, 3e-2, v.numel())
  scalars = schedule_free_v1._UpdateScalars(
    back_to_x=1 - 1 / 0.9,
    beta2=beta2,
    one_minus_beta2=1 - beta2,
    eps=1e-8,
    minus_step_size=-1e-3,
    decay=1e-4,
    averaging_weight=0.1,
  )
  kernel = cpu_kernel.load_kernel(schedule_free_v1._reference_step)
  assert kernel is not None

  def update_with_kernel(state, params, scalars):
    (param,) = params
    kernel.update_(
      [param],
      [state[param]['z']],
      [param.grad],
      [state[param]['exp_avg_sq']],
      scalars,
    )

  results = []
  for update in (
    schedule_free_v1._update_loop,
    schedule_free_v1._update_foreach,
    update_with_kernel,
  ):
    param = torch.nn.Parameter(torch.linspace(-1, 1, v.numel()))
    param.grad = grad
    state = {param: {'z': param.detach() * 0.5, 'exp_avg_sq': v.clone()}}
    with torch.no_grad():
      update(state, [param], scalars)
    results.append(
      (param.detach(), state[param]['z'], state[param]['exp_avg_sq'])
    )
  for other in results[1:]:
    for loop_tensor, other_tensor in zip(results[0], other, strict=True):
      assert torch.equal(loop_tensor, other_tensor)


def test_mixed_dtypes_and_layouts_in_one_group():
  # The kernel takes the contiguous float32 tensors; the float64 one and the
  # transposed (non-contiguous) one go through the torch ops.
  def make(path):
    params = [
      torch.nn.Parameter(torch.linspace(-1, 1, 7)),
      torch.nn.Parameter(torch.linspace(-2, 1, 5, dtype=torch.float64)),
      torch.nn.Parameter(torch.linspace(0, 1, 3)),
      torch.nn.Parameter(torch.linspace(-1, 2, 12).reshape(3, 4).T),
    ]
    return params, ScheduleFreeAdamWV1(params, lr=0.1, **PATHS[path])

  runs = [make(path) for path in PATHS]
  assert not runs[0][0][3].is_contiguous()
  for index in range(5):
    for params, optimizer in runs:

      def closure(params=params, optimizer=optimizer, index=index):
        optimizer.zero_grad()
        loss = sum((p * (index + 1)).sin().sum() for p in params[:2])
        loss = loss + (params[3] * params[3].T.sum()).cos().sum()
        loss.backward()
        return loss

      optimizer.step(closure)
  for other_params, _ in runs[1:]:
    for loop_param, other_param in zip(runs[0][0], other_params, strict=True):
      assert other_param.dtype == loop_param.dtype
      assert torch.equal(loop_param, other_param)


def test_default_is_foreach_and_the_flag_selects_the_path(monkeypatch):
  model = torch.nn.Linear(3, 2)
  # CPU has no fused foreach kernels, so the default there is the loop for
  # what the CPU kernel does not take.
  assert not ScheduleFreeAdamWV1(model.parameters()).uses_foreach
  calls = []
  real = torch._foreach_addcdiv_

  def counting(*args, **kwargs):
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(torch, '_foreach_addcdiv_', counting)
  for foreach, expected_calls in ((False, 0), (True, 1)):
    calls.clear()
    optimizer = ScheduleFreeAdamWV1(
      model.parameters(), foreach=foreach, fused=False
    )

    def closure(optimizer=optimizer):
      optimizer.zero_grad()
      loss = model(torch.ones(4, 3)).square().sum()
      loss.backward()
      return loss

    optimizer.step(closure)
    assert len(calls) == expected_calls
