"""Precision and speed of stemquant's joint fit against Atomap's per-column 2-D Gaussian refinement.

Atomap (Nord et al. 2017) refines each column separately: centre of mass, then a 2-D Gaussian (elliptical,
rotation enabled) fitted with HyperSpy inside a disc of 0.4 × the nearest-neighbour distance. We fit the same
images jointly with ``fit_columns`` (Poisson ML and least squares, common width, free background). Images: the
20×20 Pt-like lattice of ``fit_speed.py`` (400 columns, 0.14 Å pixels, ρ = 0.40 Å, 1.96 Å spacing) with Poisson
noise at each dose; all methods start from the same perturbed positions (σ = 0.05 Å).

Printed per dose: position MAE (mean |r̂ − r|) [Å], efficiency var_CRLB / MSE of x and y (1 = efficient; the bound
is ``column_crlb`` with individual widths and free background, the per-column model Atomap fits), and columns per
second on one thread (BLAS limited to one thread for both); "far" is the share of columns more than 0.5 Å
(a quarter of the spacing) from the truth, and "flagged" the share ``fit_columns`` reports as not converged
(Atomap has no such flag; HyperSpy only logs a warning).

Atomap is an optional, heavy dependency (HyperSpy) that stemquant does not need; install it in a separate
environment:

    python -m venv --system-site-packages /tmp/atomvenv && /tmp/atomvenv/bin/pip install atomap
    OMP_NUM_THREADS=1 /tmp/atomvenv/bin/python benchmarks/atomap_compare.py [--realisations 8]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
import warnings

import numpy as np
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(__file__))
from fit_speed import BG, ETA, RHO, P, lattice_image  # noqa: E402

from stemquant.quant import column_crlb, fit_columns  # noqa: E402


def atomap_fit(image, start):
    """Atomap's documented refinement: centre of mass, then 2-D Gaussians; positions back in Å."""
    import atomap.api as am

    sub = am.Sublattice(start / P - 0.5, image)  # Atomap: pixel (i, j) centred at x = j, y = i
    sub.find_nearest_neighbors()
    sub.refine_atom_positions_using_center_of_mass(show_progressbar=False)
    sub.refine_atom_positions_using_2d_gaussian(show_progressbar=False)
    return (np.c_[sub.x_position, sub.y_position] + 0.5) * P


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--realisations", type=int, default=8, help="noise realisations per dose")
    ap.add_argument("--doses", type=float, nargs="+", default=[5e2, 5e3, 5e4], help="doses [e-/A^2]")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.getLogger("hyperspy").setLevel(logging.ERROR)  # one maxfev warning per failed column fit
    threadpool_limits(1, user_api="blas")
    import torch

    torch.set_num_threads(1)
    try:
        import atomap  # noqa: F401
    except ImportError:
        sys.exit("atomap is not installed: see this script's docstring")
    rng = np.random.default_rng(0)
    img, pos, _ = lattice_image(20, 20, rng)
    n = len(pos)
    print(f"load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}; {args.realisations} realisations of "
          f"{n} columns per dose; image {img.shape[0]}x{img.shape[1]} px")
    print("| dose e-/A^2 | method | MAE A | efficiency x | efficiency y | far (> 0.5 A) | flagged | col/s |")
    print("|---|---|---|---|---|---|---|---|")
    for dose in args.doses:
        cr = column_crlb(pos, RHO, ETA, BG, img.shape, P, dose, width="individual")
        var_x, var_y = cr["x_crlb"].to_numpy() ** 2, cr["y_crlb"].to_numpy() ** 2
        err = {m: [] for m in ("atomap", "stemquant poisson", "stemquant lsq")}
        secs = {m: 0.0 for m in err}
        flagged = {m: [] for m in err}
        for _ in range(args.realisations):
            noisy = rng.poisson(img * dose * P * P) / (dose * P * P)
            start = pos + rng.normal(0, 0.05, pos.shape)
            for m in err:
                t0 = time.perf_counter()
                if m == "atomap":
                    est = atomap_fit(noisy, start)
                else:
                    noise = "poisson" if m.endswith("poisson") else "gaussian"
                    fit = fit_columns(noisy, start, P, dose=dose, noise=noise, crlb=False)
                    est = fit.positions
                    flagged[m].append(np.mean(~fit.converged))
                secs[m] += time.perf_counter() - t0
                err[m].append(est - pos)
        for m, e in err.items():
            e = np.array(e)  # (R, N, 2)
            dist = np.hypot(e[..., 0], e[..., 1])
            mae = np.mean(dist)
            flag = f"{np.mean(flagged[m]):.3f}" if flagged[m] else "-"
            eff_x = np.mean(var_x) / np.mean(e[..., 0] ** 2)
            eff_y = np.mean(var_y) / np.mean(e[..., 1] ** 2)
            print(f"| {dose:.0e} | {m} | {mae:.4f} | {eff_x:.2f} | {eff_y:.2f} | {np.mean(dist > 0.5):.4f} | "
                  f"{flag} | {n * args.realisations / secs[m]:.0f} |", flush=True)


if __name__ == "__main__":
    main()
