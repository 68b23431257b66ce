"""`sfperf check` and `sfperf pack`: getting a submission ready to submit."""

import argparse
import sys
from typing import Optional

from sfperf.submission_tools import check as check_module
from sfperf.submission_tools import pack as pack_module
from sfperf.submission_tools.common import RULESETS, SubmissionError, locate

EXIT_NOT_READY = 2


def _ruleset_argument(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--ruleset',
    choices=RULESETS,
    help='tuning ruleset; default: from the path (external_tuning/ or '
    'self_tuning/)',
  )


def _search_space_argument(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    '--search_space',
    '--search-space',
    dest='search_space',
    metavar='FILE',
    help='external-tuning search space; default: tuning_search_space.json '
    'beside the module, else the one tuning_search_spaces/ maps it to',
  )


def build_check_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='sfperf check',
    description='Check a submission module against the AlgoPerf v0.5 and '
    'v0.6 APIs without training. Exit 0 when it is compatible with the '
    'version it targets, 2 otherwise.',
  )
  parser.add_argument('submission', help='submission.py or its folder')
  parser.add_argument(
    '--api',
    choices=check_module.API_VERSIONS,
    help='the API version the submission targets; default: v0.5 if it '
    'imports algorithmic_efficiency, else v0.6',
  )
  _ruleset_argument(parser)
  _search_space_argument(parser)
  return parser


def check_main(argv: Optional[list[str]] = None) -> int:
  """Entry point of `sfperf check`."""
  args = build_check_parser().parse_args(argv)
  try:
    located = locate(args.submission, args.ruleset)
  except SubmissionError as error:
    print(f'sfperf check: {error}', file=sys.stderr)
    return EXIT_NOT_READY
  report = check_module.check_submission(located, args.api, args.search_space)
  print('\n'.join(report.lines()))
  return 0 if report.ok else EXIT_NOT_READY


def build_pack_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
    prog='sfperf pack',
    description='Write a standalone copy of a submission in the layout of '
    'the mlcommons/submissions_algorithms leaderboard repository '
    '(OUTDIR/submissions/<ruleset>/<name>/), with the sfperf modules it '
    'needs vendored beside it.',
  )
  parser.add_argument('submission_dir', help='the submission folder')
  parser.add_argument('outdir', help='folder to create (the repository root)')
  parser.add_argument(
    '--api',
    choices=tuple(pack_module.API_PACKAGES),
    default='v0.6',
    help='v0.6: import algoperf (default); v0.5: algorithmic_efficiency',
  )
  parser.add_argument('--name', help='folder name upstream (default: same)')
  _ruleset_argument(parser)
  _search_space_argument(parser)
  info = parser.add_argument_group('submission_info.yml')
  info.add_argument('--submission_name', '--submission-name')
  info.add_argument('--authors', help='comma-separated')
  info.add_argument('--affiliations', help='comma-separated')
  info.add_argument('--version', dest='info_version', metavar='VERSION')
  info.add_argument('--framework', choices=('PyTorch', 'JAX'))
  info.add_argument('--description')
  parser.add_argument(
    '--overwrite',
    action='store_true',
    help='move an existing OUTDIR aside (OUTDIR.old-<time>) and write anew',
  )
  return parser


def pack_main(argv: Optional[list[str]] = None) -> int:
  """Entry point of `sfperf pack`."""
  args = build_pack_parser().parse_args(argv)
  info = {
    'submission_name': args.submission_name,
    'authors': args.authors,
    'affiliations': args.affiliations,
    'version': args.info_version,
    'framework': args.framework,
    'description': args.description,
  }
  try:
    located = locate(args.submission_dir, args.ruleset)
    result = pack_module.pack_submission(
      located,
      args.outdir,
      api=args.api,
      name=args.name,
      search_space=args.search_space,
      info=info,
      overwrite=args.overwrite,
    )
  except (SubmissionError, pack_module.PackError, OSError) as error:
    print(f'sfperf pack: {error}', file=sys.stderr)
    return EXIT_NOT_READY
  if result.moved_aside:
    print(f'moved the old {result.outdir} to {result.moved_aside}')
  print(f'wrote {result.submission_folder}')
  print(f'  files: {", ".join(result.files)}')
  print(f'  vendored: {", ".join(result.vendored) or "nothing"}')
  print(f'  requirements: {", ".join(result.requirements) or "none"}')
  for todo in result.todos:
    print(f'  TODO {todo}')
  # pack_submission checked the packed copy (it imports the real API
  # package) before moving it into place; show its verdicts.
  print('\n'.join(f'  {line}' for line in result.report.lines()[-2:]))
  return 0
