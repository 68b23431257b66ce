"""Save and restore a JAX trial: parameters, model and optimizer state, rng.

A checkpoint is a directory `checkpoint_<global_step>` in the trial
directory holding `state.npz`, the pytrees {'model_params', 'model_state',
'optimizer_state'} written bit-exactly by `sfperf.jax_checkpoint` (of the
submission's `(opt_state, opt_update_fn)` pair, only `opt_state`, as the
official runner saves), and
`meta.json`, the runner's fields as in the PyTorch checkpoints (train_state,
eval_results, global_step, preemption_count, the root rng key and `extra`,
with the number of batches drawn). It is written into a temporary directory
and renamed into place, so a crash never leaves half a checkpoint under
that name. Restoring needs trees of the saved structure, such as a fresh
`init_model_fn` and `init_optimizer_state`; their leaves give each restored
value its kind and sharding.
"""

import json
import os
import re
import shutil
import tempfile
from typing import Any, Dict, List, Optional, Tuple

import jax
import numpy as np

from sfperf import jax_checkpoint
from sfperf.fsutil import default_mode

# The PyTorch checkpoints' error, so callers catch one type for both.
from sfperf.runner.checkpoint import CheckpointError, first_readable

_NAME = re.compile(r'checkpoint_(\d+)$')
STATE_FILE = 'state.npz'
META_FILE = 'meta.json'
_REQUIRED_KEYS = (
  'train_state',
  'eval_results',
  'global_step',
  'preemption_count',
  'rng',
)


def checkpoints(trial_dir: str) -> List[str]:
  """Paths of the trial's checkpoint directories, highest step first."""
  found = []
  if os.path.isdir(trial_dir):
    for name in os.listdir(trial_dir):
      match = _NAME.match(name)
      if match:
        found.append((int(match.group(1)), os.path.join(trial_dir, name)))
  return [path for _, path in sorted(found, reverse=True)]


def latest_checkpoint(trial_dir: str) -> Optional[str]:
  """Path of the checkpoint with the highest step, or None."""
  found = checkpoints(trial_dir)
  return found[0] if found else None


