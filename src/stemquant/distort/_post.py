"""Post-processing distortions: interpolation (random affine), Gaussian blur, annotations, cropping.

Annotations and cropping act identically on a *pair* (or any sequence) of images, e.g. the ground truth and
the distorted image of a training pair, as in Lobato et al. (2023), section "Post-processing distortions".
"""

from __future__ import annotations

import string

import numpy as np
from scipy import ndimage

from stemquant._validate import as_rng, check_image

from ._checks import check_count, check_fraction, check_nonnegative, check_real


def _check_images(images) -> list[np.ndarray]:
    """A non-empty sequence of same-shape images."""
    if isinstance(images, np.ndarray):
        raise TypeError("images must be a sequence of arrays (e.g. [target, distorted]), not a single array")
    arrs = [check_image(im, name=f"images[{k}]") for k, im in enumerate(images)]
    if not arrs:
        raise ValueError("images must contain at least one image")
    if any(a.shape != arrs[0].shape for a in arrs):
        raise ValueError(f"images must all have the same shape, got {[a.shape for a in arrs]}")
    return arrs


def random_affine_matrix(*, rng=None, max_rotation=180.0, scale_range=(0.9, 1.1),
                         max_shear=0.1) -> np.ndarray:
    """Draw a random 2×2 linear map (rotation × anisotropic scale × shear) acting on (x, y) [px].

    Parameters
    ----------
    rng : int, numpy.random.Generator or None
    max_rotation : float
        Rotation angle drawn from U(−max, max) [degrees].
    scale_range : tuple of float
        Scale factors along x and y drawn independently from this range [dimensionless].
    max_shear : float
        Shear drawn from U(−max, max) [dimensionless].

    Returns
    -------
    ndarray, shape (2, 2)
    """
    rng = as_rng(rng)
    max_rotation = check_nonnegative(max_rotation, "max_rotation", "degrees")
    max_shear = check_nonnegative(max_shear, "max_shear")
    lo, hi = (float(v) for v in scale_range)
    if not 0 < lo <= hi:
        raise ValueError(f"scale_range must satisfy 0 < low <= high, got {scale_range}")
    ang = np.deg2rad(rng.uniform(-max_rotation, max_rotation))
    sx, sy = rng.uniform(lo, hi, size=2)
    sh = rng.uniform(-max_shear, max_shear)
    rot = np.array([[np.cos(ang), -np.sin(ang)], [np.sin(ang), np.cos(ang)]])
    return rot @ np.array([[1.0, sh], [0.0, 1.0]]) @ np.diag([sx, sy])


def affine_interpolate(image, matrix, *, order: int = 1, mode: str = "reflect") -> np.ndarray:
    """Resample each frame with a linear map about the image centre (interpolation distortion).

    Output pixel at offset ``r_out = (x, y)`` from the centre takes the input at ``matrix @ r_out``
    (pull-back). Applying the same call to the target and the distorted image keeps a training pair aligned.

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
    matrix : array_like, shape (2, 2)
        Linear map on (x, y) pixel offsets.
    order : int
        Spline order of ``scipy.ndimage.affine_transform`` (1 = bilinear, 3 = bicubic).
    mode : str
        Boundary mode of ``scipy.ndimage`` ("reflect", "nearest", "constant", ...).

    Returns
    -------
    ndarray, same shape
    """
    img = check_image(image)
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (2, 2) or not np.all(np.isfinite(m)):
        raise ValueError(f"matrix must be a finite (2, 2) array acting on (x, y), got shape {m.shape}")
    if order not in (0, 1, 2, 3, 4, 5):
        raise ValueError(f"order must be an integer spline order 0..5, got {order}")
    mrc = m[::-1, ::-1]  # (x, y) -> (row, col) ordering
    h, w = img.shape[-2:]
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    offset = centre - mrc @ centre
    frames = img.reshape((-1, h, w))
    out = np.stack([ndimage.affine_transform(f, mrc, offset=offset, order=order, mode=mode) for f in frames])
    return out.reshape(img.shape)


