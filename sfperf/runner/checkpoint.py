"""Save and restore a PyTorch trial: optimizer state, model, rng, progress.

A checkpoint is one `torch.save` file `checkpoint_<global_step>` in the trial
directory, holding the same fields as the official runner's PyTorch
checkpoints plus the run's root rng key and torch's RNG state, so that a
resumed trial draws the same per-step keys it would have drawn. Its `extra`
field also holds the number of training batches drawn (which the official
runner does not save): the runner skips that many on resume, so that the
trial continues the data where it stopped.
"""

import glob
import os
import pickle
import re
import zipfile
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from absl import logging

from sfperf.fsutil import atomic_path

_NAME = re.compile(r'checkpoint_(\d+)$')
_REQUIRED_KEYS = (
  'optimizer_state',
  'model_params',
  'train_state',
  'eval_results',
  'global_step',
  'preemption_count',
  'rng',
  'torch_rng_state',
)


class CheckpointError(ValueError):
  """No checkpoint of a trial can be read; the message names the files."""


def check_optimizer_state(optimizer_state: Any) -> None:
  """Holds a PyTorch optimizer state to what AlgoPerf can checkpoint.

  The official runner saves `value.state_dict()` for every value of the
  optimizer-state dict that has one (warning about the others, which are
  lost) and, on `--resume_last_run`, calls `load_state_dict` on every
  value, so a plain int or bool makes a trial impossible to resume. This
  runner does the same; here it says so once, at the start.

  Raises:
    TypeError: the state is not a dict (the official runner calls its
      `keys()` at the first checkpoint).
  """
  if not isinstance(optimizer_state, dict):
    raise TypeError(
      'init_optimizer_state returned a '
      f"{type(optimizer_state).__name__}; AlgoPerf's PyTorch runner needs "
      'a dict of objects with state_dict() and load_state_dict() (an '
      'optimizer, a scheduler, sfperf.submission_utils.StatefulDict)'
    )
  for key, value in optimizer_state.items():
    if not _checkpointable(value):
      logging.warning(
        'optimizer_state[%r] (type %s) lacks state_dict() or '
        'load_state_dict(): checkpoints leave it out and --resume_last_run '
        'will fail, here as under the official runner. Keep plain values '
        'in an object that has both (sfperf.submission_utils.StatefulDict).',
        key,
        type(value).__name__,
      )


def _checkpointable(value: Any) -> bool:
  return hasattr(value, 'state_dict') and hasattr(value, 'load_state_dict')


def _state_of(optimizer_state: Dict[str, Any]) -> Dict[str, Any]:
  """What the official runner saves: each value's state_dict(), if any."""
  return {
    key: value.state_dict()
    for key, value in optimizer_state.items()
    if hasattr(value, 'state_dict')
  }


def _load_into(
  path: str, live: Dict[str, Any], saved: Dict[str, Any]
) -> Dict[str, Any]:
  """Calls `load_state_dict` on every live value, as the official runner.

  Raises:
    CheckpointError: a value cannot be restored (no load_state_dict, or
      nothing saved for it).
  """
  for key, value in live.items():
    if not hasattr(value, 'load_state_dict') or key not in saved:
      raise CheckpointError(
        f'{path}: cannot resume: optimizer_state[{key!r}] (type '
        f'{type(value).__name__}) was not saved or cannot be loaded (no '
        'load_state_dict), and the official runner fails here too; keep '
        'plain values in sfperf.submission_utils.StatefulDict'
      )
    value.load_state_dict(saved[key])
  return live


def _unwrap(model):
  return model.module if hasattr(model, 'module') else model


def checkpoints(trial_dir: str) -> List[str]:
  """Paths of the trial's checkpoints, highest step first."""
  found = []
  for path in glob.glob(os.path.join(trial_dir, 'checkpoint_*')):
    match = _NAME.search(path)
    if match:
      found.append((int(match.group(1)), path))
  return [path for _, path in sorted(found, reverse=True)]


