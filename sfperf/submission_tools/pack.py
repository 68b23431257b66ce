"""Packs a submission into the folder a leaderboard pull request adds.

mlcommons/submissions_algorithms keeps each entry in
`submissions/<external_tuning|self_tuning>/<name>/`: the submission module
and any helper modules beside it, `submission_info.yml`, `requirements.txt`
and, for external tuning, `tuning_search_space.json`. The packed module must
run with only AlgoPerf installed, so every `sfperf` module it needs, found by
following its `sfperf.*` imports transitively, is copied beside it with its
imports rewritten to relative ones, and `from sfperf.api import spec`
becomes `from algoperf import spec` (v0.6) or `from algorithmic_efficiency
import spec` (v0.5). A module that reads files beside itself names them in
a top-level `VENDORED_FILES = ('name', ...)`; they are copied beside it.
"""

import ast
import collections
import importlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from typing import NamedTuple, Optional

from sfperf.fsutil import default_mode, move_aside
from sfperf.submission_tools import check as check_module
from sfperf.submission_tools.common import (
  RULESET_FOLDERS,
  SEARCH_SPACE_FILE,
  Located,
  find_search_space,
  locate,
  project_root,
)

API_PACKAGES = {'v0.6': 'algoperf', 'v0.5': 'algorithmic_efficiency'}
PROJECT_PACKAGE = 'sfperf'
SEAM_MODULE = 'sfperf.api'
VENDORED_FILES = 'VENDORED_FILES'
# Marks an import of the API seam, rewritten to the chosen API package.
_API = '<api>'

# Import names the AlgoPerf environment already provides (its own
# dependencies and the framework extras of its pyproject, v0.6), so they are
# left out of requirements.txt: pinning them could fight the image's pins.
PROVIDED_BY_ALGOPERF = (
  'absl',
  'chex',
  'clu',
  'flax',
  'jax',
  'jaxlib',
  'ml_dtypes',
  'numpy',
  'optax',
  'pandas',
  'tensorflow',
  'tensorflow_datasets',
  'torch',
  'torchvision',
)

FRAMEWORKS = {'torch': 'PyTorch', 'jax': 'JAX'}

# submission_info.yml fields the user may give, with the TODO note written
# beside the default when not given (None: the default needs no review).
# The leaderboard's PR check requires submission_name, submission_folder,
# authors and ruleset to be non-empty.
INFO_TODOS = {
  'submission_name': 'the name shown on the leaderboard',
  'authors': 'authors, comma-separated (required by the PR check)',
  'affiliations': 'affiliations, comma-separated',
  'version': None,  # '1.0' needs no review
  'framework': 'PyTorch or JAX',
  'description': 'a short, high-level description of the algorithm',
}


class PackError(ValueError):
  """The submission cannot be packed; the message says what and why."""


class PackCheckError(PackError):
  """The packed copy failed `sfperf check`; nothing was written to OUTDIR."""

  def __init__(self, message: str, report: 'check_module.Report') -> None:
    super().__init__(message)
    self.report = report


class PackResult(NamedTuple):
  """What `pack_submission` wrote."""

  outdir: str
  submission_folder: str  # absolute path of submissions/<ruleset>/<name>
  files: tuple[str, ...]  # names inside submission_folder
  vendored: tuple[str, ...]  # sfperf modules copied, dotted names
  requirements: tuple[str, ...]  # pinned lines of requirements.txt
  todos: tuple[str, ...]  # what the user must still fill in
  moved_aside: Optional[str]  # where an existing OUTDIR went (--overwrite)
  report: Optional['check_module.Report'] = None  # the packed copy's check


# -- Following and rewriting sfperf imports ----------------------------------


class _Edit(NamedTuple):
  node: ast.stmt
  replacement: str  # a template; '{api}' and '{file:<module>}' are filled


def _module_file(module_name: str) -> str:
  spec = importlib.util.find_spec(module_name)
  if spec is None or not spec.origin or not spec.origin.endswith('.py'):
    raise PackError(
      f'{module_name} is not a Python source module; it cannot be vendored'
    )
  return spec.origin


