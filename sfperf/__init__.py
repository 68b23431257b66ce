"""sfperf: Schedule-Free AdamW as AlgoPerf submissions, runner and scoring."""

__version__ = '0.1.0'
