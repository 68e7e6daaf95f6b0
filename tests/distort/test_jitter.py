"""Tests for the AR(1) scan jitter (eq. 41 of Lobato et al. 2023) and its application (eq. 42)."""

import numpy as np
import pytest
from scipy import ndimage

from stemquant.distort import apply_jitter, ar1_jitter, jitter_displacement


def test_ar1_smoke_shape():
    d = ar1_jitter(37, phi=0.3, sigma=0.5, size=(4,), rng=0)
    assert d.shape == (4, 37)
    assert ar1_jitter(5, phi=0.3, sigma=0.5, rng=0).shape == (5,)
    assert np.all(np.isfinite(d))


def test_ar1_zero_sigma_is_zero():
    assert np.array_equal(ar1_jitter(8, phi=0.6, sigma=0.0, size=3, rng=0), np.zeros((3, 8)))


@pytest.mark.parametrize("phi", [1.0, 1.5, -0.1])
def test_ar1_bad_phi(phi):
    with pytest.raises(ValueError, match="phi"):
        ar1_jitter(10, phi=phi, sigma=0.5, rng=0)


def test_ar1_bad_sigma_and_n():
    with pytest.raises(ValueError, match="sigma"):
        ar1_jitter(10, phi=0.5, sigma=-1.0, rng=0)
    with pytest.raises(ValueError, match="n must be"):
        ar1_jitter(0, phi=0.5, sigma=1.0, rng=0)


def test_ar1_determinism():
    a = ar1_jitter(64, phi=0.5, sigma=1.0, size=(3,), rng=5)
    b = ar1_jitter(64, phi=0.5, sigma=1.0, size=(3,), rng=5)
    c = ar1_jitter(64, phi=0.5, sigma=1.0, size=(3,), rng=6)
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)


@pytest.mark.parametrize("phi, sigma", [(0.5, 0.5), (0.0, 0.25), (0.7, 0.8)])
def test_ar1_lag1_autocorrelation_and_stationary_variance(phi, sigma):
    """Pooled lag-1 autocorrelation ≈ φ and variance ≈ σ²/(1 − φ²) (known zero mean).

    N = 400 × 256 samples. Bartlett: sd(r1) ≈ sqrt((1 − φ²)/N) ≈ 0.003; sd of the sample variance of a
    Gaussian AR(1) ≈ γ0·sqrt(2(1 + φ²)/((1 − φ²) N)) ≈ 0.6 % of γ0. We allow 5 sd (false-failure rate
    ~1e-6 each).
    """
    x = ar1_jitter(256, phi=phi, sigma=sigma, size=(400,), rng=np.random.default_rng(11))
    n = x.size
    r1 = np.sum(x[:, :-1] * x[:, 1:]) / np.sum(x[:, :-1] ** 2)
    assert abs(r1 - phi) < 5 * np.sqrt((1 - phi**2) / n) + 1e-3
    gamma0 = sigma**2 / (1 - phi**2)
    rel_sd = np.sqrt(2 * (1 + phi**2) / ((1 - phi**2) * n))
    assert abs(np.mean(x**2) / gamma0 - 1) < 5 * rel_sd


def test_ar1_first_line_already_stationary():
    """Eq. 41 starts at a¹/sqrt(1 − φ²): line 1 has the stationary variance (rel. sd sqrt(2/N), 5 sd)."""
    phi, sigma, n = 0.6, 0.5, 50000
    x = ar1_jitter(2, phi=phi, sigma=sigma, size=(n,), rng=3)
    assert abs(np.mean(x[:, 0] ** 2) / (sigma**2 / (1 - phi**2)) - 1) < 5 * np.sqrt(2 / n)


def test_apply_jitter_zero_is_identity(rng):
    img = rng.random((37, 31))
    out = apply_jitter(img, np.zeros(37), np.zeros(37))
    assert np.array_equal(out, img)
    assert out is not img


def test_apply_jitter_shape_contract(rng):
    img = rng.random((3, 37, 31))
    dx = rng.normal(size=(3, 37))
    out = apply_jitter(img, dx, np.zeros(37))
    assert out.shape == img.shape
    assert apply_jitter(img[0], dx[0], dx[0], interpolation="cubic").shape == (37, 31)


def test_apply_jitter_bad_input(rng):
    img = rng.random((10, 12))
    with pytest.raises(ValueError, match="dx must have shape"):
        apply_jitter(img, np.zeros(12), np.zeros(10))
    with pytest.raises(ValueError, match="interpolation"):
        apply_jitter(img, np.zeros(10), np.zeros(10), interpolation="spline")
    with pytest.raises(ValueError, match="NaN"):
        apply_jitter(img, np.full(10, np.nan), np.zeros(10))


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_apply_jitter_reproduces_ramp(interpolation):
    """On a linear ramp I = a·x + b·y, both interpolators are exact: pixel (i, j) = I(j + dx_i, i + dy_i)."""
    h, w = 41, 33
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    a, b = 0.7, -1.3
    img = a * xx + b * yy + 100
    rng = np.random.default_rng(4)
    dx = rng.uniform(-1.5, 1.5, h)
    dy = rng.uniform(-1.5, 1.5, h)
    out = apply_jitter(img, dx, dy, interpolation=interpolation)
    expect = a * (xx + dx[:, None]) + b * (yy + dy[:, None]) + 100
    inner = (slice(4, h - 4), slice(4, w - 4))
    np.testing.assert_allclose(out[inner], expect[inner], rtol=0, atol=1e-10)


def test_apply_jitter_linear_matches_map_coordinates(rng):
    """Independent computation: scipy's bilinear map_coordinates with nearest-edge mode."""
    img = rng.random((2, 37, 31))
    dx = rng.normal(0, 2, (2, 37))
    dy = rng.normal(0, 2, (2, 37))
    out = apply_jitter(img, dx, dy)
    yy, xx = np.mgrid[0:37, 0:31].astype(float)
    for b in range(2):
        coords = [yy + dy[b][:, None], xx + dx[b][:, None]]
        ref = ndimage.map_coordinates(img[b], coords, order=1, mode="nearest")
        np.testing.assert_allclose(out[b], ref, atol=1e-12)


def test_integer_shift_moves_rows():
    img = np.arange(5 * 6, dtype=float).reshape(5, 6)
    out = apply_jitter(img, np.array([1, 0, 0, 0, 0.0]), np.array([0, 1, 0, 0, 0.0]))
    assert np.array_equal(out[0], [1, 2, 3, 4, 5, 5])  # shifted left, edge clamped
    assert np.array_equal(out[1], img[2])


def test_jitter_displacement_layout():
    dx, dy = np.arange(4.0), -np.arange(4.0)
    f = jitter_displacement(dx, dy, (4, 3))
    assert f.shape == (2, 4, 3)
    assert np.array_equal(f[0, :, 2], dx) and np.array_equal(f[1, :, 0], dy)
