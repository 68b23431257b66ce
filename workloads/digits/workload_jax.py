"""The digits proxy in JAX: the PyTorch proxy's conv net in plain jax.numpy.

Same data as `workload.py` (split, normalization, batch order: `base.py`),
same catalog entry (targets, budget, eval period, step hint) and the same
architecture: conv 3x3 (1 -> 16) + BatchNorm + ReLU, conv 3x3 (16 -> 32) +
BatchNorm + ReLU, 2x2 max pool, dropout, linear head; convolutions without
bias, initialized as PyTorch's defaults do (uniform in +-1/sqrt(fan_in)).
A conv net, not an MLP: under jit a whole training step of batch 16 takes
about 1.3 ms on the project's CPU (see TARGET.md).

Parameters are nested dicts; `model_state` holds the BatchNorm running
means and variances, updated (momentum 0.1, as torch's) only by a TRAIN-mode
forward pass with `update_batch_norm=True`, so the statistics-at-y hazard of
Schedule-Free is present as in the PyTorch model. Batches follow the v0.6
JAX layout: global arrays sharded along the first dimension over a 1-D
device mesh with axis 'batch'.
"""

import functools
import math
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sfperf.api import spec
from workloads.digits.base import (
  DROPOUT_RATE,
  NUM_CLASSES,
  DigitsBase,
)

MESH_AXIS = 'batch'
# torch.nn.BatchNorm2d's defaults: running = (1 - m) * running + m * batch,
# the running variance unbiased.
BATCH_NORM_MOMENTUM = 0.1
BATCH_NORM_EPSILON = 1e-5
CONV1_FEATURES = 16
CONV2_FEATURES = 32
HEAD_INPUTS = CONV2_FEATURES * 4 * 4


def batch_sharding() -> NamedSharding:
  """Splits an array's first dimension over all devices (axis 'batch')."""
  mesh = Mesh(np.array(jax.devices()), (MESH_AXIS,))
  return NamedSharding(mesh, PartitionSpec(MESH_AXIS))


def _uniform(key: jax.Array, shape: Tuple[int, ...], fan_in: int) -> jax.Array:
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def init_params(rng: jax.Array) -> Dict[str, Any]:
  """Parameters as PyTorch initializes `DigitsNet` (same distributions)."""
  conv1_key, conv2_key, head_w_key, head_b_key = jax.random.split(rng, 4)
  return {
    # HWIO kernels, as lax.conv_general_dilated takes them.
    'conv1': {'kernel': _uniform(conv1_key, (3, 3, 1, CONV1_FEATURES), 9)},
    'bn1': {
      'scale': jnp.ones(CONV1_FEATURES),
      'bias': jnp.zeros(CONV1_FEATURES),
    },
    'conv2': {
      'kernel': _uniform(
        conv2_key, (3, 3, CONV1_FEATURES, CONV2_FEATURES), 9 * CONV1_FEATURES
      )
    },
    'bn2': {
      'scale': jnp.ones(CONV2_FEATURES),
      'bias': jnp.zeros(CONV2_FEATURES),
    },
    'head': {
      'kernel': _uniform(head_w_key, (HEAD_INPUTS, NUM_CLASSES), HEAD_INPUTS),
      'bias': _uniform(head_b_key, (NUM_CLASSES,), HEAD_INPUTS),
    },
  }


def init_batch_stats() -> Dict[str, Any]:
  return {
    name: {'mean': jnp.zeros(features), 'var': jnp.ones(features)}
    for name, features in (('bn1', CONV1_FEATURES), ('bn2', CONV2_FEATURES))
  }


def _param_type(path: Tuple[str, str]) -> spec.ParameterType:
  layer, name = path
  if layer.startswith('bn'):
    if name == 'scale':
      return spec.ParameterType.BATCH_NORM_SCALE
    return spec.ParameterType.BATCH_NORM_BIAS
  if name == 'bias':
    return spec.ParameterType.BIAS
  if layer.startswith('conv'):
    return spec.ParameterType.CONV_WEIGHT
  return spec.ParameterType.WEIGHT


