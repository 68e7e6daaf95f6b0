"""Robustness sweep of ``fit_columns``: the working tree against a git revision, scenario by scenario, in one process.

For changes to the fitting engine's convergence logic (``src/stemquant/quant/_fit.py``): does any class of image
get worse? The package at ``--rev`` is extracted (``git archive``, :func:`fit_ab.import_old`) as ``stemquant_old``;
both versions fit the same noisy stacks from the same starts (``--frames`` frames per scenario, the whole stack in
one call, ``crlb=True``, one torch thread and one worker each; warnings suppressed but counted).

    cd benchmarks && OMP_NUM_THREADS=1 python fit_robustness.py --rev HEAD [--frames 6] [--only sep,vac]
        [--csv /tmp/robust.csv] [--seed 0] [--workers 1]

Scenarios (72, families x variants; names like ``sep-ind-poi-1e3``: family, width mode com/ind, criterion
poi (Poisson ML) / lsq (least squares), dose [e⁻/Å²]); pixel 0.15 Å, heights 0.05 and background 0.005 of the beam
(normalised intensity, Poisson noise at the dose), starts = truth + N(0, 0.05 Å):
  sep      8x8 separated square lattice, spacing U(2.0, 3.9) Å, ρ 0.40 Å ±5 %; 4 doses x poi/lsq x com/ind.
  ovl      12x12 strongly overlapping lattice, spacing 1.2 Å, ρ 0.45 Å; 1e4.
  vac      10x10 lattice (2.8 Å) with 6 empty sites given as starts; com/ind x poi/lsq x 1e3/1e4.
  two-typ, two-one  heavy 8x8 lattice (3.0 Å) with light columns (height U(0.10, 0.20) x heavy, ρ 0.45 Å) at
           the cell centres, with / without ``types``; com/ind x poi/lsq x 1e3/1e4.
  sto      SrTiO3 [001]-like, 5x5 cells (a = 3.905 Å): Sr, Ti-O (0.5 x Sr), O (0.03 x Sr) as 3 types.
  wi25, wi70  ρ 0.40 Å fitted from ``width_init`` 0.25 / 0.70 Å, individual widths; poi/lsq x 1e3/1e4.
  hump50, hump100  a broad Gaussian (σ 4 Å, 0.5 / 1.0 x the column height) under part of an 8x8 lattice (2.5 Å),
           one extra start on its centre (between columns); individual widths, 1e4.
  spur     8x8 lattice (3.0 Å) with 4 spurious starts at cell centres; com/ind x poi/lsq x 1e3/1e4.

Per scenario and version: converged fraction of the real columns (not vacancies, spurious or hump starts), frames
in which every real column converged, mean and max iterations, wall time of the fit, warnings, and the fraction of
the other starts reported as empty sites; between versions the largest position difference over columns
converged in both, in units of the working tree's CRLB (x_crlb, y_crlb). A scenario is WORSE when the working tree
converges a smaller fraction of the real columns or needs > 20 % more iterations on average; BETTER when it is not
worse and converges more, or needs < 1/1.2 of the iterations. Frames use ``default_rng(seed + scenario index)``
(index in the full list, so ``--only`` subsets reproduce the same frames).
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from fit_ab import import_old

from stemquant.quant import fit_columns

P = 0.15  # pixel size [Å]
ETA, BG, RHO = 0.05, 0.005, 0.40  # column height and background [fraction of the beam], width [Å]
START_SD = 0.05  # start position error [Å]
ITER_TOL = 1.2  # mean iterations up by more than this factor: worse


@dataclass
class Scenario:
    name: str
    frames: np.ndarray  # (B, H, W)
    start: np.ndarray  # (N, 2) [Å]
    real: np.ndarray  # (N,) bool: a column lies under the start
    kwargs: dict  # fit_columns options
    info: dict = field(default_factory=dict)  # scenario parameters drawn at random, for the CSV


def render(pos, rho, eta, shape, bg=BG):
    """Background plus round Gaussians (windowed at 5ρ) with pixel centres at (j + 0.5)·P [normalised intensity]."""
    H, W = shape
    img = np.full(shape, float(bg))
    for (x, y), r, e in zip(pos, np.broadcast_to(rho, len(pos)), np.broadcast_to(eta, len(pos)), strict=True):
        h = int(np.ceil(5 * r / P))
        i, j = int(y / P), int(x / P)
        i0, i1, j0, j1 = max(i - h, 0), min(i + h + 1, H), max(j - h, 0), min(j + h + 1, W)
        gy = np.exp(-(((np.arange(i0, i1) + 0.5) * P - y) ** 2) / (2 * r**2))
        gx = np.exp(-(((np.arange(j0, j1) + 0.5) * P - x) ** 2) / (2 * r**2))
        img[i0:i1, j0:j1] += e * gy[:, None] * gx[None, :]
    return img


def noisy(img, dose, rng, nf):
    """``nf`` Poisson realisations of ``img`` at ``dose`` [e⁻/Å²], back in normalised intensity."""
    s = dose * P * P
    return rng.poisson(img * s, size=(nf, *img.shape)) / s


def grid(nx, ny, spacing, margin=None):
    """Square lattice positions (N, 2) [Å] with ``margin`` (default: the spacing, at least 2 Å) and image shape."""
    m = max(spacing, 2.0) if margin is None else margin
    X, Y = np.meshgrid(m + spacing * np.arange(nx), m + spacing * np.arange(ny))
    shape = int(round((2 * m + spacing * (ny - 1)) / P)), int(round((2 * m + spacing * (nx - 1)) / P))
    return np.c_[X.ravel(), Y.ravel()], shape


def jitter(pos, rng):
    return pos + rng.normal(0, START_SD, pos.shape)


def cell_centres(nx, ny, spacing, margin):
    return grid(nx - 1, ny - 1, spacing, margin + spacing / 2)[0]


def opts(width, noise, dose, **kw):
    return dict(width={"com": "common", "ind": "individual"}[width],
                noise={"poi": "poisson", "lsq": "gaussian"}[noise], dose=dose, **kw)


# ---------------------------------------------------------------------------------------------------- families


def sep(rng, nf, width, noise, dose):
    spacing = rng.uniform(2.0, 3.9)
    pos, shape = grid(8, 8, spacing)
    rho = RHO * (1 + 0.05 * rng.standard_normal(len(pos)))
    img = render(pos, rho, ETA * rng.uniform(0.9, 1.1, len(pos)), shape)
    return noisy(img, dose, rng, nf), jitter(pos, rng), np.ones(len(pos), bool), opts(width, noise, dose), \
        {"spacing": spacing}


def ovl(rng, nf, width, noise, dose):
    pos, shape = grid(12, 12, 1.2, 2.0)
    img = render(pos, 0.45, ETA * rng.uniform(0.9, 1.1, len(pos)), shape)
    return noisy(img, dose, rng, nf), jitter(pos, rng), np.ones(len(pos), bool), opts(width, noise, dose), {}


def vac(rng, nf, width, noise, dose):
    pos, shape = grid(10, 10, 2.8)
    inner = np.flatnonzero(((pos > pos.min(0)) & (pos < pos.max(0))).all(1))
    real = np.ones(len(pos), bool)
    real[rng.choice(inner, 6, replace=False)] = False
    rho = RHO * (1 + 0.05 * rng.standard_normal(real.sum()))
    img = render(pos[real], rho, ETA * rng.uniform(0.9, 1.1, real.sum()), shape)
    return noisy(img, dose, rng, nf), jitter(pos, rng), real, opts(width, noise, dose), {}


def two(rng, nf, with_types, width, noise, dose):
    heavy, shape = grid(8, 8, 3.0)
    light = cell_centres(8, 8, 3.0, 3.0)
    frac = rng.uniform(0.10, 0.20)
    pos = np.r_[heavy, light]
    rho = np.r_[np.full(len(heavy), RHO), np.full(len(light), 0.45)]
    eta = ETA * np.r_[np.ones(len(heavy)), np.full(len(light), frac)] * rng.uniform(0.95, 1.05, len(pos))
    types = np.r_[np.zeros(len(heavy), int), np.ones(len(light), int)] if with_types else None
    return noisy(render(pos, rho, eta, shape), dose, rng, nf), jitter(pos, rng), np.ones(len(pos), bool), \
        opts(width, noise, dose, types=types), {"light": frac}


def sto(rng, nf, width, noise, dose):
    a, n, m = 3.905, 5, 2.5
    sr = grid(n + 1, n + 1, a, m)[0]
    ti = cell_centres(n + 1, n + 1, a, m)
    o = np.r_[grid(n, n + 1, a, m)[0] + [a / 2, 0], grid(n + 1, n, a, m)[0] + [0, a / 2]]
    shape = (int(round((2 * m + n * a) / P)),) * 2
    pos = np.r_[sr, ti, o]
    k = np.r_[np.zeros(len(sr), int), np.ones(len(ti), int), np.full(len(o), 2)]
    rho = np.array([0.42, 0.40, 0.38])[k]
    eta = ETA * np.array([1.0, 0.5, 0.03])[k] * rng.uniform(0.95, 1.05, len(pos))
    types = np.array([38, 22, 8])[k]
    return noisy(render(pos, rho, eta, shape), dose, rng, nf), jitter(pos, rng), np.ones(len(pos), bool), \
        opts(width, noise, dose, types=types), {}


def winit(rng, nf, w0, width, noise, dose):
    pos, shape = grid(8, 8, 2.8)
    img = render(pos, RHO * (1 + 0.05 * rng.standard_normal(len(pos))), ETA * rng.uniform(0.9, 1.1, len(pos)), shape)
    return noisy(img, dose, rng, nf), jitter(pos, rng), np.ones(len(pos), bool), \
        opts(width, noise, dose, width_init=w0), {}


def hump(rng, nf, amp, width, noise, dose):
    s, m = 2.5, 2.5
    pos, shape = grid(8, 8, s, m)
    centre = np.array([m + 5.5 * s, m + 4.5 * s])  # a cell centre in the lower right part of the lattice
    img = render(pos, RHO * (1 + 0.05 * rng.standard_normal(len(pos))), ETA * rng.uniform(0.9, 1.1, len(pos)), shape)
    img += _dense(centre, 4.0, amp * ETA, shape)  # the hump, rendered on the whole image
    start = np.r_[jitter(pos, rng), jitter(centre[None], rng)]
    return noisy(img, dose, rng, nf), start, np.r_[np.ones(len(pos), bool), False], opts(width, noise, dose), {}


def _dense(centre, sigma, eta, shape):
    yy, xx = (np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5) * P
    return eta * np.exp(-((xx - centre[0]) ** 2 + (yy - centre[1]) ** 2) / (2 * sigma**2))


def spur(rng, nf, width, noise, dose):
    pos, shape = grid(8, 8, 3.0)
    cells = cell_centres(8, 8, 3.0, 3.0)
    extra = cells[rng.choice(len(cells), 4, replace=False)]
    img = render(pos, RHO * (1 + 0.05 * rng.standard_normal(len(pos))), ETA * rng.uniform(0.9, 1.1, len(pos)), shape)
    start = jitter(np.r_[pos, extra], rng)
    return noisy(img, dose, rng, nf), start, np.r_[np.ones(len(pos), bool), np.zeros(4, bool)], \
        opts(width, noise, dose), {}


def dose_name(d):
    e = int(math.floor(math.log10(d)))
    return f"{d / 10**e:g}e{e}"


def scenarios():
    """All scenarios as (name, builder(rng, nf)) in a fixed order (the order seeds the frames)."""
    out = []

    def add(name, fn, *a):
        out.append((name, lambda rng, nf: fn(rng, nf, *a)))

    WN = [(w, n) for w in ("com", "ind") for n in ("poi", "lsq")]
    for d in (5e2, 1e3, 1e4, 1e5):
        for w, n in WN:
            add(f"sep-{w}-{n}-{dose_name(d)}", sep, w, n, d)
    for w, n in WN:
        add(f"ovl-{w}-{n}-1e4", ovl, w, n, 1e4)
    for d in (1e3, 1e4):
        for w, n in WN:
            add(f"vac-{w}-{n}-{dose_name(d)}", vac, w, n, d)
    for t in ("typ", "one"):
        for d in (1e3, 1e4):
            for w, n in WN:
                add(f"two-{t}-{w}-{n}-{dose_name(d)}", two, t == "typ", w, n, d)
    for d in (1e3, 2e4):
        for w, n in WN:
            add(f"sto-{w}-{n}-{dose_name(d)}", sto, w, n, d)
    for w0 in (0.25, 0.70):
        for d in (1e3, 1e4):
            for n in ("poi", "lsq"):
                add(f"wi{round(w0 * 100)}-ind-{n}-{dose_name(d)}", winit, w0, "ind", n, d)
    for amp in (0.5, 1.0):
        for n in ("poi", "lsq"):
            add(f"hump{round(amp * 100)}-ind-{n}-1e4", hump, amp, "ind", n, 1e4)
    for d in (1e3, 1e4):
        for w, n in WN:
            add(f"spur-{w}-{n}-{dose_name(d)}", spur, w, n, d)
    return out


def build(name, builder, rng, nf):
    frames, start, real, kwargs, info = builder(rng, nf)
    return Scenario(name, frames, start, real, kwargs, info)


# ---------------------------------------------------------------------------------------------------- fitting


def run(fn, sc, workers):
    """Fit the scenario's stack with ``fn``: the fit, its wall and CPU time [s] and the number of warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0, c0 = time.perf_counter(), time.process_time()
        fit = fn(sc.frames, sc.start, P, crlb=True, num_threads=1, workers=workers, **sc.kwargs)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return fit, wall, cpu, len(caught)


