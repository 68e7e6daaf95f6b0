"""Tests for the fast-scan PSF (eqs. 47–50 of Lobato et al. 2023) and its causal application."""

import numpy as np
import pytest
from scipy import integrate

from stemquant.distort import DWELL_TIME_PRESETS, apply_fast_scan, fast_scan_params, fast_scan_psf
from stemquant.distort._fastscan import _detector_weights, _readout_integral, _readout_weights


def _params():
    return fast_scan_params(0.2e-6)


def test_psf_unit_sum_and_shape():
    for dwell in DWELL_TIME_PRESETS.values():
        psf = fast_scan_psf(**fast_scan_params(dwell), length=64)
        assert psf.shape == (64,)
        assert psf.sum() == pytest.approx(1.0, abs=1e-12)


def test_half_lorentzian_pixel_integrals_match_quad():
    """Independent check: pixel integrals of α/(4π²t²+α²) vs scipy quad, and total → 1/4 (analytic)."""
    alpha = 2.5
    w = _detector_weights(alpha, 6)
    f = lambda t: alpha / (4 * np.pi**2 * t**2 + alpha**2)  # noqa: E731
    ref = [integrate.quad(f, max(s - 0.5, 0), s + 0.5)[0] for s in range(6)]
    np.testing.assert_allclose(w, ref, rtol=1e-10)
    length = 100_000
    tail = (np.pi / 2 - np.arctan(2 * np.pi * (length - 0.5) / alpha)) / (2 * np.pi)
    assert _detector_weights(alpha, length).sum() == pytest.approx(0.25 - tail, rel=1e-10)


def test_readout_integral_matches_quad():
    """∫₀^∞ e^{−t/β} sin(2πt/γ + θ) dt: closed form vs quad; pixel sums converge to it."""
    beta, gamma, theta = 1.7, 3.1, 0.9
    ref = integrate.quad(lambda t: np.exp(-t / beta) * np.sin(2 * np.pi * t / gamma + theta), 0, 200,
                         limit=400)[0]
    assert _readout_integral(beta, gamma, theta) == pytest.approx(ref, rel=1e-8)
    assert _readout_weights(beta, gamma, theta, 400).sum() == pytest.approx(ref, rel=1e-8)


def test_psf_is_causal_impulse_response():
    """A single bright pixel smears only to the right (the scan direction), and total counts are kept."""
    psf = fast_scan_psf(**_params(), length=64)
    img = np.zeros((3, 64))
    img[1, 10] = 100.0
    out = apply_fast_scan(img, psf)
    assert np.allclose(out[1, :10], 0, atol=1e-4)
    np.testing.assert_allclose(out[1, 10:], 100 * psf[:54], atol=1e-4)
    assert np.allclose(out[[0, 2]], 0, atol=1e-6)


def test_apply_matches_direct_convolution(rng):
    """FFT path vs a direct causal sum with edge padding (independent implementation)."""
    img = rng.random((2, 37, 31)) * 50
    psf = fast_scan_psf(**_params(), length=31)
    ref = np.zeros_like(img)
    for s in range(31):
        ref[..., s:] += psf[s] * img[..., : 31 - s]
        ref[..., :s] += psf[s] * img[..., :1]
    np.testing.assert_allclose(apply_fast_scan(img, psf), ref, atol=1e-4)


def test_constant_image_unchanged():
    img = np.full((5, 40), 7.0)
    np.testing.assert_allclose(apply_fast_scan(img, fast_scan_psf(**_params(), length=40)), img, rtol=1e-6)


def test_shorter_dwell_blurs_more():
    """The centroid lag of the PSF grows as the dwell time shrinks."""
    lags = [np.sum(np.arange(128) * fast_scan_psf(**fast_scan_params(t), length=128)) for t in (2e-6, 0.5e-6,
                                                                                              0.05e-6)]
    assert lags[0] < lags[1] < lags[2]


def test_bad_input():
    with pytest.raises(ValueError, match="alpha"):
        fast_scan_psf(alpha=0.0, beta=1, gamma=1, theta=1)
    with pytest.raises(ValueError, match="theta"):
        fast_scan_psf(alpha=1.0, beta=1.0, gamma=100.0, theta=-1.5)
    with pytest.raises(ValueError, match="dwell_time"):
        fast_scan_params(-1e-6)
    with pytest.raises(ValueError, match="psf"):
        apply_fast_scan(np.ones((4, 4)), np.ones((2, 2)))
