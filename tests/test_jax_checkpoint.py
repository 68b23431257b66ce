"""`save_pytree`/`load_pytree`, and a JAX submission resumed through them.

The local runner trains PyTorch only, so the JAX self-tuning submission is
checkpointed at the submission level: `update_params` for STOP_STEP steps,
its parameters, model state and optimizer state saved to a file, loaded into
a state built afresh by `init_optimizer_state`, and trained on to NUM_STEPS,
which must end bit for bit where an uninterrupted run does.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sfperf.jax_checkpoint import load_pytree, save_pytree
from submissions.self_tuning.schedule_free_adamw_jax import (
  submission as self_tuning,
)
from tests.submissions.jax_workload import TinyJaxWorkload, make_batches

NUM_STEPS = 60
STOP_STEP = 30
BATCH_SIZE = 16
# Four flat evals: with the tiny workload's step hint of 200, the entry's
# divergence reset fires at step 21 (past 10% of the hint), before the stop,
# so the saved state holds x0, a halved learning rate and the eval count.
FLAT_EVALS = [(step, {'validation/accuracy': 0.25}) for step in (1, 5, 9, 13)]


def _leaves_identical(expected, actual):
  expected_leaves, expected_def = jax.tree.flatten(expected)
  actual_leaves, actual_def = jax.tree.flatten(actual)
  assert expected_def == actual_def
  for left, right in zip(expected_leaves, actual_leaves, strict=True):
    assert type(left) is type(right)
    left, right = np.asarray(left), np.asarray(right)
    assert left.dtype == right.dtype and left.shape == right.shape
    # Compared as bits: NaN-safe and sensitive to -0.0.
    assert left.tobytes() == right.tobytes()


def test_round_trip_keeps_values_dtypes_types_and_sharding(tmp_path):
  tree = {
    'bf16': jnp.arange(6, dtype=jnp.bfloat16).reshape(2, 3) / 3,
    'f32': jnp.asarray([-0.0, 1.5, np.nan], jnp.float32),
    'i32': jnp.asarray(7, jnp.int32),
    'host': np.arange(4, dtype=np.float64),
    'scalars': (True, 3, 0.1, np.float32(2.5)),
  }
  path = str(tmp_path / 'tree.npz')
  save_pytree(path, tree)
  like = jax.tree.map(lambda leaf: leaf, tree)
  restored = load_pytree(path, like)
  _leaves_identical(tree, restored)
  assert restored['bf16'].sharding == tree['bf16'].sharding
  assert restored['scalars'][0] is True


def test_load_into_another_structure_or_dtype_names_the_file(tmp_path):
  path = str(tmp_path / 'tree.npz')
  save_pytree(path, {'a': jnp.zeros(3), 'b': 1})
  with pytest.raises(ValueError, match='tree.npz holds a tree of structure'):
    load_pytree(path, {'a': jnp.zeros(3)})
  with pytest.raises(ValueError, match=r'leaf 0 is float32\[3\]'):
    load_pytree(path, {'a': jnp.zeros(3, jnp.bfloat16), 'b': 1})
  with pytest.raises(ValueError, match=r'float32\[4\] there'):
    load_pytree(path, {'a': jnp.zeros(4), 'b': 1})


def _fresh_state(workload):
  params, model_state = workload.init_model_fn(0)
  optimizer_state = self_tuning.init_optimizer_state(
    workload, params, model_state, None, jax.random.PRNGKey(1)
  )
  return {
    'params': params,
    'model_state': model_state,
    'optimizer_state': optimizer_state,
  }


def _train(workload, state, batches, first_step):
  params = state['params']
  model_state = state['model_state']
  optimizer_state = state['optimizer_state']
  for offset, batch in enumerate(batches):
    step = first_step + offset
    optimizer_state, params, model_state = self_tuning.update_params(
      workload=workload,
      current_param_container=params,
      current_params_types=workload.model_params_types,
      model_state=model_state,
      hyperparameters=None,
      batch=batch,
      loss_type=workload.loss_type,
      optimizer_state=optimizer_state,
      eval_results=list(FLAT_EVALS),
      global_step=step,
      rng=jax.random.PRNGKey(step),
    )
  return {
    'params': params,
    'model_state': model_state,
    'optimizer_state': optimizer_state,
  }


def test_self_tuning_submission_resumes_bit_for_bit(tmp_path):
  batches = make_batches(NUM_STEPS, BATCH_SIZE)
  workload = TinyJaxWorkload()
  uninterrupted = _train(workload, _fresh_state(workload), batches, 0)

  stopped = _train(workload, _fresh_state(workload), batches[:STOP_STEP], 0)
  assert stopped['optimizer_state'][0]['has_forced_reset']
  assert stopped['optimizer_state'][0]['max_checked_eval_step'] == len(
    FLAT_EVALS
  )
  path = str(tmp_path / f'checkpoint_{STOP_STEP}.npz')
  save_pytree(path, stopped)
  del stopped

  fresh_workload = TinyJaxWorkload()
  like = _fresh_state(fresh_workload)
  restored = load_pytree(path, like)
  # What the fresh state would have got wrong, had it not been restored.
  assert (
    restored['optimizer_state'][0]['settings'].learning_rate
    == like['optimizer_state'][0]['settings'].learning_rate / 2
  )
  assert restored['optimizer_state'][0]['optimizer_state'].v['hidden'][
    'kernel'
  ].dtype == (jnp.bfloat16)
  resumed = _train(
    fresh_workload, restored, batches[STOP_STEP:], first_step=STOP_STEP
  )
  _leaves_identical(uninterrupted, resumed)
  assert int(resumed['optimizer_state'][0]['optimizer_state'].k) > 0
