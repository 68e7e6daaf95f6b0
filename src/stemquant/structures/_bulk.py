"""Perfect Pt fcc crystal in the [001] zone axis."""

from __future__ import annotations

import numbers

from ase import Atoms
from ase.build import bulk

from stemquant._validate import check_positive

#: Pt lattice constant [Å] used throughout the studies (seeds/README.md).
PT_LATTICE_CONSTANT = 3.92


def _check_cells(value, name: str, lo: int = 1, hi: int | None = None) -> int:
    """Check a unit-cell count is an integer in [lo, hi]."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer number of unit cells, got {value!r}")
    v = int(value)
    if v < lo or (hi is not None and v > hi):
        rng = f"[{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise ValueError(f"{name} must be an integer in {rng} [unit cells], got {value}")
    return v


def _check_pair(value, name: str, unit: str) -> tuple:
    """Check an (x, y) pair: a sequence of exactly two entries."""
    try:
        n = len(value)
    except TypeError:
        n = -1
    if isinstance(value, str | bytes) or n != 2:
        raise ValueError(f"{name} must be a pair (x, y) [{unit}], got {value!r}")
    return tuple(value)


def pt_bulk(n_cells: int, *, repeat: tuple[int, int] = (1, 1), a: float = PT_LATTICE_CONSTANT) -> Atoms:
    """Pt fcc crystal in the [001] zone axis, ``n_cells`` unit cells thick.

    Parameters
    ----------
    n_cells : int
        Thickness in cubic unit cells along the beam (z). The bulk study of Friedrich (2023), Fig. 2.7,
        uses 2-75; any value >= 1 is accepted.
    repeat : tuple of int, optional
        Number of cubic unit cells along x and y. Default (1, 1).
    a : float, optional
        Lattice constant [Å]. Default 3.92.

    Returns
    -------
    atoms : ase.Atoms
        ``4 * repeat[0] * repeat[1] * n_cells`` Pt atoms, periodic cell
        ``(repeat[0] a, repeat[1] a, n_cells a)``, beam along +z. Projected along z the columns form a square
        lattice of spacing ``a/2``; each column holds ``n_cells`` atoms spaced ``a`` apart. Atomic layers sit
        at ``z = a/4 + k a/2`` (mid-way between the boundaries of ``a/2`` slices), columns at ``x, y``
        multiples of ``a/2``.

    Examples
    --------
    >>> len(pt_bulk(3, repeat=(2, 2)))
    48
    """
    n_cells = _check_cells(n_cells, "n_cells")
    rx, ry = _check_pair(repeat, "repeat", "unit cells")
    rx = _check_cells(rx, "repeat[0]")
    ry = _check_cells(ry, "repeat[1]")
    a = check_positive(a, "a", "Å")
    atoms = bulk("Pt", "fcc", a=a, cubic=True).repeat((rx, ry, n_cells))
    # atomic layers at z = a/4 + k a/2: inside the cell, never on a slice boundary of a multislice run with
    # slice thickness a/2 (thermal displacements would otherwise wrap atoms through z = 0)
    atoms.positions[:, 2] += a / 4
    atoms.pbc = True
    return atoms
