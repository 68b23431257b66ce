"""Getting a submission ready for the AlgoPerf leaderboard.

`check` verifies a submission module against the v0.5 and v0.6 APIs without
training; `pack` turns it into a standalone folder for a pull request to
mlcommons/submissions_algorithms.
"""
