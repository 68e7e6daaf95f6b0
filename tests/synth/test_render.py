import numpy as np
import pytest

from stemquant.synth import Layer, SpecimenParams, render_specimen, sample_profiles, sample_specimen
from stemquant.synth._geometry import Grid, lattice_slab


def _points_specimen(positions, numbers, shape=(96, 96), pixel_size=0.1):
    grid = Grid.for_image(shape, pixel_size)
    pos = np.asarray(positions, dtype=float)
    layer = Layer(positions=pos, numbers=np.asarray(numbers), weights=np.ones(len(pos)), repeat=np.zeros(2),
                  n_repeat=1)
    return SpecimenParams(shape=shape, pixel_size=pixel_size, kind="points", layers=(layer,), grid=grid)


def test_integrated_intensity_is_kept_and_z_ordering():
    """Two isolated atoms: image sum * p^2 equals each profile's integral; heavier atom -> larger integral."""
    p = 0.1
    spec = _points_specimen([[2.4, 4.8], [7.2, 4.8]], [29, 79], shape=(96, 96), pixel_size=p)
    for seed in range(5):
        prof = sample_profiles(spec.numbers, rng=seed)
        img = render_specimen(spec, prof)
        left, right = img[:, :48].sum() * p**2, img[:, 48:].sum() * p**2
        assert right > left  # eq. (22)
        # an atom alone must integrate to its profile integral (tails outside the window < 3 %)
        single = render_specimen(_points_specimen([[4.8, 4.8]], [79], pixel_size=p), prof)
        assert single.sum() * p**2 == pytest.approx(prof.integral()[1], rel=0.03)
        assert single.min() >= 0


def test_peak_at_atom_position():
    spec = _points_specimen([[3.05, 5.55]], [14], shape=(96, 96), pixel_size=0.1)
    img = render_specimen(spec, sample_profiles([14], rng=0))
    i, j = np.unravel_index(np.argmax(img), img.shape)
    # pixel (i, j) centre = ((j + 0.5) p, (i + 0.5) p)
    assert abs((j + 0.5) * 0.1 - 3.05) <= 0.1 and abs((i + 0.5) * 0.1 - 5.55) <= 0.1


@pytest.mark.parametrize("n_repeat", [1, 5])
def test_zone_axis_lattice_periodicity(n_repeat):
    """A [001] cubic crystal without tilt: FFT peaks at the reciprocal-lattice spacing within one pixel."""
    a, p, n = 3.9, 0.15, 128
    grid = Grid.for_image((n, n), p)
    theta = np.radians(17.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    xy, idx, rvec = lattice_slab(np.eye(3) * a, np.zeros((1, 3)), rot, (0, 0, 1), grid.extent, np.zeros(3))
    assert rvec[2] == pytest.approx(a) and np.allclose(rvec[:2], 0)
    layer = Layer(positions=xy, numbers=np.full(len(xy), 78), weights=np.ones(len(xy)), repeat=rvec[:2],
                  n_repeat=n_repeat)
    spec = SpecimenParams(shape=(n, n), pixel_size=p, kind="crystalline", layers=(layer,), grid=grid)
    img = render_specimen(spec, sample_profiles([78], rng=1))
    f = np.abs(np.fft.fftshift(np.fft.fft2(img - img.mean())))
    c = n // 2
    f[c - 2:c + 3, c - 2:c + 3] = 0
    i, j = np.unravel_index(np.argmax(f), f.shape)
    k_peak = np.hypot(i - c, j - c)  # [pixels of the DFT]
    assert k_peak == pytest.approx(n * p / a, abs=1.0)
    ang = np.degrees(np.arctan2(i - c, j - c)) % 90
    assert min(abs(ang - 17.0), abs(ang - 17.0 - 90)) < 360 / (2 * np.pi * k_peak) * 1.5


def test_render_crystalline_specimen_shape_and_sign():
    spec = sample_specimen((37, 31), rng=5, kind="crystalline", pixel_size=0.2)
    img = render_specimen(spec, sample_profiles(spec.numbers, rng=5))
    assert img.shape == (37, 31) and img.dtype == np.float64
    assert np.all(np.isfinite(img)) and img.min() >= 0 and img.max() > 0


def test_render_bad_input():
    spec = sample_specimen((16, 16), rng=0, kind="points", pixel_size=0.3)
    with pytest.raises(TypeError, match="SpecimenParams"):
        render_specimen(np.zeros((16, 16)), sample_profiles([6], rng=0))
    with pytest.raises(TypeError, match="AtomProfiles"):
        render_specimen(spec, None)
