"""Parameter dataclasses for the STEM and TEM distortion pipelines.

Every strength is documented with its unit. A strength of 0 (or ``None``) switches the effect off, so
``STEMParams.identity()`` / ``TEMParams.identity()`` give a pipeline that only converts normalised intensity
to expected counts (``intensity · dose · pixel_size²``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from ._checks import check_count, check_fraction, check_nonnegative, check_phi, check_range, check_real
from ._tem import check_mtf_params

_JITTER_UNITS = ("px", "Å")
_INTERPOLATIONS = ("linear", "cubic")


def _check_jitter(p) -> None:
    """Shared jitter checks for STEMParams."""
    check_phi(p.phi_x, "phi_x")
    check_phi(p.phi_y, "phi_y")
    check_nonnegative(p.sigma_x, "sigma_x", p.jitter_unit if p.jitter_unit in _JITTER_UNITS else "")
    check_nonnegative(p.sigma_y, "sigma_y", p.jitter_unit if p.jitter_unit in _JITTER_UNITS else "")
    if p.jitter_unit not in _JITTER_UNITS:
        raise ValueError(f"jitter_unit must be 'px' or 'Å', got {p.jitter_unit!r}")
    if p.interpolation not in _INTERPOLATIONS:
        raise ValueError(f"interpolation must be 'linear' or 'cubic', got {p.interpolation!r}")


def _check_optional_positive(value, name: str, unit: str = "") -> None:
    """None switches off; otherwise must be > 0."""
    if value is None:
        return
    v = check_real(value, name, unit)
    if v <= 0:
        raise ValueError(f"{name} must be positive{f' [{unit}]' if unit else ''} or None (off), got {value}")


@dataclass(frozen=True)
class STEMParams:
    """Parameters of the STEM distortion pipeline (Lobato et al. 2023, eqs. 41–55; thesis eqs. 2.11–2.18).

    Defaults are the Table 2.2 preset of Friedrich (2023): Poisson noise, X-jitter φ_x = 0.5, σ_x = 0.5,
    Y-jitter φ_y = 0.5, σ_y = 0.25 (σ in pixels, see ``jitter_unit``) and a dwell time of 0.5 µs. All other
    effects are off by default.

    Parameters
    ----------
    phi_x, phi_y : float
        AR(1) coupling of consecutive scan lines, 0 <= φ < 1 (eq. 41 / 2.14–2.15).
    sigma_x, sigma_y : float
        Standard deviation of the AR(1) innovations [px or Å, see ``jitter_unit``]; 0 = no jitter. The
        stationary standard deviation of the displacement is σ / sqrt(1 − φ²).
    jitter_unit : {"px", "Å"}
        Unit of ``sigma_x``/``sigma_y``. Table 2.2 gives no unit; we read it as pixels. The paper's random
        ranges (``sample_stem_params``) are in Å.
    interpolation : {"linear", "cubic"}
        Interpolation on the displaced scan grid (thesis: linear; paper: bicubic, Keys a = −0.5).
    poisson : bool
        Electron shot noise (eq. 2.12 / 45).
    pmt : bool
        Add the photomultiplier Gaussian spread σ(k) = sqrt(k)·σ₁ to k detected electrons (eqs. 2.11, 2.13).
    pmt_photons : float
        m_c, photons collected at the photocathode per incident electron [photons].
    pmt_efficiency : float
        η, detective quantum efficiency of the photocathode, in (0, 1].
    pmt_dynode_gain : float
        δ, secondary-emission gain per dynode (> 1).
    pmt_photon_variance : float or None
        δ_c², variance of the photon number per electron [photons²]; None = m_c (Poisson photons).
    pmt_gain : float
        G, total PMT gain [anode electrons per photoelectron]. It only sets the scale of eq. 2.11 in anode
        electrons; the output is in detected-electron counts, so G cancels.
    dwell_time : float or None
        Pixel dwell time [s]; None = no fast-scan blur. Sets the fast-scan PSF (eqs. 47–50) through the
        response times below: α_px = detector_time / dwell_time, β_px = readout_decay / dwell_time,
        γ_px = readout_period / dwell_time.
    detector_time : float
        Lorentzian parameter α of the detector response, expressed as a time [s] (HWHM = α / 2π).
    readout_decay : float
        β, decay time of the damped-oscillator readout response [s].
    readout_period : float
        γ, oscillation period of the readout response [s].
    readout_phase : float
        θ, phase of the readout oscillation [rad].
    row_line_count : int
        Number of row-line defects per frame (eq. 51); 0 = off.
    row_line_length : float
        Maximum length of a row line as a fraction of the image width, in (0, 1].
    black_pixel_fraction : float
        Fraction of pixels set to zero (eq. 52), in [0, 1].
    zinger_fraction : float
        Fraction of pixels turned into zingers (eq. 53), in [0, 1].
    zinger_strength : tuple of float
        Zinger value range as multiples of the frame maximum (see ``zingers``).
    clip_fraction : float or None
        Upper clip (eq. 54): saturation at T_u = min + clip_fraction · (max − min) of each frame's signal
        after the fast-scan PSF and before row lines, black pixels and zingers (see ``upper_clip``);
        None = off.
    adc_gain : float or None
        ADC levels per detected electron (eq. 55); the output is ``round(g·x)/g`` so it stays in counts;
        None = off.
    """

    phi_x: float = 0.5
    sigma_x: float = 0.5
    phi_y: float = 0.5
    sigma_y: float = 0.25
    jitter_unit: str = "px"
    interpolation: str = "linear"
    poisson: bool = True
    pmt: bool = False
    pmt_photons: float = 100.0
    pmt_efficiency: float = 0.25
    pmt_dynode_gain: float = 4.0
    pmt_photon_variance: float | None = None
    pmt_gain: float = 4.0**10
    dwell_time: float | None = 0.5e-6
    detector_time: float = 0.5e-6
    readout_decay: float = 0.02e-6
    readout_period: float = 0.2e-6
    readout_phase: float = np.pi / 2
    row_line_count: int = 0
    row_line_length: float = 0.25
    black_pixel_fraction: float = 0.0
    zinger_fraction: float = 0.0
    zinger_strength: tuple[float, float] = (1.0, 2.0)
    clip_fraction: float | None = None
    adc_gain: float | None = None

    def __post_init__(self):
        _check_jitter(self)
        check_nonnegative(self.pmt_photons, "pmt_photons", "photons")
        if self.pmt_photons <= 0:
            raise ValueError(f"pmt_photons must be positive [photons per electron], got {self.pmt_photons}")
        check_fraction(self.pmt_efficiency, "pmt_efficiency", allow_zero=False)
        if check_real(self.pmt_dynode_gain, "pmt_dynode_gain") <= 1:
            raise ValueError(f"pmt_dynode_gain δ must be > 1 (secondary electrons per dynode), got "
                             f"{self.pmt_dynode_gain}")
        if self.pmt_photon_variance is not None:
            check_nonnegative(self.pmt_photon_variance, "pmt_photon_variance", "photons²")
        _check_optional_positive(self.pmt_gain, "pmt_gain")
        _check_optional_positive(self.dwell_time, "dwell_time", "s")
        for name in ("detector_time", "readout_decay", "readout_period"):
            if check_real(getattr(self, name), name, "s") <= 0:
                raise ValueError(f"{name} must be positive [s], got {getattr(self, name)}")
        check_real(self.readout_phase, "readout_phase", "rad")
        check_count(self.row_line_count, "row_line_count")
        check_fraction(self.row_line_length, "row_line_length", allow_zero=False)
        check_fraction(self.black_pixel_fraction, "black_pixel_fraction")
        check_fraction(self.zinger_fraction, "zinger_fraction")
        check_range(self.zinger_strength, "zinger_strength", "× frame maximum")
        if self.clip_fraction is not None:
            check_fraction(self.clip_fraction, "clip_fraction", allow_zero=False)
        _check_optional_positive(self.adc_gain, "adc_gain", "levels per count")

    @classmethod
    def identity(cls) -> STEMParams:
        """Zero-strength parameters: the pipeline returns exactly ``image · dose · pixel_size²``."""
        return cls(sigma_x=0.0, sigma_y=0.0, poisson=False, pmt=False, dwell_time=None)

    def replace(self, **changes) -> STEMParams:
        """Return a copy with some fields changed (validated again)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw.update(changes)
        return type(self)(**kw)


