"""Build, check and fallbacks of ScheduleFreeAdamWV1's one-pass CPU kernel.

That its steps equal the loop's bit for bit is tested with the other paths
in test_schedule_free_v1_foreach.py; here: that it is built once and cached,
that it is really used for the tensors it can take, that its result does
not depend on the thread count, and that every way it can fail leaves a
working optimizer and one clear message.
"""

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from sfperf.optim import (
  ScheduleFreeAdamWV1,
  cpu_kernel,
  native_build,
  schedule_free_v1,
)


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch):
  """An empty kernel cache and no memory of an earlier load."""
  monkeypatch.setenv(native_build.CACHE_ENV, str(tmp_path / 'cache'))
  monkeypatch.delenv(native_build.DISABLE_ENV, raising=False)
  cpu_kernel.load_kernel.cache_clear()
  yield tmp_path / 'cache'
  cpu_kernel.load_kernel.cache_clear()


def _load():
  """The kernel as the optimizer loads it."""
  return cpu_kernel.load_kernel(schedule_free_v1._reference_step)


def _train(optimizer_kwargs, steps=4):
  generator = torch.Generator().manual_seed(0)
  with torch.random.fork_rng():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
      torch.nn.Linear(5, 300), torch.nn.ReLU(), torch.nn.Linear(300, 2)
    )
  optimizer = ScheduleFreeAdamWV1(
    model.parameters(), lr=0.05, warmup_steps=2, **optimizer_kwargs
  )
  inputs = torch.randn(16, 5, generator=generator)
  for _ in range(steps):

    def closure():
      optimizer.zero_grad()
      loss = model(inputs).square().mean()
      loss.backward()
      return loss

    optimizer.step(closure)
  return model


def test_builds_once_into_the_cache_and_reuses_it(fresh_kernel):
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert _load() is not None
  (library,) = fresh_kernel.glob('*.so')
  built_at = library.stat().st_mtime_ns
  assert not list(fresh_kernel.glob('*tmp*'))  # the build was atomic
  assert library.with_suffix('.sha256').read_text().strip() == (
    native_build._digest(library)
  )

  cpu_kernel.load_kernel.cache_clear()
  assert _load() is not None
  assert library.stat().st_mtime_ns == built_at
  assert list(fresh_kernel.glob('*.so')) == [library]


def test_the_kernel_takes_every_float32_cpu_tensor(fresh_kernel, monkeypatch):
  assert _load() is not None  # built and probed already
  taken = {'lerp': 0, 'update': 0}
  real_lerp, real_update = (
    cpu_kernel.CpuKernel.lerp_,
    cpu_kernel.CpuKernel.update_,
  )

  def lerp(self, params, *args):
    taken['lerp'] += len(params)
    return real_lerp(self, params, *args)

  def update(self, params, *args):
    taken['update'] += len(params)
    return real_update(self, params, *args)

  monkeypatch.setattr(cpu_kernel.CpuKernel, 'lerp_', lerp)
  monkeypatch.setattr(cpu_kernel.CpuKernel, 'update_', update)
  _train({}, steps=3)  # the default on CPU
  assert taken == {'lerp': 4 * 3, 'update': 4 * 3}

  taken.update(lerp=0, update=0)
  _train({'fused': False}, steps=3)
  assert taken == {'lerp': 0, 'update': 0}


def test_thread_count_does_not_change_a_bit(fresh_kernel):
  threads = torch.get_num_threads()
  try:
    results = []
    for count in (1, 2, 3):
      torch.set_num_threads(count)
      # Longer than a few of the kernel's chunks, and not a multiple of
      # them, so that threads share the tensor unevenly.
      param = torch.nn.Parameter(torch.linspace(-1, 1, 200_003))
      optimizer = ScheduleFreeAdamWV1([param], lr=0.1, fused=True)
      for step in range(3):

        def closure(param=param, optimizer=optimizer, step=step):
          optimizer.zero_grad()
          loss = (param * (step + 1)).sin().sum()
          loss.backward()
          return loss

        optimizer.step(closure)
      results.append(param.detach().clone())
  finally:
    torch.set_num_threads(threads)
  assert all(torch.equal(results[0], other) for other in results[1:])


