"""Tests of the unit conversions (stemquant.units)."""

import numpy as np
import pytest

from stemquant.units import counts_per_pixel, electron_wavelength


def test_counts_per_pixel_conserves_the_incident_electrons():
    # Physical meaning, not the formula: intensity 1 everywhere is the whole beam, so the image's counts add up
    # to dose [e⁻/Å²] × field of view [Å²], whatever the sampling; the same field sampled twice as finely
    # spreads the same electrons over four times as many pixels; counts are linear in the intensity.
    dose, fov = 2.5e3, 6.0  # e⁻/Å², Å (square field of view)
    for n in (10, 20, 60):
        counts = counts_per_pixel(np.ones((n, n)), dose, fov / n)
        assert counts.sum() == pytest.approx(dose * fov**2, rel=1e-12)
    coarse, fine = counts_per_pixel(np.ones((1, 1)), dose, 0.2), counts_per_pixel(np.ones((1, 1)), dose, 0.1)
    assert coarse[0, 0] == pytest.approx(4 * fine[0, 0], rel=1e-12)
    img = np.array([[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(counts_per_pixel(img, dose, 0.2), img * counts_per_pixel(1.0, dose, 0.2), rtol=1e-15)


@pytest.mark.parametrize(("dose", "pixel_size", "match"), [
    (0.0, 0.1, "dose"), (-5.0, 0.1, "dose"), (np.nan, 0.1, "dose"), (np.inf, 0.1, "dose"),
    (1e3, 0.0, "pixel_size"), (1e3, -0.1, "pixel_size"), (1e3, np.nan, "pixel_size"),
])
def test_counts_per_pixel_rejects_non_positive_dose_and_pixel_size(dose, pixel_size, match):
    # used to return negative or NaN "counts" silently
    with pytest.raises(ValueError, match=match):
        counts_per_pixel(np.ones((3, 3)), dose, pixel_size)


def test_electron_wavelength_300kV_and_bad_energy():
    # λ = h c / sqrt(E (2 m c² + E)), 300 keV: 0.019687 Å (relativistic)
    assert electron_wavelength(300e3) == pytest.approx(0.019687, abs=1e-6)
    for bad in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="energy"):
            electron_wavelength(bad)
