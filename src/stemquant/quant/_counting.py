"""Atom counting from scattering cross-sections: Gaussian mixture + ICL (StatSTEM) and library matching.

See docs/counting.md for the choices made here (ICL sign, seeding, selection of the minimum, library
boundaries).
"""

from __future__ import annotations

import numbers
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import xlogy

from stemquant._validate import check_dose

__all__ = ["GMMCountResult", "MixtureFit", "count_gmm", "count_library", "load_library_csv", "plot_counting"]

_SELECTIONS = ("global", "first")


@dataclass(frozen=True, eq=False)
class MixtureFit:
    """One fitted mixture of order k (components sorted by mean).

    Attributes
    ----------
    means, sd, weights : ndarray, shape (k,)
        Component means and standard deviations [SCS units] and mixing weights (sum 1).
    sigma : float
        Shared standard deviation σ [SCS units]; ``sd**2 = sigma**2 + means/dose`` (``sigma**2`` without
        dose).
    nll : float
        Negative log-likelihood of the data, −Σ_i ln Σ_k w_k N(x_i; μ_k, sd_k²).
    entropy : float
        Classification entropy −Σ_i Σ_k τ_ik ln τ_ik of the posteriors τ [nats].
    """

    means: np.ndarray
    sd: np.ndarray
    weights: np.ndarray
    sigma: float
    nll: float
    entropy: float


@dataclass(frozen=True, eq=False)
class GMMCountResult:
    """Result of :func:`count_gmm`.

    Attributes
    ----------
    n_components : int
        Selected number of components (ICL minimum, or the user's ``n_components``).
    means, sd, weights : ndarray, shape (n_components,)
        Selected mixture, components ordered by mean [SCS units].
    icl : ndarray, shape (max_components,)
        ICL of orders 1..max_components; ``icl[k - 1]`` is order k (lower is better).
    nll : ndarray, shape (max_components,)
        Negative log-likelihood per order.
    counts : ndarray of int, shape (N,)
        Atom count per column: component index c (0-based, by increasing mean) -> ``first_count + c`` atoms,
        each column assigned to its maximum-posterior component.
    posterior : ndarray, shape (N, n_components)
        Posterior probability of each component for each column.
    scs : ndarray, shape (N,)
        The input cross-sections, in input order.
    first_count : int
        Atom count of the first (lowest-mean) component.
    dose : float or None
        Dose [e⁻/Å²] used for the dose-dependent variance, or None.
    fits : tuple of MixtureFit
        Best fit for each order 1..max_components (``fits[k - 1]``).
    """

    n_components: int
    means: np.ndarray
    sd: np.ndarray
    weights: np.ndarray
    icl: np.ndarray
    nll: np.ndarray
    counts: np.ndarray
    posterior: np.ndarray
    scs: np.ndarray
    first_count: int
    dose: float | None
    fits: tuple

    @property
    def table(self) -> pd.DataFrame:
        """One row per column: ``scs``, ``count``, ``component`` (0-based), ``probability`` (max τ)."""
        comp = np.argmax(self.posterior, axis=1)
        return pd.DataFrame({
            "scs": self.scs,
            "count": self.counts,
            "component": comp,
            "probability": self.posterior[np.arange(len(comp)), comp],
        })


