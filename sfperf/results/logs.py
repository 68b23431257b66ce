"""Reads AlgoPerf log directories into per-trial eval arrays.

Layout, as the official runner and scorer use it:
`<root>/<submission>/<study>/<workload>_<framework>/trial_<k>/
eval_measurements.csv`. Sibling submission directories whose name adds a
timestamp suffix (`<submission>-YYYY-MM-DD-HH-MM-SS`) belong to that
submission. Anything unexpected is reported as a warning that names the path
and is then left out; nothing here raises for a bad log file.
"""

import csv
import dataclasses
import io
import math
import os
import re
from collections.abc import Mapping
from typing import Dict, List, Optional

import numpy as np
from absl import logging

MEASUREMENTS_FILENAME = 'eval_measurements.csv'
_TRIAL_DIR = re.compile(r'trial_(\d+)$')
_TIMESTAMP_SUFFIX = re.compile(r'^(.*)-\d{4}(-\d{2}){5}$')
_FRAMEWORK = re.compile(r'^(.*)_(jax|pytorch)$')
_BACKUP = re.compile(r'\.backup-|\.previous-')


class LogDirError(ValueError):
  """The log directory as a whole cannot be read (not a per-file problem)."""


@dataclasses.dataclass
class TrialLog:
  """One trial's eval history: each CSV column as a float array."""

  submission: str
  study: str
  workload: str  # directory name, with framework suffix
  trial: str
  path: str
  columns: Mapping  # column name -> float array, parsed on first use
  # Position in the directory listing of its workload folder (os.listdir
  # order, file-system dependent). The official scorer keeps trials in this
  # order and so resolves ties by it; kept to reproduce it exactly.
  listing_index: int = 0

  @property
  def trial_number(self) -> int:
    return int(_TRIAL_DIR.match(self.trial).group(1))


@dataclasses.dataclass
class LogSet:
  """All trials found under a root, grouped by submission, plus warnings."""

  root: str
  trials: Dict[str, List[TrialLog]]
  warnings: List[str]


def printable(text: str) -> str:
  """Escapes bytes of a non-UTF-8 file name so the text can be printed."""
  return text.encode('utf-8', 'backslashreplace').decode('utf-8')


def _warn(warnings: List[str], message: str) -> None:
  message = printable(message)
  warnings.append(message)
  logging.warning(message)


def _parse_float(text: str) -> float:
  text = text.strip()
  if not text:
    return math.nan
  return float(text)


class EvalColumns(Mapping):
  """The columns of one eval_measurements.csv, each parsed on first use.

  Scoring reads two of a file's dozen or so columns, so parsing only those
  makes reading a whole leaderboard's logs several times faster. A value
  that is not a number becomes NaN, with one warning naming the file.
  """

  def __init__(
    self,
    path: str,
    header: List[str],
    fields: List[str],
    num_rows: int,
    warnings: List[str],
  ):
    self._path = path
    self._width = len(header)
    self._index = {}
    for i, name in enumerate(header):
      self._index.setdefault(name, i)
    self._fields = fields
    self._num_rows = num_rows
    self._warnings = warnings
    self._parsed: Dict[str, np.ndarray] = {}

  def __getitem__(self, name: str) -> np.ndarray:
    if name not in self._parsed:
      index = self._index[name]  # KeyError for an unknown column
      cells = self._fields[index :: self._width]
      try:
        values = np.fromiter(map(float, cells), np.float64, len(cells))
      except ValueError:
        values = self._parse_slowly(name, cells)
      self._parsed[name] = values
    return self._parsed[name]

  def _parse_slowly(self, name: str, cells: List[str]) -> np.ndarray:
    values = np.full(len(cells), np.nan)
    bad = []
    for row, cell in enumerate(cells):
      try:
        values[row] = _parse_float(cell)
      except ValueError:
        bad.append(row + 2)
    if bad:
      shown = ', '.join(str(line) for line in bad[:5])
      _warn(
        self._warnings,
        f'{self._path}: column {name}: {len(bad)} value(s) that are not '
        f'numbers (line {shown}); they count as NaN',
      )
    return values

  def __iter__(self):
    return iter(self._index)

  def __len__(self) -> int:
    return len(self._index)