def test_no_compiler_falls_back_with_one_warning(fresh_kernel, monkeypatch):
  monkeypatch.setenv('CC', str(fresh_kernel / 'no-such-compiler'))
  with pytest.warns(RuntimeWarning, match='one-pass CPU kernel not used'):
    assert _load() is None
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # cached: no second warning
    fallback = _train({})
  assert torch.equal(fallback[0].weight, _train({'fused': False})[0].weight)
  with pytest.raises(RuntimeError, match='fused=True.*no C compiler'):
    _train({'fused': True})


def test_a_build_error_names_the_compiler_output(fresh_kernel, monkeypatch):
  broken = fresh_kernel.parent / 'broken.c'
  broken.write_text('this is not C;\n')
  monkeypatch.setattr(native_build, 'C_SOURCE', broken)
  with pytest.warns(
    RuntimeWarning, match=r'failed on broken\.c \(exit 1\): .*error'
  ):
    assert _load() is None
  assert not list(fresh_kernel.glob('*'))  # nothing half-written is kept


def test_a_kernel_that_differs_from_torch_is_not_used(fresh_kernel):
  def reference_with_other_eps(param, z, grad, v, scalars):
    schedule_free_v1._reference_step(
      param, z, grad, v, (*scalars[:3], 1e-3, *scalars[4:])
    )

  with pytest.warns(RuntimeWarning, match='not bit-identical.*differs in'):
    assert cpu_kernel.load_kernel(reference_with_other_eps) is None


def test_the_environment_switch_turns_it_off_silently(
  fresh_kernel, monkeypatch
):
  monkeypatch.setenv(native_build.DISABLE_ENV, '1')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert _load() is None
    _train({})
    with pytest.raises(RuntimeError, match='SFPERF_NO_CPU_KERNEL is set'):
      _train({'fused': True})
  assert not fresh_kernel.exists()  # nothing was built


def test_the_probe_includes_the_rounding_ties_where_fusing_matters():
  beta2 = 0.9955159689799007
  v_bits, grad = native_build.rounding_tie_cases(beta2)
  v = torch.from_numpy(v_bits.view(np.int16)).view(torch.bfloat16)
  grad = torch.from_numpy(grad)
  decayed = v.float().mul(np.float32(beta2)).bfloat16().float()
  scaled = torch.tensor(1 - beta2, dtype=torch.float32) * grad
  unfused = (decayed + scaled * grad).bfloat16()
  fused = (decayed.double() + scaled.double() * grad.double()).float()
  fused = fused.bfloat16()
  assert len(grad) == 64 and bool((unfused != fused).all())

  # torch's in-place ops (what the loop runs) pick one side on every case:
  # on this CPU the fused one, which the kernel must then match.
  torch_v = v.clone().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
  assert torch.equal(torch_v, fused) or torch.equal(torch_v, unfused)

  # A one-element repro from a breaker pass: the stored v differed.
  param = torch.nn.Parameter(torch.tensor([1.0]))
  results = []
  for fused_path in (False, True):
    param = torch.nn.Parameter(torch.tensor([1.0]))
    optimizer = ScheduleFreeAdamWV1(
      [param], lr=1e-2, betas=(0.9, 0.995), foreach=False, fused=fused_path
    )
    optimizer.step(lambda param=param: setattr(param, 'grad', torch.zeros(1)))
    optimizer.state[param]['exp_avg_sq'].fill_(0.004974365234375)
    optimizer.step(
      lambda param=param: setattr(
        param, 'grad', torch.tensor([-1.6162625551223755])
      )
    )
    results.append((param.detach().clone(), optimizer.state[param]))
  assert torch.equal(results[0][0], results[1][0])
  for key in ('z', 'exp_avg_sq'):
    assert torch.equal(results[0][1][key], results[1][1][key])


