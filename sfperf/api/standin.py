"""Local stand-in for AlgoPerf's `spec` module (v0.6 names and semantics).

Used only when neither `algoperf` nor `algorithmic_efficiency` is installed.
It restates the documented API: the enums, type aliases, the abstract
`Workload` base and `TrainingCompleteError`. Anything a submission may rely on
has the same name and meaning as upstream; tests hold it to that.
"""

import abc
import enum
import functools
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from absl import logging


class LossType(enum.Enum):
  SOFTMAX_CROSS_ENTROPY = 0
  SIGMOID_CROSS_ENTROPY = 1
  MEAN_SQUARED_ERROR = 2
  CTC_LOSS = 3
  MEAN_ABSOLUTE_ERROR = 4


class ForwardPassMode(enum.Enum):
  TRAIN = 0
  EVAL = 1


class ParameterType(enum.Enum):
  WEIGHT = 0
  BIAS = 1
  CONV_WEIGHT = 2
  BATCH_NORM_SCALE = 3
  BATCH_NORM_BIAS = 4
  LAYER_NORM_SCALE = 5
  LAYER_NORM_BIAS = 6
  EMBEDDING = 7
  ATTENTION_Q = 8
  ATTENTION_K = 9
  ATTENTION_V = 10
  ATTENTION_OUT = 11
  ATTENTION_QKV = 12
  ATTENTION_KV = 13
  ATTENTION_BIAS = 14


Tensor = Any


class ShapeTuple:
  """Wraps a shape so that pytree utilities treat it as a leaf."""

  def __init__(self, shape_tuple):
    self.shape_tuple = shape_tuple

  def __repr__(self):
    return f'ShapeTuple({self.shape_tuple})'

  def __eq__(self, other):
    return self.shape_tuple == other.shape_tuple


Shape = Union[Tuple[int], Tuple[int, int], Tuple[int, int, int, int]]
ParameterShapeTree = Dict[str, Dict[str, Shape]]
ParameterKey = str
ParameterContainer = Any  # nested dict of arrays (JAX) or nn.Module (PyTorch)
ParameterTypeTree = Dict[ParameterKey, Dict[ParameterKey, ParameterType]]
RandomState = Any
OptimizerState = Union[Dict[str, Any], Tuple[Any, Any]]
Hyperparameters = Any
Timing = int
Steps = int
ModelAuxiliaryState = Any
ModelInitState = Tuple[ParameterContainer, ModelAuxiliaryState]
UpdateReturn = Tuple[OptimizerState, ParameterContainer, ModelAuxiliaryState]


class TrainingCompleteError(Exception):
  """Raised by a submission's update_params to end training early."""


