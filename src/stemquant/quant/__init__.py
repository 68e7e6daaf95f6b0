"""Quantification (StatSTEM-like): column finding, joint Gaussian fitting, SCS, CRLB, atom counting, metrics.

Positions are (x, y) in Å, SCS in intensity·Å² (docs/conventions.md).
"""

from ._crlb import column_crlb
from ._fit import FitResult, fit_columns

__all__ = ["FitResult", "column_crlb", "fit_columns"]
