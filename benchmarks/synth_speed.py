"""Speed of the clean-image generator (stemquant.synth) against a naive per-atom full-image renderer.

Run:  python benchmarks/synth_speed.py [--n 40] [--size 256]

Prints images/s for kind="hrstem" (whole pipeline: specimen + profiles + render + eqs. 23-26) and "lowres",
after a warm-up that loads the space-group tables, single-threaded FFTs. Baseline (same process, same
specimens): evaluate eq. (17) for every atom (every slab copy expanded) over the full image; its time per atom
is measured on 300 atoms and multiplied by the specimen's atom count (running it in full would take minutes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from stemquant.synth import profile, random_clean_image, render_specimen, sample_profiles, sample_specimen


def naive_seconds_per_atom(spec, prof, n_atoms: int = 300) -> float:
    """Time of the naive render per atom: eq. (17) evaluated on all H x W pixels for each atom."""
    h, w = spec.shape
    p = spec.pixel_size
    y, x = (np.mgrid[0:h, 0:w] + 0.5) * p
    layer = spec.layers[0]
    idx = prof.index(layer.numbers[:n_atoms])
    img = np.zeros((h, w))
    t = time.perf_counter()
    for (ax, ay), s in zip(layer.positions[:n_atoms], idx, strict=True):
        img += profile(np.hypot(x - ax, y - ay), prof.h[s], prof.n[s], prof.r_m[s])
    return (time.perf_counter() - t) / min(n_atoms, len(idx))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--size", type=int, default=256)
    args = ap.parse_args()
    shape = (args.size, args.size)
    rng = np.random.default_rng(0)
    for _ in range(60):  # warm-up: space-group tables, Hankel table
        sample_specimen((32, 32), rng=rng, kind="crystalline")
    for kind in ("hrstem", "lowres"):
        t = time.perf_counter()
        for _ in range(args.n):
            random_clean_image(shape, rng=rng, kind=kind)
        dt = (time.perf_counter() - t) / args.n
        print(f"random_clean_image kind={kind:7s} {shape}: {1 / dt:7.1f} images/s ({1e3 * dt:.1f} ms/image)")
    # crystalline render only vs the naive baseline, on the same specimens
    t_fast, t_naive, atoms = 0.0, 0.0, []
    for _ in range(max(5, args.n // 4)):
        spec = sample_specimen(shape, rng=rng, kind="crystalline")
        prof = sample_profiles(spec.numbers, rng=rng)
        t = time.perf_counter()
        render_specimen(spec, prof)
        t_fast += time.perf_counter() - t
        n = int(sum(np.abs(ly.weights).sum() * ly.n_repeat for ly in spec.layers))
        atoms.append(n)
        t_naive += naive_seconds_per_atom(spec, prof) * n
    med = int(np.median(atoms))
    print(f"crystalline render: {1e3 * t_fast / len(atoms):.1f} ms/image, median {med} atoms; "
          f"naive per-atom baseline (extrapolated): {1e3 * t_naive / len(atoms):.0f} ms/image; "
          f"speed-up x{t_naive / t_fast:.0f}")


if __name__ == "__main__":
    main()
