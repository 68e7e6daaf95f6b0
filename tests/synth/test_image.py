import numpy as np
import pytest

from stemquant.synth import lowres_image, postprocess, random_clean_image
from stemquant.synth._post import RATIO_RANGE


def _check_constraints(img):
    """Documented output contract (eqs. 23-26): non-negative, max exactly 1, Std/Mean in [0.01, 0.35]."""
    assert np.all(np.isfinite(img)) and img.min() >= 0
    assert img.max() == pytest.approx(1.0, abs=1e-12)
    ratio = img.std() / img.mean()
    assert RATIO_RANGE[0] - 1e-9 <= ratio <= RATIO_RANGE[1] + 1e-9


@pytest.mark.parametrize("kind", ["hrstem", "lowres", "any"])
def test_constraints_hold_over_many_draws(kind):
    rng = np.random.default_rng(123)
    for _ in range(6):
        img = random_clean_image((48, 40), rng=rng, kind=kind)
        assert img.shape == (48, 40) and img.dtype == np.float64
        _check_constraints(img)


def test_odd_shape_and_fixed_pixel_size():
    img = random_clean_image((37, 31), rng=4, kind="hrstem", pixel_size=0.12)
    assert img.shape == (37, 31)
    _check_constraints(img)


def test_determinism():
    a = random_clean_image((32, 32), rng=10, kind="any")
    b = random_clean_image((32, 32), rng=10, kind="any")
    c = random_clean_image((32, 32), rng=11, kind="any")
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_bad_input():
    with pytest.raises(ValueError, match="kind"):
        random_clean_image((32, 32), rng=0, kind="tem")
    with pytest.raises(ValueError, match="shape"):
        random_clean_image((4, 32), rng=0)
    with pytest.raises(TypeError, match="rng"):
        random_clean_image((32, 32), rng="seed")


def test_postprocess_constraint_from_out_of_range_inputs(rng):
    # high contrast (ratio >> 0.35) and nearly flat (ratio << 0.01) images are both brought into range
    sparse = np.zeros((40, 40))
    sparse[20, 20] = 1.0
    flat = 100.0 + 1e-3 * rng.random((40, 40))
    for img in (sparse, flat):
        for seed in range(10):
            _check_constraints(postprocess(img, rng=seed))


def test_postprocess_bad_input():
    with pytest.raises(ValueError, match="non-negative"):
        postprocess(-np.ones((8, 8)), rng=0)
    with pytest.raises(ValueError, match="constant"):
        postprocess(np.zeros((8, 8)), rng=1)


def test_lowres_non_negative_and_deterministic():
    a = lowres_image((50, 45), np.random.default_rng(3))
    b = lowres_image((50, 45), np.random.default_rng(3))
    assert a.shape == (50, 45) and a.min() >= 0 and a.max() > 0
    assert np.array_equal(a, b)
