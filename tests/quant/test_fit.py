"""fit_columns and column_crlb: exactness on noise-free images, efficiency against the CRLB, bad input."""


import contextlib
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from stemquant.quant import column_crlb, fit_columns

P = 0.2  # pixel size [Å]


def gaussian_image(pos, rho, eta, bg, shape, p=P):
    """Independent dense rendering of eq. (2.19) (no windows), pixel centres at (j+0.5)p."""
    yy, xx = (np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5) * p
    img = np.full(shape, float(bg))
    for (x, y), r, e in zip(pos, np.broadcast_to(rho, len(pos)), np.broadcast_to(eta, len(pos)), strict=True):
        img += e * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * r**2))
    return img


def lattice(n=4, spacing=2.0, margin=2.0):
    g = margin + spacing * np.arange(n)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    size = int(round((2 * margin + spacing * (n - 1)) / P))
    return pos, (size, size)


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
@pytest.mark.parametrize("width", ["common", "individual", 0.45])
def test_noise_free_lattice_is_recovered(width, noise, rng):
    pos, shape = lattice()
    rho = 0.45 if not isinstance(width, str) or width == "common" else rng.uniform(0.4, 0.5, len(pos))
    eta = rng.uniform(0.8, 1.2, len(pos))
    img = gaussian_image(pos, rho, eta, 0.1, shape)
    start = pos + rng.normal(0, 0.08, pos.shape)  # ~0.4 px off
    # Poisson: the noise-free image as expected counts at 100 e⁻/Å² (the criterion is minimal at the truth too)
    fit = fit_columns(img, start, P, width=width, crlb=False, noise=noise, dose=100.0 if noise == "poisson" else None)
    assert fit.converged.all()
    # windows of 4 widths truncate tails of ≤ exp(-8) of the peak: parameters exact to ~1e-4 relative
    np.testing.assert_allclose(fit.positions, pos, atol=2e-4 * P)
    np.testing.assert_allclose(fit.widths, np.broadcast_to(rho, len(pos)), rtol=2e-4)
    np.testing.assert_allclose(fit.heights, eta, rtol=5e-4)
    np.testing.assert_allclose(fit.scs, 2 * np.pi * eta * np.broadcast_to(rho, len(pos)) ** 2, rtol=1e-3)
    assert fit.background == pytest.approx(0.1, abs=1e-4)


@pytest.mark.parametrize("labels", [(0, 1), (31, 33), (2, 1)])
def test_common_width_per_type(labels):
    # any non-negative labels (atomic numbers, gaps, not starting at 0): one width per label present; the
    # absent labels in between used to get free widths without data and stall every fit
    pos, shape = lattice()
    types = np.where(np.arange(len(pos)) % 2 == 0, labels[0], labels[1])
    rho = np.where(types == labels[0], 0.4, 0.55)
    img = gaussian_image(pos, rho, 1.0, 0.05, shape)
    fit = fit_columns(img, pos, P, width="common", types=types, crlb=False)
    assert fit.converged.all()
    np.testing.assert_allclose(fit.widths, rho, rtol=2e-4)
    assert list(fit.table["type"]) == list(types)


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
@pytest.mark.parametrize("types", [False, True])
def test_close_pairs_with_shared_widths_are_recovered(noise, types, rng):
    # Dumbbells (Si [110]-like) 1.0 Å apart with ρ = 0.45-0.55 Å: columns closer than ~2.2 widths. The shared
    # widths' coupling in the preconditioner once included the neighbours' overlap while the column blocks did
    # not; the Schur complement went indefinite and least-squares fits stalled unconverged.
    centres = np.array([(2.0 + 3.0 * i, 2.5 + 3.5 * j) for i in range(2) for j in range(2)])
    pos = np.concatenate([centres - [0.0, 0.5], centres + [0.0, 0.5]])
    t = np.repeat([0, 1], len(centres)) if types else np.zeros(len(pos), dtype=int)
    rho = np.where(t == 0, 0.45, 0.55)
    eta = rng.uniform(0.8, 1.2, len(pos))
    shape = (int(round(8.0 / P)), int(round(9.5 / P)))
    img = gaussian_image(pos, rho, eta, 0.1, shape)
    start = pos + rng.normal(0, 0.05, pos.shape)
    fit = fit_columns(img, start, P, width="common", types=t, crlb=False, noise=noise, width_init=0.5,
                      dose=100.0 if noise == "poisson" else None)
    assert fit.converged.all() and fit.n_iter.max() < 20
    np.testing.assert_allclose(fit.positions, pos, atol=2e-4 * P)
    np.testing.assert_allclose(fit.widths, rho, rtol=2e-4)
    np.testing.assert_allclose(fit.scs, 2 * np.pi * eta * rho**2, rtol=1e-3)


def test_strongly_overlapping_pair_from_the_default_start():
    # Two columns 1.5 widths apart: the start-width estimate (volume within half the neighbour distance) sees only
    # their cores (start ~4x too narrow). The widths outgrow the padded margin sized for 3x the start; the fit
    # re-pads and goes on (it used to stop, every column unconverged, SCS off by half).
    pos = np.array([[2.7, 3.0], [3.3, 3.0]])
    img = gaussian_image(pos, 0.4, 1.0, 0.1, (30, 30))
    for kwargs in ({}, {"width_init": 0.4}):
        fit = fit_columns(img, pos, P, crlb=False, **kwargs)
        assert fit.converged.all()
        np.testing.assert_allclose(fit.widths, 0.4, rtol=2e-4)
        np.testing.assert_allclose(fit.positions, pos, atol=2e-4 * P)
        np.testing.assert_allclose(fit.scs, 2 * np.pi * 0.4**2, rtol=1e-3)


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
@pytest.mark.parametrize("width", ["individual", "common"])
def test_strongly_overlapping_lattice_converges(noise, width):
    # A 5×5 lattice 1.2 Å apart with ρ = 0.45 Å (2.7 widths): the block preconditioner's Schur complement of the
    # background went indefinite (the columns' own blocks overstate what they explain of it where they overlap)
    # and the steps crawled: with individual widths every frame stopped at max_iter = 100, unconverged (1,443
    # iterations to converge in a 10×10 one), with common widths 21–74 iterations instead of 5.
    g = 1.5 + 1.2 * np.arange(5)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    shape = (int(round(7.8 / P)),) * 2
    img = gaussian_image(pos, 0.45, 1.0, 0.1, shape)
    rng = np.random.default_rng(0)
    c = 1e4 * P * P
    stack = rng.poisson(img * c, size=(4, *shape)) / c
    start = pos + rng.normal(0, 0.05, pos.shape)
    fit = fit_columns(stack, start, P, dose=1e4, noise=noise, width=width, crlb=False, workers=1)
    assert fit.converged.all()
    assert fit.n_iter.max() < (50 if width == "individual" else 15)  # measured 7–15 and 5
    cr = column_crlb(pos, 0.45, 1.0, 0.1, shape, P, 1e4, width=width)
    # 200 coordinates per frame: P(any |z| > 5) ~ 5·10⁻⁴ for an efficient estimator
    z = np.abs(fit.positions - pos) / np.c_[cr.x_crlb, cr.y_crlb]
    assert z.max() < 5


