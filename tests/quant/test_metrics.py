"""Tests for stemquant.quant.metrics."""

import numpy as np
import pytest

from stemquant.quant.metrics import (
    confidence_interval_mean,
    confidence_interval_variance,
    detection_metrics,
    fraction_correct_counts,
    mae_positions,
    mape_scs,
    match_columns,
    strain_error,
    surface_columns,
)


def _square(n, a=2.0):
    """n×n square lattice with spacing a [Å]."""
    return np.array([(i, j) for j in range(n) for i in range(n)], dtype=float) * a


# ------------------------------------------------------------------------------------------------ MAE / MAPE
def test_mae_hand_checked_and_stacked():
    true = np.array([[0.0, 0.0], [1.0, 1.0]])
    est = np.array([[0.3, 0.4], [1.0, 1.0]])  # errors 0.5 and 0
    assert mae_positions(est, true) == pytest.approx(0.25)
    stack = np.stack([est, true + [0.0, 0.1]])  # second realisation: errors 0.1, 0.1
    assert mae_positions(stack, true) == pytest.approx((0.5 + 0.0 + 0.1 + 0.1) / 4)
    with pytest.raises(ValueError, match="matching"):
        mae_positions(est[:1], true)
    with pytest.raises(ValueError, match="NaN"):
        mae_positions([[np.nan, 0.0], [1.0, 1.0]], true)


def test_mape_hand_checked():
    assert mape_scs([1.5, 1.5], [1.0, 2.0]) == pytest.approx(37.5)
    assert mape_scs([[1.0, 2.0], [1.1, 2.2]], [1.0, 2.0]) == pytest.approx(5.0)
    with pytest.raises(ValueError, match="zeros"):
        mape_scs([1.0], [0.0])
    with pytest.raises(ValueError, match="shape"):
        mape_scs([1.0, 2.0], [1.0])


# ------------------------------------------------------------------------------------- confidence intervals
def test_ci_mean_hand_checked():
    # x = 1, 2, 3: mean 2, s = 1, t_{0.975, 2} = 4.302653 (standard t table) -> half width 4.302653/√3
    lo, hi = confidence_interval_mean([1.0, 2.0, 3.0])
    assert (lo + hi) / 2 == pytest.approx(2.0)
    assert (hi - lo) / 2 == pytest.approx(4.302653 / np.sqrt(3), rel=1e-6)


def test_ci_variance_hand_checked():
    # N = 3, s² = 1: χ²_{0.975, 2} = 7.377759, χ²_{0.025, 2} = 0.0506356 (standard χ² table)
    lo, hi = confidence_interval_variance([1.0, 2.0, 3.0])
    assert lo == pytest.approx(2 / 7.377759, rel=1e-6)
    assert hi == pytest.approx(2 / 0.0506356, rel=1e-5)


@pytest.mark.parametrize("ci", [confidence_interval_mean, confidence_interval_variance])
def test_ci_coverage_monte_carlo(ci, rng):
    # 4000 normal samples of size 8; the true mean (0) / variance (4) must be covered with probability 0.95.
    # The empirical coverage is Binomial(4000, 0.95)/4000 with sd √(0.95·0.05/4000) = 0.0034; we allow 4 sd
    # (0.0138): two-sided false-failure rate 6e-5.
    trials, n, mu, sd = 4000, 8, 0.0, 2.0
    truth = mu if ci is confidence_interval_mean else sd**2
    hits = 0
    for x in rng.normal(mu, sd, size=(trials, n)):
        lo, hi = ci(x, confidence=0.95)
        hits += lo <= truth <= hi
    assert abs(hits / trials - 0.95) < 4 * np.sqrt(0.95 * 0.05 / trials)


def test_ci_bad_input():
    with pytest.raises(ValueError, match="at least 2"):
        confidence_interval_mean([1.0])
    with pytest.raises(ValueError, match="confidence"):
        confidence_interval_mean([1.0, 2.0], confidence=1.0)
    with pytest.raises(ValueError, match="NaN"):
        confidence_interval_variance([1.0, np.nan])


# ------------------------------------------------------------------------------------------------ counting
def test_fraction_correct_counts():
    assert fraction_correct_counts([1, 2, 3, 4], [1, 2, 3, 5]) == 0.75
    assert fraction_correct_counts(np.array([2.0, 3.0]), [2, 3]) == 1.0
    with pytest.raises(ValueError, match="same"):
        fraction_correct_counts([1, 2], [1])
    with pytest.raises(ValueError, match="whole"):
        fraction_correct_counts([1.5, 2.0], [1, 2])


