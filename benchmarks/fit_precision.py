"""Precision of fitted positions and SCS against the Cramér–Rao lower bound, dose 5e2 … 5e5 e⁻/Å².

A 5×5 lattice of Gaussian columns (ρ = 0.45 Å, η = 0.05, background 0.005, pixel 0.2 Å) gets R Poisson noise
realisations per dose; each dose is ONE batched ``fit_columns`` call. Efficiency = CRLB² / MSE pooled over all
columns and realisations (1 = efficient), for x, y and SCS, with a 95 % χ² interval; Poisson maximum likelihood
(ours) next to least squares (StatSTEM's criterion, the baseline) on the same images.

    python benchmarks/fit_precision.py [--realisations 100] [--doses 500 1000] [--oracle]

``--oracle`` adds a Poisson-ML fit that knows the true width and background (only positions and heights free),
judged against the CRLB of that smaller model: if even this estimator stays below efficiency 1 at a dose, the
asymptotic bound is not attainable there by maximum likelihood, whatever the engine.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy import stats

from stemquant.quant import column_crlb, fit_columns

P, RHO, ETA, BG = 0.2, 0.45, 0.05, 0.005
DOSES = [5e2, 1e3, 5e3, 1e4, 5e4, 1e5, 5e5]


def setup(n=5, spacing=2.0, margin=2.0):
    g = margin + spacing * np.arange(n)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    size = int(round((2 * margin + spacing * (n - 1)) / P))
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) * P
    img = BG + sum(ETA * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * RHO**2)) for x, y in pos)
    return pos, img


def efficiency(z):
    """CRLB²/MSE from z = error/CRLB, with a 95 % interval from the χ² distribution of Σz²."""
    n = z.size
    ss = float(np.sum(z**2))
    lo, hi = n / stats.chi2.ppf(0.975, n) * n / ss, n / stats.chi2.ppf(0.025, n) * n / ss
    return n / ss, lo, hi


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--realisations", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--doses", type=float, nargs="+", default=DOSES, help="doses [e⁻/Å²]")
    ap.add_argument("--oracle", action="store_true", help="also fit with the true width and background fixed")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    pos, img = setup()
    scs_true = 2 * np.pi * ETA * RHO**2
    print(f"{len(pos)} columns, {img.shape[0]}x{img.shape[1]} px, {args.realisations} realisations per dose")
    print("dose [e/Å²] | criterion | eff x | eff y | eff SCS (95% CI) | SCS bias/CRLB | converged | s")
    for dose in args.doses:
        stack = rng.poisson(img * dose * P * P, size=(args.realisations, *img.shape)) / (dose * P * P)
        cr_common = column_crlb(pos, RHO, ETA, BG, img.shape, P, dose, width="common")
        res = {}
        cases = [("poisson", "poisson", {"width": "common"}), ("gaussian", "gaussian", {"width": "common"})]
        if args.oracle:
            cases.append(("oracle", "poisson", {"width": RHO, "background": BG}))
        for name, noise, kw in cases:
            cr = cr_common if name != "oracle" else column_crlb(pos, RHO, ETA, BG, img.shape, P, dose,
                                                                 width="fixed", background_free=False)
            t0 = time.perf_counter()
            fit = fit_columns(stack, pos, P, dose=dose, noise=noise, crlb=False, progress=False, **kw)
            dt = time.perf_counter() - t0
            ok = fit.converged
            zx = ((fit.positions[..., 0] - pos[:, 0]) / cr["x_crlb"].to_numpy())[ok]
            zy = ((fit.positions[..., 1] - pos[:, 1]) / cr["y_crlb"].to_numpy())[ok]
            zs = ((fit.scs - scs_true) / cr["scs_crlb"].to_numpy())[ok]
            res[name] = [efficiency(z) for z in (zx, zy, zs)]
            ex, ey, es = res[name]
            print(f"{dose:10.0f} | {name:8s} | {ex[0]:.3f} | {ey[0]:.3f} | {es[0]:.3f} ({es[1]:.3f}-{es[2]:.3f}) | "
                  f"{zs.mean():+.3f} | {ok.mean():.3f} | {dt:.1f}")
        ratio = res["poisson"][2][0] / res["gaussian"][2][0]
        print(f"{'':10s}   SCS efficiency ratio Poisson-ML / least squares: {ratio:.2f}")


if __name__ == "__main__":
    main()