@pytest.mark.parametrize("noise, frame", [("poisson", 3), ("poisson", 8), ("gaussian", 0), ("gaussian", 7)])
def test_an_invisible_column_type_does_not_stall_the_frame(noise, frame):
    # SrTiO3-like [001] (Sr corners, Ti centres, O at the edge midpoints with 3 % of the Sr height) at 10³ e⁻/Å²:
    # O peaks of ~0.7 counts. The O type's shared width crawled to a fraction of a pixel, its columns fitting
    # single noisy pixels that looked significant at that width; the frame ran to max_iter and every column,
    # Sr and Ti included, was reported unconverged (these frames of the 76-scenario sweep). A shared width below
    # half its start is now tested with the same volume at half the start width.
    import zlib

    a, n, p = 3.9, 4, 0.15
    cell = 1.5 + a * np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2)  # (x, y), x fastest
    o = np.concatenate([cell + [a / 2, 0], cell + [0, a / 2]])
    pos = np.concatenate([cell, cell + a / 2, o])
    t = np.repeat([38, 22, 8], [n * n, n * n, 2 * n * n])
    rho = np.where(t == 38, 0.45, 0.40)
    eta = np.where(t == 38, 1.0, np.where(t == 22, 0.5, 0.03))
    W, H = (int(np.ceil(e / p)) for e in pos.max(0) + 1.5)
    img = gaussian_image(pos, rho, eta, 0.1, (H, W), p=p)
    rng = np.random.default_rng(zlib.crc32(f"4_sto_o0.03_d1e+03_{noise[:4]}".encode()))
    c = 1e3 * p * p
    frames = [rng.poisson(img * c) / c for _ in range(10)]
    starts = pos + rng.normal(0, 0.05, (10, *pos.shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the O columns are empty sites or unconverged
        fit = fit_columns(frames[frame], starts[frame], p, dose=1e3, noise=noise, types=t, crlb=False)
    assert fit.converged[t != 8].all()
    assert fit.n_iter < 100


@pytest.mark.parametrize("frame", [0, 7])
def test_an_invisible_column_type_does_not_stall_individual_widths(frame):
    # The SrTiO3-like image above with individual widths, Poisson at 10³ e⁻/Å²: O columns shrank onto single noisy
    # pixels, and the O type's median width with them, against which these spikes looked significant and bright;
    # 7 of 10 frames ran to max_iter with Sr or Ti columns unconverged (these two among them). Significance is now
    # taken at the type's width w (spikes no longer set the type's typical height), and in a type with fewer than
    # half its columns significant a spike's height is that of its volume at width w.
    import zlib

    a, n, p = 3.9, 4, 0.15
    cell = 1.5 + a * np.stack(np.meshgrid(np.arange(n), np.arange(n)), -1).reshape(-1, 2)
    o = np.concatenate([cell + [a / 2, 0], cell + [0, a / 2]])
    pos = np.concatenate([cell, cell + a / 2, o])
    t = np.repeat([38, 22, 8], [n * n, n * n, 2 * n * n])
    img = gaussian_image(pos, np.where(t == 38, 0.45, 0.40), np.where(t == 38, 1.0, np.where(t == 22, 0.5, 0.03)),
                         0.1, tuple(int(np.ceil(e / p)) for e in pos.max(0)[::-1] + 1.5), p=p)
    rng = np.random.default_rng(zlib.crc32(b"sto_ind_1000_poisson"))
    c = 1e3 * p * p
    frames = [rng.poisson(img * c) / c for _ in range(10)]
    start = pos + rng.normal(0, 0.05, pos.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the O columns are empty sites or unconverged
        fit = fit_columns(frames[frame], start, p, dose=1e3, noise="poisson", types=t, crlb=False,
                          width="individual")
    assert fit.converged[t != 8].all()
    assert fit.n_iter < 100


def test_a_step_cut_at_the_cg_cap_does_not_stop_the_fit(monkeypatch):
    # Least squares, individual widths, a 10×10 lattice 1.2 Å apart (ρ = 0.45 Å): the block preconditioner is weak
    # there and every solve stopped at the CG cap. Such an inexact step is small without being close to the
    # optimum: this frame (the 76-scenario sweep's 7_ovl_d1e+04_gaus_ind, frame 5) stopped after 12 iterations,
    # reported converged, 0.43 CRLB from the optimum its own path reaches with a 10¹⁰x stricter stopping threshold.
    # (Either the stop guard or the doubling CG cap alone avoids it here, a review found; the test fails without both.)
    import zlib

    import stemquant.quant._fit as F

    g = 1.5 + 1.2 * np.arange(10)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    shape = (69, 69)
    img = gaussian_image(pos, 0.45, 1.0, 0.1, shape)
    rng = np.random.default_rng(zlib.crc32(b"7_ovl_d1e+04_gaus_ind"))
    c = 1e4 * P * P
    frames = [rng.poisson(img * c) / c for _ in range(10)]
    starts = pos + rng.normal(0, 0.05, (10, *pos.shape))
    kw = dict(dose=1e4, noise="gaussian", width="individual", crlb=False)
    fit = fit_columns(frames[5], starts[5], P, **kw)
    monkeypatch.setattr(F, "_STOP_SHARE", 5e-15)
    ref = fit_columns(frames[5], starts[5], P, max_iter=400, **kw)
    assert fit.converged.all() and ref.converged.all()
    cr = column_crlb(pos, 0.45, 1.0, 0.1, shape, P, 1e4, width="individual")
    assert (np.abs(fit.positions - ref.positions) / np.c_[cr.x_crlb, cr.y_crlb]).max() < 0.05


@pytest.mark.parametrize("G", [1, 3])
@pytest.mark.parametrize("a", [0.5, 2.6])
def test_block_preconditioner_is_positive_definite(G, a):
    # The arrow matrix [[blocks, θCᵀ], [θC, Gm]] of _arrow_schur: coupling strength a (largest eigenvalue of
    # Gm⁻¹ Σ C P⁻¹ Cᵀ) = 2.6 as in a lattice 2.7 widths apart, 0.5 as in a separated one.
    import stemquant.quant._fit as F

    gen = torch.Generator().manual_seed(0)
    B, N = 2, 12
    A = torch.randn(B, N, 4, 4, generator=gen, dtype=torch.float64)
    cb = A @ A.transpose(-1, -2) + 0.1 * torch.eye(4, dtype=torch.float64)
    C = torch.randn(B, N, G, 4, generator=gen, dtype=torch.float64)
    R = torch.randn(B, G, G, generator=gen, dtype=torch.float64)
    Gm0 = R @ R.transpose(-1, -2) + torch.eye(G, dtype=torch.float64)
    CK = (C @ torch.linalg.inv(cb) @ C.transpose(-1, -2)).sum(1)
    L = torch.linalg.cholesky(Gm0)
    Li = torch.linalg.inv(L)
    a0 = torch.linalg.eigvalsh(Li @ CK @ Li.transpose(-1, -2))[:, -1]
    C = C * torch.sqrt(a / a0)[:, None, None, None]  # coupling of strength exactly a
    ones = torch.ones(4, dtype=torch.float64), torch.ones(G, dtype=torch.float64)
    Pc_inv, Cs, K, S = F._arrow_schur(cb, C, Gm0, *ones, None, None)
    s_rel = torch.linalg.eigvalsh(Li @ S @ Li.transpose(-1, -2))[:, 0]  # smallest eigenvalue of Gm⁻¹S
    if a <= 1 - F._SCHUR_MARGIN:  # unchanged
        assert torch.equal(Cs, C)
        torch.testing.assert_close(S, Gm0 - (C @ K).sum(1))
    else:  # the complement keeps the margin
        torch.testing.assert_close(s_rel, torch.full_like(s_rel, F._SCHUR_MARGIN))
    full = torch.zeros(B, 4 * N + G, 4 * N + G, dtype=torch.float64)
    for n in range(N):
        full[:, 4 * n : 4 * n + 4, 4 * n : 4 * n + 4] = cb[:, n]
        full[:, 4 * N :, 4 * n : 4 * n + 4] = Cs[:, n]
        full[:, 4 * n : 4 * n + 4, 4 * N :] = Cs[:, n].transpose(-1, -2)
    full[:, 4 * N :, 4 * N :] = Gm0
    assert (torch.linalg.eigvalsh(full)[:, 0] > 0).all()


@pytest.mark.parametrize("width", ["individual", "common"])
def test_a_few_much_wider_columns_are_not_runaways(width):
    # 5 of 100 columns 2.7x wider than the rest (equal SCS): the first step overshoots them past the padded margin.
    # A frame used to be stopped there as a runaway (every column unconverged); now it waits a few iterations and
    # the widths settle (with common widths the wide ones are their own type).
    g = 3.0 + 4.0 * np.arange(10)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    rng = np.random.default_rng(0)
    t = np.zeros(len(pos), int)
    t[rng.choice(len(pos), 5, replace=False)] = 1
    rho = np.where(t == 1, 0.8, 0.3)
    img = gaussian_image(pos, rho, (0.3 / rho) ** 2, 0.05, (210, 210))
    noisy = rng.poisson(img * 1e5 * P * P) / (1e5 * P * P)
    fit = fit_columns(noisy, pos, P, crlb=False, width=width, types=t if width == "common" else None, dose=1e5)
    assert fit.converged.all()
    np.testing.assert_allclose(np.median(fit.widths[t == 1]), 0.8, rtol=0.01)


def test_start_on_background_is_an_empty_site():
    # a start with no column under it used to widen into the noisy background until the frame stopped at 8x the
    # start width, every column unconverged: now its height is not significant, it is removed (an empty site:
    # height 0, position at the start, flagged) and the real column converges
    img = gaussian_image(np.array([[2.0, 2.0]]), 0.4, 1.0, 0.1, (40, 40))
    noisy = np.random.default_rng(0).poisson(img * 1e4 * P * P) / (1e4 * P * P)
    with pytest.warns(UserWarning, match="1 of them empty sites"):
        fit = fit_columns(noisy, [[2.0, 2.0], [6.0, 6.0]], P, crlb=False, width="individual")
    assert fit.converged[0] and not fit.converged[1]
    assert fit.table["empty_site"].tolist() == [False, True] and fit.info["empty_sites"] == 1
    np.testing.assert_allclose(fit.positions[1], [6.0, 6.0])


def test_empty_sites_do_not_stall_the_frame():
    # 10 vacancies of a 15x15 lattice given as starts, individual widths, Poisson at 1e4 e-/A^2: the vacancies'
    # free shapes stalled the frame's damping (100 iterations, ~70 s, every column unconverged). Now every real
    # column converges and the vacancies are empty sites with heights ~ 0.
    p = 0.14
    g = 2.5 + 3.5 * np.arange(15)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    rng = np.random.default_rng(0)
    vac = np.zeros(len(pos), bool)
    vac[rng.choice(len(pos), 10, replace=False)] = True
    img = gaussian_image(pos[~vac], 0.45, 0.05, 0.005, (400, 400), p=p)
    noisy = rng.poisson(img * 1e4 * p * p) / (1e4 * p * p)
    with pytest.warns(UserWarning, match="10 of them empty sites"):
        fit = fit_columns(noisy, pos, p, dose=1e4, noise="poisson", width="individual", crlb=False)
    assert fit.converged[~vac].all() and fit.table["empty_site"].to_numpy()[vac].all()
    assert int(fit.n_iter) < 30
    assert np.all(fit.heights[vac] == 0)


def test_a_runaway_width_is_fixed_and_the_frame_goes_on():
    # a start on a broad hump (amorphous layer, thickness bump: significant intensity the model has no column for)
    # widens and drifts off; the frame used to stop past 8x the start width with every column unconverged. Now that
    # column is reset to its start position and width, both fixed (its height fitted), flagged, and the real columns
    # converge (within 5 of their bounds of their true positions; false failure < 1e-5 per coordinate)
    pos = np.array([[2.0, 2.0], [2.0, 4.0], [4.0, 2.0], [4.0, 4.0]])
    yy, xx = (np.mgrid[0:60, 0:60] + 0.5) * P
    img = gaussian_image(pos, 0.4, 1.0, 0.1, (60, 60)) + np.exp(-((xx - 12) ** 2 + (yy - 12) ** 2) / (2 * 4.0**2))
    noisy = np.random.default_rng(0).poisson(img * 1e4 * P * P) / (1e4 * P * P)
    with pytest.warns(UserWarning, match="1 of them runaway widths"):
        fit = fit_columns(noisy, np.vstack([pos, [[10.0, 10.0]]]), P, width="individual", dose=1e4, noise="poisson",
                          width_init=0.4)
    assert fit.converged[:4].all() and not fit.converged[4]
    assert fit.table["runaway"].tolist() == [False] * 4 + [True] and fit.info["runaways"] == 1
    np.testing.assert_allclose(fit.positions[4], [10.0, 10.0], atol=1e-12)  # at its start, width fixed there
    assert fit.widths[4] == pytest.approx(0.4, abs=1e-12)
    t = fit.table.iloc[:4]
    assert (np.abs(t["x"] - pos[:, 0]) < 5 * t["x_crlb"]).all() and (np.abs(t["y"] - pos[:, 1]) < 5 * t["y_crlb"]).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_spurious_start_on_a_faint_hump_is_not_a_column(seed):
    # A start between no columns, on a faint broad hump (0.2 of the column height, σ 2 Å), Poisson at 10³ e⁻/Å²:
    # it fades by widening and roaming, is removed and restored twice, and gets its width fixed; it then slid
    # 1.7-1.8 Å towards the hump and was reported a converged column. A column with a fixed width converges only
    # within that width of its start; the real columns must converge.
    pos = np.array([[2.0, 2.0], [2.0, 4.0], [4.0, 2.0], [4.0, 4.0]])
    yy, xx = (np.mgrid[0:60, 0:60] + 0.5) * P
    img = gaussian_image(pos, 0.4, 1.0, 0.1, (60, 60)) + 0.2 * np.exp(-((xx - 12) ** 2 + (yy - 12) ** 2) / (2 * 2.0**2))
    noisy = np.random.default_rng(seed).poisson(img * 1e3 * P * P) / (1e3 * P * P)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fit = fit_columns(noisy, np.vstack([pos, [[10.0, 10.0]]]), P, width="individual", dose=1e3, noise="poisson",
                          crlb=False)
    assert fit.converged[:4].all() and not fit.converged[4]


def _pt_particle_frame(p, dose, seed):
    """Frame 3 of 4 Poisson frames of the validation study's 333-column Pt particle (incoherent model, `particle`
    probe, bundled SCS library, background 10⁻³) at ``dose`` [e⁻/Å²], starts = truth ± 0.05 Å, and the truth."""
    from stemquant.distort import poisson_noise
    from stemquant.simulate import PRESETS, load_scs_library, render_incoherent
    from stemquant.structures import project_columns, pt_nanoparticle

    atoms = pt_nanoparticle()
    truth = project_columns(atoms)
    n = int(round(float(atoms.cell[0, 0]) / p))
    clean = render_incoherent(truth, shape=(n, n), pixel_size=p, probe=PRESETS["particle"],
                              library=load_scs_library("pt001_particle"), background=1e-3)
    rng = np.random.default_rng(seed)
    frames = [poisson_noise(clean, dose=dose, pixel_size=p, rng=rng) / (dose * p * p) for _ in range(4)]
    xy = truth[["x", "y"]].to_numpy()
    return frames[3], xy + rng.uniform(-0.05, 0.05, xy.shape), truth


def test_individual_widths_on_the_pt_particle_converge():
    # The 333-column Pt particle of the validation study (incoherent model: probe tails leave a halo under the
    # particle that a constant background cannot take up), Poisson at 1e4 e-/A^2, individual widths: a single-atom
    # rim column widened into that halo and drifted ~10 A into the particle, and the frame stopped as a runaway with
    # all 333 columns unconverged (25 s). Now that column is fixed at its start and flagged, the other 332 converge,
    # within 5 of their bounds of the true positions (Gaussian columns fitted to probe-shaped ones: a small bias;
    # false failure of an unbiased efficient estimate ~4e-4 over the 664 coordinates).
    p, dose = 0.1, 1e4
    frame, start, truth = _pt_particle_frame(p, dose, seed=0)
    xy = truth[["x", "y"]].to_numpy()
    with pytest.warns(UserWarning, match="1 of them runaway widths"):
        fit = fit_columns(frame, start, p, dose=dose, noise="poisson", width="individual")
    t = fit.table
    assert t["runaway"].sum() == 1 and (fit.converged == ~t["runaway"].to_numpy()).all()
    assert truth["n_atoms"].to_numpy()[t["runaway"].to_numpy()] == [1]
    err = np.abs(fit.positions - xy) / t[["x_crlb", "y_crlb"]].to_numpy()
    assert (err[fit.converged] < 5).all()


def test_a_sliding_column_does_not_stall_the_frame():
    # The Pt particle at 10³ e⁻/Å², Poisson, individual widths: a rim column widened into the halo under the particle
    # along a flat direction, for 50 iterations, each step ~5 % longer than the last and decreasing the criterion by
    # twice the Gauss–Newton prediction; the frame hit max_iter with every column unconverged. Such a step is now
    # tried once more (kept if the criterion falls further): the frame converges, positions within 5 of their bounds
    # of the truth (Gaussians fitted to probe-shaped columns: a small bias; false failure of an unbiased efficient
    # estimate ~4e-4 over 664 coordinates).
    p, dose = 0.1, 1e3
    frame, start, truth = _pt_particle_frame(p, dose, seed=1000)
    xy = truth[["x", "y"]].to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # faint rim columns with their widths fixed
        fit = fit_columns(frame, start, p, dose=dose, noise="poisson", width="individual")
    assert fit.n_iter < 100 and fit.converged.mean() > 0.99
    err = np.abs(fit.positions - xy) / fit.table[["x_crlb", "y_crlb"]].to_numpy()
    assert (err[fit.converged] < 5).all()


def test_an_infeasible_poisson_state_is_repaired_and_no_nan_step_accepted(monkeypatch):
    # Under the Poisson criterion a column can take a negative height while an overlapping neighbour compensates
    # it; when that neighbour is reset (a runaway fixed, an empty site removed) the model goes negative and the
    # criterion infinite, and every trial looked "no worse" than ∞: a 12x12 lattice 1.2 Å apart (individual widths,
    # 10⁴ e⁻/Å²) accepted a NaN step from that state and crashed (test_a_nan_step_is_never_accepted_on_a_dense_
    # lattice, slow). Forced here: column 4 negative and column 5 removed (for good) at the second solve, then a
    # NaN step (before: accepted, and the crash). The infeasible state is repaired (negative heights to the start
    # floor) and the NaN trial rejected: the fit ends with finite numbers and the other columns converged.
    # (Column 4 then widens into the site of column 5, which this test keeps empty: a runaway, flagged.)
    import stemquant.quant._fit as F
    import stemquant.quant._model as M

    real_sites, real_solve, real_repair = F._empty_sites, F._solve_step, F._restore_feasibility
    calls = {"sites": 0, "solve": 0, "repair": 0}

    def forced_sites(st, *args):
        calls["sites"] += 1
        new_empty, release, eta_score, significant = real_sites(st, *args)
        new_empty, release = new_empty.clone(), release.clone()
        if calls["sites"] == 2:  # column 4 goes negative (as if compensated by column 5) and column 5 is removed
            st.col[:, 4, M.ETA] = -2.0 * st.col[:, 5, M.ETA]
            new_empty[:, 5] = True
        elif calls["sites"] > 2:  # and stays removed, column 4 kept: the state stays infeasible
            new_empty[:, 4], release[:, 5] = False, False
        return new_empty, release, eta_score, significant

    def forced_solve(*args, **kwargs):
        calls["solve"] += 1
        out = real_solve(*args, **kwargs)
        if calls["solve"] == 3:  # the solve after the reset: a NaN step
            out = (torch.full_like(out[0], math.nan), *out[1:])
        return out

    def counted_repair(*args):
        calls["repair"] += 1
        return real_repair(*args)

    monkeypatch.setattr(F, "_empty_sites", forced_sites)
    monkeypatch.setattr(F, "_solve_step", forced_solve)
    monkeypatch.setattr(F, "_restore_feasibility", counted_repair)
    pos, shape = lattice(3)
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    noisy = np.random.default_rng(0).poisson(img * 1e5 * P * P) / (1e5 * P * P)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # column 5: an empty site
        fit = fit_columns(noisy, pos, P, dose=1e5, noise="poisson", width="individual", crlb=False)
    assert calls["repair"] >= 1 and calls["solve"] > 3  # the situation this test is about arose
    assert np.isfinite(fit.objective) and np.isfinite(fit.table[["x", "y", "width", "height"]].to_numpy()).all()
    ok = (np.arange(9) != 4) & (np.arange(9) != 5)  # 4 widens into 5's site, kept empty here: a runaway
    assert fit.converged[ok].all() and fit.table["empty_site"].tolist() == [False] * 5 + [True] + [False] * 3
    np.testing.assert_allclose(fit.positions[ok], pos[ok], atol=0.05)


@pytest.mark.parametrize("width", ["common", "individual"])
def test_windows_never_outgrow_the_image(width):
    # A column a third as wide as the image (ρ = 2 Å on 6 Å): windows of 4 widths, and the padding for 3x
    # growth, would reach 40 and 122 px round a 30 px image; past max(H, W) they only add padding (widths run away on
    # overlapping columns with a start width 2.5x too wide: 160 px windows on an 85 px image, 200-600 s). Capped
    # there, the fit is the same: converged on the truth (5 bounds; false failure ~1e-6).
    p, dose = 0.2, 1e4
    img = gaussian_image([[3.0, 3.0]], 2.0, 0.05, 0.005, (30, 30), p=p)
    noisy = np.random.default_rng(0).poisson(img * dose * p * p) / (dose * p * p)
    fit = fit_columns(noisy, [[3.1, 2.9]], p, dose=dose, noise="poisson", width=width, width_init=2.0)
    assert fit.info["window_half_size_px"] <= 30 + 2
    assert fit.converged.all()
    t = fit.table.iloc[0]
    assert abs(t["x"] - 3.0) < 5 * t["x_crlb"] and abs(t["y"] - 3.0) < 5 * t["y_crlb"]
    assert abs(t["scs"] - 2 * np.pi * 0.05 * 2.0**2) < 5 * t["scs_crlb"]


@pytest.mark.parametrize("offsets", [(-0.3, 0.3), (-0.42, 0.18), (-0.28, 0.12)])
def test_a_start_whose_column_another_start_took_over_is_not_converged(offsets):
    # Two starts round one column (x = 4.0 Å): the one that ends on the column is the column; the other is pushed
    # off to 3.25 Å as a ghost with 7 % of the SCS, and used to be reported converged (so was a column that a vacancy
    # start sliding onto its site pushed 1.6 Å off, x_crlb 0.04 Å: fuzzing, helper-46). A column that ended more than
    # half-way to the nearest other start while another column ended closer to its start is not converged, and the
    # warning says why; the column that took the site is kept (measuring the distance alone flagged it too:
    # review helper-47) and lies on the truth (within 5 bounds).
    pos, shape = lattice(3)
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    noisy = np.random.default_rng(0).poisson(img * 1e4 * P * P) / (1e4 * P * P)
    starts = np.r_[pos[:4], [pos[4] + [offsets[0], 0]], pos[5:], [pos[4] + [offsets[1], 0]]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_columns(noisy, starts, P, dose=1e4, noise="poisson")
    t = fit.table
    assert fit.converged.tolist() == [True] * 4 + [False] + [True] * 5
    assert abs(t.loc[4, "x"] - 4.0) > 0.5 and t.loc[4, "scs"] < 0.2 * t.loc[9, "scs"]  # the ghost
    assert abs(t.loc[9, "x"] - 4.0) < 5 * t.loc[9, "x_crlb"] and abs(t.loc[9, "y"] - 4.0) < 5 * t.loc[9, "y_crlb"]
    assert any("strayed more than half-way" in str(w.message) for w in caught)


@pytest.mark.xfail(strict=True, reason="known limit: the constant background (eq. 2.19) cannot take up a hump; a "
                   "faint type's shared width absorbs it, unflagged; docs/fitting.md: 'What the model cannot describe'")
def test_a_hump_under_a_faint_type_is_not_absorbed_by_its_shared_width():
    # 4x4 heavy columns, a 3x3 light type at 10 % height between them, over a broad hump of the light type's height
    # (σ 2.5 Å), Poisson at 10⁴ e⁻/Å², common widths per type. Measured: the light type's width 0.45 → 0.82 Å and
    # its SCS 3.5x the truth, all columns "converged". When a background model or a misfit test handles this, the
    # light SCS come within 5 bounds of the truth (or the columns are flagged) and this test passes: drop the mark.
    p = 0.2
    g = 2.0 + 3.0 * np.arange(4)
    X, Y = np.meshgrid(g, g)
    pos = np.r_[np.c_[X.ravel(), Y.ravel()], [[x + 1.5, y + 1.5] for x in g[:3] for y in g[:3]]]
    t = np.r_[np.zeros(16, int), np.ones(9, int)]
    size = int(round(13.0 / p))
    yy, xx = (np.mgrid[0:size, 0:size] + 0.5) * p
    img = gaussian_image(pos, 0.45, np.where(t == 0, 0.05, 0.005), 0.005, (size, size), p=p)
    img = img + 0.005 * np.exp(-((xx - 6.5) ** 2 + (yy - 6.5) ** 2) / (2 * 2.5**2))
    c = 1e4 * p * p
    noisy = np.random.default_rng(0).poisson(img * c) / c
    fit = fit_columns(noisy, pos, p, dose=1e4, noise="poisson", types=t)
    light = fit.table[t == 1]
    ok = light["converged"].to_numpy()
    assert (np.abs(light["scs"][ok] - 2 * np.pi * 0.005 * 0.45**2) < 5 * light["scs_crlb"][ok]).all()


def _dense_lattice_frame(seed, n=12, p=0.15, dose=1e4):
    """n x n columns 1.2 Å apart (ρ 0.45 Å: strongly overlapping), heights 0.05 ± 10 %, background 0.005, Poisson
    at ``dose``; starts = truth + N(0, 0.05 Å). Returns the frame, the starts, the truth and the pixel size."""
    rng = np.random.default_rng(seed)
    g = 2.0 + 1.2 * np.arange(n)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    size = int(round((4 + 1.2 * (n - 1)) / p))
    img = gaussian_image(pos, 0.45, 0.05 * rng.uniform(0.9, 1.1, len(pos)), 0.005, (size, size), p=p)
    c = dose * p * p
    return rng.poisson(img * c) / c, pos + rng.normal(0, 0.05, pos.shape), pos, p


@pytest.mark.parametrize("seed", [19, 22])
def test_overlapping_columns_trading_intensity_are_not_removed(seed):
    # 144 strongly overlapping columns, individual widths, Poisson at 10⁴ e⁻/Å²: neighbours trade intensity on the
    # way, and a real column may look faint for a few iterations. Only in a type with fewer than half its columns
    # significant is a spike's height taken as its volume at the type width (_empty_sites, ``visible``); taken in
    # every type, a real column of these frames was removed (143 of 144 converged; 5 of 22 seeds, ad hoc search).
    frame, start, pos, p = _dense_lattice_frame(seed)
    fit = fit_columns(frame, start, p, dose=1e4, noise="poisson", width="individual", crlb=False)
    assert fit.converged.all() and not fit.table["empty_site"].any()


def test_an_unrepairable_poisson_state_stops_the_frame_and_says_why(monkeypatch):
    # A negative background (forced here, with an empty-site event) leaves the Poisson model negative whatever the
    # heights: raising them cannot repair it. The frame stops, every column not converged, and the warning names
    # the cause (it used to be reported as "widths ran away ... give width_init": review helper-47).
    import stemquant.quant._fit as F

    real = F._empty_sites
    calls = {"n": 0}

    def forced(st, *args):
        calls["n"] += 1
        new_empty, release, eta_score, significant = real(st, *args)
        if calls["n"] == 2:
            st.glob[:, 0] = -1.0
            new_empty = new_empty.clone()
            new_empty[:, 5] = True
        return new_empty, release, eta_score, significant

    monkeypatch.setattr(F, "_empty_sites", forced)
    pos, shape = lattice(3)
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    noisy = np.random.default_rng(0).poisson(img * 1e4 * P * P) / (1e4 * P * P)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_columns(noisy, pos, P, dose=1e4, noise="poisson", crlb=False)
    assert not fit.converged.any()
    text = " ".join(str(w.message) for w in caught)
    assert "Poisson model went negative" in text and "widths ran away" not in text


@pytest.mark.slow
def test_a_nan_step_is_never_accepted_on_a_dense_lattice():
    # The real case (19 s): 12x12 columns 1.2 Å apart, ρ 0.45 Å, individual widths, Poisson at 10⁴ e⁻/Å². A runaway
    # reset left a negative-height neighbour uncompensated, the criterion became ∞, a NaN step was accepted and the
    # fit crashed (ValueError: cannot convert float NaN to integer). It converges now (measured 138 of 144, in 74
    # iterations; 4 runaways, flagged).
    frame, start, _, p = _dense_lattice_frame(18)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fit = fit_columns(frame, start, p, dose=1e4, noise="poisson", width="individual", crlb=False)
    assert fit.n_iter < 100 and fit.converged.mean() > 0.9


@pytest.mark.parametrize("restores, shape_change", [(2, 0.3), (2, 2.5), (1, 0.3)])
def test_a_column_restored_twice_gets_its_width_fixed(monkeypatch, restores, shape_change):
    # A real column removed as an empty site and restored twice, each time after it faded with its width free
    # (least squares at ~1 count per pixel: one converged as a 0.11 Å spike, its SCS 7.6 bounds off; the Pt
    # particle's single-atom rim columns at 5·10² e⁻/Å² widened and roamed until every frame hit max_iter), is
    # restored the second time with its width fixed at its start: flagged, warned, and the frame converges. Not
    # after one restore. The removals and the shrinking (0.3x) or widening (2.5x) are forced here.
    import stemquant.quant._fit as F
    import stemquant.quant._model as M

    real = F._empty_sites
    calls = {"n": 0}

    def forced(st, c0, rho0c, cb, g_eta, half_msr, noise, types, n_types, empty, released, done, seen):
        calls["n"] += 1
        remove = calls["n"] in (1, 3)[:restores]
        if remove:  # column 4 shrinks or widens ...
            st.col[:, 4, M.RHO] = rho0c[:, 4] * shape_change
        new_empty, release, eta_score, significant = real(st, c0, rho0c, cb, g_eta, half_msr, noise, types, n_types,
                                                          empty, released, done, seen)
        if remove:  # ... and is removed
            new_empty = new_empty.clone()
            new_empty[:, 4] = True
        elif calls["n"] in (2, 4)[:restores]:  # ... and restored at the next solve
            release = release.clone()
            release[:, 4] = True
        return new_empty, release, eta_score, significant

    monkeypatch.setattr(F, "_empty_sites", forced)
    pos, shape = lattice(3)
    rho = np.array([0.40, 0.42, 0.44, 0.46, 0.55, 0.46, 0.44, 0.42, 0.40])
    img = gaussian_image(pos, rho, 0.05, 0.005, shape)
    noisy = np.random.default_rng(0).poisson(img * 1e5 * P * P) / (1e5 * P * P)
    fixed = restores == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_columns(noisy, pos, P, dose=1e5, noise="poisson", width="individual", crlb=False, width_init=0.45)
    assert any("faded twice" in str(w.message) for w in caught) == fixed
    t = fit.table
    assert t["width_fixed"].tolist() == [False] * 4 + [fixed] + [False] * 4 and fit.info["widths_fixed"] == fixed
    assert fit.converged.all() and not t["runaway"].any()
    if fixed:  # at its start width, not at its own 0.55 Å; the others are fitted
        assert fit.widths[4] == pytest.approx(0.45, abs=1e-12)
    else:
        assert fit.widths[4] == pytest.approx(0.55, abs=0.02)
    np.testing.assert_allclose(fit.widths[[0, 8]], 0.40, atol=0.02)


def test_individual_widths_of_two_column_types_converge():
    # Half the columns 2.5x wider than the others, individual widths, least squares: the CG solves used to stop
    # after 1-2 iterations (a preconditioner that misjudges one coupled direction shrinks the first residual by
    # orders of magnitude) and 3 of 4 frames ran into max_iter. Nash-Sofer's decrease test keeps CG going.
    g = 2.0 + 2.5 * np.arange(5)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    t = (np.arange(len(pos)) < len(pos) // 2).astype(int)
    rho = np.where(t == 1, 0.75, 0.3)
    img = gaussian_image(pos, rho, 0.05, 0.005, (70, 70))
    noisy = np.random.default_rng(0).poisson(img * 1e4 * P * P, size=(4, 70, 70)) / (1e4 * P * P)
    fit = fit_columns(noisy, pos, P, crlb=False, width="individual", types=t, dose=1e4, noise="gaussian")
    assert fit.converged.all() and fit.n_iter.max() < 40
    assert np.abs(np.median(fit.widths / rho) - 1) < 0.02


def _two_width_lattice(p=0.1):
    """A 5×5 checkerboard of narrow (0.25 Å) and 3x wider (0.75 Å) columns of equal height, pixel size ``p``."""
    g = 2.0 + 2.5 * np.arange(5)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    t = np.arange(len(pos)) % 2
    rho = np.where(t == 1, 0.75, 0.25)
    return pos, t, rho, gaussian_image(pos, rho, 0.05, 0.005, (130, 130), p=p)


def test_start_width_per_column_type():
    from stemquant.quant._fit import _estimate_width

    pos, t, rho, img = _two_width_lattice()
    noisy = np.random.default_rng(0).poisson(img * 1e4 * 0.01, size=(2, 130, 130)).astype(float)
    c0 = np.broadcast_to(pos / 0.1 - 0.5, (2, *pos.shape))
    per_type = _estimate_width(noisy, c0, t)  # (frames, types) [px]
    single = _estimate_width(noisy, c0, np.zeros_like(t))[:, 0]
    truth = np.array([0.25, 0.75]) / 0.1
    assert per_type.shape == (2, 2) and np.all(per_type[:, 0] < per_type[:, 1])
    # each type's start is closer to its width than one start for both
    assert np.all(np.abs(per_type - truth) < np.abs(single[:, None] - truth))


def test_start_width_does_not_depend_on_the_order_of_the_positions():
    # A subsample of every k-th column followed the order: a SrTiO3-like image with its 324 positions listed cell by
    # cell (O, Sr, O, Ti, ...) got its joint start from the faint O columns alone (0.61 Å instead of 0.43 Å) and lost
    # every frame (review helper-34).
    from stemquant.quant._fit import _estimate_width

    a, p = 3.9, 0.2
    g = 1.5 + a * np.arange(9)
    X, Y = np.meshgrid(g, g)
    sr = np.c_[X.ravel(), Y.ravel()]
    pos = np.stack([sr + [a / 2, 0], sr, sr + [0, a / 2], sr + a / 2], 1).reshape(-1, 2)  # cell by cell
    types = np.tile([0, 2, 0, 1], len(sr))  # O, Sr, O, Ti
    rho = np.array([0.35, 0.40, 0.45])[types]
    eta = np.array([0.03, 0.45, 1.0])[types]
    size = int(np.ceil((1.5 + a * 9) / p))
    img = 0.05 + gaussian_image(pos, rho, eta, 0.0, (size, size), p=p)
    counts = np.random.default_rng(1).poisson(img * 2e4 * p * p)[None].astype(float)
    c0 = pos / p - 0.5
    order = np.argsort(types, kind="stable")  # the same columns listed type by type
    cell = _estimate_width(counts, c0[None], types)
    block = _estimate_width(counts, c0[order][None], types[order])
    assert np.array_equal(cell, block)


def test_two_column_types_of_different_widths_converge_quickly():
    # One start width for both types left both far off: 8-15 iterations per frame (least squares, common widths per
    # type) before per-type starts, 5 after; the fitted widths do not depend on the start.
    pos, t, rho, img = _two_width_lattice()
    rng = np.random.default_rng(0)
    noisy = rng.poisson(img * 1e4 * 0.01, size=(4, 130, 130)) / (1e4 * 0.01)
    start = pos + rng.normal(0, 0.05, pos.shape)
    fit = fit_columns(noisy, start, 0.1, crlb=False, width="common", types=t, dose=1e4, noise="gaussian")
    assert fit.converged.all() and fit.n_iter.max() <= 8
    # per-type common widths from 12-13 columns at ~5 counts per peak: a few per cent
    for k in (0, 1):
        assert abs(np.median(fit.widths[:, t == k]) / rho[t == k][0] - 1) < 0.05


def test_a_faint_column_type_gets_the_joint_start_width():
    # SrTiO3-like [001] projection: O columns at 3 % of the Sr height (~9 SCS standard errors here). Their own
    # volume/peak start was 1.8x too wide (their discs hold the bright neighbours' tails): 17 of 128 real O columns
    # were removed as empty sites and a frame ran into max_iter. Faint types start from the joint estimate.
    from stemquant.quant._fit import _estimate_width

    rng = np.random.default_rng(1)
    a, p, dose = 3.9, 0.2, 2e4
    g = 1.5 + a * np.arange(4)
    X, Y = np.meshgrid(g, g)
    sr = np.c_[X.ravel(), Y.ravel()]
    pos = np.r_[sr, sr + a / 2, sr + [a / 2, 0], sr + [0, a / 2]]
    types = np.repeat([38, 22, 8, 8], 16)  # labels as atomic numbers
    rho = np.select([types == 38, types == 22], [0.45, 0.40], 0.35)
    eta = np.select([types == 38, types == 22], [1.0, 0.45], 0.03)
    img = 0.05 + gaussian_image(pos, rho, eta, 0.0, (93, 93), p=p)
    c = dose * p * p
    stack = rng.poisson(np.broadcast_to(img, (4, 93, 93)) * c) / c
    start = pos + rng.normal(0, 0.1, pos.shape)
    c0 = np.broadcast_to(start / p - 0.5, (4, *pos.shape))
    index = np.unique(types, return_inverse=True)[1]
    joint = _estimate_width(stack * c, c0, np.zeros_like(index))[:, 0]
    assert np.allclose(_estimate_width(stack * c, c0, index)[:, 0], joint)  # O (label 8 -> type 0)
    fit = fit_columns(stack, start, p, dose=dose, noise="gaussian", width="common", types=types, crlb=False)
    assert fit.converged.all() and not fit.table["empty_site"].any()


def test_a_slowly_contracting_fit_is_not_reported_converged_far_from_the_optimum(monkeypatch):
    # Individual widths (±20 %) at 10³ e⁻/Å², least squares: the steps of one frame crawled along a flat direction.
    # A step of ~1e-3 CRLB passed the stopping test while the optimum was still 1.9 SCS-CRLB away, and the frame was
    # reported converged. Every frame reported converged must be within the documented ~1e-2 CRLB (0.05 allowed)
    # of the optimum, found here by the same fit with a 10¹⁰x stricter stopping threshold.
    import stemquant.quant._fit as F

    rng = np.random.default_rng(0)
    pos, _ = lattice(5)
    rho = 0.45 * (1 + 0.2 * rng.uniform(-1, 1, len(pos)))
    rng.uniform(-1, 1, len(pos))  # (the generator's state of the reproduction)
    img = gaussian_image(pos, rho, 0.05, 0.005, (60, 60))
    stack = rng.poisson(img * 1e3 * P * P, size=(40, 60, 60))[35:] / (1e3 * P * P)  # one batch of the 40
    # (before Newton steps were retried after a failed one, one frame stopped at max_iter = 100, 1.7 CRLB from the
    # optimum; it now converges in 99, so the frame may or may not reach max_iter: only converged frames are checked)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        fit = fit_columns(stack, pos, P, dose=1e3, noise="gaussian", width="individual", crlb=True, workers=1)
    monkeypatch.setattr(F, "_STOP_SHARE", 5e-15)
    ref = fit_columns(stack, pos, P, dose=1e3, noise="gaussian", width="individual", crlb=False, workers=1,
                      max_iter=300)
    t, r = fit.table, ref.table
    dev = np.abs(np.c_[(t.x - r.x) / t.x_crlb, (t.y - r.y) / t.y_crlb, (t.scs - r.scs) / t.scs_crlb])
    frame_ok = t.converged.to_numpy().reshape(5, -1).all(1)
    assert r.converged.all()
    assert np.all(dev.reshape(5, -1, 3).max(axis=(1, 2))[frame_ok] < 0.05)


def _poisson_stack(rng, n_frames, dose):
    """A 3×3 lattice, ``n_frames`` Poisson realisations at ``dose`` and one start (~0.25 px off) per frame."""
    pos, shape = lattice(3)
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    stack = rng.poisson(img * dose * P * P, size=(n_frames, *shape)) / (dose * P * P)
    return pos, stack, pos[None] + rng.normal(0, 0.05, (n_frames, *pos.shape))


def test_stack_equals_frame_by_frame_and_table_layout(rng):
    dose = 2e4
    pos, stack, per_frame_start = _poisson_stack(rng, 3, dose)
    fit = fit_columns(stack, per_frame_start, P, dose=dose, noise="poisson")
    assert fit.positions.shape == (3, len(pos), 2)
    t = fit.table
    assert list(t["frame"]) == list(np.repeat(np.arange(3), len(pos)))
    assert list(t["column"]) == list(np.tile(np.arange(len(pos)), 3))
    # Fits stop once a step moves parameters by < 1e-2 of their CRLB, and the window size can differ between a
    # stack and a single frame, so batched and single fits agree to a small fraction of the CRLB.
    sd = t["x_crlb"].to_numpy().reshape(3, -1)
    for b in range(3):
        single = fit_columns(stack[b], per_frame_start[b], P, dose=dose, noise="poisson", crlb=False)
        assert np.all(np.abs(single.positions[:, 0] - fit.positions[b, :, 0]) < 0.05 * sd[b])
        assert np.all(np.abs(single.scs - fit.scs[b]) < 0.05 * t["scs_crlb"].to_numpy().reshape(3, -1)[b])


def test_threaded_frame_batches_give_the_same_fit_and_bounds(rng):
    """workers only changes which thread fits a batch: same batches, same numbers (CRLB included), same order."""
    dose = 2e4
    _, stack, start = _poisson_stack(rng, 5, dose)
    kw = dict(dose=dose, noise="poisson", frames_per_batch=1, progress=False)
    one = fit_columns(stack, start, P, workers=1, **kw)
    three = fit_columns(stack, start, P, workers=3, **kw)
    pd.testing.assert_frame_equal(one.table, three.table, check_exact=True)
    np.testing.assert_array_equal(one.n_iter, three.n_iter)
    assert np.isfinite(three.table["x_crlb"]).all()


def test_an_error_in_one_batch_cancels_the_batches_not_started():
    """An error (or Ctrl-C) while fitting a long stack must not leave the other batches running to the end."""
    import threading
    import time

    from stemquant.quant._fit import _pool

    started = []
    lock = threading.Lock()

    def task(i):
        with lock:
            started.append(i)
        if i == 0:
            raise ValueError("bad batch")
        time.sleep(0.01)
        return i

    with pytest.raises(ValueError, match="bad batch"), _pool(2) as pool:
        list(pool.map(task, range(200)))
    assert len(started) < 20  # without cancelling, all 200 would run (~1 s); the few already running finish


def test_auto_noise_is_poisson_with_a_dose_and_least_squares_without(rng):
    dose = 2e4
    pos, stack, start = _poisson_stack(rng, 1, dose)
    img = stack[0]
    fits = {}
    for d, expected in ((dose, "poisson"), (None, "gaussian")):
        auto = fit_columns(img, start[0], P, dose=d, noise="auto", crlb=False)
        fits[expected] = fit_columns(img, start[0], P, dose=d, noise=expected, crlb=False)
        assert auto.noise == expected
        np.testing.assert_array_equal(auto.positions, fits[expected].positions)
    # the two criteria give visibly different estimates on this image (> 1 % of the CRLB), so the check can fail
    sd = column_crlb(pos, 0.45, 0.05, 0.005, img.shape, P, dose)["x_crlb"].to_numpy()
    assert np.max(np.abs(fits["poisson"].positions - fits["gaussian"].positions)[:, 0] / sd) > 0.01


def test_worker_count_defaults():
    """One worker per core (at most 8), none extra on a GPU or when torch threads are free."""
    import os

    from stemquant.quant._fit import _MIN_CPU_BATCHES, _n_workers

    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert _n_workers(None, 1, cpu) == min(cores, _MIN_CPU_BATCHES)
    assert _n_workers(None, None, cpu) == 1  # torch's own threads: no extra workers
    assert _n_workers(16, 1, cpu) == 16  # an explicit request is honoured (fit_columns caps it by the tasks)
    assert _n_workers(4, 1, gpu) == 1


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_workers_is_a_clear_error(workers):
    pos, shape = lattice(2)
    img = gaussian_image(pos, 0.45, 1.0, 0.1, shape)
    with pytest.raises(ValueError, match="workers"):
        fit_columns(img, pos, P, workers=workers, crlb=False)


def _efficiency_run(noise, width, dose, n_frames, rng, n=4):
    """z-scores (estimate - truth) / CRLB of x, y, SCS over frames and columns."""
    pos, shape = lattice(n)
    rho, eta, bg = 0.45, 0.05, 0.005
    img = gaussian_image(pos, rho, eta, bg, shape)
    counts = rng.poisson(img * dose * P * P, size=(n_frames, *shape))
    fit = fit_columns(counts / (dose * P * P), pos, P, dose=dose, noise=noise, width=width, crlb=False)
    assert fit.converged.all()
    cr = column_crlb(pos, rho, eta, bg, shape, P, dose, width=width)
    zx = (fit.positions[..., 0] - pos[:, 0]) / cr["x_crlb"].to_numpy()
    zy = (fit.positions[..., 1] - pos[:, 1]) / cr["y_crlb"].to_numpy()
    zs = (fit.scs - 2 * np.pi * eta * rho**2) / cr["scs_crlb"].to_numpy()
    return zx.ravel(), zy.ravel(), zs.ravel()


@pytest.mark.parametrize(("width", "dose"), [("common", 5e3), ("individual", 5e4)])
def test_poisson_ml_attains_the_crlb(width, dose, rng):
    # Efficiency >= 0.9 (the criterion) means mean(z²) <= 1.11. With 100 frames x 25 columns = 2,500
    # z-scores an efficient estimator has mean(z²) = 1 ± 0.028 (sd), so 1.11 lies 3.9 sd away: false-failure rate
    # ~5e-5 per check (neglecting the weak correlation of neighbouring columns). A least-squares fit (efficiency
    # ~0.82, benchmarks/RESULTS.md) fails it. Mean: sd 0.02, band 0.1 (5 sd).
    for z in _efficiency_run("poisson", width, dose, 100, rng, n=5):
        assert np.mean(z**2) < 1.11
        assert abs(z.mean()) < 0.1


@pytest.mark.slow
@pytest.mark.parametrize(
    "dose",
    [pytest.param(5e2, marks=pytest.mark.xfail(reason="~1 count per column peak: positions reach 0.88-0.90, and an "
                                                       "oracle ML fit (true width/background) only 0.89 — not the "
                                                       "asymptotic regime (benchmarks/RESULTS.md)", strict=False)),
     1e3, 5e3, 5e4, 5e5],
)
def test_poisson_ml_efficiency_over_doses(dose, rng):
    # 400 frames x 25 columns: sd of mean(z²) = 0.014, so efficiency >= 0.9 (mean z² <= 1.11) is checked at 7 sd.
    for z in _efficiency_run("poisson", "common", dose, 400, rng, n=5):
        assert np.mean(z**2) < 1.11


def test_least_squares_with_gaussian_noise_attains_the_gaussian_crlb(rng):
    pos, shape = lattice()
    rho, eta, bg, sigma = 0.45, 1.0, 0.1, 0.05
    img = gaussian_image(pos, rho, eta, bg, shape)
    stack = img + rng.normal(0, sigma, (40, *shape))
    fit = fit_columns(stack, pos, P, noise="gaussian", width="common", crlb=False)
    cr = column_crlb(pos, rho, eta, bg, shape, P, None, noise="gaussian", noise_sigma=sigma, width="common")
    z = (fit.positions[..., 0] - pos[:, 0]) / cr["x_crlb"].to_numpy()
    assert abs(z.var() - 1) < 0.25  # same 4.5-sd band as above


def test_crlb_matches_dense_autograd_fisher():
    """column_crlb against an independent dense Fisher matrix built with torch autograd on the full image."""
    pos = np.array([[2.0, 2.1], [3.7, 2.4], [2.9, 3.9]])
    shape, rho, eta, bg, dose = (30, 30), np.array([0.4, 0.5, 0.45]), np.array([0.05, 0.08, 0.06]), 0.01, 3e3
    yy, xx = torch.meshgrid(*(torch.arange(s, dtype=torch.float64) for s in shape), indexing="ij")
    yy, xx = (yy + 0.5) * P, (xx + 0.5) * P

    def lam(theta):
        x, y, e, r = (v[:, None, None] for v in theta[:-1].view(3, 4).unbind(1))
        f = theta[-1] + (e * torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * r**2))).sum(0)
        return (f * dose * P * P).reshape(-1)

    theta = torch.tensor(np.r_[np.c_[pos, eta, rho].ravel(), bg])
    J = torch.autograd.functional.jacobian(lam, theta)
    F = J.T @ (J / lam(theta)[:, None])
    cov = torch.linalg.inv(F).numpy()
    t = column_crlb(pos, rho, eta, bg, shape, P, dose, width="individual", truncation=8.0)  # tails < exp(-32)
    idx = np.arange(3) * 4
    np.testing.assert_allclose(t["x_crlb"], np.sqrt(cov[idx, idx]), rtol=1e-6)
    np.testing.assert_allclose(t["y_crlb"], np.sqrt(cov[idx + 1, idx + 1]), rtol=1e-6)
    g = np.zeros((3, len(theta)))
    g[np.arange(3), idx + 2] = 2 * np.pi * rho**2
    g[np.arange(3), idx + 3] = 4 * np.pi * eta * rho
    np.testing.assert_allclose(t["scs_crlb"], np.sqrt(np.einsum("ij,jk,ik->i", g, cov, g)), rtol=1e-6)


@pytest.mark.parametrize("offset", [0.0, 0.49])
def test_crlb_default_truncation_is_within_the_tail_bound(offset):
    """The default windows of 4 widths (those of fit_columns) change the bounds of untruncated Gaussians by no more
    than the information in the cut tails allows: with T the Fisher information of the pixels outside the window
    and F that of all pixels, F − T ≥ (1 − ε) F for ε the largest eigenvalue of F⁻¹T, so every variance (x, y and
    the SCS combination) grows by a factor in [1, 1/(1 − ε)]. Worst case: an isolated column with almost no
    background (every tail pixel weighs 1/λ ∝ 1/g), centred up to half a pixel off its window's centre pixel. The
    background is fixed: a free one is informed by every pixel and couples to the tails with either sign."""
    rho, eta, bg, dose, shape = 0.45, 0.05, 1e-7, 1e5, (80, 80)
    pos = np.array([[8.1 + offset * P, 7.9]])  # the window is centred on the nearest pixel: reaches 4ρ − offset
    yy, xx = np.meshgrid((np.arange(shape[0]) + 0.5) * P, (np.arange(shape[1]) + 0.5) * P, indexing="ij")
    dx, dy = xx - pos[0, 0], yy - pos[0, 1]
    g = np.exp(-(dx**2 + dy**2) / (2 * rho**2))
    lam = (bg + eta * g) * dose * P * P
    J = np.stack([eta * g * dx / rho**2, eta * g * dy / rho**2, g, eta * g * (dx**2 + dy**2) / rho**3],
                 -1).reshape(-1, 4) * dose * P * P  # (x, y, η, ρ)
    h = int(np.ceil(4.0 * rho / P))
    ci, cj = np.round(pos[0, ::-1] / P - 0.5).astype(int)
    inside = ((np.abs(np.arange(shape[0]) - ci) <= h)[:, None] & (np.abs(np.arange(shape[1]) - cj) <= h)).ravel()
    F = J.T @ (J / lam.reshape(-1, 1))
    T = J[~inside].T @ (J[~inside] / lam.reshape(-1, 1)[~inside])
    eps = float(np.max(np.linalg.eigvals(np.linalg.solve(F, T)).real))
    assert 0 < eps < 0.01
    kw = dict(width="individual", background_free=False)
    cut = column_crlb(pos, rho, eta, bg, shape, P, dose, truncation=4.0, **kw)
    full = column_crlb(pos, rho, eta, bg, shape, P, dose, truncation=20.0, **kw)  # the whole image
    ratio = (cut / full).to_numpy().ravel()
    assert np.all(ratio >= 1 - 1e-12) and np.all(ratio <= (1 - eps) ** -0.5 + 1e-12), (ratio, eps)


def test_fit_bounds_use_the_fit_windows():
    """fit_columns computes the CRLB of the model it fits: with the windows of its own ``truncation``."""
    pos, shape = lattice(3, spacing=1.8)
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    fit = fit_columns(img, pos, P, dose=1e4, noise="poisson", width="common", truncation=6.0)
    t = fit.table
    args = (fit.positions, fit.widths, fit.heights, fit.background, shape, P, 1e4)
    own = column_crlb(*args, width="common", truncation=6.0)
    default = column_crlb(*args, width="common")
    for name in ("x_crlb", "y_crlb", "scs_crlb"):
        np.testing.assert_allclose(t[name], own[name], rtol=1e-9)
        assert np.abs(t[name] / default[name] - 1).max() > 1e-9  # the windows differ, and so do the bounds


@pytest.mark.parametrize("width", ["common", "individual"])
@pytest.mark.parametrize("batched", [True, False])
def test_crlb_of_a_stack_is_that_of_each_frame(width, batched, monkeypatch):
    """Frames go through the CRLB in batched chunks with one coupling pattern (the union of the frames' overlapping
    windows, one slab order for all) or, when that pattern would cost too much, one by one: either way each frame's
    bounds equal those of the frame alone, also when its columns sit on other pixels (other windows, other
    overlaps), and a frame without a bound (a non-finite parameter, a negative Poisson intensity) gets NaN without
    touching the others."""
    from stemquant.quant import _crlb

    monkeypatch.setattr(_crlb, "_UNION_COST", math.inf if batched else 0.0)
    batch = []
    fisher = _crlb._fisher_blocks
    monkeypatch.setattr(_crlb, "_fisher_blocks", lambda *a: batch.append(a[2].shape[0]) or fisher(*a))
    rng = np.random.default_rng(5)
    pos, shape = lattice(5, spacing=1.9)
    B, N = 6, len(pos)
    xy = pos + rng.normal(0, 0.05, (B, N, 2))
    xy[2] += rng.uniform(-0.6, 0.6, (N, 2))  # 3 px: other windows and another set of overlapping pairs
    rho = np.full((B, N), 0.45) * (rng.uniform(0.9, 1.1, (B, N)) if width == "individual" else 1.0)
    eta = rng.uniform(0.03, 0.08, (B, N))
    zeta = np.full(B, 0.005)
    xy[3, 4, 0] = np.nan
    eta[4, 7] = -1.0  # λ < 0 around this column
    bad = (3, 4)
    kw = dict(dose=1e4, noise="poisson", noise_sigma=None, width=width, background_free=True,
              types=np.zeros(N, dtype=np.int64))
    out = _crlb.crlb_from_state(xy, rho, eta, zeta, shape, P, invalid="nan", **kw)
    assert max(batch) == (B - 1 if batched else 1)  # one chunk of the frames with finite parameters
    for f in range(B):
        one = _crlb.crlb_from_state(xy[f:f + 1], rho[f:f + 1], eta[f:f + 1], zeta[f:f + 1], shape, P, invalid="nan",
                                    **kw)
        for name in ("x_crlb", "y_crlb", "scs_crlb"):
            if f in bad:
                assert np.isnan(out[name][f]).all() and np.isnan(one[name][0]).all()
            else:
                np.testing.assert_allclose(out[name][f], one[name][0], rtol=1e-10, err_msg=f"{name}, frame {f}")
    for drop, match in ((3, "non-positive intensity"), (4, "non-finite")):
        with pytest.raises(ValueError, match=match):
            keep = np.setdiff1d(np.arange(B), drop)
            _crlb.crlb_from_state(xy[keep], rho[keep], eta[keep], zeta[keep], shape, P, **kw)


def test_crlb_frame_with_a_singular_fisher_matrix_leaves_its_chunk_alone():
    """A frame whose Fisher matrix is not positive definite (rounding decides for coincident columns, so here a
    diagonal block is made zero) is flagged by the block factorisations, and the selected inversion of its
    chunk still runs (a failed factor used to make cholesky_inverse raise for the whole chunk): the other frame's
    diagonal blocks equal those of a dense inverse."""
    from stemquant.quant import _crlb

    rng = np.random.default_rng(2)
    kl, ng, sizes = 3, 1, [2, 3, 2]  # columns per slab
    n = [k * kl for k in sizes]
    A = rng.normal(size=(sum(n) + ng, sum(n) + ng))
    F = A @ A.T + 0.5 * np.eye(len(A))
    F[np.ix_(range(n[0]), range(n[0] + n[1], sum(n)))] = 0.0  # slabs 0 and 2 do not interact
    F[np.ix_(range(n[0] + n[1], sum(n)), range(n[0]))] = 0.0
    F = F + (np.abs(F).sum(1).max()) * np.eye(len(F))  # positive definite after the cut
    Fb = np.stack([F, F])
    Fb[1, : n[0], : n[0]] = 0.0  # frame 1: a zero diagonal block (a zero pivot: what coincident columns can give)
    T = torch.as_tensor(Fb)
    o = np.cumsum([0] + n)
    Dk = [T[:, o[k]: o[k + 1], o[k]: o[k + 1]].contiguous() for k in range(3)]
    Sk = [T[:, o[k + 1]: o[k + 2], o[k]: o[k + 1]].contiguous() for k in range(2)]
    L, Lsub, bad_a = _crlb._block_cholesky(Dk, Sk)
    Z, S_inv, bad_s = _crlb._border_solve(L, Lsub, T[:, : o[3], o[3]:], T[:, o[3]:, o[3]:])
    cov, cross = _crlb._selected_inverse(L, Lsub, Z, S_inv, torch.arange(sum(sizes)), kl)
    assert bad_a.tolist() == [False, True]
    inv = np.linalg.inv(F)
    for c in range(sum(sizes)):
        np.testing.assert_allclose(cov[0, c].numpy(), inv[c * kl: (c + 1) * kl, c * kl: (c + 1) * kl], rtol=1e-10)
        np.testing.assert_allclose(cross[0, c, :, 0].numpy(), inv[c * kl: (c + 1) * kl, -1], rtol=1e-8, atol=1e-14)


def test_crlb_chunk_with_a_diverged_column_goes_frame_by_frame(monkeypatch):
    """One column that ran across the image in one frame would put every column between its two places into one
    slab for the whole chunk: the chunk goes frame by frame instead, with the same bounds."""
    from stemquant.quant import _crlb

    batch = []
    fisher = _crlb._fisher_blocks
    monkeypatch.setattr(_crlb, "_fisher_blocks", lambda *a: batch.append(a[2].shape[0]) or fisher(*a))
    pos, shape = lattice(10, spacing=2.0)
    B, N = 3, len(pos)
    xy = np.broadcast_to(pos, (B, N, 2)).copy()
    kw = dict(dose=1e4, noise="poisson", noise_sigma=None, width="common", background_free=True,
              types=np.zeros(N, dtype=np.int64))
    args = (np.full((B, N), 0.45), np.full((B, N), 0.05), np.full(B, 0.005), shape, P)
    _crlb.crlb_from_state(xy, *args, **kw)
    assert batch == [B]  # the same windows in every frame: one chunk
    batch.clear()
    xy[1, 0] = xy[1, -1] - 1.0  # the first column ran to the far corner (1 Å from the last one)
    out = _crlb.crlb_from_state(xy, *args, **kw)
    assert batch == [1] * B
    one = _crlb.crlb_from_state(xy[1:2], args[0][:1], args[1][:1], args[2][:1], shape, P, **kw)
    np.testing.assert_allclose(out["x_crlb"][1], one["x_crlb"][0], rtol=1e-10)


@pytest.mark.parametrize("width", ["individual", "common", "fixed"])
@pytest.mark.parametrize("apart", [0.0, 1e-9, 1e-3])
def test_crlb_of_coincident_columns_has_no_information(width, apart):
    """Two columns of one width less than ~0.001 Å apart make F numerically singular: the bound is either refused
    (the clear error; NaN in ``fit_columns``) or says "undetermined". Their difference is informed ∝ d², so the
    bound grows as 1/d: from its value 0.07 Å apart, ≥ 70× larger at 0.001 Å; asserted ≥ 10×."""
    pos = np.array([[2.0, 2.0], [2.0 + apart, 2.0], [3.8, 2.1]])
    ref = column_crlb(pos + [[0, 0], [0.07, 0], [0, 0]], 0.45, 0.05, 0.005, (30, 30), P, 1e4, width=width)
    assert np.isfinite(ref.to_numpy()).all()  # 0.07 Å apart: a large but meaningful bound
    try:
        t = column_crlb(pos, 0.45, 0.05, 0.005, (30, 30), P, 1e4, width=width)
    except ValueError as e:
        assert "singular" in str(e)
    else:
        assert (t.loc[:1, "x_crlb"] >= 10 * ref.loc[:1, "x_crlb"]).all()


def test_column_narrower_than_half_a_pixel_is_not_converged():
    """A Gaussian narrower than ~half a pixel has no determined volume at pixel-centre samples (its sampled sum is
    4x or 1/30 of 2πρ² at 0.2 px, depending on where its centre sits): such a column (e.g. one shrunk onto a noisy
    pixel) is fitted but not reported converged; one 0.6 px wide is. Both carry the volume of the others."""
    pos, shape = lattice(3, spacing=2.0)
    rho, eta = np.full(len(pos), 0.45), np.full(len(pos), 0.05)
    rho[4], rho[7] = 0.3 * P, 0.6 * P  # 0.3 px and 0.6 px
    eta[[4, 7]] = 0.05 * (0.45 / rho[[4, 7]]) ** 2
    img = gaussian_image(pos, rho, eta, 0.005, shape)
    types = np.zeros(len(pos), dtype=int)
    types[4], types[7] = 1, 2  # a start width per type
    with pytest.warns(UserWarning, match="1 of 9 columns did not converge"):
        fit = fit_columns(img, pos, P, dose=1e4, noise="poisson", width="individual", types=types, crlb=False)
    others = np.r_[0:4, 5:7, 8]
    np.testing.assert_allclose(fit.widths[np.r_[others, 7]], rho[np.r_[others, 7]], rtol=1e-3)  # noise-free
    assert fit.widths[4] < 0.5 * P  # the sub-pixel one ends below half a pixel (not exactly 0.3 px: ill-posed)
    assert not fit.converged[4] and fit.converged[np.r_[others, 7]].all()


def test_crlb_scales_with_dose():
    pos, shape = lattice(3)
    a = column_crlb(pos, 0.45, 0.05, 0.005, shape, P, 1e3)
    b = column_crlb(pos, 0.45, 0.05, 0.005, shape, P, 1e5)
    # Poisson Fisher information is proportional to dose: bounds (sd) shrink by sqrt(100) = 10
    np.testing.assert_allclose(a.to_numpy() / b.to_numpy(), 10.0, rtol=1e-9)


def test_fit_table_has_contract_columns():
    pos, shape = lattice(2)
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    fit = fit_columns(img, pos, P, dose=1e4)
    cols = {"frame", "column", "x", "y", "width", "height", "scs", "x_crlb", "y_crlb", "scs_crlb", "converged",
            "background"}
    assert cols <= set(fit.table.columns)
    assert isinstance(fit.table, pd.DataFrame)
    assert np.all(fit.table[["x_crlb", "y_crlb", "scs_crlb"]].to_numpy() > 0)


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
@pytest.mark.parametrize("width", [0.45, "common"])
def test_empty_site_gives_zero_scs_within_its_bound(noise, width, rng):
    pos, shape = lattice(3)
    img = gaussian_image(pos[1:], 0.45, 0.05, 0.005, shape)  # no atom column at pos[0]
    dose = 1e4
    for _ in range(3):
        counts = rng.poisson(img * dose * P * P)
        fit = fit_columns(counts / (dose * P * P), pos, P, dose=dose, noise=noise, width=width)
        t = fit.table
        # the empty site is removed from the model (a start whose height is within 1 standard error of 0, or
        # within 3 and roaming): SCS 0, no bound; else its SCS is 0 within 4 of its bounds (false failure 6e-5).
        # Real columns stand far above; direct neighbours of a site kept in the model (index 1 and 3 in the 3x3
        # lattice) share intensity with the phantom Gaussian, which raises their SCS bound (~3x), so the 10-sd
        # check is made on the others.
        if t.loc[0, "empty_site"]:
            assert t.loc[0, "scs"] == 0 and np.isnan(t.loc[0, "scs_crlb"]) and not t.loc[0, "converged"]
        else:
            assert abs(t.loc[0, "scs"]) < 4 * t.loc[0, "scs_crlb"]
        far = [2, 4, 5, 6, 7, 8]
        assert np.all(t.loc[far, "scs"] > 10 * t.loc[far, "scs_crlb"])
        assert t.loc[1:, "converged"].all() and not t.loc[1:, "empty_site"].any()


def test_one_bad_frame_does_not_stop_the_others(rng):
    pos, shape = lattice(3)
    good = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    wide = gaussian_image(pos, 0.45, 0.05, 0.005, shape) + gaussian_image(pos[:1], 1.8, 0.05, 0.0, shape)
    dose = 2e4
    frames = rng.poisson(np.stack([good, wide, good]) * dose * P * P) / (dose * P * P)
    fit = fit_columns(frames, pos, P, dose=dose, noise="poisson", width="individual", width_init=0.45, crlb=False)
    assert fit.converged[0].all() and fit.converged[2].all()
    single = fit_columns(frames[2], pos, P, dose=dose, noise="poisson", width="individual", width_init=0.45,
                         crlb=False)
    np.testing.assert_allclose(single.positions, fit.positions[2], atol=0.01 * P)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"image": np.full((20, 20), np.nan)}, "NaN"),
        ({"image": np.where(np.eye(20, dtype=bool), np.inf, 1.0)}, "Inf"),
        ({"image": np.ones((2, 3, 4, 5))}, "shape"),
        ({"pixel_size": 0.0}, "pixel_size"),
        ({"pixel_size": -1.0}, "pixel_size"),
        ({"dose": -5.0}, "dose"),
        ({"positions": [[100.0, 1.0]]}, "outside"),
        ({"positions": [[1.0, 1.0, 1.0]]}, "shape"),
        ({"width": "wide"}, "width"),
        ({"noise": "laplace"}, "noise"),
        ({"max_iter": 0}, "max_iter"),
        ({"noise": "poisson", "background": 0.0}, "positive background"),
        ({"image": -np.ones((20, 20)), "noise": "poisson"}, "non-negative"),
        ({"image": np.full((20, 20), 40.0), "dose": 5e3}, "counts"),  # counts declared normalised by a dose
    ],
)
def test_bad_input_raises(kwargs, match):
    args = {"image": np.ones((20, 20)), "positions": [[2.0, 2.0]], "pixel_size": P}
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        fit_columns(args.pop("image"), args.pop("positions"), args.pop("pixel_size"), **args)


