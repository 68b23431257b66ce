"""Shared helpers for runner tests."""

import itertools

import pytest

from sfperf.runner import training
from workloads.digits import DigitsWorkload

BASELINE = 'submissions/self_tuning/nadamw_baseline/submission.py'


@pytest.fixture
def fake_clock(monkeypatch):
  """Replaces the runner's clock: every reading advances one second."""
  ticks = itertools.count(1000.0)
  monkeypatch.setattr(training, 'get_time', lambda: float(next(ticks)))


@pytest.fixture
def digits_timing(monkeypatch):
  """Sets the digits budget and eval period for one test."""

  def set_timing(budget_sec, eval_period_sec):
    monkeypatch.setattr(
      DigitsWorkload, 'max_allowed_runtime_sec', property(lambda s: budget_sec)
    )
    monkeypatch.setattr(
      DigitsWorkload,
      'eval_period_time_sec',
      property(lambda s: eval_period_sec),
    )

  return set_timing
