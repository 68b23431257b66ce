"""What both digits workloads share: the data split, preprocessing, constants.

The PyTorch workload (`workload.py`) and the JAX one (`workload_jax.py`)
train on the same split of scikit-learn's 8x8 digits, normalized by the same
training statistics, in the same seeded batch order, and read their targets,
budget, eval period and step hint from the same catalog entry. This module
imports neither torch nor jax.
"""

import functools
import itertools
import os
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np

from sfperf.api import spec
from sfperf.catalog import CATALOG_DIR, WorkloadSpec, load_catalog_file

SPLIT_SEED = 0
NUM_TEST = 600
NUM_VALIDATION = 600
NUM_CLASSES = 10
# Most AlgoPerf workloads default to no dropout; submissions pass their own
# rate to `model_fn` (v0.6 rule).
DROPOUT_RATE = 0.0


@functools.cache
def catalog_entry() -> WorkloadSpec:
  """The `digits` entry of `workloads/catalog/proxy.json`."""
  path = os.path.join(CATALOG_DIR, 'proxy.json')
  return load_catalog_file(path).workload('digits')


@functools.cache
def split_indices() -> Dict[str, np.ndarray]:
  """Row indices into `load_digits()` of each split, stratified by class."""
  from sklearn.datasets import load_digits
  from sklearn.model_selection import train_test_split

  labels = load_digits().target
  everything = np.arange(len(labels))
  rest, test = train_test_split(
    everything,
    test_size=NUM_TEST,
    stratify=labels,
    random_state=SPLIT_SEED,
  )
  train, validation = train_test_split(
    rest,
    test_size=NUM_VALIDATION,
    stratify=labels[rest],
    random_state=SPLIT_SEED,
  )
  return {'train': train, 'validation': validation, 'test': test}


