"""Argument checks shared by every subpackage.

Each helper raises ``ValueError`` (wrong value) or ``TypeError`` (wrong type) with a message that names the
parameter, the value, the unit and the fix. Functions validate at the top and then trust their data.
"""

from __future__ import annotations

import numbers

import numpy as np


def as_rng(rng: int | np.random.Generator | None) -> np.random.Generator:
    """Return a ``numpy.random.Generator`` from an int seed, a Generator or None."""
    if isinstance(rng, np.random.Generator):
        return rng
    if rng is None or isinstance(rng, numbers.Integral | np.random.SeedSequence):
        return np.random.default_rng(rng)
    raise TypeError(f"rng must be an int, a numpy.random.Generator or None, got {type(rng).__name__}")


def check_image(image, *, name: str = "image", ndim: tuple[int, ...] = (2, 3), min_size: int = 3) -> np.ndarray:
    """Return ``image`` as a float64 array after checking dimensionality, size and finiteness.

    Integer images (e.g. uint16 detector counts) are converted without overflow.
    """
    try:
        arr = np.asarray(image)
    except Exception as exc:  # pragma: no cover - exotic objects
        raise TypeError(f"{name} must be array-like, got {type(image).__name__}") from exc
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if np.iscomplexobj(arr):
        raise TypeError(f"{name} must be real-valued, got dtype {arr.dtype}")
    if arr.ndim not in ndim:
        shapes = " or ".join({2: "(H, W)", 3: "(B, H, W)"}.get(d, f"{d}-D") for d in ndim)
        raise ValueError(f"{name} must have shape {shapes}, got shape {arr.shape}")
    if arr.ndim == 3 and arr.shape[0] == 0:
        raise ValueError(f"{name} is an empty stack (0 frames), shape {arr.shape}")
    if min(arr.shape[-2:]) < min_size:
        raise ValueError(f"{name} must be at least {min_size}x{min_size} pixels, got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))
        raise ValueError(
            f"{name} contains {len(bad)} NaN/Inf pixel(s), first at index {tuple(int(v) for v in bad[0])}; "
            "mask or inpaint them before analysis"
        )
    return arr


def check_positive(value, name: str, unit: str = "", *, allow_none: bool = False) -> float | None:
    """Check that a scalar is finite and > 0 and return it as float."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number{f' [{unit}]' if unit else ''}, got {value!r}")
    v = float(value)
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be positive and finite{f' [{unit}]' if unit else ''}, got {value}")
    return v


def check_pixel_size(pixel_size) -> float:
    """Pixel size must be a positive, finite number in Å."""
    return check_positive(pixel_size, "pixel_size", "Å")


def check_dose(dose, *, allow_none: bool = True) -> float | None:
    """Dose must be None (image in counts) or a positive, finite number in e⁻/Å²."""
    return check_positive(dose, "dose", "e⁻/Å²", allow_none=allow_none)


def check_probability(value, name: str) -> float:
    """Check 0 <= value <= 1."""
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return v


def outside_image(positions: np.ndarray, shape: tuple[int, int], pixel_size: float) -> np.ndarray:
    """Which (x, y) positions [Å], shape (..., 2), lie outside ``x in [0, W*p)``, ``y in [0, H*p)``."""
    x, y = positions[..., 0], positions[..., 1]
    return (x < 0) | (x >= shape[1] * pixel_size) | (y < 0) | (y >= shape[0] * pixel_size)


def check_positions(positions, shape: tuple[int, int], pixel_size: float, *, name: str = "positions",
                    batch: int | None = None) -> np.ndarray:
    """Check column positions ``(N, 2)`` or ``(B, N, 2)`` in Å as (x, y) lie inside an image of ``shape``.

    Returns a float64 array. The image covers ``x in [0, W*p)``, ``y in [0, H*p)`` (docs/conventions.md).
    """
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim not in (2, 3) or pos.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) or (B, N, 2) with columns (x, y) [Å], got {pos.shape}")
    if pos.shape[-2] == 0:
        raise ValueError(f"{name} is empty: give at least one column position")
    if pos.ndim == 3 and batch is not None and pos.shape[0] != batch:
        raise ValueError(f"{name} has {pos.shape[0]} frames but the image stack has {batch}")
    if not np.all(np.isfinite(pos)):
        raise ValueError(f"{name} contains NaN/Inf coordinates")
    h, w = shape
    x, y = pos[..., 0], pos[..., 1]
    outside = outside_image(pos, shape, pixel_size)
    if np.any(outside):
        idx = np.argwhere(outside)[0]
        where = ", ".join(str(int(i)) for i in idx)
        raise ValueError(
            f"{int(outside.sum())} of the {outside.size} {name} lie outside the image (x in [0, {w * pixel_size:g}) Å, "
            f"y in [0, {h * pixel_size:g}) Å); the first, {name}[{where}], is at "
            f"(x, y) = ({x[tuple(idx)]:.3g}, {y[tuple(idx)]:.3g}) Å — check pixel_size and the (x, y) order"
        )
    return pos
