"""The digits proxy against the Workload interface of ALGOPERF.md 1.3."""

import numpy as np
import pytest
import torch

from sfperf.api import spec
from workloads.digits import DigitsWorkload
from workloads.digits import workload as digits_module


@pytest.fixture(scope='module')
def workload():
  return DigitsWorkload()


def test_splits_are_disjoint_complete_and_fixed():
  splits = digits_module.split_indices()
  sizes = {name: len(index) for name, index in splits.items()}
  assert sizes == {'train': 597, 'validation': 600, 'test': 600}
  union = np.concatenate(list(splits.values()))
  assert len(np.unique(union)) == 1797
  # Fixed by SPLIT_SEED: a change here changes every published proxy number.
  assert splits['validation'][:5].tolist() == [371, 1165, 1341, 599, 963]
  assert splits['test'][:5].tolist() == [1787, 616, 888, 159, 307]
  labels = digits_module.load_splits()['validation'][1]
  assert np.bincount(labels).min() >= 58  # stratified: ~60 per class


def test_inputs_normalized_by_train_statistics(workload):
  train_inputs = torch.from_numpy(workload._numpy_data['train'][0])
  assert abs(float(train_inputs.mean())) < 1e-5
  assert abs(float(train_inputs.std()) - 1.0) < 1e-3
  assert workload.num_eval_train_examples == workload.num_train_examples


def test_catalog_constants(workload):
  assert workload.target_metric_name == 'accuracy'
  assert workload.algoperf_analogue == 'mnist'
  assert workload.step_hint > 0 and workload.max_allowed_runtime_sec > 0
  target = workload.validation_target_value
  assert workload.has_reached_validation_target(
    {'validation/accuracy': target + 1e-9}
  )
  assert not workload.has_reached_validation_target(
    {'validation/accuracy': target}
  )
  assert not workload.has_reached_test_target(
    {'test/accuracy': workload.test_target_value}
  )


def test_init_model_seeded_and_typed(workload):
  model_a, state = workload.init_model_fn(np.array([7, 1]))
  model_b, _ = workload.init_model_fn(np.array([7, 1]))
  model_c, _ = workload.init_model_fn(np.array([8, 1]))
  assert state is None
  for (name, a), b in zip(
    model_a.named_parameters(), model_b.parameters(), strict=True
  ):
    assert torch.equal(a, b), name
  assert not torch.equal(model_a.conv1.weight, model_c.conv1.weight)
  types = workload.model_params_types
  assert types['bn1.weight'] == spec.ParameterType.BATCH_NORM_SCALE
  assert types['conv1.weight'] == spec.ParameterType.CONV_WEIGHT
  assert types['head.bias'] == spec.ParameterType.BIAS
  assert workload.param_shapes['head.weight'] == spec.ShapeTuple((10, 512))
  assert workload.is_output_params('head.weight')
  assert not workload.is_output_params('conv1.weight')


def test_loss_fn_matches_hand_computation(workload):
  gen = torch.Generator().manual_seed(0)
  logits = torch.randn(6, 10, generator=gen, dtype=torch.float64)
  labels = torch.tensor([0, 3, 9, 1, 1, 4])
  mask = torch.tensor([1.0, 1.0, 0.0, 1.0, 0.0, 1.0], dtype=torch.float64)
  smoothing = 0.2

  log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
  nll = -log_probs[torch.arange(6), labels]
  uniform = -log_probs.mean(dim=-1)
  expected = (1 - smoothing) * nll + smoothing * uniform

  plain = workload.loss_fn(labels, logits)
  assert torch.allclose(plain['summed'], nll.sum(), atol=1e-12)
  assert float(plain['n_valid_examples']) == 6
  masked = workload.loss_fn(labels, logits, mask, label_smoothing=smoothing)
  assert torch.allclose(masked['per_example'], expected * mask, atol=1e-12)
  assert torch.allclose(masked['summed'], (expected * mask).sum(), atol=1e-12)
  assert float(masked['n_valid_examples']) == 4


def test_batch_norm_frozen_without_update(workload):
  model, _ = workload.init_model_fn(np.array([1, 2]))
  batch = next(workload._build_input_queue(np.array([3, 4]), 'train', None, 16))
  before = model.bn1.running_mean.clone()
  workload.model_fn(model, batch, None, spec.ForwardPassMode.TRAIN, None, False)
  assert torch.equal(model.bn1.running_mean, before)
  assert model.training  # v0.6: not flipped into eval mode
  workload.model_fn(model, batch, None, spec.ForwardPassMode.TRAIN, None, True)
  assert not torch.equal(model.bn1.running_mean, before)
  assert model.bn1.momentum == 0.1
  workload.model_fn(model, batch, None, spec.ForwardPassMode.EVAL, None, True)
  assert not model.training


def test_dropout_rate_passed_to_model(workload):
  model, _ = workload.init_model_fn(np.array([1, 2]))
  batch = next(workload._build_input_queue(np.array([3, 4]), 'train', None, 16))
  mode = spec.ForwardPassMode.TRAIN
  workload.model_fn(model, batch, None, mode, None, True, dropout_rate=0.3)
  assert model.dropout.p == 0.3
  workload.model_fn(model, batch, None, mode, None, True)
  assert model.dropout.p == digits_module.DROPOUT_RATE


def test_input_queue_deterministic_and_infinite(workload):
  def batches(seed):
    queue = workload._build_input_queue(np.array(seed), 'train', None, 64)
    return [next(queue)['targets'] for _ in range(20)]  # > 2 epochs

  first, again, other = batches([1, 2]), batches([1, 2]), batches([2, 2])
  assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
  assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
  assert all(len(t) == 64 for t in first)


def test_eval_model_reports_all_splits(workload):
  model, _ = workload.init_model_fn(np.array([0, 0]))
  result = workload.eval_model(
    workload.eval_batch_size, model, None, np.array([0, 0]), None, None, 0
  )
  assert set(result) == {
    'train/accuracy',
    'train/loss',
    'validation/accuracy',
    'validation/loss',
    'validation/num_examples',
    'test/accuracy',
    'test/loss',
    'test/num_examples',
  }
  assert 0.0 <= result['validation/accuracy'] <= 1.0
  # Padded eval batches: a batch size that does not divide 600 changes
  # nothing.
  padded = workload._eval_model_on_split(
    'validation', 600, 256, model, None, np.array([0, 0]), None
  )
  assert padded['accuracy'] == pytest.approx(result['validation/accuracy'])
  assert padded['loss'] == pytest.approx(result['validation/loss'], rel=1e-5)


@pytest.mark.parametrize('batch_size', [2048, 598, 0, -64, '32', 32.0, True])
def test_input_queue_refuses_a_batch_size_it_cannot_fill(workload, batch_size):
  # 2048 > 597 training examples used to loop for ever over an empty epoch;
  # the check runs when the queue is built, before the first batch.
  with pytest.raises(ValueError, match='global_batch_size'):
    workload._build_input_queue(np.array([0, 0]), 'train', None, batch_size)


def test_input_queue_batch_of_the_whole_split(workload):
  queue = workload._build_input_queue(
    np.array([0, 0]), 'train', None, workload.num_train_examples
  )
  first, second = next(queue), next(queue)
  assert len(first['targets']) == len(second['targets']) == 597
  assert not torch.equal(first['targets'], second['targets'])  # reshuffled
  assert torch.equal(first['targets'].sort()[0], second['targets'].sort()[0])
