"""CRLB speed: ``column_crlb`` (block-tridiagonal selected inversion) vs the dense inverse of the Fisher matrix.

Baseline, run in the same process on the same model: the Fisher matrix F = Jᵀ W J of eq. (2.27) assembled from a
scipy sparse Jacobian (windows of 4 widths, as ``column_crlb``) and inverted densely with a Cholesky factorisation
(scipy ``cho_factor``/``cho_solve``), then the diagonal and the SCS combination (eqs. 2.28–2.29) — what
stemquant itself did before 2026-12-01 and what a direct implementation of the equations does. Both sides get one
thread (torch and BLAS). The bounds of both are compared (largest relative difference) so that a speed-up can't
come from a wrong answer.

Cases: the 20×20 lattice (400 columns) and the 2,000-column image of ``fit_speed.py`` (common width, free
background, Poisson noise at 1e4 e⁻/Å²), and ``fit_columns`` with the CRLB on a 100-frame stack.

    OMP_NUM_THREADS=1 python benchmarks/crlb_speed.py [--quick] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, os.path.dirname(__file__))
from fit_speed import BG, DOSE, ETA, RHO, P, best_of, lattice_image, noisy  # noqa: E402

from stemquant.quant import column_crlb, fit_columns  # noqa: E402


def dense_crlb(pos, rho, eta, bg, shape, p, dose, truncation=4.0):
    """Baseline: sparse Jacobian, dense F, dense Cholesky inverse; common width and free background."""
    H, W = shape
    N = len(pos)
    h = int(np.ceil(truncation * rho / p))
    ar = np.arange(-h, h + 1)
    ci = np.round(pos[:, 1] / p - 0.5).astype(int)
    cj = np.round(pos[:, 0] / p - 0.5).astype(int)
    rows, cols = ci[:, None] + ar, cj[:, None] + ar
    valid = ((rows >= 0) & (rows < H))[:, :, None] & ((cols >= 0) & (cols < W))[:, None, :]
    flat = np.clip(rows, 0, H - 1)[:, :, None] * W + np.clip(cols, 0, W - 1)[:, None, :]
    dx = (cols + 0.5) * p - pos[:, :1]
    dy = (rows + 0.5) * p - pos[:, 1:]
    g = np.exp(-dy**2 / (2 * rho**2))[:, :, None] * np.exp(-dx**2 / (2 * rho**2))[:, None, :]
    s = dose * p * p
    e = eta * s
    lam = np.full(H * W, bg * s)
    np.add.at(lam, flat[valid], (e * g)[valid])
    d = [e * g * dx[:, None, :] / rho**2, e * g * dy[:, :, None] / rho**2, g * s,
         e * g * (dx[:, None, :] ** 2 + dy[:, :, None] ** 2) / rho**3]
    n_idx = np.broadcast_to(np.arange(N)[:, None, None], g.shape)[valid]
    r = np.concatenate([flat[valid]] * 4 + [np.arange(H * W)])
    c = np.concatenate([3 * n_idx, 3 * n_idx + 1, 3 * n_idx + 2, np.full(len(n_idx), 3 * N), np.full(H * W, 3 * N + 1)])
    v = np.concatenate([a[valid] for a in d] + [np.full(H * W, s)])
    J = sp.csr_matrix((v, (r, c)), shape=(H * W, 3 * N + 2))
    F = (J.T @ sp.diags(1.0 / lam) @ J).toarray()
    sc = 1.0 / np.sqrt(np.diag(F))
    cov = sla.cho_solve(sla.cho_factor(F * sc[:, None] * sc[None, :]), np.eye(len(F))) * sc[:, None] * sc[None, :]
    i = np.arange(N) * 3
    ge, gr = 2 * np.pi * rho**2, 4 * np.pi * eta * rho
    var_scs = ge**2 * cov[i + 2, i + 2] + 2 * ge * gr * cov[i + 2, 3 * N] + gr**2 * cov[3 * N, 3 * N]
    return np.sqrt(cov[i, i]), np.sqrt(cov[i + 1, i + 1]), np.sqrt(var_scs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="400 columns and a 20-frame stack only")
    ap.add_argument("--repeat", type=int, default=3, help="runs per timing; the best one counts")
    args = ap.parse_args(argv)
    threadpool_limits(1, user_api="blas")
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread, baseline BLAS 1 thread; load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}; best of {args.repeat}")
    rng = np.random.default_rng(0)
    cases = [(20, 20)] if args.quick else [(20, 20), (50, 40)]
    for nx, ny in cases:
        img, pos, _ = lattice_image(nx, ny, rng)
        n = len(pos)
        t_ours, _, ours = best_of(lambda pos=pos, shape=img.shape: column_crlb(pos, RHO, ETA, BG, shape, P, DOSE,
                                                                            width="common"), args.repeat)
        t_base, _, base = best_of(lambda pos=pos, shape=img.shape: dense_crlb(pos, RHO, ETA, BG, shape, P, DOSE),
                               args.repeat if n <= 400 else 1)
        diff = max(float(np.max(np.abs(ours[k].to_numpy() / b - 1)))
                   for k, b in zip(("x_crlb", "y_crlb", "scs_crlb"), base, strict=True))
        print(f"[{n} columns, {img.shape[0]}x{img.shape[1]} px] dense Fisher inverse {t_base:.3f} s; "
              f"column_crlb {t_ours * 1e3:.0f} ms = {n / t_ours:.0f} col/s -> {t_base / t_ours:.1f}x baseline; "
              f"largest relative difference of the bounds {diff:.1e}")
    img, pos, start = lattice_image(20, 20, rng)
    n_frames = 20 if args.quick else 100
    stack = noisy(img, rng, n_frames)
    for workers in (1, None):  # one thread, then fit_columns' default (frames in one thread per core)
        kw = dict(dose=DOSE, noise="poisson", progress=False, workers=workers)
        t_fit, _, _ = best_of(lambda kw=kw: fit_columns(stack, start, P, crlb=False, **kw), 1)
        t_all, _, _ = best_of(lambda kw=kw: fit_columns(stack, start, P, crlb=True, **kw), 1)
        print(f"[{n_frames}-frame stack of the 400-column image, workers={workers or 'default'}] fit {t_fit:.2f} s, "
              f"fit + CRLB of every column and frame {t_all:.2f} s (CRLB {1e3 * (t_all - t_fit) / n_frames:.0f} ms "
              "per frame)")


if __name__ == "__main__":
    main()
