"""Cramér–Rao lower bounds of column positions and scattering cross-sections.

Implements eqs. (2.25)–(2.29) of Friedrich (2023): for Poisson counts with expectation λ_kl = f_kl(Θ)·dose·p²,
the Fisher information is F_rs = Σ_kl (1/λ_kl) ∂λ_kl/∂θ_r ∂λ_kl/∂θ_s (eq. 2.27); the bound on a parameter is the
diagonal of F⁻¹, and on SCS = 2πηρ² it is ∇SCS F⁻¹ ∇SCSᵀ with ∂SCS/∂η = 2πρ², ∂SCS/∂ρ = 4πηρ (eqs. 2.28–2.29).
For Gaussian noise of standard deviation σ, F = JᵀJ/σ².

The parameter vector Θ is that of the fit being assessed: (x_n, y_n, η_n) for every column, plus ρ_n per column
(``width="individual"``, the Θ of eq. 2.19) or one ρ per column type (``"common"``) or none (``"fixed"``), plus the
background ζ unless it is fixed. Sharing parameters lowers the bound: compare a fit with the bound of the same
parametrisation. F is assembled block by block from separable window moments (``_fisher_blocks``) and only the
blocks of F⁻¹ that the bounds need are computed, by block-tridiagonal selected inversion over slabs of columns
(``_selected_covariance``): cost linear in the image length and cubic only in the size of one slab, where the dense
inverse of earlier versions was cubic in the number of columns (19.6 s for 2,000 columns against ~0.1 s now).
The derivative windows are truncated at ``truncation`` widths, by default 4 — the window of ``fit_columns``, so that
the bound is that of the model being fitted. Against untruncated Gaussians (background fixed) every variance grows
by a factor in [1, 1/(1 − ε)], ε the cut tails' share of the Fisher information: ≤ 4.1·10⁻³ for an isolated
column without background, the worst case (≤ 2·10⁻³ in a standard deviation; computed and checked in
``test_crlb_default_truncation_is_within_the_tail_bound``). Measured: ≤ 6.5·10⁻⁴ without background, ≤ 10⁻³ with
a free one, ~2·10⁻⁵ on the benchmark lattice. Five widths cost ~2× as much (windows 1.5× larger, and on a lattice
often slabs of two rows instead of one).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch

from stemquant._validate import check_dose, check_pixel_size, check_positions, check_positive

from . import _model as M


def column_crlb(
    positions,
    widths,
    heights,
    background: float,
    shape: tuple[int, int],
    pixel_size: float,
    dose: float | None,
    *,
    noise: str = "poisson",
    noise_sigma: float | None = None,
    width: str = "individual",
    background_free: bool = True,
    types=None,
    truncation: float = 4.0,
) -> pd.DataFrame:
    """Cramér–Rao lower bounds (as standard deviations) of x, y and SCS for every column of a model image.

    Parameters
    ----------
    positions : ndarray, shape (N, 2)
        Column positions (x, y) [Å].
    widths, heights : array, shape (N,) or scalar
        Gaussian widths ρ [Å] and heights η [image intensity units].
    background : float
        Constant background ζ [image intensity units].
    shape : (int, int)
        Image shape (H, W) [px].
    pixel_size : float
        Pixel size [Å].
    dose : float or None
        Dose [e⁻/Å²]; intensities are normalised (expected counts = intensity·dose·p²). None: the model is
        already in counts.
    noise : {"poisson", "gaussian"}
        Noise model. ``"gaussian"`` needs ``noise_sigma`` [image units].
    width : {"individual", "common", "fixed"}
        Which widths are free parameters (see module notes). The default, one free width per column, gives the
        largest bounds; ``fit_columns`` defaults to ``"common"`` (one width per type): pass ``width="common"``
        (and its ``types``) to reproduce the bounds in its table.
    background_free : bool
        Whether ζ is a free parameter.
    types : array of int, shape (N,), optional
        Column types (for ``width="common"``).
    truncation : float
        Half-size of the derivative windows [widths] (of the widest column; one size for all columns and, in
        ``fit_columns``, for all frames of a call); 4 (the default of ``fit_columns``) changes the bounds of
        untruncated Gaussians by ≤ 2·10⁻³ relative in the worst case, ≤ 10⁻³ measured (module notes).

    Returns
    -------
    pandas.DataFrame
        Columns ``x_crlb``, ``y_crlb`` [Å] and ``scs_crlb`` [intensity·Å²], one row per column.

    Examples
    --------
    >>> from stemquant.quant import column_crlb
    >>> t = column_crlb([[5.0, 5.0]], 0.4, 0.05, 0.001, (50, 50), 0.2, 1e4)
    >>> bool(t.loc[0, "x_crlb"] < 0.05)
    True
    """
    p = check_pixel_size(pixel_size)
    dose = check_dose(dose)
    if len(shape) != 2 or any(float(v) != int(v) for v in shape) or min(int(v) for v in shape) < 3:
        raise ValueError(f"shape must be two integers (H, W) >= 3 [pixels], got {shape}")
    shape = tuple(int(v) for v in shape)
    if not np.isfinite(float(background)):
        raise ValueError(f"background must be finite [image intensity units], got {background}")
    pos = check_positions(positions, shape, p)
    if pos.ndim != 2:
        raise ValueError("column_crlb takes one set of positions (N, 2); loop over frames for a stack")
    n = len(pos)
    rho = np.broadcast_to(np.asarray(widths, dtype=float), (n,))
    eta = np.broadcast_to(np.asarray(heights, dtype=float), (n,))
    if np.any(~np.isfinite(rho)) or np.any(rho <= 0):
        raise ValueError("widths must be positive and finite [Å]")
    if np.any(~np.isfinite(eta)):
        raise ValueError("heights must be finite")
    if noise == "gaussian":
        check_positive(noise_sigma, "noise_sigma", "image units")
    elif noise != "poisson":
        raise ValueError(f"noise must be 'poisson' or 'gaussian', got {noise!r}")
    if width not in ("individual", "common", "fixed"):
        raise ValueError(f"width must be 'individual', 'common' or 'fixed', got {width!r}")
    t = np.zeros(n, dtype=np.int64) if types is None else np.asarray(types)
    if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer) or t.min() < 0:
        raise ValueError(f"types must be non-negative integers of shape ({n},), got shape {t.shape}, dtype {t.dtype}")
    t = t.astype(np.int64)
    check_positive(truncation, "truncation", "widths")
    out = crlb_from_state(
        pos[None], rho[None], eta[None], np.array([float(background)]), shape, p, dose=dose, noise=noise,
        noise_sigma=None if noise_sigma is None else np.array([noise_sigma]), width=width,
        background_free=background_free, types=t, truncation=float(truncation),
    )
    return pd.DataFrame({k: v[0] for k, v in out.items()})


def crlb_from_state(pos, rho, eta, zeta, shape, p, *, dose, noise, noise_sigma, width, background_free, types,
                    truncation: float = 4.0, device="cpu", invalid: str = "raise", pool=None) -> dict[str, np.ndarray]:
    """CRLB of a batch of frames; arrays in Å and image units with a leading frame axis. See ``column_crlb``.

    Frames go in chunks of a few (their window pixels bounded by ``_CHUNK_PIXELS``). A chunk shares one coupling
    pattern — the union of its frames' overlapping windows (a pair that does not overlap in one frame has a zero
    block there) and one slab order valid for all of them — so that every step, from the Fisher blocks to the
    selected inversion, is one batched operation over the chunk's frames: the ~1,000 small tensor operations of the
    selected inversion are paid per chunk, not per frame (on a GPU: the same kernels with a batch dimension). A
    chunk whose common pattern would cost more than ``_UNION_COST`` times its frames' own goes frame by frame.
    ``invalid="nan"`` gives a frame whose model has no bound (non-finite or non-positive parameters, non-positive
    Poisson intensity, singular Fisher matrix — e.g. a diverged fit) NaN bounds instead of raising; ``fit_columns``
    uses it so that such a frame does not cost the whole fit. ``pool`` (an object with an ordered ``map``, e.g. a
    ``ThreadPoolExecutor``) computes chunks concurrently.
    """
    B, N, _ = pos.shape
    dev = torch.device(device)
    scale = dose * p * p if dose is not None else 1.0
    f64 = dict(dtype=torch.float64, device=dev)
    c_all = torch.as_tensor(pos / p - 0.5, **f64)
    r_all = torch.as_tensor(rho / p, **f64)
    e_all = torch.as_tensor(eta * scale, **f64)
    z_all = torch.as_tensor(np.asarray(zeta, dtype=float) * scale, **f64)
    s_all = None if noise_sigma is None else torch.as_tensor(np.asarray(noise_sigma, dtype=float) * scale, **f64)
    good = torch.isfinite(c_all).all(-1) & torch.isfinite(r_all) & torch.isfinite(e_all) & (r_all > 0)  # (B, N)
    ok = (good.all(1) & torch.isfinite(z_all)).cpu().numpy()
    if invalid == "raise" and not ok.all():
        raise ValueError("non-finite or non-positive parameters" + (f" (frame {int(np.flatnonzero(~ok)[0])})"
                                                                     if B > 1 else ""))
    r_ok = r_all[good]
    # windows wider than the image add nothing for centres inside it (and a diverged width must not allocate them)
    h = max(2, min(int(math.ceil(truncation * float(r_ok.max()))) if r_ok.numel() else 2, max(shape)))
    n_types = int(types.max()) + 1
    t_col = torch.as_tensor(types, dtype=torch.long, device=dev)
    out = {k: np.full((B, N), np.nan) for k in ("x_crlb", "y_crlb", "scs_crlb")}
    frames = np.flatnonzero(ok)
    per = max(1, int(_CHUNK_PIXELS[dev.type == "cuda"] // (N * (2 * h + 1) ** 2)))
    chunks = [frames[i: i + per] for i in range(0, len(frames), per)]

    def chunk(f):
        i = torch.as_tensor(f, device=dev)
        return _chunk_crlb(c_all[i], r_all[i], e_all[i], z_all[i], None if s_all is None else s_all[i], shape, h,
                           noise, width, background_free, t_col, n_types)

    for f, (bounds, errors) in zip(chunks, map(chunk, chunks) if pool is None else pool.map(chunk, chunks),
                                   strict=True):
        failed = [(int(fi), e) for fi, e in zip(f, errors, strict=True) if e is not None]
        if failed and invalid == "raise":
            raise ValueError(failed[0][1] + (f" (frame {failed[0][0]})" if B > 1 else ""))
        for k, v in zip(("x_crlb", "y_crlb", "scs_crlb"), bounds, strict=True):
            out[k][f] = v
    out["x_crlb"] *= p
    out["y_crlb"] *= p
    out["scs_crlb"] *= p * p / scale
    return out


# A chunk whose common pattern (pairs, or Σ n_k³ of its slabs) costs more than this many times its frames' own goes
# frame by frame: one column that diverged across the image in one frame would otherwise put half the image into
# one slab for the whole chunk (measured by a review: 284 ms against 60 ms per frame).
_UNION_COST = 1.5

# Window pixels (frames × columns × (2h+1)²) per chunk of frames, CPU / GPU: ~4 frames of 400 columns 25 px wide on
# a CPU (the pair products then hold ~100 MB); more frames gain little there.
_CHUNK_PIXELS = (1e6, 1e7)


@torch.inference_mode()  # no autograd bookkeeping per operation (thread-local: on the worker)
def _chunk_crlb(c, r, e, zeta, sigma, shape, h, noise, width, background_free, t_col, n_types):
    """Bounds of a chunk of b frames in pixel and data units: (sd x, sd y, sd SCS), each (b, N), and per frame
    None or the reason why it has no bound (its bounds are then NaN)."""
    b, N = r.shape
    geom = M.make_geometry(c[..., 0], c[..., 1], h, shape)
    pairs = M.overlap_pairs(geom).cpu().numpy()  # (2, E) flat (frame, column) indices of overlapping windows
    pm, pn = _overlapping_pairs(pairs, N)
    i0, j0 = geom.i0.cpu().numpy(), geom.j0.cpu().numpy()
    slab, cost = _slabs(i0, j0, geom.h)
    if b > 1:
        # the chunk's common pattern must not cost much more than its frames alone (a diverged column in one frame
        # would couple half the image in all of them): otherwise the frames go one by one (decided from the
        # windows alone, before any pixel work)
        own_pairs = np.bincount(pairs[0] // N, minlength=b) + N
        own_cost = sum(_slabs(i0[f: f + 1], j0[f: f + 1], geom.h)[1] for f in range(b))
        if b * len(pm) > _UNION_COST * own_pairs.sum() or b * cost > _UNION_COST * own_cost:
            parts = [_chunk_crlb(c[f: f + 1], r[f: f + 1], e[f: f + 1], zeta[f: f + 1],
                                 None if sigma is None else sigma[f: f + 1], shape, h, noise, width, background_free,
                                 t_col, n_types) for f in range(b)]
            return [np.concatenate([q[0][k] for q in parts]) for k in range(3)], [q[1][0] for q in parts]
    prof = M.profiles(geom, c[..., 0], c[..., 1], r)
    errors = [None] * b
    # weights of the Fisher information (eq. 2.27) on the padded frames: 1/λ (Poisson) or 1/σ² (Gaussian)
    mask = torch.nn.functional.pad(torch.ones(shape, dtype=torch.float64, device=c.device), (h, h, h, h))
    real = mask.reshape(1, -1) > 0
    if noise == "poisson":
        lam = M.render(geom, prof, e, zeta, mask).view(b, -1)
        for i in torch.nonzero(((lam <= 0) & real).any(1)).flatten().tolist():
            errors[i] = ("the model image has non-positive intensity: the Poisson CRLB needs λ > 0 everywhere "
                         "(give a positive background)")
        w = torch.where(real & (lam > 0), 1.0 / lam, 0.0)
    else:
        w = real / sigma[:, None] ** 2
    Fp, Fz, pm, pn = _fisher_blocks(geom, prof, c, r, e, w.reshape(-1), pm, pn)
    var, singular = _selected_covariance(Fp, Fz, w.sum(1), pm, pn, slab, width, background_free, t_col, n_types)
    vx, vy, ve, ver, vr = (v.cpu().numpy() for v in var)
    # SCS = 2π η ρ² (data units, px) -> gradient wrt (η_n, ρ): ∂/∂η = 2πρ², ∂/∂ρ = 4πηρ (eqs. 2.28–2.29)
    rn, en = r.cpu().numpy(), e.cpu().numpy()
    ge, gr = 2 * np.pi * rn**2, 4 * np.pi * en * rn
    v_scs = ge**2 * ve
    if width != "fixed":  # a zero-height column's width carries no information and does not enter its SCS
        with np.errstate(invalid="ignore"):
            v_scs = v_scs + np.where(gr != 0, 2 * ge * gr * ver + gr**2 * vr, 0.0)
    for i, why in enumerate(singular):
        errors[i] = errors[i] or why
    bounds = [np.sqrt(v) for v in (vx, vy, v_scs)]
    for i, why in enumerate(errors):
        if why is not None:
            for v in bounds:
                v[i] = np.nan
    return bounds, errors


def _overlapping_pairs(pairs: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Unordered pairs (m <= n, including m = n) of the ``n`` columns whose windows overlap in at least one frame
    (``pairs``: ``_model.overlap_pairs`` of the chunk): the blocks of F that can be non-zero."""
    m_, n_ = pairs % n  # frame-local column indices, m_ < n_
    key = np.unique(np.concatenate((np.arange(n) * (n + 1), m_ * n + n_)))
    return key // n, key % n


