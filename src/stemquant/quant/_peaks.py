"""Atomic-column peak finding and position editing (StatSTEM-style starting coordinates for the fit).

Two routines, after StatSTEM (De Backer et al., Ultramicroscopy 171 (2016) 104,
doi:10.1016/j.ultramic.2016.08.018):

``method="maxima"``
    Gaussian smoothing (σ = ``smoothing`` [Å]), normalisation to [0, 1], local maxima above ``threshold``
    separated by at least ``min_distance`` [Å] (``skimage.feature.peak_local_max``).
``method="anscombe"``
    Anscombe variance stabilisation ``2 sqrt(x + 3/8)`` (Poisson counts -> unit variance), adaptive Wiener
    filter (``scipy.signal.wiener``'s formula with reflecting borders, window ≈ 2·smoothing), 3×3 median
    filter, white top-hat with a disk of radius ``min_distance`` (removes background varying more slowly than
    the columns), normalisation, local maxima.

Both then refine each maximum to sub-pixel precision by an iterated, Gaussian-windowed centroid on the
filtered image (window σ = min_distance/4, local minimum subtracted); a maximum whose centroid leaves the image
(a rising edge, not a column inside the image) is dropped. ``refine=False`` returns the pixel centres, as
StatSTEM's first routine does. Positions follow docs/conventions.md: pixel (i, j) centre is
((j+0.5)p, (i+0.5)p).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.ndimage as ndi
from scipy.spatial import cKDTree
from skimage.feature import peak_local_max
from skimage.morphology import disk, white_tophat

from stemquant._validate import check_image, check_pixel_size, check_positive, check_probability, outside_image

__all__ = ["find_columns", "add_columns", "remove_columns", "load_positions", "save_positions"]

_METHODS = ("maxima", "anscombe")
_REFINE_MAX_ITER = 200
_REFINE_TOL = 1e-4  # [pixel]


def find_columns(
    image,
    pixel_size: float,
    *,
    min_distance: float = 1.0,
    threshold: float = 0.1,
    smoothing: float = 0.3,
    method: str = "maxima",
    refine: bool = True,
) -> np.ndarray:
    """Find atomic-column positions as local maxima of a filtered image.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        HAADF image (counts or normalised intensity; ``method="anscombe"`` needs counts ≥ -3/8).
    pixel_size : float
        Pixel size [Å].
    min_distance : float, optional
        Minimum distance between two columns [Å] (rounded to whole pixels, at least 1). Also sets the top-hat
        disk radius (``"anscombe"``) and the centroid window (σ = min_distance/4). Default 1.0 Å.
    threshold : float, optional
        Minimum peak height in [0, 1] of the filtered image normalised to its own range
        ``(f - min f) / (max f - min f)``, as StatSTEM's normalised threshold. Default 0.1.
    smoothing : float, optional
        ``"maxima"``: σ of the Gaussian pre-filter [Å]; ``"anscombe"``: half-width of the Wiener window [Å]
        (window = 2·round(smoothing/p)+1 pixels, at least 3). 0 disables the Gaussian filter. Default 0.3 Å.
    method : {"maxima", "anscombe"}, optional
        Routine (see module docstring). Default "maxima".
    refine : bool, optional
        Sub-pixel refinement by a windowed centroid (default True). Refined positions closer than
        max(min_distance / 2, one pixel) ran onto one column: only the stronger maximum is kept.

    Returns
    -------
    positions : ndarray, shape (N, 2)
        Column positions (x, y) [Å], in raster order of their pixel (row by row). N may be 0.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:40, 0:40] * 0.2 + 0.1
    >>> img = np.exp(-((xx - 4.0) ** 2 + (yy - 3.0) ** 2) / (2 * 0.4**2))
    >>> np.round(find_columns(img, 0.2), 2)
    array([[4., 3.]])
    """
    image = check_image(image, ndim=(2,))
    p = check_pixel_size(pixel_size)
    min_distance = check_positive(min_distance, "min_distance", "Å")
    threshold = check_probability(threshold, "threshold")
    smoothing = _check_nonnegative(smoothing, "smoothing", "Å")
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    md_px = max(1, int(round(min_distance / p)))
    if method == "maxima":
        filtered = _smooth(image, smoothing / p)
    else:
        filtered = _anscombe_filter(image, smoothing / p, md_px)
    peaks = _local_maxima(filtered, md_px, threshold)
    if len(peaks) == 0:
        return np.zeros((0, 2))
    ij = peaks.astype(np.float64)
    if refine:
        ij = _refine_centroid(filtered, peaks, max(min_distance / p / 4.0, 0.5))
        # two maxima whose centroids ran onto one column (a noisy or strongly filtered peak): keep the stronger
        ij = ij[_merge_close(ij, filtered[peaks[:, 0], peaks[:, 1]], max(min_distance / p / 2.0, 1.0))]
    pos = np.column_stack([(ij[:, 1] + 0.5) * p, (ij[:, 0] + 0.5) * p])
    # a maximum whose centroid runs out of the image sits on a rising edge (intensity beyond the border), not on a
    # column inside it: fitting such a start ends outside the image and pulls on its neighbours
    return pos[~outside_image(pos, filtered.shape, p)]


def _check_nonnegative(value, name: str, unit: str) -> float:
    """Scalar ≥ 0 and finite."""
    if isinstance(value, bool) or not np.isscalar(value) or not np.isfinite(float(value)) or float(value) < 0:
        raise ValueError(f"{name} must be a finite number ≥ 0 [{unit}], got {value!r}")
    return float(value)


def _smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian filter with σ in pixels (identity for σ = 0)."""
    if sigma_px <= 0:
        return image.copy()
    return ndi.gaussian_filter(image, sigma_px, mode="nearest")


