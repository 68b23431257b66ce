"""Externally tuned AlgoPerf submissions (a search space per entry)."""
