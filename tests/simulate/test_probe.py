"""Tests of the STEM probe and the Table 2.1 presets."""

import numpy as np
import pytest
from scipy.special import j0

from stemquant.simulate import PRESETS, ProbeParams, aberration_phase, probe_intensity


def _encircled_hankel(params, radius):
    """Independent reference: fraction of the coherent probe intensity within ``radius`` [Å].

    psi(r) = int_0^kmax exp(-i chi(k)) J0(2 pi k r) 2 pi k dk (round aberrations), normalised by Parseval
    (total intensity pi kmax^2); 1-D quadrature, no FFT grid.
    """
    lam = params.wavelength
    kmax = params.semiangle_cutoff * 1e-3 / lam
    k = np.linspace(0, kmax, 4001)
    r = np.linspace(0, radius, 401)
    kern = np.exp(-1j * aberration_phase(params, k * lam))[None, :] * j0(2 * np.pi * k[None, :] * r[:, None])
    psi = np.trapezoid(kern * 2 * np.pi * k[None, :], k, axis=1)
    return np.trapezoid(np.abs(psi) ** 2 * 2 * np.pi * r, r) / (np.pi * kmax**2)


def _encircled_grid(probe, pixel_size, radius):
    """Fraction of a centred grid probe within ``radius`` [Å] of the centre pixel."""
    h, w = probe.shape
    y, x = np.mgrid[:h, :w]
    r = np.hypot((x - w // 2) * pixel_size, (y - h // 2) * pixel_size)
    return probe[r <= radius].sum()


def test_presets_match_table_2_1():
    # Friedrich (2023) Table 2.1; C10 in Å, abTEM defocus = -C10
    assert PRESETS["bulk"].C10 == -88.74 and PRESETS["bulk"].defocus == 88.74
    assert PRESETS["particle"].C10 == -108.68
    for p in PRESETS.values():
        assert p.energy == 300e3 and p.Cs == 0.04e7 and p.C50 == 10e7
    assert (PRESETS["particle"].inner, PRESETS["particle"].outer) == (42.0, 220.0)
    assert (PRESETS["bulk"].inner, PRESETS["bulk"].outer) == (60.0, 190.0)
    assert PRESETS["particle"].source_size_fwhm == 0.75 and PRESETS["dislocation"].pixel_size == 0.16


def test_probe_66_percent_within_half_angstrom():
    """seeds/README.md: with C10 = -8.874 nm (bulk/dislocation presets) ~66 % of the probe lies within 0.5 Å,
    with defocus 0 only ~22 %. Those are two-digit figures from an unknown grid and (probably soft) aperture,
    so they are checked to +-2 percentage points; the grid probe is checked tightly against the independent
    Hankel quadrature (difference = pixelation of the 0.5 Å disc and periodic wrap of the tails, < 0.5 points
    here)."""
    ps, n = 0.02, 640
    for params, quoted in ((PRESETS["bulk"], 0.66), (ProbeParams(C10=0.0), 0.22)):
        grid = _encircled_grid(probe_intensity(params, (n, n), ps, source_size=False), ps, 0.5)
        ref = _encircled_hankel(params, 0.5)
        assert abs(grid - ref) < 0.005
        assert abs(ref - quoted) < 0.02
    # the particle preset (C10 = -10.868 nm) is more defocused: less concentrated than the bulk probe
    part = _encircled_grid(probe_intensity(PRESETS["particle"], (n, n), ps, source_size=False), ps, 0.5)
    assert abs(part - _encircled_hankel(PRESETS["particle"], 0.5)) < 0.005
    assert part < _encircled_grid(probe_intensity(PRESETS["bulk"], (n, n), ps, source_size=False), ps, 0.5)


@pytest.mark.parametrize("shape", [(37, 31), (64, 64)])
def test_probe_shape_normalisation_and_centre(shape):
    p = probe_intensity(PRESETS["particle"], shape, 0.12)
    assert p.shape == shape
    assert p.min() >= 0
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.unravel_index(np.argmax(p), shape) == (shape[0] // 2, shape[1] // 2)


def test_source_size_broadens_but_conserves():
    ps, n = 0.05, 128
    sharp = probe_intensity(PRESETS["bulk"], (n, n), ps, source_size=False)
    blurred = probe_intensity(PRESETS["bulk"], (n, n), ps)
    assert blurred.max() < sharp.max()
    assert blurred.sum() == pytest.approx(1.0, abs=1e-12)
    # convolution theorem: the transfer ratio is the Fourier transform of a Gaussian of std sigma
    sigma = PRESETS["bulk"].source_size_fwhm / (2 * np.sqrt(2 * np.log(2)))
    fs, fb = np.fft.fft2(sharp), np.fft.fft2(blurred)
    k2 = np.add.outer(np.fft.fftfreq(n, ps) ** 2, np.fft.fftfreq(n, ps) ** 2)
    ok = np.abs(fs) > 1e-3
    np.testing.assert_allclose(np.abs(fb[ok] / fs[ok]), np.exp(-2 * np.pi**2 * sigma**2 * k2[ok]), atol=1e-6)


def test_probe_deterministic():
    a = probe_intensity(PRESETS["dislocation"], (40, 40), 0.16)
    b = probe_intensity(PRESETS["dislocation"], (40, 40), 0.16)
    np.testing.assert_array_equal(a, b)


def test_probe_bad_input():
    with pytest.raises(ValueError, match="pixel_size"):
        probe_intensity(PRESETS["bulk"], (32, 32), 0.0)
    with pytest.raises(ValueError, match="too coarse"):
        probe_intensity(PRESETS["bulk"], (32, 32), 1.0)
    with pytest.raises(ValueError, match="shape"):
        probe_intensity(PRESETS["bulk"], (2, 32), 0.1)
    with pytest.raises(TypeError, match="ProbeParams"):
        probe_intensity({"energy": 3e5}, (32, 32), 0.1)
    with pytest.raises(ValueError, match="semiangle_cutoff"):
        ProbeParams(semiangle_cutoff=-1.0)
    with pytest.raises(ValueError, match="outer"):
        ProbeParams(inner=100.0, outer=50.0)
    with pytest.raises(ValueError, match="source_size_fwhm"):
        ProbeParams(source_size_fwhm=-0.1)
