"""Cramér–Rao lower bounds of column positions and scattering cross-sections.

Implements eqs. (2.25)–(2.29) of Friedrich (2023): for Poisson counts with expectation λ_kl = f_kl(Θ)·dose·p²,
the Fisher information is F_rs = Σ_kl (1/λ_kl) ∂λ_kl/∂θ_r ∂λ_kl/∂θ_s (eq. 2.27); the bound on a parameter is the
diagonal of F⁻¹, and on SCS = 2πηρ² it is ∇SCS F⁻¹ ∇SCSᵀ with ∂SCS/∂η = 2πρ², ∂SCS/∂ρ = 4πηρ (eqs. 2.28–2.29).
For Gaussian noise of standard deviation σ, F = JᵀJ/σ².

The parameter vector Θ is that of the fit being assessed: (x_n, y_n, η_n) for every column, plus ρ_n per column
(``width="individual"``, the Θ of eq. 2.19) or one ρ per column type (``"common"``) or none (``"fixed"``), plus the
background ζ unless it is fixed. Sharing parameters lowers the bound: compare a fit with the bound of the same
parametrisation. F is assembled as a sparse matrix from the local derivative windows and inverted densely
(fine up to a few thousand columns: 2,000 columns with common width is a 6,002² matrix).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import scipy.sparse as sp
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
        Which widths are free parameters (see module notes).
    background_free : bool
        Whether ζ is a free parameter.
    types : array of int, shape (N,), optional
        Column types (for ``width="common"``).

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
    t = np.zeros(n, dtype=np.int64) if types is None else np.asarray(types, dtype=np.int64)
    out = crlb_from_state(
        pos[None], rho[None], eta[None], np.array([float(background)]), shape, p, dose=dose, noise=noise,
        noise_sigma=None if noise_sigma is None else np.array([noise_sigma]), width=width,
        background_free=background_free, types=t,
    )
    return pd.DataFrame({k: v[0] for k, v in out.items()})


def crlb_from_state(pos, rho, eta, zeta, shape, p, *, dose, noise, noise_sigma, width, background_free, types,
                    truncation: float = 5.0) -> dict[str, np.ndarray]:
    """CRLB of a batch of frames; arrays in Å and image units with a leading frame axis. See ``column_crlb``."""
    B, N, _ = pos.shape
    scale = dose * p * p if dose is not None else 1.0
    c = torch.as_tensor(pos / p - 0.5, dtype=torch.float64)
    r = torch.as_tensor(rho / p, dtype=torch.float64)
    e = torch.as_tensor(eta * scale, dtype=torch.float64)
    h = max(2, int(math.ceil(truncation * float(r.max()))))
    geom = M.make_geometry(c[..., 0], c[..., 1], h, shape)
    prof = M.profiles(geom, c[..., 0], c[..., 1], r)
    gx, gxd, gxdd = prof.vx.unbind(-2)
    gy, gyd, gydd = prof.vy.unbind(-2)
    a = (e / (r * r))[..., None, None]
    b = (e / (r * r * r))[..., None, None]
    outer = lambda u, v: u[..., :, None] * v[..., None, :]  # noqa: E731
    derivs = [a * outer(gy, gxd), a * outer(gyd, gx), outer(gy, gx), b * (outer(gy, gxdd) + outer(gydd, gx))]
    n_free = 4 if width == "individual" else 3
    derivs = torch.stack(derivs[:n_free], dim=-1).numpy()  # (B, N, P, P, k)
    model = (e[..., None, None] * outer(gy, gx)).numpy()
    Hp, Wp = geom.padded_shape
    index = (geom.index - torch.arange(B).view(B, 1, 1, 1) * Hp * Wp).numpy()  # per-frame flat index
    mask = np.zeros((Hp, Wp))
    mask[h : h + shape[0], h : h + shape[1]] = 1.0
    mask = mask.ravel()
    n_types = int(types.max()) + 1
    out = {k: np.empty((B, N)) for k in ("x_crlb", "y_crlb", "scs_crlb")}
    for f in range(B):
        cols_idx = []
        vals = []
        rows = []
        P2 = index.shape[-1] ** 2
        for k in range(n_free):
            rows.append(index[f].reshape(N, P2))
            cols_idx.append(np.repeat(np.arange(N) * n_free + k, P2).reshape(N, P2))
            vals.append(derivs[f, ..., k].reshape(N, P2))
        K = N * n_free
        extra_rows, extra_cols, extra_vals = [], [], []
        if width == "common":  # ∂f/∂ρ_t = Σ_{n in t} ∂f_n/∂ρ_n
            dr = (b[f] * (outer(gy[f], gxdd[f]) + outer(gydd[f], gx[f]))).numpy().reshape(N, P2)
            extra_rows.append(index[f].reshape(N, P2))
            extra_cols.append(np.repeat(K + types, P2).reshape(N, P2))
            extra_vals.append(dr)
            K += n_types
        lam = np.full(Hp * Wp, zeta[f] * scale)
        np.add.at(lam, index[f].ravel(), model[f].ravel())
        if background_free:
            extra_rows.append(np.arange(Hp * Wp)[None])
            extra_cols.append(np.full((1, Hp * Wp), K))
            extra_vals.append(np.ones((1, Hp * Wp)))
            K += 1
        R = np.concatenate([a.ravel() for a in rows + extra_rows])
        C = np.concatenate([a.ravel() for a in cols_idx + extra_cols])
        V = np.concatenate([a.ravel() for a in vals + extra_vals])
        J = sp.csr_matrix((V, (R, C)), shape=(Hp * Wp, K))
        if noise == "poisson":
            if np.any(lam[mask > 0] <= 0):
                raise ValueError("the model image has non-positive intensity: the Poisson CRLB needs λ > 0 "
                                 "everywhere (give a positive background)")
            w = mask / np.where(mask > 0, lam, 1.0)
        else:
            w = mask / (float(noise_sigma[f]) * scale) ** 2
        F = (J.T @ sp.diags(w) @ J).toarray()
        cov = _inverse_fisher(F)
        d = np.diag(cov)
        base = np.arange(N) * n_free
        out["x_crlb"][f] = np.sqrt(d[base]) * p
        out["y_crlb"][f] = np.sqrt(d[base + 1]) * p
        # SCS = 2π η ρ² (data units, px) -> gradient wrt (η_n, ρ)
        ge = 2 * np.pi * r[f].numpy() ** 2
        gr = 4 * np.pi * e[f].numpy() * r[f].numpy()
        ie = base + 2
        if width == "individual":
            ir = base + 3
        elif width == "common":
            ir = N * n_free + types
        else:
            ir = None
        var = ge**2 * cov[ie, ie]
        if ir is not None:
            var = var + 2 * ge * gr * cov[ie, ir] + gr**2 * cov[ir, ir]
        out["scs_crlb"][f] = np.sqrt(var) * p * p / scale
    return out


def _inverse_fisher(F: np.ndarray) -> np.ndarray:
    """F⁻¹ via Cholesky of the Jacobi-scaled matrix (scaling removes the huge spread of parameter units).

    A parameter with no information at all (e.g. the position of a column of zero height) gets infinite variance
    and no covariance with the others; the rest of F is inverted without it.
    """
    d = np.diag(F).copy()
    known = d > 1e-14 * d.max()
    cov = np.zeros_like(F)
    cov[~known, ~known] = np.inf
    s = 1.0 / np.sqrt(d[known])
    Fs = F[np.ix_(known, known)] * s[:, None] * s[None, :]
    L, info = torch.linalg.cholesky_ex(torch.from_numpy(Fs))
    if int(info) != 0:
        raise ValueError("the Fisher information is singular: two columns coincide or a column has zero "
                         "height; remove it before computing the CRLB")
    cov[np.ix_(known, known)] = torch.cholesky_inverse(L).numpy() * s[:, None] * s[None, :]
    return cov