def read_eval_csv(path: str, warnings: List[str]) -> Optional[Mapping]:
  """Reads one eval_measurements.csv; None (with a warning) if unusable.

  Bad bytes are replaced. A file whose lines all have the header's field
  count takes the fast path (columns parsed on demand); otherwise each line
  is read with the csv module, short lines are padded with NaN, long ones
  cut, and one warning names the file and the broken lines.
  """
  try:
    with open(path, encoding='utf-8', errors='replace', newline='') as f:
      text = f.read()
  except OSError as e:
    _warn(warnings, f'{path}: cannot read ({e.strerror}); trial skipped')
    return None
  text = text.replace('\r\n', '\n')
  lines = [line for line in text.split('\n') if line.strip()]
  if not lines or not lines[0].strip(','):
    _warn(warnings, f'{path}: empty file; trial skipped')
    return None

  header = [name.strip() for name in lines[0].split(',')]
  body = lines[1:]
  if not body:
    _warn(warnings, f'{path}: header only, no evals; trial skipped')
    return None
  duplicated = sorted({n for n in header if header.count(n) > 1})
  if duplicated:
    _warn(
      warnings,
      f'{path}: duplicated column(s) {", ".join(duplicated)}; the first of '
      'each is used',
    )
  if '"' not in text and '\r' not in text:
    fields = ','.join(body).split(',') if body else []
    if len(fields) == len(header) * len(body):
      return EvalColumns(path, header, fields, len(body), warnings)
  return _read_eval_csv_slowly(path, text, warnings)


def _read_eval_csv_slowly(path: str, text: str, warnings: List[str]):
  try:
    rows = [row for row in csv.reader(io.StringIO(text)) if row]
  except csv.Error as e:
    _warn(warnings, f'{path}: not readable as CSV ({e}); trial skipped')
    return None
  header = [name.strip() for name in rows[0]]
  if len(rows) < 2:
    _warn(warnings, f'{path}: header only, no evals; trial skipped')
    return None
  bad_lines = []
  fields = []
  for line_number, row in enumerate(rows[1:], start=2):
    if len(row) != len(header):
      bad_lines.append(line_number)
      row = (row + [''] * len(header))[: len(header)]
    fields.extend(row)
  if bad_lines:
    shown = ', '.join(str(n) for n in bad_lines[:5])
    _warn(
      warnings,
      f'{path}: {len(bad_lines)} line(s) with the wrong number of fields '
      f'(line {shown}); missing values count as NaN',
    )
  return EvalColumns(path, header, fields, len(rows) - 1, warnings)


def _submission_dirs(root: str) -> Dict[str, List[str]]:
  """Maps submission name -> its directories (timestamped siblings merged)."""
  groups: Dict[str, List[str]] = {}
  for entry in sorted(_listdir(root)):
    path = os.path.join(root, entry)
    if _is_skipped(entry) or not os.path.isdir(path):
      continue
    match = _TIMESTAMP_SUFFIX.match(entry)
    name = match.group(1) if match else entry
    groups.setdefault(name, []).append(path)
  return groups


def _is_skipped(entry: str) -> bool:
  """Hidden directories (the runner's `.backup/`) and old-style backups."""
  return entry.startswith('.') or _BACKUP.search(entry) is not None


def _is_workload_name(name: str, known: frozenset) -> bool:
  return bool(_FRAMEWORK.match(name)) or name in known


def _looks_like_submission(path: str, known: frozenset) -> bool:
  """True if `path/<study>/<workload>/trial_<k>` dirs exist.

  A workload directory is named `<workload>_<framework>` (or, tolerated, a
  bare catalog workload name): stray trial directories directly under a
  study (as in the published v0.5 external-tuning logs) must not make a
  directory of submissions look like one submission.
  """
  for study in _listdir(path):
    study_path = os.path.join(path, study)
    if _is_skipped(study) or not os.path.isdir(study_path):
      continue
    for workload in _listdir(study_path):
      workload_path = os.path.join(study_path, workload)
      if (
        not _is_skipped(workload)
        and _is_workload_name(workload, known)
        and os.path.isdir(workload_path)
        and any(_TRIAL_DIR.match(t) for t in _listdir(workload_path))
      ):
        return True
  return False


