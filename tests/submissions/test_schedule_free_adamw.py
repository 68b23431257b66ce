"""Tests of the 2024 self-tuning Schedule-Free AdamW submission module."""

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from sfperf import torch_submission_utils
from sfperf.api import spec
from sfperf.optim import ScheduleFreeAdamWV1
from submissions.self_tuning.schedule_free_adamw import submission
from tests.tiny_workload import TinyWorkloadBase

MARGIN = submission.RESET_MARGIN
BELOW_MARGIN = math.nextafter(MARGIN, 0.0)


class TinyWorkload(TinyWorkloadBase):
  """A minimal PyTorch workload: a BatchNorm MLP on a fixed random batch.

  `model_fn` and `loss_fn` record how they were called.
  """

  def __init__(self, metric_name: str = 'accuracy', step_hint: int = 100):
    super().__init__(metric_name, step_hint)
    self.model_calls: list[dict[str, Any]] = []
    self.loss_calls: list[dict[str, Any]] = []

  def is_output_params(self, param_key) -> bool:
    return param_key.startswith('2.')

  def init_model_fn(self, rng):
    torch.manual_seed(int(rng))
    model = torch.nn.Sequential(
      torch.nn.Linear(6, 8),
      torch.nn.BatchNorm1d(8),
      torch.nn.Linear(8, 4),
    )
    self._param_shapes = {
      name: spec.ShapeTuple(tuple(p.shape))
      for name, p in model.named_parameters()
    }
    self._param_types = {
      name: spec.ParameterType.WEIGHT for name, _ in model.named_parameters()
    }
    return model, None

  def model_fn(
    self,
    params,
    augmented_and_preprocessed_input_batch,
    model_state,
    mode,
    rng,
    update_batch_norm,
    dropout_rate=None,
    **kwargs,
  ):
    self.model_calls.append(
      {
        'mode': mode,
        'update_batch_norm': update_batch_norm,
        'model_state': model_state,
        'dropout_rate': dropout_rate,
        'extra': kwargs,
        'params': {n: p.detach().clone() for n, p in params.named_parameters()},
      }
    )
    params.train(mode == spec.ForwardPassMode.TRAIN)
    logits = params(augmented_and_preprocessed_input_batch['inputs'])
    return logits, {'calls': len(self.model_calls)}

  def loss_fn(
    self, label_batch, logits_batch, mask_batch=None, label_smoothing=0.0
  ):
    self.loss_calls.append(
      {'mask': mask_batch, 'label_smoothing': label_smoothing}
    )
    per_example = F.cross_entropy(
      logits_batch,
      label_batch,
      reduction='none',
      label_smoothing=label_smoothing,
    )
    if mask_batch is None:
      mask_batch = torch.ones_like(per_example)
    per_example = per_example * mask_batch
    return {
      'summed': per_example.sum(),
      'n_valid_examples': mask_batch.sum(),
      'per_example': per_example,
    }

  def _eval_model_on_split(self, *args, **kwargs):
    raise NotImplementedError


def _batch(seed: int = 0) -> dict[str, torch.Tensor]:
  generator = torch.Generator().manual_seed(seed)
  weights = torch.ones(16)
  weights[-3:] = 0.0
  return {
    'inputs': torch.randn(16, 6, generator=generator),
    'targets': torch.randint(0, 4, (16,), generator=generator),
    'weights': weights,
  }


def _setup(metric_name: str = 'accuracy', step_hint: int = 100):
  workload = TinyWorkload(metric_name, step_hint)
  model, model_state = workload.init_model_fn(0)
  optimizer_state = submission.init_optimizer_state(
    workload, model, model_state, None, None
  )
  return workload, model, optimizer_state


def _update(workload, model, optimizer_state, eval_results, global_step, seed):
  return submission.update_params(
    workload=workload,
    current_param_container=model,
    current_params_types=workload.model_params_types,
    model_state=None,
    hyperparameters=None,
    batch=_batch(seed),
    loss_type=workload.loss_type,
    optimizer_state=optimizer_state,
    eval_results=eval_results,
    global_step=global_step,
    rng=None,
  )


def _evals(metric_name: str, values: list[float]):
  return [
    (step, {f'validation/{metric_name}': value, 'score': 0.0})
    for step, value in enumerate(values)
  ]


