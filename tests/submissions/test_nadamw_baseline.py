"""The NAdamW self-tuning baseline: optimizer math, schedule, batch sizes."""

import math

import numpy as np
import pytest
import torch

from submissions.self_tuning.nadamw_baseline import submission as baseline


def _reference_nadamw(params, grads, lr, beta1, beta2, eps, weight_decay):
  """Float64 NumPy NAdamW over a list of per-step gradients."""
  x = params.copy()
  m = np.zeros_like(x)
  v = np.zeros_like(x)
  for t, g in enumerate(grads, start=1):
    x = x * (1 - lr * weight_decay)
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = (beta1 * m + (1 - beta1) * g) / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    x = x - lr * m_hat / (np.sqrt(v_hat) + eps)
  return x


def test_nadamw_matches_float64_reference():
  rng = np.random.default_rng(0)
  start = rng.normal(size=(5, 3))
  grads = [rng.normal(size=(5, 3)) for _ in range(6)]
  hp = baseline.HPARAMS
  beta1 = 1 - hp.one_minus_beta1
  lr = 0.01

  param = torch.nn.Parameter(torch.tensor(start, dtype=torch.float64))
  optimizer = baseline.NAdamW(
    [param],
    lr=lr,
    betas=(beta1, hp.beta2),
    eps=baseline.EPS,
    weight_decay=hp.weight_decay,
  )
  for g in grads:
    param.grad = torch.tensor(g)
    optimizer.step()

  expected = _reference_nadamw(
    start, grads, lr, beta1, hp.beta2, baseline.EPS, hp.weight_decay
  )
  np.testing.assert_allclose(param.detach().numpy(), expected, atol=1e-12)
  # The moment is the plain EMA, not the Nesterov look-ahead.
  ema = np.zeros_like(start)
  for g in grads:
    ema = beta1 * ema + (1 - beta1) * g
  np.testing.assert_allclose(
    optimizer.state[param]['exp_avg'].numpy(), ema, atol=1e-12
  )


def test_nadamw_lr_zero_leaves_params():
  param = torch.nn.Parameter(torch.ones(4))
  optimizer = baseline.NAdamW([param], lr=0.0, weight_decay=0.1)
  param.grad = torch.ones(4)
  optimizer.step()
  assert torch.equal(param.detach(), torch.ones(4))


def test_warmup_then_cosine():
  step_hint, factor = 1000, 0.02
  warmup = int(factor * step_hint)  # 20
  values = [
    baseline.warmup_cosine_factor(s, step_hint, factor) for s in range(1001)
  ]
  assert values[0] == pytest.approx(baseline.WARMUP_START_FACTOR)
  assert values[10] == pytest.approx(0.5)
  assert values[warmup] == pytest.approx(1.0)
  middle = warmup + (step_hint - warmup) // 2
  assert values[middle] == pytest.approx(0.5)
  assert values[step_hint] == pytest.approx(0.0, abs=1e-12)
  assert all(np.diff(values[: warmup + 1]) > 0)
  assert all(np.diff(values[warmup:]) <= 0)
  expected = 0.5 * (1 + math.cos(math.pi * 100 / (step_hint - warmup)))
  assert values[warmup + 100] == pytest.approx(expected)


def test_schedule_drives_optimizer_and_checkpoints():
  param = torch.nn.Parameter(torch.zeros(2))
  optimizer = baseline.NAdamW([param], lr=1.0)
  schedule = baseline.WarmupCosineSchedule(optimizer, 2.0, 100, 0.1)
  for _ in range(10):
    schedule.step()
  assert optimizer.param_groups[0]['lr'] == pytest.approx(2.0)
  state = schedule.state_dict()
  restored = baseline.WarmupCosineSchedule(optimizer, 2.0, 100, 0.1)
  restored.load_state_dict(state)
  assert restored.step_count == 10
  assert optimizer.param_groups[0]['lr'] == pytest.approx(2.0)


def test_batch_sizes():
  assert baseline.get_batch_size('mnist') == 16
  assert baseline.get_batch_size('criteo1tb') == 262_144
  assert baseline.get_batch_size('imagenet_resnet_silu') == 512
  with pytest.raises(ValueError):
    baseline.get_batch_size('digits')
  with pytest.raises(ValueError):
    baseline.get_batch_size('imagenet_vit_glu')
