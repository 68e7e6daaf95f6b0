"""Random specimens (Lobato et al., 'Specimen generation') as projected layers ready for rendering.

A specimen is a list of :class:`Layer` objects. A crystalline layer stores the atoms of ONE period slab of the
crystal along a lattice vector R close to the beam; the full crystal is ``n_repeat`` copies of the slab, each
shifted laterally by R_xy, which the renderer applies exactly in Fourier space. Wedges and 3-D shapes become a
per-pixel occupancy map (fraction of the slab copies present along the beam). Amorphous layers are drawn
directly as a projected Poisson point process.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stemquant._validate import as_rng, check_pixel_size

from ._crystal import random_unit_cell
from ._geometry import (
    Grid,
    align_to_z,
    axis_rotation,
    chord_length,
    lattice_slab,
    polygon_rod_planes,
    polyhedron_planes,
    random_rotation,
)
from ._profiles import MAX_Z

PIXEL_SIZE_RANGE = (0.025, 0.90)  # [Å]
KIND_PROBABILITIES = {"crystalline": 0.6, "amorphous": 0.2, "points": 0.2}
ZONE_AXES = ((0, 0, 1), (0, 1, 0), (1, 0, 0), (0, 1, 1), (1, 0, 1), (1, 1, 0), (1, 1, 1), (1, 1, 2))
P_ZONE_AXIS = 0.75
MISTILT_STD = np.radians(5.0)
P_WEDGE = 0.75
WEDGE_ANGLE = (5.0, 45.0)  # [deg]
P_SHAPE = 0.5
P_KEEP = 0.5
P_DEFECT = 0.8
DEFECT_FRACTION = 0.25
MAX_DEFECTS = 20_000
P_SUPPORT = 0.95
SUPPORT_THICKNESS = (10.0, 300.0)  # [Å] = [1, 30] nm
SUPPORT_MAX_TYPES = 4
MASS_DENSITY = (2.0, 7.0)  # [g/cm^3]
AMORPHOUS_MIN_DIST = (0.95, 1.6)  # [Å]
N_POINTS = (1, 1500)
POINT_MIN_DIST = (1.0, 20.0)  # [pixels]
MAX_DRIFT_FRACTION = 0.75  # total lateral drift of the slab copies, as a fraction of the pad
EXPLICIT_POINT_BUDGET = 200_000
KINDS = ("crystalline", "amorphous", "points")


@dataclass(frozen=True)
class Layer:
    """One projected layer of a specimen.

    Attributes
    ----------
    positions : ndarray, shape (N, 2)
        Projected (x, y) atom positions [Å] in the image frame (may lie in the pad around the image).
    numbers : ndarray, shape (N,)
        Atomic numbers.
    weights : ndarray, shape (N,)
        Multiplicity of each position (1 for an atom; a count for a binned amorphous column; -1 removes an
        atom, used for vacancies and displaced atoms).
    repeat : ndarray, shape (2,)
        Lateral shift R_xy [Å] between consecutive slab copies along the beam.
    n_repeat : int
        Number of slab copies (1 for amorphous, points and defect layers).
    occupancy : ndarray, shape (Hg, Wg), or None
        Fraction of the ``n_repeat`` copies present at each grid pixel (wedges, shapes); None means all.
    """

    positions: np.ndarray
    numbers: np.ndarray
    weights: np.ndarray
    repeat: np.ndarray
    n_repeat: int
    occupancy: np.ndarray | None = None


@dataclass(frozen=True)
class SpecimenParams:
    """A random specimen projected onto the render grid of one image.

    Attributes
    ----------
    shape : tuple of int
        Image shape (H, W) [pixels].
    pixel_size : float
        Pixel size [Å].
    kind : str
        "crystalline", "amorphous" or "points".
    layers : tuple of Layer
        Specimen, defect and support layers.
    grid : Grid
        The padded periodic grid the layers are defined on.
    """

    shape: tuple[int, int]
    pixel_size: float
    kind: str
    layers: tuple[Layer, ...]
    grid: Grid

    @property
    def numbers(self) -> np.ndarray:
        """Distinct atomic numbers present, sorted."""
        return np.unique(np.concatenate([ly.numbers for ly in self.layers] + [np.zeros(0, np.int64)]))


def _orientation(cell: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Rotation and repeat direction uvw: zone axis + N(0, 5 deg) mistilt (p = 0.75) or random orientation."""
    if rng.random() < P_ZONE_AXIS:
        uvw = ZONE_AXES[int(rng.integers(len(ZONE_AXES)))]
        rot = align_to_z(np.asarray(uvw, dtype=np.float64) @ cell)
        tilt_axis = rng.uniform(0, 2 * np.pi)
        rot = axis_rotation(np.array([np.cos(tilt_axis), np.sin(tilt_axis), 0.0]),
                            rng.normal(0.0, MISTILT_STD)) @ rot
    else:
        rot = random_rotation(rng)
        # repeat vector: the short primitive lattice vector closest to the beam direction
        r = np.arange(-2, 3)
        c = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        c = c[np.gcd.reduce(np.abs(c), axis=1) == 1]
        v = c @ cell @ rot.T
        v[v[:, 2] < 0] *= -1
        c = np.where((c @ cell @ rot.T)[:, 2:3] < 0, -c, c)
        k = int(np.argmin(np.linalg.norm(v[:, :2], axis=1) / np.maximum(v[:, 2], 1e-9)))
        uvw = tuple(int(t) for t in c[k])
    # random in-plane rotation
    rot = axis_rotation(np.array([0.0, 0.0, 1.0]), rng.uniform(0, 2 * np.pi)) @ rot
    return rot, uvw