def read_checkpoint(path: str) -> Dict[str, Any]:
  """The runner's fields of one checkpoint (its pytrees stay on disk).

  The rng comes back as a JAX key and eval_results as (step, dict) pairs.

  Raises:
    CheckpointError: the checkpoint is not a directory, lacks a file or a
      field, or its meta.json does not parse.
  """
  state_path = os.path.join(path, STATE_FILE)
  if not os.path.isdir(path) or not os.path.isfile(state_path):
    raise CheckpointError(
      f'{path} is not a JAX runner checkpoint (no {STATE_FILE})'
    )
  try:
    with open(os.path.join(path, META_FILE), encoding='utf-8') as f:
      payload = json.load(f)
  except (OSError, ValueError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CheckpointError(f'{path} is unreadable ({reason})') from None
  if not isinstance(payload, dict):
    raise CheckpointError(f'{path} is not a runner checkpoint')
  missing = [key for key in _REQUIRED_KEYS if key not in payload]
  if missing:
    raise CheckpointError(f'{path} lacks {", ".join(missing)}')
  payload['rng'] = jax.numpy.asarray(np.array(payload['rng'], np.uint32))
  payload['eval_results'] = [
    (step, result) for step, result in payload['eval_results']
  ]
  return payload


def latest_readable_checkpoint(
  trial_dir: str,
) -> Optional[Tuple[str, Dict[str, Any]]]:
  """(path, payload) of the newest checkpoint that reads, or None if none.

  A corrupt newer checkpoint is skipped with a warning naming it.

  Raises:
    CheckpointError: checkpoints exist but none of them can be read.
  """
  return first_readable(checkpoints(trial_dir), read_checkpoint)


def check_optimizer_state(optimizer_state: Any) -> None:
  """Holds a JAX optimizer state to the pair AlgoPerf's runner unpacks.

  The official runner does `opt_state, opt_update_fn = optimizer_state`
  before the first step of every run (looking for a checkpoint) and at
  every save, so anything but a pair fails there; it checkpoints
  `opt_state` as a pytree, so its leaves must be arrays or scalars.

  Raises:
    TypeError: the state is not a pair, or a leaf of `opt_state` is not an
      array or a scalar (a function, an arbitrary object).
  """
  if not (
    isinstance(optimizer_state, (tuple, list)) and len(optimizer_state) == 2
  ):
    raise TypeError(
      'init_optimizer_state returned a '
      f'{type(optimizer_state).__name__}, not the pair (opt_state, '
      "opt_update_fn) that AlgoPerf's JAX runner unpacks before the first "
      'step; return (state, None) if there is no update function'
    )
  leaves = jax.tree_util.tree_flatten_with_path(optimizer_state[0])[0]
  for path, leaf in leaves:
    if hasattr(leaf, 'dtype') and hasattr(leaf, 'shape'):
      continue  # an array: no need to copy it to look
    if np.asarray(leaf).dtype.kind == 'O':
      raise TypeError(
        f'opt_state{jax.tree_util.keystr(path)} is a {type(leaf).__name__}, '
        'which a checkpoint cannot hold; keep arrays and scalars in '
        "opt_state (functions belong in the pair's second element)"
      )


def _json_default(value: Any) -> Any:
  if isinstance(value, (np.generic, jax.Array)):
    return np.asarray(value).tolist()
  raise TypeError(f'{type(value).__name__} is not JSON serializable')


def save_checkpoint(
  trial_dir: str,
  *,
  optimizer_state: Any,
  model_params: Any,
  model_state: Any,
  train_state: Dict[str, Any],
  eval_results: list,
  global_step: int,
  preemption_count: int,
  rng: Any,
  extra: Optional[Dict[str, Any]] = None,
  keep_intermediate: bool = True,
) -> str:
  """Writes `checkpoint_<global_step>/` atomically; returns its path."""
  path = os.path.join(trial_dir, f'checkpoint_{global_step}')
  meta = {
    'train_state': dict(train_state),
    'eval_results': eval_results,
    'global_step': global_step,
    'preemption_count': preemption_count,
    'rng': np.asarray(jax.device_get(rng)).tolist(),
    'extra': extra or {},
  }
  temp_dir = tempfile.mkdtemp(
    prefix=f'.checkpoint_{global_step}.', dir=trial_dir
  )
  try:
    os.chmod(temp_dir, default_mode(0o777))
    jax_checkpoint.save_pytree(
      os.path.join(temp_dir, STATE_FILE),
      {
        'model_params': model_params,
        'model_state': model_state,
        'optimizer_state': optimizer_state[0],
      },
    )
    with open(os.path.join(temp_dir, META_FILE), 'w', encoding='utf-8') as f:
      json.dump(meta, f, default=_json_default)
    _replace_directory(temp_dir, path)
  finally:
    if os.path.exists(temp_dir):
      shutil.rmtree(temp_dir)
  if not keep_intermediate:
    for old in checkpoints(trial_dir):
      if old != path:
        shutil.rmtree(old)
  return path


def _replace_directory(source: str, destination: str) -> None:
  """Renames `source` to `destination`, replacing an existing one.

  The final eval and the end of training save the same step twice; the
  older directory is renamed away first (a rename over a non-empty
  directory fails), so a crash between the renames leaves the newer state
  under a hidden name and the earlier checkpoints readable.
  """
  if not os.path.exists(destination):
    os.rename(source, destination)
    return
  old = tempfile.mkdtemp(
    prefix=f'.{os.path.basename(destination)}.old.',
    dir=os.path.dirname(destination),
  )
  os.rmdir(old)
  os.rename(destination, old)
  os.rename(source, destination)
  shutil.rmtree(old)


def restore_checkpoint(
  path: str,
  optimizer_state: Any,
  model_params: Any,
  model_state: Any,
  payload: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
  """Loads `path` into trees shaped like the given fresh ones.

  Returns the checkpoint's fields with 'optimizer_state' (the pair, its
  update function taken from the given one), 'model_params' and
  'model_state' holding the restored trees.

  Raises:
    CheckpointError: the saved trees do not fit the given ones (another
      model or submission, or a changed optimizer state).
  """
  if payload is None:
    payload = read_checkpoint(path)
  opt_state, opt_update_fn = optimizer_state
  like = {
    'model_params': model_params,
    'model_state': model_state,
    'optimizer_state': opt_state,
  }
  try:
    restored = jax_checkpoint.load_pytree(os.path.join(path, STATE_FILE), like)
  except (OSError, ValueError) as e:
    raise CheckpointError(str(e)) from None
  restored['optimizer_state'] = (restored['optimizer_state'], opt_update_fn)
  payload.update(restored)
  return payload
