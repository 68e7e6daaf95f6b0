"""Tiny abTEM runs of the multislice backend (skipped without abtem)."""

import re

import numpy as np
import pytest

from stemquant.simulate import PRESETS, load_scs_library

abtem = pytest.importorskip("abtem")

from stemquant.simulate import abtem_scs_series, simulate_haadf_abtem  # noqa: E402
from stemquant.structures import pt_bulk  # noqa: E402


@pytest.fixture(autouse=True)
def _fast_fftw_planning():
    """FFTW_MEASURE planning dominates tiny runs; estimate the plans instead (same results to rounding)."""
    with abtem.config.set({"fftw.planning_effort": "FFTW_ESTIMATE"}):
        yield


def test_scs_series_tiny_matches_library():
    """Two unit cells, one phonon configuration, 3x3-cell supercell, 5x5 scan (step 0.39 Å < lambda/2alpha, so
    the scan mean is the exact cell integral for a band-limited signal).

    Reference: the bundled particle library (n_configs configs, 5x5 supercell, 7x7 scan). For one atom the
    configurations scatter by std s (= scs_sem * sqrt(n_configs)); a single configuration differs from the
    mean by < 5 s with probability 1 - 6e-7 (Gaussian), plus < 2 % from the smaller supercell/scan (measured
    0.6 % and 0.2 % in this session)."""
    n, scs = abtem_scs_series(PRESETS["particle"], max_cells=2, seed=3, lateral_cells=3, scan_gpts=5)
    np.testing.assert_array_equal(n, [1, 2])
    assert 0 < scs[0] < scs[1] < (3.92 / 2) ** 2
    lib = load_scs_library("pt001_particle")
    n_cfg = int(re.search(r"finished frozen-phonon configurations: (\d+)", lib.provenance).group(1))
    std1 = lib.scs_sem[1] * np.sqrt(n_cfg)
    assert abs(scs[0] - lib.scs(1)) < 5 * std1 + 0.02 * lib.scs(1)


def test_scs_series_bad_input():
    with pytest.raises(ValueError, match="sampling"):
        abtem_scs_series(PRESETS["particle"], max_cells=1, seed=0, sampling=0.05)
    with pytest.raises(ValueError, match="max_cells"):
        abtem_scs_series(PRESETS["bulk"], max_cells=0, seed=0)
    with pytest.raises(ValueError, match="orthogonal cell"):
        atoms = pt_bulk(1)
        atoms.set_cell([[3.92, 1.0, 0], [0, 3.92, 0], [0, 0, 3.92]])
        simulate_haadf_abtem(atoms, PRESETS["bulk"], pixel_size=0.5)
    with pytest.raises(ValueError, match="device"):
        abtem_scs_series(PRESETS["bulk"], max_cells=1, seed=0, device="tpu")


def test_full_image_tiny():
    atoms = pt_bulk(1)
    img = simulate_haadf_abtem(atoms, PRESETS["bulk"], pixel_size=0.49, num_configs=1, seed=0, sampling=0.034)
    assert img.shape == (8, 8)
    assert np.all(img > 0) and np.all(img < 1)
    # the brightest pixel sits on a column (corner-type columns at multiples of a/2 = 1.96 Å; pixel centres at
    # (j + 0.5) 0.49 Å, so columns fall at pixel corners: the maximum is next to one)
    i, j = np.unravel_index(img.argmax(), img.shape)
    x, y = (j + 0.5) * 0.49, (i + 0.5) * 0.49
    d = np.hypot((x + 0.98) % 1.96 - 0.98, (y + 0.98) % 1.96 - 0.98)
    assert d < 0.49


def test_scs_series_seed_determinism():
    kw = dict(max_cells=1, lateral_cells=3, scan_gpts=3)
    a = abtem_scs_series(PRESETS["bulk"], seed=11, **kw)[1]
    b = abtem_scs_series(PRESETS["bulk"], seed=11, **kw)[1]
    c = abtem_scs_series(PRESETS["bulk"], seed=12, **kw)[1]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
