"""Column model of StatSTEM (Friedrich 2023, eq. 2.19) evaluated on local pixel patches, with analytic derivatives.

    f_kl = ζ + Σ_n η_n exp(-((x_k - β_xn)² + (y_l - β_yn)²) / (2 ρ_n²))

Why hand-written: every Gaussian touches only the pixels within a few widths of its centre, and a round Gaussian on
a square window is an outer product of two 1-D profiles. Evaluating the model, its Jacobian-vector products and the
per-column blocks of JᵀWJ through those 1-D profiles costs O(N·P²) with small batched matmuls, where a generic
least-squares code (scipy ``least_squares``) builds a sparse Jacobian of 4·N·P² entries and factorises it. The same
tensors run on CPU or GPU.

Internal units: positions and widths in pixels, with pixel (i, j) centred at (c_x, c_y) = (j, i); intensities in
"data units" (counts for the Poisson criterion). Conversion to Å happens in ``_fit.py``.

Truncation: each Gaussian is evaluated on a (2h+1)×(2h+1) window centred on the pixel nearest to its current
position and is zero outside it, ``h = ceil(truncation · max ρ)`` pixels with ``truncation = 4`` by default, so the
neglected tail is ≤ exp(-8) ≈ 3·10⁻⁴ of the peak height along the axes. The fitting engine re-centres the windows
(and enlarges ``h``) whenever a column moves by more than one pixel or a width grows past ``h / truncation``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

# Parameter slots of a column: position x, position y, height η, width ρ.
CX, CY, ETA, RHO = 0, 1, 2, 3


@dataclass
class PatchGeometry:
    """Fixed pixel windows of all columns of a batch of frames (padded image layout).

    Attributes
    ----------
    h : int
        Half-size of the window [px]; windows are ``P = 2h + 1`` pixels wide.
    pad : int
        Margin [px] of the zero-padded stack that ``index`` refers to.
    shape : (int, int)
        Unpadded image shape (H, W).
    i0, j0 : Tensor, shape (B, N)
        Row/column of the window's first pixel in *unpadded* coordinates (may be negative).
    index : Tensor, shape (B, N, P, P)
        Flat index of each window pixel into the padded stack of shape (B, H + 2·pad, W + 2·pad).
    start : Tensor, shape (B·N,)
        Flat index of each window's first pixel (``index[..., 0, 0]``), for strided gathers.
    rows, cols : Tensor, shape (B, N, P)
        Pixel-centre coordinates (unpadded) of the window rows/columns [px].
    pairs : Tensor, shape (2, K), or None
        Cache of :func:`overlap_pairs` (filled on first use).
    """

    h: int
    pad: int
    shape: tuple[int, int]
    i0: torch.Tensor
    j0: torch.Tensor
    index: torch.Tensor
    start: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    pairs: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def padded_shape(self) -> tuple[int, int]:
        return self.shape[0] + 2 * self.pad, self.shape[1] + 2 * self.pad


def make_geometry(cx: torch.Tensor, cy: torch.Tensor, h: int, shape: tuple[int, int], pad: int | None = None
                  ) -> PatchGeometry:
    """Windows of half-size ``h`` centred on the nearest pixels to ``(cx, cy)``, shape (B, N) [px].

    ``pad`` (>= h, default h) is the margin of the padded stack the flat indices refer to.
    """
    pad = h if pad is None else pad
    B, N = cx.shape
    H, W = shape
    Hp, Wp = H + 2 * pad, W + 2 * pad
    ar = torch.arange(2 * h + 1, device=cx.device)
    i0 = torch.clamp(torch.round(cy).long() - h, -pad, H + pad - 2 * h - 1)
    j0 = torch.clamp(torch.round(cx).long() - h, -pad, W + pad - 2 * h - 1)
    # flat index of each window's first pixel in the padded stack, plus the window's constant pixel offsets (one
    # broadcast add over the windows: ~1.5x faster than adding row and column terms)
    start = torch.arange(B, device=cx.device).view(B, 1) * (Hp * Wp) + (i0 + pad) * Wp + (j0 + pad)
    index = start[..., None, None] + (ar[:, None] * Wp + ar)
    rows = (i0[..., None] + ar).to(cx.dtype)
    cols = (j0[..., None] + ar).to(cx.dtype)
    return PatchGeometry(h, pad, (H, W), i0, j0, index, start.reshape(-1), rows, cols)


def pad_stack(image: torch.Tensor, h: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad a (B, H, W) stack by ``h`` on each side; return padded data and the 0/1 mask of real pixels."""
    data = torch.nn.functional.pad(image, (h, h, h, h))
    mask = torch.nn.functional.pad(torch.ones_like(image), (h, h, h, h))
    return data, mask


