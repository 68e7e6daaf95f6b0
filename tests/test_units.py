"""Tests of the unit conversions (stemquant.units)."""

import numpy as np
import pytest

from stemquant.units import counts_per_pixel, electron_wavelength


def test_counts_per_pixel_is_intensity_dose_pixel_area():
    img = np.array([[0.0, 0.25], [0.5, 1.0]])
    np.testing.assert_allclose(counts_per_pixel(img, 1e4, 0.12), img * 1e4 * 0.0144, rtol=1e-15)


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
