"""Random crystalline unit cells from random space groups (Lobato et al., 'Specimen generation', step 1).

ase is used only for the symmetry operations of a space group (``ase.spacegroup.Spacegroup``) and for the cell
matrix (``ase.geometry.cellpar_to_cell``); the symmetry is applied in numpy.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.distance import pdist

from ._profiles import MAX_Z

LATTICE_RANGE = (3.1, 25.0)  # lattice parameters [Å]
ANGLE_RANGE = (45.0, 120.0)  # free cell angles [deg]
MIN_DIST_RANGE = (0.95, 7.0)  # allowed minimum interatomic distance in the cell [Å]
MAX_TYPES = 16
MAX_SITES = 16  # asymmetric-unit sites drawn per cell
MAX_CELL_ATOMS = 384  # cells with more atoms are rejected (keeps rendering fast)
MAX_TRIES = 200


@dataclass(frozen=True)
class UnitCell:
    """A unit cell: ``cell`` rows are the lattice vectors a, b, c [Å]; ``positions`` cartesian [Å]."""

    cell: np.ndarray  # (3, 3)
    positions: np.ndarray  # (M, 3) cartesian [Å]
    numbers: np.ndarray  # (M,)
    spacegroup: int


@lru_cache(maxsize=230)
def _symmetry_ops(number: int) -> tuple[np.ndarray, np.ndarray]:
    """All operations (rotations (K,3,3), translations (K,3)) of space group ``number``, centring included."""
    from ase.spacegroup import Spacegroup

    rot, trans = Spacegroup(int(number)).get_op()
    return np.asarray(rot, dtype=np.float64), np.asarray(trans, dtype=np.float64)


def _lattice_parameters(number: int, rng: np.random.Generator) -> tuple[float, ...]:
    """Random (a, b, c, alpha, beta, gamma) obeying the crystal system of space group ``number``."""
    a, b, c = rng.uniform(*LATTICE_RANGE, size=3)
    al, be, ga = rng.uniform(*ANGLE_RANGE, size=3)
    if number <= 2:  # triclinic
        return a, b, c, al, be, ga
    if number <= 15:  # monoclinic, unique axis b
        return a, b, c, 90.0, be, 90.0
    if number <= 74:  # orthorhombic
        return a, b, c, 90.0, 90.0, 90.0
    if number <= 142:  # tetragonal
        return a, a, c, 90.0, 90.0, 90.0
    if number <= 194:  # trigonal (hexagonal axes, ase setting 1) and hexagonal
        return a, a, c, 90.0, 90.0, 120.0
    return a, a, a, 90.0, 90.0, 90.0  # cubic


def _cell_matrix(cellpar) -> np.ndarray | None:
    """Lattice vectors as rows, or None if the angles do not form a valid (positive-volume) cell."""
    from ase.geometry import cellpar_to_cell

    al, be, ga = np.radians(cellpar[3:])
    ca, cb, cg = np.cos(al), np.cos(be), np.cos(ga)
    if 1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg <= 1e-3:
        return None
    return np.asarray(cellpar_to_cell(cellpar), dtype=np.float64)


def _apply_symmetry(frac: np.ndarray, rot: np.ndarray, trans: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images of the fractional sites ``frac`` (k, 3) under all operations, duplicates merged.

    Returns the unique fractional positions (M, 3) in [0, 1) and the index of the generating site of each.
    """
    pos = np.einsum("oij,kj->oki", rot, frac) + trans[:, None, :]  # (ops, k, 3)
    pos = np.mod(pos, 1.0)
    site = np.broadcast_to(np.arange(frac.shape[0]), pos.shape[:2])
    key = np.mod(np.round(pos * 1e4), 1e4).astype(np.int64)  # merge sites closer than 1e-4 (fractional)
    key = (key[..., 0] * 10007 + key[..., 1]) * 10007 + key[..., 2]
    _, first = np.unique(key.ravel(), return_index=True)
    return pos.reshape(-1, 3)[first], site.ravel()[first]


def _min_distance(cell: np.ndarray, frac: np.ndarray) -> float:
    """Smallest distance [Å] between atoms of the periodic crystal (27 neighbouring cells searched)."""
    if frac.shape[0] == 1:
        return float(np.min(np.linalg.norm(cell, axis=1)))
    shifts = np.stack(np.meshgrid(*[np.arange(-1, 2)] * 3, indexing="ij"), -1).reshape(-1, 3)
    cart = frac @ cell
    images = (cart[None, :, :] + (shifts @ cell)[:, None, :]).reshape(-1, 3)
    d, _ = cKDTree(images).query(cart, k=2)
    return float(d[:, 1].min())


def random_unit_cell(rng: np.random.Generator, *, max_types: int = MAX_TYPES) -> UnitCell:
    """Draw a random crystal: space group U{1..230}, lattice, up to ``max_types`` elements, random sites.

    Implements step 1 of the specimen generation of Lobato et al.: lattice parameters in [3.1, 25] Å, free
    angles in [45, 120] deg, random asymmetric-unit positions expanded by the space-group symmetry, and the
    restart rule "minimum interatomic distance in [0.95, 7] Å". Choices not in the paper: 1..16 asymmetric
    sites, 1..min(16, sites) element types, and cells with more than ``MAX_CELL_ATOMS`` atoms are redrawn.
    """
    for _ in range(MAX_TRIES):
        number = int(rng.integers(1, 231))
        cell = _cell_matrix(_lattice_parameters(number, rng))
        if cell is None:
            continue
        rot, trans = _symmetry_ops(number)
        n_sites = int(rng.integers(1, MAX_SITES + 1))
        # crude cap so a general-position expansion stays below MAX_CELL_ATOMS
        n_sites = max(1, min(n_sites, MAX_CELL_ATOMS // rot.shape[0]))
        frac, site = _apply_symmetry(rng.random((n_sites, 3)), rot, trans)
        if frac.shape[0] > MAX_CELL_ATOMS:
            continue
        if frac.shape[0] > 1 and pdist(frac @ cell).min() < MIN_DIST_RANGE[0]:  # cheap early rejection
            continue
        dmin = _min_distance(cell, frac)
        if not MIN_DIST_RANGE[0] <= dmin <= MIN_DIST_RANGE[1]:
            continue
        n_types = int(rng.integers(1, min(max_types, n_sites) + 1))
        elements = rng.choice(np.arange(1, MAX_Z + 1), size=n_types, replace=False)
        site_type = np.concatenate([np.arange(n_types), rng.integers(0, n_types, n_sites - n_types)])
        rng.shuffle(site_type)
        return UnitCell(cell=cell, positions=frac @ cell, numbers=elements[site_type[site]],
                        spacegroup=number)
    # Fallback (rare): simple cubic single element, always valid.
    a = rng.uniform(3.1, 5.0)
    z = np.array([int(rng.integers(1, MAX_Z + 1))])
    return UnitCell(cell=np.eye(3) * a, positions=np.zeros((1, 3)), numbers=z, spacegroup=221)
