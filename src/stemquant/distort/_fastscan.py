"""Fast-scan distortion: the causal detector ⊗ readout point-spread function along the scan direction."""

from __future__ import annotations

import functools
import numbers

import numpy as np
from scipy import fft as sfft

from stemquant._validate import check_image

from ._checks import check_real

#: Named dwell times [s]: the values used in Lobato et al. (2023, Fig. 7: 0.05 and 0.2 µs), Table 2.2 of
#: Friedrich (2023) (0.5 µs, the manufacturer's recommended minimum) and two slow scans.
DWELL_TIME_PRESETS: dict[str, float] = {
    "0.05us": 0.05e-6,
    "0.2us": 0.2e-6,
    "0.5us": 0.5e-6,
    "1us": 1.0e-6,
    "2us": 2.0e-6,
}

#: Response times [s] of the detector and readout (our choice, not published; see docs/distortions.md).
DETECTOR_TIME = 0.5e-6
READOUT_DECAY = 0.02e-6
READOUT_PERIOD = 0.2e-6
READOUT_PHASE = np.pi / 2


def _positive(value, name: str, unit: str) -> float:
    """Finite and > 0."""
    v = check_real(value, name, unit)
    if v <= 0:
        raise ValueError(f"{name} must be positive [{unit}], got {value}")
    return v


def _edges(length: int) -> tuple[np.ndarray, np.ndarray]:
    """Integration limits of pixel lags s = 0..length-1 over the half-line t >= 0."""
    s = np.arange(length, dtype=np.float64)
    return np.maximum(s - 0.5, 0.0), s + 0.5


def _detector_weights(alpha: float, length: int) -> np.ndarray:
    """Pixel integrals of α / (4π²t² + α²) over each lag pixel (total over t >= 0 is 1/4)."""
    lo, hi = _edges(length)
    return (np.arctan(2 * np.pi * hi / alpha) - np.arctan(2 * np.pi * lo / alpha)) / (2 * np.pi)


def _readout_antiderivative(t, beta, gamma, theta):
    """Antiderivative of exp(−t/β)·sin(2πt/γ + θ)."""
    w = 2 * np.pi / gamma
    ph = w * t + theta
    return -np.exp(-t / beta) * (np.sin(ph) / beta + w * np.cos(ph)) / (1 / beta**2 + w**2)


def _readout_integral(beta: float, gamma: float, theta: float) -> float:
    """∫₀^∞ exp(−t/β)·sin(2πt/γ + θ) dt = β(γ² sin θ + 2πβγ cos θ) / (γ² + 4π²β²)."""
    return float(beta * (gamma**2 * np.sin(theta) + 2 * np.pi * beta * gamma * np.cos(theta))
                 / (gamma**2 + 4 * np.pi**2 * beta**2))


def _readout_weights(beta: float, gamma: float, theta: float, length: int) -> np.ndarray:
    """Pixel integrals of the damped-oscillator readout response."""
    lo, hi = _edges(length)
    return _readout_antiderivative(hi, beta, gamma, theta) - _readout_antiderivative(lo, beta, gamma, theta)


@functools.lru_cache(maxsize=64)
def _cached_psf(alpha: float, beta: float, gamma: float, theta: float, length: int) -> np.ndarray:
    """``fast_scan_psf`` memoised for the pipeline (read-only result)."""
    psf = fast_scan_psf(alpha=alpha, beta=beta, gamma=gamma, theta=theta, length=length)
    psf.setflags(write=False)
    return psf


def fast_scan_params(dwell_time, *, detector_time=DETECTOR_TIME, readout_decay=READOUT_DECAY,
                     readout_period=READOUT_PERIOD, readout_phase=READOUT_PHASE) -> dict[str, float]:
    """Convert response times to the pixel-unit PSF parameters (α, β, γ, θ) of ``fast_scan_psf``.

    A pixel lasts ``dwell_time``, so a response time τ spans τ / dwell_time pixels. The defaults are our
    illustrative response times (the paper fits but does not publish them): at 0.5 µs the detector HWHM is
    α/2π ≈ 0.16 px (mild blur), at 0.05 µs ≈ 1.6 px (strong smearing, cf. Fig. 7 of Lobato et al. 2023).

    Parameters
    ----------
    dwell_time : float
        Pixel dwell time [s].
    detector_time, readout_decay, readout_period : float
        α, β, γ expressed as times [s].
    readout_phase : float
        θ [rad].

    Returns
    -------
    dict
        ``{"alpha": α [px], "beta": β [px], "gamma": γ [px], "theta": θ [rad]}``.

    Examples
    --------
    >>> fast_scan_params(0.5e-6)["alpha"]
    1.0
    """
    t = _positive(dwell_time, "dwell_time", "s")
    return {
        "alpha": _positive(detector_time, "detector_time", "s") / t,
        "beta": _positive(readout_decay, "readout_decay", "s") / t,
        "gamma": _positive(readout_period, "readout_period", "s") / t,
        "theta": check_real(readout_phase, "readout_phase", "rad"),
    }


