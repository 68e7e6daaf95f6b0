"""Physical constants and unit conversions. Internal units: Å, mrad, e⁻/Å², eV, s."""

from __future__ import annotations

import numpy as np

from stemquant._validate import check_dose, check_pixel_size, check_positive

# CODATA 2018
ELECTRON_MASS_EV = 510998.95  # m_e c² [eV]
HC_EV_ANGSTROM = 12398.419843320026  # h c [eV Å]


def electron_wavelength(energy: float) -> float:
    """Relativistic electron wavelength [Å] for an acceleration ``energy`` [eV].

    λ = h c / sqrt(E (2 m_e c² + E)).  300 keV -> 0.019687 Å.
    """
    energy = check_positive(energy, "energy", "eV")
    return HC_EV_ANGSTROM / np.sqrt(energy * (2 * ELECTRON_MASS_EV + energy))


def fwhm_to_sigma(fwhm: float) -> float:
    """Gaussian standard deviation from a full width at half maximum (same unit)."""
    return fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))


def counts_per_pixel(intensity, dose: float, pixel_size: float):
    """Expected electron counts from normalised intensity: ``intensity * dose [e⁻/Å²] * pixel_size² [Å²]``.

    ``dose`` and ``pixel_size`` must be positive and finite (ValueError otherwise).
    """
    return intensity * check_dose(dose, allow_none=False) * check_pixel_size(pixel_size) ** 2
