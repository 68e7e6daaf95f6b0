import math

import numpy as np
import pytest
import torch

from stemquant.restore import (
    LossWeights,
    adversarial_loss,
    discriminator_loss,
    fourier_loss,
    generator_loss,
    l1_loss,
    l2_loss,
    local_whitening,
    mae_loss,
    mean_loss,
    mlwt_loss,
    mse_loss,
    std_loss,
    wmse_loss,
)

PIXEL_LOSSES = [l1_loss, l2_loss, mlwt_loss, fourier_loss, mean_loss, std_loss, mae_loss, mse_loss, wmse_loss,
                generator_loss]


def _pair(seed, shape=(3, 1, 20, 24), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(shape, generator=g, dtype=dtype)
    pred = target + 0.1 * torch.randn(shape, generator=g, dtype=dtype)
    return pred, target


@pytest.mark.parametrize("loss", PIXEL_LOSSES)
def test_zero_for_equal_positive_otherwise_per_sample(loss):
    pred, target = _pair(0)
    assert loss(target, target).shape == (3,)
    torch.testing.assert_close(loss(target, target), torch.zeros(3), rtol=0, atol=1e-6)
    assert torch.all(loss(pred, target) > 0)


@pytest.mark.parametrize("loss", PIXEL_LOSSES)
def test_samples_are_independent_and_3d_input(loss):
    pred, target = _pair(1)
    full = loss(pred, target)
    for i in range(3):
        torch.testing.assert_close(loss(pred[i : i + 1], target[i : i + 1]), full[i : i + 1])
    torch.testing.assert_close(loss(pred[:, 0], target[:, 0]), full)


@pytest.mark.parametrize("loss", PIXEL_LOSSES)
def test_bad_input(loss):
    pred, target = _pair(2)
    with pytest.raises(ValueError, match="same shape"):
        loss(pred, target[:, :, :-1])
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        loss(pred[0, 0], target[0, 0])


@pytest.mark.parametrize("loss", [l1_loss, l2_loss, mlwt_loss, fourier_loss, mean_loss, std_loss, wmse_loss])
def test_gradcheck_float64(loss):
    pred, target = _pair(3, shape=(2, 1, 10, 12), dtype=torch.float64)
    pred.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: loss(p, target), (pred,), fast_mode=True)


