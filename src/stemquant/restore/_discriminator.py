"""Relativistic average patch discriminator of Lobato et al. (2023), Fig. 10 and eqs. (2)–(3)."""

from __future__ import annotations

import torch
from torch import nn


class PatchDiscriminator(nn.Module):
    """Patch discriminator (pix2pix 70×70 PatchGAN with instance norm and no zero padding).

    Returns the non-transformed critic ``C(y)`` (logits), shape ``(B, 1, H/8, W/8)``: 32×32 for a 256×256
    input. The relativistic average discriminator of eqs. (2)–(3) of Lobato et al. (2023) is
    ``D_Rap(y, y_g) = sigmoid(C(y) - mean C(y_g))``; it is formed inside the losses
    (:func:`stemquant.restore.adversarial_loss`, :func:`stemquant.restore.discriminator_loss`) from the two
    logit maps, so the network itself is an ordinary critic.

    Parameters
    ----------
    channels : int
        Image channels (1 for HAADF-STEM).
    conditional : bool
        If True (default) the critic sees the distorted input ``x`` concatenated with the (real or generated)
        image, as in the conditional GAN of eq. (15) (``D_cRap(x, y, y_g)``) and pix2pix.
    width : int
        Channels of the first layer; the published layout is ``width·(1, 2, 4, 8)`` = 64→128→256→512 → 1.

    Notes
    -----
    Layout (4×4 kernels): conv/2 (64) LReLU → conv/2 (128) IN LReLU → conv/2 (256) IN LReLU →
    conv/1 (512) IN LReLU → conv/1 (1). LeakyReLU slope 0.2; instance norms are affine; convolutions that
    feed an instance norm have no bias (the norm removes it).
    "Zero-padding layers removed" (Lobato et al.) together with a 32×32 output for a 256×256 input
    (seeds README) is read here as: every convolution keeps the "same" geometry (stride-2 convs halve the
    size, stride-1 convs keep it), with **reflection** padding instead of zeros. The choice is ours and is
    documented in ``docs/restoration.md``. H and W must be multiples of 8.

    References
    ----------
    Isola et al., "Image-to-image translation with conditional adversarial networks", CVPR 2017.
    DOI: 10.1109/CVPR.2017.632
    Jolicoeur-Martineau, "The relativistic discriminator: a key element missing from standard GAN",
    ICLR 2019. arXiv:1807.00734

    Examples
    --------
    >>> d = PatchDiscriminator(conditional=False, width=8)
    >>> d(torch.zeros(2, 1, 256, 256)).shape
    torch.Size([2, 1, 32, 32])
    """

    size_multiple = 8

    def __init__(self, channels: int = 1, *, conditional: bool = True, width: int = 64):
        super().__init__()
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        if not isinstance(width, int) or width < 1:
            raise ValueError(f"width must be a positive integer, got {width!r}")
        self.conditional = bool(conditional)
        c_in = 2 * channels if self.conditional else channels
        w = width

        def conv(ci, co, stride, bias):
            pad = 1 if stride == 2 else "same"
            return nn.Conv2d(ci, co, 4, stride=stride, padding=pad, padding_mode="reflect", bias=bias)

        def act():
            return nn.LeakyReLU(0.2)

        self.net = nn.Sequential(
            conv(c_in, w, 2, True), act(),
            conv(w, 2 * w, 2, False), nn.InstanceNorm2d(2 * w, affine=True), act(),
            conv(2 * w, 4 * w, 2, False), nn.InstanceNorm2d(4 * w, affine=True), act(),
            conv(4 * w, 8 * w, 1, False), nn.InstanceNorm2d(8 * w, affine=True), act(),
            conv(8 * w, 1, 1, True),
        )  # fmt: skip

    def forward(self, image: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """Critic logits ``C``; ``image`` and ``condition``: shape (B, C, H, W), H and W multiples of 8."""
        if image.ndim != 4 or image.shape[-1] % 8 or image.shape[-2] % 8:
            raise ValueError(
                f"image must have shape (B, C, H, W) with H and W multiples of 8, got {tuple(image.shape)}"
            )
        if self.conditional:
            if condition is None or condition.shape != image.shape:
                got = None if condition is None else tuple(condition.shape)
                raise ValueError(
                    f"conditional discriminator needs condition (the distorted input x) of shape "
                    f"{tuple(image.shape)}, got {got}; or build it with conditional=False"
                )
            image = torch.cat([condition, image], dim=1)
        elif condition is not None:
            raise ValueError("condition given to an unconditional discriminator; "
                             "build it with conditional=True")
        return self.net(image)
