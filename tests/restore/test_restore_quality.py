"""Helpers of benchmarks/restore_quality.py: Table 2.2 preset, count -> intensity, fast-scan fitted shift.

The shift test is the check of docs/restoration.md ("Fast-scan shift of a fitted column"): the first-order
prediction δ = Σ_s psf[s]·s·exp(−s²/4σ²) of the fitted column shift must agree with the fit of a noise-free,
PSF-only image up to a remainder of second order in δ.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from stemquant.distort import STEMDistortion, STEMParams, fast_scan_params, fast_scan_psf
from stemquant.quant import fit_columns

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "restore_quality.py"


@pytest.fixture(scope="module")
def rq():
    """The benchmark script imported as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location("_restore_quality_bench", _PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _column(n=81, pixel_size=0.1, rho=0.4, x0=4.05, y0=3.95, eta=0.2, bg=0.02):
    """One isolated round Gaussian column [normalised intensity] in an (n, n) image, and its position [Å]."""
    yy, xx = (np.mgrid[0:n, 0:n] + 0.5) * pixel_size
    img = bg + eta * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * rho**2))
    return img, np.array([[x0, y0]])


def test_table22_preset(rq):
    # Friedrich (2023) Table 2.2: Poisson, X-jitter φ 0.5 σ 0.5, Y-jitter φ 0.5 σ 0.25 (px), dwell 0.5 µs
    p = rq.table22_params()
    assert (p.phi_x, p.sigma_x, p.phi_y, p.sigma_y, p.jitter_unit) == (0.5, 0.5, 0.5, 0.25, "px")
    assert p.poisson and p.dwell_time == 0.5e-6
    assert not p.pmt and p.row_line_count == 0 and p.clip_fraction is None and p.adc_gain is None


def test_to_intensity_inverts_dose_scaling(rq):
    img, _ = _column(n=37)
    out = STEMDistortion(STEMParams.identity())(img, dose=5e3, pixel_size=0.1, rng=0)
    np.testing.assert_allclose(rq.to_intensity(out.image, 5e3, 0.1), img, rtol=1e-12)


def test_to_intensity_rejects_negative_counts(rq):
    counts = np.ones((16, 16))
    counts[3, 4] = -0.5
    with pytest.raises(ValueError, match="negative"):
        rq.to_intensity(counts, 5e3, 0.1)


def test_psf_only_is_table22_pipeline_without_noise_and_jitter(rq):
    img, _ = _column(n=37)
    params = rq.table22_params().replace(sigma_x=0.0, sigma_y=0.0, poisson=False)
    out = STEMDistortion(params)(img, dose=5e3, pixel_size=0.1, rng=0)
    # both go through the float32 FFT of apply_fast_scan: relative error ~1e-7
    np.testing.assert_allclose(rq.to_intensity(out.image, 5e3, 0.1), rq.psf_only(img, 0.5e-6), rtol=1e-5)


def test_distort_frames_deterministic(rq):
    img, _ = _column(n=37)
    a = rq.distort_frames(img, 5e3, "table22", 2, np.random.default_rng(1))
    b = rq.distort_frames(img, 5e3, "table22", 2, np.random.default_rng(1))
    c = rq.distort_frames(img, 5e3, "table22", 2, np.random.default_rng(2))
    assert a.shape == (2, 37, 37)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    with pytest.raises(ValueError, match="distortion"):
        rq.distort_frames(img, 5e3, "tem", 1, np.random.default_rng(1))


def test_fitted_fast_scan_shift_matches_first_order(rq):
    """Fitted shift of an isolated, noise-free, PSF-only column vs δ = Σ psf[s]·s·exp(−s²/4σ²).

    The PSF only acts along the rows, so the fitted y must not move (fit tolerance 1e-5 px) and x must move
    in the scan direction (+x). The first-order theory leaves a remainder of order δ²: doubling the dwell time
    halves α, β, γ and (nearly) δ, so |fit − δ| must scale as δ², i.e. resid ratio / (δ ratio)² = 1. We accept
    [0.9, 1.1]: the next order changes the ratio by a relative O(δ/σ) ≈ 7 % for δ ≤ 0.28 px, σ = 4 px. A wrong
    first-order term (e.g. the PSF centroid Σ psf[s]·s) would leave a remainder ∝ δ: normalised ratio ≈ 2.
    The column is isolated (4 Å from every edge, no neighbours) so that no neighbour's Lorentzian tail adds a
    sloped pedestal (a further shift ∝ α σ³ / d³, docs/restoration.md).
    """
    p = 0.1
    img, pos = _column(pixel_size=p)
    sigma_px = 0.4 / p
    dwells = (0.5e-6, 1e-6, 2e-6)
    imgs = np.stack([rq.psf_only(img, t) for t in dwells])
    fit = fit_columns(imgs, pos, p, crlb=False, progress=False)
    shift = (fit.positions[:, 0] - pos[0]) / p  # (3, 2) [px]
    pred = np.array([rq.fit_shift_first_order(fast_scan_psf(length=img.shape[1], **fast_scan_params(t)), sigma_px)
                     for t in dwells])
    assert fit.converged.all()
    np.testing.assert_allclose(shift[:, 1], 0.0, atol=1e-5)
    assert np.all(shift[:, 0] > 0)
    resid = np.abs(shift[:, 0] - pred)
    order2 = (resid[1:] / resid[:-1]) / (pred[1:] / pred[:-1]) ** 2
    assert np.all((order2 > 0.9) & (order2 < 1.1)), (shift[:, 0], pred, order2)
