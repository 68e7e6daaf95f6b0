"""Detector artefacts shared by STEM and TEM: row lines, black pixels, zingers, upper clip, quantisation."""

from __future__ import annotations

import numpy as np

from stemquant._validate import as_rng, check_image

from ._checks import check_count, check_fraction, check_range, check_real


def _frame_max(img: np.ndarray) -> np.ndarray:
    """Per-frame maximum, broadcastable against ``img``."""
    return img.max(axis=(-2, -1), keepdims=True)


ROW_LINE_FACTORS = (0.5, 1.5)  # range of the row-line intensity factor (Lobato et al. 2023)


def row_line_noise(image, *, count, max_length=0.25, factor_range=ROW_LINE_FACTORS, rng=None) -> np.ndarray:
    """Replace random scan-line segments by their mean times a random factor.

    Implements eq. (51) of Lobato et al. (2023): per frame, ``count`` segments on random rows, of random
    length U{1, …, round(max_length·W)} and random start, are replaced by their mean × U(factor_range).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
    count : int
        Row lines per frame (0 = unchanged copy).
    max_length : float
        Maximum segment length as a fraction of the width, in (0, 1].
    factor_range : tuple of float
        Range of the random intensity factor (paper: [0.5, 1.5]).
    rng : int, numpy.random.Generator or None

    Returns
    -------
    ndarray, same shape
    """
    img = check_image(image).copy()
    count = check_count(count, "count")
    max_length = check_fraction(max_length, "max_length", allow_zero=False)
    lo, hi = check_range(factor_range, "factor_range")
    if count == 0:
        return img
    _row_lines_inplace(img.reshape((-1,) + img.shape[-2:]), count, max_length, (lo, hi), as_rng(rng))
    return img


def _row_lines_inplace(frames: np.ndarray, count: int, max_length: float, factor_range, rng) -> None:
    """Unchecked core of ``row_line_noise`` on a (B, H, W) array, modified in place."""
    b, h, w = frames.shape
    lmax = max(1, int(round(max_length * w)))
    rows = rng.integers(0, h, size=(b, count))
    lengths = rng.integers(1, lmax + 1, size=(b, count))
    starts = rng.integers(0, w - lengths + 1)
    factors = rng.uniform(factor_range[0], factor_range[1], size=(b, count))
    for f in range(b):
        for r, s, n, c in zip(rows[f], starts[f], lengths[f], factors[f], strict=True):
            seg = frames[f, r, s:s + n]
            seg[:] = seg.mean() * c


def random_pixel_mask(shape, *, fraction, rng=None) -> np.ndarray:
    """Boolean mask with ~``fraction`` of the pixels set, uniformly placed (independent per frame).

    The number of set pixels per frame is Binomial(H·W, fraction); positions are uniform (a duplicate
    position is possible and counted once).

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)`` or ``(B, H, W)``.
    fraction : float
        Expected fraction of set pixels, in [0, 1].
    rng : int, numpy.random.Generator or None

    Returns
    -------
    ndarray of bool, shape ``shape``
    """
    fraction = check_fraction(fraction, "fraction")
    shape = tuple(int(s) for s in shape)
    mask = np.zeros(shape, dtype=bool)
    if fraction == 0:
        return mask
    flat = mask.reshape(-1, shape[-2] * shape[-1])
    for f, idx in enumerate(_random_pixel_indices(flat.shape[0], flat.shape[1], fraction, as_rng(rng))):
        flat[f, idx] = True
    return mask


def _random_pixel_indices(frames: int, npix: int, fraction: float, rng) -> list[np.ndarray]:
    """Per frame, the sorted unique flat indices of ``random_pixel_mask`` (same random draws)."""
    ns = rng.binomial(npix, fraction, size=frames)
    return [np.unique(rng.integers(0, npix, size=n)) for n in ns]


def _zingers_inplace(flat: np.ndarray, indices: list[np.ndarray], strength, rng) -> None:
    """Unchecked core of ``zingers`` on (B, H·W) frames with per-frame sorted unique indices, in place.

    Draws the same uniform numbers as ``zingers`` with the equivalent mask (one per set pixel, C order).
    """
    total = sum(idx.size for idx in indices)
    if total == 0:
        return
    fmax = flat.max(axis=1)
    u = rng.uniform(strength[0], strength[1], size=total)
    o = 0
    for f, idx in enumerate(indices):
        flat[f, idx] = u[o:o + idx.size] * fmax[f]
        o += idx.size


def random_walk_mask(shape, *, count, steps, rng=None) -> np.ndarray:
    """Clusters grown by random walks from ``count`` uniform seed pixels (TEM black pixels and zingers).

    Each seed makes ``steps`` unit steps (up/down/left/right with equal probability, clamped to the image);
    every visited pixel is set. Implements the cluster model described with eqs. (37)–(38) of Lobato et al.
    (2023).

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)``.
    count : int
        Number of seed pixels.
    steps : int
        Random-walk steps per seed (0 = isolated pixels).
    rng : int, numpy.random.Generator or None

    Returns
    -------
    ndarray of bool, shape (H, W)
    """
    count = check_count(count, "count")
    steps = check_count(steps, "steps")
    h, w = (int(s) for s in shape[-2:])
    mask = np.zeros((h, w), dtype=bool)
    if count == 0:
        return mask
    rng = as_rng(rng)
    start = np.stack([rng.integers(0, h, size=count), rng.integers(0, w, size=count)], axis=-1)
    moves = np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])
    path = np.concatenate([start[:, None, :], moves[rng.integers(0, 4, size=(count, steps))]], axis=1)
    pos = np.cumsum(path, axis=1)
    # positions that leave the image are clipped to the nearest edge pixel
    pos[..., 0] = np.clip(pos[..., 0], 0, h - 1)
    pos[..., 1] = np.clip(pos[..., 1], 0, w - 1)
    mask[pos[..., 0].ravel(), pos[..., 1].ravel()] = True
    return mask