# --- batch sizes and settings ---------------------------------------------


@pytest.mark.parametrize(
  ('name', 'size'),
  [
    ('criteo1tb', 262_144),
    ('fastmri', 16),
    ('imagenet_resnet', 1024),
    ('imagenet_vit', 1024),
    ('librispeech_conformer', 224),
    ('librispeech_deepspeech', 128),
    ('ogbg', 512),
    ('wmt', 128),
    ('mnist', 16),
    ('imagenet_resnet_gelu', 512),
    ('imagenet_resnet_silu', 512),
  ],
)
def test_batch_sizes(name, size):
  assert submission.get_batch_size(name) == size


@pytest.mark.parametrize('name', ['imagenet_vit_glu', 'digits', ''])
def test_unknown_workload_raises_value_error(name):
  with pytest.raises(ValueError, match=repr(name)):
    submission.get_batch_size(name)


@pytest.mark.parametrize(
  ('step_hint', 'warmup'),
  [
    (10_666, 159),  # criteo1tb, v0.5
    (36_189, 542),  # fastmri
    (186_666, 2799),  # imagenet resnet and vit
    (80_000, 1200),  # conformer, ogbg
    (48_000, 720),  # deepspeech
    (133_333, 1999),  # wmt
  ],
)
def test_warmup_steps_match_the_published_table(step_hint, warmup):
  assert submission.warmup_steps_for(step_hint) == warmup


def test_init_optimizer_state():
  workload, model, optimizer_state = _setup(step_hint=10_000)
  optimizer = optimizer_state['optimizer']
  assert isinstance(optimizer, ScheduleFreeAdamWV1)
  assert optimizer.store_x0_on_cpu
  assert optimizer_state['reset_check']['max_checked_eval_step'] == -1
  assert optimizer_state['reset_check']['has_forced_reset'] is False
  # Every value is checkpointable as the official runner requires.
  assert set(optimizer_state) == {'optimizer', 'reset_check'}
  assert all(
    hasattr(value, 'state_dict') and hasattr(value, 'load_state_dict')
    for value in optimizer_state.values()
  )
  (group,) = optimizer.param_groups
  assert group['lr'] == 0.0025
  assert group['betas'] == (0.9, 0.9955159689799007)
  assert group['weight_decay'] == 0.08121616522670176
  assert group['warmup_steps'] == 150
  assert group['weight_lr_power'] == 2
  assert group['r'] == 0.75
  assert group['eps'] == 1e-8
  assert len(group['params']) == len(list(model.parameters()))


# --- the divergence rule ---------------------------------------------------

# Five evals [e0, e4, e3, e2, e1] (e1 newest) with exactly one of the four
# differences equal to MARGIN and the others zero.
AT_MARGIN = {
  'latest_vs_first': [0.0, MARGIN, MARGIN, MARGIN, MARGIN],
  'latest_vs_second': [MARGIN, 0.0, 0.0, 0.0, MARGIN],
  'second_vs_third': [MARGIN, 0.0, 0.0, MARGIN, MARGIN],
  'third_vs_fourth': [MARGIN, 0.0, MARGIN, MARGIN, MARGIN],
}
METRICS = [('accuracy', 1.0), ('loss', -1.0), ('wer', -1.0)]


def _oriented(values: list[float], sign: float) -> list[float]:
  """Values such that, oriented as 'higher is better', they are `values`."""
  return [sign * value for value in values]


@pytest.mark.parametrize(('metric', 'sign'), METRICS)
@pytest.mark.parametrize('case', sorted(AT_MARGIN))
def test_an_improvement_of_exactly_margin_does_not_fire(case, metric, sign):
  values = _oriented(AT_MARGIN[case], sign)
  assert not submission.looks_diverged(_evals(metric, values), metric)


@pytest.mark.parametrize(('metric', 'sign'), METRICS)
@pytest.mark.parametrize('case', sorted(AT_MARGIN))
def test_an_improvement_just_below_margin_fires(case, metric, sign):
  values = [BELOW_MARGIN if v == MARGIN else v for v in AT_MARGIN[case]]
  values = _oriented(values, sign)
  assert submission.looks_diverged(_evals(metric, values), metric)


