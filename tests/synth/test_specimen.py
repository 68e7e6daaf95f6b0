import numpy as np
import pytest

from stemquant.synth import SpecimenParams, sample_specimen
from stemquant.synth._crystal import MIN_DIST_RANGE, _min_distance, random_unit_cell


@pytest.mark.parametrize("kind", ["crystalline", "amorphous", "points", "any"])
def test_smoke_and_shape(kind):
    spec = sample_specimen((40, 33), rng=2, kind=kind, pixel_size=0.3)
    assert isinstance(spec, SpecimenParams) and spec.shape == (40, 33)
    assert spec.grid.grid_shape[0] >= 40 + 2 * spec.grid.pad
    for layer in spec.layers:
        assert layer.positions.shape == (len(layer.numbers), 2)
        assert layer.weights.shape == (len(layer.numbers),)
        assert layer.n_repeat >= 1
        if layer.occupancy is not None:
            assert layer.occupancy.shape == spec.grid.grid_shape
            assert layer.occupancy.min() >= 0 and layer.occupancy.max() <= 1
        x0, x1, y0, y1 = spec.grid.extent
        pos = layer.positions[layer.weights > 0] if layer.weights.min() >= 0 else np.zeros((0, 2))
        assert np.all((pos[:, 0] >= x0) & (pos[:, 0] < x1) & (pos[:, 1] >= y0) & (pos[:, 1] < y1))
    assert spec.numbers.min() >= 1 and spec.numbers.max() <= 103


def test_determinism():
    a = sample_specimen((32, 32), rng=7)
    b = sample_specimen((32, 32), rng=7)
    c = sample_specimen((32, 32), rng=8)
    assert a.pixel_size == b.pixel_size and len(a.layers) == len(b.layers)
    for la, lb in zip(a.layers, b.layers, strict=True):
        assert np.array_equal(la.positions, lb.positions) and np.array_equal(la.numbers, lb.numbers)
    assert a.pixel_size != c.pixel_size


def test_unit_cell_constraint():
    """Every random cell obeys the minimum-distance rule [0.95, 7] Å (Lobato et al., step 1)."""
    rng = np.random.default_rng(11)
    for _ in range(30):
        uc = random_unit_cell(rng)
        frac = np.linalg.solve(uc.cell.T, uc.positions.T).T
        assert MIN_DIST_RANGE[0] <= _min_distance(uc.cell, frac) <= MIN_DIST_RANGE[1]
        assert 1 <= np.unique(uc.numbers).size <= 16
        assert 1 <= uc.spacegroup <= 230


@pytest.mark.parametrize("shape", [(7, 64), (64,), "ab", (10.5, 12)])
def test_bad_shape(shape):
    with pytest.raises(ValueError, match="shape"):
        sample_specimen(shape, rng=0)


def test_bad_kind_and_pixel_size():
    with pytest.raises(ValueError, match="kind"):
        sample_specimen((16, 16), rng=0, kind="liquid")
    with pytest.raises(ValueError, match="pixel_size"):
        sample_specimen((16, 16), rng=0, pixel_size=-0.1)


def test_zone_axis_share_and_alignment(monkeypatch):
    # Without mistilt, a zone-axis orientation (p = P_ZONE_AXIS = 0.75) puts the lattice vector uvw exactly on
    # the beam; a random orientation (p = 0.25) does so with probability 0. Binomial, n = 400: the share lies
    # within 5 standard errors (0.108) of 0.75 with false-failure rate < 1e-6.
    import stemquant.synth._specimen as spec_mod

    monkeypatch.setattr(spec_mod, "MISTILT_STD", 0.0)
    rng = np.random.default_rng(21)
    n, aligned = 400, 0
    for _ in range(n):
        cell = random_unit_cell(rng, max_types=1).cell
        rot, uvw = spec_mod._orientation(cell, rng)
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-12) and np.linalg.det(rot) > 0
        v = np.asarray(uvw, dtype=float) @ cell @ rot.T
        assert v[2] > 0  # the repeat vector points along +z
        aligned += np.hypot(v[0], v[1]) < 1e-9 * np.linalg.norm(v)
    assert abs(aligned / n - spec_mod.P_ZONE_AXIS) < 5 * np.sqrt(0.75 * 0.25 / n)


def test_wedge_surfaces():
    # Wedge (p = P_WEDGE = 0.75): top/bottom surfaces inside [0, T], ordered, with slope at most tan(45°)
    # (WEDGE_ANGLE); share within 5 binomial standard errors (false-failure rate < 1e-6).
    import stemquant.synth._specimen as spec_mod
    from stemquant.synth._geometry import Grid

    grid, thick = Grid.for_image((48, 40), 0.2), 9.6
    rng = np.random.default_rng(22)
    n, wedges = 400, 0
    for _ in range(n):
        surf = spec_mod._surfaces(grid, thick, rng)
        if surf is None:
            continue
        wedges += 1
        z_top, z_bot = surf
        assert np.all((z_top >= 0) & (z_top <= z_bot) & (z_bot <= thick))
        for z in (z_top, z_bot):
            gy, gx = np.gradient(z, grid.pixel_size)
            assert np.hypot(gx, gy).max() <= np.tan(np.radians(spec_mod.WEDGE_ANGLE[1])) * (1 + 1e-9)
    assert abs(wedges / n - spec_mod.P_WEDGE) < 5 * np.sqrt(0.75 * 0.25 / n)