def test_a_damaged_cached_build_is_rebuilt_not_loaded(fresh_kernel):
  # Loading a truncated shared object kills the process (SIGBUS), so the
  # digest written beside each build must catch it first.
  assert _load() is not None
  (library,) = fresh_kernel.glob('*.so')
  whole = library.read_bytes()
  # A new file, not a write into the old one: this process has that one
  # mapped, and truncating it under the mapping would crash the test.
  library.unlink()
  library.write_bytes(whole[: len(whole) // 3])
  cpu_kernel.load_kernel.cache_clear()

  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert _load() is not None
  assert library.read_bytes() == whole  # the same build, made again


def test_a_hanging_compiler_times_out(fresh_kernel, monkeypatch, tmp_path):
  compiler = tmp_path / 'hanging-cc'
  compiler.write_text('#!/bin/sh\nsleep 30\n')
  compiler.chmod(0o755)
  monkeypatch.setenv('CC', str(compiler))
  monkeypatch.setattr(native_build, 'VERSION_TIMEOUT_SEC', 0.5)
  with pytest.warns(RuntimeWarning, match=r'did not finish in 0 s'):
    assert _load() is None


def test_cc_may_carry_arguments(fresh_kernel, monkeypatch):
  monkeypatch.setenv('CC', 'gcc -DSFPERF_TEST_ARGUMENT=1')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert _load() is not None


def test_an_unusable_cache_folder_is_named(fresh_kernel, monkeypatch, tmp_path):
  blocker = tmp_path / 'a-file'
  blocker.write_text('')
  monkeypatch.setenv(native_build.CACHE_ENV, str(blocker / 'kernels'))
  with pytest.warns(
    RuntimeWarning, match=f'kernel cache .*unusable.*{native_build.CACHE_ENV}'
  ):
    assert _load() is None


def test_tensor_subclasses_go_through_torch_ops(tmp_path):
  # A DTensor (FSDP2, tensor parallelism) reports a CPU float32 contiguous
  # tensor but data_ptr() 0: handing it to the kernel crashed the process.
  script = f"""
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor
from sfperf.optim import ScheduleFreeAdamWV1
dist.init_process_group(
  'gloo', init_method='file://{tmp_path}/store', rank=0, world_size=1
)
mesh = init_device_mesh('cpu', (1,))
ones = torch.ones(100, 10)
weight = torch.nn.Parameter(distribute_tensor(ones, mesh, [Shard(0)]))
assert weight.data_ptr() == 0
optimizer = ScheduleFreeAdamWV1([weight], lr=0.1)
optimizer.step(lambda: setattr(
  weight, 'grad', distribute_tensor(torch.ones(100, 10), mesh, [Shard(0)])))
assert float(weight.full_tensor().max()) < 1
print('SUBCLASS-OK')
"""
  completed = subprocess.run(
    [sys.executable, '-c', script], capture_output=True, text=True, timeout=120
  )
  assert completed.returncode == 0, completed.stderr[-2000:]
  assert 'SUBCLASS-OK' in completed.stdout


def test_a_build_with_unsafe_float_flags_fails_the_probe(
  fresh_kernel, monkeypatch
):
  # Arguments in CC are part of the cache key, and the probe's NaN and
  # infinite gradients catch what -ffinite-math-only gets wrong.
  monkeypatch.setenv('CC', 'gcc -ffinite-math-only')
  with pytest.warns(RuntimeWarning, match='not bit-identical'):
    assert _load() is None
  monkeypatch.setenv('CC', 'gcc')
  cpu_kernel.load_kernel.cache_clear()
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert _load() is not None
  assert len(list(fresh_kernel.glob('*.so'))) == 2  # two keys, two builds


@pytest.mark.parametrize(
  ('value', 'message'),
  [('gcc "-DX=1', 'No closing quotation'), ('  ', 'none found')],
)
def test_an_unparsable_cc_falls_back(fresh_kernel, monkeypatch, value, message):
  monkeypatch.setenv('CC', value)
  if not value.strip():
    monkeypatch.setenv('PATH', str(fresh_kernel))  # and no cc on the PATH
  with pytest.warns(RuntimeWarning, match=message):
    assert _load() is None


def test_a_library_without_the_kernel_symbols_is_not_used(fresh_kernel):
  with pytest.raises(native_build.KernelUnavailable, match='no_such_symbol'):
    native_build.load_library(
      native_build.C_SOURCE,
      native_build.c_compiler(),
      symbols=('no_such_symbol',),
    )


@pytest.mark.parametrize('beta2', [0.0, 1.0, -0.5, float('nan')])
def test_rounding_tie_cases_reject_beta2_outside_the_open_interval(beta2):
  with pytest.raises(ValueError, match='beta2 must be in'):
    native_build.rounding_tie_cases(beta2)
