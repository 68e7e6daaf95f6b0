import itertools
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import stemquant.synth._dataset as dsmod
from stemquant.synth import PairDataset, poisson_distortion


def _take(ds, n):
    return list(itertools.islice(iter(ds), n))


def test_pairs_shape_dtype_and_scale():
    ds = PairDataset(shape=(24, 20), seed=1, distortion=None, kind="lowres", dose_range=(5e2, 5e2))
    for noisy, clean in _take(ds, 3):
        assert noisy.shape == clean.shape == (1, 24, 20)
        assert noisy.dtype == clean.dtype == torch.float32
        assert clean.max().item() == pytest.approx(1.0)
        assert torch.isfinite(noisy).all()


def test_poisson_distortion_is_unbiased():
    """Mean of Poisson(c * s) / s equals c; tolerance 5 standard errors (false-failure rate < 1e-6)."""
    rng = np.random.default_rng(0)
    clean = np.full((200, 200), 0.5)
    dose, p = 1e3, 0.1
    noisy = poisson_distortion(clean, dose, rng, pixel_size=p)
    s = dose * p**2
    se = np.sqrt(0.5 * s) / s / np.sqrt(clean.size)
    assert abs(noisy.mean() - 0.5) < 5 * se


def test_custom_distortion_receives_dose_in_range():
    seen = []

    def f(clean, dose, rng):
        seen.append(dose)
        return clean + 1.0

    ds = PairDataset(shape=(16, 16), seed=2, distortion=f, kind="lowres", dose_range=(1e3, 1e4))
    for noisy, clean in _take(ds, 4):
        assert torch.allclose(noisy, clean + 1.0)
    assert all(1e3 <= d <= 1e4 for d in seen) and len(set(seen)) == 4


def test_determinism_same_seed_same_stream():
    a = _take(PairDataset(shape=(16, 16), seed=5, kind="lowres"), 2)
    b = _take(PairDataset(shape=(16, 16), seed=5, kind="lowres"), 2)
    c = _take(PairDataset(shape=(16, 16), seed=6, kind="lowres"), 2)
    for (na, ca), (nb, cb) in zip(a, b, strict=True):
        assert torch.equal(na, nb) and torch.equal(ca, cb)
    assert not torch.equal(a[0][1], c[0][1])


def test_worker_streams_are_independent(monkeypatch):
    """Each worker draws from its own SeedSequence child: the two workers' images differ."""
    streams = []
    for wid in range(2):
        monkeypatch.setattr(dsmod, "get_worker_info", lambda w=wid: SimpleNamespace(id=w, num_workers=2))
        streams.append(_take(PairDataset(shape=(16, 16), seed=9, kind="lowres"), 2))
    for (_, c0), (_, c1) in zip(*streams, strict=True):
        assert not torch.equal(c0, c1)
    # the streams match the documented spawn rule
    r1 = dsmod.worker_rng(9, 1, 2)
    assert r1.random() == np.random.default_rng(np.random.SeedSequence(9).spawn(2)[1]).random()


def test_dataloader_with_two_workers():
    loader = torch.utils.data.DataLoader(PairDataset(shape=(16, 16), seed=3, kind="lowres"), batch_size=2,
                                         num_workers=2)
    noisy, clean = next(iter(loader))
    assert noisy.shape == (2, 1, 16, 16)
    assert not torch.equal(clean[0], clean[1])  # batch items come from the two independent workers


@pytest.mark.parametrize("kwargs, match", [
    ({"seed": -1}, "seed"),
    ({"dose_range": (1e3, 1e2)}, "dose_range"),
    ({"dose_range": (0, 1e2)}, "dose_range"),
    ({"kind": "tem"}, "kind"),
    ({"distortion": 3}, "distortion"),
    ({"shape": (2, 2)}, "shape"),
    ({"pixel_size": 0.0}, "pixel_size"),
])
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PairDataset(**{"shape": (16, 16), **kwargs})


@pytest.mark.parametrize("name", ["stem_distortion", "tem_distortion"])
def test_stem_and_tem_pairs_share_the_clean_scale(name):
    # noisy = counts / (dose p²): the median over the brighter half of the pixels must track the clean image.
    # A missing or doubled normalisation is off by dose·p² = 500; the random gains, offsets and clipping of the
    # distortion models move the median by tens of percent at most, hence the factor-2 window.
    pytest.importorskip("stemquant.distort")
    import stemquant.synth as synth

    f = getattr(synth, name)
    ds = PairDataset(shape=(48, 40), seed=4, distortion=lambda c, d, r: f(c, d, r), kind="lowres",
                     dose_range=(5e4, 5e4))
    for noisy, clean in _take(ds, 5):
        bright = clean > clean.median()
        ratio = noisy[bright].median() / clean[bright].median()
        assert 0.5 < ratio.item() < 2.0
    rng_a, rng_b = np.random.default_rng(1), np.random.default_rng(1)
    clean = np.full((32, 32), 0.5)
    np.testing.assert_array_equal(f(clean, 1e3, rng_a), f(clean, 1e3, rng_b))  # same rng -> same output


@pytest.mark.parametrize("name", ["poisson_distortion", "stem_distortion", "tem_distortion"])
def test_distortions_take_an_int_seed_as_one_generator(name):
    # docs/conventions.md: rng is an int, a Generator or None. An int seeds ONE generator for the parameter
    # draw and the noise (it used to be re-seeded for each: parameters and noise shared the same numbers, or
    # poisson_distortion raised AttributeError).
    import stemquant.synth as synth

    f = getattr(synth, name)
    clean = np.random.default_rng(0).random((24, 24)) + 0.1
    a = f(clean, 2e3, 7)
    np.testing.assert_array_equal(a, f(clean, 2e3, np.random.default_rng(7)))
    assert not np.array_equal(a, f(clean, 2e3, 8))


@pytest.mark.parametrize("name", ["poisson_distortion", "stem_distortion", "tem_distortion"])
@pytest.mark.parametrize(("dose", "pixel_size", "match"), [
    (0.0, 0.1, "dose"), (-1e3, 0.1, "dose"), (float("nan"), 0.1, "dose"), (1e3, 0.0, "pixel_size"),
])
def test_distortions_reject_bad_dose_and_pixel_size(name, dose, pixel_size, match):
    import stemquant.synth as synth

    with pytest.raises(ValueError, match=match):
        getattr(synth, name)(np.full((16, 16), 0.5), dose, 0, pixel_size=pixel_size)


def test_poisson_distortion_rejects_nan_and_negative_images():
    bad = np.full((16, 16), 0.5)
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        poisson_distortion(bad, 1e3, 0)
    with pytest.raises(ValueError, match="non-negative"):
        poisson_distortion(np.full((16, 16), -0.5), 1e3, 0)
