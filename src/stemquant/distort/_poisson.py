"""Exact Poisson draws for a whole image at once: alias tables on a λ grid plus a small remainder.

numpy's ``Generator.poisson`` costs 40–100 ns per pixel (a per-element call with ``exp`` and several
uniforms for λ < 10, the PTRS rejection sampler with ``log``/``loggamma`` for λ >= 10) and was half of the
STEM pipeline's time. Here each pixel with λ < ``LAM_MAX`` uses Poisson additivity,

    Poisson(λ) = Poisson(c) + Poisson(λ − c),    c = δ·floor(λ/δ) on a grid of step δ = 1/16,

drawing the first term from a precomputed Walker/Vose alias table for Poisson(c) (one uniform: its integer
part picks a cell, its fraction the coin) and the second, whose mean is below δ (so it is 0 with
probability > 0.94), by inversion with a second uniform. Both steps are exact: the draws follow the Poisson
distribution up to floating-point rounding of the tabulated probabilities (~1e-16), like numpy's own samplers.
The table's last cell holds the tail P(X >= K − 1) and is resolved exactly by inversion of the tail.
Pixels with λ >= ``LAM_MAX`` fall back to ``Generator.poisson`` (PTRS is already cheap per draw there).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import stats

DELTA = 1.0 / 16  # grid step of the tabulated means [counts]
LAM_MAX = 64.0  # tabulated means c < LAM_MAX [counts]; larger λ use numpy's PTRS sampler


@functools.lru_cache(maxsize=1)
def _alias_tables() -> tuple[np.ndarray, np.ndarray, int]:
    """Vose alias tables of Poisson(c) for c = 0, δ, 2δ, … < LAM_MAX: (coin, alias) flat, and cells per row K.

    Row j has K cells: values 0 … K−2 and an overflow cell K−1 that stands for "X >= K − 1" (probability
    < 1e-20 with K = LAM_MAX + 16·sqrt(LAM_MAX) + 24).
    """
    grid = np.arange(int(round(LAM_MAX / DELTA))) * DELTA
    k_cells = int(LAM_MAX + 16 * np.sqrt(LAM_MAX) + 24)
    pr = np.empty((grid.size, k_cells))
    pr[:, :-1] = stats.poisson.pmf(np.arange(k_cells - 1)[None, :], grid[:, None])
    pr[:, -1] = stats.poisson.sf(k_cells - 2, grid)
    pr /= pr.sum(axis=1, keepdims=True)
    coin = np.empty((grid.size, k_cells))
    alias = np.empty((grid.size, k_cells), dtype=np.int32)
    for j in range(grid.size):
        coin[j], alias[j] = _vose(pr[j])
    coin.setflags(write=False)
    alias.setflags(write=False)
    return coin.ravel(), alias.ravel(), k_cells


def _vose(pr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Alias table of a probability vector (Vose 1991): cell i returns i w.p. coin[i], else alias[i]."""
    n = pr.size
    scaled = pr * n
    coin = np.ones(n)
    alias = np.arange(n)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        coin[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return coin, alias  # leftovers (rounding) keep coin 1: they return themselves


def poisson_draw(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Exact Poisson counts with means ``lam`` (>= 0, finite), int64, same shape.

    Not a drop-in for ``rng.poisson(lam)`` with the same seed: it consumes the stream differently (two
    uniforms per pixel with λ < ``LAM_MAX``), but the distribution is the same.
    """
    lam = np.asarray(lam, dtype=np.float64)
    flat = lam.ravel()
    big = flat >= LAM_MAX
    if big.any():
        out = np.empty(flat.shape, dtype=np.int64)
        small = ~big
        out[small] = _draw_small(flat[small], rng)
        out[big] = rng.poisson(flat[big])
        return out.reshape(lam.shape)
    return _draw_small(flat, rng).reshape(lam.shape)


_CHUNK = 16384  # pixels per pass: keeps the ~10 temporaries of a chunk in the L2 cache


def _draw_small(lam: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Poisson(λ) for a flat array with 0 <= λ < LAM_MAX (alias table + remainder by inversion)."""
    coin, alias, k_cells = _alias_tables()
    n = lam.size
    out = np.empty(n, dtype=np.int64)
    for s in range(0, n, _CHUNK):
        e = min(n, s + _CHUNK)
        u = rng.random(2 * (e - s))  # per chunk: stays in cache (the stream depends on _CHUNK, fixed)
        t = lam[s:e] * (1.0 / DELTA)  # exact (power-of-two scaling)
        j = t.astype(np.intp)  # floor for t >= 0
        t -= j  # exact: fractional part; rem = t·δ = λ − j·δ
        v = u[:e - s] * k_cells
        cell = v.astype(np.intp)
        v -= cell  # fractional part: the alias coin, uniform on [0, 1) and independent of the cell
        j *= k_cells
        j += cell  # flat table index of the chosen cell
        k = out[s:e]
        np.copyto(k, alias[j])
        np.copyto(k, cell, where=v < coin[j])  # the coin keeps the cell itself
        if k.max() == k_cells - 1:  # X >= K − 1: probability < 1e-20 per pixel, resolved exactly
            over = np.flatnonzero(k == k_cells - 1)
            k[over] = _tail((lam[s:e][over] * (1.0 / DELTA)).astype(np.intp) * DELTA, k_cells - 1, rng)
        t *= DELTA
        _add_small_mean(k, t, u[e - s:])
    return out


def _add_small_mean(k: np.ndarray, r: np.ndarray, u: np.ndarray) -> None:
    """k += Poisson(r) for 0 <= r < δ, by inversion of the CDF with uniforms ``u``.

    P(0) = exp(−r) >= 1 − r, so every u <= 1 − r gives 0 without evaluating exp; only the few others
    (probability < r < δ) go through the exact CDF loop.
    """
    idx = np.flatnonzero(u > 1.0 - r)
    ra, ua = r[idx], u[idx]
    pa = np.exp(-ra)
    fa = pa.copy()
    keep = ua > fa
    idx, ra, pa, fa, ua = idx[keep], ra[keep], pa[keep], fa[keep], ua[keep]
    m = 0
    while idx.size:
        m += 1
        k[idx] += 1
        pa = pa * ra / m
        fa = fa + pa
        keep = (ua > fa) & (pa > 0)  # pa == 0: the CDF has reached 1 to double precision
        idx, ra, pa, fa, ua = idx[keep], ra[keep], pa[keep], fa[keep], ua[keep]


def _tail(c: np.ndarray, k0: int, rng: np.random.Generator) -> np.ndarray:
    """Poisson(c) conditioned on X >= k0, by inversion of the conditional tail CDF (one uniform each)."""
    c = np.asarray(c, dtype=np.float64)
    u = rng.random(c.shape) * stats.poisson.sf(k0 - 1, c)
    p = stats.poisson.pmf(k0, c)
    k = np.full(c.shape, k0, dtype=np.int64)
    acc = p.copy()
    m = k0
    active = (u > acc) & (p > 0)
    while active.any():
        m += 1
        p = np.where(active, p * c / m, p)
        acc = np.where(active, acc + p, acc)
        k += active
        active &= (u > acc) & (p > 0)
    return k
