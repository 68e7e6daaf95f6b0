import pytest
import torch

from stemquant.restore import PatchDiscriminator


def test_published_output_is_32x32_for_256():
    d = PatchDiscriminator()  # 64 -> 128 -> 256 -> 512 -> 1, conditional
    y = torch.randn(1, 1, 256, 256)
    assert d(y, y).shape == (1, 1, 32, 32)
    widths = [m.out_channels for m in d.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [64, 128, 256, 512, 1]


@pytest.mark.parametrize("shape", [(2, 1, 64, 64), (1, 1, 40, 96)])
def test_shape_contract(shape, device):
    d = PatchDiscriminator(conditional=False, width=8).to(device)
    out = d(torch.randn(shape, device=device))
    assert out.shape == (shape[0], 1, shape[2] // 8, shape[3] // 8)


def test_no_zero_padding_constant_input_gives_constant_map():
    # With zero padding the border patches of a constant image would differ from the interior.
    d = PatchDiscriminator(conditional=False, width=8)
    with torch.no_grad():
        for m in d.modules():
            if isinstance(m, torch.nn.InstanceNorm2d):
                m.weight.normal_()
                m.bias.normal_()
        out = d(torch.full((1, 1, 64, 64), 3.0))
    torch.testing.assert_close(out, out.mean().expand_as(out), rtol=0, atol=1e-5)


def test_bad_input():
    d = PatchDiscriminator(width=8)
    y = torch.zeros(1, 1, 64, 64)
    with pytest.raises(ValueError, match="condition"):
        d(y)
    with pytest.raises(ValueError, match="multiples of 8"):
        d(torch.zeros(1, 1, 60, 64), torch.zeros(1, 1, 60, 64))
    with pytest.raises(ValueError, match="conditional=True"):
        PatchDiscriminator(conditional=False, width=8)(y, y)
    with pytest.raises(ValueError, match="width"):
        PatchDiscriminator(width=0)


def test_determinism_and_condition_matters():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        d = PatchDiscriminator(width=8)
    g = torch.Generator().manual_seed(3)
    y, x1, x2 = (torch.randn(1, 1, 64, 64, generator=g) for _ in range(3))
    torch.testing.assert_close(d(y, x1), d(y, x1), rtol=0, atol=0)
    assert not torch.allclose(d(y, x1), d(y, x2))


def test_instance_norm_replaces_batch_norm():
    # Lobato et al.: the pix2pix batch norms are replaced by instance norms (after conv 2, 3 and 4)
    d = PatchDiscriminator(width=8)
    kinds = [type(m).__name__ for m in d.net if isinstance(m, (torch.nn.Conv2d, torch.nn.InstanceNorm2d,
                                                             torch.nn.BatchNorm2d))]
    assert kinds == ["Conv2d", "Conv2d", "InstanceNorm2d", "Conv2d", "InstanceNorm2d", "Conv2d",
                     "InstanceNorm2d", "Conv2d"]
    # instance norm: a sample's logits do not depend on the other samples of the batch
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(1, 1, 64, 64, generator=g), torch.randn(1, 1, 64, 64, generator=g)
    dd = PatchDiscriminator(conditional=False, width=8)
    torch.testing.assert_close(dd(torch.cat([a, b]))[:1], dd(torch.cat([a, 10 * b + 3]))[:1])


def test_receptive_field_is_70x70():
    # "70×70 convolutional patch discriminator" (pix2pix): the gradient of one logit reaches a 70×70 input
    # patch. Instance norms couple every pixel through their statistics, so they are bypassed here.
    torch.manual_seed(0)
    d = PatchDiscriminator(conditional=False, width=4).double()
    for i, m in enumerate(d.net):
        if isinstance(m, torch.nn.InstanceNorm2d):
            d.net[i] = torch.nn.Identity()
    x = torch.randn(1, 1, 256, 256, dtype=torch.float64, requires_grad=True)
    d(x)[0, 0, 16, 16].backward()
    hit = (x.grad[0, 0] != 0).nonzero()
    assert torch.equal(hit.max(0).values - hit.min(0).values + 1, torch.tensor([70, 70]))
