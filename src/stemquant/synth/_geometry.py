"""Geometry helpers: render grid, rotations, lattice slabs, wedges and 3-D shapes as thickness maps."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.fft import next_fast_len
from scipy.spatial import ConvexHull

PAD_LENGTH = 7.5  # [Å] wanted margin around the image (about 5 r_m for the widest profile)


@dataclass(frozen=True)
class Grid:
    """The padded, periodic render grid around an image of ``shape`` with pixel size ``pixel_size`` [Å].

    Grid pixel (gi, gj) is image pixel (gi - pad, gj - pad); the grid covers x in [-pad p, (Wg - pad) p).
    """

    shape: tuple[int, int]
    pixel_size: float
    pad: int
    grid_shape: tuple[int, int]

    @classmethod
    def for_image(cls, shape: tuple[int, int], pixel_size: float) -> Grid:
        """Pad by ~7.5 Å (8 px to a quarter of the larger side), grid rounded to a fast FFT size."""
        h, w = shape
        pad = int(np.clip(np.ceil(PAD_LENGTH / pixel_size), 8, max(8, max(h, w) // 4)))
        return cls(shape=(h, w), pixel_size=pixel_size, pad=pad,
                   grid_shape=(next_fast_len(h + 2 * pad, real=True), next_fast_len(w + 2 * pad, real=True)))

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(x0, x1, y0, y1) [Å] covered by the grid."""
        p, hg, wg = self.pixel_size, *self.grid_shape
        return -self.pad * p, (wg - self.pad) * p, -self.pad * p, (hg - self.pad) * p

    def centres(self) -> tuple[np.ndarray, np.ndarray]:
        """x (1, Wg) and y (Hg, 1) of the grid pixel centres [Å]."""
        p = self.pixel_size
        x = (np.arange(self.grid_shape[1]) - self.pad + 0.5) * p
        y = (np.arange(self.grid_shape[0]) - self.pad + 0.5) * p
        return x[None, :], y[:, None]


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed 3-D rotation matrix (normalised Gaussian quaternion)."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def axis_rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rotation by ``angle`` [rad] about unit vector ``axis`` (Rodrigues)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0, -a[2], a[1]], [a[2], 0, -a[0]], [-a[1], a[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def align_to_z(v: np.ndarray) -> np.ndarray:
    """A rotation matrix taking vector ``v`` onto +z."""
    v = np.asarray(v, dtype=np.float64) / np.linalg.norm(v)
    axis = np.cross(v, [0.0, 0.0, 1.0])
    s = np.linalg.norm(axis)
    if s < 1e-12:
        return np.eye(3) if v[2] > 0 else np.diag([1.0, -1.0, -1.0])
    return axis_rotation(axis, np.arctan2(s, v[2]))


@lru_cache(maxsize=512)
def unimodular_completion(uvw: tuple[int, int, int]) -> np.ndarray:
    """Integer rows (uvw, b1, b2) with determinant 1, b1 and b2 short (primitive ``uvw`` required)."""
    r = np.arange(-3, 4)
    c = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
    c = c[np.any(c != 0, axis=1)]
    cross = np.cross(c[:, None, :], c[None, :, :])
    det = cross @ np.asarray(uvw)
    i, j = np.nonzero(det == 1)
    if i.size == 0:
        raise ValueError(f"zone axis {uvw} is not a primitive lattice vector")
    cost = (c[i] ** 2).sum(1) + (c[j] ** 2).sum(1)
    k = int(np.argmin(cost))
    return np.stack([np.asarray(uvw), c[i[k]], c[j[k]]]).astype(np.float64)