def _is_package(module_name: str) -> bool:
  spec = importlib.util.find_spec(module_name)
  return spec is not None and spec.submodule_search_locations is not None


def _is_submodule(package: str, name: str) -> bool:
  try:
    return importlib.util.find_spec(f'{package}.{name}') is not None
  except ModuleNotFoundError:
    return False


def _absolute(node: ast.ImportFrom, module_name: str, is_package: bool) -> str:
  """The absolute module an ImportFrom names, relative forms resolved."""
  if node.level == 0:
    return node.module or ''
  parts = module_name.split('.')
  if not is_package:
    parts = parts[:-1]
  base = parts[: len(parts) - (node.level - 1)]
  return '.'.join(base + ([node.module] if node.module else []))


def _in_project(module: str) -> bool:
  return module == PROJECT_PACKAGE or module.startswith(PROJECT_PACKAGE + '.')


def _alias_text(alias: ast.alias) -> str:
  return (
    alias.name if alias.asname is None else f'{alias.name} as {alias.asname}'
  )


def _resolve_from(
  node: ast.ImportFrom, module: str, where: str
) -> dict[str, list[ast.alias]]:
  """Groups the names of `from <sfperf module> import ...` by defining module.

  Keys are dotted sfperf module names, or `_API` for the seam's `spec`. A
  name that is itself a submodule is keyed `'<submodule>:'` + its name.
  """
  if module == SEAM_MODULE or module.startswith(SEAM_MODULE + '.'):
    names = [alias.name for alias in node.names]
    if module != SEAM_MODULE or names != ['spec']:
      raise PackError(
        f'{where}: imports {", ".join(names)} from {module}; only '
        f'`from {SEAM_MODULE} import spec` has an upstream equivalent'
      )
    return {_API: list(node.names)}
  if any(alias.name == '*' for alias in node.names):
    raise PackError(f'{where}: `from {module} import *` cannot be vendored')

  if not _is_package(module):
    return {module: list(node.names)}
  groups: dict[str, list[ast.alias]] = collections.defaultdict(list)
  package = importlib.import_module(module)
  for alias in node.names:
    if _is_submodule(module, alias.name):
      groups[f'<submodule>:{module}.{alias.name}'].append(alias)
      continue
    value = getattr(package, alias.name, None)
    defining = getattr(value, '__module__', None)
    if (
      value is None
      or not defining
      or not _in_project(defining)
      or defining == module
      or getattr(importlib.import_module(defining), alias.name, None)
      is not value
    ):
      raise PackError(
        f'{where}: {alias.name!r} from package {module} is not defined in a '
        'module of its own; import it from the module that defines it'
      )
    groups[defining].append(alias)
  return dict(groups)


def _declared_files(tree: ast.Module, path: str) -> tuple[str, ...]:
  """The names in the module's top-level `VENDORED_FILES`, if it has one."""
  for node in tree.body:
    if not (
      isinstance(node, ast.Assign)
      and any(
        isinstance(target, ast.Name) and target.id == VENDORED_FILES
        for target in node.targets
      )
    ):
      continue
    try:
      names = ast.literal_eval(node.value)
    except ValueError:
      names = None
    if not (
      isinstance(names, tuple)
      and all(
        isinstance(name, str)
        and name == os.path.basename(name)
        and name not in ('', '.', '..')
        and not name.endswith('.py')
        for name in names
      )
    ):
      raise PackError(
        f'{path}:{node.lineno}: {VENDORED_FILES} must be a tuple of plain '
        'file names (no folders, no .py files) written as string literals'
      )
    return names
  return ()