# --------------------------------------------------------------------------------------------------- GMM
def count_gmm(
    scs,
    *,
    max_components: int = 10,
    n_components: int | None = None,
    dose: float | None = None,
    first_count: int = 1,
    selection: str = "global",
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> GMMCountResult:
    """Count atoms by fitting Gaussian mixtures of increasing order to the SCS and minimising the ICL.

    Follows StatSTEM's procedure (De Backer et al., Ultramicroscopy 134 (2013) 23,
    doi:10.1016/j.ultramic.2013.05.003): all components share one variance, weights are free; order k is
    seeded from the best order-(k−1) fit plus one extra mean placed in each gap in turn (below the first mean,
    between consecutive means, above the last), every seed is refined by EM and the lowest negative
    log-likelihood is kept. The order is chosen by the integrated classification likelihood

        ICL(k) = 2·NlogL(k) + 2·E(k) + 2k·ln N,

    with NlogL the *negative* log-likelihood, E = −Σ τ ln τ the entropy of the posteriors τ and 2k the number
    of free parameters (k means, k−1 weights, 1 variance). Every term is a cost, so the ICL is minimised.

    Parameters
    ----------
    scs : array_like, shape (N,)
        Scattering cross-sections [Å² for normalised images, counts·Å² for count images].
    max_components : int, optional
        Highest order fitted (default 10). Needs N ≥ max_components.
    n_components : int or None, optional
        User override of the selected order (1..max_components); None selects the ICL minimum.
    dose : float or None, optional
        Dose [e⁻/Å²]. When given, component k has variance σ² + μ_k/dose (Poisson variance of an SCS in Å²
        measured at that dose); then ``scs`` must be in Å² (normalised intensity). Default None: shared σ².
    first_count : int, optional
        Number of atoms of the lowest-mean component (default 1: component c has c+1 atoms). Set it from a
        library when the thinnest columns are known to hold more atoms, or 0 if vacuum positions are included.
    selection : {"global", "first"}, optional
        Automatic choice of the minimum: the global ICL minimum (default) or the first local minimum.
    max_iter : int, optional
        EM iterations per seed (default 1000).
    tol : float, optional
        Relative change of the negative log-likelihood that stops EM (default 1e-6; StatSTEM uses 1e-8,
        ~6× slower at N = 1000, K = 8, with the same ICL at the selected order to 1e-6; only the slowly
        converging over-fitted orders move, by up to ~20, staying far above the minimum).

    Returns
    -------
    result : GMMCountResult

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> scs = np.concatenate([rng.normal(m, 0.1, 100) for m in (1.0, 2.0, 3.0)])
    >>> res = count_gmm(scs, max_components=5)
    >>> res.n_components, np.bincount(res.counts).tolist()
    (3, [0, 100, 100, 100])
    """
    x = _check_scs(scs, "scs")
    max_components = _check_int(max_components, "max_components", minimum=1)
    if len(x) < max_components:
        raise ValueError(
            f"scs has {len(x)} columns but max_components={max_components}; a mixture needs at least as many "
            "columns as components — lower max_components"
        )
    if n_components is not None:
        n_components = _check_int(n_components, "n_components", minimum=1)
        if n_components > max_components:
            raise ValueError(f"n_components={n_components} exceeds max_components={max_components}; raise "
                             "max_components or lower n_components")
    dose = check_dose(dose)
    first_count = _check_int(first_count, "first_count", minimum=0)
    if selection not in _SELECTIONS:
        raise ValueError(f"selection must be one of {_SELECTIONS}, got {selection!r}")
    max_iter = _check_int(max_iter, "max_iter", minimum=1)
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive relative tolerance, got {tol}")
    if dose is not None and np.any(x < 0):
        raise ValueError("with dose given, scs must be non-negative (variance σ² + μ/dose needs μ ≥ 0) [Å²]")

    scale = float(np.std(x)) or (float(np.abs(x).max()) or 1.0)
    xs = x / scale
    dose_s = None if dose is None else dose * scale  # v/scale² = σ'² + μ'/(dose·scale)
    fits = _fit_orders(xs, max_components, dose_s, max_iter, tol)
    n = len(x)
    nll = np.array([f.nll for f in fits]) + n * np.log(scale)  # back to original SCS units
    entropy = np.array([f.entropy for f in fits])
    k = np.arange(1, max_components + 1)
    icl = 2.0 * nll + 2.0 * entropy + 2.0 * k * np.log(n)
    chosen = n_components if n_components is not None else _select_minimum(icl, selection)
    if n_components is None and chosen == max_components and max_components > 1 and len(x) > max_components:
        # the criterion still falls at the edge of the search: the true order is likely higher and the counts of
        # the thickest columns would be merged
        warnings.warn(f"ICL is lowest at the largest order tried (max_components={max_components}); the mixture "
                      "may need more components — raise max_components", UserWarning, stacklevel=2)
    best = fits[chosen - 1]
    post = _posterior(xs, best.means, best.sd**2, best.weights)
    fits_orig = tuple(
        MixtureFit(f.means * scale, f.sd * scale, f.weights, f.sigma * scale, f.nll + n * np.log(scale),
                   f.entropy)
        for f in fits
    )
    sel = fits_orig[chosen - 1]
    return GMMCountResult(
        n_components=chosen, means=sel.means, sd=sel.sd, weights=sel.weights, icl=icl, nll=nll,
        counts=(first_count + np.argmax(post, axis=1)).astype(np.int64), posterior=post, scs=x,
        first_count=first_count, dose=dose, fits=fits_orig,
    )


def _check_scs(scs, name: str) -> np.ndarray:
    """1-D finite float array with at least one value."""
    x = np.asarray(scs, dtype=np.float64)
    if x.ndim != 1 or x.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of cross-sections, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains {int(np.sum(~np.isfinite(x)))} NaN/Inf value(s) (first at index "
                         f"{int(np.argmax(~np.isfinite(x)))}); drop the failed fits first")
    return x


def _check_int(value, name: str, *, minimum: int) -> int:
    """Integer ≥ minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer ≥ {minimum}, got {value}")
    return int(value)


def _select_minimum(icl: np.ndarray, selection: str) -> int:
    """Order (1-based) at the global or first local ICL minimum."""
    if selection == "first":
        for k in range(len(icl) - 1):
            if icl[k] < icl[k + 1]:
                return k + 1
    return int(np.argmin(icl)) + 1


def _variances(means: np.ndarray, sigma2: float, dose: float | None) -> np.ndarray:
    """Component variances σ² (+ μ_k/dose)."""
    if dose is None:
        return np.full(means.shape, sigma2)
    return sigma2 + means / dose


def _log_joint(x, means, var, weights) -> np.ndarray:
    """ln w_k + ln N(x_i; μ_k, v_k), shape (N, k)."""
    logw = np.log(np.maximum(weights, 1e-300))
    d2 = (x[:, None] - means[None, :]) ** 2
    return logw[None, :] - 0.5 * np.log(2.0 * np.pi * var)[None, :] - d2 / (2.0 * var[None, :])


def _posterior(x, means, var, weights) -> np.ndarray:
    """Posterior τ_ik, shape (N, k)."""
    return _e_step(x, means, var, weights)[0]


def _fit_orders(x, max_components, dose, max_iter, tol) -> list[MixtureFit]:
    """Best EM fit for each order 1..K with StatSTEM's gap seeding (data already scaled)."""
    lo, hi = float(x.min()), float(x.max())
    span = hi - lo if hi > lo else 1.0
    fits: list[MixtureFit] = []
    for k in range(1, max_components + 1):
        if k == 1:
            seeds = [(np.array([(lo + hi) / 2.0]), (span / 2.0) ** 2)]
        else:
            prev = fits[-1]
            edges = np.concatenate([[lo], prev.means, [hi]])
            seeds = [(np.sort(np.append(prev.means, (edges[g] + edges[g + 1]) / 2.0)), prev.sigma**2)
                     for g in range(k)]
        best = None
        for means0, sigma2_0 in seeds:
            fit = _em(x, means0, sigma2_0, np.full(k, 1.0 / k), dose, max_iter, tol)
            if best is None or fit.nll < best.nll:
                best = fit
        fits.append(best)
    return fits


def _em(x, means, sigma2, weights, dose, max_iter, tol) -> MixtureFit:
    """EM for a 1-D mixture with one shared σ² (and optional μ/dose term); returns the sorted fit.

    sklearn's GaussianMixture cannot be used: its 'tied' covariance is shared but it cannot take StatSTEM's
    per-order seeding of the means with a given shared variance, nor the dose-dependent variance.
    """
    n = len(x)
    floor = 1e-12  # σ² floor in scaled units (data have unit variance): avoids the degenerate spike
    means = means.astype(np.float64).copy()
    if dose is not None:
        means = np.maximum(means, 0.0)
    prev = np.inf
    for _ in range(max_iter + 1):
        var = _variances(means, sigma2, dose)
        tau, nll = _e_step(x, means, var, weights)
        if _ == max_iter or (np.isfinite(prev) and abs(prev - nll) <= tol * max(abs(nll), 1.0)):
            break
        prev = nll
        r = tau.sum(axis=0)
        weights = r / n
        s1 = tau.T @ x
        s2 = tau.T @ (x * x)
        alive = r > 1e-10
        if dose is None:
            means = np.where(alive, s1 / np.where(alive, r, 1.0), means)
            sigma2 = max(float(np.sum(s2 - 2 * means * s1 + means**2 * r)) / n, floor)
        else:
            means, sigma2 = _m_step_dose(r, s1, s2, means, sigma2, dose, floor)
    order = np.argsort(means, kind="stable")
    return MixtureFit(means=means[order], sd=np.sqrt(var[order]), weights=weights[order],
                      sigma=float(np.sqrt(sigma2)), nll=nll, entropy=float(-xlogy(tau, tau).sum()))


def _e_step(x, means, var, weights) -> tuple[np.ndarray, float]:
    """Posteriors τ (N, k) and the negative log-likelihood (log-sum-exp with the row maximum)."""
    lj = _log_joint(x, means, var, weights)
    top = lj.max(axis=1, keepdims=True)
    e = np.exp(lj - top)
    tot = e.sum(axis=1, keepdims=True)
    return e / tot, -float(np.sum(top) + np.sum(np.log(tot)))


def _m_step_dose(r, s1, s2, means, sigma2, dose, floor, n_newton: int = 3):
    """Conditional maximisation (ECM) of the expected complete log-likelihood when v_k = σ² + μ_k/dose.

    Alternates safeguarded Newton steps on every μ_k (σ² fixed; the k problems are independent and vectorised)
    and on σ² (μ fixed). Each step is accepted only if it does not decrease Q, so EM stays monotone (a GEM).
    """
    a = 1.0 / dose

    def q_k(mu, s2v):
        v = s2v + a * mu
        return -0.5 * r * np.log(v) - 0.5 * (s2 - 2 * mu * s1 + mu**2 * r) / v

    mu = means.copy()
    for _ in range(n_newton):
        v = sigma2 + a * mu
        ss = s2 - 2 * mu * s1 + mu**2 * r
        dss = 2 * (mu * r - s1)
        g = -0.5 * r * a / v - 0.5 * dss / v + 0.5 * ss * a / v**2
        h = 0.5 * r * a**2 / v**2 - r / v + dss * a / v**2 - ss * a**2 / v**3
        step = np.where(h < 0, -g / np.where(h < 0, h, -1.0), g * v / np.maximum(r, 1e-300))
        step = np.where(r > 1e-10, step, 0.0)
        old = q_k(mu, sigma2)
        for _ in range(30):  # per-component backtracking
            trial = np.maximum(mu + step, 0.0)
            better = q_k(trial, sigma2) >= old
            mu = np.where(better, trial, mu)
            if np.all(better | (step == 0)):
                break
            step = np.where(better, 0.0, step / 2)
        ss = s2 - 2 * mu * s1 + mu**2 * r
        v = sigma2 + a * mu
        g = np.sum(-0.5 * r / v + 0.5 * ss / v**2)
        h = np.sum(0.5 * r / v**2 - ss / v**3)
        step = -g / h if h < 0 else g * sigma2
        old = q_k(mu, sigma2).sum()
        for _ in range(30):
            trial = max(sigma2 + step, floor)
            if q_k(mu, trial).sum() >= old:
                sigma2 = trial
                break
            step /= 2
    return mu, float(sigma2)


# --------------------------------------------------------------------------------------------------- library
def count_library(scs, library_scs) -> np.ndarray:
    """Count atoms by assigning each SCS to the nearest library value.

    Parameters
    ----------
    scs : array_like, shape (N,)
        Measured cross-sections [same unit as the library].
    library_scs : array_like, shape (K,)
        ``library_scs[k - 1]`` is the simulated SCS of a column of k atoms; strictly increasing and positive.

    Returns
    -------
    counts : ndarray of int, shape (N,)
        Atom counts in 0..K. A median SCS above 3x the last library value, or (3 or more columns) no SCS
        reaching half the first, raises ValueError (a scale mismatch: every count would be clamped to K or 0);
        a median below a quarter of the first value warns (most columns empty). Decision boundaries are the
        midpoints between consecutive library values, with SCS(0 atoms) = 0: below ``library_scs[0] / 2`` -> 0
        atoms; in [(L[k-1]+L[k])/2, (L[k]+L[k+1])/2) -> k+1 atoms; a value exactly on a boundary gets the larger
        count. Values above the last library value get K (a warning is issued beyond the last half-step: extend
        the library).

    Examples
    --------
    >>> count_library([0.1, 1.4, 1.6, 2.9], [1.0, 2.0, 3.0]).tolist()
    [0, 1, 2, 3]
    """
    x = _check_scs(scs, "scs")
    lib = _check_library(library_scs)
    bounds = np.concatenate([[lib[0] / 2.0], (lib[:-1] + lib[1:]) / 2.0])
    counts = np.searchsorted(bounds, x, side="right").astype(np.int64)
    step = lib[-1] - (lib[-2] if len(lib) > 1 else 0.0)
    med = float(np.median(x))
    scales = ("the SCS and the library are on different scales (normalised images give Å², counts images "
              "counts·Å²) or the library is for another material or probe")
    if med > 3.0 * lib[-1]:
        # most columns thicker than 3x the thickest library column: every count would be clamped to K
        raise ValueError(f"the median SCS ({med:.4g}) is more than 3x the library's largest value ({lib[-1]:.4g}, "
                         f"{len(lib)} atoms): {scales}")
    if len(x) >= 3 and float(np.max(x)) < lib[0] / 2.0:
        # not one column reaches half an atom: every count would be 0 — a scale mismatch, not a sample
        raise ValueError(f"no SCS reaches half the library's 1-atom value ({lib[0]:.4g}; largest SCS "
                         f"{float(np.max(x)):.4g}): every count would be 0 — {scales}")
    if len(x) >= 3 and med < lib[0] / 4.0:
        warnings.warn(f"more than half the columns count 0 atoms (median SCS {med:.4g} < a quarter of the 1-atom "
                      f"value {lib[0]:.4g}): empty sites, or {scales}", UserWarning, stacklevel=2)
    n_out = int(np.sum(x > lib[-1] + step / 2.0))
    if n_out:
        warnings.warn(f"{n_out} SCS value(s) lie more than half a step above the largest library value "
                      f"({lib[-1]:.4g}, {len(lib)} atoms) and were assigned {len(lib)} atoms; "
                      "extend the library",
                      UserWarning, stacklevel=2)
    return counts


def _check_library(library_scs) -> np.ndarray:
    """Finite, positive, strictly increasing 1-D library."""
    lib = np.asarray(library_scs, dtype=np.float64)
    if lib.ndim != 1 or lib.size == 0:
        raise ValueError("library_scs must be a non-empty 1-D array (library_scs[k-1] = SCS of k atoms), "
                         f"got shape {lib.shape}")
    if not np.all(np.isfinite(lib)):
        raise ValueError("library_scs contains NaN/Inf values")
    if lib[0] <= 0:
        raise ValueError(f"library_scs[0] (1 atom) must be positive, got {lib[0]}")
    bad = np.flatnonzero(np.diff(lib) <= 0)
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"library_scs must increase strictly with the number of atoms; library_scs[{i}] = {lib[i]:.6g} "
            f"({i + 1} atoms) ≥ library_scs[{i + 1}] = {lib[i + 1]:.6g} ({i + 2} atoms). Check the library "
            "(channelling can make very thick columns non-monotonic: truncate it there)"
        )
    return lib


