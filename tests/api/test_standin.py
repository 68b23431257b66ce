"""The local stand-in restates AlgoPerf's spec (ALGOPERF.md section 1.3)."""

import importlib
import sys

import pytest

from sfperf.api import standin


def test_enums_have_the_official_values():
  assert {m.name: m.value for m in standin.LossType} == {
    'SOFTMAX_CROSS_ENTROPY': 0,
    'SIGMOID_CROSS_ENTROPY': 1,
    'MEAN_SQUARED_ERROR': 2,
    'CTC_LOSS': 3,
    'MEAN_ABSOLUTE_ERROR': 4,
  }
  assert [m.name for m in standin.ForwardPassMode] == ['TRAIN', 'EVAL']
  assert [m.value for m in standin.ParameterType] == list(range(15))
  assert standin.ParameterType.ATTENTION_BIAS.value == 14


def test_workload_abstract_members_are_the_official_ones():
  assert standin.Workload.__abstractmethods__ == {
    'target_metric_name',
    'has_reached_validation_target',
    'has_reached_test_target',
    '_build_input_queue',
    'validation_target_value',
    'test_target_value',
    'loss_type',
    'num_train_examples',
    'eval_batch_size',
    'num_eval_train_examples',
    'num_validation_examples',
    'num_test_examples',
    'train_mean',
    'train_stddev',
    'max_allowed_runtime_sec',
    'eval_period_time_sec',
    'step_hint',
    'is_output_params',
    'init_model_fn',
    'model_fn',
    'loss_fn',
    '_eval_model_on_split',
  }


def test_param_shapes_raise_before_init():
  class Empty(standin.Workload):
    pass

  Empty.__abstractmethods__ = frozenset()
  workload = Empty()
  assert workload.metrics_logger is None
  with pytest.raises(ValueError):
    workload.param_shapes  # noqa: B018
  with pytest.raises(ValueError):
    workload.model_params_types  # noqa: B018


def test_training_complete_error_is_an_exception():
  assert issubclass(standin.TrainingCompleteError, Exception)


def test_compat_module_falls_back_to_the_stand_in(monkeypatch):
  # With neither official package importable, the seam uses the stand-in.
  monkeypatch.setitem(sys.modules, 'algoperf', None)
  monkeypatch.setitem(sys.modules, 'algoperf.spec', None)
  monkeypatch.setitem(sys.modules, 'algorithmic_efficiency', None)
  monkeypatch.setitem(sys.modules, 'algorithmic_efficiency.spec', None)
  import sfperf.api

  reloaded = importlib.reload(sfperf.api)
  try:
    assert reloaded.spec is standin
    assert reloaded.API_VERSION == 'local'
  finally:
    importlib.reload(sfperf.api)