def _surfaces(grid: Grid, thickness: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray] | None:
    """Top and bottom surface maps z_top, z_bot [Å] with a random wedge (p = 0.75) or None (flat slab)."""
    if rng.random() >= P_WEDGE:
        return None
    x, y = grid.centres()
    phi = rng.uniform(0, 2 * np.pi)
    x0, x1, y0, y1 = grid.extent
    edge = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1)])
    s = np.clip((x - edge[0]) * np.cos(phi) + (y - edge[1]) * np.sin(phi), 0, None)
    slope = np.tan(np.radians(rng.uniform(*WEDGE_ANGLE)))
    side = int(rng.integers(3))  # 0 top, 1 bottom, 2 both
    z_top = np.minimum(slope * s, thickness) if side in (0, 2) else np.zeros_like(s)
    z_bot = np.maximum(thickness - slope * s, 0.0) if side in (1, 2) else np.full_like(s, thickness)
    return z_top, np.maximum(z_bot, z_top)


def _shape_length(grid: Grid, thickness: float, z_top, z_bot, rng: np.random.Generator) -> np.ndarray | None:
    """Material length [Å] along z after applying a random shape (p = 0.5), or None if no shape."""
    if rng.random() >= P_SHAPE:
        return None
    x, y = grid.centres()
    x0, x1, y0, y1 = grid.extent
    h, w = grid.shape
    lmax = max(h, w) * grid.pixel_size  # max(l_xyz), with n_z = max(n_x, n_y)
    centre = np.array([rng.uniform(x0, x1), rng.uniform(y0, y1), rng.uniform(0, thickness)])
    kind = int(rng.integers(3))
    if kind == 0:
        planes = polygon_rod_planes(centre, rng.normal(size=3), rng.uniform(0.01, 0.5) * lmax,
                                    int(rng.integers(3, 16)), rng)
    elif kind == 1:
        planes = polyhedron_planes(centre, rng.uniform(0.01, 0.5) * lmax, int(rng.integers(4, 21)), rng)
    else:  # half-space bounded by a plane parallel to z
        phi = rng.uniform(0, 2 * np.pi)
        n = np.array([np.cos(phi), np.sin(phi), 0.0])
        planes = np.array([[*n, -n @ centre]])
    inside = chord_length(planes, x, y, z_top, z_bot)
    full = np.broadcast_to(np.asarray(z_bot) - np.asarray(z_top), inside.shape)
    return inside if rng.random() < P_KEEP else full - inside


def _occupancy(grid: Grid, thickness: float, rng: np.random.Generator, *, shapes: bool) -> np.ndarray | None:
    """Fraction of the nominal thickness present per grid pixel (wedge, then shape), or None if all."""
    surf = _surfaces(grid, thickness, rng)
    z_top, z_bot = surf if surf is not None else (0.0, thickness)
    length = _shape_length(grid, thickness, z_top, z_bot, rng) if shapes else None
    if length is None:
        if surf is None:
            return None
        length = z_bot - z_top
    return np.broadcast_to(np.clip(length / thickness, 0.0, 1.0), grid.grid_shape).astype(np.float32)


