"""Files of a trial directory, in the official runner's formats.

Every file is written whole to a temporary file beside it and moved into
place with `os.replace`, so a crash never leaves a half-written log.
"""

import csv
import io
import json
import os
import platform
import re
import subprocess
import sys
from typing import Any, Dict, List, Optional

import numpy as np

from sfperf.fsutil import atomic_write_text

EVAL_CSV = 'eval_measurements.csv'
MEASUREMENTS_CSV = 'measurements.csv'
HPARAMS_JSON = 'hparams.json'


def _json_default(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, np.ndarray):
    return value.tolist()
  return str(value)


def write_json(path: str, data: Any) -> None:
  atomic_write_text(
    path, json.dumps(data, indent=2, default=_json_default) + '\n'
  )


def read_json(path: str) -> Any:
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _csv_value(value) -> Any:
  if hasattr(value, 'item'):
    return value.item()
  return value


def append_csv_row(path: str, row: Dict[str, Any]) -> None:
  """Appends one row; columns are the sorted union of old and new keys."""
  rows: List[Dict[str, Any]] = []
  if os.path.exists(path):
    with open(path, encoding='utf-8', newline='') as f:
      rows = list(csv.DictReader(f))
  rows.append({key: _csv_value(value) for key, value in row.items()})
  columns = sorted({key for r in rows for key in r})

  text = io.StringIO()
  writer = csv.DictWriter(text, fieldnames=columns, lineterminator='\n')
  writer.writeheader()
  writer.writerows(rows)
  atomic_write_text(path, text.getvalue())


def final_score_step(trial_dir: str) -> Optional[int]:
  """The step of the final score row ending measurements.csv, else None.

  The runner appends that row (only `score` and the step columns filled)
  when a trial ends, so a trial whose CSV ends with it has finished.
  """
  path = os.path.join(trial_dir, MEASUREMENTS_CSV)
  if not os.path.isfile(path):
    return None
  with open(path, encoding='utf-8', errors='replace', newline='') as f:
    rows = list(csv.DictReader(f))
  if not rows:
    return None
  filled = {key for key, value in rows[-1].items() if value}
  if 'score' not in filled or not filled <= _FINAL_ROW_COLUMNS:
    return None
  try:
    return int(rows[-1].get('global_step') or 0)
  except ValueError:
    return 0


def ends_with_final_score(trial_dir: str) -> bool:
  """Whether the trial's measurements.csv ends with the final score row."""
  return final_score_step(trial_dir) is not None


def latest_flags(trial_dir: str) -> Dict[str, Any]:
  """The newest flags_<k>.json of a trial, or {} if none reads."""
  numbered = []
  for name in os.listdir(trial_dir) if os.path.isdir(trial_dir) else []:
    match = re.fullmatch(r'flags_(\d+)\.json', name)
    if match:
      numbered.append((int(match.group(1)), name))
  for _, name in sorted(numbered, reverse=True):
    try:
      flags = read_json(os.path.join(trial_dir, name))
    except (OSError, ValueError):
      continue
    if isinstance(flags, dict):
      return flags
  return {}


_FINAL_ROW_COLUMNS = {'score', 'global_step', 'preemption_count'}


class MetricsLogger:
  """What a workload's `metrics_logger` offers, writing the trial's CSVs.

  Submissions call `append_scalar_metrics(metrics, global_step)`; the runner
  also calls it for eval rows (`is_eval=True`, to both CSVs) and for the
  final score row (measurements.csv only).
  """

  def __init__(self, trial_dir: str) -> None:
    self.trial_dir = trial_dir

  def append_scalar_metrics(
    self,
    metrics: Dict[str, Any],
    global_step: int,
    preemption_count: Optional[int] = None,
    is_eval: bool = False,
  ) -> None:
    row = dict(metrics)
    row['global_step'] = global_step
    if preemption_count is not None:
      row['preemption_count'] = preemption_count
    append_csv_row(os.path.join(self.trial_dir, MEASUREMENTS_CSV), row)
    if is_eval:
      append_csv_row(os.path.join(self.trial_dir, EVAL_CSV), row)

  def finish(self) -> None:
    """Nothing is buffered; kept for API parity with the official logger."""


def _git(*args: str) -> str:
  repo = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
  try:
    result = subprocess.run(
      ['git', '-C', repo, *args],
      capture_output=True,
      text=True,
      timeout=10,
      check=True,
    )
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  return result.stdout.strip()


def _cpu_model_name() -> str:
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def workload_properties(workload) -> Dict[str, Any]:
  """Every public property of primitive type, keyed `workload.<name>`."""
  properties = {}
  for name in dir(type(workload)):
    if name.startswith('_'):
      continue
    if not isinstance(getattr(type(workload), name, None), property):
      continue
    try:
      value = getattr(workload, name)
    except (ValueError, NotImplementedError, AttributeError):
      continue
    if isinstance(value, int | float | str | bool) or value is None:
      properties[f'workload.{name}'] = value
  return properties


def meta_data(
  workload, rng_seed: int, framework: str = 'pytorch'
) -> Dict[str, Any]:
  """The meta_data_<k>.json dict: workload properties, platform, seed.

  The official file also records CPU/memory/disk/network utilization and
  per-GPU statistics through psutil and nvidia-smi; this CPU runner records
  the platform identity fields only. A JAX trial also records jax's version
  and its devices (`jax_devices`).
  """
  import torch

  data = workload_properties(workload)
  gpu_count = torch.cuda.device_count()
  if framework == 'jax':
    import jax

    gpu_count = len(jax.devices('gpu')) if _jax_has_gpu() else 0
    data['jax_version'] = jax.__version__
    data['jax_devices'] = [str(device) for device in jax.local_devices()]
  data.update(
    {
      'os_platform': platform.platform(),
      'python_version': platform.python_version(),
      'python_compiler': platform.python_compiler(),
      'git_branch': _git('rev-parse', '--abbrev-ref', 'HEAD'),
      'git_commit_hash': _git('rev-parse', 'HEAD'),
      'cpu_model_name': _cpu_model_name(),
      'cpu_count': os.cpu_count(),
      'gpu_model_name': _gpu_model_name(framework, gpu_count),
      'gpu_count': gpu_count,
      'torch_version': torch.__version__,
      'argv': ' '.join(sys.argv),
      'rng_seed': rng_seed,
    }
  )
  return data


def _jax_has_gpu() -> bool:
  import jax

  try:
    return bool(jax.devices('gpu'))
  except RuntimeError:  # no GPU backend
    return False


def _gpu_model_name(framework: str, gpu_count: int) -> str:
  if not gpu_count:
    return 'none'
  if framework == 'jax':
    import jax

    return jax.devices('gpu')[0].device_kind
  import torch

  return torch.cuda.get_device_name(0)
