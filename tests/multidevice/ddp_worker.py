"""Trains a tiny workload with two PyTorch submissions, alone or under DDP.

Run as `python -m tests.multidevice.ddp_worker OUT_DIR STEPS` for one
process, or under `torchrun --nproc_per_node=N -m tests.multidevice.ddp_worker
OUT_DIR STEPS` for N processes on the gloo backend (CPU). Either way every
step sees the same global batch; under DDP each rank takes its contiguous
shard of global // N examples and the model is wrapped in
DistributedDataParallel, as the official runner does. Each submission's real
`init_optimizer_state` and `update_params` run for STEPS steps.

Every rank writes OUT_DIR/rank_<rank>.json (rank, world size, shard size,
the submissions' end-of-run flags) and OUT_DIR/params_<rank>.pt (final
parameters per submission, keyed without DDP's 'module.' prefix).
"""

import json
import os
import sys
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from sfperf.api import spec
from submissions.self_tuning.nadamw_baseline import submission as nadamw
from submissions.self_tuning.schedule_free_adamw import (
  submission as schedule_free,
)
from tests.tiny_workload import TinyWorkloadBase

SUBMISSIONS = {'schedule_free_adamw': schedule_free, 'nadamw_baseline': nadamw}
GLOBAL_BATCH_SIZE = 16
NUM_FEATURES = 8
NUM_CLASSES = 4
# Warmup: Schedule-Free int(0.02 * 300 * 0.75) = 4 steps, NAdamW
# int(0.02 * 300) = 6 steps. The divergence-reset check of the
# Schedule-Free entry is due from step 31 (past 0.10 * step hint), so a run
# of more than 31 steps looks at the eval history at least once.
STEP_HINT = 300
# An eval every EVAL_EVERY steps whose accuracy rises by far more than the
# reset margin each time, so the reset rule is looked at and never fires.
EVAL_EVERY = 5
MODEL_SEED = 0
DATA_SEED = 1


class LayerNormWorkload(TinyWorkloadBase):
  """An MLP with LayerNorm on fixed random batches of GLOBAL_BATCH_SIZE.

  LayerNorm, not BatchNorm: under DDP each rank's BatchNorm normalizes with
  its own shard's statistics (AlgoPerf syncs them only with SyncBatchNorm),
  so N processes and one process would legitimately differ. LayerNorm
  normalizes each example alone, which makes the global loss, and so the
  gradient, independent of how the batch is split. For the same reason the
  model has no dropout: `model_fn` ignores `dropout_rate` (NAdamW passes
  0.1), since each rank would draw its own masks.
  """

  num_train_examples = GLOBAL_BATCH_SIZE
  eval_batch_size = GLOBAL_BATCH_SIZE
  num_eval_train_examples = GLOBAL_BATCH_SIZE
  num_validation_examples = GLOBAL_BATCH_SIZE

  def __init__(self) -> None:
    super().__init__('accuracy', STEP_HINT)

  def is_output_params(self, param_key) -> bool:
    return param_key.startswith('6.')

  def init_model_fn(self, rng) -> tuple[nn.Module, None]:
    torch.manual_seed(int(rng))
    model = nn.Sequential(
      nn.Linear(NUM_FEATURES, 32),
      nn.LayerNorm(32),
      nn.GELU(),
      nn.Linear(32, 32),
      nn.LayerNorm(32),
      nn.GELU(),
      nn.Linear(32, NUM_CLASSES),
    )
    self._param_shapes = {
      name: spec.ShapeTuple(tuple(param.shape))
      for name, param in model.named_parameters()
    }
    self._param_types = {
      name: spec.ParameterType.WEIGHT for name, _ in model.named_parameters()
    }
    return model, None

  def model_fn(
    self,
    params,
    augmented_and_preprocessed_input_batch,
    model_state,
    mode,
    rng,
    update_batch_norm,
    dropout_rate=None,
  ):
    del rng, update_batch_norm, dropout_rate
    params.train(mode == spec.ForwardPassMode.TRAIN)
    logits = params(augmented_and_preprocessed_input_batch['inputs'])
    return logits, model_state

  def loss_fn(
    self, label_batch, logits_batch, mask_batch=None, label_smoothing=0.0
  ) -> dict[str, torch.Tensor]:
    """Per-device sums: the submissions all-reduce them before dividing."""
    per_example = F.cross_entropy(
      logits_batch,
      label_batch,
      reduction='none',
      label_smoothing=label_smoothing,
    )
    if mask_batch is None:
      mask_batch = torch.ones_like(per_example)
    per_example = per_example * mask_batch
    return {
      'summed': per_example.sum(),
      'n_valid_examples': mask_batch.sum(),
      'per_example': per_example,
    }

  def _eval_model_on_split(self, *args, **kwargs):
    raise NotImplementedError('the worker does not evaluate')


