"""Checks a submission module against the v0.5 and v0.6 APIs, without training.

The module is imported (so its own imports must resolve), its functions are
compared by name, order and defaults with the API of each version
(ALGOPERF.md section 1), `get_batch_size` is called for the 8 base
workloads, and the search space is looked for and loaded. The result is one
`Finding` per check, each tagged with the API versions it concerns, and a
verdict per version.
"""

import ast
import contextlib
import importlib
import importlib.machinery
import importlib.util
import inspect
import itertools
import json
import os
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple, Optional

from sfperf.submission_tools.common import Located, find_search_space

PASS, FAIL, WARN = 'PASS', 'FAIL', 'WARN'
API_VERSIONS = ('v0.5', 'v0.6')
BOTH = API_VERSIONS

BASE_WORKLOADS = (
  'criteo1tb',
  'fastmri',
  'imagenet_resnet',
  'imagenet_vit',
  'librispeech_conformer',
  'librispeech_deepspeech',
  'ogbg',
  'wmt',
)
# Not a workload of either version: the runner retries with the base name
# only when get_batch_size raises ValueError for a name it does not know.
UNKNOWN_WORKLOAD = 'sfperf_check_no_such_workload'

# Parameter names, in the order of the official spec (ALGOPERF.md 1.1).
SIGNATURES = {
  'get_batch_size': ('workload_name',),
  'init_optimizer_state': (
    'workload',
    'model_params',
    'model_state',
    'hyperparameters',
    'rng',
  ),
  'update_params': (
    'workload',
    'current_param_container',
    'current_params_types',
    'model_state',
    'hyperparameters',
    'batch',
    'loss_type',
    'optimizer_state',
    'eval_results',
    'global_step',
    'rng',
  ),
  'data_selection': (
    'workload',
    'input_queue',
    'optimizer_state',
    'current_param_container',
    'model_state',
    'hyperparameters',
    'global_step',
    'rng',
  ),
}
REQUIRED = tuple(SIGNATURES)
PREPARE_FOR_EVAL = tuple(
  name for name in SIGNATURES['update_params'] if name != 'batch'
)
TRAIN_STATE = 'train_state'

# Packages through which a module reaches the API, and the versions each
# one exists in (`algorithmic_efficiency` was renamed `algoperf` in v0.6).
API_PACKAGES = {
  'algoperf': ('v0.6',),
  'algorithmic_efficiency': ('v0.5',),
  'sfperf.api': BOTH,
}


class Finding(NamedTuple):
  """The outcome of one check."""

  status: str  # PASS, FAIL or WARN
  subject: str  # what was checked: a function, the import, the space
  message: str
  versions: tuple[str, ...] = BOTH  # the API versions it concerns


class Report(NamedTuple):
  """All findings on one submission and the version it targets."""

  located: Located
  target: str
  findings: tuple[Finding, ...]
  import_error: Optional[str] = None

  def compatible(self, version: str) -> bool:
    """True if no check concerning `version` failed (and it imported)."""
    return self.import_error is None and not self.reasons(version)

  def reasons(self, version: str) -> list[str]:
    """Why the module is not compatible with `version`, one item a cause."""
    return [
      f'{finding.subject}: {finding.message}'
      for finding in self.findings
      if finding.status == FAIL and version in finding.versions
    ]

  @property
  def ok(self) -> bool:
    """Compatible with the version the submission targets."""
    return self.compatible(self.target)

  def lines(self) -> list[str]:
    """The report as text, one line per check, then one per version."""
    if self.import_error is not None:
      return [f'{FAIL} import: {self.import_error}']
    ruleset = self.located.ruleset or 'ruleset unknown'
    lines = [
      f'{self.located.module_path} ({ruleset}; targets {self.target})',
    ]
    for finding in self.findings:
      scope = '' if finding.versions == BOTH else f' [{finding.versions[0]}]'
      lines.append(
        f'{finding.status}{scope} {finding.subject}: {finding.message}'
      )
    for version in API_VERSIONS:
      reasons = self.reasons(version)
      verdict = 'yes' if not reasons else f'no ({"; ".join(reasons)})'
      lines.append(f'compatible with {version}: {verdict}')
    return lines


