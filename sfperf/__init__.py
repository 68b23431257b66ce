"""sfperf: Schedule-Free AdamW as AlgoPerf submissions, a local runner, scoring."""

__version__ = '0.1.0'
