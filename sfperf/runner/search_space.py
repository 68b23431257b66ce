"""External-tuning search spaces: checking both JSON forms, Halton sampling.

A search space is either a list of points (used in order) or a dict of
dimensions, `{name: {"feasible_points": [...]}}` or `{name: {"min": a,
"max": b, "scaling": "log" | "linear"}}`, sampled quasi-randomly with a
scrambled, shifted Halton sequence as AlgoPerf's `halton.generate_search`
does. The point set is the official one for the same dimensions and trial
count; only the order differs (see `generate_points`).
"""

import json
import keyword
import math
from collections.abc import Sequence
from typing import Any, NamedTuple, Union

import numpy as np

from sfperf.seeds import derive_seed

# Leading points of each sequence that are dropped, as in AlgoPerf: the
# first points of scrambled Halton sequences in neighbouring prime bases are
# strongly correlated.
HALTON_SKIP = 100
# Bases are the largest primes below this bound but one (AlgoPerf's choice);
# the bound grows by this much when more dimensions are asked for.
PRIME_BOUND_STEP = 1000

SCALINGS = ('linear', 'log')
_CONTINUOUS_KEYS = frozenset({'min', 'max', 'scaling'})
_DISCRETE_KEYS = frozenset({'feasible_points'})

Scalar = Union[int, float, str, bool]


class SearchSpaceError(ValueError):
  """A search space is malformed; the message names the field and value."""


class Discrete(NamedTuple):
  """A dimension drawn uniformly from a fixed list of values."""

  name: str
  feasible_points: tuple[Scalar, ...]

  def value_at(self, unit: float) -> Scalar:
    """The feasible point whose equal-width slot of [0, 1) holds `unit`."""
    return self.feasible_points[math.floor(unit * len(self.feasible_points))]


class Continuous(NamedTuple):
  """A dimension on [min, max], uniform in the value or in its log."""

  name: str
  min: float
  max: float
  scaling: str

  def value_at(self, unit: float) -> float:
    """Maps `unit` in [0, 1) onto the range, linearly or in log space."""
    if self.scaling == 'log':
      return self.min * math.exp(unit * math.log(self.max / self.min))
    return unit * (self.max - self.min) + self.min


Dimension = Union[Discrete, Continuous]


# -- Halton sequence --------------------------------------------------------


def odd_primes_below(bound: int) -> list[int]:
  """Primes p with 3 <= p < bound, ascending (sieve of Eratosthenes)."""
  if bound <= 3:
    return []
  is_prime = bytearray([1]) * bound
  is_prime[0:2] = b'\x00\x00'
  for candidate in range(2, math.isqrt(bound - 1) + 1):
    if is_prime[candidate]:
      multiples = range(candidate * candidate, bound, candidate)
      is_prime[candidate * candidate :: candidate] = bytes(len(multiples))
  return [p for p in range(3, bound) if is_prime[p]]


def halton_bases(num_dims: int) -> list[int]:
  """One prime base per dimension, the same ones AlgoPerf uses.

  These are the `num_dims` largest odd primes below 1000, leaving out the
  largest of all (997), in ascending order; the bound is raised in steps of
  1000 while there are too few.
  """
  bound = PRIME_BOUND_STEP
  primes = odd_primes_below(bound)
  while len(primes) < num_dims + 1:
    bound += PRIME_BOUND_STEP
    primes = odd_primes_below(bound)
  return primes[-num_dims - 1 : -1]


def _digit_scramble_and_shift(base: int) -> tuple[list[int], float]:
  """The fixed digit permutation and shift of one dimension.

  Drawn from NumPy's legacy `RandomState` seeded with the base, whose stream
  NumPy keeps stable across releases: the permutation keeps 0 in place and
  shuffles 1..base-1, then one uniform draw in [0, 1) gives the shift.
  """
  rng = np.random.RandomState(base)
  nonzero_digits = list(range(1, base))
  rng.shuffle(nonzero_digits)
  return [0, *nonzero_digits], float(rng.random_sample())


