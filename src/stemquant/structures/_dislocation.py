"""Pt in the [112] zone axis with a Volterra edge dislocation b = 1/2[110] on (111)."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from stemquant._validate import check_positive

from ._bulk import PT_LATTICE_CONSTANT, _check_cells, _check_pair

#: Poisson ratio of Pt used for the isotropic displacement field (polycrystalline Pt, nu ~ 0.38).
PT_POISSON_RATIO = 0.38

#: Orientation of the dislocation model: rows are the cubic directions along x, y, z.
#: x || [1-10] (Burgers vector), y || [111] (glide-plane normal), z || [11-2] (line and beam direction).
ORIENTATION = np.array([[1.0, -1.0, 0.0], [1.0, 1.0, 1.0], [1.0, 1.0, -2.0]])


def _rotation() -> np.ndarray:
    """Rotation matrix mapping cubic coordinates to the dislocation frame (rows = unit axes)."""
    return ORIENTATION / np.linalg.norm(ORIENTATION, axis=1, keepdims=True)


def edge_displacement(x, y, *, b: float, nu: float = PT_POISSON_RATIO) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic-elasticity (Volterra) displacement of a straight edge dislocation along z.

    Burgers vector ``b`` along +x, glide plane y = 0, line through the origin; the cut (where ``u_x`` jumps by
    ``b``) is the half-plane ``x < 0, y = 0`` (``atan2`` branch). Hirth & Lothe, *Theory of Dislocations*
    (1982), eqs. (3-45), (3-46):

    ``u_x = b / (2 pi) [atan2(y, x) + x y / (2 (1 - nu) r^2)]``,
    ``u_y = -b / (2 pi) [(1 - 2 nu) / (4 (1 - nu)) ln(r^2) + (x^2 - y^2) / (4 (1 - nu) r^2)]``.

    Parameters
    ----------
    x, y : array_like
        Positions relative to the dislocation line [Å]; ``r > 0`` everywhere.
    b : float
        Burgers vector magnitude [Å].
    nu : float, optional
        Poisson ratio. Default 0.38 (Pt).

    Returns
    -------
    ux, uy : ndarray
        Displacements [Å], same shape as ``x``. ``u_y`` is defined up to a constant (``ln r^2`` with r in Å).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    r2 = x**2 + y**2
    if np.any(r2 <= 0):
        raise ValueError(
            "edge_displacement is singular on the dislocation line: offset the line from the atoms"
        )
    ux = b / (2 * np.pi) * (np.arctan2(y, x) + x * y / (2 * (1 - nu) * r2))
    uy = -b / (2 * np.pi) * ((1 - 2 * nu) / (4 * (1 - nu)) * np.log(r2) + (x**2 - y**2) / (4 * (1 - nu) * r2))
    return ux, uy


def _oriented_block(nx: int, ny: int, nz: int, a: float) -> tuple[np.ndarray, np.ndarray]:
    """Perfect fcc block in the dislocation frame; returns positions (N, 3) and the orthogonal cell."""
    rot = _rotation()
    # periods |1/2<110>|, |<111>|, |1/2<112>|
    periods = np.array([a * np.sqrt(2) / 2, a * np.sqrt(3), a * np.sqrt(6) / 2])
    lengths = periods * np.array([nx, ny, nz])
    # cubic lattice points covering the rotated box (generous bounds), then keep those inside
    corners = np.array([[i, j, k] for i in (0, 1) for j in (0, 1) for k in (0, 1)]) * lengths
    cub = corners @ rot  # frame -> cubic
    lo = np.floor(cub.min(axis=0) / a) - 1
    hi = np.ceil(cub.max(axis=0) / a) + 1
    axes = (np.arange(lo[i], hi[i] + 1) for i in range(3))
    g = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
    basis = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])
    pos = ((g[:, None, :] + basis[None]) * a).reshape(-1, 3) @ rot.T
    # shift so that no atom sits on a cell face, then keep the half-open box
    pos = pos + periods / 4
    eps = 1e-6
    inside = np.all((pos >= -eps) & (pos < lengths - eps), axis=1)
    return pos[inside], lengths


def pt_edge_dislocation(*, n_cells: int = 6, size: tuple[float, float] = (55.0, 55.0),
                        a: float = PT_LATTICE_CONSTANT, nu: float = PT_POISSON_RATIO) -> Atoms:
    """Pt slab in the [112] zone axis containing an edge dislocation b = 1/2[110] on the (111) glide plane.

    Friedrich (2023), Fig. 2.8, built the model with Atomsk; here the same isotropic-elasticity (Volterra)
    field (``edge_displacement``, Poisson ratio ``nu = 0.38``) displaces a perfect block oriented
    x || [1-10] (b), y || [111] (glide-plane normal), z || [11-2] (dislocation line = beam). The line runs
    through the block centre, midway between two (111) planes and two projected columns, so no atom sits on
    it.

    Parameters
    ----------
    n_cells : int, optional
        Thickness along the beam in periods of 1/2[11-2] (``a sqrt(6)/2 = 4.80`` Å for Pt). Default 6
        ("six unit cells thick"; the choice of period is documented in docs/simulation.md).
    size : tuple of float, optional
        Approximate lateral extent (x, y) [Å], rounded to whole periods of the oriented lattice
        (``a/sqrt(2)`` along x, ``a sqrt(3)`` along y). Default (55, 55).
    a : float, optional
        Lattice constant [Å]. Default 3.92.
    nu : float, optional
        Poisson ratio. Default 0.38.

    Returns
    -------
    atoms : ase.Atoms
        ``pbc = (False, False, True)``: free surfaces in x and y (the displacement field is not periodic),
        periodic along the line. ``atoms.info`` holds ``burgers_vector`` (Å, frame coordinates),
        ``line_position`` (x, y) [Å] and ``poisson_ratio``.
        The displacements push the columns at the left face below the glide plane slightly outside the cell
        (x < 0, down to about -0.7 Å): drop them before fitting an image of the cell.
    """
    nz = _check_cells(n_cells, "n_cells")
    a = check_positive(a, "a", "Å")
    if not 0.0 <= nu < 0.5:
        raise ValueError(f"nu must lie in [0, 0.5) (Poisson ratio, dimensionless), got {nu}")
    sx, sy = _check_pair(size, "size", "Å")
    sx = check_positive(sx, "size[0]", "Å")
    sy = check_positive(sy, "size[1]", "Å")
    nx = max(int(round(sx / (a * np.sqrt(2) / 2))), 4)
    ny = max(int(round(sy / (a * np.sqrt(3)))), 2)
    pos, lengths = _oriented_block(nx, ny, nz, a)
    b = a / np.sqrt(2)
    x0 = _midway(pos[:, 0], lengths[0] / 2)
    y0 = _midway(pos[:, 1], lengths[1] / 2)
    ux, uy = edge_displacement(pos[:, 0] - x0, pos[:, 1] - y0, b=b, nu=nu)
    # remove the arbitrary constant of u_y so that the far field stays centred in the cell
    uy = uy - np.median(uy)
    pos = pos + np.stack([ux, uy, np.zeros_like(ux)], axis=1)
    atoms = Atoms(symbols=["Pt"] * len(pos), positions=pos, cell=lengths, pbc=(False, False, True))
    atoms.info.update(burgers_vector=(b, 0.0, 0.0), line_position=(x0, y0), poisson_ratio=nu)
    return atoms


def _midway(values: np.ndarray, target: float) -> float:
    """Midpoint between the two distinct coordinate values that bracket ``target``."""
    u = np.unique(np.round(values, 6))
    i = int(np.searchsorted(u, target))
    i = min(max(i, 1), len(u) - 1)
    return float((u[i - 1] + u[i]) / 2)
