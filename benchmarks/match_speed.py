"""Detection matching speed: ``match_columns`` (k-d tree + per-component Hungarian) vs one dense Hungarian
assignment over all pairs (the textbook definition, run in the same process on the same columns).

A square lattice (spacing 2 Å) of N true columns, found columns jittered by 0.2 Å with 5 % missed and 5 %
spurious; threshold 0.5 Å. The dense baseline is skipped above ``--dense-max`` columns (memory ~ 8·N² bytes).

    python benchmarks/match_speed.py [--sizes 1000 3000 10000] [--dense-max 3000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from scipy.optimize import linear_sum_assignment

from stemquant.quant.metrics import match_columns


def columns(n, rng):
    g = np.arange(int(round(np.sqrt(n)))) * 2.0
    X, Y = np.meshgrid(g, g)
    true = np.c_[X.ravel(), Y.ravel()]
    kept = true[rng.random(len(true)) >= 0.05]
    spurious = rng.uniform(0, g[-1], (len(true) // 20, 2))
    return np.vstack([kept + rng.normal(0, 0.2, kept.shape), spurious]), true


def dense(found, true, threshold):
    d = np.linalg.norm(found[:, None] - true[None], axis=-1)
    big = threshold * (min(d.shape) + 1) + 1.0
    rows, cols = linear_sum_assignment(np.where(d <= threshold, d, big))
    keep = d[rows, cols] <= threshold
    return rows[keep], cols[keep]


def best(f, repeat=3):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000, 10000])
    ap.add_argument("--dense-max", type=int, default=3000)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    for n in args.sizes:
        found, true = columns(n, rng)
        t, (f, _) = best(lambda: match_columns(found, true, 0.5))  # noqa: B023
        line = f"{len(true)} true / {len(found)} found columns: match_columns {t * 1e3:.1f} ms ({len(f)} pairs)"
        if n <= args.dense_max:
            td, (fd, _) = best(lambda: dense(found, true, 0.5), repeat=1)  # noqa: B023
            line += f"; dense Hungarian {td * 1e3:.0f} ms ({len(fd)} pairs); ratio {td / t:.0f}x"
        print(line)


if __name__ == "__main__":
    main()
