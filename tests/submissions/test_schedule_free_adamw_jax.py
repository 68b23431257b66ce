"""Tests of the JAX Schedule-Free AdamW submissions (self-tuning, external).

The local runner does not run JAX yet, so the submission functions are
called directly on `TinyJaxWorkload`, a jax.numpy MLP. Forced host devices
check the v0.6 sharded layout in subprocesses, because JAX fixes its device
count when it is imported.
"""

import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfperf import divergence_reset, jax_submission_utils
from sfperf.api import spec
from sfperf.optim import schedule_free_adamw_v1
from submissions.external_tuning.schedule_free_adamw_jax import (
  submission as external,
)
from submissions.self_tuning.schedule_free_adamw_jax import (
  submission as self_tuning,
)
from tests.submissions.jax_sharding_worker import EXTERNAL_TRIAL, train
from tests.submissions.jax_workload import TinyJaxWorkload, make_batches

REPO_ROOT = Path(__file__).resolve().parents[2]
BATCH_SIZE = 16


def _run(submission, workload, hyperparameters, batches, eval_results=()):
  """Runs update_params over `batches`; returns (state, params, model_state)."""
  params, model_state = workload.init_model_fn(0)
  optimizer_state = submission.init_optimizer_state(
    workload, params, model_state, hyperparameters, jax.random.PRNGKey(1)
  )
  for step, batch in enumerate(batches):
    optimizer_state, params, model_state = submission.update_params(
      workload=workload,
      current_param_container=params,
      current_params_types=workload.model_params_types,
      model_state=model_state,
      hyperparameters=hyperparameters,
      batch=batch,
      loss_type=workload.loss_type,
      optimizer_state=optimizer_state,
      eval_results=list(eval_results),
      global_step=step,
      rng=jax.random.PRNGKey(step),
    )
  return optimizer_state, params, model_state


def _reference_x(
  settings, label_smoothing, batches, dropout_rate=None, params=None, first=0
):
  """x after `batches` under the optimizer alone, one jitted step each.

  Starts from the workload's initial parameters unless `params` is given;
  batch i uses rng PRNGKey(first + i), as the submission loop does.
  """
  workload = TinyJaxWorkload()
  initial_params, model_state = workload.init_model_fn(0)
  params = initial_params if params is None else params
  optimizer = schedule_free_adamw_v1(**settings._asdict())
  state = optimizer.init(params)

  @jax.jit
  def step(params, state, batch, rng):
    def loss_fn(params_y):
      logits, _ = workload.model_fn(
        params_y,
        batch,
        model_state,
        spec.ForwardPassMode.TRAIN,
        rng,
        True,
        dropout_rate,
      )
      loss_dict = workload.loss_fn(
        batch['targets'], logits, batch['weights'], label_smoothing
      )
      return loss_dict['summed'] / loss_dict['n_valid_examples']

    grads = jax.grad(loss_fn)(optimizer.gradient_point(params, state))
    return optimizer.update(grads, state, params)

  for index, batch in enumerate(batches, start=first):
    params, state = step(params, state, batch, jax.random.PRNGKey(index))
  return params


def _mean_loss(workload, params, batches):
  losses = []
  for batch in batches:
    logits, _ = workload.model_fn(
      params, batch, None, spec.ForwardPassMode.EVAL, None, False
    )
    loss_dict = workload.loss_fn(batch['targets'], logits)
    losses.append(loss_dict['summed'] / loss_dict['n_valid_examples'])
  return float(np.mean(losses))


def _assert_trees_close(first, second, atol):
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


def test_self_tuning_settings_are_the_entrys():
  settings = self_tuning.settings_for(step_hint=186_666, learning_rate=0.0025)

  assert settings.warmup_steps == 2799  # ResNet, v0.5 step hint
  assert settings.r == 0.75
  assert settings.b1 == pytest.approx(0.9)
  assert settings.b2 == 0.9955159689799007
  assert settings.weight_decay == 0.08121616522670176
  assert self_tuning.HPARAMS['label_smoothing'] == 0.2


def test_tables_match_the_pytorch_submissions():
  pytorch_self = pytest.importorskip(
    'submissions.self_tuning.schedule_free_adamw.submission'
  )
  pytorch_external = pytest.importorskip(
    'submissions.external_tuning.schedule_free_adamw.submission'
  )

  assert self_tuning.HPARAMS == pytorch_self.HPARAMS
  assert self_tuning._BATCH_SIZES == pytorch_self._BATCH_SIZES
  assert external._BATCH_SIZES == pytorch_external._BATCH_SIZES
  assert external.AVERAGING_POWER_R == pytorch_external.AVERAGING_POWER_R
  assert external.WEIGHT_LR_POWER == pytorch_external.WEIGHT_LR_POWER
  # Both self-tuning submissions decide resets with the same function.
  assert pytorch_self.should_reset is divergence_reset.should_reset
  assert self_tuning.should_reset is divergence_reset.should_reset