def latest_checkpoint(trial_dir: str) -> Optional[str]:
  """Path of the checkpoint with the highest step, or None."""
  found = checkpoints(trial_dir)
  return found[0] if found else None


def read_checkpoint(path: str) -> Dict[str, Any]:
  """The payload of one checkpoint file.

  Raises:
    CheckpointError: the file is empty, truncated or not a checkpoint.
  """
  try:
    payload = torch.load(path, weights_only=False)
  except (
    OSError,
    EOFError,
    RuntimeError,
    ValueError,
    pickle.UnpicklingError,
    zipfile.BadZipFile,
  ) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise CheckpointError(f'{path} is unreadable ({reason})') from None
  if not isinstance(payload, dict):
    raise CheckpointError(f'{path} is not a runner checkpoint')
  missing = [key for key in _REQUIRED_KEYS if key not in payload]
  if missing:
    raise CheckpointError(f'{path} lacks {", ".join(missing)}')
  return payload


def latest_readable_checkpoint(
  trial_dir: str,
) -> Optional[Tuple[str, Dict[str, Any]]]:
  """(path, payload) of the newest checkpoint that reads, or None if none.

  A corrupt newer checkpoint (a crash while the disk was full, a truncated
  copy) is skipped with a warning naming it, and left in place.

  Raises:
    CheckpointError: checkpoints exist but none of them can be read.
  """
  return first_readable(checkpoints(trial_dir), read_checkpoint)


def first_readable(
  paths: List[str], read: Callable[[str], Dict[str, Any]]
) -> Optional[Tuple[str, Dict[str, Any]]]:
  """The first of `paths` (newest first) that `read` can load, with it.

  Unreadable ones are skipped with a warning; if none can be read, one
  CheckpointError names them all.
  """
  problems = []
  for path in paths:
    try:
      payload = read(path)
    except CheckpointError as e:
      problems.append(str(e))
      continue
    for problem in problems:
      logging.warning('%s; resuming from %s instead.', problem, path)
    return path, payload
  if problems:
    raise CheckpointError(
      '; '.join(problems) + ' and no earlier checkpoint exists; move the '
      'trial directory aside (or rerun with --overwrite) to start it over'
    )
  return None


def save_checkpoint(
  trial_dir: str,
  *,
  optimizer_state: Any,
  model_params: torch.nn.Module,
  model_state: Any,
  train_state: Dict[str, Any],
  eval_results: list,
  global_step: int,
  preemption_count: int,
  rng: Any,
  extra: Optional[Dict[str, Any]] = None,
  keep_intermediate: bool = True,
) -> str:
  """Writes `checkpoint_<global_step>` atomically; returns its path."""
  path = os.path.join(trial_dir, f'checkpoint_{global_step}')
  payload = {
    'optimizer_state': _state_of(optimizer_state),
    'model_params': _unwrap(model_params).state_dict(),
    'model_state': model_state,
    'train_state': dict(train_state),
    'eval_results': eval_results,
    'global_step': global_step,
    'preemption_count': preemption_count,
    'rng': rng,
    'torch_rng_state': torch.get_rng_state(),
    'extra': extra or {},
  }
  with atomic_path(path) as temp_path:
    torch.save(payload, temp_path)
  if not keep_intermediate:
    for old in glob.glob(os.path.join(trial_dir, 'checkpoint_*')):
      match = _NAME.search(old)
      if match and old != path:
        os.remove(old)
  return path


def restore_checkpoint(
  path: str,
  optimizer_state: Any,
  model_params: torch.nn.Module,
  payload: Optional[Dict[str, Any]] = None,
) -> Dict[str, Any]:
  """Loads `path` (or its already read `payload`) into the live state.

  Returns the checkpoint dict with 'optimizer_state' replaced by the live
  (now restored) optimizer state.
  """
  if payload is None:
    payload = read_checkpoint(path)
  _unwrap(model_params).load_state_dict(payload['model_params'])
  payload['optimizer_state'] = _load_into(
    path, optimizer_state, payload['optimizer_state']
  )
  torch.set_rng_state(payload['torch_rng_state'])
  return payload
