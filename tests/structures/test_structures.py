"""Tests of stemquant.structures: Pt bulk, edge dislocation, nanoparticle and column projection."""

import numpy as np
import pandas as pd
import pytest

from stemquant.structures import (
    PT_LATTICE_CONSTANT,
    edge_displacement,
    project_columns,
    pt_bulk,
    pt_edge_dislocation,
    pt_nanoparticle,
)
from stemquant.structures._dislocation import _oriented_block, _rotation

A = PT_LATTICE_CONSTANT


# ---------------------------------------------------------------- bulk
@pytest.mark.parametrize("n_cells", [2, 5, 75])
def test_bulk_atom_count_and_cell(n_cells):
    atoms = pt_bulk(n_cells, repeat=(2, 3))
    assert len(atoms) == 4 * 2 * 3 * n_cells
    np.testing.assert_allclose(atoms.cell.lengths(), [2 * A, 3 * A, n_cells * A])
    assert set(atoms.get_chemical_symbols()) == {"Pt"}
    z = atoms.positions[:, 2]
    assert z.min() > 0 and z.max() < n_cells * A  # no atom on a cell face


def test_bulk_columns_square_lattice_a_over_2():
    n = 4
    cols = project_columns(pt_bulk(n, repeat=(3, 3)))
    assert len(cols) == 4 * 9
    assert (cols.n_atoms == n).all()
    assert not cols.surface.any()  # periodic crystal: no surface
    # every column has exactly four projected neighbours at a/2 (periodic distances)
    xy = cols[["x", "y"]].to_numpy()
    d = xy[:, None, :] - xy[None, :, :]
    d -= 3 * A * np.round(d / (3 * A))
    r = np.hypot(d[..., 0], d[..., 1])
    np.fill_diagonal(r, np.inf)
    np.testing.assert_allclose(r.min(axis=1), A / 2, atol=1e-9)
    assert np.all(np.sum(np.isclose(r, A / 2), axis=1) == 4)


def test_bulk_bad_input():
    with pytest.raises(ValueError, match="n_cells"):
        pt_bulk(0)
    with pytest.raises(TypeError, match="n_cells"):
        pt_bulk(2.5)
    with pytest.raises(ValueError, match="repeat"):
        pt_bulk(2, repeat=(0, 1))
    for bad in ((2,), (1, 1, 1), 3):  # not an (x, y) pair: used to raise IndexError/TypeError or be cut short
        with pytest.raises(ValueError, match="repeat"):
            pt_bulk(2, repeat=bad)
    for a in (0.0, -3.92, np.inf, np.nan):
        with pytest.raises(ValueError, match="a must be positive and finite"):
            pt_bulk(2, a=a)


# ---------------------------------------------------------------- nanoparticle
def test_particle_default_matches_paper_333_columns():
    atoms = pt_nanoparticle()
    cols = project_columns(atoms)
    assert len(atoms) == 2243
    assert len(cols) == 333  # Friedrich (2023), Fig. 2.9
    assert cols.n_atoms.sum() == 2243
    # sphere of radius ~20 Å: the central column holds floor(2 R / a) + 1 = 11 atoms
    assert cols.n_atoms.max() == 11
    # a column of a convex particle has no gaps: its atoms span (n - 1) a along the beam
    np.testing.assert_allclose(cols.z_max - cols.z_min, (cols.n_atoms - 1) * A, atol=1e-9)
    assert cols.surface.any() and not cols.surface.all()
    # surface columns lie on the projected rim: further from the centre than every interior column... nearly
    c = atoms.cell.lengths()[:2] / 2
    r = np.hypot(cols.x - c[0], cols.y - c[1])
    assert r[cols.surface].min() > r[~cols.surface].median()


def test_particle_literal_diameter_gives_373_columns():
    cols = project_columns(pt_nanoparticle(radius=11 * A / 2))
    assert len(cols) == 373


def test_particle_inside_cell_and_bad_input():
    atoms = pt_nanoparticle(vacuum=3.0)
    L = atoms.cell.lengths()
    assert np.all(atoms.positions > 0) and np.all(atoms.positions < L)
    with pytest.raises(ValueError, match="radius"):
        pt_nanoparticle(radius=-1.0)
    with pytest.raises(ValueError, match="vacuum"):
        pt_nanoparticle(vacuum=-1.0)


# ---------------------------------------------------------------- dislocation
def test_edge_displacement_jump_equals_burgers_vector():
    b = A / np.sqrt(2)
    x = np.array([-1.0, -5.0, -20.0])
    eps = 1e-9
    ux_up, uy_up = edge_displacement(x, +eps, b=b)
    ux_dn, uy_dn = edge_displacement(x, -eps, b=b)
    np.testing.assert_allclose(ux_up - ux_dn, b, rtol=1e-6)  # Volterra cut: jump of exactly |b| = a/sqrt(2)
    np.testing.assert_allclose(uy_up - uy_dn, 0.0, atol=1e-6)
    # no jump across the positive x axis
    ux_up, _ = edge_displacement(-x, +eps, b=b)
    ux_dn, _ = edge_displacement(-x, -eps, b=b)
    np.testing.assert_allclose(ux_up - ux_dn, 0.0, atol=1e-6)
    with pytest.raises(ValueError, match="singular"):
        edge_displacement(0.0, 0.0, b=b)