def gaussian_blur(image, *, sigma) -> np.ndarray:
    """Blur each frame with an isotropic Gaussian of standard deviation ``sigma`` [px] (0 = copy).

    The paper applies σ ∈ [0, 1] px to the distorted image only. Boundaries are reflected.
    """
    img = check_image(image)
    sigma = check_nonnegative(sigma, "sigma", "px")
    if sigma == 0:
        return img.copy()
    sig = (0.0,) * (img.ndim - 2) + (sigma, sigma)
    return ndimage.gaussian_filter(img, sig, mode="reflect")


def _text_mask(text: str, shape, x0: float, y0: float, height: float) -> np.ndarray:
    """Rasterise ``text`` with its baseline-left at (x0, y0) [px] and cap height ``height`` [px]."""
    from matplotlib.font_manager import FontProperties
    from matplotlib.textpath import TextPath
    from matplotlib.transforms import Affine2D

    path = TextPath((0, 0), text, size=height, prop=FontProperties(family="DejaVu Sans"))
    h, w = shape
    verts = path.vertices
    if verts.size == 0:
        return np.zeros(shape, dtype=bool)
    path = path.transformed(Affine2D().scale(1, -1).translate(x0, y0))
    (xmin, ymin), (xmax, ymax) = path.get_extents().get_points()
    j0, j1 = max(int(np.floor(xmin)), 0), min(int(np.ceil(xmax)) + 1, w)
    i0, i1 = max(int(np.floor(ymin)), 0), min(int(np.ceil(ymax)) + 1, h)
    mask = np.zeros(shape, dtype=bool)
    if j0 >= j1 or i0 >= i1:
        return mask
    jj, ii = np.meshgrid(np.arange(j0, j1), np.arange(i0, i1))
    pts = np.column_stack([jj.ravel(), ii.ravel()]).astype(np.float64)
    mask[i0:i1, j0:j1] = path.contains_points(pts).reshape(ii.shape)
    return mask