def _conv(x: jax.Array, kernel: jax.Array) -> jax.Array:
  return jax.lax.conv_general_dilated(
    x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


def _batch_norm(
  x: jax.Array,
  params: Dict[str, jax.Array],
  stats: Dict[str, jax.Array],
  use_batch_stats: bool,
) -> Tuple[jax.Array, Dict[str, jax.Array]]:
  """Normalizes `x` [N, H, W, C]; returns it and the updated statistics.

  With batch statistics (TRAIN mode) the running mean and unbiased variance
  move towards the batch's by BATCH_NORM_MOMENTUM; the caller decides
  whether to keep them.
  """
  if not use_batch_stats:
    mean, var = stats['mean'], stats['var']
    new_stats = stats
  else:
    mean = jnp.mean(x, axis=(0, 1, 2))
    var = jnp.var(x, axis=(0, 1, 2))
    count = x.shape[0] * x.shape[1] * x.shape[2]
    unbiased = var * count / max(count - 1, 1)
    new_stats = {
      'mean': (1 - BATCH_NORM_MOMENTUM) * stats['mean']
      + BATCH_NORM_MOMENTUM * mean,
      'var': (1 - BATCH_NORM_MOMENTUM) * stats['var']
      + BATCH_NORM_MOMENTUM * unbiased,
    }
  normalized = (x - mean) * jax.lax.rsqrt(var + BATCH_NORM_EPSILON)
  return normalized * params['scale'] + params['bias'], new_stats


def apply_model(
  params: Dict[str, Any],
  inputs: jax.Array,
  batch_stats: Dict[str, Any],
  train: bool,
  rng: Optional[jax.Array],
  dropout_rate: float,
) -> Tuple[jax.Array, Dict[str, Any]]:
  """Logits for `inputs` [N, 8, 8, 1] and the moved BatchNorm statistics."""
  x, bn1 = _batch_norm(
    _conv(inputs, params['conv1']['kernel']),
    params['bn1'],
    batch_stats['bn1'],
    train,
  )
  x = jax.nn.relu(x)
  x, bn2 = _batch_norm(
    _conv(x, params['conv2']['kernel']),
    params['bn2'],
    batch_stats['bn2'],
    train,
  )
  x = jax.nn.relu(x)
  x = jax.lax.reduce_window(
    x, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID'
  )
  # NCHW order before flattening, so the head's rows line up with torch's.
  x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
  if train and dropout_rate > 0.0:
    keep = jax.random.bernoulli(rng, 1.0 - dropout_rate, x.shape)
    x = jnp.where(keep, x / (1.0 - dropout_rate), 0.0)
  logits = x @ params['head']['kernel'] + params['head']['bias']
  return logits, {'bn1': bn1, 'bn2': bn2}


def _as_raw_key(rng: Any) -> Any:
  if isinstance(rng, jax.Array) and jnp.issubdtype(
    rng.dtype, jax.dtypes.prng_key
  ):
    return jax.random.key_data(rng)
  return rng


class DigitsJaxWorkload(DigitsBase):
  """AlgoPerf Workload interface over the digits data, in JAX."""

  def _data_key(self, data_rng):
    return _as_raw_key(data_rng)

  def _to_framework(self, batch):
    """Inputs [N, 8, 8, 1] float32, int32 targets, sharded on 'batch'."""
    batch = dict(batch)
    batch['inputs'] = batch['inputs'][..., None]
    batch['targets'] = batch['targets'].astype(np.int32)
    return jax.device_put(batch, batch_sharding())

  # Model.

  def is_output_params(self, param_key: spec.ParameterKey) -> bool:
    return param_key == 'head'

  def init_model_fn(self, rng: spec.RandomState) -> spec.ModelInitState:
    """Parameters and BatchNorm statistics, replicated over the devices."""
    params = init_params(_as_raw_key(rng))
    self._param_shapes = jax.tree.map(
      lambda p: spec.ShapeTuple(p.shape), params
    )
    self._param_types = {
      layer: {name: _param_type((layer, name)) for name in leaves}
      for layer, leaves in params.items()
    }
    replicated = NamedSharding(batch_sharding().mesh, PartitionSpec())
    return jax.device_put((params, init_batch_stats()), replicated)

  def model_fn(
    self,
    params: spec.ParameterContainer,
    augmented_and_preprocessed_input_batch: Dict[str, spec.Tensor],
    model_state: spec.ModelAuxiliaryState,
    mode: spec.ForwardPassMode,
    rng: spec.RandomState,
    update_batch_norm: bool,
    dropout_rate: Optional[float] = None,
  ) -> Tuple[spec.Tensor, spec.ModelAuxiliaryState]:
    """Forward pass; `dropout_rate=None` means the default, `DROPOUT_RATE`.

    TRAIN mode normalizes with batch statistics and, with
    `update_batch_norm`, returns the moved running statistics; otherwise
    `model_state` comes back unchanged.
    """
    train = mode == spec.ForwardPassMode.TRAIN
    logits, new_stats = apply_model(
      params,
      augmented_and_preprocessed_input_batch['inputs'],
      model_state,
      train,
      rng,
      DROPOUT_RATE if dropout_rate is None else dropout_rate,
    )
    if train and update_batch_norm:
      return logits, new_stats
    return logits, model_state

  def loss_fn(
    self,
    label_batch: spec.Tensor,
    logits_batch: spec.Tensor,
    mask_batch: Optional[spec.Tensor] = None,
    label_smoothing: float = 0.0,
  ) -> Dict[str, spec.Tensor]:
    """Softmax cross-entropy with label smoothing, masked.

    Returns {'summed': sum of masked losses, 'n_valid_examples': number of
    unmasked examples, 'per_example': masked per-example losses}; under
    jit the sums run over the global batch.
    """
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

  @functools.cached_property
  def _eval_step(self):
    """Jitted sums of loss, correct predictions and examples of a batch."""

    def step(params, model_state, batch):
      logits, _ = self.model_fn(
        params,
        batch,
        model_state,
        spec.ForwardPassMode.EVAL,
        None,
        update_batch_norm=False,
      )
      weights = batch['weights']
      losses = self.loss_fn(batch['targets'], logits, weights)
      correct = (jnp.argmax(logits, axis=-1) == batch['targets']) * weights
      return losses['summed'], jnp.sum(correct), losses['n_valid_examples']

    return jax.jit(step)

  def _eval_batch(self, params, model_state, batch, rng):
    del rng
    return self._eval_step(params, model_state, batch)
