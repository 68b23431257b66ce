"""PyTorch DDP: two processes train as one, and batch sizes must divide.

Runs `ddp_worker` under torchrun with two gloo processes on CPU and alone in
one process, on the same global batches, through the real `update_params` of
the Schedule-Free AdamW self-tuning entry and the NAdamW baseline, and
compares the final parameters. Only loopback networking is used: torchrun's
--standalone rendezvous on localhost with a free port, gloo on `lo`.
"""

import json
import os
import subprocess
import sys

import pytest
import torch

import sfperf.runner.experiment
from sfperf.runner import UsageError, run
from tests.multidevice import ddp_worker

REPO_ROOT = os.path.dirname(
  os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
)
NUM_STEPS = 40
WORLD_SIZE = 2
TIMEOUT_SEC = 120
BASELINE = 'submissions/self_tuning/nadamw_baseline/submission.py'

# Largest allowed |2 processes - 1 process| over all parameters after
# NUM_STEPS steps. The global loss is the same sum either way, but the two
# shards' partial sums and gradients are added in another order, so the
# gradients differ in the last float32 bits. NAdamW keeps its moments in
# float32 and stays within a few float32 ulps: measured 1.2e-7 here, and at
# most 1.2e-7 over eight other data and model seeds. Schedule-Free AdamW
# keeps v (exp_avg_sq) in bfloat16, so a last-bit gradient difference can
# round v to the neighbouring bfloat16 value and change that element's step
# by about 2^-9 of lr for as long as v differs: measured 1.2e-7 here, but up
# to 4.4e-5 over the other seeds. For scale, dropping the all-reduce of the
# summed loss and example count (shards hold 8 and 5 valid examples) gives
# 1e-2 for both.
TOLERANCES = {'schedule_free_adamw': 2e-4, 'nadamw_baseline': 1e-6}


def _launch(out_dir, world_size: int) -> None:
  """Runs the worker alone (world_size 1) or under torchrun; waits."""
  out_dir.mkdir()
  worker = ['-m', 'tests.multidevice.ddp_worker', str(out_dir), str(NUM_STEPS)]
  if world_size == 1:
    command = [sys.executable, *worker]
  else:
    command = [
      sys.executable,
      '-m',
      'torch.distributed.run',
      '--standalone',
      '--nnodes=1',
      f'--nproc_per_node={world_size}',
      *worker,
    ]
  pythonpath = os.pathsep.join(
    filter(None, [REPO_ROOT, os.environ.get('PYTHONPATH')])
  )
  env = dict(
    os.environ,
    OMP_NUM_THREADS='1',
    GLOO_SOCKET_IFNAME='lo',
    PYTHONPATH=pythonpath,
  )
  result = subprocess.run(
    command,
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=TIMEOUT_SEC,
  )
  assert result.returncode == 0, (
    f'{" ".join(command)} exited with {result.returncode}:\n'
    f'{result.stdout[-4000:]}\n{result.stderr[-4000:]}'
  )


def _read(out_dir, world_size: int) -> tuple[list[dict], list[dict]]:
  """Per-rank (info, params), rank order."""
  infos, params = [], []
  for rank in range(world_size):
    with open(out_dir / f'rank_{rank}.json') as f:
      infos.append(json.load(f))
    params.append(torch.load(out_dir / f'params_{rank}.pt'))
  return infos, params


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """{world_size: (infos, params)} for one process and for WORLD_SIZE."""
  root = tmp_path_factory.mktemp('ddp')
  results = {}
  for world_size in (1, WORLD_SIZE):
    out_dir = root / f'world_{world_size}'
    _launch(out_dir, world_size)
    results[world_size] = _read(out_dir, world_size)
  return results


def _max_abs_diff(a: dict, b: dict) -> float:
  assert a.keys() == b.keys()
  return max((a[name] - b[name]).abs().max().item() for name in a)


def test_each_rank_trained_its_shard(runs):
  single, _ = runs[1]
  multi, _ = runs[WORLD_SIZE]
  assert [info['rank'] for info in multi] == list(range(WORLD_SIZE))
  for info in multi:
    assert info['world_size'] == WORLD_SIZE
    assert info['distributed']
    assert (
      info['local_batch_size'] == ddp_worker.GLOBAL_BATCH_SIZE // WORLD_SIZE
    )
  assert single[0]['world_size'] == 1
  assert not single[0]['distributed']
  assert single[0]['local_batch_size'] == ddp_worker.GLOBAL_BATCH_SIZE


def test_schedule_free_reset_looked_at_and_never_fired(runs):
  num_evals = len(ddp_worker.eval_history(NUM_STEPS - 1))
  for world_size in (1, WORLD_SIZE):
    for info in runs[world_size][0]:
      flags = info['flags']['schedule_free_adamw']
      assert not flags['has_forced_reset']
      assert flags['max_checked_eval_step'] == num_evals


@pytest.mark.parametrize('name', sorted(TOLERANCES))
def test_replicas_identical(runs, name):
  # With two ranks each gradient element is the same a + b on both, so DDP
  # keeps the replicas bit for bit equal.
  _, params = runs[WORLD_SIZE]
  for rank_params in params[1:]:
    assert _max_abs_diff(params[0][name], rank_params[name]) == 0.0


@pytest.mark.parametrize('name', sorted(TOLERANCES))
def test_two_processes_match_one(runs, name):
  single = runs[1][1][0][name]
  multi = runs[WORLD_SIZE][1][0][name]
  initial, _ = ddp_worker.LayerNormWorkload().init_model_fn(
    ddp_worker.MODEL_SEED
  )
  moved = _max_abs_diff(single, dict(initial.named_parameters()))
  assert moved > 10 * TOLERANCES[name], 'training barely moved the params'
  assert _max_abs_diff(single, multi) <= TOLERANCES[name]


def test_indivisible_batch_size_fails_before_any_directory(
  tmp_path, monkeypatch
):
  monkeypatch.setattr(sfperf.runner.experiment, '_device_count', lambda: 3)
  experiment_dir = tmp_path / 'experiments'
  with pytest.raises(UsageError, match=r'batch size 16 .*devices \(3\)'):
    run(
      BASELINE,
      'digits',
      experiment_dir=str(experiment_dir),
      experiment_name='exp',
      tuning_ruleset='self',
      rng_seed=0,
    )
  assert not experiment_dir.exists()