def load_library_csv(path) -> np.ndarray:
    """Read an SCS library from a CSV with columns ``n_atoms`` and ``scs``.

    ``n_atoms`` must be the consecutive integers 1..K (any order); returns ``library_scs`` of shape (K,) with
    ``library_scs[k - 1]`` the SCS of k atoms, validated as in :func:`count_library`.
    """
    try:
        df = pd.read_csv(path, comment="#")  # '#' lines: provenance, as in the bundled libraries
    except FileNotFoundError:
        raise FileNotFoundError(f"library file {str(path)!r} does not exist") from None
    except Exception as exc:
        raise ValueError(f"could not read library CSV {str(path)!r}: {exc}") from exc
    cols = {str(c).strip().lower(): c for c in df.columns}
    if "n_atoms" not in cols or "scs" not in cols:
        raise ValueError(
            f"library CSV {str(path)!r} must have columns 'n_atoms' and 'scs'; found {list(df.columns)}"
        )
    try:
        n = df[cols["n_atoms"]].to_numpy(dtype=np.float64)
        s = df[cols["scs"]].to_numpy(dtype=np.float64)
    except ValueError as exc:
        raise ValueError(f"library CSV {str(path)!r}: n_atoms/scs are not numeric ({exc})") from exc
    order = np.argsort(n, kind="stable")
    n, s = n[order], s[order]
    if not np.array_equal(n, np.arange(1, len(n) + 1)):
        raise ValueError(f"library CSV {str(path)!r}: n_atoms must be the consecutive integers 1..K, got "
                         f"{n.tolist()[:10]}{'...' if len(n) > 10 else ''}")
    return _check_library(s)