def _shape_mask(kind: str, shape, rng: np.random.Generator) -> np.ndarray:
    """One random annotation shape as a boolean mask."""
    from skimage import draw

    h, w = shape
    mask = np.zeros(shape, dtype=bool)
    s = min(h, w)
    if kind == "rectangle":
        r0, c0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        r1, c1 = rng.integers(r0 + 2, h + 1), rng.integers(c0 + 2, w + 1)
        rr, cc = draw.rectangle_perimeter((r0, c0), end=(r1 - 1, c1 - 1), shape=shape, clip=True)
    elif kind == "circle":
        rad = rng.integers(2, max(3, s // 4))
        rr, cc = draw.circle_perimeter(rng.integers(0, h), rng.integers(0, w), rad, shape=shape)
    elif kind == "line":
        rr, cc = draw.line(rng.integers(0, h), rng.integers(0, w), rng.integers(0, h), rng.integers(0, w))
    elif kind == "arrow":
        r0, c0, r1, c1 = rng.integers(0, h), rng.integers(0, w), rng.integers(0, h), rng.integers(0, w)
        rr, cc = draw.line(r0, c0, r1, c1)
        ang = np.arctan2(r1 - r0, c1 - c0)
        size = max(2.0, s / 20)
        tri_r = [r1, r1 - size * np.sin(ang - 0.5), r1 - size * np.sin(ang + 0.5)]
        tri_c = [c1, c1 - size * np.cos(ang - 0.5), c1 - size * np.cos(ang + 0.5)]
        pr, pc = draw.polygon(tri_r, tri_c, shape=shape)
        rr, cc = np.concatenate([rr, pr]), np.concatenate([cc, pc])
    else:  # scale bar: a filled bar
        bh = max(1, s // 40)
        bw = rng.integers(max(2, s // 10), max(3, s // 3))
        r0, c0 = rng.integers(0, h - bh + 1), rng.integers(0, w - bw + 1)
        rr, cc = draw.rectangle((r0, c0), extent=(bh, bw), shape=shape)
    rr = np.clip(rr, 0, h - 1)
    cc = np.clip(cc, 0, w - 1)
    mask[rr, cc] = True
    return mask


_SHAPES = ("rectangle", "circle", "line", "arrow", "scalebar")


def annotate(images, *, rng=None, count=3, text_probability=0.5) -> list[np.ndarray]:
    """Burn the same random annotations (shapes, arrows, scale bar, text) into every image of a sequence.

    Each annotation is drawn at the same pixels in all images, with value ``max`` or ``min`` of each image
    (chosen at random, the same choice for all images), as the paper does for training pairs.

    Parameters
    ----------
    images : sequence of ndarray, each shape (H, W) or (B, H, W)
        E.g. ``[target, distorted]``; all the same shape.
    rng : int, numpy.random.Generator or None
    count : int
        Number of shape annotations.
    text_probability : float
        Probability of adding one text label (e.g. "5 nm").

    Returns
    -------
    list of ndarray
        Annotated copies, in the input order.
    """
    arrs = _check_images(images)
    count = check_count(count, "count")
    text_probability = check_fraction(text_probability, "text_probability")
    rng = as_rng(rng)
    shape = arrs[0].shape[-2:]
    masks, bright = [], []
    for _ in range(count):
        masks.append(_shape_mask(_SHAPES[rng.integers(len(_SHAPES))], shape, rng))
        bright.append(bool(rng.random() < 0.5))
    if rng.random() < text_probability:
        chars = list(string.ascii_letters + string.digits)
        label = (f"{rng.integers(1, 100)} nm" if rng.random() < 0.5
                 else "".join(rng.choice(chars, size=rng.integers(1, 6))))
        height = rng.uniform(0.06, 0.15) * min(shape)
        x0 = rng.uniform(0, 0.6) * shape[1]
        y0 = rng.uniform(0.2, 1.0) * shape[0]
        masks.append(_text_mask(label, shape, x0, y0, height))
        bright.append(bool(rng.random() < 0.5))
    out = []
    for a in arrs:
        b = a.copy()
        hi = a.max(axis=(-2, -1), keepdims=True)
        lo = a.min(axis=(-2, -1), keepdims=True)
        for m, br in zip(masks, bright, strict=True):
            b = np.where(m, hi if br else lo, b)
        out.append(b)
    return out


def crop_fill(images, *, rng=None, fill="median", value=0.0, keep=0.5) -> list[np.ndarray]:
    """Replace random border bands (outside a central region) by a constant or the image median.

    A central rectangle covering ``keep`` of the area (same aspect ratio) is never touched; 1–4 randomly
    chosen sides get a band of random depth up to the central rectangle. Same bands in all images.

    Parameters
    ----------
    images : sequence of ndarray, each shape (H, W) or (B, H, W)
    rng : int, numpy.random.Generator or None
    fill : {"median", "constant"}
        Fill with each frame's median or with ``value``.
    value : float
        Constant fill value (same scale as the images).
    keep : float
        Area fraction of the protected central rectangle, in (0, 1].

    Returns
    -------
    list of ndarray
    """
    arrs = _check_images(images)
    if fill not in ("median", "constant"):
        raise ValueError(f"fill must be 'median' or 'constant', got {fill!r}")
    value = check_real(value, "value")
    keep = check_fraction(keep, "keep", allow_zero=False)
    rng = as_rng(rng)
    h, w = arrs[0].shape[-2:]
    side = np.sqrt(keep)
    mh, mw = int((h - round(side * h)) // 2), int((w - round(side * w)) // 2)
    mask = np.zeros((h, w), dtype=bool)
    sides = rng.permutation(4)[: rng.integers(1, 5)]
    for sd in sides:
        margin = mh if sd < 2 else mw
        if margin < 1:
            continue
        d = int(rng.integers(1, margin + 1))
        if sd == 0:
            mask[:d] = True
        elif sd == 1:
            mask[h - d:] = True
        elif sd == 2:
            mask[:, :d] = True
        else:
            mask[:, w - d:] = True
    out = []
    for a in arrs:
        fv = np.median(a, axis=(-2, -1), keepdims=True) if fill == "median" else value
        out.append(np.where(mask, fv, a))
    return out
