"""Throughput of the STEM distortion pipeline: distorted 256×256 images per second.

Compares, in the same process and on the same clean images,
  1. ``STEMDistortion`` on a (B, H, W) batch (vectorised; how training draws them on the fly),
  2. ``STEMDistortion`` called one image at a time,
  3. a naive baseline of the same model: per image, a Python-loop AR(1), ``scipy.ndimage.map_coordinates``
     on the displaced grid, and a per-row ``np.convolve`` for the fast-scan PSF.
Two parameter sets: the Table 2.2 preset (jitter + Poisson + 0.5 µs fast scan) and "full" (all STEM effects
on). For each, the batched pipeline is also timed with the shot noise drawn by numpy's ``Generator.poisson``
(the sampler used before the tabulated one in ``stemquant.distort._poisson``), in the same process.
The 333-column particle simulation timing hook is ``time_particle_simulation`` (filled in by the
simulate owner).

Usage: python benchmarks/distort_speed.py [--batch 32] [--repeats 3] [--dose 1e4]
"""

from __future__ import annotations

import argparse
import os
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage

import stemquant.distort._pipeline as _pipeline
from stemquant.distort import STEMDistortion, STEMParams, fast_scan_params, fast_scan_psf
from stemquant.distort._poisson import _alias_tables, poisson_draw

SIZE = 256
PIXEL_SIZE = 0.12  # Å (Table 2.1, nanoparticle)

FULL = STEMParams().replace(pmt=True, row_line_count=2, black_pixel_fraction=1e-3, zinger_fraction=1e-4,
                            clip_fraction=0.98, adc_gain=4.0)


def clean_images(batch: int, rng: np.random.Generator) -> np.ndarray:
    """A square lattice of Gaussian columns (2 Å spacing, normalised intensity ≤ ~0.3) with random shifts."""
    yy, xx = (np.mgrid[0:SIZE, 0:SIZE] + 0.5) * PIXEL_SIZE
    out = np.empty((batch, SIZE, SIZE))
    for b in range(batch):
        ox, oy = rng.uniform(0, 2, 2)
        dx = (xx - ox) % 2.0 - 1.0
        dy = (yy - oy) % 2.0 - 1.0
        out[b] = 0.02 + 0.3 * np.exp(-(dx**2 + dy**2) / (2 * 0.35**2))
    return out


def naive_distort(image: np.ndarray, p: STEMParams, dose: float, rng: np.random.Generator) -> np.ndarray:
    """Baseline: the same model, one image at a time, written the straightforward way."""
    h, w = image.shape
    x = image * dose * PIXEL_SIZE**2
    dxs, dys = np.zeros(h), np.zeros(h)
    for series, phi, sig in ((dxs, p.phi_x, p.sigma_x), (dys, p.phi_y, p.sigma_y)):
        a = rng.normal(0, sig, h)
        series[0] = a[0] / np.sqrt(1 - phi**2)
        for k in range(1, h):
            series[k] = phi * series[k - 1] + a[k]
    yy, xx = np.mgrid[0:h, 0:w].astype(float)
    x = ndimage.map_coordinates(x, [yy + dys[:, None], xx + dxs[:, None]], order=1, mode="nearest")
    x = rng.poisson(x).astype(float)
    if p.pmt:
        s1 = 0.2309
        x = x + rng.normal(size=x.shape) * s1 * np.sqrt(x)
    psf = fast_scan_psf(**fast_scan_params(p.dwell_time), length=w)
    for i in range(h):
        row = np.concatenate([np.full(w - 1, x[i, 0]), x[i]])
        x[i] = np.convolve(row, psf)[w - 1:2 * w - 1]
    for _ in range(p.row_line_count):
        r, n = rng.integers(h), rng.integers(1, int(p.row_line_length * w) + 1)
        s = rng.integers(0, w - n + 1)
        x[r, s:s + n] = x[r, s:s + n].mean() * rng.uniform(0.5, 1.5)
    if p.black_pixel_fraction:
        x[rng.random(x.shape) < p.black_pixel_fraction] = 0
    if p.zinger_fraction:
        m = rng.random(x.shape) < p.zinger_fraction
        x[m] = rng.uniform(1, 2, m.sum()) * x.max()
    if p.clip_fraction is not None:
        x = np.minimum(x, p.clip_fraction * x.max())
    if p.adc_gain is not None:
        x = np.round(x * p.adc_gain) / p.adc_gain
    return x


def _rates(fns: dict, n_images: int, repeats: int) -> dict:
    """Best-of-``repeats`` (wall img/s, CPU img/s) of each callable, run **interleaved** (one round calls each
    once), so that a change of the machine's load hits all of them alike and their ratios stay meaningful.
    CPU time (``time.process_time``, single-threaded numpy) is less sensitive to being descheduled."""
    wall = dict.fromkeys(fns, np.inf)
    cpu = dict.fromkeys(fns, np.inf)
    for _ in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            fn()
            wall[name] = min(wall[name], time.perf_counter() - w0)
            cpu[name] = min(cpu[name], time.process_time() - c0)
    return {name: (n_images / wall[name], n_images / cpu[name]) for name in fns}


def _use_numpy_poisson(fn):
    """Run ``fn`` with the pipeline's shot noise drawn by ``Generator.poisson`` (the previous sampler)."""
    def run():
        _pipeline.poisson_draw = lambda lam, rng: rng.poisson(lam)
        try:
            return fn()
        finally:
            _pipeline.poisson_draw = poisson_draw
    return run


_WORKER_IMAGES = None


