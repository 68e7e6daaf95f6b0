"""Low-resolution undistorted images (Lobato et al., 'generating low-resolution images')."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.draw import ellipse, polygon

from stemquant._validate import as_rng

from ._specimen import _check_shape

LOWRES_TYPES = ("soft", "sharp", "grains", "bands", "boxes", "cracks")


def _plane(shape, rng: np.random.Generator, yy=None, xx=None) -> np.ndarray:
    """Random positive 3-D plane: height U[0.2, 1] tilted by at most +-50 % across the image."""
    h, w = shape
    if yy is None:
        yy, xx = np.mgrid[0:h, 0:w]
    phi = rng.uniform(0, 2 * np.pi)
    s = ((xx - w / 2) * np.cos(phi) + (yy - h / 2) * np.sin(phi)) / np.hypot(h, w)
    return rng.uniform(0.2, 1.0) * (1.0 + rng.uniform(-1.0, 1.0) * s)


def _soft_particles(shape, rng):
    """15..85 rotated anisotropic eq. (17) profiles with r_y = alpha r_x, alpha ~ U[0.8, 1.2]."""
    h, w = shape
    out = np.zeros(shape)
    for _ in range(int(rng.integers(15, 86))):
        rx = np.exp(rng.uniform(np.log(1.5), np.log(max(2.0, 0.06 * min(h, w)))))
        ry = rx * rng.uniform(0.8, 1.2)
        hh = rng.uniform(0.5, 1.0, 3)
        n = rng.uniform(4, 16)
        th = rng.uniform(0, np.pi)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rad = int(np.ceil(6 * max(rx, ry)))
        i0, i1 = max(0, int(cy) - rad), min(h, int(cy) + rad + 1)
        j0, j1 = max(0, int(cx) - rad), min(w, int(cx) + rad + 1)
        if i0 >= i1 or j0 >= j1:
            continue
        yy, xx = np.mgrid[i0:i1, j0:j1]
        dx, dy = xx + 0.5 - cx, yy + 0.5 - cy
        u = np.hypot((dx * np.cos(th) + dy * np.sin(th)) / rx, (-dx * np.sin(th) + dy * np.cos(th)) / ry)
        out[i0:i1, j0:j1] += hh[0] * np.exp(-0.5 * u**2) + hh[1] * np.exp(-u) + hh[2] / (1 + u ** (2 * n))
    return out


def _sharp_particles(shape, rng):
    """15..40 polygons (3..5 vertices) or ellipses (p = 0.5) filled with a random positive plane."""
    h, w = shape
    out = np.zeros(shape)
    plane = _plane(shape, rng)
    for _ in range(int(rng.integers(15, 41))):
        r = rng.uniform(2.0, max(3.0, 0.1 * min(h, w)))
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if rng.random() < 0.5:
            ang = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 6))))
            rr, cc = polygon(cy + r * np.sin(ang), cx + r * np.cos(ang), shape=shape)
        else:
            rr, cc = ellipse(cy, cx, r, r * rng.uniform(0.3, 1.0), shape=shape,
                             rotation=rng.uniform(0, np.pi))
        out[rr, cc] += plane[rr, cc] * rng.uniform(0.5, 1.5)
    return out


def _grains(shape, rng):
    """Voronoi grains (15..175 seeds), each a random positive plane; border lines with p = 0.5."""
    h, w = shape
    n = int(rng.integers(15, 176))
    seeds = np.zeros(shape, dtype=bool)
    si, sj = rng.integers(0, h, n), rng.integers(0, w, n)
    seeds[si, sj] = True
    _, (ii, jj) = ndimage.distance_transform_edt(~seeds, return_indices=True)
    label_img = np.zeros(shape, dtype=np.int64)
    label_img[si, sj] = np.arange(1, n + 1)
    labels = label_img[ii, jj]
    yy, xx = np.mgrid[0:h, 0:w]
    c0 = rng.uniform(0.2, 1.0, n + 1)
    phi = rng.uniform(0, 2 * np.pi, n + 1)
    slope = rng.uniform(-1.0, 1.0, n + 1)
    s = ((xx - w / 2) * np.cos(phi[labels]) + (yy - h / 2) * np.sin(phi[labels])) / np.hypot(h, w)
    out = c0[labels] * (1.0 + slope[labels] * s)
    if rng.random() < 0.5:
        border = np.zeros(shape, dtype=bool)
        border[:, :-1] |= labels[:, :-1] != labels[:, 1:]
        border[:-1, :] |= labels[:-1, :] != labels[1:, :]
        out[border] = rng.uniform(0.5, 1.5) * out.mean()
    return out


def _bands(shape, rng):
    """1..5 straight bands of random orientation and width, each a random positive plane."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    out = np.zeros(shape)
    for _ in range(int(rng.integers(1, 6))):
        phi = rng.uniform(0, np.pi)
        d = (xx - rng.uniform(0, w)) * np.cos(phi) + (yy - rng.uniform(0, h)) * np.sin(phi)
        mask = np.abs(d) < rng.uniform(1.0, 0.15 * min(h, w))
        out[mask] += _plane(shape, rng, yy, xx)[mask]
    return out


