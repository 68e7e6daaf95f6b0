"""Tests for the STEMDistortion / TEMDistortion pipelines and the parameter samplers."""

import numpy as np
import pytest

from stemquant.distort import (
    DistortedImage,
    STEMDistortion,
    STEMParams,
    TEMDistortion,
    TEMParams,
    apply_jitter,
    sample_stem_params,
    sample_tem_params,
)

DOSE, P = 1e4, 0.12


@pytest.fixture
def clean(rng):
    return rng.random((3, 37, 31))


@pytest.mark.parametrize("cls, params", [(STEMDistortion, STEMParams), (TEMDistortion, TEMParams)])
def test_identity_is_exact_scaling(cls, params, clean):
    """Zero-strength parameters: output = image · dose · p² exactly, zero displacement."""
    out = cls(params.identity())(clean, dose=DOSE, pixel_size=P, rng=0)
    assert np.array_equal(out.image, clean * DOSE * P**2)
    assert not np.any(out.displacement)
    np.testing.assert_allclose(out.to_intensity(), clean, rtol=1e-14)


@pytest.mark.parametrize("cls", [STEMDistortion, TEMDistortion])
def test_shape_contract(cls, clean):
    d = cls()
    out = d(clean, dose=DOSE, pixel_size=P, rng=0)
    assert isinstance(out, DistortedImage)
    assert out.image.shape == clean.shape and out.displacement.shape == (3, 2, 37, 31)
    single = d(clean[0], dose=DOSE, pixel_size=P, rng=0)
    assert single.image.shape == (37, 31) and single.displacement.shape == (2, 37, 31)
    assert out.params is d.params and out.dose == DOSE and out.pixel_size == P


@pytest.mark.parametrize(
    "cls, sampler", [(STEMDistortion, sample_stem_params), (TEMDistortion, sample_tem_params)]
)
def test_determinism(cls, sampler, clean):
    for seed in range(4):
        d = cls(sampler(seed))
        a = d(clean, dose=DOSE, pixel_size=P, rng=seed)
        b = d(clean, dose=DOSE, pixel_size=P, rng=seed)
        c = d(clean, dose=DOSE, pixel_size=P, rng=seed + 100)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.displacement, b.displacement)
        assert not np.array_equal(a.image, c.image)


def test_batch_frames_independent(clean):
    out = STEMDistortion()(np.repeat(clean[:1], 2, axis=0), dose=DOSE, pixel_size=P, rng=1)
    assert not np.array_equal(out.image[0], out.image[1])
    assert not np.array_equal(out.displacement[0], out.displacement[1])


@pytest.mark.parametrize("dose", [500.0, 5e3, 5e4])
def test_poisson_only_pipeline_mean_equals_variance(dose):
    """Poisson-only STEM pipeline on a flat image: mean = variance = dose·p² (N = 4·128², 5 sd bounds)."""
    p = STEMParams.identity().replace(poisson=True)
    out = STEMDistortion(p)(np.full((4, 128, 128), 0.5), dose=dose, pixel_size=P, rng=2).image
    lam, n = 0.5 * dose * P**2, out.size
    assert abs(out.mean() - lam) < 5 * np.sqrt(lam / n)
    assert abs(out.var() - lam) < 5 * np.sqrt((lam + 2 * lam**2) / n)


def test_displacement_is_ground_truth(clean):
    """Without noise, the output equals the clean counts resampled with the returned displacement."""
    p = STEMParams.identity().replace(sigma_x=0.8, sigma_y=0.5)
    out = STEMDistortion(p)(clean, dose=DOSE, pixel_size=P, rng=3)
    dx, dy = out.displacement[:, 0, :, 0], out.displacement[:, 1, :, 0]
    assert np.array_equal(out.displacement[:, 0], np.repeat(dx[..., None], 31, axis=-1))
    np.testing.assert_allclose(out.image, apply_jitter(clean * DOSE * P**2, dx, dy), rtol=1e-14)
    assert np.std(dx) > 0.3 and np.std(dy) > 0.2