# ------------------------------------------------------------------------------------------------ strain
def test_strain_error_perfect_and_hand_checked():
    lat = _square(6)
    np.testing.assert_allclose(strain_error(lat, [[2.0, 0.0], [0.0, 2.0]]), 0.0, atol=1e-12)
    row = np.array([[0.0, 0.0], [2.0, 0.0], [4.1, 0.0], [6.0, 0.0]])  # distances 2.0, 2.1, 1.9 -> s = 0.1
    assert strain_error(row, [2.0, 0.0])[0] == pytest.approx(0.05)
    assert np.isnan(strain_error(row, [[0.0, 2.0]])[0])  # no vertical neighbours


def test_strain_error_matches_jitter(rng):
    # Independent jitter σ per coordinate: each neighbour distance along x is x_j − x_i, with sd √2·σ, so the
    # strain error is √2σ/a. With ~380 correlated pairs the relative standard error of the sample sd is below
    # ~10 %; we allow 25 % (false-failure rate < 1e-3 even with a conservative 2.5-sd reading).
    a, sigma = 2.0, 0.05
    lat = _square(20, a) + rng.normal(0.0, sigma, size=(400, 2))
    err = strain_error(lat, [[a, 0.0], [0.0, a]])
    np.testing.assert_allclose(err, np.sqrt(2) * sigma / a, rtol=0.25)


def test_strain_error_bad_input():
    with pytest.raises(ValueError, match="zero vector"):
        strain_error(_square(3), [[0.0, 0.0]])
    with pytest.raises(ValueError, match="tolerance"):
        strain_error(_square(3), [[2.0, 0.0]], tolerance=0.6)


# ------------------------------------------------------------------------------------------------ detection
def test_detection_perfect_and_swap_trap():
    true = _square(4)
    m = detection_metrics(true + 0.05, true, threshold=0.5)
    assert m["precision"] == m["recall"] == m["f1"] == m["jaccard"] == 1.0
    # found ⊂ true: every found column is real (precision 1) but some are missed (recall < 1)
    sub = detection_metrics(true[:12], true, threshold=0.5)
    assert sub["precision"] == 1.0 and sub["recall"] == pytest.approx(12 / 16)
    assert sub["jaccard"] == pytest.approx(12 / 16) and sub["f1"] == pytest.approx(2 * 0.75 / 1.75)
    # extra spurious columns: precision < 1, recall 1
    extra = detection_metrics(np.vstack([true, [[1.0, 1.0], [3.0, 3.0]]]), true, threshold=0.5)
    assert extra["recall"] == 1.0 and extra["precision"] == pytest.approx(16 / 18)
    assert extra["jaccard"] == pytest.approx(16 / 18)


def test_detection_is_one_to_one_and_optimal():
    true = np.array([[0.0, 0.0], [1.0, 0.0]])
    # two found columns near the same true column: only one may match
    m = detection_metrics([[0.05, 0.0], [-0.05, 0.0]], true[:1], threshold=0.3)
    assert m["n_matched"] == 1 and m["precision"] == 0.5
    # greedy nearest-first matching pairs F1-T1 (0.45) and leaves F2 unmatched; the Hungarian assignment finds
    # F1-T2 (0.55) and F2-T1 (0.5): two matches
    m = detection_metrics([[0.45, 0.0], [-0.5, 0.0]], true, threshold=0.6)
    assert m["n_matched"] == 2 and m["precision"] == m["recall"] == 1.0


def _dense_match(found, true, threshold):
    """Reference: one dense Hungarian assignment over all pairs (the definition, O(M·N) memory)."""
    from scipy.optimize import linear_sum_assignment

    d = np.linalg.norm(found[:, None] - true[None], axis=-1)
    big = threshold * (min(d.shape) + 1) + 1.0
    rows, cols = linear_sum_assignment(np.where(d <= threshold, d, big))
    keep = d[rows, cols] <= threshold
    return rows[keep], cols[keep]


@pytest.mark.parametrize("seed", range(6))
def test_match_columns_equals_the_dense_assignment(seed):
    # Crowded random sets (many components of several columns, spurious and missed columns): the component-wise
    # matching reaches the dense optimum — the same number of pairs and the same summed distance.
    rng = np.random.default_rng(seed)
    true = rng.uniform(0, 12, (150, 2))
    kept = true[rng.random(150) < 0.9]
    found = np.vstack([kept + rng.normal(0, 0.25, kept.shape), rng.uniform(0, 12, (20, 2))])
    f, t = match_columns(found, true, 0.6)
    rf, rt = _dense_match(found, true, 0.6)
    assert len(np.unique(f)) == len(f) and len(np.unique(t)) == len(t)  # one-to-one
    assert np.all(np.linalg.norm(found[f] - true[t], axis=1) <= 0.6)
    assert len(f) == len(rf)
    assert np.linalg.norm(found[f] - true[t], axis=1).sum() == pytest.approx(
        np.linalg.norm(found[rf] - true[rt], axis=1).sum(), rel=1e-12)
    assert np.all(np.diff(f) > 0)