def _scan(
  module_name: str, source: str, path: str, is_package: bool
) -> tuple[list[_Edit], set[str]]:
  """The import rewrites one file needs and the sfperf modules it uses."""
  try:
    tree = ast.parse(source, filename=path)
  except SyntaxError as error:
    where = f'{path}:{error.lineno}' if error.lineno else path
    raise PackError(
      f'{where}: does not parse (SyntaxError: {error.msg}); fix the module '
      'and pack again'
    ) from None
  reads_declared_files = bool(_declared_files(tree, path))
  edits, needed = [], set()
  for node in ast.walk(tree):
    where = f'{path}:{getattr(node, "lineno", "?")}'
    if isinstance(node, ast.Import):
      project = [alias for alias in node.names if _in_project(alias.name)]
      if not project:
        continue
      if len(project) != len(node.names) or any(
        alias.asname is None or _is_package(alias.name) for alias in project
      ):
        raise PackError(
          f'{where}: `import {", ".join(map(_alias_text, node.names))}` '
          'cannot be vendored; write `from sfperf.<package> import <module>` '
          'or import the names it uses'
        )
      lines = [
        f'from . import {{file:{alias.name}}} as {alias.asname}'
        for alias in project
      ]
      needed.update(alias.name for alias in project)
      edits.append(_Edit(node, '\n'.join(lines)))
      continue
    if not isinstance(node, ast.ImportFrom):
      if (
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r'sfperf(\.\w+)+', node.value)
      ):
        raise PackError(
          f'{where}: the string {node.value!r} names an sfperf module (a '
          'dynamic import?); vendoring cannot follow it'
        )
      if (
        isinstance(node, ast.Name)
        and node.id == '__file__'
        and not reads_declared_files
      ):
        raise PackError(
          f'{where}: uses __file__ (reads files beside itself?); name them '
          f'in a top-level {VENDORED_FILES} tuple, or it cannot be vendored'
        )
      continue

    module = _absolute(node, module_name, is_package)
    if not _in_project(module):
      continue
    if module == PROJECT_PACKAGE:
      groups = {}
      for alias in node.names:
        if not _is_submodule(module, alias.name):
          raise PackError(
            f'{where}: {alias.name!r} from the sfperf package itself cannot '
            'be vendored'
          )
        groups[f'<submodule>:{module}.{alias.name}'] = [alias]
    else:
      groups = _resolve_from(node, module, where)

    statements = []
    for target, aliases in groups.items():
      if target.startswith('<submodule>:'):
        submodule = target.split(':', 1)[1]
        needed.add(submodule)
        for alias in aliases:
          local_name = alias.asname or alias.name
          statements.append(
            f'from . import {{file:{submodule}}} as {local_name}'
          )
        continue
      source_module = '{api}' if target == _API else f'.{{file:{target}}}'
      if target != _API:
        needed.add(target)
      statements.append(
        f'from {source_module} import '
        f'{", ".join(_alias_text(alias) for alias in aliases)}'
      )
    if len(groups) == 1 and not next(iter(groups)).startswith('<submodule>:'):
      # Only the module changes: keep the statement's own layout and comments.
      (target,) = groups
      module_text = '{api}' if target == _API else f'.{{file:{target}}}'
      edits.append(_Edit(node, f'<module>{module_text}'))
    else:
      edits.append(_Edit(node, '\n'.join(statements)))
  return edits, needed


def _offsets(source: str) -> list[int]:
  """Character offset of the start of each line (1-based line index - 1)."""
  starts, total = [], 0
  for line in source.splitlines(keepends=True):
    starts.append(total)
    total += len(line)
  starts.append(total)
  return starts


def _char_offset(source_lines: list[str], starts: list[int], line, col) -> int:
  # ast columns count UTF-8 bytes; turn them into characters.
  text = source_lines[line - 1]
  return starts[line - 1] + len(text.encode('utf-8')[:col].decode('utf-8'))


