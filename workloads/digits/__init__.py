"""Handwritten-digits proxy workload (scikit-learn's 8x8 digits, PyTorch).

The JAX version is `workloads.digits.workload_jax.DigitsJaxWorkload`,
imported only by JAX runs so that this package does not import jax.
"""

from workloads.digits.workload import DigitsWorkload

__all__ = ['DigitsWorkload']