def stats(fit, sc):
    B, N = sc.frames.shape[0], len(sc.start)
    conv = np.asarray(fit.converged).reshape(B, N)
    empty = fit.table["empty_site"].to_numpy().reshape(B, N)
    it = np.asarray(fit.n_iter).reshape(B)
    return {
        "conv": float(conv[:, sc.real].mean()),
        "frames_ok": int(conv[:, sc.real].all(1).sum()),
        "iter_mean": float(it.mean()),
        "iter_max": int(it.max()),
        "empty_other": float(empty[:, ~sc.real].mean()) if (~sc.real).any() else np.nan,
    }


def position_change(old, new, sc):
    """Largest |Δx|/x_crlb, |Δy|/y_crlb (working tree's bounds) over the columns converged in both versions."""
    B, N = sc.frames.shape[0], len(sc.start)
    both = np.asarray(old.converged).reshape(B, N) & np.asarray(new.converged).reshape(B, N)
    if not both.any():
        return np.nan
    d = np.abs(np.asarray(old.positions).reshape(B, N, 2) - np.asarray(new.positions).reshape(B, N, 2))
    crlb = np.stack([new.table[c].to_numpy().reshape(B, N) for c in ("x_crlb", "y_crlb")], -1)
    z = (d / crlb)[both]
    return float(np.nanmax(z)) if np.isfinite(z).any() else np.nan