@dataclass
class Profiles:
    """1-D Gaussian profiles and their moments on each window, shape (B, N, 3, P): rows [g, g·d, g·d²].

    Stored row-major (3 × P) so the batched products with P × P windows read contiguous memory. ``coef``, when
    set, caches :func:`coefficients` of the same state for :func:`jvp` and :func:`vjp`.
    """

    vx: torch.Tensor
    vy: torch.Tensor
    coef: torch.Tensor | None = None


# Linear map between the scaled parameter steps c = (a·v_x, a·v_y, v_η, b·v_ρ) of a column and the 3×3 matrix of
# moment weights of its patch, Σ_st C[s, t] (g_y d^s) ⊗ (g_x d^t): C[0,0] = c_η, C[0,1] = c_x, C[1,0] = c_y and
# C[0,2] = C[2,0] = c_ρ (the ρ-derivative has d_x² + d_y²). The transposed map gives Jᵀ from the 3×3 moments.
_MAP = torch.zeros(4, 9, dtype=torch.float64)
_MAP[CX, 1] = _MAP[CY, 3] = _MAP[ETA, 0] = _MAP[RHO, 2] = _MAP[RHO, 6] = 1.0


def _moment_map(like: torch.Tensor) -> torch.Tensor:
    return _constant("moments", lambda: _MAP, like)


def coefficients(eta, rho) -> torch.Tensor:
    """Derivative scales (a, a, 1, b) per column, a = η/ρ², b = η/ρ³, shape (B, N, 4): ∂f/∂c_x = a·g·d_x etc."""
    inv = 1.0 / rho
    a = eta * inv * inv
    return torch.stack((a, a, torch.ones_like(a), a * inv), dim=-1)


def _coef(prof: Profiles, eta, rho) -> torch.Tensor:
    """The derivative scales of :func:`coefficients`, cached on the profiles when available."""
    return prof.coef if prof.coef is not None else coefficients(eta, rho)


def profiles(geom: PatchGeometry, cx, cy, rho) -> Profiles:
    """Return ``[g, g·d, g·d²]`` along x and y, with ``g = exp(-d²/(2ρ²))`` and ``d`` = pixel − centre [px]."""
    dx = geom.cols - cx[..., None]
    dy = geom.rows - cy[..., None]
    inv = 0.5 / (rho * rho)[..., None]
    gx = torch.exp(-dx * dx * inv)
    gy = torch.exp(-dy * dy * inv)
    gxd, gyd = gx * dx, gy * dy
    vx = torch.stack((gx, gxd, gxd * dx), dim=-2)
    vy = torch.stack((gy, gyd, gyd * dy), dim=-2)
    return Profiles(vx, vy)


def gather_patches(flat: torch.Tensor, geom: PatchGeometry) -> torch.Tensor:
    """Windows of a flattened padded stack, shape (B, N, P, P).

    Every window is a (P, P) strided view of the flat stack (row stride Wp), so one ``index_select`` over the window
    starts copies P contiguous runs per window: ~3x faster than gathering each pixel by its own index.
    """
    flat = flat.contiguous()
    P = 2 * geom.h + 1
    Wp = geom.padded_shape[1]
    n = flat.numel() - (P - 1) * (Wp + 1)  # window starts that keep the whole window inside the stack
    windows = flat.as_strided((n, P, P), (1, Wp, 1), flat.storage_offset())
    return windows.index_select(0, geom.start).view(geom.index.shape)


def scatter_patches(out: torch.Tensor, geom: PatchGeometry, patch: torch.Tensor) -> torch.Tensor:
    """Add (B, N, P, P) windows into the flattened padded stack ``out`` in place (overlaps summed) and return it.

    ``scatter_add_`` is ~1.6x faster than ``index_add_`` for this 1-D accumulation on a CPU.
    """
    return out.scatter_add_(0, geom.index.reshape(-1), patch.reshape(-1))


