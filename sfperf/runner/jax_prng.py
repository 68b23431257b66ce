"""The JAX runner's keys: `jax.random` with the threefry2x32 implementation.

As AlgoPerf's JAX path (`random_utils` proxies to `jax.random`), keys are
raw uint32 arrays of shape [2] (`jax.random.PRNGKey` keys), not typed key
arrays, so a key can be written to a checkpoint and read back as data, and
the shared digits input pipeline can seed NumPy from its words. The seed is
taken as 64 bits, high word first, as `PRNGKey` does with 64-bit integers
enabled; for seeds below 2**32 the key is `PRNGKey(seed)`.
"""

import jax
import numpy as np

_WORD = 2**32


def configure() -> None:
  """Sets the PRNG options of the v0.6 runner (threefry, partitionable)."""
  jax.config.update('jax_default_prng_impl', 'threefry2x32')
  jax.config.update('jax_threefry_partitionable', True)


def prng_key(seed: int) -> jax.Array:
  """The root key of a run from an integer seed (up to 64 bits)."""
  seed = int(seed) % _WORD**2
  return jax.numpy.asarray(
    np.array([seed // _WORD, seed % _WORD], dtype=np.uint32)
  )


def fold_in(key: jax.Array, data: int) -> jax.Array:
  """`jax.random.fold_in`; `data` (e.g. a step) is taken modulo 2**32."""
  return jax.random.fold_in(key, int(data) % _WORD)


def split(key: jax.Array, num: int = 2) -> jax.Array:
  """`jax.random.split`: `num` new keys, as an array of shape [num, 2]."""
  return jax.random.split(key, num)
