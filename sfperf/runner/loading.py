"""Finding the pieces of a run: workload, submission module, search space."""

import collections
import glob
import importlib
import importlib.util
import json
import os
import re
import sys
import types
from typing import Any, List, Optional

from absl import logging

from sfperf.runner import search_space

REPO_ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)

# Workloads the local runner can train: name -> (module, class).
WORKLOADS = {
  'digits': ('workloads.digits', 'DigitsWorkload'),
}
# Their JAX versions, for --framework=jax: name -> (module, class). Logs of
# both land under the same workload name (`digits_jax`, `digits_pytorch`),
# and the scorer reads both against the same catalog targets.
JAX_WORKLOADS = {
  'digits': ('workloads.digits.workload_jax', 'DigitsJaxWorkload'),
}


class UsageError(ValueError):
  """A user input (flag, path, file) is wrong; the message says which."""


def make_workload(name: str, framework: str = 'pytorch'):
  """Instantiates a registered workload by name, in `framework`."""
  registry = JAX_WORKLOADS if framework == 'jax' else WORKLOADS
  if name not in registry:
    raise UsageError(
      f'unknown workload {name!r} for framework {framework}; the local '
      f'runner knows: {", ".join(sorted(registry))}'
    )
  module_name, class_name = registry[name]
  return getattr(importlib.import_module(module_name), class_name)()


# Top-level packages that mark a module as PyTorch or JAX code.
_FRAMEWORK_PACKAGES = {
  'torch': 'pytorch',
  'jax': 'jax',
  'jaxlib': 'jax',
  'optax': 'jax',
  'flax': 'jax',
}


def _frameworks_used(module, depth: int = 2) -> set:
  """Frameworks whose modules `module` (and what it imports) refers to.

  Looks at the module's globals: modules, and the modules that functions
  and classes come from; for this project's helper modules (e.g.
  `sfperf.torch_submission_utils`) it looks one level further.
  """
  found = set()
  for value in list(vars(module).values()):
    if isinstance(value, types.ModuleType):
      name = value.__name__
    else:
      name = getattr(value, '__module__', None)
      if not isinstance(name, str):
        continue
    framework = _FRAMEWORK_PACKAGES.get(name.split('.')[0])
    if framework:
      found.add(framework)
    elif depth > 1 and name.split('.')[0] == 'sfperf':
      imported = sys.modules.get(name)
      if imported is not None and imported is not module:
        found |= _frameworks_used(imported, depth - 1)
  return found


def check_submission_framework(submission, framework: str) -> None:
  """UsageError when the submission is plainly of the other framework.

  A submission that uses torch and not jax cannot train a JAX workload,
  and the other way round; one that uses both or neither is let through.
  """
  used = _frameworks_used(submission)
  if len(used) != 1 or framework in used:
    return
  (other,) = used
  path = getattr(submission, '__file__', None) or submission.__name__
  names = {'pytorch': 'PyTorch', 'jax': 'JAX'}
  raise UsageError(
    f'{os.path.relpath(path)} is a {names[other]} submission (it uses '
    f'{"torch" if other == "pytorch" else "jax"}); run it with '
    f'--framework={other}, or pass a {names[framework]} submission'
  )


def known_submissions() -> List[str]:
  pattern = os.path.join(REPO_ROOT, 'submissions', '**', 'submission.py')
  return sorted(
    os.path.relpath(path, REPO_ROOT)
    for path in glob.glob(pattern, recursive=True)
  )


def _module_name_for(path: str) -> Optional[str]:
  """A dotted module name for an absolute path under a sys.path entry."""
  stem = os.path.splitext(os.path.abspath(path))[0]
  for entry in sys.path:
    root = os.path.abspath(entry or os.getcwd())
    if stem.startswith(root + os.sep):
      relative = os.path.relpath(stem, root)
      return relative.replace(os.sep, '.')
  return None


# The functions the runner calls on every submission (ALGOPERF.md 1.2).
REQUIRED_FUNCTIONS = (
  'get_batch_size',
  'init_optimizer_state',
  'update_params',
  'data_selection',
)


def resolve_submission_path(submission_path: str) -> str:
  """The path `load_submission` reads: as given, else under the repo root."""
  if (
    submission_path
    and not os.path.isabs(submission_path)
    and not os.path.isfile(submission_path)
    and os.path.isfile(os.path.join(REPO_ROOT, submission_path))
  ):
    return os.path.join(REPO_ROOT, submission_path)
  return submission_path