def global_batch(step: int) -> dict[str, torch.Tensor]:
  """The step's global batch, the same on every rank.

  The last three examples are masked out; they all fall in the last shard,
  so shards hold different numbers of valid examples and the global mean is
  right only if the counts are all-reduced too.
  """
  generator = torch.Generator().manual_seed(DATA_SEED * 100_000 + step)
  weights = torch.ones(GLOBAL_BATCH_SIZE)
  weights[-3:] = 0.0
  return {
    'inputs': torch.randn(GLOBAL_BATCH_SIZE, NUM_FEATURES, generator=generator),
    'targets': torch.randint(
      0, NUM_CLASSES, (GLOBAL_BATCH_SIZE,), generator=generator
    ),
    'weights': weights,
  }


def shard(
  batch: dict[str, torch.Tensor], rank: int, world_size: int
) -> dict[str, torch.Tensor]:
  """Rank `rank`'s contiguous slice of global // world_size examples."""
  size = GLOBAL_BATCH_SIZE // world_size
  return {
    key: value[rank * size : (rank + 1) * size] for key, value in batch.items()
  }


def eval_history(step: int) -> list[tuple[int, dict[str, Any]]]:
  """Evals so far, accuracy rising 0.1 per eval: never a divergence."""
  return [
    (eval_step, {'validation/accuracy': 0.1 * (index + 1), 'score': 0.0})
    for index, eval_step in enumerate(range(0, step, EVAL_EVERY))
  ]


def train(
  submission, rank: int, world_size: int, num_steps: int
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
  """Runs `num_steps` steps; returns final parameters and end-of-run flags."""
  workload = LayerNormWorkload()
  model, model_state = workload.init_model_fn(MODEL_SEED)
  if world_size > 1:
    model = DistributedDataParallel(model)
  optimizer_state = submission.init_optimizer_state(
    workload, model, model_state, None, None
  )
  for step in range(num_steps):
    optimizer_state, model, model_state = submission.update_params(
      workload=workload,
      current_param_container=model,
      current_params_types=workload.model_params_types,
      model_state=model_state,
      hyperparameters=None,
      batch=shard(global_batch(step), rank, world_size),
      loss_type=workload.loss_type,
      optimizer_state=optimizer_state,
      eval_results=eval_history(step),
      global_step=step,
      rng=None,
    )
  module = model.module if world_size > 1 else model
  params = {
    name: param.detach().clone() for name, param in module.named_parameters()
  }
  flags = {
    key: optimizer_state['reset_check'][key]
    for key in ('has_forced_reset', 'max_checked_eval_step')
    if 'reset_check' in optimizer_state
  }
  return params, flags


def main(argv: list[str]) -> None:
  out_dir, num_steps = argv[1], int(argv[2])
  world_size = int(os.environ.get('WORLD_SIZE', '1'))
  rank = int(os.environ.get('RANK', '0'))
  if world_size > 1:
    dist.init_process_group('gloo')
  torch.set_num_threads(1)

  results, flags = {}, {}
  for name, submission in SUBMISSIONS.items():
    results[name], flags[name] = train(submission, rank, world_size, num_steps)

  info = {
    'rank': rank,
    'world_size': world_size,
    'distributed': dist.is_initialized(),
    'local_batch_size': GLOBAL_BATCH_SIZE // world_size,
    'steps': num_steps,
    'flags': flags,
  }
  torch.save(results, os.path.join(out_dir, f'params_{rank}.pt'))
  with open(os.path.join(out_dir, f'rank_{rank}.json'), 'w') as f:
    json.dump(info, f)
  if world_size > 1:
    dist.destroy_process_group()


if __name__ == '__main__':
  main(sys.argv)
