"""Tests of ScheduleFreeAdamWV1 against a float64 reference of its formulas.

The reference below is written from the published update rule, step by step
in float64 NumPy. It mirrors the one place where the entry's precision is
part of the algorithm: v is stored in bfloat16, so the reference rounds v to
bfloat16 after each of the two in-place operations that update it (the
decay by beta2, then the addition of (1 - beta2) g^2), and rounds sqrt(v)
and sqrt(v) + eps likewise, as the optimizer's bf16 tensor ops do.

To keep the comparison about the optimizer and not about the model's float32
forward pass, the reference consumes the gradients the optimizer's closure
saw; it checks independently that the closure saw the reference's y.
"""

import copy
from typing import NamedTuple

import numpy as np
import pytest
import torch

from sfperf.optim import ScheduleFreeAdamWV1, step_coefficients

NUM_STEPS = 60

# Absolute tolerances on x, y and z by parameter dtype. In float32 the
# parameters and z (values up to about 4) are rounded several times a step,
# each time by up to half a float32 unit (1.2e-7 at 2..4): over 60 steps about
# 1e-6 in practice (1.6e-6 measured), 2e-5 only if every rounding went the
# same way; updates below half a unit (the eps-sized steps of lr = 0) are
# lost altogether. In float64 only v is rounded (to bf16, mirrored by the
# reference), so what remains is float64 roundoff (2e-15 measured). A bf16
# rounding of v that lands differently in float32 than in float64 would cost
# up to step_size * 2^-8 * |g| / sqrt(v) once; none occurs in these runs (v
# is compared too).
ATOL = {torch.float32: 1e-5, torch.float64: 1e-12}


class Hparams(NamedTuple):
  lr: float
  beta1: float
  beta2: float
  eps: float
  weight_decay: float
  warmup_steps: int
  r: float
  weight_lr_power: float


# Large lr and decay so that a wrong rule is far outside ATOL.
STRONG = Hparams(
  lr=0.02,
  beta1=0.9,
  beta2=0.99,
  eps=1e-8,
  weight_decay=0.5,
  warmup_steps=20,
  r=0.75,
  weight_lr_power=2.0,
)
# The 2024 self-tuning entry's values, with a short warmup.
PUBLISHED = Hparams(
  lr=0.0025,
  beta1=0.9,
  beta2=0.9955159689799007,
  eps=1e-8,
  weight_decay=0.08121616522670176,
  warmup_steps=20,
  r=0.75,
  weight_lr_power=2.0,
)
ZERO_LR = STRONG._replace(lr=0.0)


class TinyNet(torch.nn.Module):
  """Several tensors; `sometimes` gets a gradient on even steps only and
  `unused` never does."""

  def __init__(self) -> None:
    super().__init__()
    generator = torch.Generator().manual_seed(0)
    self.w1 = torch.nn.Parameter(torch.randn(8, 5, generator=generator))
    self.b1 = torch.nn.Parameter(0.1 * torch.randn(8, generator=generator))
    self.w2 = torch.nn.Parameter(0.5 * torch.randn(3, 8, generator=generator))
    self.b2 = torch.nn.Parameter(torch.zeros(3))
    self.sometimes = torch.nn.Parameter(torch.randn(3, generator=generator))
    self.unused = torch.nn.Parameter(torch.randn(4, generator=generator))

  def forward(self, inputs: torch.Tensor, use_extra: bool) -> torch.Tensor:
    hidden = torch.tanh(inputs @ self.w1.T + self.b1)
    logits = hidden @ self.w2.T + self.b2
    return logits + self.sometimes if use_extra else logits


def _batch(
  step: int, dtype: torch.dtype = torch.float32
) -> tuple[torch.Tensor, torch.Tensor]:
  generator = torch.Generator().manual_seed(1000 + step)
  inputs = torch.randn(16, 5, generator=generator)
  labels = torch.randint(0, 3, (16,), generator=generator)
  return inputs.to(dtype), labels


