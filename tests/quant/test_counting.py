"""Tests for stemquant.quant._counting: count_gmm, count_library, load_library_csv, plot_counting."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import stats  # noqa: E402

from stemquant.quant._counting import (  # noqa: E402
    GMMCountResult,
    count_gmm,
    count_library,
    load_library_csv,
    plot_counting,
)

SIGMA = 0.1


def _mixture(rng, means, n_per, sigma=SIGMA):
    """Equal-weight Gaussian mixture sample and its true component labels (shuffled)."""
    labels = np.repeat(np.arange(len(means)), n_per)
    rng.shuffle(labels)
    return np.asarray(means)[labels] + rng.normal(0.0, sigma, labels.size), labels


def test_selects_true_order_and_counts_99_percent(rng):
    # 4 components 6σ apart, 250 columns each. With equal weights and a shared variance the decision boundary
    # sits 3σ from each mean, so a column is misclassified with probability ≤ 2Φ(−3) ≈ 0.27 % (Φ(−3) for
    # the two outer components). Expected wrong columns: 1000·(2·0.00135 + 2·0.0027)/4 ≈ 2.0; the test fails
    # at > 10 wrong (1 %): Poisson(2.0) tail P(X ≥ 11) ≈ 8e-6 — the false-failure rate of this check.
    means = 1.0 + 6 * SIGMA * np.arange(4)
    scs, labels = _mixture(rng, means, 250)
    res = count_gmm(scs, max_components=6)
    assert res.n_components == 4
    assert np.mean(res.counts == labels + 1) >= 0.99
    # the fitted means are within 5 standard errors (σ/√250) of the truth
    np.testing.assert_allclose(res.means, means, atol=5 * SIGMA / np.sqrt(250))


def test_result_contract(rng):
    scs, _ = _mixture(rng, [1.0, 2.0, 3.0], 40)
    res = count_gmm(scs, max_components=5, first_count=3)
    assert isinstance(res, GMMCountResult)
    k = res.n_components
    assert res.means.shape == res.sd.shape == res.weights.shape == (k,)
    assert np.all(np.diff(res.means) > 0)
    assert res.weights.sum() == pytest.approx(1.0)
    assert res.icl.shape == res.nll.shape == (5,) and len(res.fits) == 5
    assert res.posterior.shape == (120, k)
    np.testing.assert_allclose(res.posterior.sum(axis=1), 1.0)
    assert res.counts.dtype.kind == "i" and res.counts.min() >= 3 and res.counts.max() <= 3 + k - 1
    table = res.table
    assert list(table.columns) == ["scs", "count", "component", "probability"] and len(table) == 120
    np.testing.assert_array_equal(table["count"], res.counts)
    with pytest.raises(AttributeError):
        res.n_components = 2  # frozen


def test_nll_and_icl_match_independent_computation(rng):
    scs, _ = _mixture(rng, [1.0, 1.6, 2.2], 50)
    res = count_gmm(scs, max_components=4)
    n = scs.size
    for k, fit in enumerate(res.fits, start=1):
        comps = zip(fit.means, fit.sd, fit.weights, strict=True)
        dens = sum(w * stats.norm.pdf(scs, m, s) for m, s, w in comps)
        nll = -np.sum(np.log(dens))
        assert fit.nll == pytest.approx(nll, rel=1e-9, abs=1e-9)
        post = np.array([w * stats.norm.pdf(scs, m, s) for m, s, w in zip(fit.means, fit.sd, fit.weights,
                                                                        strict=True)]).T / dens[:, None]
        entropy = -np.sum(post * np.log(np.clip(post, 1e-300, None)))
        assert res.icl[k - 1] == pytest.approx(2 * nll + 2 * entropy + 2 * k * np.log(n), rel=1e-9)
        # one shared variance without dose
        np.testing.assert_allclose(fit.sd, fit.sd[0])


def test_em_reaches_at_least_the_true_parameters_likelihood(rng):
    means = np.array([1.0, 1.5, 2.0])
    scs, _ = _mixture(rng, means, 100)
    fit = count_gmm(scs, max_components=3).fits[2]
    dens_true = sum(stats.norm.pdf(scs, m, SIGMA) / 3 for m in means)
    assert fit.nll <= -np.sum(np.log(dens_true)) + 1e-6  # the MLE is at least as likely as the truth


def test_user_override_and_first_minimum(rng):
    scs, _ = _mixture(rng, [1.0, 2.0, 3.0], 40)
    auto = count_gmm(scs, max_components=5)
    forced = count_gmm(scs, max_components=5, n_components=2)
    assert forced.n_components == 2 and forced.posterior.shape == (120, 2)
    np.testing.assert_array_equal(forced.icl, auto.icl)
    first = count_gmm(scs, max_components=5, selection="first")
    k = first.n_components
    assert k == 1 or first.icl[k - 2] >= first.icl[k - 1]
    assert k == 5 or first.icl[k] > first.icl[k - 1]


def test_dose_dependent_variance(rng):
    # SCS in Å² measured at dose d have variance σ² + μ/d (Poisson); the dose model must recover the growth of
    # the component widths. Each sd estimate from 200 samples has relative standard error ≈ 1/√400 = 5 %;
    # 20 % is 4 standard errors (false-failure rate ≈ 6e-5 per component).
    dose, sigma0 = 1.0e4, 0.005
    means = np.array([0.5, 1.0, 1.5])
    labels = np.repeat(np.arange(3), 200)
    true_sd = np.sqrt(sigma0**2 + means / dose)
    scs = means[labels] + rng.normal(size=labels.size) * true_sd[labels]
    res = count_gmm(scs, max_components=4, dose=dose)
    assert res.n_components == 3 and res.dose == dose
    np.testing.assert_allclose(res.sd, true_sd, rtol=0.2)
    assert np.all(np.diff(res.sd) > 0)
    assert np.mean(res.counts == labels + 1) >= 0.99
    shared = count_gmm(scs, max_components=4, n_components=3)
    assert res.nll[2] <= shared.nll[2] + 1e-6  # the right variance model fits at least as well


def test_deterministic(rng):
    scs, _ = _mixture(rng, [1.0, 2.0], 30)
    a, b = count_gmm(scs, max_components=3), count_gmm(scs, max_components=3)
    np.testing.assert_array_equal(a.icl, b.icl)
    np.testing.assert_array_equal(a.counts, b.counts)


@pytest.mark.parametrize(
    ("scs", "kwargs", "match"),
    [
        ([1.0, np.nan, 2.0, 3.0], {"max_components": 2}, "NaN"),
        ([1.0, 2.0, 3.0], {"max_components": 4}, "max_components"),
        ([[1.0, 2.0], [3.0, 4.0]], {"max_components": 2}, "1-D"),
        ([1.0, 2.0, 3.0], {"max_components": 2, "n_components": 3}, "n_components"),
        ([1.0, 2.0, 3.0], {"max_components": 2, "first_count": -1}, "first_count"),
        ([1.0, 2.0, 3.0], {"max_components": 2, "dose": -5.0}, "dose"),
        ([1.0, 2.0, 3.0], {"max_components": 2, "selection": "click"}, "selection"),
        ([-1.0, 2.0, 3.0], {"max_components": 2, "dose": 100.0}, "non-negative"),
    ],
)
def test_count_gmm_bad_input(scs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        count_gmm(scs, **kwargs)


def test_count_library_hand_checked():
    lib = [1.0, 2.0, 3.0]
    scs = [-0.2, 0.49, 0.5, 1.49, 1.5, 2.2, 2.51, 3.4]
    # boundaries 0.5, 1.5, 2.5 (midpoints, SCS(0) = 0); values on a boundary take the larger count
    np.testing.assert_array_equal(count_library(scs, lib), [0, 0, 1, 1, 2, 2, 3, 3])
    with pytest.warns(UserWarning, match="extend the library"):
        assert count_library([1.0, 2.0, 5.0], lib).tolist() == [1, 2, 3]


def test_count_library_refuses_a_scale_mismatch():
    # SCS of a counts image (counts·Å²) against a library in Å² of normalised images, and the reverse: every
    # column would be clamped to the thickest library entry or to 0 atoms — refused, not counted
    lib = np.array([0.02, 0.041, 0.06, 0.082])
    with pytest.raises(ValueError, match="different scales"):
        count_library(lib[[0, 1, 2, 3, 1]] * 5e3 * 0.01, lib)  # × dose·p²
    for few in ([0, 1, 2, 3, 1], [2, 0, 1]):
        with pytest.raises(ValueError, match="different scales"):
            count_library(lib[few], lib * 50.0)
    # sparse occupation is a sample, not a mismatch: 3 dopant atoms among 10 sites, 12 columns + 20 vacuum sites
    assert count_library(np.r_[lib[[0, 0, 0]], np.full(7, 0.001)], lib).sum() == 3
    with pytest.warns(UserWarning, match="empty sites"):
        assert count_library(np.r_[lib[np.arange(12) % 4], np.full(20, 0.001)], lib).sum() == 30
    # legitimate: one column, a sample somewhat thicker than the library (warned), a few empty sites (warned when
    # they are the majority)
    assert count_library([0.06], lib).tolist() == [3]
    assert count_library([0.001], lib).tolist() == [0]  # one empty site
    with pytest.warns(UserWarning, match="extend the library"):
        assert count_library(lib[[3, 3, 3]] * 1.5, lib).tolist() == [4, 4, 4]
    assert count_library([0.003, 0.04, 0.08], lib).tolist() == [0, 2, 4]
    with pytest.warns(UserWarning, match="empty sites"):
        assert count_library([0.003, 0.004, 0.06], lib).tolist() == [0, 0, 3]


def test_count_library_bad_input():
    with pytest.raises(ValueError, match="increase strictly"):
        count_library([1.0], [1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        count_library([np.nan], [1.0, 2.0])
    with pytest.raises(ValueError, match="positive"):
        count_library([1.0], [0.0, 1.0])


def test_load_library_csv(tmp_path):
    pd.DataFrame({"n_atoms": [3, 1, 2], "scs": [3.1, 1.2, 2.0]}).to_csv(tmp_path / "lib.csv", index=False)
    np.testing.assert_array_equal(load_library_csv(tmp_path / "lib.csv"), [1.2, 2.0, 3.1])
    pd.DataFrame({"n_atoms": [1, 3], "scs": [1.0, 3.0]}).to_csv(tmp_path / "gap.csv", index=False)
    with pytest.raises(ValueError, match="consecutive"):
        load_library_csv(tmp_path / "gap.csv")
    pd.DataFrame({"atoms": [1], "value": [1.0]}).to_csv(tmp_path / "cols.csv", index=False)
    with pytest.raises(ValueError, match="n_atoms"):
        load_library_csv(tmp_path / "cols.csv")
    pd.DataFrame({"n_atoms": [1, 2], "scs": [2.0, 1.0]}).to_csv(tmp_path / "dec.csv", index=False)
    with pytest.raises(ValueError, match="increase strictly"):
        load_library_csv(tmp_path / "dec.csv")


def test_plot_counting(rng):
    scs, _ = _mixture(rng, [1.0, 2.0], 30)
    res = count_gmm(scs, max_components=3)
    fig = plot_counting(res, scs)
    assert len(fig.axes) == 2
    assert len(fig.axes[1].lines[0].get_xdata()) == 3  # ICL curve over orders 1..3
    with pytest.raises(TypeError):
        plot_counting(scs)


def test_icl_minimum_at_the_largest_order_warns(rng):
    """Eleven components 20 sd apart searched up to order 10 (the CLI default): ICL is lowest at the edge, and the
    user is told to raise max_components instead of getting merged counts silently; with room it finds 11."""
    scs = np.concatenate([k + 0.05 * rng.standard_normal(30) for k in range(1, 12)])
    with pytest.warns(UserWarning, match="raise max_components"):
        res = count_gmm(scs, max_components=10)
    assert res.n_components == 10
    assert count_gmm(scs, max_components=14).n_components == 11
