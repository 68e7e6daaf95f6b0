"""Tests for the exact tabulated Poisson sampler used by the STEM pipeline (``stemquant.distort._poisson``)."""

import numpy as np
import pytest
from scipy import stats

from stemquant.distort._poisson import DELTA, LAM_MAX, _alias_tables, _tail, _vose, poisson_draw


def _chi2_pvalue(x, lam):
    """Pearson χ² p-value of integer samples ``x`` against Poisson(λ), cells with expectation >= 5 (+ tails)."""
    n = x.size
    kmax = int(lam + 8 * np.sqrt(lam) + 8)
    pmf = stats.poisson.pmf(np.arange(kmax + 1), lam)
    expected = np.append(pmf, stats.poisson.sf(kmax, lam)) * n
    observed = np.bincount(np.minimum(x, kmax + 1), minlength=kmax + 2).astype(float)
    keep = expected >= 5
    # pool the sparse cells (both tails) into one cell so no probability mass is ignored
    e = np.append(expected[keep], expected[~keep].sum())
    o = np.append(observed[keep], observed[~keep].sum())
    if e[-1] < 5:  # too sparse on its own: merge it into the largest cell
        i = np.argmax(e[:-1])
        e[i] += e[-1]
        o[i] += o[-1]
        e, o = e[:-1], o[:-1]
    assert o.sum() == n
    chi = ((o - e) ** 2 / e).sum()
    return stats.chi2.sf(chi, max(e.size - 1, 1))


def test_alias_tables_reproduce_the_poisson_pmf():
    """Every tabulated row, read back from (coin, alias), gives the Poisson pmf to 1e-14 (exact up to
    rounding): p_i = (coin_i + Σ_{j: alias_j = i} (1 − coin_j)) / K."""
    coin, alias, k = _alias_tables()
    rows = coin.size // k
    assert rows == int(round(LAM_MAX / DELTA))
    for j in range(0, rows, 37):
        c, a = coin[j * k:(j + 1) * k], alias[j * k:(j + 1) * k]
        p = (c + np.bincount(a, weights=1 - c, minlength=k)) / k
        ref = stats.poisson.pmf(np.arange(k - 1), j * DELTA)
        np.testing.assert_allclose(p[:-1], ref, rtol=0, atol=1e-14)
        assert p[-1] < 1e-20  # overflow cell


def test_vose_small_example():
    coin, alias = _vose(np.array([0.5, 0.25, 0.125, 0.125]))
    p = (coin + np.bincount(alias, weights=1 - coin, minlength=4)) / 4
    np.testing.assert_allclose(p, [0.5, 0.25, 0.125, 0.125], atol=1e-15)


@pytest.mark.parametrize("lam", [1e-3, 0.0625, 0.0624, 0.7, 2.9, 9.99, 10.0, 31.97, 63.99, 64.0, 200.0])
def test_poisson_draw_matches_the_poisson_distribution(lam):
    """χ² goodness of fit, N = 200,000 draws per λ (grid points, just below them, both sides of LAM_MAX = 64).
    Threshold p > 1e-5: false-failure rate ≤ 1.1e-4 over the 11 cases (fixed seed, deterministic)."""
    x = poisson_draw(np.full(200_000, lam), np.random.default_rng(int(lam * 1e4)))
    assert x.dtype == np.int64 and x.min() >= 0
    assert _chi2_pvalue(x, lam) > 1e-5


def test_poisson_draw_mixed_image_mean_and_variance():
    """A (4, 64, 64) image of λ spanning both paths: per-λ mean and variance within 5 sd (normal limit)."""
    levels = np.array([0.0, 0.3, 3.0, 17.0, 63.9, 64.5, 500.0])
    lam = np.random.default_rng(1).choice(levels, size=(4, 64, 64))
    x = np.stack([poisson_draw(lam, np.random.default_rng(s)) for s in range(40)])
    assert x.shape == (40, 4, 64, 64)
    for v in levels:
        sel = x[:, lam == v]
        n = sel.size
        if v == 0:
            assert not sel.any()
            continue
        assert abs(sel.mean() - v) < 5 * np.sqrt(v / n)
        assert abs(sel.var() - v) < 5 * np.sqrt((v + 2 * v**2) / n)


def test_poisson_draw_determinism_and_shape(rng):
    lam = rng.random((2, 37, 31)) * 100
    a = poisson_draw(lam, np.random.default_rng(3))
    b = poisson_draw(lam, np.random.default_rng(3))
    c = poisson_draw(lam, np.random.default_rng(4))
    assert a.shape == lam.shape and np.array_equal(a, b) and not np.array_equal(a, c)


def test_tail_is_the_conditional_distribution():
    """The overflow resolver draws Poisson(c) | X >= k0 (χ² against the truncated pmf, N = 3000, p > 1e-5)."""
    c, k0, n = 3.0, 6, 3000
    x = _tail(np.full(n, c), k0, np.random.default_rng(2))
    assert x.min() >= k0
    ks = np.arange(k0, k0 + 6)
    p = stats.poisson.pmf(ks, c) / stats.poisson.sf(k0 - 1, c)
    e = np.append(p, 1 - p.sum()) * n
    o = np.append(np.bincount(x - k0, minlength=6)[:6], (x >= k0 + 6).sum())
    assert o.sum() == n
    assert stats.chi2.sf(((o - e) ** 2 / e).sum(), e.size - 1) > 1e-5