def _apply(source: str, edits: list[_Edit], files: dict[str, str], api: str):
  """The source with each edited import statement replaced."""
  starts = _offsets(source)
  lines = source.splitlines(keepends=True)
  pieces, cursor = [], 0
  ordered = sorted(
    edits, key=lambda edit: (edit.node.lineno, edit.node.col_offset)
  )
  for edit in ordered:
    node = edit.node
    start = _char_offset(lines, starts, node.lineno, node.col_offset)
    end = _char_offset(lines, starts, node.end_lineno, node.end_col_offset)
    original = source[start:end]
    replacement = re.sub(
      r'\{file:([\w.]+)\}',
      lambda match: files[match.group(1)],
      edit.replacement,
    ).replace('{api}', api)
    if replacement.startswith('<module>'):
      module_text = replacement[len('<module>') :]
      replacement = re.sub(
        r'^from\s+\.*[\w.]*', f'from {module_text}', original, count=1
      )
    else:
      indent = ' ' * node.col_offset
      replacement = replacement.replace('\n', '\n' + indent)
    pieces.append(source[cursor:start])
    pieces.append(replacement)
    cursor = end
  pieces.append(source[cursor:])
  return ''.join(pieces)


def _file_names(modules: list[str]) -> dict[str, str]:
  """A unique sibling file stem per vendored module, never 'submission'."""
  stems: dict[str, str] = {}
  taken = {'submission', '__init__'}
  for module in sorted(modules, key=lambda name: (name.count('.'), name)):
    parts = module.split('.')[1:]
    stem = parts[-1]
    if stem in taken or stem == '__init__':
      stem = '_'.join(parts)
    if stem in taken:
      raise PackError(
        f'two vendored modules would both be {stem}.py; rename one of them'
      )
    taken.add(stem)
    stems[module] = stem
  return stems


def vendor(module_path: str, api: str) -> tuple[str, dict[str, str]]:
  """Rewrites a submission and every sfperf module it needs, transitively.

  Args:
    module_path: the submission module.
    api: 'v0.6' or 'v0.5'; decides the package the spec is imported from.

  Returns:
    The rewritten submission source, and {dotted module: rewritten source}.

  Raises:
    PackError: if an import cannot be followed or vendored.
  """
  try:
    with open(module_path, encoding='utf-8') as handle:
      submission_source = handle.read()
  except UnicodeDecodeError:
    raise PackError(
      f'{module_path}: not UTF-8 text; save it as UTF-8'
    ) from None
  scans = {}
  sources = {}
  edits, pending = _scan('submission', submission_source, module_path, False)
  pending = set(pending)
  while pending:
    module = pending.pop()
    if module in scans:
      continue
    path = _module_file(module)
    with open(path, encoding='utf-8') as handle:
      sources[module] = handle.read()
    scans[module] = _scan(module, sources[module], path, _is_package(module))
    pending |= scans[module][1] - set(scans)

  files = _file_names(list(scans))
  api_package = API_PACKAGES[api]
  rewritten = {
    module: _apply(sources[module], scans[module][0], files, api_package)
    for module in scans
  }
  return _apply(submission_source, edits, files, api_package), rewritten


def vendored_files(modules: list[str]) -> dict[str, str]:
  """{file name: path} of the files the vendored modules read beside them.

  Raises:
    PackError: if two modules name the same file, or a named file is
      missing.
  """
  found: dict[str, str] = {}
  for module in sorted(modules):
    path = _module_file(module)
    with open(path, encoding='utf-8') as handle:
      tree = ast.parse(handle.read(), filename=path)
    for name in _declared_files(tree, path):
      source = os.path.join(os.path.dirname(path), name)
      if not os.path.isfile(source):
        raise PackError(
          f'{path}: {VENDORED_FILES} names {name}, which is not beside it'
        )
      if name in found:
        raise PackError(
          f'{path}: {VENDORED_FILES} names {name}, as another vendored '
          'module does; rename one of them'
        )
      found[name] = source
  return found


# -- Requirements, info, layout ----------------------------------------------


def third_party_imports(sources: list[str]) -> set[str]:
  """Top-level names of absolute imports that are not the standard library."""
  names = set()
  for source in sources:
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, ast.Import):
        names.update(alias.name.split('.')[0] for alias in node.names)
      elif isinstance(node, ast.ImportFrom) and node.level == 0:
        names.add((node.module or '').split('.')[0])
  names.discard('')
  return {
    name
    for name in names
    if name not in sys.stdlib_module_names and name != '__future__'
  }