# Derivative of column n with respect to its (c_x, c_y, η, ρ) as a sum of the separable terms
# (g_y d_y^s) ⊗ (g_x d_x^t), s, t = 0..2, scaled by (a, a, 1, b) with a = η/ρ², b = η/ρ³ (ρ-derivative: d_x² + d_y²).
_TERMS = {M.CX: [(0, 1)], M.CY: [(1, 0)], M.ETA: [(0, 0)], M.RHO: [(0, 2), (2, 0)]}
# _SELF_MAP sums the 3×3 moments Σ w (g_y d_y^s)(g_x d_x^t) of a column into its four derivative components.
_SELF_MAP = torch.zeros(4, 9, dtype=torch.float64)
# _PAIR_MAP[p_y, p_x] maps the 5×5 pair moments MB[i, j] = Σ w G_y d_y^i G_x d_x^j (G = g_m g_n, d measured from m)
# to the unscaled block entry (r, q): the terms of n are re-expanded around m's centre, d_n = d_m + δ with
# δ = c_m − c_n, so (d_n)^u = Σ_k C(u, k) δ^(u−k) d_m^k and the entry is a polynomial in δ_y, δ_x of degree ≤ 2.
_PAIR_MAP = torch.zeros(3, 3, 16, 25, dtype=torch.float64)
for _r, _tr in _TERMS.items():
    for _s, _t in _tr:
        _SELF_MAP[_r, 3 * _s + _t] += 1.0
        for _q, _tq in _TERMS.items():
            for _u, _v in _tq:
                for _k in range(_u + 1):
                    for _l in range(_v + 1):
                        _PAIR_MAP[_u - _k, _v - _l, 4 * _r + _q, 5 * (_s + _k) + _t + _l] += (
                            math.comb(_u, _k) * math.comb(_v, _l))