def _radical_inverse(index: int, base: int, digit_map: Sequence[int]) -> float:
  """Reflects the base-`base` digits of `index` about the radix point."""
  value = 0.0
  place = base
  while index:
    # Accumulate from the least significant digit, in the same order as
    # AlgoPerf, so that the floats agree bit for bit.
    value += digit_map[index % base] / place
    place *= base
    index //= base
  return value


def halton_sequence(
  num_points: int, num_dims: int, skip: int = HALTON_SKIP
) -> list[tuple[float, ...]]:
  """Points in [0, 1)^num_dims of a scrambled, shifted Halton sequence.

  Dimension d is the radical inverse in base `halton_bases(num_dims)[d]` of
  the indices skip+1, ..., skip+num_points, with permuted digits, plus a
  per-dimension shift, modulo 1. The result does not depend on any global
  random state; it equals AlgoPerf's `halton.generate_sequence` before that
  function's final shuffle. With bases near 1000, a few hundred points
  differ mostly in their last, scrambled digit, so a small study is spread
  like a random draw without replacement from about 1000 values per axis,
  not like a regular grid.

  Args:
    num_points: how many points to return.
    num_dims: coordinates per point, at least 1.
    skip: leading indices to drop.

  Returns:
    `num_points` tuples of `num_dims` floats, in sequence order.
  """
  if num_dims < 1 or skip < 0:
    raise ValueError(
      f'need num_dims >= 1 and skip >= 0, got {num_dims} and {skip}.'
    )
  columns = []
  for base in halton_bases(num_dims):
    digit_map, shift = _digit_scramble_and_shift(base)
    columns.append(
      [
        math.fmod(_radical_inverse(index, base, digit_map) + shift, 1.0)
        for index in range(skip + 1, skip + num_points + 1)
      ]
    )
  return list(zip(*columns, strict=True))


# -- Checking the JSON ------------------------------------------------------


def _check_name(name: Any, where: str) -> None:
  # The names become namedtuple fields, so they must be identifiers.
  if (
    not isinstance(name, str)
    or not name.isidentifier()
    or keyword.iskeyword(name)
    or name.startswith('_')
  ):
    raise SearchSpaceError(
      f'{where}: hyperparameter name {name!r} is not a Python identifier '
      'without a leading underscore'
    )


def _is_number(value: Any) -> bool:
  return (
    isinstance(value, (int, float))
    and not isinstance(value, bool)
    and math.isfinite(value)
  )


def _check_scalar(value: Any, where: str) -> None:
  if not (_is_number(value) or isinstance(value, (str, bool))):
    raise SearchSpaceError(
      f'{where}: value {value!r} is not a finite number, string or boolean'
    )


def parse_dimension(name: str, spec: Any) -> Dimension:
  """Checks one entry of the dict form and returns it as a dimension."""
  _check_name(name, name)
  if not isinstance(spec, dict):
    raise SearchSpaceError(
      f'{name}: expected an object with "feasible_points" or with "min", '
      f'"max" and "scaling", got {spec!r}'
    )
  keys = set(spec)
  expected = _DISCRETE_KEYS if 'feasible_points' in keys else _CONTINUOUS_KEYS
  unknown = sorted(keys - expected)
  if unknown:
    raise SearchSpaceError(
      f'{name}: unknown key(s) {", ".join(map(repr, unknown))}; a dimension '
      'has either "feasible_points" or "min", "max" and "scaling"'
    )
  missing = sorted(expected - keys)
  if missing:
    raise SearchSpaceError(
      f'{name}: missing key(s) {", ".join(map(repr, missing))}'
    )

  if expected is _DISCRETE_KEYS:
    points = spec['feasible_points']
    if not isinstance(points, list) or not points:
      raise SearchSpaceError(
        f'{name}.feasible_points: expected a non-empty list, got {points!r}'
      )
    for position, point in enumerate(points):
      _check_scalar(point, f'{name}.feasible_points[{position}]')
    return Discrete(name, tuple(points))

  for bound in ('min', 'max'):
    if not _is_number(spec[bound]):
      raise SearchSpaceError(
        f'{name}.{bound}: expected a finite number, got {spec[bound]!r}'
      )
  low, high, scaling = float(spec['min']), float(spec['max']), spec['scaling']
  if scaling not in SCALINGS:
    raise SearchSpaceError(
      f'{name}.scaling: expected "linear" or "log", got {scaling!r}'
    )
  if low > high:
    raise SearchSpaceError(f'{name}: min {low} is greater than max {high}')
  if scaling == 'log' and low <= 0.0:
    raise SearchSpaceError(f'{name}.min: log scaling needs min > 0, got {low}')
  return Continuous(name, low, high, scaling)