@dataclass(frozen=True)
class TEMParams:
    """Parameters of the TEM (CCD/CMOS camera) distortion pipeline (Lobato et al. 2023, eqs. 27–40).

    Defaults: shot noise only (a perfect counting camera). Every other strength defaults to 0 / None (off).

    Parameters
    ----------
    mtf : tuple (a, b, c) or None
        MTF_r = a·exp(−g²/2b²) + (1 − a)·exp(−g²/2c²), with b, c in units of the Nyquist frequency (eq. 29),
        multiplied by the pixel term sinc(πu/2)·sinc(πv/2) (eq. 28); None = no MTF.
    shot_noise : bool
        Poisson noise on the expected counts (eq. 30).
    fpn_sigma : float
        σ_fpn, relative pixel-gain spread of the fixed-pattern noise (eq. 31) [dimensionless].
    dark_mean, dark_std : float
        Mean and standard deviation of the log-normal dark-current non-uniformity (eq. 32) [counts per frame].
    hot_pixel_fraction : float
        Fraction of "hot" pixels with dark current drawn from U(μ + 5σ, μ + 8σ) (eq. 32).
    dark_shot_noise : bool
        Poisson noise on the dark current (eq. 33); if False the DCNU is added without shot noise.
    thermal_sigma : float
        Standard deviation of white read-out noise (eq. 34) [counts].
    flicker_sigma : float
        Standard deviation of the 1/f read-out noise field (eq. 35) [counts].
    reset_sigma : float
        Standard deviation of the per-row reset noise (eq. 36) [counts].
    black_pixel_count, zinger_count : int
        Number of seed points of black-pixel / zinger clusters (eqs. 37–38).
    cluster_steps : int
        Number of random-walk steps grown from each seed point (0 = isolated pixels).
    zinger_strength : tuple of float
        Zinger value range as multiples of the frame maximum.
    clip_fraction : float or None
        Upper clip (eq. 39): saturation at T_u = min + clip_fraction · (max − min) of each frame's signal
        before black pixels and zingers (see ``upper_clip``); None = off.
    adc_gain : float or None
        ADC levels per count (eq. 40); output ``round(g·x)/g``; None = off.
    """

    mtf: tuple[float, float, float] | None = None
    shot_noise: bool = True
    fpn_sigma: float = 0.0
    dark_mean: float = 0.0
    dark_std: float = 0.0
    hot_pixel_fraction: float = 0.0
    dark_shot_noise: bool = True
    thermal_sigma: float = 0.0
    flicker_sigma: float = 0.0
    reset_sigma: float = 0.0
    black_pixel_count: int = 0
    zinger_count: int = 0
    cluster_steps: int = 0
    zinger_strength: tuple[float, float] = (1.0, 2.0)
    clip_fraction: float | None = None
    adc_gain: float | None = None

    def __post_init__(self):
        if self.mtf is not None:
            check_mtf_params(*self.mtf)
        check_nonnegative(self.fpn_sigma, "fpn_sigma")
        check_nonnegative(self.dark_mean, "dark_mean", "counts")
        check_nonnegative(self.dark_std, "dark_std", "counts")
        if self.dark_std > 0 and self.dark_mean == 0:
            raise ValueError(
                "dark_mean must be > 0 [counts] when dark_std > 0 (log-normal needs a positive mean)"
            )
        check_fraction(self.hot_pixel_fraction, "hot_pixel_fraction")
        check_nonnegative(self.thermal_sigma, "thermal_sigma", "counts")
        check_nonnegative(self.flicker_sigma, "flicker_sigma", "counts")
        check_nonnegative(self.reset_sigma, "reset_sigma", "counts")
        check_count(self.black_pixel_count, "black_pixel_count")
        check_count(self.zinger_count, "zinger_count")
        check_count(self.cluster_steps, "cluster_steps")
        check_range(self.zinger_strength, "zinger_strength", "× frame maximum")
        if self.clip_fraction is not None:
            check_fraction(self.clip_fraction, "clip_fraction", allow_zero=False)
        _check_optional_positive(self.adc_gain, "adc_gain", "levels per count")

    @classmethod
    def identity(cls) -> TEMParams:
        """Zero-strength parameters: the pipeline returns exactly ``image · dose · pixel_size²``."""
        return cls(shot_noise=False)

    def replace(self, **changes) -> TEMParams:
        """Return a copy with some fields changed (validated again)."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        kw.update(changes)
        return type(self)(**kw)