def test_jitter_unit_angstrom_scales_with_pixel_size(clean):
    """σ in Å gives displacements σ/p in pixels: same seed, same draws, ratio of displacements = 1/p."""
    pa = STEMParams.identity().replace(sigma_x=0.12, sigma_y=0.06, jitter_unit="Å")
    pp = STEMParams.identity().replace(sigma_x=1.0, sigma_y=0.5)
    a = STEMDistortion(pa)(clean, dose=DOSE, pixel_size=P, rng=4).displacement
    b = STEMDistortion(pp)(clean, dose=DOSE, pixel_size=P, rng=4).displacement
    np.testing.assert_allclose(a, b, rtol=1e-12)


def test_table22_preset_defaults():
    p = STEMParams()
    assert (p.phi_x, p.sigma_x, p.phi_y, p.sigma_y, p.dwell_time) == (0.5, 0.5, 0.5, 0.25, 0.5e-6)
    assert p.poisson and not p.pmt


def test_full_pipeline_keeps_counts_scale(rng):
    """Table 2.2 preset on a flat image: jitter and unit-sum PSF preserve the mean count (5 sd)."""
    img = np.full((2, 64, 64), 0.3)
    out = STEMDistortion()(img, dose=DOSE, pixel_size=P, rng=rng).image
    lam = 0.3 * DOSE * P**2
    assert abs(out.mean() - lam) < 5 * np.sqrt(lam / out.size)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"phi_x": 1.0}, "phi_x"),
        ({"phi_y": 1.2}, "phi_y"),
        ({"sigma_x": -0.1}, "sigma_x"),
        ({"dwell_time": -1e-6}, "dwell_time"),
        ({"jitter_unit": "nm"}, "jitter_unit"),
        ({"black_pixel_fraction": 2.0}, "black_pixel_fraction"),
        ({"pmt_efficiency": 0.0}, "pmt_efficiency"),
    ],
)
def test_stem_params_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        STEMParams(**kwargs)


def test_tem_params_bad_values():
    with pytest.raises(ValueError, match="fpn_sigma"):
        TEMParams(fpn_sigma=-1.0)
    with pytest.raises(ValueError, match="mtf"):
        TEMParams(mtf=(0.5, -1.0, 1.0))


@pytest.mark.parametrize("cls", [STEMDistortion, TEMDistortion])
def test_pipeline_bad_input(cls, clean):
    d = cls()
    with pytest.raises(ValueError, match="dose"):
        d(clean, dose=-5.0, pixel_size=P, rng=0)
    with pytest.raises(ValueError, match="pixel_size"):
        d(clean, dose=DOSE, pixel_size=0.0, rng=0)
    with pytest.raises(ValueError, match="non-negative"):
        d(-clean, dose=DOSE, pixel_size=P, rng=0)
    with pytest.raises(TypeError, match="params"):
        cls(object())


def test_samplers_valid_and_deterministic():
    assert sample_stem_params(3) == sample_stem_params(3)
    assert sample_stem_params(3) != sample_stem_params(4)
    assert sample_tem_params(3) == sample_tem_params(3)


def test_sampler_jitter_probabilities():
    """Paper: jitter present w.p. 0.9, then X / Y / XY = 0.25 / 0.25 / 0.5, so P(σ_x > 0) = 0.675,
    P(σ_y > 0) = 0.675, P(both) = 0.45. N = 2000 draws, binomial 5 sd ≈ 0.053 (false-failure ~6e-7)."""
    ps = [sample_stem_params(np.random.default_rng(s)) for s in range(2000)]
    sx = np.array([p.sigma_x > 0 for p in ps])
    sy = np.array([p.sigma_y > 0 for p in ps])
    tol = 5 * np.sqrt(0.25 / 2000)
    assert abs(sx.mean() - 0.675) < tol and abs(sy.mean() - 0.675) < tol
    assert abs((sx & sy).mean() - 0.45) < tol
    sig = np.array([p.sigma_x for p in ps if p.sigma_x > 0])
    phi = np.array([p.phi_x for p in ps])
    assert sig.min() >= 0.0025 and sig.max() <= 0.8 and phi.max() <= 0.7
    assert all(p.jitter_unit == "Å" for p in ps[:10])


def test_sampled_params_run(clean):
    for seed in range(6):
        s = STEMDistortion(sample_stem_params(seed))(clean, dose=1e3, pixel_size=0.1, rng=seed)
        t = TEMDistortion(sample_tem_params(seed))(clean, dose=1e3, pixel_size=0.1, rng=seed)
        assert np.all(np.isfinite(s.image)) and np.all(np.isfinite(t.image))


