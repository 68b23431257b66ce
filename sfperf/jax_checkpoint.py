"""Save a JAX pytree to one `.npz` file and load it back into a like tree.

The local runner's JAX checkpoints (sfperf/runner/jax_trial_checkpoint.py)
store params, model state and optimizer state this way. A tree's leaves are
stored as raw
bytes with their dtype names and shapes (so bfloat16, which `.npz` cannot
name, survives), next to the tree's structure as text; loading needs a tree
of the same structure (`like`, e.g. a fresh `init_optimizer_state`), whose
leaves give each restored leaf its type, dtype and sharding. Nothing is
pickled, so a file cannot run code when it is read.
"""

from typing import Any

import jax
import numpy as np

from sfperf.fsutil import atomic_path

_TREEDEF = 'treedef'
_DTYPES = 'dtypes'


def _leaf_key(index: int) -> str:
  return f'leaf_{index}'


def _shape_key(index: int) -> str:
  return f'shape_{index}'


def save_pytree(path: str, tree: Any) -> None:
  """Writes `tree` to `path` (atomically: a crash leaves any old file).

  Args:
    path: the file to write; used as given, no suffix is added.
    tree: a pytree whose leaves are JAX arrays, NumPy arrays or Python and
      NumPy scalars; device arrays are copied to the host.
  """
  leaves, treedef = jax.tree.flatten(tree)
  arrays = {_TREEDEF: np.array(str(treedef))}
  dtype_names = []
  for index, leaf in enumerate(leaves):
    host = np.asarray(jax.device_get(leaf))
    if host.dtype.kind == 'O':
      raise TypeError(
        f'leaf {index} of the tree is a {type(leaf).__name__}, not an array '
        'or a scalar; it cannot be saved'
      )
    dtype_names.append(host.dtype.name)
    arrays[_leaf_key(index)] = np.frombuffer(host.tobytes(), np.uint8)
    arrays[_shape_key(index)] = np.array(host.shape, np.int64)
  arrays[_DTYPES] = np.array(dtype_names, dtype=str)
  with atomic_path(path) as temp_path:
    with open(temp_path, 'wb') as f:
      np.savez(f, **arrays)


def _restore_leaf(host: np.ndarray, like: Any) -> Any:
  """`host` as the kind of value `like` is, placed where `like` is."""
  if isinstance(like, jax.Array):
    return jax.device_put(host, like.sharding)
  if isinstance(like, np.ndarray):
    return host
  if isinstance(like, np.generic):
    return host[()]
  return type(like)(host.item())


def _dtype_and_shape(like: Any) -> tuple[np.dtype, tuple[int, ...]]:
  """A leaf's dtype and shape, without copying a device array to the host."""
  if hasattr(like, 'dtype') and hasattr(like, 'shape'):
    return np.dtype(like.dtype), tuple(like.shape)
  host = np.asarray(like)
  return host.dtype, host.shape


def load_pytree(path: str, like: Any) -> Any:
  """Reads the tree that `save_pytree` wrote to `path`.

  Args:
    path: a file written by `save_pytree`.
    like: a tree of the same structure, leaf dtypes and shapes, such as a
      freshly initialized state; only its leaves' kinds and shardings are
      used, never their values.

  Returns:
    A tree of `like`'s structure holding the saved values: JAX arrays with
    the sharding of `like`'s leaves, NumPy arrays, or Python scalars of the
    same type.

  Raises:
    ValueError: the file's structure, a dtype or a shape differs from
      `like`'s; the message names the file and the first difference.
  """
  like_leaves, treedef = jax.tree.flatten(like)
  with np.load(path, allow_pickle=False) as saved:
    saved_treedef = str(saved[_TREEDEF])
    if saved_treedef != str(treedef):
      raise ValueError(
        f'{path} holds a tree of structure {saved_treedef}, not the '
        f'{treedef} it is loaded into; load it into a state built the way '
        'the saved one was'
      )
    dtype_names = saved[_DTYPES]
    leaves = []
    for index, like_leaf in enumerate(like_leaves):
      dtype, expected_shape = _dtype_and_shape(like_leaf)
      shape = tuple(int(size) for size in saved[_shape_key(index)])
      if (dtype_names[index], shape) != (dtype.name, expected_shape):
        raise ValueError(
          f'{path}: leaf {index} is {dtype_names[index]}{list(shape)}, but '
          f'the tree it is loaded into has {dtype.name}'
          f'{list(expected_shape)} there'
        )
      # A copy: frombuffer's array is read-only and shares the file buffer.
      host = np.frombuffer(saved[_leaf_key(index)].tobytes(), dtype).copy()
      leaves.append(_restore_leaf(host.reshape(shape), like_leaf))
  return jax.tree.unflatten(treedef, leaves)