def fast_scan_psf(*, alpha, beta, gamma, theta, length: int = 64) -> np.ndarray:
    """Causal fast-scan point-spread function along the scan direction, normalised to unit sum.

    psf = psf_detector ⊗ psf_readout with the half-Lorentzian detector response α / (4π²t² + α²) and the
    damped-oscillator readout response exp(−t/β)·sin(2πt/γ + θ), both for lags t >= 0.

    Implements eqs. (47)–(50) of Lobato et al. (2023) (thesis eq. 2.18). Choices (docs/distortions.md):
    (i) the papers write the support as x <= 0 with exp(−x/β), which diverges; we read x as minus the lag, so
    the response decays with the lag t = −x >= 0 and tails trail *in* the scan direction (+x), as the thesis'
    Fig. 2.6 shows; (ii) each tap is the exact integral of the continuous response over its pixel (the
    Lorentzian is much narrower than a pixel at normal dwell times), and the kernel is normalised numerically
    to unit sum over ``length`` taps (eq. 50's constant a does not integrate eq. 49 to 1 as printed).

    Parameters
    ----------
    alpha : float
        Lorentzian parameter α of the detector [px] (HWHM = α / 2π).
    beta : float
        Readout decay length β [px].
    gamma : float
        Readout oscillation period γ [px].
    theta : float
        Readout phase θ [rad]; the readout response must have a positive integral.
    length : int
        Number of taps (lags 0 .. length−1) [px].

    Returns
    -------
    ndarray, shape (length,)
        ``psf[s]`` is the weight of the pixel recorded ``s`` pixels earlier on the same scan line; sums to 1.

    Examples
    --------
    >>> psf = fast_scan_psf(alpha=1.0, beta=0.04, gamma=0.4, theta=1.5708, length=32)
    >>> bool(abs(psf.sum() - 1) < 1e-12 and psf.argmax() == 0)
    True
    """
    alpha = _positive(alpha, "alpha", "px")
    beta = _positive(beta, "beta", "px")
    gamma = _positive(gamma, "gamma", "px")
    theta = check_real(theta, "theta", "rad")
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1:
        raise ValueError(f"length must be a positive integer [px], got {length!r}")
    if _readout_integral(beta, gamma, theta) <= 0:
        raise ValueError(
            f"theta={theta} gives a readout response with non-positive integral for beta={beta} px, "
            f"gamma={gamma} px; choose theta in (0, π/2] or thereabouts"
        )
    det = _detector_weights(alpha, length)
    ro = _readout_weights(beta, gamma, theta, length)
    psf = np.convolve(det, ro)[:length]
    total = psf.sum()
    if total <= 0:
        raise ValueError("the fast-scan PSF has non-positive sum over the retained taps; increase length")
    return psf / total


def apply_fast_scan(image, psf) -> np.ndarray:
    """Convolve every scan line causally with ``psf`` (FFT): ``out[j] = Σ_s psf[s] · image[j − s]``.

    Implements eq. (47) of Lobato et al. (2023) / eq. (2.16) of Friedrich (2023). Pixels before the start of a
    line are taken equal to its first pixel (edge padding), so a constant image is unchanged. The FFT runs in
    float32 for speed (relative error ~1e-7, far below any shot noise); the result is float64.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
        Image, scan direction along the last axis (x).
    psf : ndarray, shape (L,)
        Causal kernel from ``fast_scan_psf``; taps beyond W are dropped.

    Returns
    -------
    ndarray, same shape as ``image``
    """
    img = check_image(image)
    k = np.asarray(psf, dtype=np.float64)
    if k.ndim != 1 or k.size == 0 or not np.all(np.isfinite(k)):
        raise ValueError(f"psf must be a finite 1-D kernel, got shape {k.shape}")
    return _convolve_rows(img, k)


_ROW_CHUNK_BYTES = 256 * 1024  # padded float32 rows per FFT pass: with the spectrum this stays in the L2 cache


def _convolve_rows(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Unchecked core of ``apply_fast_scan``; ``img`` may be float or integer counts (result float64).

    Rows are independent, so they are transformed in chunks of ~256 kB (measured ~2x faster than one FFT
    over a (4, 256, 512) block, which spills out of the cache); the result is the same to the bit.
    """
    w = img.shape[-1]
    k = k[:w]
    pad = k.size - 1
    if pad == 0:
        return img * k[0]
    n = sfft.next_fast_len(w + pad, real=True)
    kspec = _kernel_spectrum(k.tobytes(), n)
    rows = img.reshape(-1, w)
    out = np.empty(rows.shape, dtype=np.float64)
    step = max(1, _ROW_CHUNK_BYTES // (4 * n))
    padded = np.empty((min(step, rows.shape[0]), n), dtype=np.float32)  # float32 FFT: 2x faster, error ~1e-7
    for s in range(0, rows.shape[0], step):
        r = rows[s:s + step]
        buf = padded[:r.shape[0]]
        buf[:, :pad] = r[:, :1]
        buf[:, pad:pad + w] = r
        buf[:, pad + w:] = 0.0
        spec = sfft.rfft(buf, axis=-1)
        spec *= kspec
        out[s:s + step] = sfft.irfft(spec, n, axis=-1)[:, pad:pad + w]
    return out.reshape(img.shape)


@functools.lru_cache(maxsize=64)
def _kernel_spectrum(kernel_bytes: bytes, n: int) -> np.ndarray:
    """float32 rfft of a float64 kernel (given as bytes, so it can be memoised) zero-padded to ``n``."""
    spec = sfft.rfft(np.frombuffer(kernel_bytes, dtype=np.float64).astype(np.float32), n)
    spec.setflags(write=False)
    return spec
