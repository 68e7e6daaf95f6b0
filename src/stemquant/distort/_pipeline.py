"""STEM and TEM distortion pipelines: clean normalised image -> distorted image in detector counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stemquant._validate import as_rng, check_dose, check_image, check_pixel_size
from stemquant.units import counts_per_pixel

from ._artifacts import (
    ROW_LINE_FACTORS,
    _clip_threshold,
    _quantise_inplace,
    _random_pixel_indices,
    _row_lines_inplace,
    _zingers_inplace,
    black_pixels,
    quantise,
    random_walk_mask,
    zingers,
)
from ._checks import check_nonneg_image
from ._detector import _pmt_core, _pmt_s1
from ._fastscan import _cached_psf, _convolve_rows, fast_scan_params
from ._jitter import _jitter_core, ar1_jitter, jitter_displacement
from ._params import STEMParams, TEMParams
from ._poisson import poisson_draw
from ._tem import (
    apply_mtf,
    dark_current,
    dark_current_noise,
    fixed_pattern_noise,
    flicker_noise,
    reset_noise,
    thermal_noise,
)

_BLOCK = 4  # frames processed together: keeps the working set in cache (faster than one big batch)


@dataclass(frozen=True)
class DistortedImage:
    """Result of a distortion pipeline.

    Attributes
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
        Distorted image in detector counts; its expectation without noise and distortions is
        ``intensity · dose · pixel_size²``.
    displacement : ndarray, shape (2, H, W) or (B, 2, H, W)
        Scan-grid displacement (dx, dy) [px] actually applied: recorded pixel (i, j) was acquired at the probe
        position ``((j + 0.5 + dx)·p, (i + 0.5 + dy)·p)`` Å. Zeros for TEM. Ground truth for scan-distortion
        correction.
    params : STEMParams or TEMParams
        The parameters used.
    dose : float
        Dose [e⁻/Å²].
    pixel_size : float
        Pixel size [Å].
    """

    image: np.ndarray
    displacement: np.ndarray
    params: STEMParams | TEMParams
    dose: float
    pixel_size: float

    def to_intensity(self) -> np.ndarray:
        """The distorted image divided by ``dose · pixel_size²`` (normalised-intensity scale)."""
        return self.image / counts_per_pixel(1.0, self.dose, self.pixel_size)


def _validate(image, dose, pixel_size):
    """Validate the inputs and return (image as (B, H, W) float64, squeeze flag, dose, pixel_size)."""
    img = check_image(image)
    check_nonneg_image(img)
    dose = check_dose(dose, allow_none=False)
    pixel_size = check_pixel_size(pixel_size)
    squeeze = img.ndim == 2
    return (img[None] if squeeze else img), squeeze, dose, pixel_size


def _prepare(image, dose, pixel_size):
    """Validate the inputs and return (counts as (B, H, W), squeeze flag, dose, pixel_size)."""
    img, squeeze, dose, pixel_size = _validate(image, dose, pixel_size)
    return counts_per_pixel(img, dose, pixel_size), squeeze, dose, pixel_size


class STEMDistortion:
    """STEM distortion pipeline built from ``STEMParams``.

    Order of operations (Lobato et al. 2023, eqs. 41–55; Friedrich 2023, eqs. 2.11–2.18):

    1. normalised intensity -> expected counts ``intensity · dose · pixel_size²``;
    2. X/Y scan jitter: AR(1) per scan line (eq. 41), interpolation on the displaced grid (eq. 42);
    3. Poisson shot noise (eq. 2.12) and PMT Gaussian spread σ(k) = sqrt(k)·σ₁ (eqs. 2.11, 2.13);
    4. fast-scan PSF along the rows, after the detector noise as in the thesis' Fig. 2.6 (eqs. 47–50);
    5. row lines (51), black pixels (52), zingers (53), upper clip (54), quantisation (55).

    The output stays in detector counts (no division by the dose scale α). All random numbers are drawn
    sequentially from one ``numpy.random.Generator``; each frame of a (B, H, W) stack gets its own
    independent realisation. The stack is vectorised in blocks of 4 frames (measured faster on CPU than one
    block of B frames, because the working set stays in cache).

    The shot noise is drawn with an exact tabulated sampler (``stemquant.distort._poisson``: alias tables
    of Poisson(c) on a grid c = k/16 < 64 counts plus the small remainder by inversion; numpy's
    ``Generator.poisson`` above 64 counts), up to 1.4–2.8× cheaper than ``Generator.poisson`` at λ < 64. Same
    distribution, but not the same numbers for a given seed as ``poisson_noise`` (which calls
    ``Generator.poisson``). Building the tables costs ~0.5–1 s once per process.

    Parameters
    ----------
    params : STEMParams
        Parameters (default: Table 2.2 preset).

    Examples
    --------
    >>> d = STEMDistortion(STEMParams.identity())
    >>> img = np.full((8, 8), 0.5)
    >>> bool(np.all(d(img, dose=100.0, pixel_size=0.2, rng=0).image == img * 100.0 * 0.2**2))
    True
    """

    def __init__(self, params: STEMParams | None = None):
        if params is None:
            params = STEMParams()
        if not isinstance(params, STEMParams):
            raise TypeError(f"params must be a STEMParams, got {type(params).__name__}")
        self.params = params

    def __repr__(self) -> str:
        return f"STEMDistortion({self.params!r})"

    def _sigmas_px(self, pixel_size: float) -> tuple[float, float]:
        """Jitter innovation σ in pixels."""
        p = self.params
        scale = 1.0 / pixel_size if p.jitter_unit == "Å" else 1.0
        return p.sigma_x * scale, p.sigma_y * scale

    def __call__(self, image, *, dose, pixel_size, rng=None) -> DistortedImage:
        """Distort ``image`` (normalised intensity, (H, W) or (B, H, W)).

        ``dose`` [e⁻/Å²], ``pixel_size`` [Å]; ``rng`` is an int, a numpy Generator or None.
        Returns a ``DistortedImage``.
        """
        img, squeeze, dose, pixel_size = _validate(image, dose, pixel_size)
        rng = as_rng(rng)
        b, h, w = img.shape
        x = np.empty((b, h, w))
        dx, dy = np.zeros((b, h)), np.zeros((b, h))
        for s in range(0, b, _BLOCK):
            sl = slice(s, s + _BLOCK)
            # counts per block (while the block is in the cache), same numbers as for the whole stack
            x[sl], dx[sl], dy[sl] = self._distort_block(counts_per_pixel(img[sl], dose, pixel_size), pixel_size,
                                                        rng)
        disp = jitter_displacement(dx, dy, (h, w))
        if squeeze:
            x, disp = x[0], disp[0]
        return DistortedImage(image=x, displacement=disp, params=self.params, dose=dose,
                              pixel_size=pixel_size)

    def _distort_block(self, counts: np.ndarray, pixel_size: float, rng: np.random.Generator):
        """Distort a (b, H, W) block of expected counts; return (image, dx, dy).

        Same operations and random draws as the public step functions, without their re-validation and
        copies: the Poisson counts stay int64 until the PMT or fast-scan step converts them, and the
        artefacts modify the block's own buffer in place.
        """
        p = self.params
        b, h, w = counts.shape
        sx, sy = self._sigmas_px(pixel_size)
        dx = ar1_jitter(h, phi=p.phi_x, sigma=sx, size=(b,), rng=rng) if sx > 0 else np.zeros((b, h))
        dy = ar1_jitter(h, phi=p.phi_y, sigma=sy, size=(b,), rng=rng) if sy > 0 else np.zeros((b, h))
        x = _jitter_core(counts, dx, dy, p.interpolation)
        if p.poisson:
            # cubic interpolation can undershoot below 0 next to sharp peaks; linear cannot
            lam = np.maximum(x, 0.0) if p.interpolation == "cubic" else x
            x = poisson_draw(lam, rng)  # exact, int64 (converted by the next float step); see _poisson.py
        if p.pmt:
            if not p.poisson:
                check_nonneg_image(x, "counts")  # as pmt_noise: σ(k) = sqrt(k)·σ₁ needs k >= 0
            x = _pmt_core(x, _pmt_s1(p.pmt_photons, p.pmt_efficiency, p.pmt_dynode_gain, p.pmt_photon_variance), rng)
        if p.dwell_time is not None:
            kw = fast_scan_params(p.dwell_time, detector_time=p.detector_time, readout_decay=p.readout_decay,
                                  readout_period=p.readout_period, readout_phase=p.readout_phase)
            x = _convolve_rows(x, _cached_psf(kw["alpha"], kw["beta"], kw["gamma"], kw["theta"], w))
        if x.dtype != np.float64 or x is counts:
            x = x.astype(np.float64)  # own float64 buffer for the in-place artefacts below
        # saturation level from the signal range before the outlier artefacts (see upper_clip)
        t_clip = None if p.clip_fraction is None else _clip_threshold(x, p.clip_fraction)
        if p.row_line_count > 0:
            _row_lines_inplace(x, p.row_line_count, p.row_line_length, ROW_LINE_FACTORS, rng)
        flat = x.reshape(b, h * w)
        if p.black_pixel_fraction > 0:
            for f, idx in enumerate(_random_pixel_indices(b, h * w, p.black_pixel_fraction, rng)):
                flat[f, idx] = 0.0
        if p.zinger_fraction > 0:
            _zingers_inplace(flat, _random_pixel_indices(b, h * w, p.zinger_fraction, rng), p.zinger_strength,
                             rng)
        if t_clip is not None:
            np.minimum(x, t_clip, out=x)
        if p.adc_gain is not None:
            _quantise_inplace(x, p.adc_gain)
        return x, dx, dy


class TEMDistortion:
    """TEM (CCD/CMOS camera) distortion pipeline built from ``TEMParams``.

    Order of operations (Lobato et al. 2023, eqs. 27–40): expected counts -> MTF (27–29) -> shot noise (30)
    -> fixed-pattern noise (31) -> dark current with shot noise (32–33) -> thermal (34) -> flicker (35) ->
    reset (36) -> black-pixel clusters (37) -> zinger clusters (38) -> upper clip (39) -> quantisation (40).
    Fixed-pattern quantities (FPN gain, dark-current map, black pixels) are drawn once per call and shared by
    all frames of a (B, H, W) stack, like a real sensor; temporal noise is independent per frame. Note that
    the paper embeds the MTF in the *target* image as well; apply ``apply_mtf`` to the target if you need
    that.

    Parameters
    ----------
    params : TEMParams
        Parameters (default: shot noise only).
    """

    def __init__(self, params: TEMParams | None = None):
        if params is None:
            params = TEMParams()
        if not isinstance(params, TEMParams):
            raise TypeError(f"params must be a TEMParams, got {type(params).__name__}")
        self.params = params

    def __repr__(self) -> str:
        return f"TEMDistortion({self.params!r})"

    def __call__(self, image, *, dose, pixel_size, rng=None) -> DistortedImage:
        """Distort ``image`` (normalised intensity, (H, W) or (B, H, W)).

        ``dose`` [e⁻/Å²], ``pixel_size`` [Å]; ``rng`` is an int, a numpy Generator or None.
        Returns a ``DistortedImage``.
        """
        counts, squeeze, dose, pixel_size = _prepare(image, dose, pixel_size)
        p = self.params
        rng = as_rng(rng)
        b, h, w = counts.shape
        x = counts
        if p.mtf is not None:
            x = np.maximum(apply_mtf(x, a=p.mtf[0], b=p.mtf[1], c=p.mtf[2]), 0.0)
        if p.shot_noise:
            x = rng.poisson(x).astype(np.float64)
        if p.fpn_sigma > 0:
            x = fixed_pattern_noise(x, sigma=p.fpn_sigma, rng=rng)
        if p.dark_mean > 0:
            dcnu = dark_current((h, w), mean=p.dark_mean, std=p.dark_std,
                                hot_fraction=p.hot_pixel_fraction, rng=rng)
            x = dark_current_noise(x, dcnu, shot_noise=p.dark_shot_noise, rng=rng)
        if p.thermal_sigma > 0:
            x = thermal_noise(x, sigma=p.thermal_sigma, rng=rng)
        if p.flicker_sigma > 0:
            x = flicker_noise(x, sigma=p.flicker_sigma, rng=rng)
        if p.reset_sigma > 0:
            x = reset_noise(x, sigma=p.reset_sigma, rng=rng)
        # saturation level from the signal range before the outlier artefacts (see upper_clip)
        t_clip = None if p.clip_fraction is None else _clip_threshold(x, p.clip_fraction)
        if p.black_pixel_count > 0:
            bm = random_walk_mask((h, w), count=p.black_pixel_count, steps=p.cluster_steps, rng=rng)
            x = black_pixels(x, bm)
        if p.zinger_count > 0:
            zm = np.stack([random_walk_mask((h, w), count=p.zinger_count, steps=p.cluster_steps, rng=rng)
                           for _ in range(b)])
            x = zingers(x, zm, strength=p.zinger_strength, rng=rng)
        if t_clip is not None:
            x = np.minimum(x, t_clip)
        if p.adc_gain is not None:
            x = quantise(x, adc_gain=p.adc_gain)
        if x is counts:
            x = counts.copy()
        disp = np.zeros((b, 2, h, w))
        if squeeze:
            x, disp = x[0], disp[0]
        return DistortedImage(image=x, displacement=disp, params=p, dose=dose, pixel_size=pixel_size)