@functools.cache
def load_splits() -> Dict[str, Tuple[np.ndarray, np.ndarray]]:
  """Returns {split: (images float32 [n, 8, 8], labels int64 [n])}, raw."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = digits.images.astype(np.float32)
  labels = digits.target.astype(np.int64)
  return {
    name: (images[index], labels[index])
    for name, index in split_indices().items()
  }


def check_batch_size(batch_size: Any, split: str, upper: Optional[int]) -> None:
  """ValueError unless `batch_size` is an int in [1, upper]."""
  if isinstance(batch_size, bool) or not isinstance(batch_size, int):
    raise ValueError(
      f'global_batch_size for split {split!r} must be an int, got '
      f'{batch_size!r}'
    )
  if batch_size < 1:
    raise ValueError(
      f'global_batch_size for split {split!r} must be at least 1, got '
      f'{batch_size}'
    )
  if upper is not None and batch_size > upper:
    raise ValueError(
      f'global_batch_size {batch_size} is larger than the {upper} examples '
      f'of split {split!r}; batches are never partial, so use at most '
      f'{upper}'
    )


def train_batch_indices(
  data_rng: Any, num_examples: int, batch_size: int
) -> Iterator[np.ndarray]:
  """Indices of each training batch, in a fresh seeded order each epoch.

  The order comes from the integer words of `data_rng` (a NumPy key of the
  PyTorch runner or a raw uint32 JAX key), so both frameworks draw the same
  batches from the same key words. The last partial batch of an epoch is
  dropped, as AlgoPerf's input pipelines do; the iterator never ends.
  """
  seed = np.asarray(data_rng).astype(np.int64).ravel().tolist()
  order_rng = np.random.default_rng([s % 2**32 for s in seed])
  while True:
    order = order_rng.permutation(num_examples)
    for start in range(0, num_examples - batch_size + 1, batch_size):
      yield order[start : start + batch_size]


class DigitsBase(spec.Workload):
  """The framework-free part of the digits workloads.

  Holds the splits as NumPy arrays, normalized by the training split's pixel
  mean and standard deviation (`self._numpy_data`, images [n, 8, 8]), and
  the constants; subclasses add the model and framework-typed batches.
  """

  # The AlgoPerf workload this proxy stands in for, e.g. when a submission
  # looks up its batch size by workload name.
  algoperf_analogue = 'mnist'

  def __init__(self, *args, **kwargs) -> None:
    super().__init__(*args, **kwargs)
    splits = load_splits()
    train_x = splits['train'][0]
    self._train_mean = float(train_x.mean())
    self._train_stddev = float(train_x.std())
    self._numpy_data = {
      name: (self._normalize_numpy(x), y) for name, (x, y) in splits.items()
    }
    train_x, train_y = self._numpy_data['train']
    count = self.num_eval_train_examples
    self._numpy_data['eval_train'] = (train_x[:count], train_y[:count])

  def _normalize_numpy(self, images: np.ndarray) -> np.ndarray:
    scaled = (images - self._train_mean) / self._train_stddev
    return scaled.astype(np.float32)

  # Targets and runtime constants: single source is the proxy catalog.

  @property
  def target_metric_name(self) -> str:
    return catalog_entry().target_metric_name

  @property
  def validation_target_value(self) -> float:
    return catalog_entry().validation_target_value

  @property
  def test_target_value(self) -> float:
    return catalog_entry().test_target_value

  @property
  def max_allowed_runtime_sec(self) -> float:
    return catalog_entry().max_allowed_runtime_sec

  @property
  def eval_period_time_sec(self) -> float:
    return catalog_entry().eval_period_time_sec

  @property
  def step_hint(self) -> int:
    return catalog_entry().step_hint

  def has_reached_validation_target(self, eval_result: Dict[str, float]):
    # Strict `>`, as AlgoPerf's workloads decide when the runner stops; the
    # official scorer counts `>=` when it reads the logs afterwards.
    value = eval_result[f'validation/{self.target_metric_name}']
    return value > self.validation_target_value

  def has_reached_test_target(self, eval_result: Dict[str, float]) -> bool:
    value = eval_result[f'test/{self.target_metric_name}']
    return value > self.test_target_value

  # Data.

  @property
  def loss_type(self) -> spec.LossType:
    return spec.LossType.SOFTMAX_CROSS_ENTROPY

  @property
  def num_train_examples(self) -> int:
    return len(self._numpy_data['train'][1])

  @property
  def eval_batch_size(self) -> int:
    return 600

  @property
  def num_eval_train_examples(self) -> int:
    return min(NUM_VALIDATION, self.num_train_examples)

  @property
  def num_validation_examples(self) -> int:
    return NUM_VALIDATION

  @property
  def num_test_examples(self) -> int:
    return NUM_TEST

  @property
  def train_mean(self) -> float:
    return self._train_mean

  @property
  def train_stddev(self) -> float:
    return self._train_stddev

  def _eval_batch(self, params, model_state, batch, rng) -> Tuple:
    """(summed loss, correct count, valid count) of one eval batch."""
    raise NotImplementedError

  def _eval_model_on_split(
    self,
    split: str,
    num_examples: int,
    global_batch_size: int,
    params: spec.ParameterContainer,
    model_state: spec.ModelAuxiliaryState,
    rng: spec.RandomState,
    data_dir: Optional[str],
    global_step: int = 0,
  ) -> Dict[str, float]:
    """Accuracy and mean cross-entropy over the first `num_examples`."""
    del global_step
    if split not in ('eval_train', 'validation', 'test'):
      raise ValueError(
        f'split {split!r} cannot be evaluated; choose eval_train, '
        'validation or test'
      )
    batches = self._build_input_queue(
      rng, split, data_dir, global_batch_size=global_batch_size
    )
    total_loss = total_correct = total_count = 0.0
    for batch in batches:
      summed, correct, count = self._eval_batch(params, model_state, batch, rng)
      total_loss += float(summed)
      total_correct += float(correct)
      total_count += float(count)
      if total_count >= num_examples:
        break
    return {
      'accuracy': total_correct / total_count,
      'loss': total_loss / total_count,
    }

  def _to_framework(self, batch: Dict[str, np.ndarray]) -> Dict[str, Any]:
    """One NumPy batch as the framework's arrays."""
    raise NotImplementedError

  def _data_key(self, data_rng: spec.RandomState) -> Any:
    """The integer words of `data_rng` that seed the training order."""
    return data_rng

  def _build_input_queue(
    self,
    data_rng: spec.RandomState,
    split: str,
    data_dir: Optional[str],
    global_batch_size: int,
    cache: Optional[bool] = None,
    repeat_final_dataset: Optional[bool] = None,
    num_batches: Optional[int] = None,
  ) -> Iterator[Dict[str, Any]]:
    """Yields batches of `split`, as the framework's arrays.

    Training batches are full (the last partial batch of an epoch is
    dropped, as AlgoPerf's input pipelines do) and the iterator never ends,
    in a fresh seeded order each epoch, so a training batch must hold
    between 1 and `num_train_examples` examples; a larger one is refused
    rather than wrapped across epochs. Other splits are read once, in
    order, with a zero-padded last batch whose `weights` mask the padding.

    Raises:
      ValueError: `global_batch_size` is not an int in [1, the split's
        size] for the training split, or below 1 for another split.
    """
    del data_dir, cache, repeat_final_dataset
    inputs, targets = self._numpy_data[split]
    # Checked here, not at the first batch: the batches come from a
    # generator, whose body would run only when training starts.
    upper = len(targets) if split == 'train' else None
    check_batch_size(global_batch_size, split, upper)
    if split == 'train':
      batches = _train_batches(
        self._data_key(data_rng), inputs, targets, global_batch_size
      )
    else:
      batches = _eval_batches(inputs, targets, global_batch_size)
    return map(self._to_framework, itertools.islice(batches, num_batches))


def _train_batches(data_rng, inputs, targets, batch_size):
  for index in train_batch_indices(data_rng, len(targets), batch_size):
    yield {'inputs': inputs[index], 'targets': targets[index]}


def _eval_batches(inputs, targets, batch_size):
  for start in range(0, len(targets), batch_size):
    batch_inputs = inputs[start : start + batch_size]
    batch_targets = targets[start : start + batch_size]
    pad = batch_size - len(batch_targets)
    weights = np.ones(batch_size, np.float32)
    if pad:
      weights[-pad:] = 0.0
      batch_inputs = np.pad(batch_inputs, ((0, pad), (0, 0), (0, 0)))
      batch_targets = np.pad(batch_targets, (0, pad))
    yield {
      'inputs': batch_inputs,
      'targets': batch_targets,
      'weights': weights,
    }
