"""Deterministic NumPy stand-in for `jax.random`'s PRNGKey/fold_in/split.

PyTorch runs need no JAX keys, only reproducible integer seeds. A key here is
an int64 array of two values in [0, 2**31 - 1), so `int(key[0])` seeds torch
the way AlgoPerf's PyTorch workloads do. New keys come from NumPy's
`SeedSequence` over the parent key and the folded-in data, a stable hash that
gives the same keys on every machine and NumPy version. The values differ from
both JAX's threefry keys and AlgoPerf's own NumPy emulation; only the
properties matter (deterministic, distinct per step and per use).
"""

import numpy as np

_KEY_BOUND = 2**31 - 1


def _derive(entropy: list, count: int) -> np.ndarray:
  words = np.random.SeedSequence(entropy).generate_state(count, np.uint64)
  return (words % _KEY_BOUND).astype(np.int64)


def _entropy(key) -> list:
  return [int(v) % 2**32 for v in np.asarray(key).ravel()]


def prng_key(seed: int) -> np.ndarray:
  """The root key of a run from an integer seed."""
  seed = int(seed) % 2**64
  return _derive([seed % 2**32, seed >> 32], 2)


def fold_in(key, data: int) -> np.ndarray:
  """A new key that depends on `key` and the integer `data` (e.g. a step)."""
  return _derive([*_entropy(key), 0xF01D, int(data) % 2**32], 2)


def split(key, num: int = 2) -> np.ndarray:
  """`num` new keys from `key`, as an array of shape [num, 2]."""
  return _derive([*_entropy(key), 0x5B17, num], 2 * num).reshape(num, 2)
