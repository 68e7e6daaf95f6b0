import pytest
import torch

from stemquant.restore import CGRDN, CGRDNConfig


def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_published_parameter_count():
    # Table 1 of Lobato et al. (2023) reports "7.04M" (3 significant figures, i.e. +-5,000).
    # Our count, 7,035,521, follows from 4 GRDB x 4 RDB x 8 layers, growth 32, 64 features, 1x1 fusions.
    n = _n_params(CGRDN(CGRDNConfig.published()))
    assert n == 7_035_521
    assert abs(n - 7.04e6) <= 5_000


def test_concatenation_adds_about_20k_parameters_over_grdn():
    # Lobato et al.: CGRDN needs "only an additional 20,000 parameters" over GRDN (7.02 M). Removing the
    # concatenation/fusion conv (the only CGRDN addition; GRDN's CBAM is ~700 parameters) leaves 7.02 M.
    net = CGRDN(CGRDNConfig.published())
    extra = _n_params(net.body.fusion)
    assert 15_000 <= extra <= 25_000
    assert abs((_n_params(net) - extra) - 7.02e6) <= 5_000


def test_lite_is_much_smaller_same_class():
    lite = CGRDN(CGRDNConfig.lite())
    assert isinstance(lite, CGRDN)
    assert _n_params(lite) == 181_377
    assert _n_params(lite) * 30 < _n_params(CGRDN())


@pytest.mark.parametrize("shape", [(1, 1, 16, 16), (3, 1, 32, 48), (2, 1, 38, 32)])
def test_output_shape(shape, device):
    net = CGRDN(CGRDNConfig.lite()).to(device)
    x = torch.randn(shape, device=device)
    assert net(x).shape == shape


def test_published_forward_shape():
    net = CGRDN()
    assert net(torch.randn(1, 1, 8, 12)).shape == (1, 1, 8, 12)


def test_global_residual_identity_when_tail_is_zero():
    net = CGRDN(CGRDNConfig(n_grdb=1, n_rdb=1, n_layers=2, growth=4, features=8))
    torch.nn.init.zeros_(net.tail.weight)
    torch.nn.init.zeros_(net.tail.bias)
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(net(x), x, rtol=0, atol=0)


def test_bad_input():
    net = CGRDN(CGRDNConfig.lite())
    with pytest.raises(ValueError, match="even H and W"):
        net(torch.zeros(1, 1, 15, 16))
    with pytest.raises(ValueError, match="shape"):
        net(torch.zeros(1, 16, 16))
    with pytest.raises(ValueError, match="n_layers"):
        CGRDNConfig(n_layers=0)
    with pytest.raises(TypeError, match="CGRDNConfig"):
        CGRDN({"n_grdb": 1})


def test_determinism():
    def build(seed):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            return CGRDN(CGRDNConfig.lite())

    x = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    a, b, c = build(0)(x), build(0)(x), build(1)(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_trainable_gradients_reach_first_layer():
    net = CGRDN(CGRDNConfig.lite())
    x = torch.randn(2, 1, 16, 16)
    net(x).square().mean().backward()
    assert net.head.weight.grad is not None and net.head.weight.grad.abs().sum() > 0
