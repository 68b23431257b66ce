"""Atomic file writes: a reader never sees half a file, a crash leaves the
old file in place."""

import contextlib
import datetime
import os
import tempfile
from typing import Iterator


def default_mode(base: int = 0o666) -> int:
  """`base` less the process umask: the mode `open` or `mkdir` would give."""
  umask = os.umask(0)
  os.umask(umask)
  return base & ~umask


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
  """Yields a temporary path in the target's directory; renames on success."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  suffix = os.path.splitext(path)[1]
  handle, temp_path = tempfile.mkstemp(
    prefix=f'.{os.path.basename(path)}.', suffix=suffix, dir=directory
  )
  os.close(handle)
  # mkstemp creates 0600 files; give the result the usual umask-based mode.
  os.chmod(temp_path, default_mode())
  try:
    yield temp_path
    os.replace(temp_path, path)
  finally:
    if os.path.exists(temp_path):
      os.remove(temp_path)


def atomic_write_text(path: str, text: str) -> None:
  """Writes `text` to `path` atomically (UTF-8)."""
  with atomic_path(path) as temp_path:
    # backslashreplace: a file name that is not UTF-8 must not crash a write.
    with open(
      temp_path, 'w', encoding='utf-8', errors='backslashreplace', newline=''
    ) as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())


def atomic_write_bytes(path: str, data: bytes) -> None:
  """Writes `data` to `path` atomically."""
  with atomic_path(path) as temp_path:
    with open(temp_path, 'wb') as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())


def unique_name(base: str) -> str:
  """`base`, or `base-2`, `base-3`, ... whichever does not exist yet."""
  candidate, number = base, 1
  while os.path.exists(candidate):
    number += 1
    candidate = f'{base}-{number}'
  return candidate


def move_aside(path: str, destination_stem: str) -> str:
  """Renames `path` to `<destination_stem>-<timestamp>[-N]`, never deleting.

  Returns the new name. The destination's directory is created if needed.
  """
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  destination = unique_name(f'{destination_stem}-{stamp}')
  parent = os.path.dirname(destination)
  if parent:
    os.makedirs(parent, exist_ok=True)
  os.replace(path, destination)
  return destination
