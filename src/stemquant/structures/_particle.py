"""Spherical Pt nanoparticle cut from the fcc lattice, [100] zone axis."""

from __future__ import annotations

import numpy as np
from ase import Atoms

from stemquant._validate import check_positive

from ._bulk import PT_LATTICE_CONSTANT

#: Default sphere radius [Å]: atom-centred spheres with 19.988 <= R < 20.179 Å give the 333 columns
#: (2,243 atoms) of the paper's particle (Friedrich 2023, Fig. 2.9).
PARTICLE_RADIUS = 20.1

_FCC_BASIS = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.0, 0.5, 0.5]])


def pt_nanoparticle(*, radius: float = PARTICLE_RADIUS, a: float = PT_LATTICE_CONSTANT,
                    vacuum: float = 10.0) -> Atoms:
    """Spherical Pt fcc nanoparticle in the [100] zone axis (beam along z).

    Construction (explicit, the paper gives only "11 unit cells in diameter" and "333 atomic columns"): take
    the fcc lattice with an atom at the origin and keep every atom whose distance to that atom is ``<=
    radius``. The default ``radius = 20.1`` Å lies in the window ``[19.988, 20.179)`` Å that gives exactly
    333 projected columns and 2,243 atoms; the literal 11-cell diameter (``radius = 21.56`` Å) gives 373
    columns (2,779 atoms).

    Parameters
    ----------
    radius : float, optional
        Sphere radius [Å]. Default 20.1.
    a : float, optional
        Lattice constant [Å]. Default 3.92.
    vacuum : float, optional
        Empty margin between the sphere and each face of the cell [Å]. Default 10.

    Returns
    -------
    atoms : ase.Atoms
        Non-periodic, cubic cell of side ``2 (radius + vacuum)``; the central atom sits at the cell centre.

    Examples
    --------
    >>> len(pt_nanoparticle())
    2243
    """
    radius = check_positive(radius, "radius", "Å")
    a = check_positive(a, "a", "Å")
    if not (np.isfinite(vacuum) and vacuum >= 0):
        raise ValueError(f"vacuum must be >= 0 [Å], got {vacuum}")
    n = int(np.ceil(radius / a)) + 1
    r = np.arange(-n, n + 1)
    grid = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3)
    pos = ((grid[:, None, :] + _FCC_BASIS[None]) * a).reshape(-1, 3)
    pos = pos[np.linalg.norm(pos, axis=1) <= radius + 1e-9]
    side = 2 * (radius + vacuum)
    atoms = Atoms(symbols=["Pt"] * len(pos), positions=pos + side / 2, cell=[side, side, side], pbc=False)
    return atoms
