"""Handwritten-digits proxy workload (scikit-learn's 8x8 digits, PyTorch)."""

from workloads.digits.workload import DigitsWorkload

__all__ = ['DigitsWorkload']