# Only 54 of its 3,600 entries are non-zero: 5 powers of δ (no δ_y δ_x term) times 13 of the 25 moments (i + j ≤ 4).
# _PAIR_POW lists those powers (p_y, p_x), _PAIR_MOM those moments, and _PAIR_COMPACT (5·13, 16) maps the products
# δ^p · MB[k] to the block entry: 1,040 multiply-adds per pair where the full map took 3,744.
_PAIR_POW = [(py, px) for py in range(3) for px in range(3) if bool(_PAIR_MAP[py, px].any())]
_PAIR_MOM = torch.nonzero(_PAIR_MAP.reshape(-1, 25).any(0)).flatten()
_PAIR_COMPACT = torch.stack([_PAIR_MAP[py, px][:, _PAIR_MOM].T for py, px in _PAIR_POW]).reshape(-1, 16)


def _fisher_blocks(geom, prof, c, r, e, w, pm, pn):
    """4×4 Fisher blocks F[(m, ·), (n, ·)] of every pair in ``pm``, ``pn`` and the background column F[(n, ·), ζ],
    for b frames at once.

    Returns ``(Fp, Fz, pm, pn)``: blocks (b, E, 4, 4), background column (b, N, 4), and the pairs in the order of
    ``Fp`` (sorted by m).

    Why hand-written: every derivative window is a sum of separable products (g_y d_y^s) ⊗ (g_x d_x^t), so a pair
    block is a fixed polynomial (in the offset δ of the two centres, see ``_PAIR_MAP``) of 5×5 "pair moments"
    Σ_ab w_ab G_y(a) d_y^i G_x(b) d_x^j over the window of m, with the profile of n evaluated on m's pixels (and
    cut to n's own window, so F is exactly JᵀWJ of the truncated model). The partners of one column are batched
    against its gathered weight window in one (5D×P)·(P×P) product: no per-pair copy of the window and no sparse
    pixel-by-parameter Jacobian (the previous scipy assembly was ~3x slower; 9×9 moments ~2x slower).
    """
    b, N = r.shape
    dev = c.device
    coef = M.coefficients(e, r)  # (b, N, 4): a, a, 1, b
    # partner table: row m lists every n >= m whose window overlaps m's (in some frame), padded with -1
    order = np.argsort(pm, kind="stable")
    pm_s, pn_s = pm[order], pn[order]
    deg = np.bincount(pm_s, minlength=N)
    D = int(deg.max())
    slot = np.arange(len(pm_s)) - np.repeat(np.cumsum(deg) - deg, deg)
    partner = np.full((N, D), -1)
    partner[pm_s, slot] = pn_s
    valid = torch.as_tensor(partner >= 0, device=dev)
    nb = torch.as_tensor(np.where(partner >= 0, partner, 0), device=dev)
    P = 2 * geom.h + 1
    first = ((torch.arange(b, device=dev) * N)[:, None, None] + nb).reshape(-1)  # partner rows of the flat profiles

    def partner_profile(g, start):
        """Profile g (b, N, P) of each partner n on m's pixels, zero outside n's own window: pixel a of m's window
        is pixel a + (start_m − start_n) of n's. Shifts of P or more (no overlap in this frame) and padding slots
        read only zeros."""
        shift = torch.where(valid, (start[:, :, None] - start[:, nb]).clamp(-P, P), P)
        return M.shifted_rows(g.reshape(b * N, P), first, shift.reshape(-1)).view(b, N, D, P)

    Gy = prof.vy[:, :, None, 0, :] * partner_profile(prof.vy[..., 0, :], geom.i0)  # g_m g_n along y, (b, N, D, P)
    Gx = prof.vx[:, :, None, 0, :] * partner_profile(prof.vx[..., 0, :], geom.j0)
    dy = _powers(geom.rows - c[..., 1, None], 5)  # d_y^i from m's centre, (b, N, 5, P)
    dx = _powers(geom.cols - c[..., 0, None], 5)
    Yb = Gy[..., None, :] * dy[:, :, None]  # (b, N, D, 5, P)
    Xb = Gx[..., None, :] * dx[:, :, None]
    Wm = M.gather_patches(w, geom)  # (b, N, P, P) rows y, cols x
    U = (Yb.reshape(b, N, D * 5, P) @ Wm).view(b, N, D, 5, P)  # the window contracted over y for every partner
    MB = (U @ Xb.transpose(-1, -2)).reshape(b, N, D, 25)[..., _PAIR_MOM.to(dev)]  # pair moments [i, j] in use
    dyx = c[:, :, None, :] - c[:, nb]  # δ = c_m − c_n, (b, N, D, 2) as (x, y)
    py, px = _powers(dyx[..., 1, None], 3)[..., 0], _powers(dyx[..., 0, None], 3)[..., 0]  # (b, N, D, 3)
    dpow = torch.stack([py[..., i] * px[..., j] for i, j in _PAIR_POW], -1)  # δ_y^p_y δ_x^p_x, (b, N, D, 5)
    Fp = ((dpow[..., :, None] * MB[..., None, :]).reshape(b, N, D, -1) @ _PAIR_COMPACT.to(dev)).view(b, N, D, 4, 4)
    Fp = (Fp * coef[:, :, None, :, None] * coef[:, nb][..., None, :])[:, valid]  # (b, E) in the order of pm_s
    mz = (prof.vy @ Wm) @ prof.vx.transpose(-1, -2)  # (b, N, 3, 3) moments of the weights: Σ w · (each term)
    Fz = (mz.reshape(b, N, 9) @ _SELF_MAP.to(dev).T) * coef  # (b, N, 4)
    return Fp, Fz, pm_s, pn_s