# -- Static checks on the source --------------------------------------------


def api_imports(source: str) -> set[str]:
  """The API packages (keys of API_PACKAGES) the source imports from."""
  found = set()
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
      modules = [node.module]
    elif isinstance(node, ast.Import):
      modules = [alias.name for alias in node.names]
    else:
      continue
    for module in modules:
      for package in API_PACKAGES:
        if module == package or module.startswith(package + '.'):
          found.add(package)
  return found


def check_api_import(packages: set[str]) -> list[Finding]:
  """Which API versions the module's imports can exist under."""
  if not packages:
    return [
      Finding(
        WARN,
        'api import',
        'imports no AlgoPerf spec (neither algoperf, algorithmic_efficiency '
        'nor sfperf.api)',
      )
    ]
  findings = []
  for package in sorted(packages):
    versions = API_PACKAGES[package]
    if versions == BOTH:
      findings.append(
        Finding(
          PASS,
          'api import',
          f'{package} (resolves to whichever API is installed)',
        )
      )
      continue
    (missing,) = [version for version in BOTH if version not in versions]
    findings.append(
      Finding(
        FAIL,
        'api import',
        f'imports {package}, which does not exist under {missing}',
        (missing,),
      )
    )
    findings.append(
      Finding(PASS, 'api import', package, versions),
    )
  return findings


def target_version(packages: set[str]) -> str:
  """The API version a module is written for, as far as it shows.

  `algorithmic_efficiency` means v0.5; anything else (algoperf, this
  project's seam, v0.6-only hooks or none of these) means v0.6, the
  current benchmark.
  """
  if packages == {'algorithmic_efficiency'}:
    return 'v0.5'
  return 'v0.6'


# -- Signatures --------------------------------------------------------------


def _describe(names: list[str]) -> str:
  return '(' + ', '.join(names) + ')'


def _first_difference(actual: list[str], expected: tuple[str, ...]) -> str:
  for position, (have, want) in enumerate(
    itertools.zip_longest(actual, expected), start=1
  ):
    if have != want:
      if have is None:
        return f'parameter {position} {want!r} is missing'
      if want is None:
        return f'parameter {position} is {have!r}, past the end of the API'
      return f'parameter {position} is {have!r}, the API has {want!r}'
  return 'parameters differ'


def _extra_parameter_findings(
  function_name: str, extras: list[inspect.Parameter]
) -> list[Finding]:
  """Parameters past the API's: tolerated only when the runner can omit them."""
  findings = []
  for parameter in extras:
    if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
      findings.append(
        Finding(
          WARN,
          function_name,
          f'takes {parameter}; the runner passes only the API arguments',
        )
      )
    elif parameter.default is parameter.empty:
      findings.append(
        Finding(
          FAIL,
          function_name,
          f'extra parameter {parameter.name!r} has no default; the runner '
          'never passes it',
        )
      )
    else:
      findings.append(
        Finding(
          WARN,
          function_name,
          f'extra parameter {parameter.name!r} is not in the API; it keeps '
          'its default',
        )
      )
  return findings


def check_signature(
  function_name: str,
  function: Callable[..., Any],
  expected: tuple[str, ...],
  versions: tuple[str, ...] = BOTH,
) -> tuple[list[Finding], list[inspect.Parameter]]:
  """Compares the leading parameters with `expected`, by name and order.

  Returns:
    The findings, and the parameters past the expected ones (for the caller
    to judge; the v0.6 `train_state` is one).
  """
  try:
    parameters = list(inspect.signature(function).parameters.values())
  except (TypeError, ValueError) as error:
    return [
      Finding(FAIL, function_name, f'no inspectable signature: {error}')
    ], []
  leading = parameters[: len(expected)]
  names = [parameter.name for parameter in leading]
  if names != list(expected):
    return [
      Finding(
        FAIL,
        function_name,
        f'{_first_difference(names, expected)}; the API expects '
        f'{_describe(list(expected))}',
        versions,
      )
    ], []
  for parameter in leading:
    if parameter.kind is not parameter.POSITIONAL_OR_KEYWORD:
      return [
        Finding(
          FAIL,
          function_name,
          f'parameter {parameter.name!r} is {parameter.kind.description}; '
          'API arguments must be passable by position and by keyword',
          versions,
        )
      ], []
  return [
    Finding(PASS, function_name, f'signature {_describe(names)}', versions)
  ], parameters[len(expected) :]


