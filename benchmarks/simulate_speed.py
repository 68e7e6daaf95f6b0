"""Render time of the fast incoherent model for the 333-column Pt particle at 0.12 Å, vs a naive baseline.

Baseline (same process, same inputs): sum one full-image Gaussian per column (numpy), then convolve with the
probe intensity using scipy.signal.convolve (FFT). Run: ``python benchmarks/simulate_speed.py``.
"""

from __future__ import annotations

import time

import numpy as np
from scipy.signal import convolve

from stemquant.simulate import PRESETS, load_scs_library, probe_intensity, render_incoherent
from stemquant.structures import project_columns, pt_nanoparticle


def naive(cols, shape, p, probe, lib, sigma=0.1):
    """Per-column full-image Gaussian sum, then scipy convolution with a probe kernel of +-6 Å."""
    h, w = shape
    y = (np.arange(h) + 0.5) * p
    x = (np.arange(w) + 0.5) * p
    img = np.zeros(shape)
    for cx, cy, s in zip(cols.x, cols.y, lib.scs(cols.n_atoms.to_numpy()), strict=True):
        g = np.exp(-((x[None, :] - cx) ** 2 + (y[:, None] - cy) ** 2) / (2 * sigma**2))
        img += s * g / (2 * np.pi * sigma**2)
    k = int(np.ceil(6.0 / p)) * 2 + 1
    kern = probe_intensity(probe, (k, k), p)
    return convolve(img, kern, mode="same")


def best_of(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main():
    atoms = pt_nanoparticle()
    cols = project_columns(atoms)
    p = 0.12
    n = int(round(atoms.cell.lengths()[0] / p))
    probe, lib = PRESETS["particle"], load_scs_library("pt001_particle")
    t_fast, fast = best_of(lambda: render_incoherent(cols, shape=(n, n), pixel_size=p, probe=probe,
                                                     library=lib), 3)
    t_naive, slow = best_of(lambda: naive(cols, (n, n), p, probe, lib), 2)
    # the naive Gaussian is sampled at pixel centres with sigma (0.1 Å) < p: it aliases, so compare totals
    print(f"particle: {len(cols)} columns, image {n}x{n} at {p} Å")
    print(f"render_incoherent: {t_fast:.3f} s (best of 3)")
    print(f"naive baseline:    {t_naive:.3f} s (best of 2)")
    print(f"speed-up: {t_naive / t_fast:.1f}x")
    total = lib.scs(cols.n_atoms.to_numpy()).sum()
    print(f"integrated intensity fast / naive: {fast.sum() / slow.sum():.4f}; "
          f"sum of library SCS / (fast sum * p^2): {total / (fast.sum() * p**2):.4f}")


if __name__ == "__main__":
    main()
