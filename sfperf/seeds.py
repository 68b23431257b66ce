"""Deterministic seeds for planned runs (DESIGN.md decision 4).

A seed is a stable hash of the run's coordinates, never Python's salted
`hash()`, so the same plan gives the same seeds on every machine.
"""

import hashlib


def derive_seed(*parts: object, bits: int = 31) -> int:
  """A non-negative integer seed from e.g. (submission, workload, study)."""
  text = '\x1f'.join(str(part) for part in parts)
  digest = hashlib.sha256(text.encode('utf-8')).digest()
  return int.from_bytes(digest[:8], 'big') % (1 << bits)