def _init_worker(imgs: np.ndarray) -> None:
    """Worker start-up, like a persistent DataLoader worker: receive the clean images once, build the tables."""
    global _WORKER_IMAGES
    _WORKER_IMAGES = imgs
    _alias_tables()


def _worker_batch(args) -> int:
    """Distort one batch in a worker process (how a training DataLoader worker would use the pipeline: the
    clean images live in the worker — generated there during training — so only a seed travels per batch)."""
    seed, dose = args
    imgs = _WORKER_IMAGES
    STEMDistortion(FULL)(imgs, dose=dose, pixel_size=PIXEL_SIZE, rng=np.random.default_rng(seed))
    return imgs.shape[0]


def time_particle_simulation() -> float | None:
    """Seconds to render the 333-column Pt particle at 0.12 Å with the fast incoherent model (best of 3).

    See also ``benchmarks/simulate_speed.py`` (with its own naive baseline).
    """
    import stemquant.simulate as sim
    from stemquant.structures import project_columns, pt_nanoparticle

    atoms = pt_nanoparticle()
    cols = project_columns(atoms)
    n = int(round(float(atoms.cell[0, 0]) / 0.12))
    lib = sim.load_scs_library("pt001_particle")
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        sim.render_incoherent(cols, shape=(n, n), pixel_size=0.12, probe=sim.PRESETS["particle"], library=lib)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dose", type=float, default=1e4)
    ap.add_argument("--workers", type=int, default=2, help="processes for the multi-worker line (0 = skip)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    imgs = clean_images(args.batch, rng)
    n = args.batch
    print(f"distort_speed: {n} images {SIZE}x{SIZE}, dose {args.dose:g} e/A^2, pixel {PIXEL_SIZE} A, "
          f"best of {args.repeats}; load average {os.getloadavg()[0]:.2f}")
    t0 = time.perf_counter()
    _alias_tables()
    print(f"  one-off Poisson alias-table build: {time.perf_counter() - t0:.2f} s (once per process)")
    for name, p in (("table2.2", STEMParams()), ("full", FULL)):
        d = STEMDistortion(p)
        gen = np.random.default_rng(1)

        def batched(d=d, gen=gen):
            return d(imgs, dose=args.dose, pixel_size=PIXEL_SIZE, rng=gen)

        r = _rates({
            "batched": batched,
            "single": lambda d=d, gen=gen: [d(im, dose=args.dose, pixel_size=PIXEL_SIZE, rng=gen) for im in imgs],
            "naive": lambda p=p, gen=gen: [naive_distort(im, p, args.dose, gen) for im in imgs],
            "numpy_poisson": _use_numpy_poisson(batched),
        }, n, args.repeats)
        (bw, bc), (sw, _), (nw, nc), (ow, oc) = r["batched"], r["single"], r["naive"], r["numpy_poisson"]
        print(f"  [{name:8s}] batched {bw:6.1f} img/s (CPU time: {bc:6.1f}) | one-at-a-time {sw:6.1f} | "
              f"naive baseline {nw:5.1f} (CPU {nc:5.1f}) | batched/naive = {bw / nw:4.2f}x (CPU {bc / nc:4.2f}x) | "
              f"batched/single = {bw / sw:4.2f}x | with Generator.poisson {ow:6.1f} (CPU {oc:6.1f}): "
              f"tabulated/numpy = {bw / ow:4.2f}x (CPU {bc / oc:4.2f}x)")
    if args.workers > 0:
        seeds = np.random.SeedSequence(3).spawn(8 * args.workers)
        jobs = [(int(sq.generate_state(1)[0]), args.dose) for sq in seeds]
        with ProcessPoolExecutor(args.workers, initializer=_init_worker, initargs=(imgs,)) as ex:
            list(ex.map(_worker_batch, jobs[: 2 * args.workers]))  # warm-up: start-up, imports, tables
            t0 = time.perf_counter()
            done = sum(ex.map(_worker_batch, jobs))
            rate = done / (time.perf_counter() - t0)
        _init_worker(imgs)
        t0 = time.perf_counter()
        done1 = sum(_worker_batch(job) for job in jobs)  # the same jobs in this one process, right after
        rate1 = done1 / (time.perf_counter() - t0)
        print(f"  [full    ] {args.workers} worker processes, batched: {rate:7.1f} img/s | the same jobs in one "
              f"process: {rate1:7.1f} img/s | ratio {rate / rate1:4.2f}x")
    # stage breakdown for the batched full pipeline (what bounds the rate)
    counts = imgs * args.dose * PIXEL_SIZE**2
    gen = np.random.default_rng(2)
    r = _rates({"numpy": lambda: gen.poisson(counts), "tab": lambda: poisson_draw(counts, gen),
                "normal": lambda: gen.standard_normal(counts.shape)}, n, args.repeats)
    t_pois, t_tab, t_norm = (1.0 / r[key][0] for key in ("numpy", "tab", "normal"))
    print(f"  reference: numpy Poisson draw alone {1e3 * t_pois:.2f} ms/img, tabulated exact Poisson draw "
          f"(pipeline) {1e3 * t_tab:.2f} ms/img, normal draw {1e3 * t_norm:.2f} ms/img (the exact Poisson draw "
          f"alone bounds the rate at {1 / t_tab:.0f} img/s)")
    t_sim = time_particle_simulation()
    print("  particle simulation (333 columns): "
          + ("n/a (stemquant.simulate.render_incoherent missing or hook not filled)" if t_sim is None
             else f"{t_sim:.2f} s"))
    print(f"  load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
