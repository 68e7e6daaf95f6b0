"""Intensity post-processing of an undistorted image: eqs. (23)-(26) of Lobato et al."""

from __future__ import annotations

import numpy as np

from stemquant._validate import as_rng, check_image

P_INVERT = 0.5
P_NONLINEAR = 0.5
BETA_RANGE = (0.5, 1.5)
RATIO_RANGE = (0.01, 0.35)  # allowed Std{y} / E{y}
GAUSS_SIGMA = (0.2, 0.6)  # background Gaussian std, fraction of min(H, W)


def _background(shape, peak: float, rng: np.random.Generator) -> np.ndarray:
    """Random positive 3-D plane with height in [0, peak/2], or a Gaussian (p = 0.5 each)."""
    h, w = shape
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    height = rng.uniform(0.0, 0.5 * peak)
    if rng.random() < 0.5:
        phi = rng.uniform(0, 2 * np.pi)
        s = x * np.cos(phi) + y * np.sin(phi)
        s = (s - s.min()) / max(np.ptp(s), 1e-12)
        return height * (rng.uniform(0.0, 1.0) + s)  # positive plane rising by ``height`` across the image
    cx, cy = rng.uniform(0, w), rng.uniform(0, h)
    sig = rng.uniform(*GAUSS_SIGMA) * min(h, w)
    return height * np.exp(-((x - cx) ** 2 + (y - cy) ** 2) / (2 * sig**2))


def _fix_ratio(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Eq. (25): if Std/Mean lies outside [0.01, 0.35], shift y so that it equals a U[0.01, 0.35] target."""
    mean, std = y.mean(), y.std()
    if std <= 0:
        raise ValueError("image is constant: the std/mean constraint of eq. (25) cannot be met")
    r = std / mean if mean > 0 else np.inf
    if RATIO_RANGE[0] <= r <= RATIO_RANGE[1]:
        return y
    target = rng.uniform(*RATIO_RANGE)
    d = std / target - mean  # y + d has Std/Mean = target (c = 1)
    if d < -y.min():  # would go negative: take the smallest ratio reachable with a non-negative image
        d = -y.min()
        if std / (mean + d) > RATIO_RANGE[1]:
            raise ValueError("the std/mean constraint of eq. (25) cannot be met by a non-negative image")
    return y + d


def postprocess(image, *, rng=None) -> np.ndarray:
    """Contrast inversion, non-linearity, background, std/mean constraint and normalisation.

    Parameters
    ----------
    image : ndarray, shape (H, W)
        Non-negative undistorted image (e.g. from :func:`render_specimen`).
    rng : int or numpy.random.Generator, optional

    Returns
    -------
    ndarray, shape (H, W), float64
        Non-negative image with max 1 and Std/Mean in [0.01, 0.35].

    Notes
    -----
    Implements eqs. (23)-(26) of Lobato et al., in this order: inversion y <- max(y) - y (p = 0.5), power law
    y <- |y|^beta with beta ~ U[0.5, 1.5] (p = 0.5), an added background (always: a positive plane with height
    in [0, max(y)/2], or a Gaussian with std in [0.2, 0.6] min(H, W) and height in [0, max(y)/2], p = 0.5
    each), eq. (25) with c = 1 and d chosen so that Std/Mean equals a U[0.01, 0.35] target when it was out of
    range (d is bounded below so that the image stays non-negative), and eq. (26) y <- y / max(y). Raises
    ValueError when the constraint cannot be met (constant image); :func:`random_clean_image` then redraws.
    """
    rng = as_rng(rng)
    y = check_image(image, ndim=(2,), min_size=1).copy()
    if y.min() < 0:
        raise ValueError(f"image must be non-negative [intensity], got min {y.min():.3g}; clip it first")
    if rng.random() < P_INVERT:
        y = y.max() - y  # eq. (23)
    if rng.random() < P_NONLINEAR:
        y = np.abs(y) ** rng.uniform(*BETA_RANGE)  # eq. (24)
    y = y + _background(y.shape, y.max(), rng)
    y = _fix_ratio(y, rng)  # eq. (25)
    return y / y.max()  # eq. (26)
