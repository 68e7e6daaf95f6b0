"""Private argument checks used only by ``stemquant.distort`` (complements ``stemquant._validate``)."""

from __future__ import annotations

import numbers

import numpy as np


def check_real(value, name: str, unit: str = "") -> float:
    """Return ``value`` as a finite float or raise ``TypeError``/``ValueError``."""
    u = f" [{unit}]" if unit else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{u}, got {value!r}")
    v = float(value)
    if not np.isfinite(v):
        raise ValueError(f"{name} must be finite{u}, got {value}")
    return v


def check_nonnegative(value, name: str, unit: str = "") -> float:
    """Check a finite scalar is >= 0 (0 switches the effect off)."""
    v = check_real(value, name, unit)
    if v < 0:
        u = f" [{unit}]" if unit else ""
        raise ValueError(f"{name} must be >= 0{u} (0 switches the effect off), got {value}")
    return v


def check_phi(value, name: str = "phi") -> float:
    """AR(1) coefficient must satisfy 0 <= phi < 1 for a stationary series."""
    v = check_real(value, name)
    if not 0.0 <= v < 1.0:
        raise ValueError(
            f"{name} must lie in [0, 1) (AR(1) coupling; phi >= 1 is not stationary), got {value}"
        )
    return v


def check_fraction(value, name: str, *, allow_zero: bool = True) -> float:
    """Check 0 <= value <= 1 (or 0 < value <= 1)."""
    v = check_real(value, name)
    lo_ok = v >= 0 if allow_zero else v > 0
    if not (lo_ok and v <= 1):
        rng = "[0, 1]" if allow_zero else "(0, 1]"
        raise ValueError(f"{name} must lie in {rng}, got {value}")
    return v


def check_count(value, name: str) -> int:
    """Check a non-negative integer."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be a non-negative integer, got {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return int(value)


def check_range(value, name: str, unit: str = "", *, lo: float = 0.0) -> tuple[float, float]:
    """Check a (low, high) pair with lo <= low <= high."""
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        u = f" [{unit}]" if unit else ""
        raise TypeError(f"{name} must be a pair (low, high){u}, got {value!r}") from exc
    if not (np.isfinite(a) and np.isfinite(b) and lo <= a <= b):
        raise ValueError(
            f"{name} must be a finite pair with {lo:g} <= low <= high{' [' + unit + ']' if unit else ''}, "
            f"got {value}"
        )
    return a, b


def check_nonneg_image(image, name: str = "image") -> None:
    """Expected counts must be >= 0."""
    if np.any(image < 0):
        raise ValueError(
            f"{name} must be non-negative (expected counts or normalised intensity), "
            f"got minimum {float(image.min()):.4g}; clip or offset the image first"
        )