def render(geom: PatchGeometry, prof: Profiles, eta, zeta, mask) -> torch.Tensor:
    """Model on the padded stack, flattened: ζ·mask + Σ_n η_n g_y ⊗ g_x. Shape (B·Hp·Wp,)."""
    patch = (eta[..., None] * prof.vy[..., 0, :]).unsqueeze(-1) * prof.vx[..., 0:1, :]
    out = (zeta.view(-1, 1, 1) * mask).reshape(-1)  # a fresh tensor: safe to add into
    return scatter_patches(out, geom, patch)


def jvp(geom: PatchGeometry, prof: Profiles, eta, rho, vcol, vzeta, mask) -> torch.Tensor:
    """Jacobian-vector product J·v on the padded stack (flattened).

    ``vcol`` (B, N, 4) holds the step of (c_x, c_y, η, ρ_n) per column (ρ_n already expanded from a common
    width if widths are shared); ``vzeta`` (B,) the background step.
    """
    s = vcol * _coef(prof, eta, rho)  # scaled steps (a vx, a vy, vη, b vρ)
    # δp = g_y ⊗ (vη g_x + a vx g_x d + b vρ g_x d²) + (a vy g_y d + b vρ g_y d²) ⊗ g_x: a sum of two outer
    # products (rank 2), written as one product and one fused multiply-add over the window (~1.3-1.9x faster than the
    # rank-3 batched matmul vyᵀ C vx with the 3×3 weight matrix C: an inner dimension of 3 leaves matmul idle)
    vx, vy = prof.vx, prof.vy
    w = s[..., ETA, None] * vx[..., 0, :] + s[..., CX, None] * vx[..., 1, :] + s[..., RHO, None] * vx[..., 2, :]
    u = s[..., CY, None] * vy[..., 1, :] + s[..., RHO, None] * vy[..., 2, :]
    patch = vy[..., 0, :, None] * w[..., None, :]
    patch.addcmul_(u[..., :, None], vx[..., 0, None, :])  # (B, N, P, P)
    out = (vzeta.view(-1, 1, 1) * mask).reshape(-1)
    return scatter_patches(out, geom, patch)


def vjp(geom: PatchGeometry, prof: Profiles, eta, rho, r_flat, mask_sum_r) -> tuple[torch.Tensor, torch.Tensor]:
    """Transposed product Jᵀ·r for a flattened padded residual-like map ``r`` (already weighted and masked).

    Returns ``(gcol, gzeta)``: (B, N, 4) per-column components (c_x, c_y, η, ρ_n) and (B,) background component
    (``mask_sum_r`` is Σ over the real pixels of r per frame, computed by the caller).
    """
    R = gather_patches(r_flat, geom)  # (B, N, P, P)
    # M[s, t] = Σ_ab R_ab (g_y d^s)_a (g_x d^t)_b; (3×P)@(P×P) first is the fast order for small batched matmuls
    Mm = (prof.vy @ R) @ prof.vx.transpose(-1, -2)  # (B, N, 3, 3)
    return moments_gradient(Mm, _coef(prof, eta, rho)), mask_sum_r


def residual_moments(geom: PatchGeometry, prof: Profiles, cx, cy, r_flat) -> torch.Tensor:
    """Moments X[t, s] = Σ_ab R_ab (g_y d_y^t)_a (g_x d_x^s)_b, s, t = 0..4, of a residual map on every window.

    Shape (B, N, 5, 5). The top-left 3×3 block is what :func:`vjp` uses; the rest gives the second-derivative
    term Σ r ∇²f of the Hessian (:func:`curvature_blocks`), from the same gathered windows.
    """
    R = gather_patches(r_flat, geom)
    dx = (geom.cols.to(R.dtype) - cx[..., None])[..., None, :]
    dy = (geom.rows.to(R.dtype) - cy[..., None])[..., None, :]
    vx = torch.cat((prof.vx, prof.vx[..., 1:3, :] * (dx * dx)), dim=-2)  # g d^0..4
    vy = torch.cat((prof.vy, prof.vy[..., 1:3, :] * (dy * dy)), dim=-2)
    return (vy @ R) @ vx.transpose(-1, -2)


