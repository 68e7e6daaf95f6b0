"""Detector noise: electron shot noise and the scintillator–photomultiplier (PMT) Gaussian spread."""

from __future__ import annotations

import numpy as np

from stemquant._validate import as_rng, check_dose, check_image, check_pixel_size
from stemquant.units import counts_per_pixel

from ._checks import check_fraction, check_nonneg_image, check_nonnegative, check_real


def _expected_counts(image, dose, pixel_size) -> np.ndarray:
    """Expected counts from an image in counts (dose None) or normalised intensity with a dose."""
    img = check_image(image)
    dose = check_dose(dose)
    if dose is not None:
        img = counts_per_pixel(img, dose, check_pixel_size(pixel_size))
    elif pixel_size is not None:
        check_pixel_size(pixel_size)
    check_nonneg_image(img)
    return img


def poisson_noise(image, *, dose=None, pixel_size=None, rng=None) -> np.ndarray:
    """Electron shot noise: draw Poisson counts with mean ``λ = intensity · dose · pixel_size²``.

    Implements eq. (2.1)/(2.12) of Friedrich (2023) (eq. 45 of Lobato et al. 2023). The dose scale α of the
    papers is ``dose · pixel_size²`` here, and we do *not* divide by α afterwards: the output is in counts.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
        Normalised intensity (with ``dose``) or expected counts (``dose=None``); must be >= 0.
    dose : float or None
        Electron dose [e⁻/Å²]; None means ``image`` already holds expected counts.
    pixel_size : float or None
        Pixel size [Å]; required when ``dose`` is given.
    rng : int, numpy.random.Generator or None
        Random source.

    Returns
    -------
    ndarray, same shape, float64
        Detected electron counts (integer values).

    Examples
    --------
    >>> float(poisson_noise(np.zeros((3, 3)), rng=0).sum())
    0.0
    """
    if dose is not None and pixel_size is None:
        raise ValueError("pixel_size [Å] is required when dose is given (counts = intensity·dose·pixel_size²)"
                         )
    lam = _expected_counts(image, dose, pixel_size)
    return as_rng(rng).poisson(lam).astype(np.float64)


def pmt_sigma(*, photons=100.0, efficiency=0.25, dynode_gain=4.0, photon_variance=None, gain=1.0) -> float:
    """Standard deviation of the PMT pulse of one detected electron [anode electrons].

    σ = m_c η G sqrt((1 − η + 1/(δ − 1)) / (m_c η) + δ_c² / m_c²).

    Implements eq. (2.11) of Friedrich (2023) (eq. 44 of Lobato et al. 2023). The mean pulse is m_c η G, so
    the spread relative to one electron is ``pmt_sigma(gain=1) / (photons * efficiency)``.

    Parameters
    ----------
    photons : float
        m_c, photons collected at the photocathode per incident electron [photons] (≈100; ~1 per kV).
    efficiency : float
        η, quantum efficiency of the photocathode, in (0, 1] (≈0.25).
    dynode_gain : float
        δ, secondary-emission yield per dynode (> 1; ≈4).
    photon_variance : float or None
        δ_c², variance of the photon number [photons²]; None uses m_c (Poisson photon statistics).
    gain : float
        G, PMT gain [anode electrons per photoelectron] (≈4¹⁰); only scales the result.

    Returns
    -------
    float
        σ [anode electrons].

    Examples
    --------
    >>> round(pmt_sigma() / (100 * 0.25), 3)
    0.231
    """
    m = check_real(photons, "photons", "photons per electron")
    if m <= 0:
        raise ValueError(f"photons must be positive [photons per electron], got {photons}")
    eta = check_fraction(efficiency, "efficiency", allow_zero=False)
    delta = check_real(dynode_gain, "dynode_gain")
    if delta <= 1:
        raise ValueError(f"dynode_gain δ must be > 1 [secondary electrons per dynode], got {dynode_gain}")
    if photon_variance is None:
        var_c = m
    else:
        var_c = check_nonnegative(photon_variance, "photon_variance", "photons²")
    g = check_real(gain, "gain")
    if g <= 0:
        raise ValueError(f"gain must be positive [anode electrons per photoelectron], got {gain}")
    return float(m * eta * g * np.sqrt((1 - eta + 1 / (delta - 1)) / (m * eta) + var_c / m**2))


def pmt_noise(counts, *, photons=100.0, efficiency=0.25, dynode_gain=4.0, photon_variance=None,
              rng=None) -> np.ndarray:
    """Add the photomultiplier spread to detected electron counts: ``k + N(0, σ₁² k)``.

    Implements eq. (2.13) of Friedrich (2023) with σ(x) from eq. (2.11): each of the k electrons of a pixel
    produces an independent Gaussian pulse of relative width σ₁ = σ / (m_c η G), so k electrons give
    σ(k) = sqrt(k)·σ₁ (m_c and δ_c² scale with k, as the thesis requires). The output stays in counts (the
    papers divide by the dose scale α; here α = 1 count). A pixel with k = 0 stays exactly 0, so the
    histogram of a low-dose image shows the evenly spaced single-electron peaks of Fig. 2.3, whose widths
    grow as sqrt(k).

    Parameters
    ----------
    counts : ndarray, shape (H, W) or (B, H, W)
        Detected electrons per pixel (e.g. from ``poisson_noise``), >= 0.
    photons, efficiency, dynode_gain, photon_variance
        PMT parameters m_c, η, δ, δ_c² (see ``pmt_sigma``).
    rng : int, numpy.random.Generator or None
        Random source (one normal number per pixel).

    Returns
    -------
    ndarray, same shape
        PMT signal in units of detected electrons [counts] (continuous; may be slightly negative).
    """
    k = check_image(counts, name="counts")
    check_nonneg_image(k, "counts")
    return _pmt_core(k, _pmt_s1(photons, efficiency, dynode_gain, photon_variance), as_rng(rng))


def _pmt_s1(photons, efficiency, dynode_gain, photon_variance) -> float:
    """σ₁: PMT signal spread of one detected electron in units of counts (eq. 2.11 scaled by m_c·η)."""
    return pmt_sigma(photons=photons, efficiency=efficiency, dynode_gain=dynode_gain,
                     photon_variance=photon_variance) / (photons * efficiency)


def _pmt_core(k: np.ndarray, s1: float, rng: np.random.Generator) -> np.ndarray:
    """Unchecked core of ``pmt_noise``: ``k + N(0, 1)·(σ₁·sqrt(k))`` in float64, with one temporary.

    ``k`` may be the int64 output of the Poisson draw (no float copy needed); the operations are those of
    ``k + noise * (s1 * np.sqrt(k))`` in the same order, so the result is bit-for-bit the same.
    """
    rows = k.reshape(-1, k.shape[-1])
    out = np.empty(rows.shape)
    step = max(1, _CHUNK_PIXELS // rows.shape[1])
    # in chunks of rows (temporaries stay in the cache); consecutive normal draws = one draw of the whole
    for s in range(0, rows.shape[0], step):
        kc = rows[s:s + step]
        noise = rng.standard_normal(kc.shape)
        t = out[s:s + step]
        np.sqrt(kc, out=t, dtype=np.float64)
        t *= s1
        t *= noise
        t += kc
    return out.reshape(k.shape)


_CHUNK_PIXELS = 65536  # pixels per chunk of _pmt_core (~1.5x faster than one pass over a 4-frame block)
