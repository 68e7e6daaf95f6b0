"""Evaluation metrics: position/SCS errors, confidence intervals, counting, strain error and detection scores.

Implements eqs. (2.21)–(2.24) of Friedrich (2023), the strain error of Gambini et al. and the detection
metrics (eqs. 5.1–5.4) of Mohan et al. with the *verbal* definitions (precision = matched/found,
recall = matched/true; the paper's equations swap the two). Choices are documented in docs/metrics.md.
"""

from __future__ import annotations

from collections import deque

import numpy as np
from scipy import stats
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import Delaunay, QhullError, cKDTree

from stemquant._validate import check_positive, check_probability

__all__ = [
    "mae_positions",
    "mape_scs",
    "confidence_interval_mean",
    "confidence_interval_variance",
    "fraction_correct_counts",
    "strain_error",
    "detection_metrics",
    "match_columns",
    "surface_columns",
]


def _xy(a, name: str, *, allow_empty: bool = False) -> np.ndarray:
    """(..., 2) finite float array of positions (x, y) [Å]."""
    arr = np.asarray(a, dtype=np.float64)
    if arr.size == 0 and allow_empty:
        return np.zeros((0, 2))
    if arr.ndim < 2 or arr.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (N, 2) with columns (x, y) [Å], got shape {arr.shape}")
    if arr.shape[-2] == 0 and not allow_empty:
        raise ValueError(f"{name} is empty; give at least one column")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN/Inf coordinates [Å]")
    return arr


def _sample(x, name: str, min_size: int = 2) -> np.ndarray:
    """1-D finite sample with at least ``min_size`` values."""
    arr = np.asarray(x, dtype=np.float64).ravel()
    if arr.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} values, got {arr.size}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN/Inf values")
    return arr


# ---------------------------------------------------------------------------------- errors (eqs. 2.21-2.22)
def mae_positions(estimated, true) -> float:
    """Mean absolute position error [Å].

    Implements eq. (2.21) of Friedrich (2023): the mean over realisations n and columns c of the Euclidean
    distance between estimated and true positions; column c of ``estimated`` corresponds to column c of
    ``true``.

    Parameters
    ----------
    estimated : array_like, shape (C, 2) or (N, C, 2)
        Estimated (x, y) [Å], for one or N realisations.
    true : array_like, shape (C, 2)
        True (x, y) [Å].

    Returns
    -------
    mae : float
        [Å].

    Examples
    --------
    >>> mae_positions([[0.0, 0.0], [1.0, 1.0]], [[0.3, 0.4], [1.0, 1.0]])
    0.25
    """
    est = _xy(estimated, "estimated")
    tru = _xy(true, "true")
    if tru.ndim != 2 or est.shape[-2:] != tru.shape:
        raise ValueError(f"estimated must have shape (C, 2) or (N, C, 2) matching true {tru.shape}, "
                         f"got {est.shape}")
    return float(np.mean(np.linalg.norm(est - tru, axis=-1)))


def mape_scs(estimated, true) -> float:
    """Mean absolute percentage error of scattering cross-sections [%].

    Implements eq. (2.22) of Friedrich (2023): 100/(N C) Σ_n Σ_c |SCS_est − SCS_true| / SCS_true.

    Parameters
    ----------
    estimated : array_like, shape (C,) or (N, C)
        Estimated SCS [any unit, same as ``true``].
    true : array_like, shape (C,)
        True SCS, non-zero.

    Returns
    -------
    mape : float
        [%].

    Examples
    --------
    >>> mape_scs([1.5, 1.5], [1.0, 2.0])
    37.5
    """
    est = np.asarray(estimated, dtype=np.float64)
    tru = np.asarray(true, dtype=np.float64)
    if tru.ndim != 1 or tru.size == 0 or est.shape[-1:] != tru.shape or est.ndim not in (1, 2):
        raise ValueError(f"estimated must have shape (C,) or (N, C) matching true of shape (C,); got "
                         f"{est.shape} and {tru.shape}")
    if not (np.all(np.isfinite(est)) and np.all(np.isfinite(tru))):
        raise ValueError("estimated/true SCS contain NaN/Inf values")
    if np.any(tru == 0):
        raise ValueError("true SCS contains zeros; the percentage error is undefined for them")
    return float(100.0 * np.mean(np.abs(est - tru) / np.abs(tru)))


