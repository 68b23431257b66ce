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
import shlex
import shutil
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple, TypeVar

import numpy as np

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

# A compiler that hangs must not hang training: the build gives up (and the
# optimizer falls back) after these.
VERSION_TIMEOUT_SEC = 30
BUILD_TIMEOUT_SEC = 600
STALE_TEMPORARY_SEC = 24 * 3600

CACHE_ENV = 'SFPERF_KERNEL_CACHE'
DISABLE_ENV = 'SFPERF_NO_CPU_KERNEL'


T = TypeVar('T')


class KernelUnavailable(RuntimeError):
  """A native kernel could not be built, loaded or trusted here."""


def cache_dir() -> pathlib.Path:
  """Where built kernels are kept: $SFPERF_KERNEL_CACHE, else the XDG cache.

  Raises:
    KernelUnavailable: neither is set and there is no home directory.
  """
  if os.environ.get(CACHE_ENV):
    return pathlib.Path(os.environ[CACHE_ENV])
  try:
    base = os.environ.get('XDG_CACHE_HOME') or pathlib.Path.home() / '.cache'
  except RuntimeError as error:  # no home directory
    raise KernelUnavailable(
      f'no folder for built kernels ({error}); set {CACHE_ENV}'
    ) from None
  return pathlib.Path(base) / 'sfperf' / 'kernels'


_why_unavailable: dict[str, str] = {}


def checked(owner: str, fallback: str, load: Callable[[], T]) -> T | None:
  """`load()`, or None with one warning naming `owner` where it raises
  KernelUnavailable; None and no warning where the kernels are disabled.

  Args:
    owner: the optimizer whose kernel this is, for the messages.
    fallback: what runs instead, for the warning.
    load: builds, loads and probes the kernel.
  """
  if disabled():
    return None
  try:
    return load()
  except KernelUnavailable as error:
    _why_unavailable[owner] = str(error)
    warnings.warn(
      f'{owner}: one-pass CPU kernel not used, {error}; using {fallback}. '
      f'Set {DISABLE_ENV}=1 to silence.',
      RuntimeWarning,
      stacklevel=4,
    )
    return None


def why_unavailable(owner: str) -> str:
  """Why `checked` gave `owner` no kernel, in a few words."""
  if disabled():
    return f'{DISABLE_ENV} is set'
  return _why_unavailable.get(owner, 'not loaded yet')


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
) -> list[str]:
  """$variable if set (a command, perhaps with arguments, such as 'ccache
  gcc'), else the first candidate on the PATH; the program made absolute."""
  wanted = os.environ.get(variable, '').strip()
  if wanted:
    try:
      command = shlex.split(wanted)
    except ValueError as error:
      raise KernelUnavailable(f'{variable}={wanted!r}: {error}') from None
    program = shutil.which(command[0]) if command else None
  else:
    command = ['']
    program = next(filter(None, map(shutil.which, candidates)), None)
  if program is None:
    named = (
      f'{variable}={wanted!r} is not an executable' if wanted else 'none found'
    )
    raise KernelUnavailable(
      f'no {language} compiler ({named}; install {candidates[-1]} or set '
      f'{variable})'
    )
  return [program, *command[1:]]


def c_compiler() -> list[str]:
  """The C compiler command: $CC, else cc or gcc."""
  return _find_compiler('C', 'CC', ('cc', 'gcc'))


def cxx_compiler() -> list[str]:
  """The C++ compiler command: $CXX, else c++ or g++."""
  return _find_compiler('C++', 'CXX', ('c++', 'g++'))