def test_direction_of_the_metric():
  falling = [1.0, 0.9, 0.8, 0.7, 0.6]
  # Falling accuracy is getting worse; falling loss or WER is progress.
  assert submission.looks_diverged(_evals('accuracy', falling), 'accuracy')
  assert not submission.looks_diverged(_evals('loss', falling), 'loss')
  assert not submission.looks_diverged(_evals('wer', falling), 'wer')
  # Any other metric name is maximized, as in the entry.
  assert submission.looks_diverged(_evals('ssim', falling), 'ssim')
  rising = falling[::-1]
  assert submission.looks_diverged(_evals('loss', rising), 'loss')
  assert not submission.looks_diverged(_evals('accuracy', rising), 'accuracy')


def test_only_the_first_and_the_last_four_evals_count():
  # A big improvement in the middle that was lost again.
  values = [0.1, 0.9, 0.9, 0.1, 0.1, 0.1, 0.1]
  assert submission.looks_diverged(_evals('accuracy', values), 'accuracy')


def test_fewer_than_four_evals_never_fire():
  stuck = [0.1, 0.1, 0.1, 0.1]
  assert submission.looks_diverged(_evals('accuracy', stuck), 'accuracy')
  for count in range(4):
    evals = _evals('accuracy', stuck[:count])
    assert not submission.looks_diverged(evals, 'accuracy')


def test_nan_metric_never_fires():
  values = [0.1, 0.1, float('nan'), float('nan'), float('nan')]
  assert not submission.looks_diverged(_evals('accuracy', values), 'accuracy')


def test_should_reset_waits_for_ten_percent_of_the_step_hint():
  evals = _evals('accuracy', [0.1] * 4)
  # 0.10 * 1000 = 100 exactly: step 100 is not past it, step 101 is.
  assert submission.should_reset(evals, 'accuracy', 100, 1000, -1) == (
    False,
    -1,
  )
  assert submission.should_reset(evals, 'accuracy', 101, 1000, -1) == (
    True,
    4,
  )


def test_should_reset_needs_a_new_eval():
  evals = _evals('accuracy', [0.1] * 4)
  assert submission.should_reset(evals, 'accuracy', 500, 1000, 4) == (
    False,
    4,
  )
  assert submission.should_reset(evals, 'accuracy', 500, 1000, 3) == (
    True,
    4,
  )


def test_should_reset_consumes_evals_even_when_too_few():
  evals = _evals('accuracy', [0.1] * 3)
  assert submission.should_reset(evals, 'accuracy', 500, 1000, -1) == (
    False,
    3,
  )


# --- update_params on a real model ----------------------------------------


def test_update_params_calls_the_workload_as_the_entry():
  workload, model, optimizer_state = _setup()
  _, _, model_state = _update(workload, model, optimizer_state, [], 0, 0)

  (call,) = workload.model_calls
  assert call['mode'] == spec.ForwardPassMode.TRAIN
  assert call['update_batch_norm'] is True
  assert call['dropout_rate'] is None and not call['extra']
  (loss_call,) = workload.loss_calls
  assert loss_call['label_smoothing'] == 0.2
  assert torch.equal(loss_call['mask'], _batch(0)['weights'])
  assert model_state == {'calls': 1}


def test_update_params_leaves_x_in_the_model():
  workload, model, optimizer_state = _setup()
  optimizer = optimizer_state['optimizer']
  (group,) = optimizer.param_groups
  beta1 = group['betas'][0]
  params = dict(model.named_parameters())
  initial = {n: p.detach().clone() for n, p in params.items()}

  xs, zs = [], []
  for step in range(4):
    result = _update(workload, model, optimizer_state, [], step, step)
    assert result[0] is optimizer_state and result[1] is model
    xs.append({n: p.detach().clone() for n, p in params.items()})
    zs.append({n: optimizer.state[p]['z'].clone() for n, p in params.items()})

  for name, param in params.items():
    assert not torch.equal(param, initial[name])
    # The first step has c = 1, so x = z exactly.
    assert torch.equal(xs[0][name], zs[0][name])
  for step in range(1, 4):
    # The gradient was taken at y = lerp(x, z, 1 - beta1) of the previous
    # step's x (the model) and z (the optimizer state).
    seen = workload.model_calls[step]['params']
    for name in params:
      expected_y = torch.lerp(xs[step - 1][name], zs[step - 1][name], 1 - beta1)
      torch.testing.assert_close(seen[name], expected_y, rtol=0, atol=1e-7)
  # And the model holds x = lerp(x_prev, z, c) with c from the group state.
  k = group['k']
  c = k ** group['r'] * group['lr_max'] ** 2 / group['weight_sum']
  assert 0 < c < 1
  for name in params:
    expected_x = torch.lerp(xs[2][name], zs[3][name], c)
    torch.testing.assert_close(xs[3][name], expected_x, rtol=0, atol=1e-7)


