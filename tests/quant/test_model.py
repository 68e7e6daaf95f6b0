"""The hand-written patch kernels against torch autograd (float64)."""

import torch

from stemquant.quant import _model as M


def _setup(seed=0, B=2, N=5, h=6, shape=(23, 19)):
    g = torch.Generator().manual_seed(seed)
    H, W = shape
    cx = torch.rand(B, N, generator=g, dtype=torch.float64) * (W - 1)
    cy = torch.rand(B, N, generator=g, dtype=torch.float64) * (H - 1)
    eta = 0.5 + torch.rand(B, N, generator=g, dtype=torch.float64)
    rho = 1.0 + torch.rand(B, N, generator=g, dtype=torch.float64)
    zeta = torch.rand(B, generator=g, dtype=torch.float64)
    geom = M.make_geometry(cx, cy, h, shape)
    mask = M.pad_stack(torch.zeros(B, H, W, dtype=torch.float64), h)[1]
    return geom, mask, cx, cy, eta, rho, zeta, g


def _render_autograd(geom, mask, theta, zeta):
    cx, cy, eta, rho = theta.unbind(-1)
    prof = M.profiles(geom, cx, cy, rho)
    return M.render(geom, prof, eta, zeta, mask)


def test_render_matches_dense_gaussians_inside_window():
    geom, mask, cx, cy, eta, rho, zeta, _ = _setup(h=12)
    prof = M.profiles(geom, cx, cy, rho)
    f = M.render(geom, prof, eta, zeta, mask).view(2, *geom.padded_shape)[:, 12:-12, 12:-12]
    H, W = geom.shape
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing="ij")
    cx_, cy_, rho_ = cx[..., None, None], cy[..., None, None], rho[..., None, None]
    dense = zeta[:, None, None] + (
        eta[..., None, None] * torch.exp(-((xx - cx_) ** 2 + (yy - cy_) ** 2) / (2 * rho_**2))
    ).sum(1)
    # h = 12 px >= 6 widths: the truncated tail is below exp(-18) of the peak
    torch.testing.assert_close(f, dense, atol=1e-7, rtol=0)


def test_jvp_vjp_and_blocks_match_autograd():
    geom, mask, cx, cy, eta, rho, zeta, g = _setup()
    theta = torch.stack((cx, cy, eta, rho), -1).requires_grad_(True)
    z = zeta.clone().requires_grad_(True)
    prof = M.profiles(geom, cx, cy, rho)
    v = torch.randn(theta.shape, generator=g, dtype=torch.float64)
    vz = torch.randn(zeta.shape, generator=g, dtype=torch.float64)
    jv = torch.func.jvp(lambda t, zz: _render_autograd(geom, mask, t, zz), (theta.detach(), zeta), (v, vz))[1]
    torch.testing.assert_close(M.jvp(geom, prof, eta, rho, v, vz, mask), jv)

    u = torch.randn(jv.shape, generator=g, dtype=torch.float64) * mask.reshape(-1)
    f = _render_autograd(geom, mask, theta, z)
    gt, gz = torch.autograd.grad(f, (theta, z), u)
    gcol, _ = M.vjp(geom, prof, eta, rho, u, None)
    torch.testing.assert_close(gcol, gt)
    torch.testing.assert_close(u.view(2, -1).sum(1), gz)

    # per-column 4x4 block of JᵀWJ: isolated column's Jacobian from autograd
    w = torch.rand(jv.shape, generator=g, dtype=torch.float64) * mask.reshape(-1)
    blocks = M.column_blocks(geom, prof, eta, rho, w)
    for n in range(cx.shape[1]):
        def single(t, n=n):
            e = torch.zeros_like(theta.detach())
            e[0, n] = t
            th = theta.detach().clone()
            th[0, n] = t
            keep = torch.zeros_like(eta)
            keep[0, n] = 1
            c, y_, et, r = th.unbind(-1)
            pr = M.profiles(geom, c, y_, r)
            return M.render(geom, pr, et * keep, torch.zeros_like(zeta), mask)
        Jn = torch.autograd.functional.jacobian(single, theta.detach()[0, n])  # (npix, 4)
        torch.testing.assert_close(blocks[0, n], Jn.T @ (w[:, None] * Jn))


def test_residual_moments_give_gradient_and_curvature_of_autograd():
    """Σ_p r_p ∇²f_p per column (the Newton term) and Jᵀr from the 5×5 residual moments, against autograd."""
    geom, mask, cx, cy, eta, rho, zeta, g = _setup()
    prof = M.profiles(geom, cx, cy, rho)
    r = torch.randn(mask.numel(), generator=g, dtype=torch.float64) * mask.reshape(-1)
    X = M.residual_moments(geom, prof, cx, cy, r)
    gcol, _ = M.vjp(geom, prof, eta, rho, r, None)
    torch.testing.assert_close(M.moments_gradient(X, M.coefficients(eta, rho)), gcol)
    curv = M.curvature_blocks(X, eta, rho)
    theta = torch.stack((cx, cy, eta, rho), -1)
    for b in range(cx.shape[0]):
        def rf(t, b=b):  # r·f for frame b as a function of its (N, 4) parameters
            th = theta.clone()
            th[b] = t
            return (r * _render_autograd(geom, mask, th, zeta)).sum()
        hess = torch.autograd.functional.hessian(rf, theta[b])  # (N, 4, N, 4); f is a sum: block diagonal
        for n in range(cx.shape[1]):
            torch.testing.assert_close(curv[b, n], hess[n, :, n, :])


def test_mask_weighted_blocks_and_gradient_are_separable():
    """With W = the real-pixel mask (least squares) blocks and Jᵀ·mask come from 1-D sums: same as gathered."""
    geom, mask, cx, cy, eta, rho, zeta, g = _setup()  # windows stick out of the 23×19 image
    prof = M.profiles(geom, cx, cy, rho)
    m = mask.reshape(-1)
    torch.testing.assert_close(M.column_blocks(geom, prof, eta, rho, None), M.column_blocks(geom, prof, eta, rho, m))
    torch.testing.assert_close(M.mask_gradient(geom, prof, eta, rho), M.vjp(geom, prof, eta, rho, m, None)[0])


def test_height_gram_matches_dense_gram_of_rendered_columns():
    """Σ gₙgₘ over the real pixels from 1-D overlap sums, for every pair of overlapping windows (windows sticking
    out of the image, different windows per frame): the Gram matrix of the columns rendered one by one."""
    geom, mask, cx, cy, eta, rho, zeta, g = _setup(N=9)
    B, N = cx.shape
    prof = M.profiles(geom, cx, cy, rho)
    zero = torch.zeros(B, dtype=torch.float64)
    cols = torch.stack([M.render(geom, prof, torch.eye(N, dtype=torch.float64)[n].expand(B, N), zero, mask)
                        .view(B, -1) * mask.view(B, -1) for n in range(N)], 1)  # (B, N, pixels)
    dense = cols @ cols.transpose(1, 2)
    diag, off, u = M.height_gram(geom, prof)
    n, m = M.overlap_pairs(geom)
    assert bool((n // N == m // N).all()) and bool((n < m).all())  # pairs of one frame, each once
    full = torch.zeros(B * N, B * N, dtype=torch.float64)
    full[n, m] = off
    full = full + full.T + torch.diag(diag.reshape(-1))
    blocks = torch.stack([full[b * N:(b + 1) * N, b * N:(b + 1) * N] for b in range(B)])
    torch.testing.assert_close(blocks, dense, rtol=1e-12, atol=1e-12)  # pairs not listed do not overlap: 0
    torch.testing.assert_close(u, cols.sum(-1))