def test_match_columns_edge_cases():
    true = _square(3)
    f, t = match_columns(true[::-1], true, 0.5)  # exact positions, distance 0 included
    assert np.array_equal(true[::-1][f], true[t]) and len(f) == 9
    assert len(match_columns(np.zeros((0, 2)), true, 0.5)[0]) == 0
    assert len(match_columns(true, np.zeros((0, 2)), 0.5)[0]) == 0
    assert len(match_columns(true + 10, true, 0.5)[0]) == 0
    f, _ = match_columns(true + [0.5, 0.0], true, 0.5)  # inclusive threshold
    assert len(f) == 9
    with pytest.raises(ValueError, match="threshold"):
        match_columns(true, true, 0.0)
    with pytest.raises(ValueError, match="NaN"):
        match_columns(np.array([[np.nan, 0.0]]), true, 0.5)
    with pytest.raises(ValueError, match="shape"):
        match_columns(np.zeros((2, 3)), true, 0.5)


def test_detection_empty_found():
    m = detection_metrics(np.zeros((0, 2)), _square(2), threshold=0.5)
    # precision is 0/0, but F1 = 2·matched/(found + true) is 0: nothing of the truth was found
    assert m["recall"] == 0.0 and np.isnan(m["precision"]) and m["f1"] == 0.0 and m["jaccard"] == 0.0


def test_detection_surface_bulk_split():
    true = _square(6)  # 20 surface, 16 bulk columns
    surf = surface_columns(true)
    assert surf.sum() == 20
    bulk_idx = np.flatnonzero(~surf)[0]
    found = np.delete(true, bulk_idx, axis=0)  # miss one bulk column
    spurious = true[np.flatnonzero(surf)[0]] + [0.9, 0.0]  # unmatched, nearest true column is surface
    found = np.vstack([found, spurious])
    s = detection_metrics(found, true, threshold=0.5, subset="surface")
    b = detection_metrics(found, true, threshold=0.5, subset="bulk")
    assert (s["n_true"], s["n_found"], s["n_matched"]) == (20, 21, 20)
    assert s["recall"] == 1.0 and s["precision"] == pytest.approx(20 / 21)
    assert (b["n_true"], b["n_found"], b["n_matched"]) == (16, 15, 15)
    assert b["precision"] == 1.0 and b["recall"] == pytest.approx(15 / 16)
    # an explicit mask equals the named subset
    assert detection_metrics(found, true, threshold=0.5, subset=surf) == s


def test_surface_columns_ignores_vacancy_and_flags_outliers():
    lat = _square(8)
    vac = np.delete(lat, 8 * 4 + 4, axis=0)  # inner vacancy: its neighbours stay bulk
    assert surface_columns(vac).sum() == 28
    hexa = np.array([(i + 0.5 * (j % 2), j * np.sqrt(3) / 2) for j in range(8) for i in range(8)]) * 2.0
    # Rows alternate by half a spacing, so the left/right edges zig-zag. The notch triangles (sides d, d,
    # √3d) have circumradius d: the default alpha (1.2 d) fills them (8 + 8 + 3 + 3 = 22 surface columns); an
    # alpha between the lattice triangles' 0.577 d and d leaves the notches open (8 + 8 + 6 + 6 = 28).
    assert surface_columns(hexa).sum() == 22
    assert surface_columns(hexa, alpha=0.9 * 2.0).sum() == 28
    lone = np.vstack([lat, [[40.0, 40.0]]])
    assert surface_columns(lone)[-1]
    assert surface_columns([[0.0, 0.0], [1.0, 0.0]]).all()


def test_detection_bad_input():
    with pytest.raises(ValueError, match="threshold"):
        detection_metrics(_square(2), _square(2), threshold=0.0)
    with pytest.raises(ValueError, match="subset"):
        detection_metrics(_square(2), _square(2), threshold=0.5, subset="edge")
    with pytest.raises(ValueError, match="subset mask"):
        detection_metrics(_square(2), _square(2), threshold=0.5, subset=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="true_xy"):
        detection_metrics(_square(2), np.zeros((0, 2)), threshold=0.5)
    with pytest.raises(ValueError, match="alpha"):
        surface_columns(_square(3), alpha=-1.0)
