"""Tests of the 2024 externally tuned Schedule-Free AdamW submission module."""

import collections
import json
import os

import pytest
import torch

from sfperf.api import spec
from sfperf.optim import ScheduleFreeAdamWV1
from sfperf.runner import run
from sfperf.runner.loading import REPO_ROOT
from submissions.external_tuning.schedule_free_adamw import submission
from submissions.self_tuning.schedule_free_adamw import (
  submission as self_tuning,
)
from tests.submissions.test_schedule_free_adamw import TinyWorkload

SUBMISSION = 'submissions/external_tuning/schedule_free_adamw/submission.py'
SEARCH_SPACE = os.path.join(
  REPO_ROOT, 'tuning_search_spaces', 'schedule_free_adamw_external.json'
)

with open(SEARCH_SPACE, encoding='utf-8') as _f:
  PUBLISHED_POINTS = json.load(_f)


def _hparams(**overrides):
  point = dict(PUBLISHED_POINTS[0], **overrides)
  point = {name: value for name, value in point.items() if value is not None}
  return collections.namedtuple('Hyperparameters', list(point))(**point)


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
  generator = torch.Generator().manual_seed(seed)
  return {
    'inputs': torch.randn(16, 6, generator=generator),
    'targets': torch.randint(0, 4, (16,), generator=generator),
  }


def _setup(hyperparameters, step_hint=1000, workload_class=TinyWorkload):
  workload = workload_class('accuracy', step_hint)
  model, model_state = workload.init_model_fn(0)
  optimizer_state = submission.init_optimizer_state(
    workload, model, model_state, hyperparameters, None
  )
  return workload, model, optimizer_state


def _update(workload, model, optimizer_state, hyperparameters, **kwargs):
  kwargs.setdefault('eval_results', [])
  kwargs.setdefault('global_step', 0)
  return submission.update_params(
    workload=workload,
    current_param_container=model,
    current_params_types=workload.model_params_types,
    model_state=None,
    hyperparameters=hyperparameters,
    batch=_batch(kwargs['global_step']),
    loss_type=workload.loss_type,
    optimizer_state=optimizer_state,
    rng=None,
    **kwargs,
  )


# --- settings ---------------------------------------------------------------


def test_batch_sizes_are_the_self_tuning_table():
  names = [
    'criteo1tb',
    'fastmri',
    'imagenet_resnet',
    'imagenet_vit',
    'librispeech_conformer',
    'librispeech_deepspeech',
    'ogbg',
    'wmt',
    'mnist',
    'imagenet_resnet_gelu',
    'imagenet_resnet_silu',
  ]
  for name in names:
    assert submission.get_batch_size(name) == self_tuning.get_batch_size(name)
  assert submission.get_batch_size('mnist') == 16
  with pytest.raises(ValueError, match="'digits'"):
    submission.get_batch_size('digits')


@pytest.mark.parametrize(
  ('step_hint', 'warmup'),
  # v0.5 step hints: criteo, fastmri, resnet/vit, conformer/ogbg,
  # deepspeech, wmt. 2% of the hint, rounded down, no 0.75 factor.
  [
    (10_666, 213),
    (36_189, 723),
    (186_666, 3733),
    (80_000, 1600),
    (48_000, 960),
    (133_333, 2666),
  ],
)
def test_warmup_is_two_percent_of_the_step_hint(step_hint, warmup):
  assert submission.warmup_steps_for(_hparams(), step_hint) == warmup


def test_init_optimizer_state_takes_the_trials_hyperparameters():
  hyperparameters = _hparams(
    learning_rate=0.005, beta2=0.62918, one_minus_beta1=0.2
  )
  _, _, optimizer_state = _setup(hyperparameters, step_hint=36_189)
  # Nothing for a reset: the optimizer is all the state there is.
  assert list(optimizer_state) == ['optimizer']
  optimizer = optimizer_state['optimizer']
  assert isinstance(optimizer, ScheduleFreeAdamWV1)
  assert not optimizer.store_x0_on_cpu
  (group,) = optimizer.param_groups
  assert group['lr'] == 0.005
  assert group['betas'] == (0.8, 0.62918)
  assert group['weight_decay'] == 0.08
  assert group['warmup_steps'] == 723
  assert group['eps'] == 1e-8
  # The published class's defaults, which the entry does not override.
  assert group['r'] == 0.75
  assert group['weight_lr_power'] == 2


def test_steps_average_with_r_three_quarters_and_keep_no_x0():
  hyperparameters = _hparams(learning_rate=0.004, warmup_factor=0.02)
  workload, model, optimizer_state = _setup(hyperparameters, step_hint=150)
  for step in range(3):
    _update(workload, model, optimizer_state, hyperparameters, global_step=step)
  optimizer = optimizer_state['optimizer']
  (group,) = optimizer.param_groups
  # Warmup of int(0.02 * 150) = 3 steps: lr_k = 0.004 (k + 1) / 3.
  expected = sum((k + 1) ** 0.75 * (0.004 * (k + 1) / 3) ** 2 for k in range(3))
  assert group['k'] == 3
  assert group['weight_sum'] == pytest.approx(expected, rel=1e-12)
  for param in model.parameters():
    state = optimizer.state[param]
    assert 'x0' not in state
    assert state['exp_avg_sq'].dtype == torch.bfloat16


