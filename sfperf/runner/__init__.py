"""Local AlgoPerf-compatible runner: `run(...)` and the `sfperf run` command."""

from sfperf.runner.experiment import run
from sfperf.runner.loading import WORKLOADS, UsageError
from sfperf.runner.training import TrialResult

__all__ = ['WORKLOADS', 'TrialResult', 'UsageError', 'run']
