"""Tests of the current-form Schedule-Free AdamW self-tuning submission.

End to end on the digits proxy with the local runner: under v0.6 rules every
eval sees x (checked against x = (y - (1 - beta1) z) / beta1 computed in
float64 from the y and z the step left) and BatchNorm statistics last
updated at x; under v0.5 rules (no prepare_for_eval) the eval sees y and
the submission stops the run with a clear error.
"""

import collections
import copy
import functools
import itertools
import os

import numpy as np
import pytest
import torch

from sfperf import torch_submission_utils
from sfperf.api import spec
from sfperf.runner import run, training
from submissions.self_tuning.schedule_free_adamw_current import submission
from workloads.digits import DigitsWorkload

SUBMISSION_PATH = (
  'submissions/self_tuning/schedule_free_adamw_current/submission.py'
)
NUM_STEPS = 200
BETA1 = 1.0 - submission.HPARAMS['one_minus_beta1']


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
    ('finewebedu_lm', 64),
    ('mnist', 16),
  ],
)
def test_batch_sizes_are_the_v2_entry_s(name, size):
  assert submission.get_batch_size(name) == size


def test_unknown_workload_raises_value_error():
  with pytest.raises(ValueError, match="'digits'"):
    submission.get_batch_size('digits')


@pytest.mark.parametrize(('step_hint', 'warmup'), [(4000, 60), (10_666, 159)])
def test_warmup_is_one_and_a_half_percent_of_the_step_hint(step_hint, warmup):
  assert submission.warmup_steps_for(step_hint) == warmup


def test_batch_norm_detection():
  assert submission.has_batch_norm(torch.nn.BatchNorm1d(3))
  assert not submission.has_batch_norm(torch.nn.InstanceNorm2d(3))
  assert not submission.has_batch_norm(torch.nn.Linear(3, 3))


def _digits():
  workload = DigitsWorkload()
  model, model_state = workload.init_model_fn(np.array([0, 0]))
  return workload, model, model_state


def test_init_refuses_an_api_without_prepare_for_eval(monkeypatch):
  workload, model, model_state = _digits()
  monkeypatch.delattr(spec, 'PrepareForEvalFn')
  with pytest.raises(RuntimeError, match='v0.6'):
    submission.init_optimizer_state(workload, model, model_state, None, None)


def _update(workload, model, optimizer_state, hyperparameters=None, step=0):
  batch = next(workload._build_input_queue(np.array([0, 1]), 'train', None, 16))
  return submission.update_params(
    workload=workload,
    current_param_container=model,
    current_params_types=workload.model_params_types,
    model_state=None,
    hyperparameters=hyperparameters,
    batch=batch,
    loss_type=workload.loss_type,
    optimizer_state=optimizer_state,
    eval_results=[],
    global_step=step,
    rng=None,
  )


def test_dropout_rate_is_passed_only_when_the_hyperparameters_set_it(
  monkeypatch,
):
  workload, model, model_state = _digits()
  calls = []
  real_model_fn = workload.model_fn

  def model_fn(*args, **kwargs):
    calls.append(kwargs)
    return real_model_fn(*args, **kwargs)

  monkeypatch.setattr(workload, 'model_fn', model_fn)
  state = submission.init_optimizer_state(workload, model, None, None, None)
  _update(workload, model, state)
  assert calls and all('dropout_rate' not in call for call in calls)

  calls.clear()
  hyperparameters = collections.namedtuple('H', ['dropout_rate'])(0.3)
  _update(workload, model, state, hyperparameters, step=1)
  assert calls and all(call['dropout_rate'] == 0.3 for call in calls)


@pytest.mark.filterwarnings(
  'ignore:torch.distributed.nn.functional.all_reduce is deprecated'
)
def test_update_params_under_a_one_process_gloo_group(tmp_path):
  if not torch.distributed.is_available():
    pytest.skip('torch.distributed is not available in this build')
  workload, model, _ = _digits()
  reference = copy.deepcopy(model)
  state = submission.init_optimizer_state(workload, model, None, None, None)
  reference_state = submission.init_optimizer_state(
    workload, reference, None, None, None
  )
  _update(workload, reference, reference_state)
  torch.distributed.init_process_group(
    'gloo',
    init_method=f'file://{tmp_path / "store"}',
    rank=0,
    world_size=1,
  )
  try:
    assert torch_submission_utils.distributed()
    _update(workload, model, state)
  finally:
    torch.distributed.destroy_process_group()
  for name, param in model.named_parameters():
    assert torch.equal(param, reference.get_parameter(name)), name


# --- end to end on digits --------------------------------------------------


def _as_float64(tensors):
  return [t.detach().to(torch.float64).clone() for t in tensors]


def _batch_norm_buffers(model):
  return {
    name: buffer.clone()
    for name, buffer in model.named_buffers()
    if 'running' in name
  }