def _numpy(params: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
  return {n: p.detach().double().numpy().copy() for n, p in params.items()}


class Run(NamedTuple):
  initial: dict[str, np.ndarray]
  ys: list[dict[str, np.ndarray]]  # parameters as the closure saw them
  grads: list[dict[str, np.ndarray | None]]
  final: dict[str, np.ndarray]  # parameters after the last step (x)
  z: dict[str, np.ndarray]
  v: dict[str, np.ndarray]
  optimizer: ScheduleFreeAdamWV1


def _run_optimizer(
  hp: Hparams, dtype: torch.dtype, num_steps: int = NUM_STEPS
) -> Run:
  model = TinyNet().to(dtype)
  params = dict(model.named_parameters())
  initial = _numpy(params)
  optimizer = ScheduleFreeAdamWV1(
    model.parameters(),
    lr=hp.lr,
    betas=(hp.beta1, hp.beta2),
    eps=hp.eps,
    weight_decay=hp.weight_decay,
    warmup_steps=hp.warmup_steps,
    r=hp.r,
    weight_lr_power=hp.weight_lr_power,
  )
  ys, grads = [], []
  for step in range(num_steps):
    inputs, labels = _batch(step, dtype)

    def closure(inputs=inputs, labels=labels, step=step):
      optimizer.zero_grad()
      ys.append(_numpy(params))
      logits = model(inputs, use_extra=step % 2 == 0)
      loss = torch.nn.functional.cross_entropy(logits, labels)
      loss.backward()
      grads.append(
        {
          n: None if p.grad is None else p.grad.double().numpy().copy()
          for n, p in params.items()
        }
      )
      return loss

    optimizer.step(closure)
  states = {n: optimizer.state[p] for n, p in params.items()}
  return Run(
    initial=initial,
    ys=ys,
    grads=grads,
    final=_numpy(params),
    z={n: s['z'].double().numpy() for n, s in states.items()},
    v={n: s['exp_avg_sq'].double().numpy() for n, s in states.items()},
    optimizer=optimizer,
  )


def _bf16(values: np.ndarray) -> np.ndarray:
  return torch.from_numpy(values).to(torch.bfloat16).double().numpy()


def reference(
  hp: Hparams,
  initial: dict[str, np.ndarray],
  grads: list[dict[str, np.ndarray | None]],
  *,
  decay_at: str = 'x',
  bf16_v: bool = True,
):
  """The published update, float64; returns (x, z, v, ys)."""
  x = {n: a.copy() for n, a in initial.items()}
  z = {n: a.copy() for n, a in initial.items()}
  v = {n: np.zeros_like(a) for n, a in initial.items()}
  lr_max, weight_sum, ys = 0.0, 0.0, []
  for k, step_grads in enumerate(grads):
    y = {n: hp.beta1 * x[n] + (1 - hp.beta1) * z[n] for n in x}
    ys.append(y)
    warmup = min(1.0, (k + 1) / hp.warmup_steps) if hp.warmup_steps else 1.0
    lr = max(hp.lr * warmup, hp.eps)
    lr_max = max(lr_max, lr)
    weight = (k + 1) ** hp.r * lr_max**hp.weight_lr_power
    weight_sum += weight
    c = weight / weight_sum
    step_size = lr * np.sqrt(1 - hp.beta2 ** (k + 1))
    for n, g in step_grads.items():
      if g is None:
        x[n] = y[n]  # the entry leaves a gradient-less parameter at y
        continue
      if bf16_v:
        v[n] = _bf16(_bf16(hp.beta2 * v[n]) + (1 - hp.beta2) * g * g)
        denominator = _bf16(_bf16(np.sqrt(v[n])) + hp.eps)
      else:
        v[n] = hp.beta2 * v[n] + (1 - hp.beta2) * g * g
        denominator = np.sqrt(v[n]) + hp.eps
      decay_point = x[n] if decay_at == 'x' else y[n]
      z[n] = (
        z[n]
        - step_size * g / denominator
        - step_size * hp.weight_decay * decay_point
      )
      x[n] = (1 - c) * x[n] + c * z[n]
  return x, z, v, ys


def _max_error(
  got: dict[str, np.ndarray], want: dict[str, np.ndarray]
) -> float:
  return max(float(np.max(np.abs(got[n] - want[n]))) for n in want)


def _errors(run: Run, ref) -> dict[str, float]:
  x, z, _, ys = ref
  return {
    'x': _max_error(run.final, x),
    'z': _max_error(run.z, z),
    'y': max(
      _max_error(got, want) for got, want in zip(run.ys, ys, strict=True)
    ),
  }


HPARAMS_BY_NAME = {'strong': STRONG, 'published': PUBLISHED, 'zero_lr': ZERO_LR}
DTYPES = {'float32': torch.float32, 'float64': torch.float64}
RUN_KEYS = [(h, d) for h in HPARAMS_BY_NAME for d in DTYPES]


@pytest.fixture(scope='module')
def runs() -> dict[tuple[str, str], Run]:
  return {
    (h, d): _run_optimizer(HPARAMS_BY_NAME[h], DTYPES[d]) for h, d in RUN_KEYS
  }


@pytest.mark.parametrize('key', RUN_KEYS, ids=['-'.join(k) for k in RUN_KEYS])
def test_matches_float64_reference(runs, key):
  run = runs[key]
  ref = reference(HPARAMS_BY_NAME[key[0]], run.initial, run.grads)
  errors = _errors(run, ref)
  assert max(errors.values()) < ATOL[DTYPES[key[1]]], errors

  # v: the same bf16 values up to one bf16 unit where a rounding flipped.
  for n, v_ref in ref[2].items():
    np.testing.assert_allclose(run.v[n], v_ref, rtol=2**-7, atol=0)


def test_run_covers_warmup_and_gradient_less_parameters(runs):
  run = runs['strong', 'float32']
  assert NUM_STEPS >= 50 and STRONG.warmup_steps < NUM_STEPS
  assert run.optimizer.param_groups[0]['k'] == NUM_STEPS
  assert all(g['unused'] is None for g in run.grads)
  assert run.grads[0]['sometimes'] is not None
  assert run.grads[1]['sometimes'] is None
  # `unused` never had a gradient and z = x0 for it, so it never moved.
  np.testing.assert_array_equal(run.final['unused'], run.initial['unused'])
  # `sometimes` was left at y after its last (gradient-less) step: y != x.
  last_y = run.ys[-1]['sometimes']
  np.testing.assert_array_equal(run.final['sometimes'], last_y)
  for n in ('w1', 'b1', 'w2', 'b2'):
    assert np.max(np.abs(run.final[n] - run.initial[n])) > 0.05


MUTATIONS = {
  'decay_at_y': {'decay_at': 'y'},
  'float_v': {'bf16_v': False},
  'r_zero': {'r': 0.0},
}
# float32 with strong settings, and float64 with the published ones, where
# the smaller effects of the mutations are still far above roundoff.
MUTATED_RUNS = [('strong', 'float32'), ('published', 'float64')]


@pytest.mark.parametrize('key', MUTATED_RUNS, ids='-'.join)
@pytest.mark.parametrize('mutation', sorted(MUTATIONS))
def test_reference_with_a_different_rule_does_not_match(runs, key, mutation):
  run = runs[key]
  hp = HPARAMS_BY_NAME[key[0]]
  options = dict(MUTATIONS[mutation])
  if 'r' in options:
    hp = hp._replace(r=options.pop('r'))
  errors = _errors(run, reference(hp, run.initial, run.grads, **options))
  assert max(errors.values()) > 10 * ATOL[DTYPES[key[1]]], errors


@pytest.mark.parametrize('dtype', sorted(DTYPES))
def test_zero_lr_moves_parameters_only_by_the_eps_floor(runs, dtype):
  run = runs['zero_lr', dtype]
  group = run.optimizer.param_groups[0]
  # The entry floors the scheduled lr at eps, so the weights stay positive.
  assert group['lr_max'] == STRONG.eps
  assert group['weight_sum'] > 0.0
  # |step| <= eps * |g| / sqrt(v) <= eps / sqrt(1 - beta2) per step, plus
  # the decay term, which is far smaller.
  bound = NUM_STEPS * STRONG.eps / np.sqrt(1 - STRONG.beta2) * 1.01
  for n, before in run.initial.items():
    assert np.max(np.abs(run.final[n] - before)) <= bound


def test_zero_lr_without_warmup_keeps_parameters_bit_identical_on_step_one():
  # At the first step c = 1 and z moves by eps-sized steps only: x = z, and
  # a float32 parameter of order 1 cannot represent a 1e-8 change.
  model = torch.nn.Linear(4, 2)
  with torch.no_grad():
    model.weight.fill_(1.0)
    model.bias.fill_(-1.0)
  optimizer = ScheduleFreeAdamWV1(model.parameters(), lr=0.0)

  def closure():
    optimizer.zero_grad()
    loss = model(torch.ones(3, 4)).square().mean()
    loss.backward()
    return loss

  optimizer.step(closure)
  assert torch.equal(model.weight, torch.ones(2, 4))
  assert torch.equal(model.bias, -torch.ones(2))


def test_step_coefficients_first_step_and_warmup():
  first = step_coefficients(
    k=0,
    lr=1.0,
    eps=1e-8,
    warmup_steps=4,
    beta2=0.99,
    r=0.75,
    weight_lr_power=2.0,
    lr_max=0.0,
    weight_sum=0.0,
  )
  assert first.lr == 0.25
  assert first.averaging_weight == 1.0
  assert first.step_size == pytest.approx(0.25 * np.sqrt(0.01), rel=1e-15)
  later = step_coefficients(
    k=9,
    lr=1.0,
    eps=1e-8,
    warmup_steps=4,
    beta2=0.99,
    r=0.75,
    weight_lr_power=2.0,
    lr_max=1.0,
    weight_sum=5.0,
  )
  assert later.lr == 1.0
  assert later.weight == pytest.approx(10**0.75, rel=1e-15)
  assert later.averaging_weight == pytest.approx(
    10**0.75 / (5.0 + 10**0.75), rel=1e-15
  )


def _make(store_x0: bool):
  model = TinyNet()
  optimizer = ScheduleFreeAdamWV1(
    model.parameters(),
    lr=0.05,
    betas=(0.9, 0.99),
    weight_decay=0.1,
    warmup_steps=3,
    r=0.75,
    store_x0_on_cpu=store_x0,
  )

  def step(index: int) -> None:
    inputs, labels = _batch(index)

    def closure():
      optimizer.zero_grad()
      logits = model(inputs, use_extra=True)
      loss = torch.nn.functional.cross_entropy(logits, labels)
      loss.backward()
      return loss

    optimizer.step(closure)

  return model, optimizer, step


def test_state_layout():
  model, optimizer, step = _make(store_x0=True)
  initial = copy.deepcopy(model.state_dict())
  step(0)
  for name, param in model.named_parameters():
    state = optimizer.state[param]
    assert set(state) == {'z', 'exp_avg_sq', 'x0'}
    assert state['z'].dtype == param.dtype
    assert state['exp_avg_sq'].dtype == torch.bfloat16
    assert state['x0'].device.type == 'cpu'
    assert torch.equal(state['x0'], initial[name])
    assert state['x0'].data_ptr() != param.data_ptr()
  group = optimizer.param_groups[0]
  assert group['k'] == 1 and group['lr_max'] > 0 and group['weight_sum'] > 0

  _, plain, plain_step = _make(store_x0=False)
  plain_step(0)
  assert all(set(s) == {'z', 'exp_avg_sq'} for s in plain.state.values())


def test_reset_restores_x0_and_zeroes_state():
  model, optimizer, step = _make(store_x0=True)
  initial = copy.deepcopy(model.state_dict())
  for index in range(5):
    step(index)
  assert not torch.equal(model.w1, initial['w1'])

  optimizer.reset()
  group = optimizer.param_groups[0]
  assert (group['k'], group['lr_max'], group['weight_sum']) == (0, 0.0, 0.0)
  assert group['lr'] == 0.05  # halving is the submission's business
  for name, param in model.named_parameters():
    state = optimizer.state[param]
    assert torch.equal(param, initial[name])
    assert torch.equal(state['z'], initial[name])
    assert not state['exp_avg_sq'].any()

  # After a reset the run repeats the first steps exactly.
  fresh_model, _, fresh_step = _make(store_x0=True)
  for index in range(3):
    step(index)
    fresh_step(index)
  for name, param in model.named_parameters():
    assert torch.equal(param, getattr(fresh_model, name))


def test_reset_needs_x0():
  _, optimizer, step = _make(store_x0=False)
  step(0)
  with pytest.raises(RuntimeError, match='store_x0_on_cpu'):
    optimizer.reset()


def test_step_needs_closure():
  optimizer = ScheduleFreeAdamWV1(torch.nn.Linear(2, 2).parameters())
  with pytest.raises(ValueError, match='closure'):
    optimizer.step(None)


def test_state_dict_round_trip_keeps_bf16_v_and_host_x0():
  model, optimizer, step = _make(store_x0=True)
  for index in range(3):
    step(index)
  saved = copy.deepcopy(optimizer.state_dict())
  saved_model = copy.deepcopy(model.state_dict())

  model_b, optimizer_b, step_b = _make(store_x0=True)
  model_b.load_state_dict(saved_model)
  optimizer_b.load_state_dict(saved)
  for param in model_b.parameters():
    assert optimizer_b.state[param]['exp_avg_sq'].dtype == torch.bfloat16
    assert optimizer_b.state[param]['x0'].device.type == 'cpu'
  step(3)
  step_b(3)
  for name, param in model.named_parameters():
    assert torch.equal(param, getattr(model_b, name))


@pytest.mark.parametrize(
  'kwargs',
  [{'betas': (0.0, 0.99)}, {'eps': 0.0}, {'lr': -1.0}, {'warmup_steps': -1}],
)
def test_rejects_bad_settings(kwargs):
  with pytest.raises(ValueError):
    ScheduleFreeAdamWV1(torch.nn.Linear(2, 2).parameters(), **kwargs)
