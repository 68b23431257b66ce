"""The constant half of the tiny Workload classes the tests define.

A test workload only needs a model, a loss and batches; everything else the
Workload interface asks for (targets, sizes, budget, eval period, step hint)
is the same in all of them and lives here. Never reaches a target.
"""

from sfperf.api import spec


class TinyWorkloadBase(spec.Workload):
  """Fixed constants; subclasses add init_model_fn, model_fn and loss_fn."""

  validation_target_value = 1.0
  test_target_value = 1.0
  loss_type = spec.LossType.SOFTMAX_CROSS_ENTROPY
  num_train_examples = 64
  eval_batch_size = 16
  num_eval_train_examples = 16
  num_validation_examples = 16
  num_test_examples = None
  train_mean = 0.0
  train_stddev = 1.0
  max_allowed_runtime_sec = 60
  eval_period_time_sec = 10

  def __init__(self, metric_name: str = 'accuracy', step_hint: int = 100):
    super().__init__()
    self._metric_name = metric_name
    self._step_hint = step_hint

  @property
  def target_metric_name(self) -> str:
    return self._metric_name

  @property
  def step_hint(self) -> int:
    return self._step_hint

  def has_reached_validation_target(self, eval_result) -> bool:
    return False

  def has_reached_test_target(self, eval_result) -> bool:
    return False

  def _build_input_queue(self, *args, **kwargs):
    raise NotImplementedError('the test builds its own batches')

  def _eval_model_on_split(self, *args, **kwargs):
    raise NotImplementedError('the test does not evaluate')