def _fcc_round(v):
    """Nearest fcc lattice vector (cubic frame, a/2 units with even index sum) to each row of v [Å]."""
    m = v / (A / 2)
    r = np.round(m)
    odd = (r.sum(axis=1) % 2) != 0
    err = m - r
    k = np.argmax(np.abs(err), axis=1)
    rows = np.nonzero(odd)[0]
    r[rows, k[rows]] += np.sign(err[rows, k[rows]])
    return r * (A / 2)


def test_dislocation_burgers_circuit_closure():
    """A circuit of lattice steps around the line fails to close by b = a/2[1-10] (|b| = a/sqrt(2))."""
    atoms = pt_edge_dislocation()
    ref = pt_edge_dislocation(nu=0.0)  # same atom order; used only to pick a loop of atoms
    x0, y0 = atoms.info["line_position"]
    rot = _rotation()
    # reference (undisplaced) positions: subtract the applied field
    ux, uy = edge_displacement(ref.positions[:, 0] - x0, ref.positions[:, 1] - y0, b=A / np.sqrt(2), nu=0.0)
    perfect = ref.positions - np.stack([ux, uy, 0 * ux], 1)
    perfect[:, 1] += np.median(uy)
    # loop of atoms on a square of half-size 12 Å around the line, in the z-layer nearest 0, ordered by angle
    rel = perfect[:, :2] - [x0, y0]
    on_loop = (np.abs(np.max(np.abs(rel), axis=1) - 12.0) < 1.5) & (perfect[:, 2] < 4.8)
    idx = np.nonzero(on_loop)[0]
    idx = idx[np.argsort(np.arctan2(rel[idx, 1], rel[idx, 0]))]
    idx = np.append(idx, idx[0])
    steps = np.diff(atoms.positions[idx], axis=0)  # steps in the dislocated crystal
    steps[:, 2] -= atoms.cell.lengths()[2] * np.round(steps[:, 2] / atoms.cell.lengths()[2])
    lattice_steps = _fcc_round(steps @ rot)  # frame -> cubic, nearest lattice vector
    closure = lattice_steps.sum(axis=0) @ rot.T  # back to the dislocation frame
    assert np.linalg.norm(closure) == pytest.approx(A / np.sqrt(2), rel=1e-9)
    np.testing.assert_allclose(np.abs(closure), [A / np.sqrt(2), 0, 0], atol=1e-9)  # along x || [1-10]


def test_dislocation_geometry_and_columns():
    atoms = pt_edge_dislocation()
    assert tuple(atoms.pbc) == (False, False, True)
    np.testing.assert_allclose(atoms.cell.lengths()[2], 6 * A * np.sqrt(6) / 2)
    cols = project_columns(atoms)
    assert (cols.n_atoms == 6).all()  # six periods of 1/2[11-2], one atom per period and column
    assert cols.n_atoms.sum() == len(atoms)
    # the extra half-plane sits above the glide plane (y > y0): rows there are compressed, rows below
    # stretched, by a strain of order b / (2 pi r) (< 5 % at r > 10 Å)
    x0, y0 = atoms.info["line_position"]
    perfect = A * np.sqrt(2) / 4
    nx = int(round(55.0 / (A * np.sqrt(2) / 2)))
    ny = int(round(55.0 / (A * np.sqrt(3))))
    ref, _ = _oriented_block(nx, ny, 6, A)  # the undisplaced block, same atom order as the model

    def row_spacing(sign):
        dy = sign * (ref[:, 1] - y0)
        y_row = ref[(dy > 10) & (dy < 13), 1].min()
        sel = np.isclose(ref[:, 1], y_row) & (np.abs(ref[:, 0] - x0) < 10) & (ref[:, 2] < A * np.sqrt(6) / 2)
        x = np.sort(atoms.positions[sel, 0])
        return np.mean(np.diff(x))

    above, below = row_spacing(+1), row_spacing(-1)
    assert above < perfect < below
    assert abs(above / perfect - 1) < 0.05 and abs(below / perfect - 1) < 0.05


def test_dislocation_bad_input():
    with pytest.raises(ValueError, match="nu"):
        pt_edge_dislocation(nu=0.6)
    with pytest.raises(ValueError, match="n_cells"):
        pt_edge_dislocation(n_cells=0)
    for bad in ((55.0,), (55.0, 55.0, 10.0)):
        with pytest.raises(ValueError, match="size"):
            pt_edge_dislocation(size=bad)


# ---------------------------------------------------------------- projection
def test_project_columns_contract_and_tolerance():
    cols = project_columns(pt_bulk(2, repeat=(2, 2)))
    assert isinstance(cols, pd.DataFrame)
    for c in ("x", "y", "n_atoms", "species", "surface"):
        assert c in cols.columns
    assert cols.species.unique().tolist() == ["Pt"]
    assert cols.surface.dtype == bool
    with pytest.raises(ValueError, match="tolerance"):
        project_columns(pt_bulk(2), tolerance=0.0)


def test_project_columns_deterministic_and_merges_within_tolerance():
    atoms = pt_bulk(3, repeat=(2, 2))
    a1 = project_columns(atoms)
    a2 = project_columns(atoms.copy())
    pd.testing.assert_frame_equal(a1, a2)
    jittered = atoms.copy()
    jittered.positions[:, :2] += np.random.default_rng(0).uniform(-0.03, 0.03, (len(atoms), 2))
    cols = project_columns(jittered, tolerance=0.1)
    assert len(cols) == 16 and (cols.n_atoms == 3).all()