def test_gradcheck_adversarial_float64():
    g = torch.Generator().manual_seed(4)
    r = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    f = torch.randn(2, 1, 3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(adversarial_loss, (r, f), fast_mode=True)
    assert torch.autograd.gradcheck(discriminator_loss, (r, f), fast_mode=True)


def test_weighted_l1_matches_definition_and_is_affine_invariant():
    pred, target = _pair(5)
    w = 1 / target.reshape(3, -1).std(dim=1, correction=0)
    torch.testing.assert_close(l1_loss(pred, target), w * (pred - target).abs().mean(dim=(1, 2, 3)))
    torch.testing.assert_close(l1_loss(7 * pred - 2, 7 * target - 2), l1_loss(pred, target))
    # L2 has the same (unsquared) weight, as published: scales like a
    torch.testing.assert_close(l2_loss(7 * pred, 7 * target), 7 * l2_loss(pred, target))


def test_whitening_is_affine_invariant_and_whitens():
    g = torch.Generator().manual_seed(6)
    y = torch.rand(2, 1, 32, 32, generator=g, dtype=torch.float64)
    for s in (2, 4, 8, 16):
        torch.testing.assert_close(local_whitening(3.5 * y + 10, s), local_whitening(y, s))
    # a window covering a linear ramp: whitened centre pixel = (y - mean)/std of the window
    ramp = torch.arange(32, dtype=torch.float64).repeat(32, 1)[None, None]
    out = local_whitening(ramp, 4)
    win = torch.arange(-2, 2, dtype=torch.float64)  # rows/cols i-2 .. i+1 for S = 4
    expected = (0 - win.mean()) / win.std(correction=0)
    torch.testing.assert_close(out[0, 0, 10, 10], expected)


def test_mlwt_affine_invariance_and_bad_window():
    pred, target = _pair(7, dtype=torch.float64)
    torch.testing.assert_close(mlwt_loss(5 * pred + 1, 5 * target + 1), mlwt_loss(pred, target))
    with pytest.raises(ValueError, match="window"):
        local_whitening(target, 1)
    with pytest.raises(ValueError, match="too small"):
        mlwt_loss(pred[..., :8, :8], target[..., :8, :8])


def test_fourier_loss_matches_numpy_and_is_homogeneous_of_degree_gamma():
    pred, target = _pair(8, dtype=torch.float64)
    d = (target - pred).numpy()
    ref = (np.abs(np.fft.fft2(d, norm="ortho")) ** 0.125).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(fourier_loss(pred, target, eps=0).numpy(), ref, rtol=1e-12)
    # smoothed default is within eps^gamma of the exact form
    assert np.all(np.abs(fourier_loss(pred, target).numpy() - ref) <= 1e-4**0.125)
    for gamma in (0.125, 0.5, 1.0):
        a = 3.0
        scaled = fourier_loss(target + a * (pred - target), target, gamma=gamma, eps=0)
        torch.testing.assert_close(scaled, a**gamma * fourier_loss(pred, target, gamma=gamma, eps=0))
    with pytest.raises(ValueError, match="gamma"):
        fourier_loss(pred, target, gamma=0)


def test_mean_std_losses_match_numpy():
    pred, target = _pair(9, dtype=torch.float64)
    p, t = pred.numpy().reshape(3, -1), target.numpy().reshape(3, -1)
    np.testing.assert_allclose(mean_loss(pred, target).numpy(), np.abs(p.mean(1) - t.mean(1)), rtol=1e-12)
    np.testing.assert_allclose(std_loss(pred, target).numpy(), np.abs(p.std(1) - t.std(1)), rtol=1e-12)


def test_wmse_weights_black_pixels_1_others_1000():
    target = torch.zeros(1, 1, 4, 4)
    target[0, 0, 1, 1] = 1.0
    pred = torch.ones_like(target)  # error 1 on 15 black pixels, 0 on the bright one
    torch.testing.assert_close(wmse_loss(pred, target), torch.tensor([15.0 / 16]))
    pred = target.clone()
    pred[0, 0, 1, 1] = 0.0  # error 1 on the bright pixel only
    torch.testing.assert_close(wmse_loss(pred, target), torch.tensor([1000.0 / 16]))


def test_relativistic_losses():
    g = torch.Generator().manual_seed(10)
    r, f = torch.randn(4, 1, 8, 8, generator=g), torch.randn(4, 1, 8, 8, generator=g)
    assert adversarial_loss(r, f).shape == (4,)
    # mirror symmetry of eqs. (12) and (15)
    torch.testing.assert_close(discriminator_loss(r, f), adversarial_loss(f, r))
    # an undecided critic (equal logits): both terms are -log(1/2)
    same = torch.full((4, 1, 8, 8), 0.3)
    torch.testing.assert_close(discriminator_loss(same, same), torch.full((4,), 2 * math.log(2)))
    # a critic that separates real from fake: D loss -> 0, generator loss large
    assert torch.all(discriminator_loss(r + 40, f - 40) < 1e-10)
    assert torch.all(adversarial_loss(r + 40, f - 40) > 40)
    with pytest.raises(ValueError, match="same shape"):
        adversarial_loss(r, f[:2])


def test_generator_loss_is_weighted_sum():
    pred, target = _pair(11, shape=(2, 1, 32, 32), dtype=torch.float64)
    g = torch.Generator().manual_seed(12)
    r = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    f = torch.randn(2, 1, 4, 4, generator=g, dtype=torch.float64)
    w = LossWeights(l1=1, l2=2, mlwt=3, fourier=4, mean=5, std=6, adversarial=7)
    expected = (l1_loss(pred, target) + 2 * l2_loss(pred, target) + 3 * mlwt_loss(pred, target)
                + 4 * fourier_loss(pred, target) + 5 * mean_loss(pred, target) + 6 * std_loss(pred, target))
    torch.testing.assert_close(generator_loss(pred, target, weights=w), expected)
    torch.testing.assert_close(generator_loss(pred, target, r, f, weights=w),
                               expected + 7 * adversarial_loss(r, f))
    with pytest.raises(ValueError, match="both d_real and d_fake"):
        generator_loss(pred, target, d_real=r)
    with pytest.raises(ValueError, match="non-negative"):
        LossWeights(l1=-1)
    with pytest.raises(TypeError, match="LossWeights"):
        generator_loss(pred, target, weights={"l1": 1})


def test_generator_loss_trains_a_step():
    # one optimiser step on a tiny conv reduces the loss: the loss is usable for training
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 1, 3, padding=1)
    pred, target = _pair(13, shape=(4, 1, 32, 32))
    before = generator_loss(net(pred), target).mean()
    before.backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= 1e-3 * p.grad
    assert generator_loss(net(pred), target).mean() < before


def test_sigma_min_bounds_the_weight_of_flat_targets():
    # eq. (5): w_y = 1 / max(σ_min, Std y). A flat target (Std = 0) gets weight 1/σ_min, not infinity
    target = torch.full((2, 1, 16, 16), 3.0, dtype=torch.float64)
    pred = target + 0.01
    torch.testing.assert_close(l1_loss(pred, target), torch.full((2,), 0.01 / 1e-3, dtype=torch.float64))
    torch.testing.assert_close(l1_loss(pred, target, sigma_min=0.5), torch.full((2,), 0.02, dtype=torch.float64))
    torch.testing.assert_close(l2_loss(pred, target, sigma_min=0.5), torch.full((2,), 2e-4, dtype=torch.float64))
    # eq. (7) on a flat window: (y - E y) / σ_min = 0, finite
    assert torch.all(local_whitening(target, 4) == 0)
    with pytest.raises(ValueError, match="sigma_min"):
        l1_loss(pred, target, sigma_min=0)


def test_mlwt_default_is_the_average_over_windows_2_4_8_16():
    # eq. (8): (1/4) Σ_{S = 2, 4, 8, 16} E|y^S - y_g^S|
    pred, target = _pair(14, shape=(2, 1, 32, 32), dtype=torch.float64)
    per_window = [(local_whitening(target, s) - local_whitening(pred, s)).abs().mean(dim=(1, 2, 3))
                  for s in (2, 4, 8, 16)]
    torch.testing.assert_close(mlwt_loss(pred, target), sum(per_window) / 4)
    torch.testing.assert_close(mlwt_loss(pred, target, windows=(4,)), per_window[1])