class Workload(metaclass=abc.ABCMeta):
  """Abstract AlgoPerf workload: data, model, loss, evaluation, targets."""

  def __init__(self, *args, **kwargs) -> None:
    del args, kwargs
    self._param_shapes: Optional[ParameterShapeTree] = None
    self._param_types: Optional[ParameterTypeTree] = None
    self._eval_iters: Dict[str, Iterator] = {}
    self.metrics_logger = None

  @property
  @abc.abstractmethod
  def target_metric_name(self) -> str:
    """The validation metric the target applies to, without split prefix."""

  @abc.abstractmethod
  def has_reached_validation_target(
    self, eval_result: Dict[str, float]
  ) -> bool:
    """Strict comparison of the validation metric with the target."""

  @abc.abstractmethod
  def has_reached_test_target(self, eval_result: Dict[str, float]) -> bool:
    """Strict comparison of the test metric with the test target."""

  @abc.abstractmethod
  def _build_input_queue(
    self,
    data_rng: RandomState,
    split: str,
    data_dir: str,
    global_batch_size: int,
    cache: Optional[bool] = None,
    repeat_final_dataset: Optional[bool] = None,
    num_batches: Optional[int] = None,
  ) -> Iterator[Dict[str, Any]]:
    """Infinite pre-shuffled iterator of batches; submissions may not call."""

  def attach_metrics_logger(self, metrics_logger) -> None:
    self.metrics_logger = metrics_logger

  @property
  @abc.abstractmethod
  def validation_target_value(self) -> float: ...

  @property
  @abc.abstractmethod
  def test_target_value(self) -> float: ...

  @property
  @abc.abstractmethod
  def loss_type(self) -> LossType: ...

  @property
  @abc.abstractmethod
  def num_train_examples(self) -> int: ...

  @property
  @abc.abstractmethod
  def eval_batch_size(self) -> int: ...

  @property
  @abc.abstractmethod
  def num_eval_train_examples(self) -> int: ...

  @property
  @abc.abstractmethod
  def num_validation_examples(self) -> int: ...

  @property
  @abc.abstractmethod
  def num_test_examples(self) -> int: ...

  @property
  @abc.abstractmethod
  def train_mean(self) -> Any: ...

  @property
  @abc.abstractmethod
  def train_stddev(self) -> Any: ...

  @property
  @abc.abstractmethod
  def max_allowed_runtime_sec(self) -> int: ...

  @property
  @abc.abstractmethod
  def eval_period_time_sec(self) -> int: ...

  @property
  @abc.abstractmethod
  def step_hint(self) -> int: ...

  @property
  def param_shapes(self):
    if self._param_shapes is None:
      raise ValueError(
        'workload.init_model_fn() must be called before workload.param_shapes.'
      )
    return self._param_shapes

  @property
  def model_params_types(self):
    if self._param_types is None:
      raise ValueError(
        'workload.init_model_fn() must be called before '
        'workload.model_params_types.'
      )
    return self._param_types

  @abc.abstractmethod
  def is_output_params(self, param_key: ParameterKey) -> bool: ...

  @abc.abstractmethod
  def init_model_fn(self, rng: RandomState) -> ModelInitState: ...

  @abc.abstractmethod
  def model_fn(
    self,
    params: ParameterContainer,
    augmented_and_preprocessed_input_batch: Dict[str, Tensor],
    model_state: ModelAuxiliaryState,
    mode: ForwardPassMode,
    rng: RandomState,
    update_batch_norm: bool,
    dropout_rate: Optional[float] = None,
  ) -> Tuple[Tensor, ModelAuxiliaryState]: ...

  def output_activation_fn(
    self, logits_batch: Tensor, framework: str
  ) -> Tensor:
    """Turns logits into probabilities according to `loss_type`."""
    if framework not in ('pytorch', 'jax'):
      raise ValueError(
        f'framework must be "pytorch" or "jax", got {framework!r}.'
      )
    if framework == 'pytorch':
      import torch

      softmax = functools.partial(torch.softmax, dim=-1)
      sigmoid = torch.sigmoid
    else:
      import jax

      softmax = jax.nn.softmax
      sigmoid = jax.nn.sigmoid
    activations = {
      LossType.MEAN_SQUARED_ERROR: lambda z: z,
      LossType.MEAN_ABSOLUTE_ERROR: lambda z: z,
      LossType.SOFTMAX_CROSS_ENTROPY: softmax,
      LossType.SIGMOID_CROSS_ENTROPY: sigmoid,
      LossType.CTC_LOSS: softmax,
    }
    return activations[self.loss_type](logits_batch)

  @abc.abstractmethod
  def loss_fn(
    self,
    label_batch: Tensor,
    logits_batch: Tensor,
    mask_batch: Optional[Tensor] = None,
    label_smoothing: float = 0.0,
  ) -> Dict[str, Tensor]:
    """Returns {'summed', 'n_valid_examples', 'per_example'}; no regularizer."""

  @abc.abstractmethod
  def _eval_model_on_split(
    self,
    split: str,
    num_examples: int,
    global_batch_size: int,
    params: ParameterContainer,
    model_state: ModelAuxiliaryState,
    rng: RandomState,
    data_dir: str,
    global_step: int = 0,
  ) -> Dict[str, float]: ...

  def eval_model(
    self,
    global_batch_size: int,
    params: ParameterContainer,
    model_state: ModelAuxiliaryState,
    rng: RandomState,
    data_dir: str,
    imagenet_v2_data_dir: Optional[str],
    global_step: int,
  ) -> Dict[str, float]:
    """Evaluates on eval_train, validation and (if present) test."""
    results = {}
    splits = [
      ('eval_train', 'train', self.num_eval_train_examples, data_dir),
      ('validation', 'validation', self.num_validation_examples, data_dir),
    ]
    if self.num_test_examples is not None:
      test_dir = imagenet_v2_data_dir or data_dir
      splits.append(('test', 'test', self.num_test_examples, test_dir))
    for split, prefix, num_examples, split_dir in splits:
      logging.info('Evaluating on the %s split.', split)
      try:
        metrics = self._eval_model_on_split(
          split,
          num_examples=num_examples,
          global_batch_size=global_batch_size,
          params=params,
          model_state=model_state,
          rng=rng,
          data_dir=split_dir,
          global_step=global_step,
        )
      except NotImplementedError:
        if split == 'test':
          continue
        raise
      for name, value in metrics.items():
        results[f'{prefix}/{name}'] = value
      if split != 'eval_train':
        results[f'{prefix}/num_examples'] = num_examples
    return results


InitOptimizerFn = Callable[
  [
    Workload,
    ParameterContainer,
    ModelAuxiliaryState,
    Hyperparameters,
    RandomState,
  ],
  OptimizerState,
]
UpdateParamsFn = Callable[..., UpdateReturn]
PrepareForEvalFn = Callable[..., UpdateReturn]
DataSelectionFn = Callable[..., Dict[str, Tensor]]

__all__ = [
  'DataSelectionFn',
  'ForwardPassMode',
  'Hyperparameters',
  'InitOptimizerFn',
  'List',
  'LossType',
  'ModelAuxiliaryState',
  'ModelInitState',
  'OptimizerState',
  'ParameterContainer',
  'ParameterKey',
  'ParameterShapeTree',
  'ParameterType',
  'ParameterTypeTree',
  'PrepareForEvalFn',
  'RandomState',
  'Shape',
  'ShapeTuple',
  'Steps',
  'Tensor',
  'Timing',
  'TrainingCompleteError',
  'UpdateParamsFn',
  'UpdateReturn',
  'Workload',
]