def test_get_batch_size_raises_value_error_for_unknown_workloads():
  for submission in (self_tuning, external):
    assert submission.get_batch_size('wmt') == 128
    with pytest.raises(ValueError, match='imagenet_resnet_large_bn_init'):
      submission.get_batch_size('imagenet_resnet_large_bn_init')


def test_importing_the_jax_submissions_does_not_import_torch():
  code = (
    'import sys\n'
    'import submissions.self_tuning.schedule_free_adamw_jax.submission\n'
    'import submissions.external_tuning.schedule_free_adamw_jax.submission\n'
    'assert "torch" not in sys.modules, "torch was imported"\n'
  )
  subprocess.run(
    [sys.executable, '-c', code], cwd=REPO_ROOT, check=True, timeout=120
  )


def test_self_tuning_step_equals_the_optimizer_and_trains():
  workload = TinyJaxWorkload(step_hint=200)
  batches = make_batches(30, BATCH_SIZE)
  initial_params, _ = workload.init_model_fn(0)

  optimizer_state, params, model_state = _run(
    self_tuning, workload, None, batches
  )

  settings = self_tuning.settings_for(200, 0.0025)
  assert (
    jax_submission_utils.entry_state(optimizer_state)['settings'] == settings
  )
  assert settings.warmup_steps == 3  # int(0.02 * 200 * 0.75)
  # The submission's jitted, sharded step is the optimizer's step.
  _assert_trees_close(params, _reference_x(settings, 0.2, batches), 1e-6)
  assert workload.label_smoothings_seen == [0.2]  # traced once
  assert workload.dropout_rates_seen == [None]  # workload default
  assert (
    int(jax_submission_utils.entry_state(optimizer_state)['optimizer_state'].k)
    == 30
  )
  assert int(model_state['num_updates']) == 30
  assert _mean_loss(workload, params, batches) < _mean_loss(
    workload, initial_params, batches
  )


def _diverged_evals(count: int) -> list[tuple[int, dict[str, float]]]:
  return [(step, {'validation/accuracy': 0.5}) for step in range(count)]


def test_self_tuning_reset_restores_x0_and_halves_the_lr():
  workload = TinyJaxWorkload(step_hint=20)
  batches = make_batches(5, BATCH_SIZE)
  initial_params, _ = workload.init_model_fn(0)

  # global_step 0..4 > 0.10 * 20 = 2 from step 3 on: the look at step 3
  # sees four flat evals and resets; step 4 has no new eval.
  optimizer_state, params, _ = _run(
    self_tuning, workload, None, batches, _diverged_evals(4)
  )

  assert jax_submission_utils.entry_state(optimizer_state)['has_forced_reset']
  assert (
    jax_submission_utils.entry_state(optimizer_state)['max_checked_eval_step']
    == 4
  )
  settings = jax_submission_utils.entry_state(optimizer_state)['settings']
  assert settings.learning_rate == 0.0025 / 2
  # After the reset at step 3, two steps from x0 at half the lr: exactly
  # what a fresh optimizer does on those two batches.
  fresh_x = _reference_x(
    settings, 0.2, batches[3:], params=initial_params, first=3
  )
  _assert_trees_close(params, fresh_x, 1e-6)
  assert (
    int(jax_submission_utils.entry_state(optimizer_state)['optimizer_state'].k)
    == 2
  )


def test_self_tuning_does_not_reset_an_improving_run():
  workload = TinyJaxWorkload(step_hint=20)
  improving = [(step, {'validation/accuracy': 0.1 * step}) for step in range(4)]

  optimizer_state, _, _ = _run(
    self_tuning, workload, None, make_batches(4, BATCH_SIZE), improving
  )

  assert not jax_submission_utils.entry_state(optimizer_state)[
    'has_forced_reset'
  ]
  assert (
    jax_submission_utils.entry_state(optimizer_state)['settings'].learning_rate
    == 0.0025
  )