def _gauss_reduce(e1: np.ndarray, e2: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lagrange-Gauss reduction of a 2-D basis; returns (e1', e2', M) with [e1'; e2'] = M [e1; e2]."""
    m = np.eye(2)
    for _ in range(100):
        if e1 @ e1 > e2 @ e2:
            e1, e2 = e2, e1
            m = m[::-1].copy()
        mu = np.round((e1 @ e2) / (e1 @ e1))
        if mu == 0:
            break
        e2 = e2 - mu * e1
        m[1] -= mu * m[0]
    return e1, e2, m


def lattice_slab(cell: np.ndarray, positions: np.ndarray, rotation: np.ndarray, uvw, extent,
                 offset: np.ndarray):
    """Atoms of the rotated crystal in one period slab along the lattice vector R = uvw . cell.

    The rotated crystal is invariant under translation by R' = rotation @ R (R'_z > 0 required), so the full
    crystal is the union of copies of the slab {0 <= z < R'_z} shifted by k R'. Returns the lateral positions
    (N, 2) [Å] of the slab atoms that fall in ``extent`` = (x0, x1, y0, y1), the index of each atom in
    ``positions``, and R' (3,).
    """
    basis = unimodular_completion(tuple(int(v) for v in uvw)) @ cell  # rows R, B1, B2 (cartesian)
    rb = basis @ rotation.T
    rvec, b1, b2 = rb
    if rvec[2] <= 0:
        raise ValueError("the repeat vector must point along +z after rotation")
    beta = np.array([b1[2], b2[2]]) / rvec[2]
    e1 = (b1 - beta[0] * rvec)[:2]
    e2 = (b2 - beta[1] * rvec)[:2]
    e1, e2, m = _gauss_reduce(e1, e2)
    beta = m @ beta
    off = (positions @ rotation.T) + offset  # (M, 3) atom offsets
    x0, x1, y0, y1 = extent
    margin = (np.linalg.norm(rvec[:2]) * (1 + np.abs(off[:, 2]).max() / rvec[2])
              + np.abs(off[:, :2]).max() + 1.0)
    corners = np.array([[x0 - margin, y0 - margin], [x1 + margin, y0 - margin],
                        [x0 - margin, y1 + margin], [x1 + margin, y1 + margin]])
    ij = corners @ np.linalg.inv(np.stack([e1, e2]))
    lo, hi = np.floor(ij.min(0)).astype(int), np.ceil(ij.max(0)).astype(int)
    ii, jj = np.meshgrid(np.arange(lo[0], hi[0] + 1), np.arange(lo[1], hi[1] + 1), indexing="ij")
    ii, jj = ii.ravel().astype(np.float64), jj.ravel().astype(np.float64)
    base = np.outer(ii, e1) + np.outer(jj, e2)  # (L, 2)
    c0 = ii * beta[0] + jj * beta[1]  # coefficient of R at the lattice point
    c = c0[:, None] + off[None, :, 2] / rvec[2]  # (L, M)
    c_r = c0[:, None] - np.floor(c)  # shift to bring z into [0, R_z)
    xy = base[:, None, :] + off[None, :, :2] + c_r[..., None] * rvec[:2]
    xy = xy.reshape(-1, 2)
    idx = np.broadcast_to(np.arange(off.shape[0]), c.shape).ravel()
    keep = (xy[:, 0] >= x0) & (xy[:, 0] < x1) & (xy[:, 1] >= y0) & (xy[:, 1] < y1)
    return xy[keep], idx[keep], rvec


def chord_length(planes: np.ndarray, x: np.ndarray, y: np.ndarray, z0, z1) -> np.ndarray:
    """Length along z of {z0 <= z <= z1} inside the convex set {n . p + d <= 0 for all planes (n, d)}.

    ``planes`` has shape (P, 4) rows (nx, ny, nz, d); x, y, z0, z1 broadcast to the output shape.
    """
    lo = np.broadcast_to(np.asarray(z0, dtype=np.float64), np.broadcast_shapes(x.shape, y.shape)).copy()
    hi = np.broadcast_to(np.asarray(z1, dtype=np.float64), lo.shape).copy()
    for nx, ny, nz, d in planes:
        rhs = -(d + nx * x + ny * y)  # nz z <= rhs
        if abs(nz) < 1e-12:
            hi = np.where(rhs < 0, -np.inf, hi)
        elif nz > 0:
            hi = np.minimum(hi, rhs / nz)
        else:
            lo = np.maximum(lo, rhs / nz)
    return np.clip(hi - lo, 0.0, None)


def polygon_rod_planes(centre, axis, radius: float, n_vertices: int, rng: np.random.Generator) -> np.ndarray:
    """Side planes of an infinite prism whose cross-section is a random polygon on a circle."""
    axis = axis / np.linalg.norm(axis)
    u = np.cross(axis, [1.0, 0.0, 0.0] if abs(axis[0]) < 0.9 else [0.0, 1.0, 0.0])
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    phi = np.sort(rng.uniform(0, 2 * np.pi, n_vertices))
    mids = 0.5 * (phi + np.roll(phi, -1))
    mids[-1] += np.pi  # wrap-around edge
    half = 0.5 * np.mod(np.roll(phi, -1) - phi, 2 * np.pi)
    # signed distance from the centre to each edge line; negative for a gap > 180 deg, where the polygon does
    # not contain the centre (clamping it at 0 would push that edge out beyond the circle)
    dist = radius * np.cos(half)
    normals = np.cos(mids)[:, None] * u + np.sin(mids)[:, None] * v
    d = -(normals @ np.asarray(centre) + dist)
    return np.column_stack([normals, d])


def polyhedron_planes(centre, radius: float, n_vertices: int, rng: np.random.Generator) -> np.ndarray:
    """Facet planes of the convex hull of ``n_vertices`` random points on a sphere of ``radius``."""
    for _ in range(20):
        p = rng.normal(size=(n_vertices, 3))
        p = p / np.linalg.norm(p, axis=1, keepdims=True) * radius + np.asarray(centre)
        try:
            return ConvexHull(p).equations
        except Exception:  # noqa: BLE001 - degenerate (coplanar) draw, redraw
            continue
    return np.zeros((0, 4))