def verdict(r):
    worse = []
    if r["conv_new"] < r["conv_old"]:
        worse.append("conv")
    if r["iter_mean_new"] > ITER_TOL * r["iter_mean_old"]:
        worse.append(f"iter {r['iter_mean_new'] / r['iter_mean_old'] - 1:+.0%}")
    if worse:
        return "WORSE " + ", ".join(worse)
    if r["conv_new"] > r["conv_old"] or r["iter_mean_new"] * ITER_TOL < r["iter_mean_old"]:
        return "better"
    return "equal"


HEAD = (f"{'scenario':22s} {'N':>4s} {'real':>4s} | {'conv old':>8s} {'new':>6s} | {'ok frames':>9s} | "
        f"{'iter mean':>11s} | {'iter max':>8s} | {'time old':>8s} {'new':>6s} | {'warn':>7s} | {'empty':>9s} | "
        f"{'dpos/crlb':>9s} | verdict")


def row_text(r):
    empty = "" if np.isnan(r["empty_other_old"]) else f"{r['empty_other_old']:.2f}/{r['empty_other_new']:.2f}"
    return (f"{r['scenario']:22s} {r['n_cols']:4d} {r['n_real']:4d} | {r['conv_old']:8.4f} {r['conv_new']:6.4f} | "
            f"{r['frames_ok_old']:4d}/{r['frames_ok_new']:<4d} | "
            f"{r['iter_mean_old']:5.1f}/{r['iter_mean_new']:<5.1f} | "
            f"{r['iter_max_old']:3d}/{r['iter_max_new']:<4d} | {r['time_old']:8.2f} {r['time_new']:6.2f} | "
            f"{r['warnings_old']:3d}/{r['warnings_new']:<3d} | {empty:>9s} | {r['dpos_crlb']:9.2g} | {r['verdict']}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rev", required=True, help="git revision to compare the working tree with")
    ap.add_argument("--frames", type=int, default=6, help="noise realisations per scenario (default 6)")
    ap.add_argument("--only", default=None, help="comma-separated name prefixes, e.g. 'sep,vac-ind'")
    ap.add_argument("--csv", default=None, help="save the per-scenario table (pandas) to this CSV file")
    ap.add_argument("--seed", type=int, default=0, help="frames of scenario i use default_rng(seed + i)")
    ap.add_argument("--workers", type=int, default=1, help="fit_columns workers (default 1: one thread)")
    args = ap.parse_args(argv)
    todo = list(enumerate(scenarios()))
    if args.only:
        prefixes = tuple(s.strip() for s in args.only.split(",") if s.strip())
        todo = [(i, s) for i, s in todo if s[0].startswith(prefixes)]
    if not todo:
        raise SystemExit(f"no scenario matches --only {args.only!r}")
    t_start = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        old = import_old(args.rev, Path(tmp))
        versions = {"old": old, "new": fit_columns}
        warm = build(*scenarios()[0], np.random.default_rng(args.seed), 1)  # first-call costs out of the timings
        for fn in versions.values():
            run(fn, warm, args.workers)
        print(f"{len(todo)} scenarios, {args.frames} frames each; old = {args.rev}, new = working tree; "
              f"converged fraction of the real columns, iterations per frame, wall time [s] per fit")
        print(HEAD)
        for k, (i, (name, builder)) in enumerate(todo):
            sc = build(name, builder, np.random.default_rng(args.seed + i), args.frames)
            order = ("old", "new") if k % 2 == 0 else ("new", "old")  # the machine's speed drifts: alternate
            res = {}
            for v in order:
                res[v] = run(versions[v], sc, args.workers)
            r = {"scenario": name, "index": i, "n_cols": len(sc.start), "n_real": int(sc.real.sum()),
                 "H": sc.frames.shape[1], "W": sc.frames.shape[2], "frames": args.frames, **sc.info}
            for v, (fit, wall, cpu, n_warn) in res.items():
                r.update({f"{key}_{v}": val for key, val in stats(fit, sc).items()})
                r.update({f"time_{v}": wall, f"cpu_{v}": cpu, f"warnings_{v}": n_warn})
            r["dpos_crlb"] = position_change(res["old"][0], res["new"][0], sc)
            r["verdict"] = verdict(r)
            rows.append(r)
            print(row_text(r), flush=True)
    df = pd.DataFrame(rows)
    wall = time.perf_counter() - t_start
    it_o, it_n = df["iter_mean_old"].sum(), df["iter_mean_new"].sum()
    t_o, t_n = df["time_old"].sum(), df["time_new"].sum()
    kinds = df["verdict"].str.split().str[0]
    print(f"\nsummed mean iterations old {it_o:.1f}, new {it_n:.1f} (new/old {it_n / it_o:.3f}); fit time old "
          f"{t_o:.1f} s, new {t_n:.1f} s (new/old {t_n / t_o:.3f}); scenarios better {(kinds == 'better').sum()}, "
          f"worse {(kinds == 'WORSE').sum()}, equal {(kinds == 'equal').sum()}; sweep wall time {wall:.0f} s")
    bad = df[kinds == "WORSE"]
    if len(bad):
        print("worse: " + "; ".join(f"{r.scenario} ({r.verdict})" for r in bad.itertuples()))
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        df.to_csv(args.csv, index=False)
        print(f"table saved to {args.csv}")
    return df


if __name__ == "__main__":
    main()