def _boxes(shape, rng):
    """1..10 rotated rectangles filled with random positive planes."""
    h, w = shape
    out = np.zeros(shape)
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, 11))):
        a, b = rng.uniform(2.0, 0.3 * min(h, w), 2)
        th = rng.uniform(0, np.pi)
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        corners = np.array([[-a, -b], [a, -b], [a, b], [-a, b]])
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        p = corners @ rot.T
        rr, cc = polygon(cy + p[:, 1], cx + p[:, 0], shape=shape)
        out[rr, cc] += _plane(shape, rng, yy[rr, cc], xx[rr, cc])
    return out


def _cracks(shape, rng) -> np.ndarray:
    """Multiplicative mask in [0, 1] of 1..5 random-walk cracks, 1..3 px wide, depth U[0.3, 1]."""
    h, w = shape
    mask = np.ones(shape)
    for _ in range(int(rng.integers(1, 6))):
        n = int(rng.integers(5, 30))
        step = rng.uniform(2.0, 0.05 * max(h, w) + 2.0)
        ang = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.4, n))
        y = rng.uniform(0, h) + np.cumsum(step * np.sin(ang))
        x = rng.uniform(0, w) + np.cumsum(step * np.cos(ang))
        line = np.zeros(shape, dtype=bool)
        t = np.linspace(0, 1, 8)[:, None]
        py = (y[:-1] + t * np.diff(y)).ravel()
        px = (x[:-1] + t * np.diff(x)).ravel()
        ok = (py >= 0) & (py < h) & (px >= 0) & (px < w)
        line[py[ok].astype(int), px[ok].astype(int)] = True
        width = int(rng.integers(1, 4))
        if width > 1:
            line = ndimage.binary_dilation(line, iterations=width - 1)
        mask[line] *= 1.0 - rng.uniform(0.3, 1.0)
    return mask


def lowres_image(shape, rng: int | np.random.Generator | None = None) -> np.ndarray:
    """Linear superposition of a random non-empty subset of the low-resolution object types.

    Each type of ("soft", "sharp", "grains", "bands", "boxes") enters with p = 0.5 (soft particles if none
    was drawn); cracks (p = 0.5) then darken the image multiplicatively. Object counts follow Lobato et al.
    where given (soft 15..85, sharp 15..40, grains 15..175 seeds); sizes, bands, boxes and cracks are our
    choices (docs/synth.md). Returns a non-negative (H, W) float64 image (not yet post-processed).
    ``shape`` is two integers >= 8 [pixels]; ``rng`` an int, a numpy Generator or None.
    """
    shape = _check_shape(shape)
    rng = as_rng(rng)
    makers = {"soft": _soft_particles, "sharp": _sharp_particles, "grains": _grains, "bands": _bands,
              "boxes": _boxes}
    chosen = [name for name in makers if rng.random() < 0.5] or ["soft"]
    out = np.zeros(shape)
    for name in chosen:
        part = makers[name](shape, rng)
        out += part / max(part.max(), 1e-12) * rng.uniform(0.3, 1.0)
    if rng.random() < 0.5:
        out *= _cracks(shape, rng)
    return out
