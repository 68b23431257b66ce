"""The `sfperf` command: one entry point, one subcommand per job."""

import sys

_USAGE = """usage: sfperf COMMAND [ARGS]

commands:
  run     train a submission on a workload (AlgoPerf submission_runner flags)
  score   score a log directory: time-to-target table, profile, scores.csv
  compare score a variant inside a reference field (e.g. the leaderboard)
  demo    run both self-tuning submissions on the digits proxy and score them
  check   check a submission against the v0.5 and v0.6 APIs (no training)
  pack    write a submission as a leaderboard pull-request folder

`sfperf COMMAND --help` describes each command.
"""


def main(argv=None) -> int:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ('-h', '--help', 'help'):
    print(_USAGE, end='')
    return 0 if len(argv) >= 2 else 2
  command, rest = argv[1], argv[2:]
  if command == 'run':
    from sfperf.runner import cli as runner_cli

    return runner_cli.main(['sfperf run', *rest])
  if command == 'score':
    from sfperf.results import cli as results_cli

    return results_cli.main(rest)
  if command == 'compare':
    from sfperf.results import cli as results_cli

    return results_cli.compare_main(rest)
  if command == 'demo':
    from sfperf import demo

    return demo.main(rest)
  if command == 'check':
    from sfperf.submission_tools import cli as submission_cli

    return submission_cli.check_main(rest)
  if command == 'pack':
    from sfperf.submission_tools import cli as submission_cli

    return submission_cli.pack_main(rest)
  print(
    f'sfperf: unknown command {command!r}\n{_USAGE}', end='', file=sys.stderr
  )
  return 2


if __name__ == '__main__':
  sys.exit(main())