def parse_dimensions(raw: dict[str, Any]) -> list[Dimension]:
  """Checks the dict form; dimensions keep the file's key order."""
  if not raw:
    raise SearchSpaceError('the search space has no hyperparameters')
  return [parse_dimension(name, spec) for name, spec in raw.items()]


def check_points(raw: list[Any]) -> list[dict[str, Scalar]]:
  """Checks the list form: non-empty, objects with the same names."""
  if not raw:
    raise SearchSpaceError('the list of points is empty')
  names = None
  for position, point in enumerate(raw):
    where = f'point {position}'
    if not isinstance(point, dict) or not point:
      raise SearchSpaceError(
        f'{where}: expected an object of hyperparameter values, got {point!r}'
      )
    for name, value in point.items():
      _check_name(name, where)
      _check_scalar(value, f'{where}.{name}')
    if names is None:
      names = set(point)
    elif set(point) != names:
      differing = sorted(names.symmetric_difference(point))
      raise SearchSpaceError(
        f'{where}: its names differ from point 0 in '
        f'{", ".join(map(repr, differing))}; every point needs the same names'
      )
  return list(raw)


# -- Points -----------------------------------------------------------------


def shuffle_seed(raw: Any, num_trials: int) -> int:
  """The seed of the dict form's point order.

  A stable hash of the search space's contents (in canonical JSON, key order
  kept, since it decides which dimension gets which base) and the trial
  count: the same file gives the same order on every machine and in every
  process, wherever it lies and however it is indented.
  """
  contents = json.dumps(raw, separators=(',', ':'), allow_nan=False)
  return derive_seed('search_space', contents, num_trials)


def generate_points(raw: Any, num_trials: int) -> list[dict[str, Scalar]]:
  """The hyperparameter points of the first `num_trials` trials.

  List form: the first min(num_trials, len) points, in order. Dict form:
  `num_trials` points of `halton_sequence`, mapped onto the dimensions and
  put in a seeded order. AlgoPerf draws the same set but shuffles it with
  NumPy's unseeded global generator, so its order changes from run to run
  and trials run as separate processes (`--hparam_start_index`) can repeat
  or miss points; here the order comes from `shuffle_seed`, so every run and
  every process sees the same list.

  Args:
    raw: the parsed JSON of the search space.
    num_trials: the number of tuning trials, at least 1.

  Returns:
    One dict per trial, names in the file's order.

  Raises:
    SearchSpaceError: if the search space or `num_trials` is malformed.
  """
  if isinstance(num_trials, bool) or not isinstance(num_trials, int):
    raise SearchSpaceError(f'num_tuning_trials {num_trials!r} is not an int')
  if num_trials < 1:
    raise SearchSpaceError(f'num_tuning_trials must be >= 1, got {num_trials}')
  if isinstance(raw, list):
    return [dict(point) for point in check_points(raw)[:num_trials]]
  if not isinstance(raw, dict):
    raise SearchSpaceError(
      'expected a list of points or an object of dimensions, got '
      f'{type(raw).__name__}'
    )

  dimensions = parse_dimensions(raw)
  sequence = halton_sequence(num_trials, len(dimensions))
  order = np.random.RandomState(shuffle_seed(raw, num_trials)).permutation(
    num_trials
  )
  return [
    {
      dimension.name: dimension.value_at(unit)
      for dimension, unit in zip(dimensions, sequence[position], strict=True)
    }
    for position in order.tolist()
  ]