def submission_identity(submission_path: str) -> str:
  """A canonical name of a submission file, to tell two submissions apart."""
  return os.path.realpath(resolve_submission_path(submission_path))


def load_submission(submission_path: str):
  """Imports a submission module and checks it has the required functions.

  A relative path is turned into a module name the official way (drop
  `.py`, `/` becomes `.`), so it must be importable from the working
  directory or the repository root. An absolute path is imported by module
  name when it lies under a `sys.path` entry, else straight from the file.

  Raises:
    UsageError: the file is missing, fails to import (syntax error, missing
      import, exception at import time) or lacks a required function; the
      message names the file and the cause.
  """
  submission_path = resolve_submission_path(submission_path)
  if not submission_path or not os.path.isfile(submission_path):
    raise UsageError(
      f'submission path {submission_path!r} is not a file; known '
      f'submissions: {", ".join(known_submissions()) or "none"}'
    )
  try:
    module = _import_submission(submission_path)
  except Exception as e:  # any import failure is the submission's
    raise UsageError(
      f'submission {submission_path!r} failed to import: {describe_error(e)}; '
      'fix the submission and rerun'
    ) from None
  missing = [name for name in REQUIRED_FUNCTIONS if not _callable(module, name)]
  if missing:
    raise UsageError(
      f'submission {submission_path!r} does not define '
      f'{", ".join(missing)}; a submission needs '
      f'{", ".join(REQUIRED_FUNCTIONS)}'
    )
  return module


def _callable(module, name: str) -> bool:
  return callable(getattr(module, name, None))


def describe_error(error: BaseException) -> str:
  """`Type: message`, with file and line for a syntax error."""
  if isinstance(error, SyntaxError):
    where = f'{error.filename}:{error.lineno}' if error.lineno else ''
    return f'SyntaxError: {error.msg} ({where})' if where else 'SyntaxError'
  text = str(error).splitlines()[0] if str(error) else ''
  return f'{type(error).__name__}: {text}' if text else type(error).__name__


def _import_submission(submission_path: str):
  if os.path.isabs(submission_path):
    module_name = _module_name_for(submission_path)
  else:
    module_name = os.path.splitext(os.path.normpath(submission_path))[0]
    module_name = module_name.replace(os.sep, '.')
  if module_name is not None:
    try:
      return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
      if not module_name.startswith(e.name or '\0'):
        raise
  path = os.path.abspath(submission_path)
  name = '_sfperf_submission_' + re.sub(r'\W', '_', path)
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    # As importlib does: a failed import leaves no module behind, so the
    # fixed file is imported afresh.
    del sys.modules[name]
    raise
  return module


def load_search_space(path: str, num_tuning_trials: int) -> List[Any]:
  """Hyperparameter points (namedtuples) of the first trials of a study.

  Reads either official form (see `search_space.generate_points`): a list
  of points gives its first `num_tuning_trials` points in order; a dict of
  dimensions gives `num_tuning_trials` Halton points in a seeded order.

  Raises:
    UsageError: the file is missing, is not JSON, or is malformed; the
      message names the file and the field.
  """
  try:
    with open(path, encoding='utf-8') as f:
      raw = json.load(f)
  except FileNotFoundError:
    raise UsageError(f'search space file {path!r} does not exist') from None
  except IsADirectoryError:
    raise UsageError(
      f'search space file {path!r} is a directory; pass the JSON file'
    ) from None
  except UnicodeDecodeError as e:
    raise UsageError(
      f'search space file {path!r} is not UTF-8 text (byte '
      f'{e.object[e.start : e.start + 1]!r} at offset {e.start}); save it as '
      'UTF-8 JSON'
    ) from None
  except json.JSONDecodeError as e:
    raise UsageError(f'search space file {path!r}: not JSON ({e})') from None
  except OSError as e:
    raise UsageError(f'search space file {path!r}: {e.strerror}') from None
  try:
    points = search_space.generate_points(raw, num_tuning_trials)
  except search_space.SearchSpaceError as e:
    raise UsageError(f'search space file {path!r}: {e}') from None
  if isinstance(raw, list) and len(raw) != num_tuning_trials:
    logging.info(
      'Search space %s has %d points and --num_tuning_trials is %d; '
      'running %d trials.',
      path,
      len(raw),
      num_tuning_trials,
      len(points),
    )
  return [to_hyperparameters(point) for point in points]


def to_hyperparameters(point: dict):
  """A `Hyperparameters` namedtuple of `point`, fields in the dict's order."""
  return collections.namedtuple('Hyperparameters', list(point))(**point)
