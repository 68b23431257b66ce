"""Times one step of Schedule-Free AdamW v1 against torch's fused AdamW.

The parameter set has the shapes of ResNet-50 (25.6M parameters in 161
tensors), with fixed random gradients. A step is the whole closure-form
step: for Schedule-Free that includes the two lerps between x and y around
the closure; the closure only installs the precomputed gradients, so the
time is the optimizer's, not a model's. Each optimizer gets the same
closure. Steps of all candidates are interleaved, so that drift in machine
load affects them alike, and each time is the median over the repeats after
warmup steps.

Command (from the repository root):
  .venv/bin/python benchmarks/optimizer_step.py [--threads N] [--repeats 20]

Prints the thread count, per-candidate `<key>_ms: T` lines, then
`ratio_vs_fused_adamw: R`: ScheduleFreeAdamWV1 as built by default on CPU
(the one-pass kernel of sfperf/optim/schedule_free_v1_cpu.c) over fused
AdamW, then the same ratio for its torch-op paths, which give the same
bits: `foreach_ratio_vs_fused_adamw` (multi-tensor) and
`loop_ratio_vs_fused_adamw` (per-parameter loop, the entry's code).

Other frameworks plug in through `Candidate`: a JAX entry builds its own
reference (for example optax's AdamW) and candidate from `resnet50_shapes()`,
each with a `step` that returns only once the update is computed (call
`jax.block_until_ready` on the new state), names the reference in
`compared_to` with its own `ratio_key`, and is passed to `measure` with the
torch candidates.
"""

import argparse
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch

from sfperf.optim import ScheduleFreeAdamWV1

# (width, number of bottleneck blocks) of ResNet-50's four stages.
RESNET50_STAGES = ((64, 3), (128, 4), (256, 6), (512, 3))
BOTTLENECK_EXPANSION = 4
NUM_CLASSES = 1000

# The 2024 self-tuning entry's settings; they do not change the cost.
LEARNING_RATE = 2.5e-3
BETAS = (0.9, 0.9955159689799007)
WEIGHT_DECAY = 0.08121616522670176


def _conv_and_norm(
  out_channels: int, in_channels: int, kernel: int
) -> list[tuple[int, ...]]:
  """A bias-free convolution and its BatchNorm scale and offset."""
  return [
    (out_channels, in_channels, kernel, kernel),
    (out_channels,),
    (out_channels,),
  ]


def resnet50_shapes() -> list[tuple[int, ...]]:
  """Shapes of ResNet-50's trainable tensors, in torchvision's order."""
  shapes = _conv_and_norm(64, 3, 7)
  in_channels = 64
  for width, num_blocks in RESNET50_STAGES:
    out_channels = width * BOTTLENECK_EXPANSION
    for block in range(num_blocks):
      shapes += _conv_and_norm(width, in_channels, 1)
      shapes += _conv_and_norm(width, width, 3)
      shapes += _conv_and_norm(out_channels, width, 1)
      if block == 0:  # the projection shortcut
        shapes += _conv_and_norm(out_channels, in_channels, 1)
      in_channels = out_channels
  shapes += [(NUM_CLASSES, in_channels), (NUM_CLASSES,)]
  return shapes


class Candidate(NamedTuple):
  """One optimizer to time."""

  key: str  # prefix of its `<key>_ms` line
  step: Callable[[], object]  # one full step, done when it returns
  compared_to: str | None = None  # key of the candidate it is a ratio of
  ratio_key: str | None = None  # name of that ratio's line


def _torch_step(
  optimizer: torch.optim.Optimizer,
  params: Sequence[torch.Tensor],
  grads: Sequence[torch.Tensor],
) -> Callable[[], object]:
  def closure() -> None:
    for param, grad in zip(params, grads, strict=True):
      param.grad = grad

  return lambda: optimizer.step(closure)


def torch_candidates(shapes: Sequence[tuple[int, ...]]) -> list[Candidate]:
  """Fused AdamW and the three paths of ScheduleFreeAdamWV1, CPU float32."""
  generator = torch.Generator().manual_seed(0)
  initial = [torch.randn(shape, generator=generator) for shape in shapes]
  grads = [torch.randn(shape, generator=generator) for shape in shapes]

  def params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(value.clone()) for value in initial]

  adamw_params = params()
  adamw = torch.optim.AdamW(
    adamw_params,
    lr=LEARNING_RATE,
    betas=BETAS,
    weight_decay=WEIGHT_DECAY,
    fused=True,
  )
  candidates = [
    Candidate('fused_adamw', _torch_step(adamw, adamw_params, grads))
  ]
  for key, paths, ratio_key in (
    ('sf_v1', {}, 'ratio_vs_fused_adamw'),
    (
      'sf_v1_foreach',
      {'foreach': True, 'fused': False},
      'foreach_ratio_vs_fused_adamw',
    ),
    (
      'sf_v1_loop',
      {'foreach': False, 'fused': False},
      'loop_ratio_vs_fused_adamw',
    ),
  ):
    sf_params = params()
    optimizer = ScheduleFreeAdamWV1(
      sf_params,
      lr=LEARNING_RATE,
      betas=BETAS,
      weight_decay=WEIGHT_DECAY,
      warmup_steps=100,
      r=0.75,
      **paths,
    )
    candidates.append(
      Candidate(
        key,
        _torch_step(optimizer, sf_params, grads),
        compared_to='fused_adamw',
        ratio_key=ratio_key,
      )
    )
  return candidates


def measure(
  candidates: Sequence[Candidate], *, warmup: int, repeats: int
) -> dict[str, float]:
  """Median seconds per step of each candidate, steps interleaved."""
  for _ in range(warmup):
    for candidate in candidates:
      candidate.step()
  times = {candidate.key: [] for candidate in candidates}
  for _ in range(repeats):
    for candidate in candidates:
      start = time.perf_counter()
      candidate.step()
      times[candidate.key].append(time.perf_counter() - start)
  return {key: statistics.median(values) for key, values in times.items()}


def report(candidates: Sequence[Candidate], medians: dict[str, float]) -> None:
  for candidate in candidates:
    print(f'{candidate.key}_ms: {1e3 * medians[candidate.key]:.2f}')
  for candidate in candidates:
    if candidate.compared_to is not None:
      ratio = medians[candidate.key] / medians[candidate.compared_to]
      print(f'{candidate.ratio_key}: {ratio:.3f}')


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument(
    '--threads',
    type=int,
    default=len(os.sched_getaffinity(0)),
    help='torch intra-op threads (default: the CPUs this process may use)',
  )
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=20)
  args = parser.parse_args()
  if args.threads < 1 or args.warmup < 0 or args.repeats < 1:
    parser.error('--threads and --repeats must be >= 1, --warmup >= 0')

  torch.set_num_threads(args.threads)
  shapes = resnet50_shapes()
  num_params = sum(torch.Size(shape).numel() for shape in shapes)
  print(f'torch: {torch.__version__}')
  print(f'threads: {torch.get_num_threads()}')
  print(f'parameters: {num_params} in {len(shapes)} tensors')
  print(f'warmup: {args.warmup} repeats: {args.repeats}')

  candidates = torch_candidates(shapes)
  medians = measure(candidates, warmup=args.warmup, repeats=args.repeats)
  report(candidates, medians)


if __name__ == '__main__':
  main()
