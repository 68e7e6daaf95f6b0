"""One random, normalised, undistorted image: specimen -> eq. (16) render -> eqs. (23)-(26)."""

from __future__ import annotations

import numpy as np

from stemquant._validate import as_rng

from ._lowres import lowres_image
from ._post import postprocess
from ._profiles import sample_profiles
from ._render import render_specimen
from ._specimen import _check_shape, sample_specimen

IMAGE_KINDS = ("hrstem", "lowres", "any")
P_HRSTEM = 0.75  # share of high/medium-resolution images when kind="any"
MAX_REDRAWS = 20


def random_clean_image(shape=(256, 256), *, rng=None, kind: str = "hrstem", pixel_size: float | None = None
                       ) -> np.ndarray:
    """Draw one random undistorted training image.

    Parameters
    ----------
    shape : tuple of int
        Image shape (H, W) [pixels], each at least 8.
    rng : int or numpy.random.Generator, optional
        Random source.
    kind : {"hrstem", "lowres", "any"}
        "hrstem": a random specimen (crystalline / amorphous / points, with support) rendered with eqs.
        (16)-(22); "lowres": particles, grains, bands, boxes and cracks; "any": hrstem with p = 0.75.
    pixel_size : float, optional
        Pixel size [Å] of an hrstem specimen; drawn from U[0.025, 0.90] Å when None. Ignored for lowres.

    Returns
    -------
    ndarray, shape (H, W), float64
        Normalised intensity: non-negative, maximum exactly 1, Std/Mean in [0.01, 0.35] (eqs. 23-26).

    Notes
    -----
    Implements the undistorted data generation of Lobato et al. (eqs. 16-26). A specimen without any atom in
    the field of view, and an image whose std/mean constraint cannot be met (e.g. an empty field of view), are
    redrawn from the same generator.

    Examples
    --------
    >>> img = random_clean_image((64, 64), rng=0)
    >>> img.shape, float(img.max()), bool(img.min() >= 0)
    ((64, 64), 1.0, True)
    """
    h, w = _check_shape(shape)
    if kind not in IMAGE_KINDS:
        raise ValueError(f"kind must be one of {IMAGE_KINDS}, got {kind!r}")
    rng = as_rng(rng)
    for _ in range(MAX_REDRAWS):
        this = kind if kind != "any" else ("hrstem" if rng.random() < P_HRSTEM else "lowres")
        if this == "hrstem":
            spec = sample_specimen((h, w), rng=rng, pixel_size=pixel_size)
            if spec.numbers.size == 0:
                # No atom at all (e.g. an amorphous layer whose kept shape misses the wedge, without support):
                # an empty field of view like the all-zero render below, so redraw instead of letting
                # sample_profiles reject the empty species list.
                continue
            linear = render_specimen(spec, sample_profiles(spec.numbers, rng=rng))
        else:
            linear = lowres_image((h, w), rng)
        if not np.any(linear > 0):
            continue
        try:
            return postprocess(linear, rng=rng)
        except ValueError:
            continue
    raise RuntimeError(f"no valid image after {MAX_REDRAWS} draws; this indicates a bug in stemquant.synth")