def requirements(imports: set[str]) -> tuple[list[str], list[str], list[str]]:
  """Pins for the imports AlgoPerf does not provide.

  Returns:
    (pinned lines, provided imports left out, imports with no installed
    distribution to pin).
  """
  distributions = importlib.metadata.packages_distributions()
  pins, provided, unknown = set(), [], []
  for name in sorted(imports):
    if name in API_PACKAGES.values():
      continue
    if name in PROVIDED_BY_ALGOPERF:
      provided.append(name)
      continue
    found = distributions.get(name)
    if not found:
      unknown.append(name)
      continue
    for distribution in sorted(set(found)):
      version = importlib.metadata.version(distribution)
      pins.add(f'{distribution}=={version}')
  return sorted(pins), provided, unknown


def _requirements_text(pins, provided, unknown) -> str:
  lines = [
    '# Third-party packages the submission imports, pinned to the versions',
    '# it was packed and tested with (sfperf pack).',
  ]
  if provided:
    lines.append(
      '# Not listed, provided by the AlgoPerf environment: '
      + ', '.join(provided)
      + '.'
    )
  lines += [
    f'# TODO: pin {name} (not installed where packed)' for name in unknown
  ]
  return '\n'.join(lines + pins) + '\n'


def _framework(imports: set[str]) -> Optional[str]:
  found = {FRAMEWORKS[name] for name in imports if name in FRAMEWORKS}
  return found.pop() if len(found) == 1 else None


# Words a folder name spells in lower case that the field writes otherwise.
_DISPLAY_WORDS = {
  'adamw': 'AdamW',
  'nadamw': 'NAdamW',
  'adam': 'Adam',
  'sgd': 'SGD',
  'jax': 'JAX',
  'pytorch': 'PyTorch',
  'lamb': 'LAMB',
  'lars': 'LARS',
}


def display_name(folder_name: str) -> str:
  """A leaderboard display name from a folder name: 'schedule_free_adamw'
  gives 'Schedule Free AdamW'."""
  return ' '.join(
    _DISPLAY_WORDS.get(word.lower(), word[:1].upper() + word[1:])
    for word in folder_name.split('_')
    if word
  )


def _first_paragraph(source: str) -> Optional[str]:
  docstring = ast.get_docstring(ast.parse(source))
  if not docstring:
    return None
  return ' '.join(docstring.split('\n\n')[0].split())


def _yaml_string(value: str) -> str:
  # A JSON string is a valid double-quoted YAML scalar.
  return json.dumps(value, ensure_ascii=False)


def submission_info(
  fields: dict[str, Optional[str]], todo_notes: dict[str, str]
) -> str:
  """submission_info.yml text; a field in `todo_notes` gets a TODO comment."""
  lines = []
  for key, value in fields.items():
    line = f'{key}: {_yaml_string(value or "")}'
    if key in todo_notes:
      line += f'  # TODO: {todo_notes[key]}'
    lines.append(line)
  return '\n'.join(lines) + '\n'


def _provenance(module_path: str) -> str:
  try:
    version = importlib.metadata.version(PROJECT_PACKAGE)
  except importlib.metadata.PackageNotFoundError:
    version = 'unknown version'
  root = project_root(os.path.dirname(module_path)) or os.path.dirname(
    module_path
  )
  try:
    commit = subprocess.run(
      ['git', '-C', root, 'rev-parse', '--short', 'HEAD'],
      capture_output=True,
      text=True,
      check=True,
      timeout=10,
    ).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return f'sfperf {version}'
  return f'sfperf {version}, commit {commit}'


def _header(what: str) -> str:
  return (
    f'# {what}.\n'
    '# Written by `sfperf pack`: edit the original, then pack again.\n'
  )


def _move_aside(outdir: str) -> str:
  return move_aside(outdir, f'{outdir}.old')


