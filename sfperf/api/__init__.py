"""The one seam through which submissions and workloads reach the AlgoPerf API.

Order of preference: the official `algoperf` package (v0.6+), then
`algorithmic_efficiency` (v0.5), then the local stand-in in
`sfperf.api.standin`, which restates the documented API. `API_SOURCE` names
the one in use, so that logs and tables can say which API produced them.
"""

import importlib

_CANDIDATES = (
  ('algoperf', 'algoperf.spec', 'v0.6'),
  ('algorithmic_efficiency', 'algorithmic_efficiency.spec', 'v0.5'),
)


def _load_spec():
  for package, module, version in _CANDIDATES:
    try:
      return importlib.import_module(module), package, version
    except ImportError:
      continue
  from sfperf.api import standin

  return standin, 'sfperf.api.standin', 'local'


spec, API_SOURCE, API_VERSION = _load_spec()

__all__ = ['API_SOURCE', 'API_VERSION', 'spec']