def _anscombe_filter(image: np.ndarray, smoothing_px: float, md_px: int) -> np.ndarray:
    """Anscombe -> adaptive Wiener -> 3×3 median -> white top-hat (StatSTEM's second routine)."""
    if image.min() < -0.375:
        raise ValueError(
            "method='anscombe' needs counts ≥ -3/8 (Anscombe transform 2·sqrt(x + 3/8)); the image minimum "
            f"is {image.min():.4g}. Use method='maxima' for background-subtracted or normalised images"
        )
    stabilised = 2.0 * np.sqrt(image + 0.375)
    size = 2 * max(1, int(round(smoothing_px))) + 1
    denoised = _wiener(stabilised, size)
    denoised = ndi.median_filter(denoised, size=3, mode="nearest")
    return white_tophat(denoised, footprint=disk(md_px))


def _wiener(image: np.ndarray, size: int) -> np.ndarray:
    """Adaptive (Lee) Wiener filter, the formula of ``scipy.signal.wiener`` with reflecting borders.

    ``scipy.signal.wiener`` pads with zeros, which darkens a band of ``size // 2`` pixels along the border
    and creates spurious maxima there (e.g. at the corners of a flat image), so the local moments are computed
    here with ``scipy.ndimage.uniform_filter(mode="reflect")``. The noise power is the mean local variance,
    as in scipy.
    """
    mean = ndi.uniform_filter(image, size, mode="reflect")
    var = np.maximum(ndi.uniform_filter(image * image, size, mode="reflect") - mean * mean, 0.0)
    noise = float(var.mean())
    if noise <= 0:  # flat image
        return image.copy()
    gain = np.where(var > noise, 1.0 - noise / np.maximum(var, noise), 0.0)
    return mean + gain * (image - mean)


def _local_maxima(filtered: np.ndarray, md_px: int, threshold: float) -> np.ndarray:
    """Pixel indices (i, j) of maxima above ``threshold`` of the range-normalised image, raster-ordered."""
    lo, hi = float(filtered.min()), float(filtered.max())
    if hi - lo <= 0:
        return np.zeros((0, 2), dtype=int)
    norm = (filtered - lo) / (hi - lo)
    peaks = peak_local_max(norm, min_distance=md_px, threshold_abs=threshold, exclude_border=False)
    order = np.lexsort((peaks[:, 1], peaks[:, 0]))
    return peaks[order]


def _merge_close(ij: np.ndarray, strength: np.ndarray, radius_px: float) -> np.ndarray:
    """Sorted indices of the positions to keep: strongest first, dropping any within ``radius_px`` of a kept one."""
    from scipy.spatial import cKDTree

    pairs = cKDTree(ij).query_pairs(radius_px, output_type="ndarray")
    if len(pairs) == 0:
        return np.arange(len(ij))
    keep = np.ones(len(ij), dtype=bool)
    rank = np.argsort(np.argsort(-strength, kind="stable"))  # 0 = strongest
    # visit pairs from the strongest partner down, so a dropped position never removes another
    for i, j in sorted(map(tuple, pairs), key=lambda ab: min(rank[ab[0]], rank[ab[1]])):
        if keep[i] and keep[j]:
            keep[j if rank[j] > rank[i] else i] = False
    return np.flatnonzero(keep)


