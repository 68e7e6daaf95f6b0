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