def _crystal_layer(grid: Grid, thickness: float, rng: np.random.Generator, *, shapes: bool,
                   max_types: int = 16) -> tuple[Layer, Layer | None]:
    """A random crystal of nominal ``thickness`` [Å]: slab layer plus an optional defect layer."""
    uc = random_unit_cell(rng, max_types=max_types)
    rot, uvw = _orientation(uc.cell, rng)
    offset = rng.random(3) @ uc.cell @ rot.T  # random origin of the crystal
    xy, idx, rvec = lattice_slab(uc.cell, uc.positions, rot, uvw, grid.extent, offset)
    numbers = uc.numbers[idx]
    n_rep = max(1, int(round(thickness / rvec[2])))
    drift = np.linalg.norm(rvec[:2])
    if drift > 0:  # keep the total lateral drift of the copies inside the pad (see docs/synth.md)
        n_rep = max(1, min(n_rep, int(MAX_DRIFT_FRACTION * grid.pad * grid.pixel_size / drift) + 1))
    occ = _occupancy(grid, n_rep * rvec[2], rng, shapes=shapes)
    layer = Layer(positions=xy, numbers=numbers, weights=np.ones(len(xy)), repeat=rvec[:2].copy(),
                  n_repeat=n_rep, occupancy=occ)
    return layer, _defects(layer, grid, rng)


def _defects(layer: Layer, grid: Grid, rng: np.random.Generator) -> Layer | None:
    """Vacancies / displaced atoms (p = 0.8): n_sel ~ U{0..round(0.25 N)} atoms (capped at MAX_DEFECTS)."""
    if rng.random() >= P_DEFECT or len(layer.positions) == 0:
        return None
    n_total = len(layer.positions) * layer.n_repeat
    n_sel = int(rng.integers(0, min(int(round(DEFECT_FRACTION * n_total)), MAX_DEFECTS) + 1))
    if n_sel == 0:
        return None
    i = rng.integers(0, len(layer.positions), n_sel)
    k = rng.integers(0, layer.n_repeat, n_sel)
    pos = layer.positions[i] + k[:, None] * layer.repeat
    if layer.occupancy is not None:  # only atoms that exist (copy index below the local number of copies)
        gi = np.clip((pos[:, 1] / grid.pixel_size + grid.pad).astype(int), 0, grid.grid_shape[0] - 1)
        gj = np.clip((pos[:, 0] / grid.pixel_size + grid.pad).astype(int), 0, grid.grid_shape[1] - 1)
        ok = k < layer.occupancy[gi, gj] * layer.n_repeat
        pos, i = pos[ok], i[ok]
    z = layer.numbers[i]
    from ase.data import covalent_radii

    moved = rng.random(len(z)) < 0.5
    new = pos[moved] + rng.normal(size=(int(moved.sum()), 2)) * covalent_radii[z[moved]][:, None]
    return Layer(positions=np.concatenate([pos, new]), numbers=np.concatenate([z, z[moved]]),
                 weights=np.concatenate([-np.ones(len(pos)), np.ones(len(new))]), repeat=np.zeros(2),
                 n_repeat=1)


def _amorphous_layer(grid: Grid, thickness: float, rng: np.random.Generator, *, shapes: bool) -> Layer:
    """One-element amorphous layer as a projected Poisson point process (hard core not enforced)."""
    from ase.data import atomic_masses

    z = int(rng.integers(1, MAX_Z + 1))
    n_density = rng.uniform(*MASS_DENSITY) * 0.602214076 / atomic_masses[z]  # atoms / Å^3
    d_min = rng.uniform(*AMORPHOUS_MIN_DIST)
    n_density = min(n_density, 1.2 / d_min**3)  # cap at random-close-packing of spheres of diameter d_min
    occ = _occupancy(grid, thickness, rng, shapes=shapes)
    lam = n_density * thickness * grid.pixel_size**2
    lam_map = np.full(grid.grid_shape, lam) if occ is None else lam * occ
    counts = rng.poisson(lam_map)
    gi, gj = np.nonzero(counts)
    c = counts[gi, gj]
    if c.sum() <= EXPLICIT_POINT_BUDGET:  # exact: uniform positions inside each pixel
        gi, gj = np.repeat(gi, c), np.repeat(gj, c)
        u = rng.random((gi.size, 2))
        pos = np.column_stack([gj - grid.pad + u[:, 0], gi - grid.pad + u[:, 1]]) * grid.pixel_size
        weights = np.ones(gi.size)
    else:  # binned at pixel centres
        pos = np.column_stack([gj - grid.pad + 0.5, gi - grid.pad + 0.5]) * grid.pixel_size
        weights = c.astype(np.float64)
    return Layer(positions=pos, numbers=np.full(len(pos), z), weights=weights, repeat=np.zeros(2), n_repeat=1)


