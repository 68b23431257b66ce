"""Save and restore a PyTorch trial: optimizer state, model, rng, progress.

A checkpoint is one `torch.save` file `checkpoint_<global_step>` in the trial
directory, holding the same fields as the official runner's PyTorch
checkpoints plus the run's root rng key and torch's RNG state, so that a
resumed trial draws the same per-step keys it would have drawn. The position
of the training input queue is not saved (nor is it officially): a resumed
trial starts a freshly seeded pass over the training data.
"""

import glob
import os
import re
from typing import Any, Dict, Optional

import torch

_NAME = re.compile(r'checkpoint_(\d+)$')


def _state_of(value: Any) -> Any:
  if hasattr(value, 'state_dict'):
    return value.state_dict()
  if isinstance(value, dict):
    return {key: _state_of(item) for key, item in value.items()}
  return value


def _load_into(live: Any, saved: Any) -> Any:
  """Loads `saved` into stateful objects of `live`; returns the result."""
  if hasattr(live, 'load_state_dict'):
    live.load_state_dict(saved)
    return live
  if isinstance(live, dict) and isinstance(saved, dict):
    return {key: _load_into(live.get(key), item) for key, item in saved.items()}
  return saved


def _unwrap(model):
  return model.module if hasattr(model, 'module') else model


def latest_checkpoint(trial_dir: str) -> Optional[str]:
  """Path of the checkpoint with the highest step, or None."""
  found = []
  for path in glob.glob(os.path.join(trial_dir, 'checkpoint_*')):
    match = _NAME.search(path)
    if match:
      found.append((int(match.group(1)), path))
  return max(found)[1] if found else None


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
  tmp_path = path + '.tmp'
  torch.save(payload, tmp_path)
  os.replace(tmp_path, path)
  if not keep_intermediate:
    for old in glob.glob(os.path.join(trial_dir, 'checkpoint_*')):
      match = _NAME.search(old)
      if match and old != path:
        os.remove(old)
  return path


def restore_checkpoint(
  path: str, optimizer_state: Any, model_params: torch.nn.Module
) -> Dict[str, Any]:
  """Loads `path` into the live optimizer state and model.

  Returns the checkpoint dict with 'optimizer_state' replaced by the live
  (now restored) optimizer state.
  """
  payload = torch.load(path, weights_only=False)
  _unwrap(model_params).load_state_dict(payload['model_params'])
  payload['optimizer_state'] = _load_into(
    optimizer_state, payload['optimizer_state']
  )
  torch.set_rng_state(payload['torch_rng_state'])
  return payload