def _powers(d: torch.Tensor, k: int) -> torch.Tensor:
    """d⁰ … d^(k−1) along a new axis -2 (a running product: ``pow`` with a tensor of exponents is ~5x slower)."""
    rest = d.unsqueeze(-2).expand(*d.shape[:-1], k - 1, d.shape[-1]).cumprod(-2)
    return torch.cat((torch.ones_like(rest[..., :1, :]), rest), -2)


def _slabs(i0: np.ndarray, j0: np.ndarray, h: int) -> tuple[np.ndarray, float]:
    """Slab index of every column such that, in every frame, only columns of the same or of adjacent slabs have
    overlapping windows (so F restricted to the columns is block tridiagonal), and the cost Σ n_k³ of the slabs.

    ``i0``, ``j0`` (b, N): the windows' first rows and columns [px] in each frame; windows are 2h+1 pixels wide.
    Level sets of a sweep along one image axis over the columns' window origins, each an interval [lo, hi] over
    the frames, in order of lo: slab 0 holds the columns at the smallest lo; slab k+1 starts at the next column and
    takes every column whose lo is at most 2h pixels beyond the largest hi of slabs 0..k. A column of slab k+2 then
    starts more than 2h pixels beyond every column of slabs ≤ k in every frame, so their windows cannot overlap.
    On a lattice this gives slabs of 1–2 rows where fixed-width bands of 2h would hold more. The axis with the
    cheaper factorisation (Σ n_k³) is used.
    """
    best = None
    for origin in (i0, j0):
        lo, hi = origin.min(0), origin.max(0)
        values, inv = np.unique(lo, return_inverse=True)
        top_at = np.full(len(values), np.iinfo(np.int64).min)
        np.maximum.at(top_at, inv, hi)  # the largest hi of the columns at each distinct lo
        level = np.empty(len(values), dtype=np.int64)
        k, reach, top = 0, values[0], top_at[0]
        for idx, v in enumerate(values):  # one pass over the distinct origins: negligible next to the algebra
            if v > reach:
                k, reach = k + 1, top + 2 * h
            level[idx] = k
            top = max(top, top_at[idx])
        slab = level[inv]
        cost = float((np.bincount(slab).astype(float) ** 3).sum())
        if best is None or cost < best[1]:
            best = (slab, cost)
    return best