def test_no_divergence_reset():
  hyperparameters = _hparams()
  workload, model, optimizer_state = _setup(hyperparameters, step_hint=20)
  # Flat evals well past 10% of the step hint: the self-tuning entry would
  # reset and halve the learning rate here.
  flat = [(step, {'validation/accuracy': 0.25}) for step in range(6)]
  for step in range(10, 14):
    _update(
      workload,
      model,
      optimizer_state,
      hyperparameters,
      eval_results=flat[: step - 8],
      global_step=step,
    )
  (group,) = optimizer_state['optimizer'].param_groups
  assert group['lr'] == hyperparameters.learning_rate
  assert group['k'] == 4
  assert list(optimizer_state) == ['optimizer']


# --- the calls into the workload --------------------------------------------


@pytest.mark.parametrize(
  ('overrides', 'dropout', 'smoothing'),
  [
    ({}, 0.1, 0.4),
    ({'dropout_rate': 0.0, 'label_smoothing': 0.2}, 0.0, 0.2),
    # Points without these names: workload default dropout, no smoothing.
    ({'dropout_rate': None, 'label_smoothing': None}, None, 0.0),
  ],
)
def test_dropout_and_label_smoothing_come_from_the_trial(
  overrides, dropout, smoothing
):
  hyperparameters = _hparams(**overrides)
  workload, model, optimizer_state = _setup(hyperparameters)
  _update(workload, model, optimizer_state, hyperparameters)
  (model_call,) = workload.model_calls
  assert model_call['dropout_rate'] == dropout
  assert model_call['mode'] == spec.ForwardPassMode.TRAIN
  assert model_call['update_batch_norm'] is True
  (loss_call,) = workload.loss_calls
  assert loss_call['label_smoothing'] == smoothing


class V05Workload(TinyWorkload):
  """A workload whose model_fn has the v0.5 signature (no dropout_rate)."""

  def model_fn(
    self,
    params,
    augmented_and_preprocessed_input_batch,
    model_state,
    mode,
    rng,
    update_batch_norm,
  ):
    return super().model_fn(
      params,
      augmented_and_preprocessed_input_batch,
      model_state,
      mode,
      rng,
      update_batch_norm,
    )


def test_a_v05_model_fn_gets_no_dropout_argument():
  hyperparameters = _hparams()
  workload, model, optimizer_state = _setup(
    hyperparameters, workload_class=V05Workload
  )
  _update(workload, model, optimizer_state, hyperparameters)
  assert [call['dropout_rate'] for call in workload.model_calls] == [None]
  assert submission.model_fn_takes_dropout(TinyWorkload)
  assert not submission.model_fn_takes_dropout(V05Workload)


def test_update_params_leaves_x_in_the_model():
  hyperparameters = _hparams()
  workload, model, optimizer_state = _setup(hyperparameters, step_hint=100)
  before = {n: p.detach().clone() for n, p in model.named_parameters()}
  _update(workload, model, optimizer_state, hyperparameters)
  optimizer = optimizer_state['optimizer']
  # After the first step x_1 = (1 - c_0) x_0 + c_0 z_1 with c_0 = 1, so the
  # model holds z_1, not y (which the forward pass saw).
  y_seen = workload.model_calls[0]['params']
  for name, param in model.named_parameters():
    z = optimizer.state[param]['z']
    torch.testing.assert_close(param.detach(), z, rtol=0, atol=1e-7)
    torch.testing.assert_close(y_seen[name], before[name])


# --- end to end -------------------------------------------------------------


def test_runs_the_published_space_on_digits(tmp_path):
  results = run(
    SUBMISSION,
    'digits',
    experiment_dir=str(tmp_path),
    experiment_name='exp',
    tuning_search_space=SEARCH_SPACE,
    num_tuning_trials=2,
    rng_seed=0,
    max_global_steps=3,
    save_checkpoints=False,
  )
  assert [r.trial_index for r in results] == [1, 2]
  assert [r.global_step for r in results] == [3, 3]
  workload_dir = tmp_path / 'exp' / 'digits_pytorch'
  assert sorted(os.listdir(workload_dir)) == ['trial_1', 'trial_2']
  for index, point in enumerate(PUBLISHED_POINTS[:2]):
    hparams = workload_dir / f'trial_{index + 1}' / 'hparams.json'
    assert json.loads(hparams.read_text()) == point
    assert list(json.loads(hparams.read_text())) == list(point)
    assert results[index].hyperparameters == point
