"""Times one jitted step of the JAX Schedule-Free AdamW v1 against optax.adamw.

Same parameter set as `optimizer_step.py` (ResNet-50's 161 tensors, 25.6M
parameters, fixed random float32 gradients), same interleaved timing and
medians, reused from that script. Every step is one `jax.jit` call with the
parameters and optimizer state donated, timed until `block_until_ready`:

- `optax_adamw`: `optax.adamw` update plus `optax.apply_updates`.
- `sf_v1_jax`: `schedule_free_adamw_v1(...).update`, the entry's update
  (z, bfloat16 v and x; the entry's r = 0.75 and warmup). On this CPU it
  runs the one-pass kernel through XLA FFI (same bits as jax.numpy);
  SFPERF_NO_CPU_KERNEL=1 times the jax.numpy form instead.
- `sf_v1_jax_gradient_point`: `gradient_point` alone, which a train step
  also runs (y = x + (1 - b1)(z - x), written out as the forward's input);
  optax.adamw has no such pass. Timed on its own because jitting it
  together with a donating update makes XLA copy x and z first, which a
  real train step (y feeds the gradient that feeds the update) does not.

`--flat` gives every tensor a 1-D shape of the same size: a diagnostic.
XLA:CPU vectorizes elementwise loops along the innermost dimension, which
is 1 or 3 for convolution kernels, and the Schedule-Free update has more
arithmetic per element than AdamW, so it loses more to those shapes.

Command (from the repository root):
  .venv/bin/python benchmarks/optimizer_step_jax.py [--repeats 20]

Prints the JAX version and backend, per-candidate `<key>_ms: T` lines, then
`ratio_vs_optax_adamw: R` (update only) and
`with_y_ratio_vs_optax_adamw: R` (update plus gradient point, summed).

`jax_candidates(shapes)` follows the `Candidate` protocol of
`optimizer_step.py`, so that script can time these with its own.
"""

import argparse
import os
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

# The torch benchmark's shapes, timing and report, without packaging the
# benchmarks folder: it sits beside this file.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from optimizer_step import (  # noqa: E402
  BETAS,
  LEARNING_RATE,
  WEIGHT_DECAY,
  Candidate,
  measure,
  report,
  resnet50_shapes,
)

from sfperf.optim import schedule_free_adamw_v1  # noqa: E402


class _Stepper:
  """Holds params and state between calls of one jitted, donating step."""

  def __init__(self, jitted, params, state, grads):
    self._jitted = jitted
    self._params = params
    self._state = state
    self._grads = grads

  def __call__(self) -> None:
    outputs = self._jitted(self._params, self._state, self._grads)
    self._params, self._state = outputs[-2], outputs[-1]
    jax.block_until_ready(outputs)


def _gradient_point_step(schedule_free, shapes) -> Callable[[], None]:
  """One jitted y = gradient_point(x, state), nothing donated."""
  rng = np.random.default_rng(1)
  params = [jnp.asarray(rng.standard_normal(s, np.float32)) for s in shapes]
  state = schedule_free.init(params)
  jitted = jax.jit(schedule_free.gradient_point)

  def step() -> None:
    jax.block_until_ready(jitted(params, state))

  return step


def jax_candidates(shapes: Sequence[tuple[int, ...]]) -> list[Candidate]:
  """optax.adamw and the JAX Schedule-Free v1 update, float32 parameters."""
  rng = np.random.default_rng(0)
  initial = [rng.standard_normal(shape, np.float32) for shape in shapes]
  grads = [jnp.asarray(rng.standard_normal(s, np.float32)) for s in shapes]

  def params() -> list[jax.Array]:
    return [jnp.array(value) for value in initial]

  adamw = optax.adamw(
    LEARNING_RATE, b1=BETAS[0], b2=BETAS[1], weight_decay=WEIGHT_DECAY
  )

  def adamw_step(params, state, grads):
    updates, state = adamw.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  schedule_free = schedule_free_adamw_v1(
    learning_rate=LEARNING_RATE,
    warmup_steps=100,
    b1=BETAS[0],
    b2=BETAS[1],
    weight_decay=WEIGHT_DECAY,
    r=0.75,
  )

  def sf_step(params, state, grads):
    return schedule_free.update(grads, state, params)

  def stepper(step, init):
    start = params()
    return _Stepper(
      jax.jit(step, donate_argnums=(0, 1)), start, init(start), grads
    )

  return [
    Candidate('optax_adamw', stepper(adamw_step, adamw.init)),
    Candidate(
      'sf_v1_jax',
      stepper(sf_step, schedule_free.init),
      compared_to='optax_adamw',
      ratio_key='ratio_vs_optax_adamw',
    ),
    Candidate(
      'sf_v1_jax_gradient_point', _gradient_point_step(schedule_free, shapes)
    ),
  ]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument(
    '--flat', action='store_true', help='1-D tensors of the same sizes'
  )
  args = parser.parse_args()
  if args.warmup < 0 or args.repeats < 1:
    parser.error('--repeats must be >= 1, --warmup >= 0')

  shapes = resnet50_shapes()
  if args.flat:
    shapes = [(int(np.prod(shape)),) for shape in shapes]
  num_params = sum(int(np.prod(shape)) for shape in shapes)
  print(f'jax: {jax.__version__} optax: {optax.__version__}')
  print(f'backend: {jax.default_backend()} devices: {jax.device_count()}')
  print(f'parameters: {num_params} in {len(shapes)} tensors')
  print(f'shapes: {"flat" if args.flat else "resnet50"}')
  print(f'warmup: {args.warmup} repeats: {args.repeats}')

  candidates = jax_candidates(shapes)
  medians = measure(candidates, warmup=args.warmup, repeats=args.repeats)
  report(candidates, medians)
  with_y = medians['sf_v1_jax'] + medians['sf_v1_jax_gradient_point']
  print(f'with_y_ratio_vs_optax_adamw: {with_y / medians["optax_adamw"]:.3f}')


if __name__ == '__main__':
  main()