def _selected_covariance(Fp, Fz, Fzz, pm, pn, slab, width, background_free, t_col, n_types):
    """Per-column variances from the inverse Fisher matrix of b frames, without forming the inverse.

    Parameters are ordered slab by slab (:func:`_slabs`), so the columns' part A of F is block tridiagonal; the
    shared parameters (one width per type, background) form a small dense border. With the block Cholesky
    factor L of A, the blocks of A⁻¹ on the diagonal follow from the backward recursion of selected inversion
    (Σ_k = (L_k L_kᵀ)⁻¹ + U_k Σ_{k+1} U_kᵀ, U_k = L_k⁻ᵀ L_{k+1,k}ᵀ, derived from Lᵀ A⁻¹ = L⁻¹), and the border
    enters through its Schur complement S = C − Bᵀ A⁻¹ B: cov = [[A⁻¹ + Z S⁻¹ Zᵀ, −Z S⁻¹], [·, S⁻¹]], Z = A⁻¹B.
    Cost O(Σ n_k³) instead of O((4N)³) for the dense inverse; exact (tests compare with a dense inverse).
    Like the dense code before it, F is Jacobi-scaled first, and a parameter without information gets an
    infinite variance and no covariance with the others.

    Returns (var x, var y, var η, cov(η, ρ), var ρ), each (b, N) (zeros for ρ when widths are fixed), and per
    frame None or why its Fisher matrix is singular.
    """
    b, N = Fz.shape[:2]
    kl = 4 if width == "individual" else 3
    common = width == "common"
    # every block in both orders: F[(n, ·), (m, ·)] = F[(m, ·), (n, ·)]ᵀ, so each entry below is added once
    o = pm != pn
    pm, pn = np.concatenate((pm, pn[o])), np.concatenate((pn, pm[o]))
    Fp = torch.cat((Fp, Fp[:, torch.as_tensor(o, device=Fp.device)].transpose(-1, -2)), 1)
    pm_t, pn_t = torch.as_tensor(pm, device=Fp.device), torch.as_tensor(pn, device=Fp.device)
    Bb, Cg = _border(Fp, Fz, Fzz, pm_t, pn_t, N, kl, common, background_free, t_col, n_types)
    Fl, Bb, Cg, s_l, s_g, known_l, known_g = _jacobi_scaled(Fp[..., :kl, :kl], Bb, Cg, pm_t, pn_t, N)
    Dk, Sk, slab_cols = _tridiagonal_blocks(Fl, pm, pn, slab, kl)
    L, Lsub, bad_a = _block_cholesky(Dk, Sk)
    ordered = torch.cat(slab_cols)  # the columns slab by slab
    ng = Cg.shape[-1]
    Z, S_inv, bad_s = _border_solve(L, Lsub, Bb[:, ordered].reshape(b, N * kl, ng), Cg)
    cov_col, cross = _selected_inverse(L, Lsub, Z, S_inv, ordered, kl)
    singular = [None] * b
    for i in torch.nonzero(bad_s).flatten().tolist():
        singular[i] = "the Fisher information is singular (shared width or background not determined)"
    for i in torch.nonzero(bad_a).flatten().tolist():
        singular[i] = ("the Fisher information is singular: two columns coincide or a column has zero height; "
                       "remove it before computing the CRLB")
    # ---- undo the scaling --------------------------------------------------------------------------------------------
    dev, dt = Fp.device, Fp.dtype
    cov_col = cov_col * s_l[..., :, None] * s_l[..., None, :]
    inf = torch.tensor(float("inf"), dtype=dt, device=dev)
    var = torch.where(known_l, torch.diagonal(cov_col, dim1=-2, dim2=-1), inf)  # (b, N, kl)
    zero = torch.zeros(b, N, dtype=dt, device=dev)
    if width == "individual":
        return (var[..., 0], var[..., 1], var[..., 2], cov_col[..., M.ETA, M.RHO], var[..., 3]), singular
    if common:
        s_rho = s_g[:, t_col]  # (b, N)
        v_rho = torch.where(known_g[:, t_col], torch.diagonal(S_inv, dim1=-2, dim2=-1)[:, t_col] * s_rho * s_rho, inf)
        c_er = cross[:, torch.arange(N, device=dev), M.ETA, t_col] * s_l[..., M.ETA] * s_rho
        return (var[..., 0], var[..., 1], var[..., 2], c_er, v_rho), singular
    return (var[..., 0], var[..., 1], var[..., 2], zero, zero), singular