def _run(command: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
  """Runs a compiler command; any failure to run it is KernelUnavailable."""
  try:
    return subprocess.run(
      command, capture_output=True, text=True, check=False, timeout=timeout
    )
  except subprocess.TimeoutExpired:
    raise KernelUnavailable(
      f'{" ".join(command[:2])} ... did not finish in {timeout:.0f} s'
    ) from None
  except OSError as error:
    raise KernelUnavailable(f'cannot run {command[0]}: {error}') from None


def _compiler_identity(compiler: Sequence[str]) -> str:
  """The command (with any arguments from CC/CXX) and its version."""
  version = _run([*compiler, '--version'], VERSION_TIMEOUT_SEC).stdout
  return ' '.join(compiler) + '\n' + version


def _digest(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _intact(target: pathlib.Path) -> bool:
  """Whether `target` is a build this module finished: its digest matches
  the one written beside it. A truncated or emptied file would crash the
  process when loaded, so it is never loaded."""
  try:
    recorded = target.with_suffix('.sha256').read_text().strip()
    return recorded == _digest(target)
  except OSError:
    return False


def _write_atomically(target: pathlib.Path, write) -> None:
  """Calls `write(path)` on a temporary file beside `target`, syncs it to
  disk, then renames it into place."""
  handle, temporary = tempfile.mkstemp(
    dir=target.parent, prefix=f'.{target.name}.', suffix='.tmp'
  )
  os.close(handle)
  try:
    write(temporary)
    with open(temporary, 'rb+') as stream:
      os.fsync(stream.fileno())
    os.replace(temporary, target)
  finally:
    if os.path.exists(temporary):
      os.unlink(temporary)


def _prune_temporaries(folder: pathlib.Path) -> None:
  """Removes temporary files that builds killed long ago left behind."""
  cutoff = time.time() - STALE_TEMPORARY_SEC
  for path in folder.glob('.*.tmp'):
    try:
      if path.stat().st_mtime < cutoff:
        path.unlink()
    except OSError:
      pass  # another process's, or gone already


def _build(
  compiler: Sequence[str],
  source: pathlib.Path,
  flags: Sequence[str],
  target: pathlib.Path,
) -> None:
  """Compiles `source` into `target`, atomically, with its digest beside."""

  def compile_into(path: str) -> None:
    result = _run(
      [*compiler, *flags, '-o', path, str(source)], BUILD_TIMEOUT_SEC
    )
    if result.returncode != 0:
      output = (result.stderr or result.stdout).strip()[-500:]
      raise KernelUnavailable(
        f'{" ".join(compiler)} failed on {source.name} (exit '
        f'{result.returncode}){": " + output if output else ""}'
      )

  _write_atomically(target, compile_into)
  digest = _digest(target)
  _write_atomically(
    target.with_suffix('.sha256'),
    lambda path: pathlib.Path(path).write_text(digest + '\n'),
  )


def load_library(
  source: pathlib.Path,
  compiler: Sequence[str],
  extra_flags: Sequence[str] = (),
  inputs: Sequence[pathlib.Path] = (),
  symbols: Sequence[str] = (),
) -> ctypes.CDLL:
  """Loads the cached build of `source`, building it first if needed.

  A cached build whose digest does not match (a crash mid-copy, a full
  disk) is rebuilt. OpenMP is tried first; where that build fails or will
  not load, a one-thread build is used, with a warning saying why.

  Args:
    source: the file to compile.
    compiler: from `c_compiler()` or `cxx_compiler()`.
    extra_flags: added to `BASE_FLAGS`; part of the cache key.
    inputs: other files the source includes; part of the cache key.
    symbols: names the library must export.

  Raises:
    KernelUnavailable: if neither build succeeds or loads.
  """
  try:
    texts = [path.read_text() for path in (source, *inputs)]
  except OSError as error:
    raise KernelUnavailable(
      f'kernel source missing ({error}); reinstall sfperf'
    ) from None
  version = _compiler_identity(compiler)
  folder = cache_dir()
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as error:
    raise KernelUnavailable(
      f'kernel cache {folder} unusable ({error}); set {CACHE_ENV} to a '
      'writable folder'
    ) from None
  _prune_temporaries(folder)
  errors = []
  for flags in (
    (*BASE_FLAGS, *extra_flags, OPENMP_FLAG),
    (*BASE_FLAGS, *extra_flags),
  ):
    key = hashlib.sha256(
      '\0'.join([*texts, ' '.join(flags), version, _cpu_identity()]).encode()
    ).hexdigest()[:20]
    target = folder / f'{source.stem}-{key}.so'
    try:
      if not _intact(target):
        _build(compiler, source, flags, target)
      library = ctypes.CDLL(str(target))
      for symbol in symbols:
        getattr(library, symbol)  # AttributeError if it is not there
    except (KernelUnavailable, OSError, AttributeError) as error:
      errors.append(str(error))
      continue
    if errors:
      warnings.warn(
        f'{source.name}: the OpenMP build is not usable ({errors[0]}); '
        'using a one-thread build',
        RuntimeWarning,
        stacklevel=2,
      )
    return library
  raise KernelUnavailable(errors[-1])


# The probes' settings: the entry's beta2, at a larger step and decay.
PROBE_BETA1 = 0.9
PROBE_BETA2 = 0.9955159689799007
PROBE_EPS = 1e-8
PROBE_STEP_SIZE = 7e-4
PROBE_DECAY = 6e-5  # step size times weight decay


class ProbeCase(NamedTuple):
  """One update of the probes, as NumPy arrays."""

  param: np.ndarray  # float32; y for the closure form, x for JAX
  z: np.ndarray  # float32
  v_bits: np.ndarray  # uint16, bfloat16 bit patterns
  grad: np.ndarray  # float32
  averaging_weight: float


def probe_cases() -> list[ProbeCase]:
  """The updates on which a kernel must give its reference's bits.

  Both lerp branches (averaging weights above and below 0.5), gradients
  over twelve decades, v = 0 (where the denominator is eps), lengths that
  leave vector tails, the rounding ties of v's update where fusing its
  multiply-add matters (`rounding_tie_cases`), and NaN, infinite, zero and
  subnormal gradients (a build with unsafe float flags fails on these).
  """
  rng = np.random.default_rng(0)
  cases = []
  for size, average in ((1, 1.0), (37, 0.3), (1000, 0.7), (70_001, 0.01)):
    param = rng.standard_normal(size).astype(np.float32)
    z = param + np.float32(0.1) * rng.standard_normal(size).astype(np.float32)
    grad = rng.standard_normal(size) * 10.0 ** rng.integers(-8, 4, size)
    v = _round_bf16((rng.random(size) * 1e-3).astype(np.float32))
    v[::7] = 0
    v_bits = (v.view(np.uint32) >> 16).astype(np.uint16)
    cases.append(ProbeCase(param, z, v_bits, grad.astype(np.float32), average))
  v_bits, grad = rounding_tie_cases(PROBE_BETA2)
  param = rng.standard_normal(len(grad)).astype(np.float32)
  cases.append(ProbeCase(param, param + np.float32(0.01), v_bits, grad, 0.2))
  grad = special_values()
  param = rng.standard_normal(len(grad)).astype(np.float32)
  v_bits = rng.integers(0x3A00, 0x3F00, len(grad)).astype(np.uint16)
  cases.append(ProbeCase(param, param - np.float32(0.01), v_bits, grad, 0.6))
  return cases


def differences(
  got: Sequence[np.ndarray], want: Sequence[np.ndarray]
) -> str | None:
  """Names the first of (param, z, v bits) that differs, or None.

  Float32 arrays must agree bit for bit; in v (uint16 bfloat16 bits) any NaN
  matches any NaN, since torch itself stores NaN with two bit patterns.
  """
  for name, got_values, want_values in zip(
    ('param', 'z', 'v'), got, want, strict=True
  ):
    got_bits = np.asarray(got_values).view(
      np.uint16 if name == 'v' else np.uint32
    )
    want_bits = np.asarray(want_values).view(got_bits.dtype)
    differ = got_bits != want_bits
    if name == 'v':
      differ &= ~(_is_bf16_nan(got_bits) & _is_bf16_nan(want_bits))
    if differ.any():
      return f'{name} differs in {int(differ.sum())} of {differ.size} elements'
  return None


def _is_bf16_nan(bits: np.ndarray) -> np.ndarray:
  return (bits & 0x7FFF) > 0x7F80


def rounding_tie_cases(
  beta2: float, count: int = 64, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
  """(v as bfloat16 bits, gradient) pairs on which fusing matters.

  The second-moment update stores bf16(bf16(v * beta2) + (1 - beta2) g g).
  Whether the multiply-add is fused decides the stored v on the inputs that
  put the float32 sum next to a bfloat16 rounding tie: about one in a
  million random ones, so a random probe misses them. These are built by
  aiming (1 - beta2) g g at a tie above bf16(v * beta2), trying gradients a
  few float32 ulps around the aim, and keeping those where the two forms
  (evaluated in NumPy, the fused one in float64, where the float32 product
  is exact) round differently.

  Returns:
    uint16 bfloat16 bit patterns of v, and float32 gradients, `count` each.

  Raises:
    ValueError: beta2 outside (0, 1).
    RuntimeError: too few ties found (beta2 within about 1e-6 of 0 or 1).
  """
  if not 0.0 < beta2 < 1.0:
    raise ValueError(f'beta2 must be in (0, 1), got {beta2}')
  rng = np.random.default_rng(seed)
  scale = np.float32(1 - beta2)
  v_bits = rng.integers(0x3A00, 0x3F00, 4096).astype(np.uint16)
  v = (v_bits.astype(np.uint32) << 16).view(np.float32)
  decayed = _round_bf16(v * np.float32(beta2))
  # A tie between two bfloat16 neighbours a few steps above `decayed`.
  step = 2.0 ** (np.floor(np.log2(decayed.astype(np.float64))) - 7)
  tie = decayed + (rng.integers(1, 8, v.size) + 0.5) * step
  aim = np.sqrt((tie - decayed) / float(scale)).astype(np.float32)
  offsets = np.arange(-8, 9, dtype=np.int32)
  g = (aim.view(np.int32)[:, None] + offsets).view(np.float32)
  scaled = scale * g
  unfused = decayed[:, None] + scaled * g
  fused = (
    decayed[:, None].astype(np.float64)
    + scaled.astype(np.float64) * g.astype(np.float64)
  ).astype(np.float32)
  rows, columns = np.nonzero(_round_bf16(unfused) != _round_bf16(fused))
  if rows.size < count:
    raise RuntimeError(f'found {rows.size} rounding ties, wanted {count}')
  return v_bits[rows[:count]], g[rows[:count], columns[:count]]


def special_values() -> np.ndarray:
  """float32 gradients a kernel built with unsafe float flags gets wrong:
  NaN (the default one and one with every payload bit set), infinities,
  signed zeros, subnormals and the largest finite values."""
  bits = np.array(
    [
      0x7FC00000,  # NaN
      0x7FFFFFFF,  # NaN, every payload bit set
      0xFFC00000,  # the NaN x86 arithmetic makes
      0x7F800000,  # +inf
      0xFF800000,  # -inf
      0x00000000,  # +0
      0x80000000,  # -0
      0x00000001,  # smallest subnormal
      0x807FFFFF,  # largest negative subnormal
      0x7F7FFFFF,  # largest finite
      0xFF7FFFFF,
      0x3F800000,  # 1
    ],
    dtype=np.uint32,
  )
  return np.tile(bits, 3).view(np.float32)


def _round_bf16(values: np.ndarray) -> np.ndarray:
  """float32 values rounded to bfloat16 (to nearest even), as float32."""
  bits = values.view(np.uint32)
  rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
  return rounded.astype(np.uint32).view(np.float32)
