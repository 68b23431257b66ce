"""A minimal JAX workload for submission tests: a jax.numpy MLP, no flax.

Shared by the in-process tests and the forced-multi-device worker, so both
train the same model on the same data.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from sfperf.api import spec
from tests.tiny_workload import TinyWorkloadBase

NUM_FEATURES = 6
NUM_HIDDEN = 16
NUM_CLASSES = 4


class TinyJaxWorkload(TinyWorkloadBase):
  """A tanh MLP classifier on planted data; records model_fn options.

  `model_fn` applies inverted dropout when given a positive `dropout_rate`
  and keeps a model_state counter of TRAIN-mode forward passes with
  `update_batch_norm=True`, standing in for BatchNorm statistics.
  """

  def __init__(self, metric_name: str = 'accuracy', step_hint: int = 200):
    super().__init__(metric_name, step_hint)
    self.dropout_rates_seen: list[Any] = []
    self.label_smoothings_seen: list[float] = []

  def is_output_params(self, param_key) -> bool:
    return param_key == 'output'

  def init_model_fn(self, rng):
    key_hidden, key_output = jax.random.split(jax.random.PRNGKey(rng), 2)
    params = {
      'hidden': {
        'kernel': 0.5
        * jax.random.normal(key_hidden, (NUM_FEATURES, NUM_HIDDEN)),
        'bias': jnp.zeros(NUM_HIDDEN),
      },
      'output': {
        'kernel': 0.5
        * jax.random.normal(key_output, (NUM_HIDDEN, NUM_CLASSES)),
        'bias': jnp.zeros(NUM_CLASSES),
      },
    }
    self._param_shapes = jax.tree.map(
      lambda p: spec.ShapeTuple(p.shape), params
    )
    self._param_types = jax.tree.map(
      lambda p: spec.ParameterType.WEIGHT, params
    )
    return params, {'num_updates': jnp.zeros([], jnp.int32)}

  def model_fn(
    self,
    params,
    augmented_and_preprocessed_input_batch,
    model_state,
    mode,
    rng,
    update_batch_norm,
    dropout_rate=None,
  ):
    self.dropout_rates_seen.append(dropout_rate)
    inputs = augmented_and_preprocessed_input_batch['inputs']
    hidden = jnp.tanh(
      inputs @ params['hidden']['kernel'] + params['hidden']['bias']
    )
    if dropout_rate and mode == spec.ForwardPassMode.TRAIN:
      keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, hidden.shape)
      hidden = jnp.where(keep, hidden / (1.0 - dropout_rate), 0.0)
    logits = hidden @ params['output']['kernel'] + params['output']['bias']
    if mode == spec.ForwardPassMode.TRAIN and update_batch_norm:
      model_state = {'num_updates': model_state['num_updates'] + 1}
    return logits, model_state

  def loss_fn(
    self, label_batch, logits_batch, mask_batch=None, label_smoothing=0.0
  ):
    self.label_smoothings_seen.append(label_smoothing)
    one_hot = jax.nn.one_hot(label_batch, NUM_CLASSES)
    smoothed = one_hot * (1.0 - label_smoothing) + label_smoothing / NUM_CLASSES
    per_example = -jnp.sum(
      smoothed * jax.nn.log_softmax(logits_batch, axis=-1), axis=-1
    )
    if mask_batch is None:
      mask_batch = jnp.ones_like(per_example)
    per_example = per_example * mask_batch
    return {
      'summed': jnp.sum(per_example),
      'n_valid_examples': jnp.sum(mask_batch),
      'per_example': per_example,
    }

  def _eval_model_on_split(self, *args, **kwargs):
    raise NotImplementedError


def make_batches(
  num_batches: int, batch_size: int, seed: int = 0
) -> list[dict[str, np.ndarray]]:
  """Planted-label batches: the class is the argmax of a fixed projection."""
  rng = np.random.default_rng(seed)
  projection = rng.standard_normal((NUM_FEATURES, NUM_CLASSES))
  batches = []
  for _ in range(num_batches):
    inputs = rng.standard_normal((batch_size, NUM_FEATURES)).astype(np.float32)
    batches.append(
      {
        'inputs': inputs,
        'targets': np.argmax(inputs @ projection, axis=-1).astype(np.int32),
        'weights': np.ones(batch_size, np.float32),
      }
    )
  return batches