def _border(Fp, Fz, Fzz, pm_t, pn_t, N, kl, common, background_free, t_col, n_types):
    """Couplings B (b, N, kl, ng) of every column with the shared parameters — one width per type (``common``;
    ∂f/∂ρ_t = Σ_{n of type t} ∂f/∂ρ_n), then the background — and their block C (b, ng, ng)."""
    dev, dt = Fp.device, Fp.dtype
    b = Fp.shape[0]
    ng = (n_types if common else 0) + (1 if background_free else 0)
    G = max(ng, 1)
    zi = n_types if common else 0  # index of ζ among the shared parameters
    Bb = torch.zeros(b, N, kl, G, dtype=dt, device=dev)
    Cg = torch.zeros(b, G, G, dtype=dt, device=dev)
    if common:
        tm, tn = t_col[pm_t], t_col[pn_t]
        idx = ((pm_t[:, None] * kl + torch.arange(3, device=dev)) * G + tn[:, None]).reshape(-1)  # (m, r < 3, t_n)
        Bb.view(b, -1).index_add_(1, idx, Fp[:, :, :3, M.RHO].reshape(b, -1))
        Cg.view(b, -1).index_add_(1, tm * G + tn, Fp[:, :, M.RHO, M.RHO])
    if background_free:
        Bb[..., zi] = Fz[..., :kl]
        if common:
            Cg[:, :n_types, zi].index_add_(1, t_col, Fz[..., M.RHO])
            Cg[:, zi, :n_types] = Cg[:, :n_types, zi]
        Cg[:, zi, zi] = Fzz
    return Bb[..., :ng], Cg[:, :ng, :ng]