# ------------------------------------------------------------------------ confidence intervals (2.23-2.24)
def confidence_interval_mean(x, *, confidence: float = 0.95) -> tuple[float, float]:
    """Student-t confidence interval of the mean.

    Implements eq. (2.23) of Friedrich (2023): x̄ ± t_{1−α/2, N−1} s/√N with α = 1 − ``confidence`` (the thesis
    writes α = 0.95 for the confidence level but uses α as the significance in the quantile; we use the
    standard reading, which gives the 95 % interval).

    Parameters
    ----------
    x : array_like, shape (N,)
        Sample, N ≥ 2.
    confidence : float, optional
        Confidence level in (0, 1) (default 0.95).

    Returns
    -------
    (low, high) : tuple of float
        Interval bounds, in the unit of ``x``.
    """
    arr = _sample(x, "x")
    conf = _check_confidence(confidence)
    n = arr.size
    half = stats.t.ppf(0.5 + conf / 2.0, n - 1) * arr.std(ddof=1) / np.sqrt(n)
    m = float(arr.mean())
    return m - float(half), m + float(half)


def confidence_interval_variance(x, *, confidence: float = 0.95) -> tuple[float, float]:
    """χ² confidence interval of the variance.

    Implements eq. (2.24) of Friedrich (2023): [(N−1)s²/χ²_{1−α/2}, (N−1)s²/χ²_{α/2}] with χ²_q the q-quantile
    of χ² with N−1 degrees of freedom and α = 1 − ``confidence``. (The thesis labels the quantiles by their
    upper-tail probability, so its subscripts look swapped; the lower bound divides by the larger quantile.)

    Parameters
    ----------
    x : array_like, shape (N,)
        Sample, N ≥ 2.
    confidence : float, optional
        Confidence level in (0, 1) (default 0.95).

    Returns
    -------
    (low, high) : tuple of float
        Bounds on the variance, in the unit of ``x`` squared.
    """
    arr = _sample(x, "x")
    conf = _check_confidence(confidence)
    n = arr.size
    a = 1.0 - conf
    ss = (n - 1) * arr.var(ddof=1)
    return float(ss / stats.chi2.ppf(1 - a / 2, n - 1)), float(ss / stats.chi2.ppf(a / 2, n - 1))


def _check_confidence(confidence) -> float:
    """Confidence level strictly inside (0, 1)."""
    c = check_probability(confidence, "confidence")
    if c in (0.0, 1.0):
        raise ValueError(f"confidence must lie strictly between 0 and 1 (e.g. 0.95), got {confidence}")
    return c


