"""Trains the tiny JAX workload with both JAX submissions on all devices.

Run as `python -m tests.submissions.jax_sharding_worker OUT.npz BATCH_SIZE
STEPS UNEVEN_BATCH_SIZE` with XLA_FLAGS=--xla_force_host_platform_device_count=N
set before start, because JAX fixes its device count when it is imported.
For each submission, writes to OUT.npz the final parameters and model state
after STEPS steps of BATCH_SIZE (keys prefixed with the submission), the
number of devices holding the parameters, and what one step with
UNEVEN_BATCH_SIZE raised: the ValueError message, or '' if it trained.
"""

import importlib
import sys
from collections import namedtuple

import jax
import numpy as np

from tests.submissions.jax_workload import TinyJaxWorkload, make_batches

SUBMISSIONS = {
  'self_tuning': 'submissions.self_tuning.schedule_free_adamw_jax.submission',
  'external_tuning': (
    'submissions.external_tuning.schedule_free_adamw_jax.submission'
  ),
}

Hyperparameters = namedtuple(
  'Hyperparameters',
  [
    'learning_rate',
    'one_minus_beta1',
    'beta2',
    'weight_decay',
    'warmup_factor',
    'label_smoothing',
    'dropout_rate',
  ],
)
EXTERNAL_TRIAL = Hyperparameters(
  learning_rate=0.02,
  one_minus_beta1=0.1,
  beta2=0.9955,
  weight_decay=0.08,
  warmup_factor=0.05,
  label_smoothing=0.2,
  dropout_rate=0.0,
)


def train(
  submission_name: str, batch_size: int, num_steps: int
) -> tuple[dict, dict, int]:
  """Runs `num_steps` of a submission.

  Returns:
    (params x, model_state, number of devices holding the parameters).
  """
  submission = importlib.import_module(SUBMISSIONS[submission_name])
  hyperparameters = (
    EXTERNAL_TRIAL if submission_name == 'external_tuning' else None
  )
  workload = TinyJaxWorkload(step_hint=200)
  params, model_state = workload.init_model_fn(0)
  optimizer_state = submission.init_optimizer_state(
    workload, params, model_state, hyperparameters, jax.random.PRNGKey(1)
  )
  for step, batch in enumerate(make_batches(num_steps, batch_size)):
    optimizer_state, params, model_state = submission.update_params(
      workload=workload,
      current_param_container=params,
      current_params_types=workload.model_params_types,
      model_state=model_state,
      hyperparameters=hyperparameters,
      batch=batch,
      loss_type=workload.loss_type,
      optimizer_state=optimizer_state,
      eval_results=[],
      global_step=step,
      rng=jax.random.PRNGKey(step),
    )
  num_param_devices = len(jax.tree.leaves(params)[0].sharding.device_set)
  return jax.device_get(params), jax.device_get(model_state), num_param_devices


def main(argv: list[str]) -> int:
  out_path, batch_size, num_steps, uneven_batch_size = argv[1:]
  arrays = {'num_devices': np.array(jax.device_count())}
  for name in SUBMISSIONS:
    params, model_state, num_param_devices = train(
      name, int(batch_size), int(num_steps)
    )
    arrays[f'{name}/num_param_devices'] = np.array(num_param_devices)
    flat, _ = jax.tree_util.tree_flatten_with_path((params, model_state))
    for path, leaf in flat:
      arrays[f'{name}/{jax.tree_util.keystr(path)}'] = np.asarray(leaf)
    try:
      train(name, int(uneven_batch_size), 1)
    except ValueError as error:
      arrays[f'{name}/value_error'] = np.array(str(error))
    else:
      arrays[f'{name}/value_error'] = np.array('')
  np.savez(out_path, **arrays)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