def test_divergence_reset_restores_x0_and_halves_lr_each_time():
  workload, model, optimizer_state = _setup(step_hint=100)
  optimizer = optimizer_state['optimizer']
  (group,) = optimizer.param_groups
  initial_model = copy.deepcopy(model)
  for step in range(12):
    _update(workload, model, optimizer_state, [], step, step)
  running_mean_before = model[1].running_mean.clone()

  stuck = _evals('accuracy', [0.25] * 4)
  _, _, model_state = _update(workload, model, optimizer_state, stuck, 12, 99)
  assert optimizer_state['reset_check']['has_forced_reset'] is True
  assert optimizer_state['reset_check']['max_checked_eval_step'] == 4
  assert group['lr'] == 0.0025 / 2 and group['k'] == 1
  assert workload.model_calls[-1]['model_state'] is None
  assert model_state is not None
  # BatchNorm buffers live in the module; the entry does not reset them.
  assert not torch.equal(model[1].running_mean, initial_model[1].running_mean)
  assert not torch.equal(model[1].running_mean, running_mean_before)

  # The step after the reset is the first step of a fresh run from x0 with
  # half the lr.
  fresh_workload = TinyWorkload(step_hint=100)
  fresh_workload.init_model_fn(0)
  fresh_state = submission.init_optimizer_state(
    fresh_workload, initial_model, None, None, None
  )
  fresh_state['optimizer'].param_groups[0]['lr'] /= 2
  _update(fresh_workload, initial_model, fresh_state, [], 0, 99)
  for name, param in model.named_parameters():
    assert torch.equal(param, initial_model.get_parameter(name))

  # No new eval: no second reset.
  _update(workload, model, optimizer_state, stuck, 13, 13)
  assert group['lr'] == 0.0025 / 2 and group['k'] == 2

  # A new eval that is still stuck: reset again, lr halved again.
  stuck = _evals('accuracy', [0.25] * 5)
  _update(workload, model, optimizer_state, stuck, 14, 14)
  assert group['lr'] == 0.0025 / 4 and group['k'] == 1
  assert optimizer_state['reset_check']['max_checked_eval_step'] == 5


@pytest.mark.filterwarnings(
  'ignore:torch.distributed.nn.functional.all_reduce is deprecated'
)
def test_update_params_under_a_one_process_gloo_group(tmp_path):
  if not torch.distributed.is_available():
    pytest.skip('torch.distributed is not available in this build')
  workload, model, optimizer_state = _setup()
  reference_model = copy.deepcopy(model)
  reference_state = submission.init_optimizer_state(
    workload, reference_model, None, None, None
  )
  _update(workload, reference_model, reference_state, [], 0, 0)

  torch.distributed.init_process_group(
    'gloo',
    init_method=f'file://{tmp_path / "store"}',
    rank=0,
    world_size=1,
  )
  try:
    assert torch_submission_utils.distributed()
    _update(workload, model, optimizer_state, [], 0, 0)
  finally:
    torch.distributed.destroy_process_group()
  for name, param in model.named_parameters():
    assert torch.equal(param, reference_model.get_parameter(name))


def test_data_selection_takes_the_next_batch():
  queue = iter([{'inputs': 1}, {'inputs': 2}])
  args = {
    'workload': None,
    'input_queue': queue,
    'optimizer_state': None,
    'current_param_container': None,
    'model_state': None,
    'hyperparameters': None,
    'global_step': 0,
    'rng': None,
  }
  assert submission.data_selection(**args) == {'inputs': 1}
  assert submission.data_selection(**args) == {'inputs': 2}
