import numpy as np
import pytest
import scipy.ndimage as ndi
import torch

from stemquant.restore import (
    BiasFreeUNet,
    GambiniAutoencoder,
    GaussianFilter,
    ResNetUNet,
    anscombe,
    bm3d_denoise,
    inverse_anscombe,
    restore,
)


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------------------------ Gaussian


@pytest.mark.parametrize("sigma", [0.7, 1.5])
def test_gaussian_matches_scipy(sigma, rng):
    img = rng.normal(size=(2, 1, 30, 41))
    out = GaussianFilter(sigma)(torch.as_tensor(img)).numpy()
    ref = ndi.gaussian_filter(img, sigma=(0, 0, sigma, sigma), mode="mirror", truncate=4.0)
    np.testing.assert_allclose(out, ref, atol=1e-6)  # float32 kernel, float64 data


def test_gaussian_through_restore_equals_scipy_everywhere(rng):
    # kernel radius 4 <= overlap // 4 = 8: tiles never show their own borders, and the filter commutes with
    # the affine normalisation, so tiled restoration is the plain filter (independent scipy computation).
    img = rng.poisson(20.0, size=(150, 97)).astype(float)
    out = restore(img, GaussianFilter(1.0), tile=80, overlap=32, dtype=torch.float64)
    np.testing.assert_allclose(out, ndi.gaussian_filter(img, 1.0, mode="mirror", truncate=4.0), atol=1e-5)


def test_gaussian_bad_input():
    with pytest.raises(ValueError, match="sigma"):
        GaussianFilter(-1.0)
    with pytest.raises(ValueError, match="radius"):
        GaussianFilter(3.0)(torch.zeros(1, 1, 8, 8))


# ------------------------------------------------------------------------------------------------ BM3D


def test_inverse_anscombe_is_unbiased(rng):
    # E[A(X)] for X ~ Poisson(lam), inverted, must return lam. The sample mean of A has std <= 1/sqrt(n)
    # (Var A ~ 1); mapped back with dlam/dz = z/2 ~ sqrt(lam) gives sigma = sqrt(lam/n). Tolerance 5 sigma
    # (false-failure rate ~6e-7 per lam) plus 0.01 for the closed-form approximation error.
    n = 400_000
    for lam in (3.0, 10.0, 50.0):
        z = anscombe(rng.poisson(lam, n)).mean()
        assert abs(inverse_anscombe(z) - lam) <= 5 * np.sqrt(lam / n) + 0.01
    # the naive algebraic inverse is biased at low counts (by ~1/4 count): the test can tell them apart
    z = anscombe(rng.poisson(3.0, n)).mean()
    assert abs((z / 2) ** 2 - 0.375 - 3.0) > 0.1


def test_bm3d_denoises_poisson_counts(rng):
    pytest.importorskip("bm3d")
    yy, xx = np.mgrid[:32, :32]
    clean = 20 + 30 * np.cos(2 * np.pi * xx / 8) ** 2 * np.cos(2 * np.pi * yy / 8) ** 2
    noisy = rng.poisson(clean).astype(float)
    out = bm3d_denoise(noisy)
    assert out.shape == noisy.shape
    assert np.mean((out - clean) ** 2) < 0.5 * np.mean((noisy - clean) ** 2)
    stack = bm3d_denoise(np.stack([noisy, noisy]))
    np.testing.assert_allclose(stack[0], out, rtol=1e-5)  # bm3d computes in float32


def test_bm3d_bad_input():
    pytest.importorskip("bm3d")
    with pytest.raises(ValueError, match="non-negative"):
        bm3d_denoise(-np.ones((16, 16)))
    with pytest.raises(ValueError, match="sigma"):
        bm3d_denoise(np.ones((16, 16)), sigma=0)


def test_bm3d_missing_package_is_a_clear_import_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "bm3d":
            raise ImportError("no bm3d")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ImportError, match="pip install bm3d"):
        bm3d_denoise(np.ones((16, 16)))


# ------------------------------------------------------------------------------------------------ networks


def test_gambini_autoencoder_layout():
    net = GambiniAutoencoder()
    x = torch.randn(2, 1, 128, 128)
    assert net.encoder(x).shape == (2, 32, 32, 32)  # latent (32, 32, 32) for 128x128 input (Gambini et al.)
    assert net(x).shape == x.shape
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 6 and convs[-1].out_channels == 1
    assert torch.all(GambiniAutoencoder(final_relu=True)(x) >= 0)
    with pytest.raises(ValueError, match="multiples of 4"):
        net(torch.zeros(1, 1, 30, 32))


def test_bias_free_unet_is_positively_homogeneous():
    torch.manual_seed(0)
    net = BiasFreeUNet(scales=2, channels=8)
    x = torch.randn(3, 1, 16, 16, dtype=torch.float64)
    net = net.double()
    net(x)  # one training-mode pass sets non-trivial running statistics
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(3.7 * x), 3.7 * net(x))
        assert not torch.allclose(net(x + 1.0), net(x) + 1.0)  # not translation-equivariant: no shortcut
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(m.bias is None for m in convs)


def test_bias_free_unet_defaults_and_shapes():
    net = BiasFreeUNet()
    assert net.size_multiple == 64  # 6 scales, 893x893 field of view (Mohan et al. 2022)
    small = BiasFreeUNet(scales=3, channels=4)
    assert small(torch.randn(2, 1, 24, 16)).shape == (2, 1, 24, 16)
    with pytest.raises(ValueError, match="multiples of 8"):
        small(torch.zeros(1, 1, 20, 16))
    with pytest.raises(ValueError, match="scales"):
        BiasFreeUNet(scales=0)


def test_resnet_unet_matches_resnet18_and_smp_sizes():
    net = ResNetUNet()
    encoder = _n_params(net.stem) + _n_params(net.stages)
    # torchvision resnet18: 11,689,512 parameters; minus the fc layer (513,000) and two of the three input
    # channels of the 7x7 stem (2*64*49 = 6,272) -> 11,170,240.
    assert encoder == 11_689_512 - 513_000 - 6_272
    # segmentation_models_pytorch Unet("resnet18", classes=1) has 14,328,209 parameters with 3 input channels
    assert _n_params(net) == 14_328_209 - 6_272
    x = torch.randn(1, 1, 64, 96)
    net.eval()
    assert net(x).shape == x.shape
    with pytest.raises(ValueError, match="multiples of 32"):
        net(torch.zeros(1, 1, 48, 64))


@pytest.mark.parametrize("make", [lambda: GambiniAutoencoder(8), lambda: BiasFreeUNet(2, 4),
                                  lambda: GaussianFilter(1.0)])
def test_baselines_run_through_restore_on_odd_sizes(make, rng):
    torch.manual_seed(0)
    img = rng.poisson(10.0, size=(37, 31)).astype(float)
    out = restore(img, make(), tile=64, overlap=8)
    assert out.shape == img.shape and np.all(np.isfinite(out))