def test_tem_shot_only_mean_equals_variance():
    """TEM default (shot noise only) on a flat image: mean = variance = dose·p² (N = 4·128², 5 sd)."""
    out = TEMDistortion()(np.full((4, 128, 128), 0.25), dose=5e3, pixel_size=0.1, rng=3).image
    lam, n = 0.25 * 5e3 * 0.01, out.size
    assert abs(out.mean() - lam) < 5 * np.sqrt(lam / n)
    assert abs(out.var() - lam) < 5 * np.sqrt((lam + 2 * lam**2) / n)


def test_tem_fixed_pattern_shared_over_stack():
    """Black-pixel clusters are a sensor property: same pixels in every frame of one call."""
    p = TEMParams.identity().replace(black_pixel_count=5, cluster_steps=4)
    out = TEMDistortion(p)(np.full((3, 40, 40), 0.5), dose=100.0, pixel_size=0.1, rng=2).image
    dead = out == 0
    assert dead[0].any() and np.array_equal(dead[0], dead[1]) and np.array_equal(dead[0], dead[2])


def _pedestal_image(n=32, floor=0.91):
    """Low-contrast clean image: a Gaussian bump on a pedestal (min/max = ``floor``)."""
    yy, xx = np.mgrid[0:n, 0:n]
    return floor + (1 - floor) * np.exp(-((xx - n / 2) ** 2 + (yy - n / 2) ** 2) / (2 * 4.0**2))


def test_sampled_clip_does_not_flatten_frame_regression():
    """Regression for constant frames from the training sampler: seed [42, 110000] (32×32, 1.1e5 e⁻/Å²,
    p = 0.1 Å) draws clip_fraction ≈ 0.83; with T_u = 0.83·max every pixel of a clean image with
    min/max ≈ 0.91 was above T_u, so the whole frame came out constant (= T_u, then quantised)."""
    params = sample_stem_params(np.random.default_rng([42, 110000]))
    assert params.clip_fraction is not None and params.clip_fraction < 0.91  # the reproducing draw
    out = STEMDistortion(params)(_pedestal_image(), dose=1.1e5, pixel_size=0.1, rng=42).image
    assert np.ptp(out) > 0


def test_sampler_path_reproducer_not_constant():
    """The exact reported path: synth.default_distortion() on random_clean_image((32, 32), rng=42, kind="any")
    at 1.1e5 e⁻/Å² with the generator default_rng([42, 110000]) returned a constant frame before the fix."""
    synth = pytest.importorskip("stemquant.synth")
    from stemquant.synth._image import random_clean_image

    clean = random_clean_image((32, 32), rng=42, kind="any")
    out = synth.default_distortion()(clean, 1.1e5, np.random.default_rng([42, 110000]))
    assert np.ptp(out) > 0


@pytest.mark.parametrize("zinger_fraction", [0.0, 1e-3])
def test_pipeline_clip_only_saturates_the_top_of_the_signal_range(zinger_fraction):
    """With black pixels and zingers on, the pipeline's clip equals min(signal, T_u) with T_u taken from the
    signal range before those artefacts: dead pixels (0) cannot pull T_u below a pedestal. Clip draws no
    random numbers, so the same seed without clip gives the unclipped frame."""
    base = STEMParams().replace(black_pixel_fraction=1e-2, zinger_fraction=zinger_fraction, pmt=True)
    img = np.stack([_pedestal_image(), _pedestal_image(floor=0.5)])
    ref = STEMDistortion(base)(img, dose=1e5, pixel_size=0.1, rng=8).image
    out = STEMDistortion(base.replace(clip_fraction=0.8))(img, dose=1e5, pixel_size=0.1, rng=8).image
    assert np.all(ref.min(axis=(1, 2)) == 0)  # black pixels present
    clipped = out != ref
    assert np.all(ref[clipped] > out[clipped])  # clipping only lowers pixels
    for f in range(2):
        live = (ref[f] > 0) & (ref[f] < ref[f].max())
        assert np.unique(out[f][live]).size > 10  # the signal survives
        assert clipped[f].mean() < 0.5
        assert (clipped[f] & live).any()  # the top of the signal itself saturates, not only a zinger
