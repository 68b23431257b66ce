"""The NumPy stand-in for jax.random: deterministic and distinct keys."""

import numpy as np

from sfperf.runner import prng


def test_keys_are_deterministic_and_distinct():
  root = prng.prng_key(0)
  assert np.array_equal(root, prng.prng_key(0))
  assert not np.array_equal(root, prng.prng_key(1))
  steps = [tuple(prng.fold_in(root, step)) for step in range(100)]
  assert len(set(steps)) == 100
  keys = prng.split(prng.fold_in(root, 5), 4)
  assert keys.shape == (4, 2)
  assert len({tuple(k) for k in keys}) == 4
  assert np.array_equal(keys, prng.split(prng.fold_in(root, 5), 4))
  assert keys.min() >= 0 and keys.max() < 2**31 - 1
