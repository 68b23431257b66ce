"""Build, check and fallbacks of ScheduleFreeAdamWV1's one-pass CPU kernel.

That its steps equal the loop's bit for bit is tested with the other paths
in test_schedule_free_v1_foreach.py; here: that it is built once and cached,
that it is really used for the tensors it can take, that its result does
not depend on the thread count, and that every way it can fail leaves a
working optimizer and one clear message.
"""

import warnings

import pytest
import torch

from sfperf.optim import ScheduleFreeAdamWV1, cpu_kernel, native_build


@pytest.fixture
def fresh_kernel(tmp_path, monkeypatch):
  """An empty kernel cache and no memory of an earlier load."""
  monkeypatch.setenv(native_build.CACHE_ENV, str(tmp_path / 'cache'))
  monkeypatch.delenv(native_build.DISABLE_ENV, raising=False)
  cpu_kernel.load_kernel.cache_clear()
  yield tmp_path / 'cache'
  cpu_kernel.load_kernel.cache_clear()


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
    assert cpu_kernel.load_kernel() is not None
  (library,) = fresh_kernel.glob('*.so')
  built_at = library.stat().st_mtime_ns
  assert not list(fresh_kernel.glob('*.tmp'))  # the build was atomic

  cpu_kernel.load_kernel.cache_clear()
  assert cpu_kernel.load_kernel() is not None
  assert library.stat().st_mtime_ns == built_at
  assert list(fresh_kernel.glob('*.so')) == [library]


def test_the_kernel_takes_every_float32_cpu_tensor(fresh_kernel, monkeypatch):
  assert cpu_kernel.load_kernel() is not None  # built and probed already
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
    assert cpu_kernel.load_kernel() is None
  with warnings.catch_warnings():
    warnings.simplefilter('error')  # cached: no second warning
    fallback = _train({})
  assert torch.equal(fallback[0].weight, _train({'fused': False})[0].weight)
  with pytest.raises(RuntimeError, match='fused=True'):
    _train({'fused': True})


def test_a_build_error_names_the_compiler_output(fresh_kernel, monkeypatch):
  broken = fresh_kernel.parent / 'broken.c'
  broken.write_text('this is not C;\n')
  monkeypatch.setattr(native_build, 'C_SOURCE', broken)
  with pytest.warns(RuntimeWarning, match=r'failed on broken\.c: .*error'):
    assert cpu_kernel.load_kernel() is None
  assert not list(fresh_kernel.glob('*'))  # nothing half-written is kept


def test_a_kernel_that_differs_from_torch_is_not_used(
  fresh_kernel, monkeypatch
):
  real = cpu_kernel._reference_update

  def reference_with_other_eps(param, z, grad, v, scalars):
    real(param, z, grad, v, (*scalars[:3], 1e-3, *scalars[4:]))

  monkeypatch.setattr(cpu_kernel, '_reference_update', reference_with_other_eps)
  with pytest.warns(RuntimeWarning, match='not bit-identical.*differs in'):
    assert cpu_kernel.load_kernel() is None


def test_the_environment_switch_turns_it_off_silently(
  fresh_kernel, monkeypatch
):
  monkeypatch.setenv(native_build.DISABLE_ENV, '1')
  with warnings.catch_warnings():
    warnings.simplefilter('error')
    assert cpu_kernel.load_kernel() is None
    _train({})
    with pytest.raises(RuntimeError, match='SFPERF_NO_CPU_KERNEL is set'):
      _train({'fused': True})
  assert not fresh_kernel.exists()  # nothing was built