def check_update_params(function: Callable[..., Any]) -> list[Finding]:
  """The 11 API parameters, then an optional, defaulted `train_state`."""
  findings, extras = check_signature(
    'update_params', function, SIGNATURES['update_params']
  )
  if extras and extras[0].name == TRAIN_STATE:
    train_state, extras = extras[0], extras[1:]
    findings.append(
      Finding(
        FAIL,
        'update_params',
        'takes train_state, a v0.6 parameter the v0.5 API does not have',
        ('v0.5',),
      )
    )
    if train_state.kind is not train_state.POSITIONAL_OR_KEYWORD:
      findings.append(
        Finding(
          FAIL,
          'update_params',
          f'train_state is {train_state.kind.description}; it must follow '
          'rng as an ordinary parameter',
          ('v0.6',),
        )
      )
    elif train_state.default is train_state.empty:
      findings.append(
        Finding(
          FAIL,
          'update_params',
          'train_state has no default; it is optional in the API, give it '
          'one (None)',
          ('v0.6',),
        )
      )
    else:
      findings.append(
        Finding(PASS, 'update_params', 'optional train_state', ('v0.6',))
      )
  elif any(parameter.name == TRAIN_STATE for parameter in extras):
    findings.append(
      Finding(
        FAIL,
        'update_params',
        'train_state must come right after rng',
        ('v0.6',),
      )
    )
    extras = [p for p in extras if p.name != TRAIN_STATE]
  return findings + _extra_parameter_findings('update_params', extras)


def check_prepare_for_eval(function: Callable[..., Any]) -> list[Finding]:
  """Optional v0.6 hook: update_params' arguments minus batch, train_state."""
  findings = [
    Finding(
      FAIL,
      'prepare_for_eval',
      'is a v0.6 hook; the v0.5 runner never calls it, so evals would see '
      'the parameters update_params returns',
      ('v0.5',),
    )
  ]
  signature_findings, extras = check_signature(
    'prepare_for_eval', function, PREPARE_FOR_EVAL, ('v0.6',)
  )
  findings += [
    finding._replace(versions=('v0.6',)) for finding in signature_findings
  ]
  if any(parameter.name == TRAIN_STATE for parameter in extras):
    findings.append(
      Finding(
        WARN,
        'prepare_for_eval',
        'takes train_state, which the runner does not pass to this hook',
        ('v0.6',),
      )
    )
    extras = [p for p in extras if p.name != TRAIN_STATE]
  findings += [
    finding._replace(versions=('v0.6',))
    for finding in _extra_parameter_findings('prepare_for_eval', extras)
  ]
  return findings


def _positive_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def check_batch_sizes(get_batch_size: Callable[[str], Any]) -> list[Finding]:
  """Calls get_batch_size for the base workloads and an unknown name."""
  findings = []
  unsupported = []
  for workload_name in (*BASE_WORKLOADS, UNKNOWN_WORKLOAD):
    try:
      value = get_batch_size(workload_name)
    except ValueError:
      if workload_name != UNKNOWN_WORKLOAD:
        unsupported.append(workload_name)
      continue
    except (Exception, SystemExit) as error:  # noqa: BLE001 (its code)
      findings.append(
        Finding(
          FAIL,
          'get_batch_size',
          f'{workload_name!r} raised {type(error).__name__}: {error}; the '
          'runner tolerates only ValueError (then retries the base name)',
        )
      )
      continue
    if not _positive_int(value):
      findings.append(
        Finding(
          FAIL,
          'get_batch_size',
          f'{workload_name!r} gave {value!r}, not a positive int',
        )
      )
  if unsupported:
    findings.append(
      Finding(
        WARN,
        'get_batch_size',
        f'raises ValueError for {", ".join(unsupported)}: the submission '
        'cannot run those base workloads',
      )
    )
  if not findings:
    findings.append(
      Finding(
        PASS,
        'get_batch_size',
        f'positive ints for the {len(BASE_WORKLOADS)} base workloads',
      )
    )
  return findings


