"""Where a submission lives: its module file, ruleset and search space."""

import os
from typing import NamedTuple, Optional

SUBMISSION_FILE = 'submission.py'
SEARCH_SPACE_FILE = 'tuning_search_space.json'

# Folder names of the two rulesets, here and in the leaderboard repository,
# and the `ruleset` value its submission_info.yml uses for each.
RULESET_FOLDERS = {'external_tuning': 'external', 'self_tuning': 'self-tuning'}
RULESETS = tuple(RULESET_FOLDERS.values())

# External-tuning search spaces of this project's submissions, by submission
# folder name; files under tuning_search_spaces/. A folder not listed falls
# back to `<name>_external.json`. The JAX entry shares the PyTorch space
# (its module docstring says so).
SEARCH_SPACES = {
  'schedule_free_adamw': 'schedule_free_adamw_external.json',
  'schedule_free_adamw_jax': 'schedule_free_adamw_external.json',
  'nadamw_baseline': 'nadamw_baseline_external.json',
}
SEARCH_SPACE_DIR = 'tuning_search_spaces'


class SubmissionError(ValueError):
  """A submission path or its surroundings are unusable; says which and why."""


class Located(NamedTuple):
  """A submission module and what its path tells about it."""

  module_path: str  # absolute path of submission.py
  folder: str  # absolute path of the folder holding it
  name: str  # the folder's name, the submission's name upstream
  ruleset: Optional[str]  # 'external', 'self-tuning' or None if unknown


def locate(path: str, ruleset: Optional[str] = None) -> Located:
  """Resolves a submission.py path or its folder.

  Args:
    path: a `submission.py` file (any `.py` file is accepted) or a folder
      holding `submission.py`.
    ruleset: 'external' or 'self-tuning'; None infers it from a path
      component `external_tuning` or `self_tuning`.

  Raises:
    SubmissionError: if there is no such file, or `ruleset` is unknown.
  """
  path = os.path.abspath(path)
  if os.path.isdir(path):
    module_path = os.path.join(path, SUBMISSION_FILE)
  else:
    module_path = path
  if not os.path.isfile(module_path) or not module_path.endswith('.py'):
    raise SubmissionError(
      f'{path}: no {SUBMISSION_FILE} there; give a submission module or '
      'the folder holding it'
    )
  if ruleset is not None and ruleset not in RULESETS:
    raise SubmissionError(
      f'unknown ruleset {ruleset!r}; expected one of {", ".join(RULESETS)}'
    )
  folder = os.path.dirname(module_path)
  if ruleset is None:
    ruleset = infer_ruleset(folder)
  return Located(module_path, folder, os.path.basename(folder), ruleset)


def infer_ruleset(folder: str) -> Optional[str]:
  """The ruleset named by the nearest `*_tuning` folder above, or None."""
  parts = os.path.normpath(folder).split(os.sep)
  for part in reversed(parts):
    if part in RULESET_FOLDERS:
      return RULESET_FOLDERS[part]
  return None


def project_root(start: str) -> Optional[str]:
  """The nearest folder at or above `start` holding tuning_search_spaces/."""
  current = os.path.abspath(start)
  while True:
    if os.path.isdir(os.path.join(current, SEARCH_SPACE_DIR)):
      return current
    parent = os.path.dirname(current)
    if parent == current:
      return None
    current = parent


def find_search_space(
  located: Located, explicit: Optional[str] = None
) -> Optional[str]:
  """The search space file of an external-tuning submission, if any.

  In order: `explicit`; a `tuning_search_space.json` beside the module (the
  leaderboard layout); this project's table `SEARCH_SPACES` (or
  `<name>_external.json`) under the nearest `tuning_search_spaces/`.
  """
  if explicit is not None:
    return os.path.abspath(explicit)
  beside = os.path.join(located.folder, SEARCH_SPACE_FILE)
  if os.path.isfile(beside):
    return beside
  root = project_root(located.folder)
  if root is None:
    return None
  file_name = SEARCH_SPACES.get(located.name, f'{located.name}_external.json')
  candidate = os.path.join(root, SEARCH_SPACE_DIR, file_name)
  return candidate if os.path.isfile(candidate) else None
