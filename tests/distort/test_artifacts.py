"""Tests for row lines, black pixels, zingers, clipping and quantisation (eqs. 37–40, 51–55)."""

import numpy as np
import pytest

from stemquant.distort import (
    black_pixels,
    quantise,
    random_pixel_mask,
    random_walk_mask,
    row_line_noise,
    upper_clip,
    zingers,
)


def test_row_lines_replace_segment_by_scaled_mean(rng):
    img = rng.random((3, 37, 31)) + 1
    out = row_line_noise(img, count=1, max_length=0.5, rng=1)
    assert out.shape == img.shape
    for f in range(3):
        changed = np.argwhere(out[f] != img[f])
        rows = np.unique(changed[:, 0])
        assert len(rows) == 1  # one row per frame
        seg_cols = changed[:, 1]
        seg = out[f, rows[0], seg_cols]
        assert np.allclose(seg, seg[0])  # constant = mean × factor
        ratio = seg[0] / img[f, rows[0], seg_cols.min():seg_cols.max() + 1].mean()
        assert 0.5 <= ratio <= 1.5


def test_row_lines_zero_count_and_determinism(rng):
    img = rng.random((20, 20))
    assert np.array_equal(row_line_noise(img, count=0, rng=0), img)
    assert np.array_equal(row_line_noise(img, count=3, rng=2), row_line_noise(img, count=3, rng=2))
    assert not np.array_equal(row_line_noise(img, count=3, rng=2), row_line_noise(img, count=3, rng=3))
    with pytest.raises(ValueError, match="max_length"):
        row_line_noise(img, count=1, max_length=0.0)


def test_random_pixel_mask_fraction():
    """Expected fraction f on N = 4·256² pixels: binomial sd sqrt(f(1−f)/N); 5 sd (duplicates lower the
    count by ~f² relative, negligible at f = 0.01)."""
    f, shape = 0.01, (4, 256, 256)
    m = random_pixel_mask(shape, fraction=f, rng=3)
    n = np.prod(shape)
    assert m.shape == shape
    assert abs(m.mean() - f) < 5 * np.sqrt(f * (1 - f) / n) + f**2
    assert not random_pixel_mask(shape, fraction=0.0, rng=3).any()
    with pytest.raises(ValueError, match="fraction"):
        random_pixel_mask(shape, fraction=1.5)


def test_random_walk_clusters_connected_and_bounded():
    m = random_walk_mask((64, 64), count=1, steps=20, rng=4)
    assert 1 <= m.sum() <= 21
    from scipy import ndimage

    assert ndimage.label(m)[1] == 1  # a walk is 4-connected
    assert random_walk_mask((64, 64), count=5, steps=0, rng=4).sum() <= 5


def test_black_pixels_and_zingers(rng):
    img = rng.random((2, 37, 31)) + 0.1
    m = np.zeros(img.shape, bool)
    m[0, 3, 4] = m[1, 10, 11] = True
    b = black_pixels(img, m)
    assert b[0, 3, 4] == 0 and b[1, 10, 11] == 0 and np.array_equal(b[~m], img[~m])
    z = zingers(img, m, strength=(1.0, 2.0), rng=1)
    for f, (i, j) in enumerate([(3, 4), (10, 11)]):
        assert img[f].max() <= z[f, i, j] <= 2 * img[f].max()
    assert np.array_equal(z[~m], img[~m])
    with pytest.raises(ValueError, match="strength"):
        zingers(img, m, strength=(2.0, 1.0))


def test_upper_clip_and_quantise(rng):
    img = rng.random((2, 37, 31)) * 10
    c = upper_clip(img, fraction=0.5)
    lo, hi = img.min(axis=(1, 2)), img.max(axis=(1, 2))
    assert np.allclose(c.max(axis=(1, 2)), lo + 0.5 * (hi - lo))
    below = img < (lo + 0.5 * (hi - lo))[:, None, None]
    assert np.array_equal(c[below], img[below])
    assert np.array_equal(upper_clip(img, fraction=1.0), img)
    q = quantise(img, adc_gain=4.0)
    assert np.allclose(q * 4, np.round(q * 4)) and np.max(np.abs(q - img)) <= 0.125 + 1e-12
    with pytest.raises(ValueError, match="adc_gain"):
        quantise(img, adc_gain=0.0)
    with pytest.raises(ValueError, match="fraction"):
        upper_clip(img, fraction=0.0)


def test_upper_clip_keeps_a_pedestal_image_non_constant():
    """Regression: T_u used to be fraction·max, so a frame whose minimum is above that (a pedestal of 0.9·max)
    came out constant. T_u = min + fraction·(max − min) keeps every pixel below it unchanged."""
    img = 0.9 + 0.1 * np.random.default_rng(5).random((2, 16, 16))
    c = upper_clip(img, fraction=0.8)
    assert np.all(np.ptp(c, axis=(1, 2)) > 0)
    assert np.array_equal(c.min(axis=(1, 2)), img.min(axis=(1, 2)))
