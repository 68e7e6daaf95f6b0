"""Tests for the TEM camera model (eqs. 27–36 of Lobato et al. 2023)."""

import numpy as np
import pytest

from stemquant.distort import (
    apply_mtf,
    dark_current,
    dark_current_noise,
    fixed_pattern_noise,
    flicker_noise,
    reset_noise,
    tem_mtf,
    thermal_noise,
)


def test_mtf_values():
    """MTF(0)=1; at the Nyquist frequency along u the pixel term is sinc(π/2) = 2/π (eq. 28)."""
    a, b, c = 0.5, 0.4, 1.5
    m = tem_mtf((64, 64), a=a, b=b, c=c)
    assert m.shape == (64, 33)
    assert m[0, 0] == pytest.approx(1.0)
    mtf_r = a * np.exp(-1 / (2 * b**2)) + (1 - a) * np.exp(-1 / (2 * c**2))
    assert m[0, 32] == pytest.approx(mtf_r * 2 / np.pi)


def test_mtf_rejects_non_monotone():
    with pytest.raises(ValueError, match="monotonically"):
        tem_mtf((8, 8), a=3.0, b=2.0, c=0.2)
    with pytest.raises(ValueError, match="positive"):
        tem_mtf((8, 8), a=0.5, b=0.0, c=0.2)


def test_apply_mtf_preserves_total_and_blurs(rng):
    img = rng.random((2, 37, 31))
    out = apply_mtf(img, a=0.6, b=0.3, c=1.0)
    assert out.shape == img.shape
    np.testing.assert_allclose(out.sum(axis=(1, 2)), img.sum(axis=(1, 2)), rtol=1e-10)
    assert out.std() < img.std()


def test_fpn_shared_pattern_and_gain_statistics():
    """One gain pattern for the whole stack; gain std ≈ σ (N = 65 536, rel. sd sqrt(1/(2N)), 5 sd)."""
    img = np.ones((3, 256, 256))
    out = fixed_pattern_noise(img, sigma=0.05, rng=1)
    assert np.array_equal(out[0], out[1])
    g = out[0] - 1
    assert abs(g.std() / 0.05 - 1) < 5 / np.sqrt(2 * g.size)
    assert np.array_equal(fixed_pattern_noise(img, sigma=0.0), img)


def test_dark_current_lognormal_moments():
    """Mean μ and sd σ of the log-normal body (N = 262 144; 5 sd of the sample mean; the sd of a
    log-normal sample sd is larger, we allow 5 %, ~10 sd for σ/μ = 0.5)."""
    d = dark_current((512, 512), mean=2.0, std=1.0, rng=2)
    assert abs(d.mean() - 2.0) < 5 * 1.0 / np.sqrt(d.size)
    assert abs(d.std() - 1.0) < 0.05
    assert np.all(d > 0)


def test_dark_current_hot_pixels():
    d = dark_current((256, 256), mean=1.0, std=0.1, hot_fraction=0.01, rng=3)
    hot = d >= 1.5
    assert np.all(d[hot] <= 1.8 + 1e-12)
    assert abs(hot.mean() - 0.01) < 5 * np.sqrt(0.01 * 0.99 / d.size)


def test_dark_current_noise_poisson(rng):
    img = np.zeros((4, 128, 128))
    out = dark_current_noise(img, np.full((128, 128), 3.0), rng=rng)
    n = out.size
    assert abs(out.mean() - 3) < 5 * np.sqrt(3 / n) and abs(out.var() - 3) < 5 * np.sqrt((3 + 18) / n)
    with pytest.raises(ValueError, match="dcnu"):
        dark_current_noise(img, np.ones((4, 4)), rng=0)


def test_thermal_and_reset_noise(rng):
    img = np.zeros((2, 256, 256))
    t = thermal_noise(img, sigma=2.0, rng=rng)
    assert abs(t.std() / 2 - 1) < 5 / np.sqrt(2 * t.size)
    r = reset_noise(img, sigma=1.0, rng=rng)
    assert np.all(r == r[..., :1])  # one offset per row
    assert abs(r[..., 0].std() - 1) < 5 / np.sqrt(2 * 512)


def test_flicker_noise_std_and_spectrum(rng):
    """The field has the requested std and a 1/f amplitude spectrum: mean |F|² in an annulus at f and 2f
    differs by ≈ 4 (we accept 3–5.3; each annulus averages >1000 independent modes)."""
    out = flicker_noise(np.zeros((8, 128, 128)), sigma=1.5, rng=rng)
    np.testing.assert_allclose(out.std(axis=(1, 2)), 1.5, rtol=1e-10)
    p = np.abs(np.fft.fft2(out)) ** 2
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128)))
    low = p[:, (f > 0.08) & (f < 0.1)].mean()
    high = p[:, (f > 0.16) & (f < 0.2)].mean()
    assert 3.0 < low / high < 5.3


def test_tem_bad_input():
    with pytest.raises(ValueError, match="sigma"):
        thermal_noise(np.zeros((4, 4)), sigma=-1.0)
    with pytest.raises(ValueError, match="mean"):
        dark_current((4, 4), mean=0.0, std=1.0)
