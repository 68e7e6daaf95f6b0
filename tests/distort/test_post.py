"""Tests for the post-processing distortions (interpolation, blur, annotations, cropping)."""

import numpy as np
import pytest

from stemquant.distort import affine_interpolate, annotate, crop_fill, gaussian_blur, random_affine_matrix


def test_affine_identity_and_rotation(rng):
    img = rng.random((2, 37, 31))
    np.testing.assert_allclose(affine_interpolate(img, np.eye(2)), img, atol=1e-12)
    sq = rng.random((33, 33))
    rot = np.array([[0.0, -1.0], [1.0, 0.0]])  # 90° about the centre: exact on the pixel grid
    out = affine_interpolate(sq, rot, order=1)
    assert np.allclose(np.sort(out.ravel()), np.sort(sq.ravel()))


def test_random_affine_matrix_determinism_and_bounds():
    a = random_affine_matrix(rng=1)
    assert np.array_equal(a, random_affine_matrix(rng=1))
    assert not np.array_equal(a, random_affine_matrix(rng=2))
    m = random_affine_matrix(rng=3, max_rotation=0.0, scale_range=(1.0, 1.0), max_shear=0.0)
    np.testing.assert_allclose(m, np.eye(2))
    with pytest.raises(ValueError, match="scale_range"):
        random_affine_matrix(rng=0, scale_range=(0.0, 1.0))
    with pytest.raises(ValueError, match="matrix"):
        affine_interpolate(np.ones((5, 5)), np.eye(3))


def test_gaussian_blur(rng):
    img = rng.random((2, 37, 31))
    assert np.array_equal(gaussian_blur(img, sigma=0.0), img)
    out = gaussian_blur(img, sigma=1.0)
    np.testing.assert_allclose(out.sum(axis=(1, 2)), img.sum(axis=(1, 2)), rtol=1e-10)  # reflect keeps sum
    assert out.std() < img.std()
    with pytest.raises(ValueError, match="sigma"):
        gaussian_blur(img, sigma=-1.0)


def test_annotate_same_pixels_in_pair(rng):
    target = rng.random((64, 64))
    noisy = target + rng.normal(0, 0.1, target.shape)
    a, b = annotate([target, noisy], rng=5, count=4, text_probability=1.0)
    ma, mb = a != target, b != noisy
    assert ma.sum() > 10 and np.array_equal(ma, mb)
    assert np.all(np.isin(a[ma], [target.min(), target.max()]))
    assert np.array_equal(annotate([target], rng=5)[0], annotate([target], rng=5)[0])


def test_annotate_bad_input(rng):
    with pytest.raises(TypeError, match="sequence"):
        annotate(rng.random((8, 8)), rng=0)
    with pytest.raises(ValueError, match="same shape"):
        annotate([rng.random((8, 8)), rng.random((9, 8))], rng=0)


def test_crop_fill_protects_centre(rng):
    img = rng.random((3, 40, 30))
    for seed in range(5):
        (out,) = crop_fill([img], rng=seed, fill="median", keep=0.5)
        changed = (out != img).any(axis=0)
        assert changed.any()
        side = np.sqrt(0.5)
        mh, mw = (40 - round(side * 40)) // 2, (30 - round(side * 30)) // 2
        assert not changed[mh:40 - mh, mw:30 - mw].any()
    a, b = crop_fill([img, 2 * img], rng=1, fill="constant", value=-1.0)
    assert np.array_equal(a == -1, b == -1)
    with pytest.raises(ValueError, match="fill"):
        crop_fill([img], rng=0, fill="mean")