def _jacobi_scaled(Fl, Bb, Cg, pm_t, pn_t, N):
    """F scaled to a unit diagonal per frame; parameters without information (diagonal ≤ 1e-14 of the frame's
    largest) are decoupled (zero row and column, unit diagonal). Returns the scaled blocks, border and border
    block, the scales and the informed-parameter flags."""
    dev, dt = Fl.device, Fl.dtype
    b, _, kl, _ = Fl.shape
    same = pm_t == pn_t
    diag_l = torch.diagonal(Fl[:, same], dim1=-2, dim2=-1)  # (b, N, kl) from the pairs (m, m)
    diag_l = torch.zeros(b, N, kl, dtype=dt, device=dev).index_copy_(1, pm_t[same], diag_l)
    diag_g = torch.diagonal(Cg, dim1=-2, dim2=-1)
    dmax = torch.cat((diag_l.reshape(b, -1), diag_g), 1).amax(1)
    known_l, known_g = diag_l > 1e-14 * dmax[:, None, None], diag_g > 1e-14 * dmax[:, None]
    s_l = torch.where(known_l, diag_l.clamp_min(1e-300).rsqrt(), 0.0)
    s_g = torch.where(known_g, diag_g.clamp_min(1e-300).rsqrt(), 0.0)
    Fl = Fl * s_l[:, pm_t][..., :, None] * s_l[:, pn_t][..., None, :]
    # the scaled diagonal is 1, and a decoupled parameter (a zero row) gets a unit pivot: set both in one write
    Fl.diagonal(dim1=-2, dim2=-1)[:, same] = 1.0
    Bb = Bb * s_l[..., None] * s_g[:, None, None, :]
    Cg = Cg * s_g[:, :, None] * s_g[:, None, :] + torch.diag_embed((~known_g).to(dt))
    return Fl, Bb, Cg, s_l, s_g, known_l, known_g


def _tridiagonal_blocks(Fl, pm, pn, slab, kl):
    """Diagonal blocks D_k (b, n_k, n_k) and sub-diagonal blocks S_k (b, n_{k+1}, n_k) of A, n_k = kl × the columns
    of slab k, and the columns of each slab (their order inside it). Pairs must not skip a slab."""
    dev, dt = Fl.device, Fl.dtype
    b = Fl.shape[0]
    N = len(slab)
    K = int(slab.max()) + 1
    order = np.lexsort((np.arange(N), slab))  # columns slab by slab
    pos_in = np.empty(N, dtype=np.int64)
    counts = np.bincount(slab, minlength=K)
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    pos_in[order] = np.arange(N) - np.repeat(starts, counts)
    n_k = counts * kl
    sm, sn = slab[pm], slab[pn]
    if np.any(np.abs(sm - sn) > 1):
        raise RuntimeError("internal error: overlapping windows in non-adjacent slabs")
    # flat buffer per frame: the D_k, then the S_k; the entry of the ordered pair (m, n) goes to row (m, r) and
    # column (n, q) of D_k (same slab) or S_k (m in slab k + 1, n in k); pairs with m in the lower slab are the
    # transposes of those and are not needed
    d_base = np.concatenate(([0], np.cumsum(n_k * n_k)[:-1]))
    s_sizes = n_k[1:] * n_k[:-1]
    s_base = int((n_k * n_k).sum()) + np.concatenate(([0], np.cumsum(s_sizes)[:-1])).astype(np.int64)
    buf = torch.zeros(b, int((n_k * n_k).sum() + s_sizes.sum()), dtype=dt, device=dev)
    keep = sm >= sn
    base = np.where(sm == sn, d_base[sn], np.append(s_base, 0)[sn])[keep]  # S_k starts at s_base[k], k = slab of n
    rr = np.arange(kl)
    row = (pos_in[pm[keep]] * kl)[:, None, None] + rr[None, :, None]  # (m, r) inside its slab, (E', kl, 1)
    col = (pos_in[pn[keep]] * kl)[:, None, None] + rr[None, None, :]  # (n, q) inside its slab, (E', 1, kl)
    idx = base[:, None, None] + row * n_k[sn[keep]][:, None, None] + col
    buf.index_add_(1, torch.as_tensor(idx.reshape(-1), device=dev),
                   Fl[:, torch.as_tensor(keep, device=dev)].reshape(b, -1))
    Dk = [buf[:, d_base[k]: d_base[k] + n_k[k] ** 2].view(b, int(n_k[k]), int(n_k[k])) for k in range(K)]
    Sk = [buf[:, s_base[k]: s_base[k] + s_sizes[k]].view(b, int(n_k[k + 1]), int(n_k[k])) for k in range(K - 1)]
    slab_cols = [torch.as_tensor(order[starts[k]: starts[k] + counts[k]], device=dev) for k in range(K)]
    return Dk, Sk, slab_cols


