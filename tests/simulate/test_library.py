"""Tests of the SCS libraries and their loader."""

import numpy as np
import pytest

from stemquant.simulate import ScsLibrary, load_scs_library


@pytest.mark.parametrize("name", ["pt001_particle", "pt001_bulk"])
def test_bundled_library_contract(name):
    lib = load_scs_library(name)
    assert lib.n_atoms[0] == 0 and lib.scs(0) == 0.0
    assert lib.max_atoms >= 10
    # computed with abTEM (not a placeholder) and its provenance travels with it
    assert "abTEM" in lib.provenance and "command:" in lib.provenance
    assert "placeholder" not in lib.provenance.lower()
    # physical: SCS grows with thickness, and a column never scatters more than its cell receives, (a/2)^2
    assert np.all(np.diff(lib.scs_table) > 0)
    assert lib.scs_table[-1] < (3.92 / 2) ** 2


def test_interpolation_and_extrapolation():
    lib = ScsLibrary(np.array([0, 1, 2, 3]), np.array([0.0, 0.1, 0.25, 0.3]), np.zeros(4), "toy")
    np.testing.assert_allclose(lib.scs([0, 1, 2, 3]), [0.0, 0.1, 0.25, 0.3])  # exact at the table
    assert lib.scs(1.5) == pytest.approx(0.175)
    assert lib.scs(5) == pytest.approx(0.3 + 2 * 0.05)  # slope of the last two entries
    assert lib.scs(np.zeros((2, 3))).shape == (2, 3)


def test_bad_input(tmp_path):
    lib = load_scs_library("pt001_particle")
    with pytest.raises(ValueError, match="n_atoms"):
        lib.scs(-1)
    with pytest.raises(ValueError, match="bundled"):
        load_scs_library("no_such_library")
    with pytest.raises(ValueError, match="start at 0"):
        ScsLibrary(np.array([1, 2]), np.array([0.0, 0.1]), np.zeros(2))
    bad = tmp_path / "bad.csv"
    bad.write_text("# test\nn,scs\n0,0\n1,0.1\n")
    with pytest.raises(ValueError, match="n_atoms"):
        load_scs_library(bad)


def test_load_from_path_roundtrip(tmp_path):
    p = tmp_path / "lib.csv"
    p.write_text("# provenance line\nn_atoms,scs\n0,0\n1,0.02\n2,0.05\n")
    lib = load_scs_library(p)
    assert lib.name == "lib" and lib.provenance == "provenance line"
    np.testing.assert_allclose(lib.scs(2), 0.05)


@pytest.mark.parametrize("name", ["pt001_bulk", "pt001_particle"])
def test_counting_table_feeds_count_library(name):
    from stemquant.quant import count_library

    lib = load_scs_library(name)
    table = lib.counting_table()
    assert table.shape == (lib.max_atoms,)
    n = np.arange(0, lib.max_atoms + 1)
    # a column whose SCS lies within a quarter of the local library spacing of k atoms is counted k
    spacing = np.diff(lib.scs(np.arange(0, lib.max_atoms + 2)))  # spacing[k] = SCS(k + 1) - SCS(k)
    shift = 0.25 * np.minimum(spacing, np.r_[spacing[0], spacing[:-1]])
    for sign in (-1, 1):
        assert np.array_equal(count_library(lib.scs(n) + sign * shift, table), n)
    assert len(lib.counting_table(lib.max_atoms + 5)) == lib.max_atoms + 5  # extrapolated like scs()
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_atoms"):
            lib.counting_table(bad)