def pack_submission(
  located: Located,
  outdir: str,
  api: str = 'v0.6',
  name: Optional[str] = None,
  search_space: Optional[str] = None,
  info: Optional[dict[str, Optional[str]]] = None,
  overwrite: bool = False,
  verify: bool = True,
) -> PackResult:
  """Writes `outdir/submissions/<ruleset>/<name>/` for a leaderboard PR.

  Args:
    located: the submission, from `common.locate` (its ruleset must be known).
    outdir: the folder to create; it mirrors the leaderboard repository root.
    api: 'v0.6' (imports `algoperf`) or 'v0.5' (`algorithmic_efficiency`).
    name: the submission's folder name upstream; default: its folder name.
    search_space: the search space file for external tuning; default: the
      one `common.find_search_space` finds.
    info: submission_info.yml fields (submission_name, authors,
      affiliations, version, framework, description); None or missing ones
      get defaults and a TODO marker.
    overwrite: move an existing, non-empty `outdir` aside (to
      `<outdir>.old-<time>`) instead of refusing.
    verify: run `sfperf check` on the packed copy for `api` before it is
      moved into place; a failing copy is discarded.

  Raises:
    PackError: on an unknown API or ruleset, a missing search space, a
      module that does not parse, an import that cannot be vendored, or an
      existing `outdir`; `PackCheckError` when the packed copy fails its
      check. `outdir` is left as it was.
  """
  if api not in API_PACKAGES:
    raise PackError(f'unknown API version {api!r}; use v0.5 or v0.6')
  if located.ruleset is None:
    raise PackError(
      f'{located.folder}: ruleset unknown (not under external_tuning/ or '
      'self_tuning/); pass --ruleset'
    )
  name = name or located.name
  if not re.fullmatch(r'[a-z0-9_]+', name):
    raise PackError(
      f'submission folder name {name!r}: use lowercase letters, digits and _'
    )
  space_path = None
  if located.ruleset == 'external':
    space_path = find_search_space(located, search_space)
    if space_path is None or not os.path.isfile(space_path):
      raise PackError(
        f'{located.module_path}: no search space found for this external-'
        'tuning submission; pass --search_space'
      )
  elif search_space is not None:
    raise PackError('a self-tuning submission takes no search space')

  outdir = os.path.abspath(outdir)
  if os.path.exists(outdir) and not (
    os.path.isdir(outdir) and not os.listdir(outdir)
  ):
    if not overwrite:
      raise PackError(
        f'{outdir} exists; choose another OUTDIR or pass --overwrite (the '
        'old one is moved aside, not deleted)'
      )

  submission_source, vendored = vendor(located.module_path, api)
  files = _file_names(list(vendored))
  data_files = vendored_files(list(vendored))
  imports = third_party_imports([submission_source, *vendored.values()])
  pins, provided, unknown = requirements(imports)

  ruleset_folder = next(
    folder
    for folder, ruleset in RULESET_FOLDERS.items()
    if ruleset == located.ruleset
  )
  relative_folder = f'submissions/{ruleset_folder}/{name}'
  info = {key: value for key, value in (info or {}).items() if value}
  framework = info.get('framework') or _framework(imports)
  fields = {
    'submission_name': display_name(name),
    'submission_folder': relative_folder,
    'authors': '',
    'affiliations': '',
    'version': '1.0',
    'ruleset': located.ruleset,
    'framework': framework or '',
    'description': _first_paragraph(submission_source) or '',
  }
  fields.update(
    (key, value) for key, value in info.items() if key in INFO_TODOS
  )
  todo_notes = {
    key: note
    for key, note in INFO_TODOS.items()
    if note is not None
    and key not in info
    and not (key == 'framework' and framework)
  }

  provenance = _provenance(located.module_path)
  outputs = {
    '__init__.py': '',
    'submission.py': _header(
      f'Packed from {located.name}/submission.py ({provenance})'
    )
    + submission_source,
    'submission_info.yml': submission_info(fields, todo_notes),
    'requirements.txt': _requirements_text(pins, provided, unknown),
  }
  for module, source in vendored.items():
    original = module.replace('.', '/') + '.py'
    outputs[f'{files[module]}.py'] = (
      _header(f'Vendored from {original} ({provenance})') + source
    )

  clashes = sorted(set(data_files) & {*outputs, SEARCH_SPACE_FILE})
  if clashes:
    raise PackError(
      f'{VENDORED_FILES} names {", ".join(clashes)}, a file the packed '
      'folder writes itself; rename it'
    )

  parent = os.path.dirname(outdir)
  os.makedirs(parent, exist_ok=True)
  # Everything is built and checked in a scratch folder beside OUTDIR, so a
  # failed pack leaves OUTDIR as it was and the next try needs no
  # --overwrite; only a passing copy is renamed into place.
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(outdir)}.', dir=parent)
  try:
    # mkdtemp makes a private 0700 folder; the result is an ordinary one.
    os.chmod(staging, default_mode(0o777))
    folder = os.path.join(staging, *relative_folder.split('/'))
    os.makedirs(folder)
    for file_name, text in outputs.items():
      with open(
        os.path.join(folder, file_name), 'w', encoding='utf-8', newline=''
      ) as handle:
        handle.write(text)
    if space_path is not None:
      shutil.copyfile(space_path, os.path.join(folder, SEARCH_SPACE_FILE))
    for file_name, source in data_files.items():
      shutil.copyfile(source, os.path.join(folder, file_name))
    with open(
      os.path.join(staging, 'PULL_REQUEST_BODY.md'), 'w', encoding='utf-8'
    ) as handle:
      handle.write(_pull_request_body(fields, todo_notes))
    report = _check_packed(located, folder, api) if verify else None
    moved_aside = None
    if os.path.isdir(outdir) and not os.listdir(outdir):
      os.rmdir(outdir)
    elif os.path.exists(outdir):
      moved_aside = _move_aside(outdir)
    os.rename(staging, outdir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise

  submission_folder = os.path.join(outdir, *relative_folder.split('/'))
  if report is not None:
    report = report._replace(located=locate(submission_folder))
  todos = [
    f'submission_info.yml {key}: {note}' for key, note in todo_notes.items()
  ]
  todos += [f'requirements.txt: pin {name}' for name in unknown]
  return PackResult(
    outdir=outdir,
    submission_folder=submission_folder,
    files=tuple(
      sorted(
        [
          *outputs,
          *data_files,
          *([SEARCH_SPACE_FILE] if space_path else []),
        ]
      )
    ),
    vendored=tuple(sorted(vendored)),
    requirements=tuple(pins),
    todos=tuple(todos),
    moved_aside=moved_aside,
    report=report,
  )


def _check_packed(located: Located, folder: str, api: str):
  """`sfperf check` of the packed copy in `folder`, as it will be submitted.

  Raises:
    PackCheckError: the copy does not import or is not compatible with `api`.
  """
  report = check_module.check_submission(locate(folder), api)
  if report.ok:
    return report
  if report.import_error is not None:
    # The scratch folder's path means nothing to the user; name the file.
    reason = report.import_error.replace(folder + os.sep, '')
  else:
    reason = '; '.join(report.reasons(api))
  raise PackCheckError(
    f'the packed copy of {located.module_path} fails sfperf check for '
    f'{api} ({reason}); fix the submission and pack again (nothing was '
    'written)',
    report,
  )


def _pull_request_body(fields: dict[str, str], todo_notes: dict[str, str]):
  """The PR description: the YAML block the leaderboard's template asks for."""
  return (
    '# New Submission\n\n'
    '## Submission Information\n\n'
    '```yaml\n' + submission_info(fields, todo_notes) + '```\n\n'
    "## Evidence for the Submission's Performance\n\n"
    'TODO: links to logs, a paper or a pre-print.\n\n'
    '## Comments\n\n'
    'Packed with `sfperf pack`; checked with `sfperf check`.\n'
  )