def check_functions(module: Any) -> list[Finding]:
  """Required functions, optional hooks and their signatures."""
  findings = []
  for function_name in REQUIRED:
    function = getattr(module, function_name, None)
    if not callable(function):
      findings.append(
        Finding(FAIL, function_name, 'missing (a required API function)')
      )
      continue
    if function_name == 'update_params':
      findings += check_update_params(function)
      continue
    signature_findings, extras = check_signature(
      function_name, function, SIGNATURES[function_name]
    )
    findings += signature_findings
    findings += _extra_parameter_findings(function_name, extras)
    if (
      function_name == 'get_batch_size' and signature_findings[0].status == PASS
    ):
      findings += check_batch_sizes(function)

  prepare = getattr(module, 'prepare_for_eval', None)
  if prepare is not None:
    if callable(prepare):
      findings += check_prepare_for_eval(prepare)
    else:
      findings.append(
        Finding(FAIL, 'prepare_for_eval', 'is defined but not callable')
      )
  eval_batch_size = getattr(module, 'get_eval_batch_size', None)
  if eval_batch_size is not None:
    findings.append(
      Finding(
        WARN,
        'get_eval_batch_size',
        'defined: the runner honours it, but the rules do not let a '
        'submission change the eval batch size',
      )
    )
  return findings


# -- Search space ------------------------------------------------------------


def _describe_space(raw: Any) -> str:
  """Checks a parsed search space; returns a short description of it."""
  try:
    from sfperf.runner import search_space
  except ImportError:
    search_space = None
  if search_space is not None:
    search_space.generate_points(raw, 1)
  if isinstance(raw, list) and raw:
    return f'list of {len(raw)} points'
  if isinstance(raw, dict) and raw:
    return f'{len(raw)} dimensions (Halton-sampled)'
  raise ValueError('expected a non-empty list of points or dict of dimensions')


def check_search_space(
  located: Located, explicit: Optional[str] = None
) -> list[Finding]:
  """External: a search space exists and loads. Self-tuning: none exists."""
  if located.ruleset is None:
    return [
      Finding(
        WARN,
        'search space',
        'ruleset unknown (the folder is under neither external_tuning/ nor '
        'self_tuning/); pass --ruleset to check the search space',
      )
    ]
  if located.ruleset == 'self-tuning':
    path = find_search_space(located, explicit)
    beside = os.path.join(located.folder, 'tuning_search_space.json')
    if explicit is not None or os.path.isfile(beside):
      return [
        Finding(
          FAIL,
          'search space',
          f'{path} given for a self-tuning submission; the runner refuses '
          'a search space under the self-tuning ruleset',
        )
      ]
    return [Finding(PASS, 'search space', 'none (self-tuning)')]

  path = find_search_space(located, explicit)
  if path is None:
    return [
      Finding(
        FAIL,
        'search space',
        'none found for this external-tuning submission (looked for '
        'tuning_search_space.json beside it and in tuning_search_spaces/); '
        'pass --search_space',
      )
    ]
  try:
    with open(path, encoding='utf-8') as handle:
      raw = json.load(handle)
    description = _describe_space(raw)
  except (OSError, ValueError) as error:
    return [Finding(FAIL, 'search space', f'{path}: {error}')]
  return [Finding(PASS, 'search space', f'{path}: {description}')]


