"""Project an atomic model along the beam (z) into atomic columns: the ground truth of every study."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from stemquant._validate import check_positive


def _periodic_xy(atoms) -> np.ndarray | None:
    """Box lengths (Lx, Ly) if the cell is orthogonal in x, y and periodic in both, else None."""
    if not (atoms.pbc[0] and atoms.pbc[1]):
        return None
    cell = np.asarray(atoms.cell)
    if not np.allclose(cell[:2, :2], np.diag(np.diag(cell[:2, :2]))):
        raise ValueError("project_columns needs a cell orthogonal in x, y when pbc is set in x and y")
    return np.diag(cell)[:2].copy()


def _cluster_xy(xy: np.ndarray, tolerance: float, box: np.ndarray | None) -> np.ndarray:
    """Label atoms whose projected positions are chained within ``tolerance`` [Å] (connected components)."""
    tree = cKDTree(xy, boxsize=box)
    pairs = tree.query_pairs(r=tolerance, output_type="ndarray")
    n = len(xy)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def _column_means(xy: np.ndarray, labels: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """Mean (x, y) per label, unwrapping periodic images around each column's first atom."""
    n_col = labels.max() + 1
    first = np.full(n_col, -1)
    first[labels[::-1]] = np.arange(len(labels))[::-1]
    d = xy - xy[first[labels]]
    if box is not None:
        d = d - box * np.round(d / box)
    counts = np.bincount(labels, minlength=n_col)
    mean = np.stack([np.bincount(labels, d[:, k], minlength=n_col) for k in range(2)], 1) / counts[:, None]
    out = xy[first] + mean
    if box is not None:
        out = np.mod(out, box)
    return out


def _surface_flags(xy: np.ndarray, box: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Projected-neighbour counts and surface flags (fewer neighbours than the most common count)."""
    if len(xy) < 5:
        return np.zeros(len(xy), int), np.ones(len(xy), bool)
    tree = cKDTree(xy, boxsize=box)
    d4 = tree.query(xy, k=5)[0][:, 4]
    radius = 1.2 * float(np.median(d4))
    counts = np.array([len(v) - 1 for v in tree.query_ball_point(xy, r=radius)])
    full = int(np.bincount(counts).argmax())
    return counts, counts < full


def project_columns(atoms, *, tolerance: float = 0.1) -> pd.DataFrame:
    """Group the atoms of a model into columns along the beam (z) and tabulate them.

    Atoms whose projected (x, y) positions are chained by distances ``<= tolerance`` form one column
    (connected components of the neighbour graph; periodic in x and y when ``atoms.pbc`` says so).

    Parameters
    ----------
    atoms : ase.Atoms
        Model with the beam along z (e.g. ``pt_bulk``, ``pt_edge_dislocation``, ``pt_nanoparticle``).
    tolerance : float, optional
        Largest projected distance between atoms of one column [Å]. Default 0.1; must stay well below the
        projected column spacing (1.39 Å in Pt [112], 1.96 Å in Pt [001]).

    Returns
    -------
    columns : pandas.DataFrame
        One row per column, sorted by (y, x), with
        ``x``, ``y`` — mean projected position [Å] (same frame as the model, docs/conventions.md);
        ``n_atoms`` — atoms in the column; ``species`` — chemical symbol(s), '-'-joined if mixed;
        ``z_min``, ``z_max`` — extent along the beam [Å];
        ``n_neighbors`` — projected neighbour columns within 1.2 × the median distance to the 4th-nearest
        column;
        ``surface`` — True when the column has fewer neighbours than the most common (interior) count:
        projected rim of a particle, edge of a non-periodic slab; never in a fully periodic crystal.

    Examples
    --------
    >>> from stemquant.structures import pt_bulk
    >>> cols = project_columns(pt_bulk(3, repeat=(2, 2)))
    >>> len(cols), int(cols.n_atoms.iloc[0])
    (16, 3)
    """
    tolerance = check_positive(tolerance, "tolerance", "Å")
    if len(atoms) == 0:
        raise ValueError("atoms is empty: give a model with at least one atom")
    box = _periodic_xy(atoms)
    xy = np.asarray(atoms.positions[:, :2], dtype=np.float64)
    if box is not None:
        xy = np.mod(xy, box)
    labels = _cluster_xy(xy, tolerance, box)
    centres = _column_means(xy, labels, box)
    n_col = len(centres)
    counts = np.bincount(labels, minlength=n_col)
    z = atoms.positions[:, 2]
    symbols = np.asarray(atoms.get_chemical_symbols())
    species = ["-".join(sorted(set(symbols[labels == c]))) for c in range(n_col)] if len(set(symbols)) > 1 \
        else [symbols[0]] * n_col
    z_min = np.full(n_col, np.inf)
    z_max = np.full(n_col, -np.inf)
    np.minimum.at(z_min, labels, z)
    np.maximum.at(z_max, labels, z)
    n_nb, surface = _surface_flags(centres, box)
    df = pd.DataFrame({
        "x": centres[:, 0], "y": centres[:, 1], "n_atoms": counts, "species": species,
        "z_min": z_min, "z_max": z_max,
        "n_neighbors": n_nb, "surface": surface,
    })
    return df.sort_values(["y", "x"], kind="stable").reset_index(drop=True)
