"""Random training data: specimens, undistorted images and (noisy, clean) pairs (Lobato et al., eqs. 16-26).

Data flow: :func:`sample_specimen` -> :func:`render_specimen` (with :func:`sample_profiles`) ->
:func:`postprocess` = :func:`random_clean_image`; :class:`PairDataset` adds a distortion. See docs/synth.md.
"""

from ._dataset import PairDataset, default_distortion, poisson_distortion, stem_distortion, tem_distortion, worker_rng
from ._image import random_clean_image
from ._lowres import lowres_image
from ._post import postprocess
from ._profiles import AtomProfiles, profile, profile_spectrum, sample_profiles
from ._render import render_specimen
from ._specimen import Layer, SpecimenParams, sample_specimen

__all__ = [
    "AtomProfiles",
    "Layer",
    "PairDataset",
    "SpecimenParams",
    "default_distortion",
    "lowres_image",
    "poisson_distortion",
    "postprocess",
    "profile",
    "profile_spectrum",
    "random_clean_image",
    "render_specimen",
    "sample_profiles",
    "sample_specimen",
    "stem_distortion",
    "tem_distortion",
    "worker_rng",
]
