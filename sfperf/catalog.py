"""Benchmark catalogs: targets, budgets, step hints and study counts as data.

Each AlgoPerf version is one JSON file under `workloads/catalog/`; proxy
workloads that run on a CPU have their own file (`proxy.json`). Code never
branches on a version string: it reads these fields.
"""

import dataclasses
import json
import os
from typing import Dict, Optional, Tuple

REPOSITORY_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CATALOG_DIR = os.path.join(REPOSITORY_ROOT, 'workloads', 'catalog')
BENCHMARK_VERSIONS = ('v0.5', 'v0.6')

# Metric names whose smaller values are better; everything else is maximized.
# Same lists as the official scoring code.
MINIMIZED_METRICS = frozenset(
  ['ce_loss', 'error_rate', 'ctc_loss', 'wer', 'l1_loss', 'loss', 'ppl']
)
MAXIMIZED_METRICS = frozenset(
  ['mean_average_precision', 'ssim', 'accuracy', 'bleu']
)


class CatalogError(ValueError):
  """A catalog file is missing, malformed or lacks a requested workload."""


@dataclasses.dataclass(frozen=True)
class WorkloadSpec:
  """Scoring and runtime constants of one workload in one benchmark version."""

  name: str
  target_metric_name: str
  validation_target_value: float
  test_target_value: Optional[float]
  max_allowed_runtime_sec: float
  step_hint: int
  eval_period_time_sec: float
  base_workload: str

  @property
  def minimize(self) -> bool:
    return metric_is_minimized(self.target_metric_name)

  @property
  def validation_metric(self) -> str:
    return f'validation/{self.target_metric_name}'


@dataclasses.dataclass(frozen=True)
class Catalog:
  """One benchmark version (or the proxy suite) as loaded from JSON."""

  benchmark_version: str
  path: str
  num_studies: int
  num_trials_external: int
  self_tuning_budget_factor: float
  budget_checked_every_step: bool
  # Optional submission functions the runner of this version calls:
  # 'prepare_for_eval' and the `train_state` argument came with v0.6.
  runner_hooks: Tuple[str, ...]
  base_workloads: Tuple[str, ...]
  held_out_workloads: Tuple[str, ...]
  workloads: Dict[str, WorkloadSpec]

  def workload(self, name: str) -> WorkloadSpec:
    """Returns a workload's spec; `name` may carry a framework suffix."""
    stripped = strip_framework_suffix(name)
    try:
      return self.workloads[stripped]
    except KeyError:
      raise CatalogError(
        f'workload {stripped!r} is not in the {self.benchmark_version} '
        f'catalog {self.path}; known workloads: '
        f'{", ".join(sorted(self.workloads))}'
      ) from None

  def budget_sec(self, name: str, self_tuning: bool) -> float:
    """The runtime budget of a workload under a tuning ruleset."""
    budget = self.workload(name).max_allowed_runtime_sec
    return budget * self.self_tuning_budget_factor if self_tuning else budget


def metric_is_minimized(metric_name: str) -> bool:
  """Direction of a metric, by the official scorer's name lists."""
  name = metric_name.split('/')[-1]
  if name in MINIMIZED_METRICS:
    return True
  if name in MAXIMIZED_METRICS:
    return False
  raise CatalogError(
    f'metric {metric_name!r} has no known direction; known metrics: '
    f'{", ".join(sorted(MINIMIZED_METRICS | MAXIMIZED_METRICS))}'
  )


def strip_framework_suffix(name: str) -> str:
  for suffix in ('_pytorch', '_jax'):
    if name.endswith(suffix):
      return name[: -len(suffix)]
  return name


def _require(raw: dict, key: str, path: str):
  if key not in raw:
    raise CatalogError(f'{path}: missing field {key!r}')
  return raw[key]


def load_catalog_file(path: str) -> Catalog:
  """Loads and validates one catalog JSON file."""
  try:
    with open(path, encoding='utf-8') as f:
      raw = json.load(f)
  except FileNotFoundError:
    raise CatalogError(f'catalog file {path} does not exist') from None
  except json.JSONDecodeError as e:
    raise CatalogError(f'{path}: not valid JSON ({e})') from None

  workloads = {}
  for name, fields in _require(raw, 'workloads', path).items():
    try:
      workloads[name] = WorkloadSpec(
        name=name,
        target_metric_name=fields['target_metric_name'],
        validation_target_value=float(fields['validation_target_value']),
        test_target_value=fields.get('test_target_value'),
        max_allowed_runtime_sec=float(fields['max_allowed_runtime_sec']),
        step_hint=int(fields['step_hint']),
        eval_period_time_sec=float(fields['eval_period_time_sec']),
        base_workload=fields.get('base_workload', name),
      )
    except (KeyError, TypeError, ValueError) as e:
      raise CatalogError(f'{path}: workload {name!r}: bad field {e}') from None

  catalog = Catalog(
    benchmark_version=_require(raw, 'benchmark_version', path),
    path=path,
    num_studies=int(_require(raw, 'num_studies', path)),
    num_trials_external=int(_require(raw, 'num_trials_external', path)),
    self_tuning_budget_factor=float(
      _require(raw, 'self_tuning_budget_factor', path)
    ),
    budget_checked_every_step=bool(raw.get('budget_checked_every_step')),
    runner_hooks=tuple(raw.get('runner_hooks', ())),
    base_workloads=tuple(_require(raw, 'base_workloads', path)),
    held_out_workloads=tuple(_require(raw, 'held_out_workloads', path)),
    workloads=workloads,
  )
  missing = [
    w
    for w in catalog.base_workloads + catalog.held_out_workloads
    if w not in workloads
  ]
  if missing:
    raise CatalogError(
      f'{path}: base or held-out workloads without an entry: {missing}'
    )
  return catalog


def load_catalog(benchmark_version: str) -> Catalog:
  """Loads the catalog of an AlgoPerf version ('v0.5' or 'v0.6')."""
  if benchmark_version not in BENCHMARK_VERSIONS:
    raise CatalogError(
      f'unknown benchmark version {benchmark_version!r}; choose one of '
      f'{", ".join(BENCHMARK_VERSIONS)}'
    )
  return load_catalog_file(
    os.path.join(CATALOG_DIR, f'{benchmark_version}.json')
  )


def all_workload_names() -> frozenset:
  """Every workload name of every catalog (v0.5, v0.6, proxy)."""
  names = set(
    load_catalog_file(os.path.join(CATALOG_DIR, 'proxy.json')).workloads
  )
  for version in BENCHMARK_VERSIONS:
    names |= set(load_catalog(version).workloads)
  return frozenset(names)


def load_proxy_catalog(benchmark_version: str) -> Catalog:
  """The proxy suite under the rules (budget factor, studies) of a version.

  Proxy workloads have their own targets and budgets; the benchmark version
  contributes only its rules, so a proxy table can say which rules it used.
  """
  rules = load_catalog(benchmark_version)
  proxy = load_catalog_file(os.path.join(CATALOG_DIR, 'proxy.json'))
  return dataclasses.replace(
    proxy,
    benchmark_version=f'{benchmark_version} rules, proxy suite',
    self_tuning_budget_factor=rules.self_tuning_budget_factor,
    budget_checked_every_step=rules.budget_checked_every_step,
    runner_hooks=rules.runner_hooks,
    held_out_workloads=(),
  )
