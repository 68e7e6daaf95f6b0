"""Distortion and noise models for STEM and TEM images (Lobato et al. 2023; Friedrich 2023, chapter 2).

Clean normalised images go in, distorted images in detector counts come out: the expected counts of a pixel
are ``intensity · dose · pixel_size²``. See docs/distortions.md for the model choices.

References
----------
Lobato, I., Friedrich, T. & Van Aert, S. Deep convolutional neural networks to restore single-shot electron
microscopy images. npj Comput. Mater. (2024); arXiv:2303.17025, doi:10.48550/arXiv.2303.17025.
Friedrich, T. PhD thesis, University of Antwerp (2023), chapter 2.
"""

from ._artifacts import (
    black_pixels,
    quantise,
    random_pixel_mask,
    random_walk_mask,
    row_line_noise,
    upper_clip,
    zingers,
)
from ._detector import pmt_noise, pmt_sigma, poisson_noise
from ._fastscan import DWELL_TIME_PRESETS, apply_fast_scan, fast_scan_params, fast_scan_psf
from ._jitter import apply_jitter, ar1_jitter, jitter_displacement
from ._params import STEMParams, TEMParams
from ._pipeline import DistortedImage, STEMDistortion, TEMDistortion
from ._post import affine_interpolate, annotate, crop_fill, gaussian_blur, random_affine_matrix
from ._sample import sample_stem_params, sample_tem_params
from ._tem import (
    apply_mtf,
    dark_current,
    dark_current_noise,
    fixed_pattern_noise,
    flicker_noise,
    reset_noise,
    tem_mtf,
    thermal_noise,
)

__all__ = [
    "DWELL_TIME_PRESETS",
    "DistortedImage",
    "STEMDistortion",
    "STEMParams",
    "TEMDistortion",
    "TEMParams",
    "affine_interpolate",
    "annotate",
    "apply_fast_scan",
    "apply_jitter",
    "apply_mtf",
    "ar1_jitter",
    "black_pixels",
    "crop_fill",
    "dark_current",
    "dark_current_noise",
    "fast_scan_params",
    "fast_scan_psf",
    "fixed_pattern_noise",
    "flicker_noise",
    "gaussian_blur",
    "jitter_displacement",
    "pmt_noise",
    "pmt_sigma",
    "poisson_noise",
    "quantise",
    "random_affine_matrix",
    "random_pixel_mask",
    "random_walk_mask",
    "reset_noise",
    "row_line_noise",
    "sample_stem_params",
    "sample_tem_params",
    "tem_mtf",
    "thermal_noise",
    "upper_clip",
    "zingers",
]