def _block_cholesky(Dk, Sk):
    """Block Cholesky factor of the block-tridiagonal A of b frames: diagonal factors L_k and
    L_{k+1,k} = S_k L_k⁻ᵀ, and the frames where A is not positive definite (their factors are not used)."""
    L, Lsub, info = [], [], []
    for k in range(len(Dk)):
        A = Dk[k] if not k else torch.baddbmm(Dk[k], Lsub[-1], Lsub[-1].mT, alpha=-1)
        Lk, bad = _cholesky(A)
        L.append(Lk)
        info.append(bad)
        if k < len(Dk) - 1:
            Lsub.append(torch.linalg.solve_triangular(Lk, Sk[k].mT, upper=False).mT)
    return L, Lsub, torch.stack(info).any(0)


def _cholesky(A: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cholesky factors of a batch of matrices (b, n, n) and the frames (b,) where A is not positive definite.

    Such a frame gets NaN bounds; its partial factor is replaced by I so that the batched solves and inverses that
    follow stay defined (``cholesky_inverse`` raises on a singular factor, for the whole batch). No threshold on
    small pivots: two coincident columns give pivots² of 1e-16…1e-32 (or a failed factorisation) and a bound of
    10³–10⁶ Å that says "undetermined", but so does a converged column shrunk onto one noisy pixel (~5e-16), and
    refusing the frame for it took the bounds of every healthy column with it (review helper-39).
    """
    L, info = torch.linalg.cholesky_ex(A)
    bad = info != 0
    return torch.where(bad[:, None, None], torch.eye(L.shape[-1], dtype=L.dtype, device=L.device), L), bad


def _border_solve(L, Lsub, B, Cg):
    """Z = A⁻¹B (rows slab by slab) by block forward and back substitution, the inverse of the Schur complement
    S = C − BᵀZ of the shared parameters, and the frames where S is not positive definite (Z and S⁻¹ None without
    shared parameters)."""
    K = len(L)
    if not Cg.shape[-1]:
        return None, None, torch.zeros(Cg.shape[0], dtype=torch.bool, device=Cg.device)
    Bk = B.split([Lk.shape[-1] for Lk in L], dim=1)
    y = []
    for k in range(K):
        rhs = Bk[k] if k == 0 else torch.baddbmm(Bk[k], Lsub[k - 1], y[-1], alpha=-1)
        y.append(torch.linalg.solve_triangular(L[k], rhs, upper=False))
    Z = [None] * K
    for k in reversed(range(K)):
        rhs = y[k] if k == K - 1 else torch.baddbmm(y[k], Lsub[k].mT, Z[k + 1], alpha=-1)
        Z[k] = torch.linalg.solve_triangular(L[k].mT, rhs, upper=True)
    Z = torch.cat(Z, 1)
    Ls, bad = _cholesky(Cg - B.mT @ Z)
    return Z, torch.cholesky_inverse(Ls), bad


def _selected_inverse(L, Lsub, Z, S_inv, ordered, kl):
    """Diagonal kl×kl blocks of the column part of F⁻¹ (b, N, kl, kl) and the columns' covariances with the shared
    parameters (b, N, kl, ng); ``ordered`` lists the columns slab by slab (the row order of the factors and of Z)."""
    N = len(ordered)
    b = L[0].shape[0]
    blocks = []
    Sigma = None
    for k in reversed(range(len(L))):  # last slab first
        Sigma_k = torch.cholesky_inverse(L[k])
        if Sigma is not None:
            U = torch.linalg.solve_triangular(L[k].mT, Lsub[k].mT, upper=True)  # L_k⁻ᵀ L_{k+1,k}ᵀ
            Sigma_k = torch.baddbmm(Sigma_k, U, Sigma @ U.mT)
        Sigma = Sigma_k
        nc = Sigma.shape[-1] // kl
        blocks.append(Sigma.view(b, nc, kl, nc, kl).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2))  # (b, nc, kl, kl)
    cov = torch.cat(blocks[::-1], 1)  # (b, N, kl, kl) slab by slab
    ng = 0 if S_inv is None else S_inv.shape[-1]
    cross = torch.zeros(b, N, kl, max(ng, 1), dtype=cov.dtype, device=cov.device)
    if ng:  # the border's share: + Z S⁻¹ Zᵀ on the diagonal blocks, covariance −Z S⁻¹ with the shared parameters
        zc = Z.view(b, N, kl, ng)
        zs = zc @ S_inv[:, None]
        cov = cov + zs @ zc.transpose(-1, -2)
        cross[..., :ng] = -zs
    # back to the columns' own order
    return torch.empty_like(cov).index_copy_(1, ordered, cov), torch.empty_like(cross).index_copy_(1, ordered, cross)