# --------------------------------------------------------------------------------------------------- counting
def fraction_correct_counts(counts, true_counts) -> float:
    """Fraction of columns whose atom count equals the true count.

    Parameters
    ----------
    counts, true_counts : array_like of int, shape (C,) or (N, C)
        Estimated and true atom counts (same shape, column c ↔ column c).

    Returns
    -------
    fraction : float
        In [0, 1].
    """
    a = np.asarray(counts)
    b = np.asarray(true_counts)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(
            f"counts and true_counts must have the same non-empty shape, got {a.shape} and {b.shape}"
        )
    for arr, name in ((a, "counts"), (b, "true_counts")):
        if not np.issubdtype(arr.dtype, np.integer):
            if not (np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
                raise ValueError(f"{name} must hold whole atom counts, got non-integer values")
    return float(np.mean(a == b))


# --------------------------------------------------------------------------------------------------- strain
def strain_error(positions, lattice_vectors, *, tolerance: float = 0.25) -> np.ndarray:
    """Strain error per lattice direction (Gambini et al.): std of neighbour distances / reference distance.

    For every direction a (a row of ``lattice_vectors``), each column r_i is paired with the column nearest
    to r_i + a if it lies within ``tolerance·|a|`` of that point; the distance of the pair is measured *along*
    the direction, d_i = (r_j − r_i)·â. The strain error is ``std(d, ddof=1) / |a|`` (dimensionless).

    Parameters
    ----------
    positions : array_like, shape (N, 2)
        Column positions (x, y) [Å].
    lattice_vectors : array_like, shape (D, 2) or (2,)
        Reference neighbour vectors (x, y) [Å], e.g. ``[[a, 0], [0, b]]`` for horizontal and vertical.
    tolerance : float, optional
        Pairing radius as a fraction of |a| (default 0.25).

    Returns
    -------
    strain : ndarray, shape (D,)
        Strain error per direction; NaN for a direction with fewer than 2 pairs.

    Examples
    --------
    >>> xy = np.array([[0.0, 0.0], [2.0, 0.0], [4.1, 0.0], [6.0, 0.0]])
    >>> np.round(strain_error(xy, [[2.0, 0.0]]), 4)
    array([0.05])
    """
    pos = _xy(positions, "positions")
    if pos.ndim != 2:
        raise ValueError(f"positions must have shape (N, 2), got {pos.shape}")
    vec = _xy(np.atleast_2d(np.asarray(lattice_vectors, dtype=np.float64)), "lattice_vectors")
    tolerance = check_positive(tolerance, "tolerance")
    if tolerance >= 0.5:
        raise ValueError(f"tolerance must be < 0.5 (fraction of |a|) so a column pairs with one neighbour, "
                         f"got {tolerance}")
    lengths = np.linalg.norm(vec, axis=1)
    if np.any(lengths == 0):
        raise ValueError("lattice_vectors contains a zero vector; give the reference neighbour vectors [Å]")
    tree = cKDTree(pos)
    out = np.full(len(vec), np.nan)
    for k, (a, length) in enumerate(zip(vec, lengths, strict=True)):
        dist, j = tree.query(pos + a, distance_upper_bound=tolerance * length)
        ok = np.isfinite(dist)
        d = (pos[j[ok]] - pos[ok]) @ (a / length)
        if d.size >= 2:
            out[k] = d.std(ddof=1) / length
    return out


# ----------------------------------------------------------------------------------------------- detection
def detection_metrics(
    found_xy, true_xy, threshold: float, subset=None, *, alpha: float | None = None
) -> dict:
    """Precision, recall, F1 and Jaccard index of detected columns, overall or on a surface/bulk subset.

    Implements eqs. (5.1)–(5.4) of Mohan et al. with the verbal definitions: precision = matched / found,
    recall = matched / true (the paper's equations swap them), F1 = 2PR/(P+R),
    Jaccard = matched / (found + true − matched). Found and true columns are matched one-to-one by the
    Hungarian algorithm (``scipy.optimize.linear_sum_assignment``), which maximises the number of pairs closer
    than ``threshold`` and, among those, minimises the summed distance.

    Parameters
    ----------
    found_xy : array_like, shape (M, 2)
        Detected positions (x, y) [Å]; may be empty.
    true_xy : array_like, shape (N, 2)
        True positions (x, y) [Å].
    threshold : float
        Maximum distance of a match [Å] (inclusive).
    subset : None, "surface", "bulk" or bool array of shape (N,), optional
        Restrict the scores to a subset of the TRUE columns (``surface_columns(true_xy, alpha=alpha)`` for
        "surface"/"bulk"). Matched found columns belong to the subset of their true partner; unmatched found
        columns to the subset of their nearest true column.
    alpha : float or None, optional
        Alpha-shape radius [Å] passed to :func:`surface_columns` (default there).

    Returns
    -------
    metrics : dict
        ``precision``, ``recall``, ``f1``, ``jaccard`` (floats; NaN where a ratio is 0/0; F1 =
        2·matched/(found + true) = 2PR/(P + R), so 0, not NaN, when nothing is found) and the integers
        ``n_found``, ``n_true``, ``n_matched`` of the subset.

    Examples
    --------
    >>> m = detection_metrics([[0.0, 0.0]], [[0.1, 0.0], [5.0, 5.0]], threshold=0.5)
    >>> m["precision"], m["recall"]
    (1.0, 0.5)
    """
    found = _xy(found_xy, "found_xy", allow_empty=True)
    true = _xy(true_xy, "true_xy")
    if found.ndim != 2 or true.ndim != 2:
        raise ValueError("found_xy and true_xy must have shape (M, 2) and (N, 2)")
    threshold = check_positive(threshold, "threshold", "Å")
    mask = _subset_mask(subset, true, alpha)
    fi, ti = _match(found, true, threshold)
    found_in = np.zeros(len(found), dtype=bool)
    if len(found):
        _, nearest = cKDTree(true).query(found)
        found_in = mask[nearest]
        found_in[fi] = mask[ti]
    n_matched = int(np.sum(mask[ti]))
    n_found = int(found_in.sum())
    n_true = int(mask.sum())
    p = _ratio(n_matched, n_found)
    r = _ratio(n_matched, n_true)
    return {
        "precision": p,
        "recall": r,
        # 2PR/(P+R) written as 2·matched/(found + true): defined (0) when nothing is found, where P is 0/0
        "f1": _ratio(2 * n_matched, n_found + n_true),
        "jaccard": _ratio(n_matched, n_found + n_true - n_matched),
        "n_found": n_found,
        "n_true": n_true,
        "n_matched": n_matched,
    }


def _ratio(a: int, b: int) -> float:
    """a / b, NaN for 0/0."""
    return float("nan") if b == 0 else a / b


def _subset_mask(subset, true: np.ndarray, alpha) -> np.ndarray:
    """Boolean mask over the true columns."""
    if subset is None:
        return np.ones(len(true), dtype=bool)
    if isinstance(subset, str):
        if subset not in ("surface", "bulk"):
            raise ValueError(f"subset must be None, 'surface', 'bulk' or a bool mask, got {subset!r}")
        surf = surface_columns(true, alpha=alpha)
        return surf if subset == "surface" else ~surf
    mask = np.asarray(subset)
    if mask.dtype != bool or mask.shape != (len(true),):
        raise ValueError(f"subset mask must be a bool array of shape ({len(true)},) over the true columns, "
                         f"got {mask.dtype} {mask.shape}")
    return mask


def match_columns(found_xy, true_xy, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one matching of found to true columns within ``threshold`` (the pairing of :func:`detection_metrics`).

    Maximises the number of pairs closer than ``threshold`` and, among those, minimises their summed distance
    (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``).

    Why not one dense assignment: the cost matrix of M found × N true columns holds M·N distances and the
    Hungarian algorithm costs O(N³) — ~1 s at 3,000 columns, minutes and gigabytes at 10,000. Only pairs
    closer than ``threshold`` can match, so the problem splits into the connected components of that
    neighbour graph (found from a k-d tree). Almost every component is one found and one true column (matched
    directly); the rest are solved one by one. The optimum is the same as the dense problem's, as both criteria
    are sums over components.

    Parameters
    ----------
    found_xy : array_like, shape (M, 2)
        Detected positions (x, y) [Å]; may be empty.
    true_xy : array_like, shape (N, 2)
        True positions (x, y) [Å]; may be empty.
    threshold : float
        Maximum distance of a match [Å] (inclusive).

    Returns
    -------
    found_idx, true_idx : ndarray of int, shape (K,)
        Matched pairs ``found_xy[found_idx[k]] <-> true_xy[true_idx[k]]``, sorted by ``found_idx``.

    Examples
    --------
    >>> f, t = match_columns([[0.0, 0.0], [9.0, 9.0]], [[5.0, 5.0], [0.1, 0.0]], threshold=0.5)
    >>> f.tolist(), t.tolist()
    ([0], [1])
    """
    found = _xy(found_xy, "found_xy", allow_empty=True)
    true = _xy(true_xy, "true_xy", allow_empty=True)
    if found.ndim != 2 or true.ndim != 2:
        raise ValueError("found_xy and true_xy must have shape (M, 2) and (N, 2)")
    threshold = check_positive(threshold, "threshold", "Å")
    return _match(found, true, threshold)


def _match(found: np.ndarray, true: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`match_columns` on checked (M, 2) and (N, 2) arrays."""
    empty = np.zeros(0, dtype=int)
    if len(found) == 0 or len(true) == 0:
        return empty, empty
    pairs = cKDTree(found).sparse_distance_matrix(cKDTree(true), threshold, output_type="ndarray")
    if len(pairs) == 0:
        return empty, empty
    fi, ti, d = pairs["i"].astype(int), pairs["j"].astype(int), pairs["v"]
    M = len(found)
    graph = coo_matrix((np.ones(len(fi)), (fi, M + ti)), shape=(M + len(true),) * 2)
    _, label = connected_components(graph, directed=False)
    # components of exactly one edge (one found, one true column) match directly
    edges = np.bincount(label[fi], minlength=label.max() + 1)
    single = edges[label[fi]] == 1
    out_f, out_t = [fi[single]], [ti[single]]
    multi = ~single
    if np.any(multi):
        order = np.argsort(label[fi[multi]], kind="stable")
        mf, mt, md, ml = fi[multi][order], ti[multi][order], d[multi][order], label[fi[multi]][order]
        cuts = np.flatnonzero(np.diff(ml)) + 1
        for f, t, dist in zip(np.split(mf, cuts), np.split(mt, cuts), np.split(md, cuts), strict=True):
            uf, rf = np.unique(f, return_inverse=True)
            ut, rt = np.unique(t, return_inverse=True)
            # A forbidden pair costs more than any full set of allowed pairs, so the number of matches is
            # maximised first and the summed distance second.
            big = threshold * (min(len(uf), len(ut)) + 1) + 1.0
            cost = np.full((len(uf), len(ut)), big)
            cost[rf, rt] = dist
            rows, cols = linear_sum_assignment(cost)
            keep = cost[rows, cols] < big
            out_f.append(uf[rows[keep]])
            out_t.append(ut[cols[keep]])
    f, t = np.concatenate(out_f), np.concatenate(out_t)
    order = np.argsort(f, kind="stable")
    return f[order], t[order]


def surface_columns(xy, *, alpha: float | None = None) -> np.ndarray:
    """Columns on the outer boundary of the alpha shape of a column set.

    The Delaunay triangles with circumradius < ``alpha`` form the alpha shape. Removed triangles connected
    to the outside of the convex hull (through shared edges) are exterior; removed triangles enclosed by kept
    ones (vacancies, small holes) are treated as interior, so only the *outer* boundary counts. A column is
    surface if it lies on an edge between an interior triangle and the exterior, or belongs to no interior
    triangle.

    Parameters
    ----------
    xy : array_like, shape (N, 2)
        Column positions (x, y) [Å].
    alpha : float or None, optional
        Circumradius limit [Å]. Default: 1.2 × the median nearest-neighbour distance, which keeps the
        triangles of square (R = 0.71 d) and hexagonal (R = 0.58 d) lattices and drops gaps wider than ~2.4 d.

    Returns
    -------
    mask : ndarray of bool, shape (N,)
        True for surface columns. With fewer than 3 (or collinear) columns, all are surface.
    """
    pts = _xy(xy, "xy")
    if pts.ndim != 2:
        raise ValueError(f"xy must have shape (N, 2), got {pts.shape}")
    n = len(pts)
    if alpha is None:
        if n < 2:
            return np.ones(n, dtype=bool)
        dist, _ = cKDTree(pts).query(pts, k=2)
        alpha = 1.2 * float(np.median(dist[:, 1]))
        if alpha <= 0:
            raise ValueError("xy contains coincident columns only; give alpha [Å] explicitly")
    alpha = check_positive(alpha, "alpha", "Å")
    if n < 3:
        return np.ones(n, dtype=bool)
    try:
        tri = Delaunay(pts)
    except QhullError:  # all collinear
        return np.ones(n, dtype=bool)
    keep = _circumradius(pts[tri.simplices]) < alpha
    exterior = _exterior_triangles(tri.neighbors, keep)
    interior = ~exterior
    surface = np.ones(n, dtype=bool)
    surface[np.unique(tri.simplices[interior])] = False
    for t in np.flatnonzero(interior):
        for e in range(3):  # edge opposite vertex e
            nb = tri.neighbors[t, e]
            if nb == -1 or exterior[nb]:
                surface[np.delete(tri.simplices[t], e)] = True
    return surface


def _circumradius(tri_pts: np.ndarray) -> np.ndarray:
    """Circumradius of triangles given as (T, 3, 2) vertex arrays (inf for degenerate ones)."""
    a = np.linalg.norm(tri_pts[:, 1] - tri_pts[:, 2], axis=1)
    b = np.linalg.norm(tri_pts[:, 0] - tri_pts[:, 2], axis=1)
    c = np.linalg.norm(tri_pts[:, 0] - tri_pts[:, 1], axis=1)
    u, v = tri_pts[:, 1] - tri_pts[:, 0], tri_pts[:, 2] - tri_pts[:, 0]
    area2 = np.abs(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0])  # twice the area
    out = np.full(len(tri_pts), np.inf)
    ok = area2 > 0
    out[ok] = a[ok] * b[ok] * c[ok] / (2.0 * area2[ok])
    return out


def _exterior_triangles(neighbors: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Removed triangles reachable from the hull through removed triangles (flood fill)."""
    exterior = np.zeros(len(keep), dtype=bool)
    queue = deque(t for t in np.flatnonzero(~keep) if np.any(neighbors[t] == -1))
    for t in queue:
        exterior[t] = True
    while queue:
        t = queue.popleft()
        for nb in neighbors[t]:
            if nb != -1 and not keep[nb] and not exterior[nb]:
                exterior[nb] = True
                queue.append(nb)
    return exterior