def test_external_uses_the_trials_hyperparameters():
  workload = TinyJaxWorkload(step_hint=200)
  batches = make_batches(20, BATCH_SIZE)
  trial = EXTERNAL_TRIAL._replace(dropout_rate=0.1, label_smoothing=0.3)

  optimizer_state, params, _ = _run(external, workload, trial, batches)

  settings = jax_submission_utils.entry_state(optimizer_state)['settings']
  assert settings == external.OptimizerSettings(
    learning_rate=0.02,
    warmup_steps=10,  # int(0.05 * 200), no 0.75 factor
    b1=0.9,
    b2=0.9955,
    eps=1e-8,
    weight_decay=0.08,
    r=0.75,
    weight_lr_power=2,
  )
  assert workload.label_smoothings_seen == [0.3]
  assert workload.dropout_rates_seen == [0.1]
  reference = _reference_x(settings, 0.3, batches, dropout_rate=0.1)
  _assert_trees_close(params, reference, 1e-6)


def test_external_defaults_without_label_smoothing_or_dropout():
  from collections import namedtuple

  fields = [
    'learning_rate',
    'one_minus_beta1',
    'beta2',
    'weight_decay',
    'warmup_factor',
  ]
  trial = namedtuple('Hyperparameters', fields)(0.01, 0.1, 0.99, 0.0, 0.02)
  workload = TinyJaxWorkload()

  _run(external, workload, trial, make_batches(2, BATCH_SIZE))

  assert workload.label_smoothings_seen == [0.0]
  assert workload.dropout_rates_seen == [None]


def _run_worker(tmp_path, num_devices, batch_size, steps, uneven_batch_size):
  out = tmp_path / f'devices_{num_devices}.npz'
  env = dict(
    os.environ,
    XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices}',
    JAX_PLATFORMS='cpu',
  )
  command = [sys.executable, '-m', 'tests.submissions.jax_sharding_worker']
  command += [str(out), str(batch_size), str(steps), str(uneven_batch_size)]
  subprocess.run(command, cwd=REPO_ROOT, env=env, check=True, timeout=300)
  return dict(np.load(out))


# Largest difference between 1, 2 and 8 devices after 20 steps. The global
# loss is the same sum, split into per-device partial sums that XLA adds in
# another order, so gradients differ in the last float32 bits. Measured:
# below 1e-7.
DEVICE_TOLERANCE = 1e-6
SUBMISSION_NAMES = ('self_tuning', 'external_tuning')


@pytest.fixture(scope='module')
def device_runs(tmp_path_factory):
  """Worker results on 1, 2 and 8 forced host devices, 20 steps of 16."""
  tmp_path = tmp_path_factory.mktemp('devices')
  return {n: _run_worker(tmp_path, n, BATCH_SIZE, 20, 12) for n in (1, 2, 8)}


@pytest.mark.parametrize('name', SUBMISSION_NAMES)
def test_two_and_eight_devices_match_one(device_runs, name):
  def trained(n):
    prefix = f'{name}/['
    return {k: v for k, v in device_runs[n].items() if k.startswith(prefix)}

  for n in (1, 2, 8):
    assert int(device_runs[n]['num_devices']) == n
    # Parameters come back replicated over the whole 'batch' mesh.
    assert int(device_runs[n][f'{name}/num_param_devices']) == n
  single = trained(1)
  assert len(single) == 5  # four parameters and the model state counter
  for n in (2, 8):
    assert trained(n).keys() == single.keys()
    for key, value in single.items():
      np.testing.assert_allclose(
        trained(n)[key], value, rtol=0, atol=DEVICE_TOLERANCE, err_msg=key
      )


@pytest.mark.parametrize('name', SUBMISSION_NAMES)
def test_uneven_global_batch_is_a_value_error_before_training(
  device_runs, name
):
  # 12 splits over 1 and 2 devices, not over 8.
  assert str(device_runs[1][f'{name}/value_error']) == ''
  assert str(device_runs[2][f'{name}/value_error']) == ''
  message = str(device_runs[8][f'{name}/value_error'])
  assert "'inputs' is 12" in message and 'the 8 devices' in message


def test_check_batch_divisible_in_process():
  batch = {'inputs': np.zeros((6, 2)), 'targets': np.zeros(6)}
  external.check_batch_divisible(batch, 3)
  with pytest.raises(ValueError, match="'inputs' is 6, not divisible by"):
    self_tuning.check_batch_divisible(batch, 4)


def test_in_process_worker_matches_reference():
  # The worker's training loop (used with forced devices above) agrees with
  # the optimizer alone on the one device of this process.
  params, model_state, num_param_devices = train('self_tuning', BATCH_SIZE, 5)

  settings = self_tuning.settings_for(200, 0.0025)
  reference = _reference_x(settings, 0.2, make_batches(5, BATCH_SIZE))
  _assert_trees_close(params, reference, 1e-6)
  assert num_param_devices == jax.device_count()
  assert int(model_state['num_updates']) == 5
  assert jnp.asarray(params['hidden']['kernel']).dtype == jnp.float32