# --------------------------------------------------------------------------------------------------- plot
def _hist_bins(n: int) -> int:
    """Histogram bins of the SCS plots: 2·√n, between 10 and 200."""
    return max(10, min(200, int(np.sqrt(n) * 2)))


def _scs_label(unit: str | None) -> str:
    return "scattering cross-section" + (f" [{unit}]" if unit else "")


def plot_counting(result: GMMCountResult, scs=None, ax=None, *, scs_unit: str | None = None):
    """SCS histogram with the selected mixture, and the ICL curve in a second axes.

    Parameters
    ----------
    result : GMMCountResult
        Output of :func:`count_gmm`.
    scs : array_like, shape (N,), optional
        Cross-sections to histogram (default: ``result.scs``).
    ax : sequence of two matplotlib Axes, optional
        (histogram axes, ICL axes). Default: a new ``matplotlib.figure.Figure`` (no pyplot state, Agg-safe).
    scs_unit : str, optional
        Unit shown on the SCS axis, e.g. ``"Å²"`` for a normalised image (the SCS carry no unit of their own).

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    if not isinstance(result, GMMCountResult):
        raise TypeError(f"result must be a GMMCountResult, got {type(result).__name__}")
    x = result.scs if scs is None else _check_scs(scs, "scs")
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(10, 4), layout="constrained")
        ax_hist, ax_icl = fig.subplots(1, 2)
    else:
        try:
            ax_hist, ax_icl = ax
        except (TypeError, ValueError):
            raise ValueError("ax must be a pair (histogram axes, ICL axes)") from None
        fig = ax_hist.figure
    bins = _hist_bins(len(x))
    ax_hist.hist(x, bins=bins, density=True, color="0.75", label="SCS")
    pad = 3.0 * float(np.max(result.sd))
    grid = np.linspace(min(x.min(), result.means.min()) - pad, max(x.max(), result.means.max()) + pad, 800)
    comps = result.weights[:, None] * np.exp(-(grid[None] - result.means[:, None]) ** 2
                                             / (2 * result.sd[:, None] ** 2)) / (np.sqrt(2 * np.pi) *
                                                                                result.sd[:, None])
    for c, comp in enumerate(comps):
        ax_hist.plot(grid, comp, lw=0.8, label=None if c else "components")
    ax_hist.plot(grid, comps.sum(axis=0), "k", lw=1.5, label=f"mixture (k = {result.n_components})")
    ax_hist.set_xlabel(_scs_label(scs_unit))
    ax_hist.set_ylabel("density")
    ax_hist.legend(frameon=False)
    k = np.arange(1, len(result.icl) + 1)
    ax_icl.plot(k, result.icl, "o-", color="k")
    ax_icl.plot([result.n_components], [result.icl[result.n_components - 1]], "o", color="C3", ms=10,
                mfc="none", label="selected")
    ax_icl.set_xlabel("number of components")
    ax_icl.set_ylabel("ICL")
    ax_icl.legend(frameon=False)
    return fig


def plot_library_counting(scs, library_scs, ax=None, *, scs_unit: str | None = None):
    """SCS histogram with the library values (``library_scs[k - 1]`` = SCS of k atoms) and the count boundaries.

    Parameters
    ----------
    scs : array_like, shape (N,)
        Cross-sections to histogram.
    library_scs : array_like, shape (K,)
        As in :func:`count_library`.
    ax : matplotlib Axes, optional
        Default: a new ``matplotlib.figure.Figure`` (no pyplot state, Agg-safe).
    scs_unit : str, optional
        Unit shown on the SCS axis (as in :func:`plot_counting`).

    Returns
    -------
    fig : matplotlib.figure.Figure
    """
    x = _check_scs(scs, "scs")
    lib = _check_library(library_scs)
    if ax is None:
        from matplotlib.figure import Figure

        fig = Figure(figsize=(7, 4), layout="constrained")
        ax = fig.subplots()
    else:
        fig = ax.figure
    bins = _hist_bins(len(x))
    ax.hist(x, bins=bins, color="0.75", label="SCS")
    lo, hi = x.min(), x.max()
    shown = np.flatnonzero((lib >= lo - (hi - lo) * 0.05) & (lib <= hi + (hi - lo) * 0.05))
    for i, k in enumerate(shown):
        ax.axvline(lib[k], color="C0", lw=0.8, ls="--", label=None if i else "library (atoms)")
        ax.annotate(str(k + 1), (lib[k], 1.0), xycoords=("data", "axes fraction"), ha="center", va="bottom",
                    fontsize=7, color="C0")
    ax.set_xlabel(_scs_label(scs_unit))
    ax.set_ylabel("columns")
    ax.legend(frameon=False, loc="upper left")
    return fig