def _listdir(path: str) -> List[str]:
  try:
    return os.listdir(path)
  except OSError:
    return []


def read_submission(
  name: str,
  directories: List[str],
  warnings: List[str],
  known: frozenset = frozenset(),
) -> List[TrialLog]:
  """Reads every trial of one submission from its directories."""
  trials = []
  seen: Dict[tuple, str] = {}
  for directory in directories:
    for study in sorted(_listdir(directory)):
      study_path = os.path.join(directory, study)
      if _is_skipped(study) or not os.path.isdir(study_path):
        continue
      for workload in sorted(_listdir(study_path)):
        workload_path = os.path.join(study_path, workload)
        if not os.path.isdir(workload_path):
          continue
        if _is_skipped(workload):
          _warn(warnings, f'{workload_path}: a backup; ignored')
          continue
        trial_dirs = [t for t in _listdir(workload_path) if _TRIAL_DIR.match(t)]
        if not trial_dirs:
          # In the published logs these are stray trial_<k> folders placed
          # directly under a study.
          what = (
            'a trial_<k> folder directly under a study'
            if _TRIAL_DIR.match(workload)
            else 'a folder with no trial_<k> folders in it'
          )
          _warn(
            warnings,
            f'{workload_path}: {what}, so not a workload directory; ignored',
          )
          continue
        if not _is_workload_name(workload, known):
          _warn(
            warnings,
            f'{workload_path}: not named <workload>_<jax|pytorch>; ignored',
          )
          continue
        if not _FRAMEWORK.match(workload):
          _warn(
            warnings,
            f'{workload_path}: directory name lacks a _jax or _pytorch '
            'suffix; read as a workload name as it is',
          )
        for trial in trial_dirs:
          trial_path = os.path.join(workload_path, trial)
          csv_path = os.path.join(trial_path, MEASUREMENTS_FILENAME)
          if not os.path.isfile(csv_path):
            _warn(
              warnings,
              f'{trial_path}: no {MEASUREMENTS_FILENAME}; trial skipped',
            )
            continue
          columns = read_eval_csv(csv_path, warnings)
          if columns is None:
            continue
          key = (study, workload, trial)
          if key in seen:
            _warn(
              warnings,
              f'{csv_path}: {name}/{study}/{workload}/{trial} was already '
              f'read from {seen[key]}; both are kept as trials, as the '
              'official scorer does',
            )
          seen[key] = csv_path
          trials.append(
            TrialLog(
              name,
              study,
              workload,
              trial,
              csv_path,
              columns,
              listing_index=len(trials),
            )
          )
  return trials


def read_log_root(root: str, known_workloads=frozenset()) -> LogSet:
  """Reads a directory of submissions, or a single submission directory.

  Args:
    root: the directory.
    known_workloads: catalog workload names that are accepted as workload
      directory names without a framework suffix.
  """
  if not root:
    raise LogDirError('the log directory argument is empty')
  if not os.path.exists(root):
    raise LogDirError(f'log directory {root} does not exist')
  if not os.path.isdir(root):
    raise LogDirError(f'{root} is a file, not a log directory')
  known = frozenset(known_workloads)
  warnings: List[str] = []
  root = os.path.normpath(root)
  if _looks_like_submission(root, known):
    groups = {printable(os.path.basename(root)): [root]}
  else:
    groups = {
      printable(name): dirs
      for name, dirs in _submission_dirs(root).items()
      if any(_looks_like_submission(d, known) for d in dirs)
    }
  trials = {
    name: read_submission(name, dirs, warnings, known)
    for name, dirs in groups.items()
  }
  trials = {name: found for name, found in trials.items() if found}
  if not trials:
    raise LogDirError(
      f'{printable(root)}: no trials found; expected '
      '<submission>/<study>/<workload>_<framework>/trial_<k>/'
      f'{MEASUREMENTS_FILENAME}'
    )
  return LogSet(root=root, trials=trials, warnings=warnings)