def _points_layer(grid: Grid, rng: np.random.Generator) -> Layer:
    """Individual points: N ~ U{1..1500}, one element, pairwise distance >= U[1, 20] pixels."""
    from scipy.spatial import cKDTree

    n = int(rng.integers(N_POINTS[0], N_POINTS[1] + 1))
    d_min = rng.uniform(*POINT_MIN_DIST) * grid.pixel_size
    x0, x1, y0, y1 = grid.extent
    pos = np.column_stack([rng.uniform(x0, x1, n), rng.uniform(y0, y1, n)])
    drop = {j for _, j in cKDTree(pos).query_pairs(d_min)}
    if drop:
        pos = pos[np.setdiff1d(np.arange(n), np.fromiter(drop, int))]
    z = int(rng.integers(1, MAX_Z + 1))
    return Layer(positions=pos, numbers=np.full(len(pos), z), weights=np.ones(len(pos)), repeat=np.zeros(2),
                 n_repeat=1)


def sample_specimen(shape=(256, 256), *, rng=None, kind: str = "any", pixel_size: float | None = None
                    ) -> SpecimenParams:
    """Draw a random specimen for an image of ``shape``.

    Parameters
    ----------
    shape : tuple of int
        Image shape (H, W) [pixels], each at least 8.
    rng : int or numpy.random.Generator, optional
        Random source.
    kind : {"any", "crystalline", "amorphous", "points"}
        Specimen type; "any" draws crystalline / amorphous / points with probabilities 0.6 / 0.2 / 0.2.
    pixel_size : float, optional
        Pixel size [Å]; drawn from U[0.025, 0.90] Å when None.

    Returns
    -------
    SpecimenParams

    Notes
    -----
    Implements the three steps of 'Specimen generation' of Lobato et al. (type; orientation, wedge, shapes,
    defects; support layer), with the deviations listed in docs/synth.md: the crystal thickness is
    max(H, W) * pixel_size as in the paper but rounded to whole periods of the repeat vector and capped so
    that the lateral drift of the copies stays inside the pad; amorphous layers ignore the hard-core distance;
    supports use at most 4 element types.

    Examples
    --------
    >>> spec = sample_specimen((64, 64), rng=0, kind="crystalline", pixel_size=0.2)
    >>> spec.grid.shape
    (64, 64)
    """
    h, w = _check_shape(shape)
    rng = as_rng(rng)
    if kind not in ("any", *KINDS):
        raise ValueError(f"kind must be one of 'any', 'crystalline', 'amorphous', 'points', got {kind!r}")
    if pixel_size is None:
        pixel_size = rng.uniform(*PIXEL_SIZE_RANGE)
    pixel_size = check_pixel_size(pixel_size)
    if kind == "any":
        kind = str(rng.choice(KINDS, p=list(KIND_PROBABILITIES.values())))
    grid = Grid.for_image((h, w), pixel_size)
    thickness = max(h, w) * pixel_size
    layers: list[Layer] = []
    if kind == "crystalline":
        layer, defects = _crystal_layer(grid, thickness, rng, shapes=True)
        layers += [layer] + ([defects] if defects is not None else [])
    elif kind == "amorphous":
        layers.append(_amorphous_layer(grid, thickness, rng, shapes=True))
    else:
        layers.append(_points_layer(grid, rng))
    if rng.random() < P_SUPPORT:
        t_sup = rng.uniform(*SUPPORT_THICKNESS)
        if rng.random() < 0.5:
            layer, defects = _crystal_layer(grid, t_sup, rng, shapes=False, max_types=SUPPORT_MAX_TYPES)
            layers += [layer] + ([defects] if defects is not None else [])
        else:
            layers.append(_amorphous_layer(grid, t_sup, rng, shapes=False))
    return SpecimenParams(shape=(h, w), pixel_size=pixel_size, kind=kind, layers=tuple(layers), grid=grid)


def _check_shape(shape) -> tuple[int, int]:
    """Image shape must be two integers >= 8."""
    try:
        h, w = (int(v) for v in shape)
        ok = all(float(v) == int(v) for v in shape)
    except (TypeError, ValueError):
        ok = False
    if not ok or h < 8 or w < 8:
        raise ValueError(f"shape must be two integers (H, W) >= 8 [pixels], got {shape!r}")
    return h, w
