"""Random-parameter samplers for training (Lobato et al. 2023 ranges and probabilities, where published).

Published: jitter occurs with probability 0.9, split X / Y / XY = 0.25 / 0.25 / 0.5, σ ∈ U[0.0025, 0.8] Å,
φ ∈ U[0, 0.7] (STEM); the MTF parameters are redrawn until MTF_r is positive and decreasing (TEM). Every other
probability and range below is our choice (the paper does not publish them) and is listed in
docs/distortions.md.
"""

from __future__ import annotations

import numpy as np

from stemquant._validate import as_rng

from ._params import STEMParams, TEMParams
from ._tem import check_mtf_params

# (probability, range) choices not given in the paper; see docs/distortions.md
STEM_PROBABILITIES = {
    "jitter": 0.9,  # paper
    "pmt": 0.5,
    "fast_scan": 0.5,
    "row_lines": 0.2,
    "black_pixels": 0.2,
    "zingers": 0.2,
    "clip": 0.1,
    "quantise": 0.3,
}
TEM_PROBABILITIES = {
    "mtf": 0.8,
    "fpn": 0.5,
    "dark": 0.5,
    "thermal": 0.5,
    "flicker": 0.3,
    "reset": 0.3,
    "black_pixels": 0.2,
    "zingers": 0.2,
    "clip": 0.1,
    "quantise": 0.3,
}


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    """One draw, uniform in log between lo and hi."""
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def sample_stem_params(rng=None) -> STEMParams:
    """Draw random STEM distortion parameters for training.

    Jitter (Lobato et al. 2023, after eq. 42): present with probability 0.9; then X only, Y only or both with
    probabilities 0.25, 0.25, 0.5; σ_t ~ U[0.0025, 0.8] Å (``jitter_unit="Å"``), φ_t ~ U[0, 0.7]; bicubic
    interpolation. Poisson noise is always on. The other effects use ``STEM_PROBABILITIES`` and the ranges in
    the code (our choices, docs/distortions.md). Draws are sequential from one generator, in a fixed order
    that does not depend on earlier outcomes, so a given seed always consumes the same stream.

    Parameters
    ----------
    rng : int, numpy.random.Generator or None

    Returns
    -------
    STEMParams
    """
    rng = as_rng(rng)
    pr = STEM_PROBABILITIES
    u = rng.random(8)
    jit_mode = rng.choice(3, p=[0.25, 0.25, 0.5])  # 0: X, 1: Y, 2: XY
    sig = rng.uniform(0.0025, 0.8, size=2)
    phi = rng.uniform(0.0, 0.7, size=2)
    has_jitter = u[0] < pr["jitter"]
    sigma_x = float(sig[0]) if has_jitter and jit_mode in (0, 2) else 0.0
    sigma_y = float(sig[1]) if has_jitter and jit_mode in (1, 2) else 0.0
    pmt_vals = (rng.uniform(50, 300), rng.uniform(0.1, 0.4), rng.uniform(3.0, 6.0))
    dwell = _log_uniform(rng, 0.05e-6, 2e-6)
    time_scale = rng.uniform(0.5, 2.0, size=3)
    phase = rng.uniform(np.pi / 4, np.pi / 2)
    row_count = int(rng.integers(1, 6))
    row_len = rng.uniform(0.05, 0.5)
    black = _log_uniform(rng, 1e-4, 1e-2)
    zing = _log_uniform(rng, 1e-5, 1e-3)
    clip = rng.uniform(0.7, 0.99)
    adc = _log_uniform(rng, 0.5, 8.0)
    base = STEMParams()
    return STEMParams(
        phi_x=float(phi[0]), sigma_x=sigma_x, phi_y=float(phi[1]), sigma_y=sigma_y, jitter_unit="Å",
        interpolation="cubic", poisson=True, pmt=bool(u[1] < pr["pmt"]),
        pmt_photons=float(pmt_vals[0]), pmt_efficiency=float(pmt_vals[1]), pmt_dynode_gain=float(pmt_vals[2]),
        dwell_time=dwell if u[2] < pr["fast_scan"] else None,
        detector_time=base.detector_time * float(time_scale[0]),
        readout_decay=base.readout_decay * float(time_scale[1]),
        readout_period=base.readout_period * float(time_scale[2]), readout_phase=float(phase),
        row_line_count=row_count if u[3] < pr["row_lines"] else 0, row_line_length=float(row_len),
        black_pixel_fraction=black if u[4] < pr["black_pixels"] else 0.0,
        zinger_fraction=zing if u[5] < pr["zingers"] else 0.0,
        clip_fraction=float(clip) if u[6] < pr["clip"] else None,
        adc_gain=adc if u[7] < pr["quantise"] else None,
    )


def _sample_mtf(rng: np.random.Generator) -> tuple[float, float, float]:
    """Redraw (a, b, c) until MTF_r is positive and monotonically decreasing (paper's acceptance rule)."""
    while True:
        a, b, c = rng.uniform(0.0, 1.2), rng.uniform(0.1, 1.0), rng.uniform(0.3, 3.0)
        try:
            return check_mtf_params(a, b, c)
        except ValueError:
            continue


def sample_tem_params(rng=None) -> TEMParams:
    """Draw random TEM camera-distortion parameters for training.

    The MTF (a, b, c) is redrawn until MTF_r is positive and decreasing on [0, 10] Nyquist (Lobato et al.
    2023, after eq. 29). Shot noise is always on. The other effects use ``TEM_PROBABILITIES`` and the ranges
    in the code (our choices, docs/distortions.md). The same seed always gives the same parameters.

    Parameters
    ----------
    rng : int, numpy.random.Generator or None

    Returns
    -------
    TEMParams
    """
    rng = as_rng(rng)
    pr = TEM_PROBABILITIES
    u = rng.random(10)
    mtf = _sample_mtf(rng)
    fpn = rng.uniform(0.0, 0.05)
    dark_mean = _log_uniform(rng, 0.01, 1.0)
    dark_std = dark_mean * rng.uniform(0.1, 1.0)
    hot = rng.uniform(0.0, 1e-3)
    thermal = rng.uniform(0.0, 2.0)
    flicker = rng.uniform(0.0, 1.0)
    reset = rng.uniform(0.0, 1.0)
    n_black = int(rng.integers(1, 21))
    n_zing = int(rng.integers(1, 11))
    steps = int(rng.integers(0, 21))
    clip = rng.uniform(0.7, 0.99)
    adc = _log_uniform(rng, 0.5, 8.0)
    has_dark = u[2] < pr["dark"]
    return TEMParams(
        mtf=mtf if u[0] < pr["mtf"] else None, shot_noise=True,
        fpn_sigma=float(fpn) if u[1] < pr["fpn"] else 0.0,
        dark_mean=dark_mean if has_dark else 0.0, dark_std=float(dark_std) if has_dark else 0.0,
        hot_pixel_fraction=float(hot) if has_dark else 0.0,
        thermal_sigma=float(thermal) if u[3] < pr["thermal"] else 0.0,
        flicker_sigma=float(flicker) if u[4] < pr["flicker"] else 0.0,
        reset_sigma=float(reset) if u[5] < pr["reset"] else 0.0,
        black_pixel_count=n_black if u[6] < pr["black_pixels"] else 0,
        zinger_count=n_zing if u[7] < pr["zingers"] else 0, cluster_steps=steps,
        clip_fraction=float(clip) if u[8] < pr["clip"] else None,
        adc_gain=adc if u[9] < pr["quantise"] else None,
    )
