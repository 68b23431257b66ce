"""Atomic file writes: a reader never sees half a file, a crash leaves the
old file in place."""

import contextlib
import os
import tempfile
from typing import Iterator


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
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(temp_path, 0o666 & ~umask)
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
