import itertools

import numpy as np
import pytest
import torch
from torch import nn

from stemquant.restore import CGRDN, CGRDNConfig, restore
from stemquant.restore._inference import _axis_tiles, _axis_windows


class _LocalNet(nn.Module):
    """Three 3x3 convs (receptive-field radius 3 pixels), optionally with a stride-2 stage."""

    def __init__(self, stride2: bool = False):
        super().__init__()
        self.size_multiple = 2 if stride2 else 1
        if stride2:  # radius: 4x4/2 conv + 4x4/2 transposed conv + 3x3 conv ~ 5 pixels
            self.body = nn.Sequential(nn.Conv2d(1, 4, 4, stride=2, padding=1), nn.ReLU(),
                                      nn.ConvTranspose2d(4, 4, 4, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(4, 1, 3, padding=1))
        else:
            self.body = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1),
                                      nn.ReLU(), nn.Conv2d(4, 1, 3, padding=1))

    def forward(self, x):
        return self.body(x)


def _net(seed, **kw):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return _LocalNet(**kw).double()


def _untiled(img, net):
    """The network on the whole normalised image (reflection-padded to its size multiple), mapped back."""
    mu, sd = img.mean(), img.std()
    m = net.size_multiple
    h, w = img.shape
    z = np.pad((img - mu) / sd, ((0, -h % m), (0, -w % m)), mode="reflect")
    with torch.no_grad():
        out = net(torch.as_tensor(z)[None, None]).numpy()[0, 0, :h, :w]
    return out * sd + mu


@pytest.mark.parametrize("shape", [(37, 31), (64, 64), (200, 123), (3, 45, 33)])
def test_identity_network_returns_input(shape, rng):
    img = rng.normal(100.0, 7.0, size=shape)
    out64 = restore(img, nn.Identity(), tile=32, overlap=8, dtype=torch.float64)
    np.testing.assert_allclose(out64, img, rtol=1e-13)
    # float32 compute: relative rounding 2**-24 of the normalised value (|z| < 6) times std
    out32 = restore(img, nn.Identity(), tile=32, overlap=8)
    assert out32.shape == img.shape
    assert np.max(np.abs(out32 - img)) <= 6 * 2**-24 * img.std() * 4


@pytest.mark.parametrize("stride2", [False, True])
@pytest.mark.parametrize("shape", [(96, 130), (37, 31), (101, 67)])
def test_tiled_equals_untiled(stride2, shape, rng):
    net = _net(0, stride2=stride2)
    img = rng.poisson(30.0, size=shape).astype(float)
    tiled = restore(img, net, tile=64, overlap=24, batch_size=3)
    np.testing.assert_allclose(tiled, _untiled(img, net), rtol=1e-12, atol=1e-9 * img.std())


def test_odd_sizes_with_stride_network_match_padded_reference(rng):
    net = _net(1, stride2=True)
    img = rng.poisson(30.0, size=(37, 31)).astype(float)
    padded = np.pad((img - img.mean()) / img.std(), ((0, 1), (0, 1)), mode="reflect")
    with torch.no_grad():
        ref = net(torch.as_tensor(padded)[None, None]).numpy()[0, 0, :37, :31] * img.std() + img.mean()
    np.testing.assert_allclose(restore(img, net, tile=64, overlap=16), ref, rtol=1e-12, atol=1e-9)


def test_affine_equivariance_constant_offset(rng):
    # restore(a x + b) = a restore(x) + b for any network: SCS measured on the output stay physical
    torch.manual_seed(0)
    net = CGRDN(CGRDNConfig(n_grdb=1, n_rdb=1, n_layers=2, growth=4, features=8)).double()
    img = rng.poisson(20.0, size=(50, 44)).astype(float)
    base = restore(img, net, tile=32, overlap=8)
    np.testing.assert_allclose(restore(img + 1234.5, net, tile=32, overlap=8), base + 1234.5, rtol=1e-12)
    np.testing.assert_allclose(restore(0.01 * img, net, tile=32, overlap=8), 0.01 * base, rtol=1e-10)
    assert not np.allclose(base, img)  # the network does something