def _refine_centroid(filtered: np.ndarray, peaks: np.ndarray, window_sigma_px: float) -> np.ndarray:
    """Iterated Gaussian-windowed centroid around each peak (fractional pixel indices (i, j))."""
    half = int(np.ceil(4 * window_sigma_px)) + 1
    padded = np.pad(filtered, half, mode="edge")
    offs = np.arange(-half, half + 1)
    di, dj = np.meshgrid(offs, offs, indexing="ij")
    # patches[n] = filtered[i-half:i+half+1, j-half:j+half+1] for peak n
    rows = peaks[:, 0, None, None] + half + di[None]
    cols = peaks[:, 1, None, None] + half + dj[None]
    patches = padded[rows, cols]
    signal = np.clip(patches - patches.min(axis=(1, 2), keepdims=True), 0.0, None)
    centre = np.zeros((len(peaks), 2))  # offset of the estimate from the peak pixel
    for _ in range(_REFINE_MAX_ITER):
        d2 = (di[None] - centre[:, 0, None, None]) ** 2 + (dj[None] - centre[:, 1, None, None]) ** 2
        w = signal * np.exp(-d2 / (2 * window_sigma_px**2))
        total = w.sum(axis=(1, 2))
        ok = total > 0
        new = np.zeros_like(centre)
        new[ok, 0] = (w[ok] * di[None]).sum(axis=(1, 2)) / total[ok]
        new[ok, 1] = (w[ok] * dj[None]).sum(axis=(1, 2)) / total[ok]
        new = np.clip(new, -half, half)
        converged = np.max(np.abs(new - centre)) < _REFINE_TOL
        centre = new
        if converged:
            break
    return peaks + centre


# ------------------------------------------------------------------------------------------ editing positions
def _as_positions(positions, name: str) -> np.ndarray:
    """(N, 2) finite float array (N may be 0)."""
    pos = np.asarray(positions, dtype=np.float64)
    if pos.ndim == 1 and pos.size == 2:
        pos = pos[None, :]
    if pos.size == 0:
        return np.zeros((0, 2))
    if pos.ndim != 2 or pos.shape[1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) with columns (x, y) [Å], got shape {pos.shape}")
    if not np.all(np.isfinite(pos)):
        raise ValueError(f"{name} contains NaN/Inf coordinates [Å]; drop or fix them first")
    return pos


def add_columns(positions, new) -> np.ndarray:
    """Append columns to a position list.

    Parameters
    ----------
    positions : array_like, shape (N, 2)
        Existing positions (x, y) [Å]; may be empty.
    new : array_like, shape (M, 2) or (2,)
        Positions (x, y) [Å] to add.

    Returns
    -------
    positions : ndarray, shape (N + M, 2)
        A new array: the old positions followed by the new ones.
    """
    return np.vstack([_as_positions(positions, "positions"), _as_positions(new, "new")])


def remove_columns(positions, near, *, radius: float = 0.5) -> np.ndarray:
    """Remove every column within ``radius`` of any point in ``near``.

    Parameters
    ----------
    positions : array_like, shape (N, 2)
        Positions (x, y) [Å].
    near : array_like, shape (M, 2) or (2,)
        Points (x, y) [Å], e.g. clicked locations of spurious columns.
    radius : float, optional
        Removal radius [Å] (inclusive). Default 0.5 Å.

    Returns
    -------
    positions : ndarray, shape (N', 2)
        The remaining positions in their original order.
    """
    pos = _as_positions(positions, "positions")
    pts = _as_positions(near, "near")
    radius = check_positive(radius, "radius", "Å")
    if len(pos) == 0 or len(pts) == 0:
        return pos.copy()
    dist, _ = cKDTree(pts).query(pos)
    return pos[dist > radius]


def load_positions(path, *, with_types: bool = False):
    """Read column positions from a CSV with columns ``x`` and ``y`` [Å] (other columns are ignored).

    With ``with_types=True`` also the optional ``type`` column (non-negative integer column types, the
    ``types`` of :func:`stemquant.quant.fit_columns`; None when the CSV has none).

    Returns
    -------
    positions : ndarray, shape (N, 2)
        (x, y) [Å].
    types : ndarray of int, shape (N,), or None
        Only with ``with_types=True``.
    """
    try:
        df = pd.read_csv(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"positions file {str(path)!r} does not exist") from None
    except Exception as exc:
        raise ValueError(f"could not read positions CSV {str(path)!r}: {exc}") from exc
    cols = {c.strip().lower(): c for c in df.columns}
    if "x" not in cols or "y" not in cols:
        raise ValueError(
            f"positions CSV {str(path)!r} must have columns 'x' and 'y' [Å]; found {list(df.columns)}"
        )
    try:
        xy = df[[cols["x"], cols["y"]]].to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"positions CSV {str(path)!r}: x/y are not numeric ({exc})") from exc
    positions = _as_positions(xy, f"positions in {path}")
    if not with_types:
        return positions
    if "type" not in cols:
        return positions, None
    t = pd.to_numeric(df[cols["type"]], errors="coerce").to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(t)) or np.any(t < 0) or np.any(t != np.round(t)):
        raise ValueError(f"the 'type' column of {path} must hold non-negative integers (column types)")
    return positions, t.astype(np.int64)


def save_positions(path, positions, *, overwrite: bool = False):
    """Write positions (x, y) [Å] to a CSV with columns ``x``, ``y`` atomically (see ``stemquant.io``).

    Returns
    -------
    path : Path
        The written file.
    """
    from stemquant.io import write_csv_atomic

    pos = _as_positions(positions, "positions")
    return write_csv_atomic(pd.DataFrame({"x": pos[:, 0], "y": pos[:, 1]}), path, overwrite=overwrite)
