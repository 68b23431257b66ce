"""Exact resume: a stopped, resumed trial ends where an uninterrupted one does.

Every trial trains NUM_STEPS steps with seed 0; the interrupted ones stop
part way and are resumed with `resume_last_run`. The final checkpoints are
compared bit for bit: parameters, BatchNorm buffers, optimizer state (z,
the bfloat16 v, the host copy x0, the NAdamW moments and schedule, the
submission's own entries such as `max_checked_eval_step`), the runner's
rng key, torch's RNG state and the number of batches drawn.

Evals never change training here: the reset rule of the self-tuning entry
looks at evals only past 10% of the digits step hint (step 400), and evals
run in eval mode (no dropout, no BatchNorm update). The clock is the fake
one of `conftest.py`, so where evals fall does not depend on the machine.
"""

import pytest
import torch

from sfperf.runner import checkpoint, run, training
from tests.runner.conftest import BASELINE
from workloads.digits import DigitsWorkload

NUM_STEPS = 60
STOP_STEP = 25
# A simulated SIGKILL: the process dies while drawing this batch (of step
# KILL_STEP + 1), long after its last eval checkpoint.
KILL_STEP = 40
# With the fake clock (one second per reading, about two readings a step),
# evals fall about every 24 steps: after steps 1, ~25, ~49 and at the end.
KILL_EVAL_PERIOD_SEC = 48.0

SUBMISSIONS = {
  'self_tuning_schedule_free': (
    'submissions/self_tuning/schedule_free_adamw/submission.py',
    'self',
    None,
  ),
  'self_tuning_nadamw_baseline': (BASELINE, 'self', None),
  # The published search space's first point has dropout 0.1, so this
  # trial also needs torch's RNG state restored exactly.
  'external_schedule_free': (
    'submissions/external_tuning/schedule_free_adamw/submission.py',
    'external',
    'tuning_search_spaces/schedule_free_adamw_external.json',
  ),
}


class _Killed(BaseException):
  """Stands in for a SIGKILL: nothing after it is written.

  A BaseException, as KeyboardInterrupt is, so that the runner does not
  take it for an error of the submission's code (which draws the batch).
  """


def _train(root, name, max_global_steps, resume=False, rng_seed=0):
  path, ruleset, search_space = SUBMISSIONS[name]
  (result,) = run(
    path,
    'digits',
    experiment_dir=str(root),
    experiment_name='exp',
    tuning_ruleset=ruleset,
    tuning_search_space=search_space,
    num_tuning_trials=1,
    rng_seed=rng_seed,
    max_global_steps=max_global_steps,
    resume_last_run=resume,
  )
  return result


def _final(root):
  trial_dir = root / 'exp' / 'digits_pytorch' / 'trial_1'
  return checkpoint.read_checkpoint(checkpoint.latest_checkpoint(trial_dir))


def _assert_identical(expected, actual, where='state'):
  """Equal structure; tensors equal bit for bit, with dtype and device."""
  if isinstance(expected, torch.Tensor):
    assert isinstance(actual, torch.Tensor), where
    assert (expected.dtype, expected.device) == (actual.dtype, actual.device)
    assert torch.equal(expected, actual), where
  elif isinstance(expected, dict):
    assert isinstance(actual, dict) and set(expected) == set(actual), where
    for key in expected:
      _assert_identical(expected[key], actual[key], f'{where}[{key!r}]')
  elif isinstance(expected, (list, tuple)):
    assert len(expected) == len(actual), where
    for index, (left, right) in enumerate(zip(expected, actual, strict=True)):
      _assert_identical(left, right, f'{where}[{index}]')
  else:
    assert type(expected) is type(actual) and expected == actual, where


def _assert_same_end(reference, resumed):
  assert reference['global_step'] == resumed['global_step'] == NUM_STEPS
  assert resumed['preemption_count'] == 1
  for key in ('model_params', 'model_state', 'optimizer_state'):
    _assert_identical(reference[key], resumed[key], key)
  assert (reference['rng'] == resumed['rng']).all()
  assert torch.equal(reference['torch_rng_state'], resumed['torch_rng_state'])
  assert (
    reference['extra'][training.BATCHES_DRAWN_KEY]
    == resumed['extra'][training.BATCHES_DRAWN_KEY]
    == NUM_STEPS
  )


def _optimizer_tensors(payload):
  """The tensors of the optimizer state, to show the comparison has some."""
  found = []

  def visit(value):
    if isinstance(value, torch.Tensor):
      found.append(value)
    elif isinstance(value, dict):
      for item in value.values():
        visit(item)

  visit(payload['optimizer_state'])
  return found


