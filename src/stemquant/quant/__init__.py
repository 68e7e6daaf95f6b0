"""Quantification (StatSTEM-like): column finding, joint Gaussian fitting, SCS, CRLB, atom counting, metrics.

Positions are (x, y) in Å, SCS in intensity·Å² (docs/conventions.md).
"""

from . import metrics
from ._counting import (
    GMMCountResult,
    count_gmm,
    count_library,
    load_library_csv,
    plot_counting,
    plot_library_counting,
)
from ._crlb import column_crlb
from ._fit import FitResult, fit_columns
from ._peaks import add_columns, find_columns, load_positions, remove_columns, save_positions
from ._plot import plot_fit, save_figure
from .metrics import detection_metrics, surface_columns

__all__ = [
    "FitResult",
    "GMMCountResult",
    "add_columns",
    "column_crlb",
    "count_gmm",
    "count_library",
    "detection_metrics",
    "find_columns",
    "fit_columns",
    "load_library_csv",
    "load_positions",
    "metrics",
    "plot_counting",
    "plot_fit",
    "plot_library_counting",
    "remove_columns",
    "save_figure",
    "save_positions",
    "surface_columns",
]