def moments_gradient(X: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """Jᵀr per column (B, N, 4) from window moments X (…, ≥3, ≥3): those of :func:`residual_moments` or the 3×3
    ones of :func:`vjp`."""
    Mm = X[..., :3, :3]
    return (Mm.reshape(*Mm.shape[:-2], 9) @ _moment_map(Mm).T) * coef


def _add_symmetric(block: torch.Tensor, i: int, j: int, v: float) -> None:
    """Add v to entry (i, j) of a 4×4 block, and to (j, i) off the diagonal (in place)."""
    block[i, j] += v
    if i != j:
        block[j, i] += v


def _curvature_maps() -> torch.Tensor:
    """Constant (25, 7·16) map from the moments X (flattened 5×5, X[t, s] = Σ R g d_y^t d_x^s) to the 4×4 curvature
    block per scale factor (1/ρ², 1/ρ³, η/ρ², η/ρ³, η/ρ⁴, η/ρ⁵, η/ρ⁶), see :func:`curvature_blocks`."""
    m = torch.zeros(5, 5, 7, 4, 4, dtype=torch.float64)

    def add(t, s, k, i, j, v=1.0):  # block (i, j) (and (j, i)) gets v · X[t, s] · scale k
        _add_symmetric(m[t, s, k], i, j, v)

    I2, I3, EI2, EI3, EI4, EI5, EI6 = range(7)
    add(0, 1, I2, ETA, CX)
    add(1, 0, I2, ETA, CY)
    add(0, 2, I3, ETA, RHO), add(2, 0, I3, ETA, RHO)
    add(0, 2, EI4, CX, CX), add(0, 0, EI2, CX, CX, -1.0)
    add(2, 0, EI4, CY, CY), add(0, 0, EI2, CY, CY, -1.0)
    add(1, 1, EI4, CX, CY)
    add(0, 3, EI5, CX, RHO), add(2, 1, EI5, CX, RHO), add(0, 1, EI3, CX, RHO, -2.0)
    add(1, 2, EI5, CY, RHO), add(3, 0, EI5, CY, RHO), add(1, 0, EI3, CY, RHO, -2.0)
    add(0, 4, EI6, RHO, RHO), add(2, 2, EI6, RHO, RHO, 2.0), add(4, 0, EI6, RHO, RHO)
    add(0, 2, EI4, RHO, RHO, -3.0), add(2, 0, EI4, RHO, RHO, -3.0)
    return m.reshape(25, 7 * 16)


def curvature_blocks(X: torch.Tensor, eta, rho) -> torch.Tensor:
    """Per-column 4×4 blocks of Σ_p r_p ∇²f_p for (c_x, c_y, η, ρ_n), from residual moments X, shape (B, N, 4, 4).

    With g = exp(-(d_x² + d_y²)/2ρ²): ∂²g/∂c_x² = g(d_x²/ρ⁴ − 1/ρ²), ∂²g/∂c_x∂c_y = g d_x d_y/ρ⁴,
    ∂²g/∂c_x∂ρ = g d_x (d²/ρ⁵ − 2/ρ³), ∂²g/∂ρ² = g (d⁴/ρ⁶ − 3d²/ρ⁴) with d² = d_x² + d_y², and ∂²(ηg)/∂η∂θ = ∂g/∂θ.
    Every entry is a sum of moments times one of 7 scale factors: one constant map (:func:`_curvature_maps`) and a
    weighted sum instead of ~60 small indexing operations.
    """
    i1 = 1.0 / rho
    i2 = i1 * i1
    ei2 = eta * i2
    sc = torch.stack((i2, i2 * i1, ei2, ei2 * i1, ei2 * i2, ei2 * i2 * i1, ei2 * i2 * i2), dim=-1)  # (B, N, 7)
    blocks = X[..., :5, :5].reshape(*X.shape[:-2], 25) @ _constant("curv", _curvature_maps, X)  # (B, N, 7·16)
    return (sc.unsqueeze(-2) @ blocks.view(*blocks.shape[:-1], 7, 16)).view(*eta.shape, 4, 4)


def _column_map() -> torch.Tensor:
    """Constant (25, 16) map from the moments S (flattened 5×5, S[s, t] = Σ W g_y² d_y^s g_x² d_x^t) to a column's
    4×4 block of JᵀWJ before the derivative scales (a, a, 1, b) of rows and columns, see :func:`column_blocks`."""
    m = torch.zeros(5, 5, 4, 4, dtype=torch.float64)

    def add(s, t, i, j, v=1.0):  # block (i, j) (and (j, i)) gets v · S[s, t]
        _add_symmetric(m[s, t], i, j, v)

    add(0, 0, ETA, ETA)
    add(0, 1, ETA, CX), add(1, 0, ETA, CY)
    add(0, 2, CX, CX), add(2, 0, CY, CY), add(1, 1, CX, CY)
    add(0, 2, RHO, ETA), add(2, 0, RHO, ETA)
    add(0, 3, RHO, CX), add(2, 1, RHO, CX)
    add(1, 2, RHO, CY), add(3, 0, RHO, CY)
    add(0, 4, RHO, RHO), add(2, 2, RHO, RHO, 2.0), add(4, 0, RHO, RHO)
    return m.reshape(25, 16)


_CONSTANTS: dict = {}


def _constant(name, make, like: torch.Tensor) -> torch.Tensor:
    """A constant tensor built by ``make()``, cached per dtype and device.

    Built outside inference mode even when first asked for inside it (the fit runs in inference mode): an inference
    tensor in the cache would break every later autograd use of these functions.
    """
    key = (name, like.dtype, like.device)
    m = _CONSTANTS.get(key)
    if m is None:
        with torch.inference_mode(False):
            m = _CONSTANTS[key] = make().to(dtype=like.dtype, device=like.device, copy=True)
    return m


def column_blocks(geom: PatchGeometry, prof: Profiles, eta, rho, w_flat, gradient: bool = False):
    """Per-column 4×4 blocks of JᵀWJ for (c_x, c_y, η, ρ_n), ignoring overlaps with other columns.

    Uses S[s, t] = Σ_ab W_ab (g_y² d_y^s)_a (g_x² d_x^t)_b, s, t = 0..4. Shape (B, N, 4, 4).
    ``w_flat=None`` means W = the 0/1 mask of real pixels, which is separable (rows × columns inside the image):
    then S is an outer product of 1-D sums and no window is gathered.
    ``gradient=True`` also returns Jᵀw per column (B, N, 4), as :func:`vjp` with r = w (the mask for
    ``w_flat=None``), from the same gathered windows (one window pass fewer).
    """
    gx, gy = prof.vx[..., 0, :], prof.vy[..., 0, :]
    # moments d^t g² from the stored profiles: g·d^t · g
    ex = _square_moments(prof.vx, gx)  # (B, N, 5, P)
    ey = _square_moments(prof.vy, gy)
    if w_flat is None:
        rv, cv = inside_rows_cols(geom, ex.dtype)
        S = (ey * rv[..., None, :]).sum(-1)[..., :, None] * (ex * cv[..., None, :]).sum(-1)[..., None, :]
    else:
        Wp = gather_patches(w_flat, geom)  # (B, N, P, P)
        S = (ey @ Wp) @ ex.transpose(-1, -2)  # (B, N, 5, 5)
    coef = _coef(prof, eta, rho)  # (a, a, 1, b): H_ij = coef_i coef_j (S @ map)_ij
    if gradient:
        gw = (mask_gradient(geom, prof, eta, rho) if w_flat is None
              else moments_gradient((prof.vy @ Wp) @ prof.vx.transpose(-1, -2), coef))
    H = (S.reshape(*S.shape[:-2], 25) @ _constant("col", _column_map, S)).view(*eta.shape, 4, 4)
    H = H * (coef.unsqueeze(-1) * coef.unsqueeze(-2))
    return (H, gw) if gradient else H


def inside_rows_cols(geom: PatchGeometry, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """0/1 flags (B, N, P) of the window rows / columns that lie inside the image: the mask of a window is their
    outer product."""
    H, W = geom.shape
    rv = ((geom.rows >= 0) & (geom.rows <= H - 1)).to(dtype)
    cv = ((geom.cols >= 0) & (geom.cols <= W - 1)).to(dtype)
    return rv, cv


def mask_gradient(geom: PatchGeometry, prof: Profiles, eta, rho) -> torch.Tensor:
    """Jᵀ·mask per column, shape (B, N, 4), from separable 1-D sums (as :func:`vjp` with ``r`` = the real-pixel
    mask, without gathering windows)."""
    rv, cv = inside_rows_cols(geom, prof.vx.dtype)
    Mm = (prof.vy * rv[..., None, :]).sum(-1)[..., :, None] * (prof.vx * cv[..., None, :]).sum(-1)[..., None, :]
    return moments_gradient(Mm, _coef(prof, eta, rho))


def _square_moments(v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Rows [g², g²d, g²d², g²d³, g²d⁴] from rows v = [g, g d, g d²] (avoids recomputing d), shape (…, 5, P)."""
    gv = g.unsqueeze(-2) * v  # g², g²d, g²d²
    # g d³ · g = (g d)(g d²), g d⁴ · g = (g d²)²
    hi = v[..., 2:3, :] * v[..., 1:3, :]
    return torch.cat((gv, hi), dim=-2)


def overlap_pairs(geom: PatchGeometry) -> torch.Tensor:
    """Pairs of columns of the same frame whose windows overlap, as flat column indices b·N + n, shape (2, K), first
    index < second. Cached on ``geom``.

    A k-d tree (Chebyshev metric) on the windows' first pixels finds them: windows of P pixels overlap when their
    starts differ by < P in both directions. Frames with the same windows share one search.
    """
    if geom.pairs is not None:
        return geom.pairs
    from scipy.spatial import cKDTree

    B, N = geom.i0.shape
    P = 2 * geom.h + 1
    starts = torch.stack((geom.i0, geom.j0), -1).cpu().numpy()
    out, last, found = [], None, None
    for b in range(B):
        if last is None or not np.array_equal(starts[b], last):
            last = starts[b]
            found = cKDTree(last).query_pairs(P - 1, p=np.inf, output_type="ndarray").T
        out.append(found + b * N)
    pairs = np.concatenate(out, axis=1) if out else np.zeros((2, 0), dtype=np.int64)
    geom.pairs = torch.as_tensor(pairs.astype(np.int64), device=geom.i0.device)
    return geom.pairs


def shifted_rows(v: torch.Tensor, first: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rows ``v[first]`` (K, P) of ``v`` (M, P) read ``shift`` (K,) pixels later, zero past their ends:
    out[k, a] = v[first_k, a + shift_k] (|shift| ≤ P; ±P reads only zeros). One strided ``index_select`` on a
    zero-padded copy."""
    P = v.shape[-1]
    flat = torch.nn.functional.pad(v, (P, P)).reshape(-1)  # row r: P zeros, v[r], P zeros
    windows = flat.as_strided((flat.numel() - P + 1, P), (1, 1), flat.storage_offset())
    return windows.index_select(0, first * (3 * P) + P + shift)


def height_gram(geom: PatchGeometry, prof: Profiles) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The height part of JᵀWJ for W = the real-pixel mask: Σ gₙ² per column (B, N), Σ gₙgₘ for every pair of
    :func:`overlap_pairs` (K,), and Jᵀ·mask = Σ gₙ per column (B, N) (the coupling with the background).

    Why: a round Gaussian is g_y ⊗ g_x on its window and the mask is rows × columns, so every such sum is a product of
    two 1-D sums over the rows and the columns both windows share inside the image — no window pass, where an
    image-space product (scatter J·v, gather Jᵀ) reads and writes every window pixel.
    """
    B, N = geom.i0.shape
    P = 2 * geom.h + 1
    n, m = overlap_pairs(geom)
    rv, cv = inside_rows_cols(geom, prof.vx.dtype)
    sums = []
    for g, inside, start in ((prof.vy[..., 0, :], rv, geom.i0), (prof.vx[..., 0, :], cv, geom.j0)):
        g = g.reshape(B * N, P)
        gin = g * inside.reshape(B * N, P)
        start = start.reshape(-1)
        # column m's profile on n's pixels: pixel a of n's window is pixel a + (start_n - start_m) of m's window
        cross = (gin.index_select(0, n) * shifted_rows(g, m, start[n] - start[m])).sum(-1)
        sums.append(((gin * g).sum(-1), cross, gin.sum(-1)))
    (dy, cy, sy), (dx, cx, sx) = sums
    return (dy * dx).view(B, N), cy * cx, (sy * sx).view(B, N)