def black_pixels(image, mask) -> np.ndarray:
    """Set masked pixels to zero: ``x ← x · S_black`` (eqs. 37 and 52 of Lobato et al. 2023).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
    mask : ndarray of bool, broadcastable to ``image``
        True where the detector does not respond.

    Returns
    -------
    ndarray, same shape
    """
    img = check_image(image)
    return np.where(np.asarray(mask, dtype=bool), 0.0, img)


def zingers(image, mask, *, strength=(1.0, 2.0), rng=None) -> np.ndarray:
    """Turn masked pixels into bright zingers of value ``u · max(frame)``, u ~ U(strength).

    Implements eqs. (38) and (53) of Lobato et al. (2023). The paper writes a multiplicative mask x·S, which
    leaves zero-count pixels (most of a low-dose image) dark; we therefore scale the mask by the frame
    maximum, so a zinger is always at least as bright as the brightest real pixel for ``strength >= 1``.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
    mask : ndarray of bool, broadcastable to ``image``
    strength : tuple of float
        Range of u [× frame maximum].
    rng : int, numpy.random.Generator or None
        One uniform number per pixel of ``image`` is drawn when the mask is not empty.

    Returns
    -------
    ndarray, same shape
    """
    img = check_image(image)
    lo, hi = check_range(strength, "strength", "× frame maximum")
    m = np.broadcast_to(np.asarray(mask, dtype=bool), img.shape)
    if not m.any():
        return img.copy()
    out = img.copy()
    u = as_rng(rng).uniform(lo, hi, size=int(m.sum()))
    out[m] = (u * np.broadcast_to(_frame_max(img), img.shape)[m])
    return out


def _clip_threshold(reference: np.ndarray, fraction: float) -> np.ndarray:
    """Per-frame saturation level ``T_u = min + fraction · (max − min)`` of ``reference`` (broadcastable)."""
    lo = reference.min(axis=(-2, -1), keepdims=True)
    return lo + fraction * (_frame_max(reference) - lo)


def upper_clip(image, *, fraction) -> np.ndarray:
    """Saturate at ``T_u = min + fraction · (max − min)`` of each frame: ``x ← min(x, T_u)`` (eqs. 39 and 54).

    The papers give no value for T_u. Because the count scale depends on the dose, T_u is set relative to the
    frame's signal range, as an operator's brightness/contrast setting maps that range onto the ADC: the top
    ``1 − fraction`` of the range saturates. (An earlier version used ``fraction · max``, which flattened the
    *whole* frame whenever the image sits on a pedestal above ``fraction · max`` — a low-contrast clean image
    at high dose; see docs/distortions.md.) With ``fraction < 1`` the pixels at the frame minimum always stay
    below T_u, so a non-constant frame never becomes constant.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
    fraction : float
        Saturation level as a fraction of each frame's range [min, max], in (0, 1]; 1 leaves the image
        unchanged.

    Returns
    -------
    ndarray, same shape

    Examples
    --------
    >>> upper_clip(np.array([[10.0, 12.0, 14.0]] * 2 + [[16.0, 18.0, 20.0]]), fraction=0.5)[:, 2]
    array([14., 14., 15.])
    """
    img = check_image(image)
    fraction = check_fraction(fraction, "fraction", allow_zero=False)
    return np.minimum(img, _clip_threshold(img, fraction))


def quantise(image, *, adc_gain) -> np.ndarray:
    """ADC quantisation ``round(g · x) / g`` (eqs. 40 and 55 of Lobato et al. 2023).

    The papers return ``round(g·x)`` in ADC units; we divide by g again so the image stays in counts
    (nothing rescales detector counts silently). ``adc_gain`` = 1 rounds to whole counts.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
    adc_gain : float
        g, ADC levels per count (> 0).

    Returns
    -------
    ndarray, same shape [counts]

    Examples
    --------
    >>> quantise(np.array([[0.2, 0.3, 1.6]] * 3), adc_gain=2.0)[0]
    array([0. , 0.5, 1.5])
    """
    img = check_image(image)
    g = check_real(adc_gain, "adc_gain", "levels per count")
    if g <= 0:
        raise ValueError(f"adc_gain must be positive [levels per count], got {adc_gain}")
    return _quantise_inplace(np.array(img, dtype=np.float64), g)


def _quantise_inplace(x: np.ndarray, g: float) -> np.ndarray:
    """``round(g·x) / g`` in x's own float buffer (no temporaries); returns x."""
    x *= g
    np.round(x, out=x)
    x /= g
    return x
