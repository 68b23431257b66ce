"""Builds the optimizers' native CPU kernels on first use, into a cache.

Sources are compiled with the system compiler into a per-user cache, keyed
by the sources, the flags, the compiler and the host CPU (the builds use
-march=native), and written atomically, so that concurrent first uses
cannot load a half-written library. Nothing here imports torch or JAX.
"""

import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

# `sfperf pack` copies these beside this module when it vendors it.
VENDORED_FILES = ('schedule_free_v1_cpu.c',)
C_SOURCE = pathlib.Path(__file__).with_name(VENDORED_FILES[0])

# -ffp-contract=off: the kernel's fused multiply-adds are the ones it asks
# for (where torch's kernels use one), no others. -march=native is why the
# cache key includes the CPU.
BASE_FLAGS = (
  '-O3',
  '-march=native',
  '-mprefer-vector-width=512',
  '-ffp-contract=off',
  '-fno-math-errno',
  '-shared',
  '-fPIC',
)
OPENMP_FLAG = '-fopenmp'

CACHE_ENV = 'SFPERF_KERNEL_CACHE'
DISABLE_ENV = 'SFPERF_NO_CPU_KERNEL'


class KernelUnavailable(RuntimeError):
  """A native kernel could not be built, loaded or trusted here."""


def cache_dir() -> pathlib.Path:
  """Where built kernels are kept: $SFPERF_KERNEL_CACHE, else the XDG cache."""
  if os.environ.get(CACHE_ENV):
    return pathlib.Path(os.environ[CACHE_ENV])
  base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  return pathlib.Path(base) / 'sfperf' / 'kernels'


def disabled() -> bool:
  """Whether $SFPERF_NO_CPU_KERNEL turns the kernels off."""
  return os.environ.get(DISABLE_ENV, '') not in ('', '0')


def _cpu_identity() -> str:
  """The CPU's model and feature flags, which -march=native compiles for."""
  try:
    lines = pathlib.Path('/proc/cpuinfo').read_text().splitlines()
  except OSError:
    return platform.processor() or platform.machine()
  wanted = [
    line
    for line in lines
    if line.startswith(('model name', 'flags', 'Features', 'CPU part'))
  ]
  return '\n'.join(dict.fromkeys(wanted))  # one copy per distinct line


def _find_compiler(
  language: str, variable: str, candidates: Sequence[str]
) -> str:
  """$variable if set, else the first candidate on the PATH, made absolute."""
  wanted = os.environ.get(variable)
  if wanted:
    compiler = shutil.which(wanted)
  else:
    compiler = next(filter(None, map(shutil.which, candidates)), None)
  if compiler is None:
    named = (
      f'{variable}={wanted!r} is not an executable' if wanted else 'none found'
    )
    raise KernelUnavailable(
      f'no {language} compiler ({named}; install {candidates[-1]} or set '
      f'{variable})'
    )
  return compiler


def c_compiler() -> str:
  """The C compiler: $CC, else cc or gcc."""
  return _find_compiler('C', 'CC', ('cc', 'gcc'))


def cxx_compiler() -> str:
  """The C++ compiler: $CXX, else c++ or g++."""
  return _find_compiler('C++', 'CXX', ('c++', 'g++'))


def _compiler_version(compiler: str) -> str:
  try:
    result = subprocess.run(
      [compiler, '--version'], capture_output=True, text=True, check=False
    )
  except OSError as error:
    raise KernelUnavailable(f'cannot run {compiler}: {error}') from None
  return result.stdout


def _build(
  compiler: str,
  source: pathlib.Path,
  flags: Sequence[str],
  target: pathlib.Path,
) -> None:
  """Compiles `source` into `target`, atomically."""
  target.parent.mkdir(parents=True, exist_ok=True)
  handle, temporary = tempfile.mkstemp(
    dir=target.parent, prefix=target.name, suffix='.tmp'
  )
  os.close(handle)
  try:
    try:
      result = subprocess.run(
        [compiler, *flags, '-o', temporary, str(source)],
        capture_output=True,
        text=True,
        check=False,
      )
    except OSError as error:
      raise KernelUnavailable(f'cannot run {compiler}: {error}') from None
    if result.returncode != 0:
      raise KernelUnavailable(
        f'{compiler} failed on {source.name}: {result.stderr.strip()[-500:]}'
      )
    os.replace(temporary, target)
  finally:
    if os.path.exists(temporary):
      os.unlink(temporary)


def load_library(
  source: pathlib.Path,
  compiler: str,
  extra_flags: Sequence[str] = (),
  inputs: Sequence[pathlib.Path] = (),
) -> ctypes.CDLL:
  """Loads the cached build of `source`, building it first if needed.

  OpenMP is tried first; a compiler without it gets a one-thread build.

  Args:
    source: the file to compile.
    compiler: from `c_compiler()` or `cxx_compiler()`.
    extra_flags: added to `BASE_FLAGS`; part of the cache key.
    inputs: other files the source includes; part of the cache key.

  Raises:
    KernelUnavailable: if neither build succeeds or the library won't load.
  """
  version = _compiler_version(compiler)
  texts = [path.read_text() for path in (source, *inputs)]
  last_error = None
  for flags in (
    (*BASE_FLAGS, *extra_flags, OPENMP_FLAG),
    (*BASE_FLAGS, *extra_flags),
  ):
    key = hashlib.sha256(
      '\0'.join([*texts, ' '.join(flags), version, _cpu_identity()]).encode()
    ).hexdigest()[:20]
    target = cache_dir() / f'{source.stem}-{key}.so'
    try:
      if not target.exists():
        _build(compiler, source, flags, target)
      return ctypes.CDLL(str(target))
    except (KernelUnavailable, OSError) as error:
      last_error = error
  raise KernelUnavailable(str(last_error))