def test_stack_equals_frame_by_frame_and_batch_size_irrelevant(rng):
    net = _net(2)
    stack = rng.normal(size=(3, 40, 52)) * np.array([1.0, 10.0, 0.1])[:, None, None]
    out = restore(stack, net, tile=32, overlap=8, batch_size=5)
    for i in range(3):
        np.testing.assert_allclose(out[i], restore(stack[i], net, tile=32, overlap=8, batch_size=1),
                                   rtol=1e-12, atol=1e-12)


def test_windows_form_a_partition_of_unity():
    for length, tile, overlap, m in itertools.product((16, 37, 64, 257, 700), (32, 64, 100), (0, 3, 8, 16),
                                                      (1, 2, 8)):
        length = m * -(-length // m)
        t_max = tile // m * m
        if 2 * (overlap + m) > t_max:
            continue
        size, starts = _axis_tiles(length, t_max, overlap, m)
        assert size <= t_max and size % m == 0 and all(s % m == 0 for s in starts)
        assert starts[0] == 0 and starts[-1] + size == length and len(set(starts)) == len(starts)
        total = np.zeros(length)
        for k, (s, w) in enumerate(zip(starts, _axis_windows(starts, size, overlap), strict=True)):
            total[s : s + size] += w
            assert np.all((w >= 0) & (w <= 1))
            if k > 0:
                assert np.all(w[: overlap // 4] == 0)  # context-only margin at inner tile edges
            if k < len(starts) - 1:
                assert np.all(w[size - overlap // 4 :] == 0)
        np.testing.assert_allclose(total, 1.0, rtol=0, atol=1e-12)


def test_uint16_without_overflow():
    img = np.full((40, 40), 65000, dtype=np.uint16)
    img[::3, ::5] = 65535
    img[1::7] = 3
    out = restore(img, nn.Identity(), tile=32, overlap=8, dtype=torch.float64)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, img.astype(float), rtol=1e-13)


def test_bad_input(rng):
    good = rng.normal(size=(40, 40))
    with pytest.raises(ValueError, match="shape"):
        restore(good[0], nn.Identity())
    with pytest.raises(ValueError, match="shape"):
        restore(good[None, None], nn.Identity())
    for bad_value in (np.nan, np.inf):
        bad = good.copy()
        bad[3, 4] = bad_value
        with pytest.raises(ValueError, match="NaN/Inf"):
            restore(bad, nn.Identity())
    with pytest.raises(ValueError, match="constant"):
        restore(np.full((40, 40), 7.0), nn.Identity())
    stack = np.stack([good, np.ones((40, 40))])
    with pytest.raises(ValueError, match="frame 1 is constant"):
        restore(stack, nn.Identity())
    with pytest.raises(ValueError, match="at least 16x16"):
        restore(good[:15], nn.Identity())
    with pytest.raises(ValueError, match="tile"):
        restore(good, nn.Identity(), tile=16, overlap=8)
    with pytest.raises(ValueError, match="batch_size"):
        restore(good, nn.Identity(), batch_size=0)
    with pytest.raises(ValueError, match="overlap"):
        restore(good, nn.Identity(), overlap=-1)
    with pytest.raises(TypeError, match="model"):
        restore(good, 3)
    with pytest.raises(ValueError, match="model returned shape"):
        restore(good, nn.AvgPool2d(2), tile=32, overlap=4)
    with pytest.raises(ValueError, match="unknown model"):
        restore(good, "no-such-model")


def test_missing_weights_name_the_file(rng, tmp_path, monkeypatch):
    monkeypatch.setattr("stemquant.restore._registry.WEIGHTS_DIR", tmp_path)  # an empty weights folder
    with pytest.raises(FileNotFoundError, match=r"hrstem\.pt"):
        restore(rng.normal(size=(40, 40)), "hrstem", device="cpu")


def test_deterministic_and_training_flag_restored(rng):
    # restore has no randomness: repeated calls agree bit for bit (there is no rng to vary)
    net = _net(3)
    net.train()
    img = rng.normal(size=(45, 50))
    a = restore(img, net, tile=32, overlap=8)
    np.testing.assert_array_equal(a, restore(img, net, tile=32, overlap=8))
    assert net.training


def test_device(device, rng):
    net = _net(4).to(device)
    img = rng.normal(size=(40, 36))
    out = restore(img, net, device=device, tile=32, overlap=8)
    np.testing.assert_allclose(out, restore(img, net.cpu(), device="cpu", tile=32, overlap=8), rtol=1e-10,
                               atol=1e-10)


def test_model_on_other_device_is_an_error(rng):
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA to have two device types")
    with pytest.raises(ValueError, match="model lives on"):
        restore(rng.normal(size=(40, 40)), _net(5), device="cuda")


class _Zero(nn.Module):
    size_multiple = 64

    def forward(self, x):
        return torch.zeros_like(x)


class _Const(nn.Module):
    def forward(self, x):
        return torch.full_like(x, 2.5)


def test_constant_network_output_restores_to_a_constant(rng):
    # blending weights are normalised: a constant map stays that constant across tile seams; the padding to
    # a size multiple larger than the image (37x31 -> 64x64) is cropped away
    img = rng.normal(50.0, 5.0, size=(37, 31))
    np.testing.assert_allclose(restore(img, _Zero(), tile=256, overlap=16), img.mean(), rtol=1e-12)
    big = rng.normal(50.0, 5.0, size=(150, 170))
    out = restore(big, _Const(), tile=48, overlap=16, dtype=torch.float64)
    np.testing.assert_allclose(out, big.mean() + 2.5 * big.std(), rtol=1e-12)


@pytest.mark.parametrize("shape", [(16, 16), (17, 23), (31, 20)])
def test_tiny_images_match_the_padded_reference(shape, rng):
    # issue 4 §6: images below 32 px are restored (not rejected) down to MIN_SIZE = 16; sides that are odd or
    # smaller than the network's size multiple are reflection-padded and cropped, exactly as in _untiled
    net = _net(6, stride2=True)
    img = rng.poisson(30.0, size=shape).astype(float)
    np.testing.assert_allclose(restore(img, net, tile=64, overlap=8), _untiled(img, net), rtol=1e-12, atol=1e-9)
    # a size multiple (64) four times the image side: repeated reflection, output still the input's shape
    out = restore(img, _Zero(), tile=256, overlap=16)
    np.testing.assert_allclose(out, img.mean(), rtol=1e-12)


class _Recorder(nn.Module):
    """Identity that records the shape of every batch it is given."""

    size_multiple = 8

    def __init__(self):
        super().__init__()
        self.shapes = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return x


def test_large_image_network_memory_is_bounded_by_tile_and_batch(rng):
    # issue 4 §6 "huge images (memory-bounded tiling)": whatever the image size, the network never sees more
    # than batch_size tiles of at most tile × tile pixels, and the blended output is still exact (identity)
    img = rng.normal(500.0, 20.0, size=(1500, 1103)).astype(np.float32)
    net = _Recorder()
    out = restore(img, net, tile=256, overlap=32, batch_size=3, dtype=torch.float64)
    assert len(net.shapes) > 10
    assert all(b <= 3 and c == 1 and h <= 256 and w <= 256 for b, c, h, w in net.shapes)
    covered = sum(b * h * w for b, _, h, w in net.shapes)
    # each axis is covered by n tiles, n = ceil((L - e) / (tile - e)), e = overlap + size_multiple: n·tile / L
    # <= tile (L + tile - 2e) / ((tile - e) L) = 1.324 and 1.374 for the padded 1504 and 1104 px sides
    assert covered <= 1.324 * 1.374 * 1504 * 1104
    np.testing.assert_allclose(out, img.astype(np.float64), rtol=1e-12)


@pytest.mark.parametrize("magnitude", [1e-300, 1e-120, 1e120, 1e200])
def test_extreme_magnitudes_stay_finite_and_exact(magnitude, rng):
    # the standard deviation squares the pixel values (overflow above ~1e154, underflow below ~1e-154); the
    # output must still be the input for an identity network, with no NaN/Inf. (x - m) / s · s + m rounds to a
    # few ulp of the frame's magnitude (not of each pixel): tolerance 50 ulp of the maximum
    img = rng.random((40, 40)) * magnitude
    out = restore(img, nn.Identity(), tile=32, overlap=8, dtype=torch.float64)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, img, rtol=0, atol=50 * np.finfo(float).eps * img.max())


def _baseline(kind):
    """Small baseline networks (float64, eval) with the size multiples of the published ones: 4, 64, 32."""
    from stemquant.restore import BiasFreeUNet, GambiniAutoencoder, ResNetUNet

    with torch.random.fork_rng():
        torch.manual_seed(3)
        net = {"gambini": lambda: GambiniAutoencoder(4), "mohan": lambda: BiasFreeUNet(scales=6, channels=4),
               "katsuno": lambda: ResNetUNet((8, 8, 8, 8, 8))}[kind]()
    return net.double().eval()


@pytest.mark.parametrize("kind", ["gambini", "mohan", "katsuno"])
@pytest.mark.parametrize("shape", [(37, 45), (16, 16), (70, 33)])
def test_baselines_are_padded_to_their_size_multiple(kind, shape, rng):
    # the baselines raise on sides that are not multiples of size_multiple (4, 64, 32), also below it
    # (16 < 32, 64): restore must reflection-pad to the next multiple and crop, exactly as the reference
    net = _baseline(kind)
    img = rng.poisson(30.0, size=shape).astype(float)
    if shape[0] % net.size_multiple or shape[1] % net.size_multiple:
        with pytest.raises(ValueError, match="multiples of"):
            net(torch.as_tensor(img)[None, None])
    out = restore(img, net)
    assert out.shape == img.shape
    np.testing.assert_allclose(out, _untiled(img, net), rtol=1e-12, atol=1e-9 * img.std())


@pytest.mark.parametrize("m", [32, 64])
def test_tile_grid_respects_large_size_multiples(m):
    # tiles of the Katsuno (32) and Mohan (64) networks: sizes and starts multiples of m, full coverage
    for length, tile in itertools.product((m, 3 * m, 700 // m * m, 1000 // m * m), (4 * m, 6 * m)):
        size, starts = _axis_tiles(length, tile, 16, m)
        assert size <= tile and size % m == 0 and all(s % m == 0 for s in starts)
        assert starts[0] == 0 and starts[-1] + size == length
        covered = np.zeros(length, bool)
        for s in starts:
            covered[s : s + size] = True
        assert covered.all()


def test_tiled_mohan_network_runs_on_a_large_odd_image(rng):
    net = _baseline("mohan")
    img = rng.poisson(30.0, size=(300, 211)).astype(float)
    out = restore(img, net, tile=192, overlap=16, batch_size=2)
    assert out.shape == img.shape and np.all(np.isfinite(out))
    # tiles are independent: batching them must not change the result (BN in eval mode, padding per tile)
    np.testing.assert_allclose(out, restore(img, net, tile=192, overlap=16, batch_size=1), rtol=1e-5, atol=1e-6)


def test_empty_stack_is_a_clear_error():
    with pytest.raises(ValueError, match="empty stack"):
        restore(np.zeros((0, 32, 32)), nn.Identity())
