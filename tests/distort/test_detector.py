"""Tests for Poisson shot noise and the PMT model (thesis eqs. 2.11–2.13)."""

import numpy as np
import pytest

from stemquant.distort import pmt_noise, pmt_sigma, poisson_noise


@pytest.mark.parametrize("dose", [100.0, 1e3, 1e4])
def test_poisson_mean_equals_variance(dose):
    """λ = dose·p² = 1, 10, 100 on N = 40 000 pixels.

    sd(mean) = sqrt(λ/N); sd(var) ≈ sqrt((λ + 2λ²)/N). 5 sd: false-failure rate ~6e-7 per check.
    """
    n_side, p = 200, 0.1
    lam = dose * p**2
    x = poisson_noise(np.ones((n_side, n_side)), dose=dose, pixel_size=p, rng=np.random.default_rng(1))
    n = x.size
    assert abs(x.mean() - lam) < 5 * np.sqrt(lam / n)
    assert abs(x.var() - lam) < 5 * np.sqrt((lam + 2 * lam**2) / n)
    assert np.all(x == np.round(x))


def test_poisson_counts_input_and_shape(rng):
    x = poisson_noise(np.full((3, 37, 31), 4.0), rng=rng)
    assert x.shape == (3, 37, 31) and x.dtype == np.float64


def test_poisson_bad_input():
    with pytest.raises(ValueError, match="dose"):
        poisson_noise(np.ones((5, 5)), dose=-1.0, pixel_size=0.1, rng=0)
    with pytest.raises(ValueError, match="pixel_size"):
        poisson_noise(np.ones((5, 5)), dose=10.0, rng=0)
    with pytest.raises(ValueError, match="non-negative"):
        poisson_noise(-np.ones((5, 5)), rng=0)


def test_poisson_determinism():
    img = np.full((20, 20), 3.0)
    assert np.array_equal(poisson_noise(img, rng=1), poisson_noise(img, rng=1))
    assert not np.array_equal(poisson_noise(img, rng=1), poisson_noise(img, rng=2))


def test_pmt_sigma_formula():
    """Eq. 2.11 evaluated by hand for m_c=100, η=0.25, δ=4, δ_c²=100, G=1:
    25·sqrt((0.75 + 1/3)/25 + 0.01) = 25·sqrt(0.0533…)."""
    expect = 25 * np.sqrt((0.75 + 1 / 3) / 25 + 0.01)
    got = pmt_sigma(photons=100, efficiency=0.25, dynode_gain=4, photon_variance=100)
    assert got == pytest.approx(expect)
    assert pmt_sigma(gain=10.0) == pytest.approx(10 * expect)


def test_pmt_bad_parameters():
    with pytest.raises(ValueError, match="dynode_gain"):
        pmt_sigma(dynode_gain=1.0)
    with pytest.raises(ValueError, match="efficiency"):
        pmt_sigma(efficiency=1.5)
    with pytest.raises(ValueError, match="counts"):
        pmt_noise(-np.ones((4, 4)), rng=0)


def test_pmt_zero_counts_stay_zero(rng):
    k = np.zeros((10, 10))
    assert np.array_equal(pmt_noise(k, rng=rng), k)


def test_pmt_moments():
    """E = λ, Var = λ(1 + σ₁²) (law of total variance with σ(k)² = kσ₁²). N = 2e5, 5 sd bounds."""
    lam, n = 2.0, 200_000
    s1 = pmt_sigma() / 25.0
    rng = np.random.default_rng(7)
    x = pmt_noise(poisson_noise(np.full((n // 400, 400), lam), rng=rng), rng=rng)
    var = lam * (1 + s1**2)
    assert abs(x.mean() - lam) < 5 * np.sqrt(var / n)
    # sd of the sample variance bounded generously by the Poisson value sqrt((λ + 2λ²)·(1+σ₁²)²/N)
    assert abs(x.var() - var) < 5 * np.sqrt((lam + 2 * lam**2) * (1 + s1**2) ** 2 / n)


def test_pmt_multi_peak_histogram():
    """Fig. 2.3: evenly spaced single-electron peaks. Density within ±0.1 of k (k = 1, 2) must exceed the
    density within ±0.1 of k + 0.5 by far (expected ratio ≈ 3 for k=1 and ≈ 2 for k=2; we require > 1.3,
    while binomial noise on ~1e4 counts is ~1 %), and the k = 0 peak is exactly e^{−λ} of the pixels
    (5 sd binomial bound)."""
    lam, n = 2.0, 200_000
    rng = np.random.default_rng(8)
    x = pmt_noise(poisson_noise(np.full((n // 400, 400), lam), rng=rng), rng=rng).ravel()
    p0 = np.exp(-lam)
    assert abs(np.mean(x == 0) - p0) < 5 * np.sqrt(p0 * (1 - p0) / n)
    for k in (1, 2):
        peak = np.sum(np.abs(x - k) < 0.1)
        valley = np.sum(np.abs(x - k - 0.5) < 0.1)
        assert peak > 1.3 * valley
    hist, edges = np.histogram(x[x != 0], bins=np.arange(0.25, 4.3, 0.1))
    centres = 0.5 * (edges[1:] + edges[:-1])
    local_max = centres[1:-1][(hist[1:-1] > hist[:-2]) & (hist[1:-1] >= hist[2:])]
    assert np.allclose(local_max[:2], [1.0, 2.0], atol=0.11)


def test_pmt_determinism():
    k = np.full((16, 16), 3.0)
    assert np.array_equal(pmt_noise(k, rng=4), pmt_noise(k, rng=4))
    assert not np.array_equal(pmt_noise(k, rng=4), pmt_noise(k, rng=5))
