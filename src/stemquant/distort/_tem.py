"""TEM camera model: MTF, fixed-pattern noise, dark current, thermal, flicker and reset noise."""

from __future__ import annotations

import numpy as np
from scipy import fft as sfft

from stemquant._validate import as_rng, check_image

from ._checks import check_fraction, check_nonneg_image, check_nonnegative, check_real


def _mtf_r(g, a, b, c):
    """Rotationally symmetric MTF part, eq. (29)."""
    return a * np.exp(-(g**2) / (2 * b**2)) + (1 - a) * np.exp(-(g**2) / (2 * c**2))


def check_mtf_params(a, b, c) -> tuple[float, float, float]:
    """Check (a, b, c) of eq. (29): b, c > 0 and MTF_r positive and non-increasing on [0, 10] Nyquist.

    This is the acceptance test of Lobato et al. (2023): 1000 grid points over 10 Nyquist units.
    """
    a = check_real(a, "mtf a")
    b = check_real(b, "mtf b", "Nyquist units")
    c = check_real(c, "mtf c", "Nyquist units")
    if b <= 0 or c <= 0:
        raise ValueError(f"mtf widths b and c must be positive [Nyquist units], got b={b}, c={c}")
    g = np.linspace(0.0, 10.0, 1000)
    m = _mtf_r(g, a, b, c)
    if np.any(m[:-1] <= 0) or np.any(np.diff(m) > 1e-12):
        raise ValueError(
            f"mtf (a, b, c) = ({a}, {b}, {c}) does not give a positive, monotonically decreasing MTF_r on "
            "[0, 10] Nyquist (eq. 29); use 0 <= a <= 1 or adjust b, c"
        )
    return a, b, c


def tem_mtf(shape, *, a, b, c) -> np.ndarray:
    """Camera MTF on the ``rfft2`` grid: MTF_r(g) · sinc(πu/2) · sinc(πv/2).

    Implements eqs. (28)–(29) of Lobato et al. (2023); (u, v) and g = sqrt(u² + v²) are in units of the
    Nyquist frequency (0.5 cycles/px), so the pixel term is the sinc of a square pixel aperture.

    Parameters
    ----------
    shape : tuple of int
        Image shape ``(H, W)``.
    a : float
        Weight of the first Gaussian.
    b, c : float
        Widths of the two Gaussians [Nyquist units].

    Returns
    -------
    ndarray, shape (H, W // 2 + 1)
        Real MTF sampled at ``fftfreq(H)`` × ``rfftfreq(W)``; MTF(0, 0) = 1.
    """
    a, b, c = check_mtf_params(a, b, c)
    h, w = (int(s) for s in shape[-2:])
    v = 2 * sfft.fftfreq(h)[:, None]
    u = 2 * sfft.rfftfreq(w)[None, :]
    g = np.sqrt(u**2 + v**2)
    return _mtf_r(g, a, b, c) * np.sinc(u / 2) * np.sinc(v / 2)


def apply_mtf(image, *, a, b, c) -> np.ndarray:
    """Convolve with the camera PSF (the inverse FFT of the MTF), periodic boundaries (eq. 27).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
    a, b, c : float
        MTF parameters, see ``tem_mtf``.

    Returns
    -------
    ndarray, same shape; the total intensity is preserved (MTF(0) = 1).
    """
    img = check_image(image)
    mtf = tem_mtf(img.shape, a=a, b=b, c=c)
    return sfft.irfft2(sfft.rfft2(img, axes=(-2, -1)) * mtf, s=img.shape[-2:], axes=(-2, -1))


def fixed_pattern_noise(image, *, sigma, rng=None) -> np.ndarray:
    """Pixel-gain mismatch ``x ← x + x · N(0, σ_fpn)`` (eq. 31 of Lobato et al. 2023).

    The gain pattern is a property of the sensor, so one (H, W) pattern is drawn and shared by all frames of a
    (B, H, W) stack.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
    sigma : float
        σ_fpn, relative gain spread [dimensionless]; 0 = unchanged.
    rng : int, numpy.random.Generator or None

    Returns
    -------
    ndarray, same shape
    """
    img = check_image(image)
    sigma = check_nonnegative(sigma, "sigma")
    if sigma == 0:
        return img.copy()
    gain = as_rng(rng).normal(0.0, sigma, size=img.shape[-2:])
    return img * (1.0 + gain)