@pytest.fixture
def spied_run(monkeypatch, tmp_path):
  """Runs the submission on digits, recording steps, forwards and evals.

  A fake clock (one second per reading) makes the evals fall on the same
  steps every time; budget and targets are lifted so that all steps run.
  """
  ticks = itertools.count(1000.0)
  monkeypatch.setattr(training, 'get_time', lambda: float(next(ticks)))
  monkeypatch.setattr(
    DigitsWorkload, 'max_allowed_runtime_sec', property(lambda s: 1e9)
  )
  monkeypatch.setattr(
    DigitsWorkload, 'eval_period_time_sec', property(lambda s: 25.0)
  )
  record = {'after_step': {}, 'refreshes': [], 'train_forwards': []}
  record['evals'] = []

  real_init = submission.init_optimizer_state

  @functools.wraps(real_init)
  def init_optimizer_state(*args, **kwargs):
    state = real_init(*args, **kwargs)
    record['optimizer'] = state['optimizer']
    return state

  real_update = submission.update_params

  @functools.wraps(real_update)
  def update_params(**kwargs):
    result = real_update(**kwargs)
    optimizer = record['optimizer']
    params = list(result[1].parameters())
    record['after_step'][kwargs['global_step'] + 1] = (
      _as_float64(params),
      _as_float64(optimizer.state[p]['z'] for p in params),
    )
    return result

  real_model_fn = DigitsWorkload.model_fn

  def model_fn(
    self,
    params,
    augmented_and_preprocessed_input_batch,
    model_state,
    mode,
    rng,
    update_batch_norm,
    **kwargs,
  ):
    result = real_model_fn(
      self,
      params,
      augmented_and_preprocessed_input_batch,
      model_state,
      mode,
      rng,
      update_batch_norm,
      **kwargs,
    )
    if mode == spec.ForwardPassMode.TRAIN:
      call = {
        'grad': torch.is_grad_enabled(),
        'optimizer_train_mode': record['optimizer'].train_mode,
        'batch_norm': _batch_norm_buffers(params),
      }
      key = 'refreshes' if update_batch_norm else 'train_forwards'
      record[key].append(call)
    return result

  real_eval_model = DigitsWorkload.eval_model

  def eval_model(self, global_batch_size, params, model_state, *args):
    record['evals'].append(
      {
        'step': args[-1],
        'params': _as_float64(params.parameters()),
        'optimizer_train_mode': record['optimizer'].train_mode,
        'batch_norm': _batch_norm_buffers(params),
        'refreshes_before': len(record['refreshes']),
      }
    )
    return real_eval_model(self, global_batch_size, params, model_state, *args)

  monkeypatch.setattr(submission, 'init_optimizer_state', init_optimizer_state)
  monkeypatch.setattr(submission, 'update_params', update_params)
  monkeypatch.setattr(DigitsWorkload, 'model_fn', model_fn)
  monkeypatch.setattr(DigitsWorkload, 'eval_model', eval_model)

  def run_with(benchmark):
    run(
      SUBMISSION_PATH,
      'digits',
      experiment_dir=str(tmp_path),
      experiment_name=benchmark,
      tuning_ruleset='self',
      max_global_steps=NUM_STEPS,
      rng_seed=0,
      benchmark=benchmark,
      stop_at_targets=False,
    )
    return os.path.join(tmp_path, benchmark, 'digits_pytorch', 'trial_1')

  return run_with, record


def test_v06_evals_see_x_and_batch_norm_statistics_of_x(spied_run):
  run_with, record = spied_run
  trial_dir = run_with('v0.6')

  for name in (
    'eval_measurements.csv',
    'measurements.csv',
    'meta_data_0.json',
    'flags_0.json',
  ):
    assert os.path.isfile(os.path.join(trial_dir, name)), name
  assert any(n.startswith('checkpoint_') for n in os.listdir(trial_dir))

  evals = record['evals']
  assert len(evals) >= 5 and evals[-1]['step'] == NUM_STEPS
  moved = 0.0
  for evaluation in evals:
    assert not evaluation['optimizer_train_mode']
    ys, zs = record['after_step'][evaluation['step']]
    # x from the step's y and z in float64; the optimizer's lerp rounds
    # each value once or twice in float32 (values of order 1: ~1e-7).
    for param, y, z in zip(evaluation['params'], ys, zs, strict=True):
      x = (y - (1 - BETA1) * z) / BETA1
      np.testing.assert_allclose(param, x, rtol=1e-6, atol=1e-6)
      moved = max(moved, float((x - y).abs().max()))
  # x and y differ far beyond that tolerance (not at step 1, where the
  # first average is z itself), so the check tells them apart.
  assert moved > 1e-3

  # The evaluator's parameters at the end are the optimizer's x.
  optimizer = record['optimizer']
  assert not optimizer.train_mode
  final = _as_float64(optimizer.param_groups[0]['params'])
  for param, evaluated in zip(final, evals[-1]['params'], strict=True):
    assert torch.equal(param, evaluated)

  # Running statistics change only in no-grad forwards at x ...
  assert record['refreshes'] and record['train_forwards']
  for call in record['refreshes']:
    assert not call['grad'] and not call['optimizer_train_mode']
  for call in record['train_forwards']:
    assert call['grad'] and call['optimizer_train_mode']
  assert len(record['refreshes']) >= NUM_STEPS // submission.BN_REFRESH_PERIOD
  # ... and each eval used exactly the statistics the latest one left.
  for evaluation in evals:
    latest = record['refreshes'][evaluation['refreshes_before'] - 1]
    for name, buffer in evaluation['batch_norm'].items():
      assert torch.equal(buffer, latest['batch_norm'][name]), name


def test_v05_rules_evaluate_y_and_the_run_stops_with_a_clear_error(spied_run):
  run_with, record = spied_run
  with pytest.raises(RuntimeError, match='without prepare_for_eval'):
    run_with('v0.5')
  first = record['evals'][0]
  assert first['optimizer_train_mode']
  ys, _ = record['after_step'][first['step']]
  for param, y in zip(first['params'], ys, strict=True):
    assert torch.equal(param, y)
