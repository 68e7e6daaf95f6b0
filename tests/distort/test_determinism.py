"""Same rng -> same output, different rng -> different output, for every stochastic operator."""

import numpy as np
import pytest

from stemquant.distort import (
    annotate,
    crop_fill,
    dark_current,
    dark_current_noise,
    fixed_pattern_noise,
    flicker_noise,
    random_affine_matrix,
    random_pixel_mask,
    random_walk_mask,
    reset_noise,
    row_line_noise,
    thermal_noise,
    zingers,
)

IMG = np.random.default_rng(0).random((2, 37, 31)) + 0.5
MASK = np.zeros(IMG.shape, bool)
MASK[:, 5:9, 3] = True

OPS = {
    "fixed_pattern_noise": lambda r: fixed_pattern_noise(IMG, sigma=0.1, rng=r),
    "dark_current": lambda r: dark_current((37, 31), mean=1.0, std=0.5, hot_fraction=0.01, rng=r),
    "dark_current_noise": lambda r: dark_current_noise(IMG, np.full((37, 31), 2.0), rng=r),
    "thermal_noise": lambda r: thermal_noise(IMG, sigma=1.0, rng=r),
    "flicker_noise": lambda r: flicker_noise(IMG, sigma=1.0, rng=r),
    "reset_noise": lambda r: reset_noise(IMG, sigma=1.0, rng=r),
    "row_line_noise": lambda r: row_line_noise(IMG, count=3, rng=r),
    "random_pixel_mask": lambda r: random_pixel_mask(IMG.shape, fraction=0.05, rng=r),
    "random_walk_mask": lambda r: random_walk_mask((37, 31), count=5, steps=10, rng=r),
    "zingers": lambda r: zingers(IMG, MASK, rng=r),
    "random_affine_matrix": lambda r: random_affine_matrix(rng=r),
    "annotate": lambda r: annotate([IMG[0]], rng=r, count=3, text_probability=0.0)[0],
    "crop_fill": lambda r: crop_fill([IMG], rng=r)[0],
}


@pytest.mark.parametrize("name", sorted(OPS))
def test_same_seed_same_output_different_seed_different_output(name):
    op = OPS[name]
    a, b = op(np.random.default_rng(1)), op(np.random.default_rng(1))
    assert np.array_equal(a, b)
    others = [op(np.random.default_rng(s)) for s in (2, 3, 4)]
    assert any(not np.array_equal(a, o) for o in others)