# -- Importing the module ------------------------------------------------------

_package_counter = itertools.count()


@contextlib.contextmanager
def api_stand_ins() -> Iterator[list[str]]:
  """Makes `algoperf` and `algorithmic_efficiency` importable while checking.

  A packed submission imports the real API package, which is often not
  installed where it is checked; each missing one is served by the local
  stand-in `sfperf.api.standin` for the duration, and removed afterwards.
  Yields the names stood in for.
  """
  # Imported first, so that the seam has chosen its API before any stand-in
  # could be mistaken for the real package.
  from sfperf.api import standin

  added = []
  for package in ('algoperf', 'algorithmic_efficiency'):
    if package in sys.modules or importlib.util.find_spec(package):
      continue
    stand_in = types.ModuleType(package)
    stand_in.__path__ = []
    stand_in.spec = standin
    sys.modules[package] = stand_in
    sys.modules[f'{package}.spec'] = standin
    added.append(package)
  try:
    yield added
  finally:
    for package in added:
      sys.modules.pop(package, None)
      sys.modules.pop(f'{package}.spec', None)


@contextlib.contextmanager
def imported(located: Located) -> Iterator[Any]:
  """Imports the module as part of a throwaway package over its folder.

  The package makes relative imports of sibling files work (a packed
  submission's vendored modules) and keeps two submissions with the same
  file name apart; it and its submodules leave `sys.modules` afterwards.
  """
  package_name = f'_sfperf_checked_{next(_package_counter)}'
  package_spec = importlib.machinery.ModuleSpec(
    package_name, None, is_package=True
  )
  package_spec.submodule_search_locations = [located.folder]
  sys.modules[package_name] = importlib.util.module_from_spec(package_spec)
  stem = os.path.splitext(os.path.basename(located.module_path))[0]
  # Checking reads the folder and writes nothing into it (no __pycache__ in
  # a folder that is to be submitted).
  dont_write_bytecode = sys.dont_write_bytecode
  sys.dont_write_bytecode = True
  try:
    yield importlib.import_module(f'{package_name}.{stem}')
  finally:
    sys.dont_write_bytecode = dont_write_bytecode
    for name in list(sys.modules):
      if name == package_name or name.startswith(package_name + '.'):
        del sys.modules[name]


def check_submission(
  located: Located,
  target: Optional[str] = None,
  search_space: Optional[str] = None,
) -> Report:
  """Runs every check on one submission.

  Args:
    located: the submission, from `common.locate`.
    target: the API version the submission is meant for; None infers it
      (v0.5 if it imports `algorithmic_efficiency`, else v0.6).
    search_space: an explicit search space file (external tuning).

  Returns:
    The report; `import_error` is set (and nothing else checked) when the
    module does not import.
  """
  with open(located.module_path, encoding='utf-8') as handle:
    source = handle.read()
  try:
    packages = api_imports(source)
  except SyntaxError as error:
    return Report(
      located, target or 'v0.6', (), f'{located.module_path}: {error}'
    )

  with api_stand_ins() as stood_in, contextlib.ExitStack() as stack:
    try:
      module = stack.enter_context(imported(located))
    except KeyboardInterrupt:
      raise
    except SystemExit as error:
      return Report(
        located,
        target or 'v0.6',
        (),
        f'{located.module_path}: module called sys.exit({error.code!r}) at '
        'import; a submission must not exit',
      )
    except BaseException as error:  # noqa: BLE001 (any import failure)
      return Report(
        located,
        target or 'v0.6',
        (),
        f'{located.module_path} does not import: '
        f'{type(error).__name__}: {error}',
      )
    findings = check_api_import(packages)
    findings += [
      Finding(
        WARN,
        'api import',
        f'{package} is not installed here; its spec was the local stand-in',
      )
      for package in stood_in
      if package in packages
    ]
    findings += check_functions(module)
  findings += check_search_space(located, search_space)
  return Report(
    located,
    target or target_version(packages),
    tuple(findings),
  )