def dark_current(shape, *, mean, std, hot_fraction=0.0, rng=None) -> np.ndarray:
    """Dark-current non-uniformity map: log-normal body plus uniform hot pixels (eq. 32).

    The log-normal has the given mean μ and standard deviation σ (of the distribution itself, not of its
    logarithm); a fraction ``hot_fraction`` of pixels is replaced by U(μ + 5σ, μ + 8σ).

    Parameters
    ----------
    shape : tuple of int
        ``(H, W)``.
    mean, std : float
        μ, σ of the dark signal [counts per frame].
    hot_fraction : float
        Fraction of hot pixels, in [0, 1].
    rng : int, numpy.random.Generator or None

    Returns
    -------
    ndarray, shape (H, W) [counts per frame]
    """
    mean = check_nonnegative(mean, "mean", "counts")
    std = check_nonnegative(std, "std", "counts")
    hot_fraction = check_fraction(hot_fraction, "hot_fraction")
    shape = tuple(int(s) for s in shape[-2:])
    if mean == 0:
        if std > 0:
            raise ValueError("mean must be > 0 [counts] when std > 0 (log-normal needs a positive mean)")
        return np.zeros(shape)
    rng = as_rng(rng)
    if std == 0:
        dcnu = np.full(shape, mean)
    else:
        s2 = np.log1p((std / mean) ** 2)
        dcnu = rng.lognormal(np.log(mean) - s2 / 2, np.sqrt(s2), size=shape)
    if hot_fraction > 0:
        hot = rng.random(shape) < hot_fraction
        dcnu[hot] = rng.uniform(mean + 5 * std, mean + 8 * std, size=int(hot.sum()))
    return dcnu


def dark_current_noise(image, dcnu, *, shot_noise=True, rng=None) -> np.ndarray:
    """Add the dark signal with its shot noise: ``x ← x + P(DCNU)`` (eq. 33).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
    dcnu : ndarray, shape (H, W)
        Dark-current map from ``dark_current`` [counts per frame].
    shot_noise : bool
        Draw Poisson dark counts (True, eq. 33) or add the map itself (False).
    rng : int, numpy.random.Generator or None

    Returns
    -------
    ndarray, same shape
    """
    img = check_image(image)
    d = check_image(dcnu, name="dcnu", ndim=(2,))
    check_nonneg_image(d, "dcnu")
    if d.shape != img.shape[-2:]:
        raise ValueError(f"dcnu must have the image's (H, W) = {img.shape[-2:]}, got {d.shape}")
    if not shot_noise:
        return img + d
    return img + as_rng(rng).poisson(np.broadcast_to(d, img.shape))


def thermal_noise(image, *, sigma, rng=None) -> np.ndarray:
    """White read-out noise ``x ← x + N(0, σ)`` (eq. 34). ``sigma`` in counts; 0 = unchanged copy."""
    img = check_image(image)
    sigma = check_nonnegative(sigma, "sigma", "counts")
    if sigma == 0:
        return img.copy()
    return img + as_rng(rng).normal(0.0, sigma, size=img.shape)


def flicker_noise(image, *, sigma, rng=None) -> np.ndarray:
    """1/f read-out noise ``x ← x + F(N(0, σ) / f)`` (eq. 35 of Lobato et al. 2023).

    White Gaussian noise is filtered in Fourier space by 1/|f| (|f| the radial frequency [cycles/px]; the
    f = 0 term is set to 0) and each frame's field is rescaled to standard deviation ``sigma`` (the paper's
    σ is the white-noise level before filtering, which has no fixed meaning after it; we use the std of the
    added field so the strength is in counts).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
    sigma : float
        Standard deviation of the added field [counts]; 0 = unchanged copy.
    rng : int, numpy.random.Generator or None

    Returns
    -------
    ndarray, same shape
    """
    img = check_image(image)
    sigma = check_nonnegative(sigma, "sigma", "counts")
    if sigma == 0:
        return img.copy()
    h, w = img.shape[-2:]
    white = as_rng(rng).standard_normal(img.shape)
    f = np.sqrt(sfft.fftfreq(h)[:, None] ** 2 + sfft.rfftfreq(w)[None, :] ** 2)
    inv = np.zeros_like(f)
    inv[f > 0] = 1.0 / f[f > 0]
    field = sfft.irfft2(sfft.rfft2(white, axes=(-2, -1)) * inv, s=(h, w), axes=(-2, -1))
    field *= sigma / field.std(axis=(-2, -1), keepdims=True)
    return img + field


def reset_noise(image, *, sigma, rng=None) -> np.ndarray:
    """Row (reset) noise: one N(0, σ) offset per row added to the whole row (eq. 36). ``sigma`` in counts."""
    img = check_image(image)
    sigma = check_nonnegative(sigma, "sigma", "counts")
    if sigma == 0:
        return img.copy()
    return img + as_rng(rng).normal(0.0, sigma, size=img.shape[:-1] + (1,))