@pytest.mark.parametrize("background", [None, True, "0.1"])
def test_background_neither_fit_nor_a_number_raises(background):
    # True would otherwise fix the background at 1.0 without a word
    with pytest.raises((TypeError, ValueError), match="background"):
        fit_columns(np.ones((20, 20)), [[2.0, 2.0]], P, background=background)


@pytest.mark.parametrize("noisy", [False, True])
def test_two_starts_on_one_column(noisy):
    # A duplicated (or near-duplicated) start row splits one column's SCS between two Gaussians and shifts every
    # count downstream: refused before the fit. A start 0.25-0.3 Å off a column (individual widths) ends as a
    # second Gaussian on that column (noise-free: both on the centre, reported converged before; at 1e3 e⁻/Å² it
    # widened away from the others and stopped the frame) — never reported converged; at 1e3 e⁻/Å² it is now
    # removed as an empty site and the column fitted alone.
    import warnings

    pos, shape = lattice()
    img = gaussian_image(pos, 0.45, 1.0, 0.1, shape)
    if noisy:
        img = np.random.default_rng(1).poisson(img * 1e3 * P * P) / (1e3 * P * P)
    for extra in (pos[5], pos[5] + [0.15, 0.0]):
        with pytest.raises(ValueError, match="less than one pixel"):
            fit_columns(img, np.vstack([pos, extra]), P, crlb=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = fit_columns(img, np.vstack([pos, pos[5] + ([0.3, 0.0] if noisy else [0.25, 0.0])]), P, crlb=False,
                          width="individual", dose=1e3 if noisy else None)
    if fit.table["empty_site"].iloc[-1]:
        # the second Gaussian is not significant: removed as an empty site (noisy case), and column 5 is a single
        # Gaussian again: converged, its SCS within 5 of its bounds (false failure ~6e-7)
        assert fit.converged[5] and not fit.converged[-1]
        t = fit_columns(img, pos, P, width="individual", dose=1e3 if noisy else None).table
        true_scs = 2 * np.pi * 1.0 * 0.45**2
        assert abs(fit.scs[5] - true_scs) < 5 * t.loc[5, "scs_crlb"]
        assert any("1 of them empty sites" in str(w.message) for w in caught)
    else:
        assert not fit.converged[5] and not fit.converged[-1]
        # flagged as collapsed, or the spurious Gaussian's width ran away and stopped the frame
        assert any("collapsed onto a neighbour" in str(w.message) or "no column under it" in str(w.message)
                   for w in caught)


def test_units_contradicting_the_dose(rng):
    # A counts image given a dose would get CRLBs ~sqrt(dose·p²) too small: refused (mean > whole beam). A
    # normalised image fitted as counts (Poisson without dose) gets meaningless weights and bounds: warned.
    import warnings

    pos, shape = lattice(3)
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    dose = 2e4
    counts = rng.poisson(img * dose * P * P).astype(float)
    with pytest.raises(ValueError, match="looks like detector counts"):
        fit_columns(counts, pos, P, dose=dose, crlb=False)
    # at low dose the counts' mean is below 1, but only counts are all whole numbers (c = dose·p² = 5 and 0.4)
    for low in (125.0, 10.0):
        low_counts = rng.poisson(img * low * P * P).astype(float)
        assert low_counts.mean() < 1.5
        with pytest.raises(ValueError, match="low dose"):
            fit_columns(low_counts, pos, P, dose=low, crlb=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a 10 e⁻/Å² fit may not converge; only the units matter here
            fit_columns(low_counts / (low * P * P), pos, P, dose=low, crlb=False)  # normalised: accepted
    with pytest.warns(UserWarning, match="pass dose"):
        fit_columns(counts / (dose * P * P), pos, P, noise="poisson", crlb=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the right declarations pass silently
        fit_columns(counts, pos, P, noise="poisson", crlb=False)
        fit_columns(counts / (dose * P * P), pos, P, dose=dose, crlb=False)


def test_least_squares_at_a_few_counts_per_pixel_warns(rng):
    # 10³ e⁻/Å² at 0.2 Å pixels: ~0.5 counts per pixel, where least squares with individual widths reported columns
    # shrunk onto a few pixels converged, SCS 5-8 bounds off (Poisson ML on the same frames: none past 5)
    pos, shape = lattice(3)
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    noisy = rng.poisson(img * 1e3 * P * P) / (1e3 * P * P)
    with pytest.warns(UserWarning, match="least squares on 0.[0-9]+ counts per pixel"):
        fit_columns(noisy, pos, P, dose=1e3, noise="gaussian", crlb=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Poisson ML, or least squares at 10⁵ e⁻/Å² (~40 counts per pixel): silent
        fit_columns(noisy, pos, P, dose=1e3, noise="poisson", crlb=False)
        fit_columns(rng.poisson(img * 1e5 * P * P) / (1e5 * P * P), pos, P, dose=1e5, noise="gaussian", crlb=False)


def test_crlb_bad_input():
    with pytest.raises(ValueError, match="outside"):
        column_crlb([[50.0, 1.0]], 0.4, 1.0, 0.1, (20, 20), P, 1e3)
    with pytest.raises(ValueError, match="dose"):
        column_crlb([[1.0, 1.0]], 0.4, 1.0, 0.1, (20, 20), P, 0.0)
    with pytest.raises(ValueError, match="positive"):
        column_crlb([[1.0, 1.0]], 0.4, 1.0, 0.0, (20, 20), P, 1e3)
    with pytest.raises(ValueError, match="background"):
        column_crlb([[1.0, 1.0]], 0.4, 1.0, np.nan, (20, 20), P, 1e3)
    with pytest.raises(ValueError, match="shape"):
        column_crlb([[1.0, 1.0]], 0.4, 1.0, 0.1, (20.5, 20), P, 1e3)


@pytest.mark.parametrize(("noise", "width"), [("poisson", "common"), ("gaussian", "individual")])
def test_newton_steps_reach_the_gauss_newton_optimum(noise, width, rng, monkeypatch):
    # Near the optimum the engine switches from Gauss–Newton / Fisher scoring to Newton steps (same fixed point,
    # faster convergence). Both stop when their last step moved every column by < ~1e-2 of its statistical
    # uncertainty (share ≤ 5e-5); Gauss–Newton converges linearly with a rate ≲ 0.2 here, so each path ends within
    # ~0.01/(1 − 0.2) ≈ 0.013 CRLB of the exact optimum and the two within 0.03 CRLB of each other.
    from stemquant.quant import _fit

    pos, shape = lattice(5)
    dose = 5e3
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    stack = rng.poisson(img * dose * P * P, size=(20, *shape)) / (dose * P * P)
    start = pos + rng.normal(0, 0.05, pos.shape)
    kw = dict(dose=dose, noise=noise, width=width, crlb=False, progress=False)
    newton = fit_columns(stack, start, P, **kw)
    monkeypatch.setattr(_fit, "_NEWTON", False)
    gn = fit_columns(stack, start, P, **kw)
    assert newton.converged.all() and gn.converged.all()
    assert newton.n_iter.mean() < gn.n_iter.mean()  # fails if the Newton branch never runs (then identical)
    cr = column_crlb(pos, 0.45, 0.05, 0.005, shape, P, dose, width=width)
    dx = np.abs(newton.positions - gn.positions) / cr[["x_crlb", "y_crlb"]].to_numpy()
    ds = np.abs(newton.scs - gn.scs) / cr["scs_crlb"].to_numpy()
    assert dx.max() < 0.03 and ds.max() < 0.03


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_windows_recentred_on_a_large_trial_step_give_the_same_fit(noise, rng, monkeypatch):
    # Starts ~1 px off: the first step carries columns > 1 px from their windows' centres. The windows are then
    # re-centred on the trial (whose render is the one on the new windows) instead of on the accepted state with a
    # render of its own: one render fewer, and the same windows, model and fit as re-centring afterwards.
    from stemquant.quant import _fit, _model

    pos, shape = lattice(5)
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    stack = rng.poisson(img * 5e3 * P * P, size=(3, *shape)) / (5e3 * P * P)
    start = pos + rng.choice([-1.0, 1.0], pos.shape) * 0.2  # 1 px
    renders = []
    render = _model.render
    monkeypatch.setattr(_model, "render", lambda *a: renders.append(1) or render(*a))
    # (a start width a little wider than the true one: windows that must grow are re-cut after the step anyway)
    kw = dict(dose=5e3, noise=noise, width_init=0.47, crlb=False, progress=False, workers=1)
    merged = fit_columns(stack, start, P, **kw)
    n_merged = len(renders)
    monkeypatch.setattr(_fit, "_RECENTRE_SHARE", np.inf)
    after = fit_columns(stack, start, P, **kw)
    assert merged.converged.all() and after.converged.all()
    assert n_merged < len(renders) - n_merged  # fails if the trial never re-centres the windows
    np.testing.assert_allclose(merged.positions, after.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(merged.scs, after.scs, rtol=1e-12)
    assert (merged.n_iter == after.n_iter).all()


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_last_newton_step_taken_unchecked_reports_the_true_criterion(noise, rng, monkeypatch):
    # A Newton step that follows one whose quadratic model held, and whose predicted next share already meets the
    # stop, is the last: it is taken without a render and the criterion reported is the predicted one. Its error is
    # third order in a tiny step: far below 0.01 (log-likelihood units, or σ² for least squares), i.e. 1/50 of the
    # change a 1-CRLB move of one parameter makes (0.5).
    from stemquant.quant import _fit, _model

    pos, shape = lattice(5)
    dose = 1e4
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    counts = rng.poisson(img * dose * P * P)
    start = pos + rng.normal(0, 0.05, pos.shape)
    events = []
    render, solve = _model.render, _fit._solve_step
    monkeypatch.setattr(_model, "render", lambda *a: events.append("render") or render(*a))
    monkeypatch.setattr(_fit, "_solve_step", lambda *a, **k: events.append("solve") or solve(*a, **k))
    # truncation 6: the windowed model equals the dense one below (tails < exp(-18) of a peak)
    fit = fit_columns(counts / (dose * P * P), start, P, dose=dose, noise=noise, truncation=6.0, crlb=False)
    assert fit.converged.all()
    assert events[-1] == "solve"  # the last step was not rendered (fails without the rule: its trial render)
    f = gaussian_image(fit.positions, fit.widths, fit.heights, fit.background, shape) * dose * P * P
    if noise == "poisson":
        true = np.sum(f - counts + np.where(counts > 0, counts * np.log(np.maximum(counts, 1) / f), 0.0))
        unit = 1.0
    else:
        true = 0.5 * np.sum((counts - f) ** 2)
        unit = 2 * true / counts.size
    assert abs(float(fit.objective) - true) < 0.01 * unit


@pytest.mark.parametrize("noise", ["gaussian", "poisson"])
def test_float32_fit_matches_float64(noise, rng):
    # dtype=float32 (the fast working precision on GPUs) is the same algorithm: both stop within ~0.013 CRLB of the
    # optimum (see the Newton test), so within 0.03 of each other, and report the same criterion to float32
    # rounding. (A Poisson constant clamped at 1e-300, which is 0 in float32, made every criterion inf.)
    pos, shape = lattice(4)
    dose = 5e3
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape)
    stack = rng.poisson(img * dose * P * P, size=(4, *shape)) / (dose * P * P)
    start = pos + rng.normal(0, 0.05, pos.shape)
    kw = dict(dose=dose, noise=noise, crlb=False, progress=False)
    f64 = fit_columns(stack, start, P, **kw)
    f32 = fit_columns(stack, start, P, dtype=torch.float32, **kw)
    assert f64.converged.all() and f32.converged.all()
    cr = column_crlb(pos, 0.45, 0.05, 0.005, shape, P, dose)
    dx = np.abs(f32.positions - f64.positions) / cr[["x_crlb", "y_crlb"]].to_numpy()
    ds = np.abs(f32.scs - f64.scs) / cr["scs_crlb"].to_numpy()
    assert dx.max() < 0.03 and ds.max() < 0.03
    assert np.all(np.abs(f32.objective / f64.objective - 1) < 1e-4)


def test_a_fit_leaves_no_inference_tensors_behind():
    # The fit runs in torch.inference_mode; the model's cached constants are built outside it, so the model
    # functions still work with autograd afterwards (an inference tensor cannot be saved for backward).
    from stemquant.quant import _model as M

    pos, shape = lattice(3)
    fit_columns(gaussian_image(pos, 0.45, 0.05, 0.005, shape), pos, P, crlb=False, progress=False)
    assert not any(v.is_inference() for v in M._CONSTANTS.values())
    for dt in (torch.float32, torch.float64):
        X = torch.randn(1, 2, 5, 5, dtype=dt, requires_grad=True)
        M.curvature_blocks(X, torch.ones(1, 2, dtype=dt), torch.full((1, 2), 2.0, dtype=dt)).sum().backward()
        assert X.grad is not None and torch.isfinite(X.grad).all()


def _dense_crlb(pos, rho, eta, bg, shape, dose, noise, sigma, width, bg_free, types):
    """Reference: dense full-image Jacobian (no windows) and a dense inverse of the Fisher matrix."""
    yy, xx = (np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5) * P
    n = len(pos)
    cols, f = [], np.full(shape, float(bg))
    drho = []
    for (x, y), r, e in zip(pos, rho, eta, strict=True):
        g = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * r**2))
        f = f + e * g
        cols += [e * g * (xx - x) / r**2, e * g * (yy - y) / r**2, g]
        d = e * g * ((xx - x) ** 2 + (yy - y) ** 2) / r**3
        if width == "individual":
            cols.append(d)
        drho.append(d)
    kl = 4 if width == "individual" else 3
    if width == "common":
        cols += [sum(d for d, t in zip(drho, types, strict=True) if t == k) for k in range(types.max() + 1)]
    if bg_free:
        cols.append(np.ones(shape))
    J = np.stack([c.ravel() for c in cols], 1) * (dose * P * P if dose else 1.0)
    w = 1.0 / (f.ravel() * dose * P * P) if noise == "poisson" else np.full(f.size, 1.0 / (sigma * dose * P * P) ** 2)
    F = J.T @ (J * w[:, None])
    known = np.diag(F) > 1e-14 * np.diag(F).max()
    cov = np.full(F.shape, 0.0)
    cov[np.ix_(known, known)] = np.linalg.inv(F[np.ix_(known, known)])
    cov[~known, ~known] = np.inf
    base = np.arange(n) * kl
    g = np.zeros((n, len(F)))
    g[np.arange(n), base + 2] = 2 * np.pi * rho**2
    if width == "individual":
        g[np.arange(n), base + 3] = 4 * np.pi * eta * rho
    elif width == "common":
        g[np.arange(n), n * kl + types] = 4 * np.pi * eta * rho
    with np.errstate(invalid="ignore"):
        scs = np.sqrt(np.einsum("ij,jk,ik->i", g, np.where(np.isinf(cov), 0, cov), g))
    return np.sqrt(cov[base, base]), np.sqrt(cov[base + 1, base + 1]), scs


@pytest.mark.parametrize("width, bg_free, noise", [("individual", True, "poisson"), ("common", True, "poisson"),
                                                   ("common", False, "gaussian"), ("fixed", True, "poisson"),
                                                   ("fixed", False, "poisson")])
def test_crlb_selected_inversion_matches_dense_inverse(width, bg_free, noise):
    """The block-tridiagonal selected inversion (several slabs, two column types, a column without information)
    gives the bounds of a dense inverse of the full-image Fisher matrix."""
    rng = np.random.default_rng(3)
    g = 2.0 + 2.0 * np.arange(9)
    X, Y = np.meshgrid(g, g[:7])
    pos = np.c_[X.ravel(), Y.ravel()] + rng.normal(0, 0.1, (63, 2))
    shape = (90, 110)
    types = (np.arange(63) % 3 == 0).astype(int)
    rho = np.where(types == 1, 0.5, 0.42) * (1 + (width == "individual") * rng.uniform(-0.1, 0.1, 63))
    eta = rng.uniform(0.03, 0.08, 63)
    eta[10] = 0.0  # no information on its position: infinite x/y bound, as a dense inverse without it
    dose, sigma = 2e4, 0.002
    t = column_crlb(pos, rho, eta, 0.005, shape, P, dose, noise=noise, noise_sigma=sigma, width=width,
                    background_free=bg_free, types=types, truncation=7.0)  # windows of 7 widths: tails < exp(-24)
    ref = _dense_crlb(pos, rho, eta, 0.005, shape, dose, noise, sigma, width, bg_free, types)
    for name, r in zip(("x_crlb", "y_crlb", "scs_crlb"), ref, strict=True):
        np.testing.assert_allclose(t[name], r, rtol=1e-6, err_msg=name)
    assert np.isinf(t.loc[10, "x_crlb"]) and np.isfinite(t.loc[10, "scs_crlb"])


def test_fit_without_a_valid_crlb_keeps_the_fit_and_warns():
    """A fitted model whose Poisson bound does not exist (a least-squares fit with the background fixed at 0: zero
    intensity far from the columns) gives NaN bounds and a warning, not an exception that loses the fit;
    column_crlb still raises."""
    pos, _ = lattice(2, margin=2.0)
    shape = (60, 60)  # pixels beyond every column's 5-width window have λ = 0
    img = gaussian_image(pos, 0.45, 0.05, 0.0, shape)
    with pytest.warns(UserWarning, match="non-positive intensity"):
        fit = fit_columns(img, pos, P, dose=1e4, noise="gaussian", background=0.0)
    assert fit.table[["x_crlb", "y_crlb", "scs_crlb"]].isna().all().all()
    np.testing.assert_allclose(fit.positions, pos, atol=1e-4)
    with pytest.raises(ValueError, match="non-positive intensity"):
        column_crlb(pos, 0.45, 0.05, 0.0, shape, P, 1e4)


def test_unconverged_fit_warns(rng):
    """Least squares at < 1 count per pixel diverges (flagged, with a hint to use Poisson ML)."""
    g = 1.96 * (np.arange(6) + 1)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    p, dose = 0.14, 200.0
    img = gaussian_image(pos, 0.40, 0.05, 0.005, (98, 98), p=p)
    counts = np.random.default_rng(0).poisson(img * dose * p * p)
    with pytest.warns(UserWarning, match="did not converge.*noise='poisson'"):
        fit = fit_columns(counts / (dose * p * p), pos, p, dose=dose, noise="gaussian", crlb=False)
    assert not fit.converged.all()


def test_spurious_border_starts_are_empty_sites():
    """Starts on pure background at the border (spurious peaks) used to wander outside the image, describing a tail of
    noise and taking part of a neighbour's intensity (6 CRLB of position bias). Their heights are not significant:
    they are removed as empty sites (height 0, position at the start, flagged), and every real column is
    unaffected."""
    p, dose = 0.14, 5e3
    g = 1.96 * (np.arange(8) + 1)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    img = gaussian_image(pos, 0.40, 0.05, 0.005, (126, 126), p=p)
    start = np.r_[pos, [[17.63, 17.56], [0.0, 17.63]]]  # no column near these two border points
    counts = np.random.default_rng(0).poisson(img * dose * p * p)
    with pytest.warns(UserWarning, match="2 of them empty sites"):
        fit = fit_columns(counts / (dose * p * p), start, p, dose=dose, noise="poisson", crlb=False)
    assert fit.table["empty_site"].to_numpy()[-2:].all() and not fit.converged[-2:].any()
    np.testing.assert_allclose(fit.positions[-2:], start[-2:])  # held at the start
    assert np.all(fit.heights[-2:] == 0) and np.all(fit.scs[-2:] == 0)
    assert fit.converged[:-2].all() and not fit.table["empty_site"].to_numpy()[:-2].any()
    # every real column within 5 CRLB of the truth (false failure ~1e-4 over 128 coordinates)
    cr = column_crlb(pos, 0.40, 0.05, 0.005, (126, 126), p, dose, width="common")
    z = (fit.positions[:-2] - pos) / cr[["x_crlb", "y_crlb"]].to_numpy()
    assert np.abs(z).max() < 5


def test_column_fitted_outside_the_image_is_not_converged():
    """A column whose fitted centre lies outside the image (here a real column centred 0.25 Å beyond the left edge,
    started inside it) is not reported converged, with a warning; the other columns are."""
    p, dose = 0.14, 5e3
    g = 1.96 * (np.arange(6) + 1)
    X, Y = np.meshgrid(g, g)
    pos = np.r_[np.c_[X.ravel(), Y.ravel()], [[-0.25, 6.0]]]
    img = gaussian_image(pos, 0.40, 0.05, 0.005, (98, 98), p=p)
    start = np.r_[pos[:-1], [[0.05, 6.0]]]
    counts = np.random.default_rng(0).poisson(img * dose * p * p)
    with pytest.warns(UserWarning, match="moved outside the image"):
        fit = fit_columns(counts / (dose * p * p), start, p, dose=dose, noise="poisson", crlb=False)
    assert fit.positions[-1, 0] < 0 and not fit.converged[-1]
    assert fit.converged[:-1].all()


@pytest.mark.parametrize("width, bg_free, noise", [("individual", False, "poisson"), ("individual", True, "gaussian"),
                                                   ("common", True, "poisson"), ("fixed", True, "poisson")])
def test_crlb_irregular_layout_matches_dense_inverse(width, bg_free, noise):
    """Selected inversion on an irregular layout: random positions (>= 1.5 Å apart), columns at the corners and on an
    edge (windows past the border), a pair 1 width apart, a type with a single column. With windows of 7 widths the
    truncation is negligible and the bounds equal those of the dense full-image inverse to rounding."""
    from stemquant.quant._crlb import crlb_from_state

    rng = np.random.default_rng(0)
    pts = [[0.02, 0.02], [13.98, 11.98], [0.0, 6.0], [6.0, 6.0], [6.45, 6.1]]
    for q in rng.uniform((0, 0), (14, 12), (300, 2)):
        if np.hypot(*(np.array(pts) - q).T).min() >= 1.5:
            pts.append(q)
    pos, shape, n = np.array(pts), (60, 70), len(pts)
    types = rng.integers(0, 2, n)
    types[1] = 2
    rho = rng.uniform(0.4, 0.5, n) if width == "individual" else np.array([0.42, 0.48, 0.4])[types]
    eta, dose, sigma = rng.uniform(0.03, 0.08, n), 2e4, 0.002
    out = crlb_from_state(pos[None], rho[None], eta[None], np.array([0.005]), shape, P, dose=dose, noise=noise,
                          noise_sigma=np.array([sigma]), width=width, background_free=bg_free, types=types,
                          truncation=7.0)
    ref = _dense_crlb(pos, rho, eta, 0.005, shape, dose, noise, sigma, width, bg_free, types)
    for name, r in zip(("x_crlb", "y_crlb", "scs_crlb"), ref, strict=True):
        np.testing.assert_allclose(out[name][0], r, rtol=1e-9, err_msg=name)


@pytest.mark.parametrize("types", [[0, -1], [0.0, 1.0], [0.7, 1.2], [0, 1, 1], [[0, 1]]])
def test_crlb_rejects_bad_types(types):
    """Column types are validated as in fit_columns (float types were silently truncated to integers)."""
    with pytest.raises(ValueError, match="types"):
        column_crlb([[2.0, 2.0], [4.0, 2.5]], 0.45, 0.05, 0.005, (40, 40), P, 2e4, width="common", types=types)


def _dip_image():
    pos, shape = lattice(3)
    dip = np.array([4.5, 0.9])
    yy, xx = (np.mgrid[0 : shape[0], 0 : shape[1]] + 0.5) * P
    img = gaussian_image(pos, 0.45, 0.05, 0.005, shape) - 0.02 * np.exp(
        -((xx - dip[0]) ** 2 + (yy - dip[1]) ** 2) / (2 * 0.45**2))
    return img, pos, dip, shape


def test_converged_columns_keep_their_crlb_when_a_diverged_column_breaks_the_model(monkeypatch):
    """A column fitted with a negative height deep enough to make the model intensity negative (here a dip put
    into a least-squares image, with the removal of empty sites switched off: it now removes such a column) leaves
    no Poisson bound for the frame as a whole; the converged columns keep theirs, computed from the model without
    the unconverged column, i.e. those of the other columns alone."""
    from stemquant.quant import _fit

    monkeypatch.setattr(_fit, "_Z_NONE", -np.inf)
    monkeypatch.setattr(_fit, "_Z_EMPTY", -np.inf)
    img, pos, dip, shape = _dip_image()
    with pytest.warns(UserWarning, match="converged columns got their CRLB"):
        fit = fit_columns(img, np.r_[pos, [dip]], P, dose=1e4, noise="gaussian", width="common")
    assert fit.heights[-1] < 0 and not fit.converged[-1] and fit.converged[:-1].all()
    t = fit.table
    assert t.loc[9, ["x_crlb", "y_crlb", "scs_crlb"]].isna().all()
    ref = column_crlb(fit.positions[:-1], fit.widths[:-1], fit.heights[:-1], fit.background, shape, P, 1e4,
                      width="common")
    for name in ("x_crlb", "y_crlb", "scs_crlb"):
        np.testing.assert_allclose(t.loc[:8, name], ref[name], rtol=1e-9)


@pytest.mark.parametrize("stack", [False, True])
def test_a_dip_is_an_empty_site_and_the_bounds_leave_it_out(stack):
    """The same dip (a start with a negative height) is removed as an empty site: height 0, NaN bounds, and the
    other columns' bounds are those of the model without it. In a stack, frames without empty sites keep the
    bounds of the whole model."""
    img, pos, dip, shape = _dip_image()
    full = gaussian_image(np.r_[pos, [dip]], 0.45, 0.05, 0.005, shape)  # a real column at the dip start
    data = np.stack([img, full]) if stack else img
    with pytest.warns(UserWarning, match="1 of them empty sites"):
        fit = fit_columns(data, np.r_[pos, [dip]], P, dose=1e4, noise="gaussian", width="common")
    t = fit.table
    first = t[t.frame == 0].reset_index(drop=True)
    assert first["empty_site"].tolist() == [False] * 9 + [True] and first.loc[9, "height"] == 0.0
    assert first.loc[9, ["x_crlb", "y_crlb", "scs_crlb"]].isna().all() and first["converged"][:9].all()
    heights = fit.heights[0] if stack else fit.heights
    ref = column_crlb(first[["x", "y"]].to_numpy()[:9], first["width"][:9], heights[:9], first["background"][0],
                      shape, P, 1e4, width="common")
    for name in ("x_crlb", "y_crlb", "scs_crlb"):
        np.testing.assert_allclose(first.loc[:8, name], ref[name], rtol=1e-9)
    if stack:  # the second frame has a column at every start: the bounds of the whole model
        second = t[t.frame == 1].reset_index(drop=True)
        assert not second["empty_site"].any() and second["converged"].all()
        ref2 = column_crlb(second[["x", "y"]].to_numpy(), second["width"], fit.heights[1], second["background"][0],
                           shape, P, 1e4, width="common")
        for name in ("x_crlb", "y_crlb", "scs_crlb"):
            np.testing.assert_allclose(second[name], ref2[name], rtol=1e-9)


def test_empty_stack_is_a_clear_error():
    with pytest.raises(ValueError, match="empty stack"):
        fit_columns(np.zeros((0, 20, 20)), [[1.0, 1.0]], P)


def test_a_type_empty_in_one_frame_of_a_stack():
    """Common widths per type on a checkerboard; in frame 0 the type-1 columns have no signal (an invisible
    sublattice), in frame 1 they do. Frame 0's type-1 starts are all removed and that type's width fixed in that
    frame only (per-frame free flags); both frames, fitted together in one batch, equal the frames fitted alone
    (to 1e-4 Å), and every real column converges."""
    g = 2.0 + 2.0 * np.arange(5)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    types = ((np.arange(25) // 5 + np.arange(25) % 5) % 2).astype(int)
    shape = (60, 60)
    with_b = gaussian_image(pos, 0.4, 1.0, 0.1, shape)
    without_b = gaussian_image(pos[types == 0], 0.4, 1.0, 0.1, shape)
    rng = np.random.default_rng(7)
    frames = rng.poisson(np.stack([without_b, with_b]) * 1e4 * P * P) / (1e4 * P * P)
    start = pos + rng.normal(0, 0.05, pos.shape)
    kw = dict(dose=1e4, noise="poisson", width="common", types=types, crlb=False)
    with pytest.warns(UserWarning, match="12 of them empty sites"):
        both = fit_columns(frames, start, P, frames_per_batch=2, **kw)
    empty = both.table["empty_site"].to_numpy().reshape(2, -1)
    assert empty[0].tolist() == (types == 1).tolist() and not empty[1].any()
    assert both.converged[0, types == 0].all() and both.converged[1].all()
    for b in range(2):
        with pytest.warns(UserWarning) if b == 0 else contextlib.nullcontext():
            alone = fit_columns(frames[b], start, P, **kw)
        assert (alone.table["empty_site"].to_numpy() == empty[b]).all()
        keep = ~empty[b]
        np.testing.assert_allclose(both.positions[b][keep], alone.positions[keep], atol=1e-4)


def test_a_spurious_start_next_to_a_column_is_removed():
    """A start 0.6 Å off a real column, never significant: removed at once. (A version that let any neighbour
    within 2 widths shield a fading column kept it; it then jumped ~6 Å onto another column and raised that
    column's SCS by 10 %, reported converged.) Every real column's SCS equals that of the fit without it."""
    p, rho, eta, bg, dose = 0.14, 0.40, 0.05, 0.005, 1e4
    g = 1.96 * (np.arange(6) + 1)
    X, Y = np.meshgrid(g, g)
    pos = np.c_[X.ravel(), Y.ravel()]
    img = gaussian_image(pos, rho, eta, bg, (int(round(7 * 1.96 / p)),) * 2, p=p)
    rng = np.random.default_rng(0)
    counts = rng.poisson(img * dose * p * p) / (dose * p * p)
    start = pos + rng.normal(0, 0.03, pos.shape)
    kw = dict(dose=dose, noise="poisson", width="common", crlb=False)
    alone = fit_columns(counts, start, p, **kw)
    with pytest.warns(UserWarning, match="1 of them empty sites"):
        fit = fit_columns(counts, np.r_[start, [pos[14] + [0.6, 0.0]]], p, **kw)
    assert fit.table["empty_site"].iloc[-1] and fit.converged[:-1].all()
    np.testing.assert_allclose(fit.scs[:-1], alone.scs, rtol=1e-4)