@pytest.fixture(scope='module')
def references(tmp_path_factory):
  """Final checkpoints of uninterrupted runs, per (submission, period)."""
  cache = {}

  def reference(name, eval_period_sec):
    key = (name, eval_period_sec)
    if key not in cache:
      root = tmp_path_factory.mktemp('reference')
      with pytest.MonkeyPatch.context() as patch:
        _patch_clock_and_timing(patch, eval_period_sec)
        _train(root, name, NUM_STEPS)
      cache[key] = _final(root)
    return cache[key]

  return reference


def _patch_clock_and_timing(patch, eval_period_sec):
  ticks = iter(range(1000, 10**9))
  patch.setattr(training, 'get_time', lambda: float(next(ticks)))
  patch.setattr(
    DigitsWorkload, 'max_allowed_runtime_sec', property(lambda s: 1e9)
  )
  patch.setattr(
    DigitsWorkload,
    'eval_period_time_sec',
    property(lambda s: eval_period_sec),
  )


@pytest.mark.parametrize('name', sorted(SUBMISSIONS))
def test_stop_at_a_step_limit_and_resume_is_exact(
  tmp_path, monkeypatch, references, name
):
  _patch_clock_and_timing(monkeypatch, 1e9)
  first = _train(tmp_path, name, STOP_STEP)
  stopped = _final(tmp_path)
  assert first.global_step == stopped['global_step'] == STOP_STEP
  assert stopped['extra'][training.BATCHES_DRAWN_KEY] == STOP_STEP

  second = _train(tmp_path, name, NUM_STEPS, resume=True)
  assert second.global_step == NUM_STEPS
  reference = references(name, 1e9)
  assert _optimizer_tensors(reference)
  _assert_same_end(reference, _final(tmp_path))


@pytest.mark.parametrize('name', sorted(SUBMISSIONS))
def test_resume_from_an_eval_checkpoint_after_a_kill_is_exact(
  tmp_path, monkeypatch, references, name
):
  _patch_clock_and_timing(monkeypatch, KILL_EVAL_PERIOD_SEC)
  build_queue = DigitsWorkload._build_input_queue
  kill_after = [KILL_STEP]

  def dying_queue(self, *args, **kwargs):
    batches = build_queue(self, *args, **kwargs)
    if kill_after[0] is None or args[1:2] != ('train',):
      return batches

    def generate():
      for drawn, batch in enumerate(batches):
        if drawn == kill_after[0]:
          raise _Killed
        yield batch

    return generate()

  monkeypatch.setattr(DigitsWorkload, '_build_input_queue', dying_queue)
  with pytest.raises(_Killed):
    _train(tmp_path, name, NUM_STEPS)
  # The last checkpoint the killed run left is an eval's, mid-run, with
  # training not complete; no final score row was written.
  left = _final(tmp_path)
  assert 1 < left['global_step'] < KILL_STEP
  assert not left['train_state']['training_complete']
  assert not left['extra']['stopped_by_max_global_steps']

  kill_after[0] = None
  second = _train(tmp_path, name, NUM_STEPS, resume=True)
  assert second.global_step == NUM_STEPS
  _assert_same_end(references(name, KILL_EVAL_PERIOD_SEC), _final(tmp_path))


def test_resume_without_skipping_the_drawn_batches_differs(
  tmp_path, monkeypatch, references
):
  # The check above can fail: resumed on a fresh pass over the data (what
  # the official runner does), the same trial ends elsewhere.
  name = 'self_tuning_nadamw_baseline'
  _patch_clock_and_timing(monkeypatch, 1e9)
  _train(tmp_path, name, STOP_STEP)
  monkeypatch.setattr(training, '_skip_batches', lambda batches, count: None)
  _train(tmp_path, name, NUM_STEPS, resume=True)
  reference = references(name, 1e9)['model_params']
  resumed = _final(tmp_path)['model_params']
  assert not all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_resume_without_a_seed_continues_with_the_trials_seed(
  tmp_path, monkeypatch, references
):
  # Without --rng_seed the resumed run draws a fresh seed; the trial's data
  # order and keys must still be those of its first run.
  name = 'self_tuning_schedule_free'
  _patch_clock_and_timing(monkeypatch, 1e9)
  _train(tmp_path, name, STOP_STEP)
  resumed = _train(tmp_path, name, NUM_STEPS, resume=True, rng_seed=None)
  assert resumed.rng_seed == 0
  _assert_same_end(references(name, 1e9), _final(tmp_path))
