"""Column-fitting speed: stemquant.fit_columns vs a plain scipy ``least_squares`` fit of the same image.

Prints columns/second for
  1. a 20×20 lattice (400 columns, 280×280 px),
  2. a 2,000-column image (50×40 lattice, 700×560 px),
  3. a 100-frame stack of (1) fitted in one call, with one worker and with the default (one per core),
and the ratio against two baselines run in the same process on the same image, both
scipy.optimize.least_squares (method "trf", lsmr, same windowed Gaussian model, same least-squares criterion):
  * "plain": scipy's finite-difference Jacobian with ``jac_sparsity`` — the issue's "plain least_squares (trf,
    sparse Jacobian)"; it runs at ~340 col/s on this machine, the figure the issue quotes;
  * "analytic": an analytic sparse Jacobian in CSR format — 2-3x faster than "plain", the stricter reference.
Every single-image time is the best of ``--repeat`` runs, for the baseline and for stemquant alike (the machine
is shared: the minimum is the least disturbed run); CPU-time ratios (process time) are printed next to them. For
the 400-column image the runs are interleaved (each round: both baselines, then every stemquant case), so that
the machine's speed phases weigh on both sides alike.

Both sides get the same resources: ``fit_columns`` runs on one torch thread (its CPU default) and the baseline's
BLAS (OpenBLAS under numpy/scipy) is limited to one thread with threadpoolctl. The 400-column image is also fitted
with ``num_threads=2`` (both cores of this machine for one image, the issue's "on 2 CPU cores"; the baseline has
no use for a second core), labelled as such. Unpinned, OpenBLAS spins a second
thread that fights other processes for the other core and made the baseline up to ~2-3x slower in wall and CPU
time on this shared machine — ratios measured that way (before 2026-12-01 14:10 UTC) overstated our speed-up.
``--baseline-blas-threads 0`` leaves the BLAS threading as it is, for comparison.

    python benchmarks/fit_speed.py [--quick] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import least_squares
from threadpoolctl import threadpool_limits

from stemquant.quant import fit_columns

P = 0.14  # Å
SPACING = 1.96  # Pt [001] column spacing a/2 [Å]
RHO, ETA, BG = 0.40, 0.05, 0.005
DOSE = 1e4


def lattice_image(nx, ny, rng):
    g = lambda n: SPACING * (np.arange(n) + 1)  # noqa: E731
    X, Y = np.meshgrid(g(nx), g(ny))
    pos = np.c_[X.ravel(), Y.ravel()]
    H, W = int(round((ny + 1) * SPACING / P)), int(round((nx + 1) * SPACING / P))
    yy, xx = (np.mgrid[0:H, 0:W] + 0.5) * P
    img = np.full((H, W), BG)
    h = int(np.ceil(5 * RHO / P))
    for x, y in pos:  # windowed rendering keeps this fast for 2,000 columns
        i, j = int(y / P), int(x / P)
        sl = (slice(max(i - h, 0), i + h + 1), slice(max(j - h, 0), j + h + 1))
        img[sl] += ETA * np.exp(-((xx[sl] - x) ** 2 + (yy[sl] - y) ** 2) / (2 * RHO**2))
    start = pos + rng.normal(0, 0.05, pos.shape)
    return img, pos, start


def noisy(img, rng, n=None):
    size = img.shape if n is None else (n, *img.shape)
    return rng.poisson(img * DOSE * P * P, size=size) / (DOSE * P * P)


def scipy_fit(image, start, rho0, jacobian="analytic"):
    """Baseline: joint least squares with scipy's trf (common width + background) on the same windowed model.

    ``jacobian="analytic"``: an analytic sparse CSR Jacobian (what a careful user writes; the stricter baseline).
    ``jacobian="plain"``: scipy's own finite differences with ``jac_sparsity`` (what "plain least_squares with a
    sparse Jacobian" gives a user who does not derive the model; scipy groups structurally independent parameters,
    ~30 model evaluations per Jacobian here, independent of the number of columns).
    """
    H, W = image.shape
    N = len(start)
    h = int(np.ceil(4 * rho0 / P))
    ar = np.arange(-h, h + 1)
    ci = np.round(start[:, 1] / P - 0.5).astype(int)
    cj = np.round(start[:, 0] / P - 0.5).astype(int)
    rows = np.clip(ci[:, None] + ar, 0, H - 1)  # (N, P)
    cols = np.clip(cj[:, None] + ar, 0, W - 1)
    valid = ((ci[:, None] + ar >= 0) & (ci[:, None] + ar < H))[:, :, None] & (
        (cj[:, None] + ar >= 0) & (cj[:, None] + ar < W))[:, None, :]
    flat = (rows[:, :, None] * W + cols[:, None, :])
    yc = (rows + 0.5) * P
    xc = (cols + 0.5) * P
    data = image.ravel()
    rr = flat[valid]
    n_idx = np.broadcast_to(np.arange(N)[:, None, None], flat.shape)[valid]

    def parts(theta):
        x, y, eta = theta[:N], theta[N : 2 * N], theta[2 * N : 3 * N]
        rho, zeta = theta[3 * N], theta[3 * N + 1]
        dx = xc - x[:, None]
        dy = yc - y[:, None]
        gx = np.exp(-dx**2 / (2 * rho**2))
        gy = np.exp(-dy**2 / (2 * rho**2))
        g = gy[:, :, None] * gx[:, None, :]
        return x, y, eta, rho, zeta, dx, dy, g

    def fun(theta):
        *_, eta, rho, zeta, dx, dy, g = parts(theta)
        model = np.full(H * W, zeta)
        np.add.at(model, rr, (eta[:, None, None] * g)[valid])
        return model - data

    def jac(theta):
        x, y, eta, rho, zeta, dx, dy, g = parts(theta)
        e = eta[:, None, None]
        dX = e * g * dx[:, None, :] / rho**2
        dY = e * g * dy[:, :, None] / rho**2
        dR = e * g * (dx[:, None, :] ** 2 + dy[:, :, None] ** 2) / rho**3
        r = np.concatenate([rr, rr, rr, rr, np.arange(H * W)])
        c = np.concatenate([n_idx, N + n_idx, 2 * N + n_idx, np.full(len(rr), 3 * N), np.full(H * W, 3 * N + 1)])
        v = np.concatenate([dX[valid], dY[valid], g[valid], dR[valid], np.ones(H * W)])
        return sp.csr_matrix((v, (r, c)), shape=(H * W, 3 * N + 2))

    zeta0 = np.percentile(image, 2)
    eta0 = image[np.clip(ci, 0, H - 1), np.clip(cj, 0, W - 1)] - zeta0
    theta0 = np.r_[start[:, 0], start[:, 1], eta0, rho0, zeta0]
    if jacobian == "analytic":
        res = least_squares(fun, theta0, jac=jac, method="trf", tr_solver="lsmr", x_scale="jac")
    elif jacobian == "plain":  # the width and the background touch every pixel
        r = np.concatenate([rr, rr, rr, np.arange(H * W), np.arange(H * W)])
        c = np.concatenate([n_idx, N + n_idx, 2 * N + n_idx, np.full(H * W, 3 * N), np.full(H * W, 3 * N + 1)])
        sparsity = sp.csr_matrix((np.ones(len(r)), (r, c)), shape=(H * W, 3 * N + 2))
        res = least_squares(fun, theta0, jac_sparsity=sparsity, method="trf", tr_solver="lsmr", x_scale="jac")
    else:
        raise ValueError(f"jacobian must be 'analytic' or 'plain', got {jacobian!r}")
    return res.x[:N], res.x[N : 2 * N], res


JAC = {"plain": "finite-difference J, jac_sparsity", "analytic": "analytic sparse J"}


def rate(n_cols, seconds):
    return n_cols / seconds


def ratios(base, t, c):
    """Speed-up against both baselines, wall time (CPU time)."""
    return ", ".join(f"{base[k][0] / t:.1f}x {k} (CPU {base[k][1] / c:.1f}x)" for k in ("plain", "analytic"))


def best_of(f, repeat):
    """Best wall time [s] and best CPU (process) time [s] over ``repeat`` runs, and the last output."""
    ts, cs = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        out = f()
        ts.append(time.perf_counter() - t0)
        cs.append(time.process_time() - c0)
    return min(ts), min(cs), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="skip the 2,000-column image and use a 20-frame stack")
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per single-image timing; the best one counts")
    ap.add_argument("--baseline-blas-threads", type=int, default=1,
                    help="BLAS threads of the scipy baseline (default 1, like fit_columns; 0 = leave unlimited)")
    args = ap.parse_args(argv)
    if args.baseline_blas_threads:
        threadpool_limits(args.baseline_blas_threads, user_api="blas")  # numpy/scipy BLAS only, not torch
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; best of {args.repeat}; baseline BLAS threads "
          f"{args.baseline_blas_threads or 'unlimited'}")
    R = args.repeat
    img, pos, start = lattice_image(20, 20, rng)
    x = noisy(img, rng)
    fit_columns(x, start, P, crlb=False)  # warm-up

    frames = noisy(img, rng, 5)  # single-image rates: mean over 5 different noise realisations
    # Interleaved rounds: each round runs both baselines once and every stemquant case on every frame once, so that
    # the VM's speed phases (±30 % within a minute) weigh on both sides alike; each side's best round counts.
    # num_threads=2 uses both cores of this machine for one image (the target is "on 2 CPU cores"); the
    # baseline cannot use a second core (scipy's trf/lsmr is serial), and more torch threads than free cores make
    # the many small operations spin (fit_columns' docstring), so 1 is the default and the equal-resource figure.
    cases = [("gaussian", 1), ("poisson", 1), ("gaussian", 2), ("poisson", 2)]
    fit_columns(x, start, P, crlb=False, num_threads=2)  # warm-up
    tb = {k: [] for k in JAC}
    tf = {c: np.full((R, len(frames), 2), np.inf) for c in cases}  # (round, frame, wall/CPU)
    last_fit = {}  # case -> the last fit (for its error and iterations)
    for r in range(R):
        for kind in JAC:
            t0, c0 = time.perf_counter(), time.process_time()
            bx, by, res = scipy_fit(x, start, 0.35, kind)
            tb[kind].append((time.perf_counter() - t0, time.process_time() - c0, bx, by, res))
        for noise, threads in cases:
            for i, f in enumerate(frames):
                t0, c0 = time.perf_counter(), time.process_time()
                last_fit[noise, threads] = fit_columns(f, start, P, dose=DOSE, noise=noise, crlb=False,
                                                       num_threads=threads)
                tf[noise, threads][r, i] = time.perf_counter() - t0, time.process_time() - c0
    base = {}  # baseline -> (wall s, CPU s)
    for kind in JAC:
        t_b, c_b = min(v[0] for v in tb[kind]), min(v[1] for v in tb[kind])
        _, _, bx, by, res = tb[kind][-1]
        base[kind] = (t_b, c_b)
        err = np.mean(np.hypot(bx - pos[:, 0], by - pos[:, 1]))
        print(f"[400 columns, {x.shape[0]}x{x.shape[1]} px] scipy least_squares (trf, {JAC[kind]}): "
              f"{t_b:.2f} s = {rate(400, t_b):.0f} col/s, CPU {c_b:.2f} s (nfev {res.nfev}, MAE {err:.4f} Å)")
    for noise, threads in cases:
        best = tf[noise, threads].min(axis=0)  # (frame, wall/CPU)
        t, c = float(best[:, 0].mean()), float(best[:, 1].mean())
        fit = last_fit[noise, threads]
        err = np.mean(np.hypot(*(fit.positions - pos).T))
        label = "" if threads == 1 else f", num_threads={threads} (both cores; baseline on one)"
        print(f"  stemquant fit_columns noise={noise}{label}: {t * 1e3:.0f} ms = {rate(400, t):.0f} col/s "
              f"-> {ratios(base, t, c)} (MAE {err:.4f} Å, iterations {int(fit.n_iter)})")
        # paired per round: the plain baseline's CPU time over this case's mean CPU time per frame in the same round
        # (both within ~2 s of each other, so a speed phase of the VM weighs on both)
        for k, what in ((1, "CPU"), (0, "wall")):
            paired = np.array([tb["plain"][r][k] / tf[noise, threads][r, :, k].mean() for r in range(R)])
            print(f"    paired per round ({what}, plain baseline): median {np.median(paired):.1f}x, range "
                  f"{paired.min():.1f}-{paired.max():.1f}x over {R} rounds")
    t, _, fit = best_of(lambda: fit_columns(x, start, P, dose=DOSE, noise="poisson", crlb=True), R)
    print(f"  with CRLB of every column: {t * 1e3:.0f} ms")

    n_frames = 20 if args.quick else 100
    stack = noisy(img, rng, n_frames)
    # One worker: the same resources as the baseline. Default: frame batches in one thread per core (here 2),
    # which the single-image fit cannot use; the baseline, one frame at a time, would need separate processes.
    for workers, label in ((1, "1 worker"), (None, "default workers")):
        t, c, fit = best_of(lambda workers=workers: fit_columns(stack, start, P, dose=DOSE, noise="poisson",
                                                                crlb=False, progress=False, workers=workers), 1)
        print(f"[{n_frames}-frame stack of the 400-column image, one call, {label}] {t:.2f} s = "
              f"{rate(400 * n_frames, t):.0f} col/s -> {ratios(base, t / n_frames, c / n_frames)}; "
              f"converged {fit.converged.mean():.3f}")

    if not args.quick:
        img2, pos2, start2 = lattice_image(50, 40, rng)
        x2 = noisy(img2, rng)
        base2 = {}
        for kind in ("plain", "analytic"):
            t_b, c_b, _ = best_of(lambda kind=kind: scipy_fit(x2, start2, 0.35, kind), R)
            base2[kind] = (t_b, c_b)
            print(f"[2000 columns, {x2.shape[0]}x{x2.shape[1]} px] scipy least_squares (trf, {JAC[kind]}): "
                  f"{t_b:.2f} s = {rate(2000, t_b):.0f} col/s, CPU {c_b:.2f} s")
        for noise in ("gaussian", "poisson"):
            t, c, fit = best_of(lambda noise=noise: fit_columns(x2, start2, P, dose=DOSE, noise=noise, crlb=False), R)
            print(f"  stemquant fit_columns noise={noise}: {t:.2f} s = {rate(2000, t):.0f} col/s "
                  f"-> {ratios(base2, t, c)} (iterations {int(fit.n_iter)})")


if __name__ == "__main__":
    main()
