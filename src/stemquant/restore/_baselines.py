"""Baseline restorers in the same framework: Gaussian filter, BM3D, Gambini autoencoder, Mohan bias-free
UNet, Katsuno ResNet-18 UNet.

Every network is an ``nn.Module`` mapping (B, 1, H, W) to (B, 1, H, W) with a ``size_multiple`` attribute
(H and W must be multiples of it), so :func:`stemquant.restore.restore` can tile, pad and batch them like the
CGRDN. BM3D is not a torch operator and is a plain function on numpy arrays.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_image, check_positive

# ----------------------------------------------------------------------------------------------------
# Gaussian filter
# ----------------------------------------------------------------------------------------------------


class GaussianFilter(nn.Module):
    """Gaussian smoothing as a fixed (non-trainable) convolution, the classical baseline of Gambini et al.

    Parameters
    ----------
    sigma : float
        Standard deviation of the Gaussian [pixels].
    truncate : float
        Kernel half-width in units of ``sigma`` (as ``scipy.ndimage.gaussian_filter``).

    Notes
    -----
    Borders are reflection padded (``scipy.ndimage`` mode ``"mirror"``); the kernel is normalised to sum 1,
    so the filter preserves the mean and commutes with the affine normalisation of
    :func:`stemquant.restore.restore`.

    Examples
    --------
    >>> round(GaussianFilter(1.0)(torch.ones(1, 1, 8, 8)).mean().item(), 6)
    1.0
    """

    size_multiple = 1

    def __init__(self, sigma: float, *, truncate: float = 4.0):
        super().__init__()
        sigma = check_positive(sigma, "sigma", "pixels")
        truncate = check_positive(truncate, "truncate", "sigma")
        radius = int(truncate * sigma + 0.5)
        k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
        self.radius = radius
        self.sigma = sigma
        self.register_buffer("kernel", torch.as_tensor(k / k.sum(), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        if self.radius >= min(h, w):
            raise ValueError(f"GaussianFilter(sigma={self.sigma}) needs images larger than its radius "
                             f"{self.radius} pixels, got {h}×{w}")
        k = self.kernel.to(x.dtype)
        y = F.pad(x.reshape(b * c, 1, h, w), (self.radius,) * 4, mode="reflect")
        y = F.conv2d(y, k.view(1, 1, 1, -1))
        y = F.conv2d(y, k.view(1, 1, -1, 1))
        return y.reshape(b, c, h, w)


# ----------------------------------------------------------------------------------------------------
# BM3D with the Anscombe variance-stabilising transform
# ----------------------------------------------------------------------------------------------------


def anscombe(counts: np.ndarray) -> np.ndarray:
    """Anscombe transform ``2 sqrt(x + 3/8)``: Poisson counts -> approximately unit-variance Gaussian."""
    return 2.0 * np.sqrt(np.asarray(counts, dtype=np.float64) + 0.375)


def inverse_anscombe(z: np.ndarray) -> np.ndarray:
    """Closed-form approximation of the exact unbiased inverse Anscombe transform (Mäkitalo & Foi 2011).

    ``x = z²/4 + sqrt(3/2)/(4z) - 11/(8z²) + 5 sqrt(3/2)/(8z³) - 1/8``; for ``z`` below the transform of 0
    the result is clipped to 0 counts.

    References
    ----------
    Mäkitalo, Foi, "A closed-form approximation of the exact unbiased inverse of the Anscombe variance-
    stabilizing transformation", IEEE Trans. Image Process. 20, 2697 (2011). DOI: 10.1109/TIP.2011.2121085
    """
    z = np.maximum(np.asarray(z, dtype=np.float64), 2.0 * np.sqrt(0.375))
    s = np.sqrt(1.5)
    x = 0.25 * z**2 + 0.25 * s / z - 1.375 / z**2 + 0.625 * s / z**3 - 0.125
    return np.maximum(x, 0.0)


def bm3d_denoise(image, *, sigma: float | None = None) -> np.ndarray:
    """BM3D denoising; Poisson counts go through the Anscombe transform (optional ``bm3d`` package).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
        If ``sigma`` is None: detector **counts** (Poisson noise) [e⁻ per pixel], ≥ 0. The image is
        Anscombe-transformed, denoised with noise level 1 and mapped back with the unbiased inverse.
        Otherwise any intensity with additive Gaussian noise of std ``sigma``.
    sigma : float, optional
        Standard deviation of additive Gaussian noise [same unit as the image].

    Returns
    -------
    ndarray, same shape as ``image``, float64

    Raises
    ------
    ImportError
        If the optional ``bm3d`` package is not installed (``pip install bm3d``).

    References
    ----------
    Dabov, Foi, Katkovnik, Egiazarian, "Image denoising by sparse 3-D transform-domain collaborative
    filtering", IEEE Trans. Image Process. 16, 2080 (2007). DOI: 10.1109/TIP.2007.901238
    """
    try:
        import bm3d
    except ImportError as exc:
        raise ImportError("bm3d_denoise needs the optional 'bm3d' package: pip install bm3d") from exc
    arr = check_image(image, min_size=8)
    if sigma is None:
        if arr.min() < 0:
            raise ValueError(f"image must be non-negative detector counts for the Anscombe transform, got "
                             f"minimum {arr.min():g}; give sigma for Gaussian-noise data")
    else:
        sigma = check_positive(sigma, "sigma", "image units")
    frames = arr.reshape((-1,) + arr.shape[-2:])
    out = np.empty_like(frames)
    for i, frame in enumerate(frames):
        if sigma is None:
            out[i] = inverse_anscombe(bm3d.bm3d(anscombe(frame), sigma_psd=1.0))
        else:
            out[i] = bm3d.bm3d(frame, sigma_psd=sigma)
    return out.reshape(arr.shape)


# ----------------------------------------------------------------------------------------------------
# Gambini et al. convolutional autoencoder
# ----------------------------------------------------------------------------------------------------


class GambiniAutoencoder(nn.Module):
    """Convolutional denoising autoencoder of Gambini et al. (2023), section 2.1.

    Ten layers: encoder conv–pool–conv–pool–conv, decoder conv–up–conv–up–conv, 3×3 "same" convolutions with
    ``filters`` (32) channels and ReLU, the last one with a single filter; 2×2 max pooling and nearest
    up-sampling (latent (32, 32, 32) for a 128×128 input). Train with :func:`stemquant.restore.wmse_loss`.

    Parameters
    ----------
    filters : int
        Channels of the hidden conv layers.
    final_relu : bool
        Apply ReLU to the output as in the paper (which works on non-negative counts). Default False,
        because :func:`stemquant.restore.restore` feeds zero-mean, unit-std images (docs/restoration.md).

    References
    ----------
    Gambini et al., "Machine-learning approach for quantified resolvability enhancement of low-dose STEM
    data", Mach. Learn.: Sci. Technol. 4, 015025 (2023).
    """

    size_multiple = 4

    def __init__(self, filters: int = 32, *, final_relu: bool = False):
        super().__init__()
        f = filters
        self.final_relu = bool(final_relu)
        self.encoder = nn.Sequential(
            nn.Conv2d(1, f, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(f, f, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(f, f, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.Conv2d(f, f, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(f, f, 3, padding=1), nn.ReLU(), nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(f, 1, 3, padding=1),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_multiple(x, self.size_multiple, "GambiniAutoencoder")
        y = self.decoder(self.encoder(x))
        return torch.relu(y) if self.final_relu else y


# ----------------------------------------------------------------------------------------------------
# Mohan et al. bias-free UNet with a large field of view
# ----------------------------------------------------------------------------------------------------


class _BiasFreeBatchNorm2d(nn.Module):
    """Batch norm without mean subtraction and additive offset: ``x / sd · γ`` (Mohan et al. 2020)."""

    def __init__(self, channels: int, *, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.register_buffer("running_sd", torch.ones(1, channels, 1, 1))
        self.momentum = momentum
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            sd = (x.var(dim=(0, 2, 3), keepdim=True, correction=0) + self.eps).sqrt()
            with torch.no_grad():
                self.running_sd.mul_(1 - self.momentum).add_(self.momentum * sd)
        else:
            sd = self.running_sd
        return x / sd * self.weight.view(1, -1, 1, 1)


def _bf_block(c_in: int, c_out: int) -> nn.Sequential:
    """conv-BN-ReLU-conv-BN-ReLU without any additive constant."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), _BiasFreeBatchNorm2d(c_out), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), _BiasFreeBatchNorm2d(c_out), nn.ReLU(),
    )  # fmt: skip


class BiasFreeUNet(nn.Module):
    """Bias-free UNet with a large field of view (Mohan et al. 2022, appendix B.1).

    ``scales`` down-blocks (2×2 max pool + conv-block) and as many up-blocks (bilinear ×2 up-sampling,
    concatenation with the skip connection, conv-block); conv-block = conv-BN-ReLU-conv-BN-ReLU with 3×3
    convolutions; ``channels`` (128) in every layer; a final 1×1 convolution. All convolutions are bias-free
    and the batch norms are bias-free (no mean subtraction, no β), so the network is positively homogeneous:
    ``f(a·x) = a·f(x)`` for ``a > 0`` (in eval mode exactly), as in Mohan et al. (2020). 4 scales give a
    221×221 and 6 scales an 893×893 field of view.

    Parameters
    ----------
    scales : int
        Number of down-sampling steps (paper: 4 or 6; final model 6).
    channels : int
        Channels of every conv layer (paper: 128).

    References
    ----------
    Mohan et al., "Deep denoising for scientific discovery: a case study in electron microscopy" (2022).
    Mohan, Kadkhodaie, Simoncelli, Fernandez-Granda, "Robust and interpretable blind image denoising via
    bias-free convolutional neural networks", ICLR 2020.
    """

    default_scales = 6

    def __init__(self, scales: int = default_scales, channels: int = 128):
        super().__init__()
        if not isinstance(scales, int) or scales < 1:
            raise ValueError(f"scales must be a positive integer, got {scales!r}")
        c = channels
        self.size_multiple = 2**scales
        self.inc = _bf_block(1, c)
        self.down = nn.ModuleList(_bf_block(c, c) for _ in range(scales))
        self.up = nn.ModuleList(_bf_block(2 * c, c) for _ in range(scales))
        self.out = nn.Conv2d(c, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_multiple(x, self.size_multiple, "BiasFreeUNet")
        h = self.inc(x)
        skips = []
        for block in self.down:
            skips.append(h)
            h = block(F.max_pool2d(h, 2))
        for block, skip in zip(self.up, reversed(skips), strict=True):
            h = F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False)
            h = block(torch.cat([skip, h], dim=1))
        return self.out(h)


# ----------------------------------------------------------------------------------------------------
# Katsuno et al. UNet with a ResNet-18 encoder
# ----------------------------------------------------------------------------------------------------


class _BasicBlock(nn.Module):
    """ResNet basic block: two 3×3 conv-BN with identity (or 1×1 projection) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


def _conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    """3×3 conv, batch norm, ReLU."""
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class ResNetUNet(nn.Module):
    """U-Net with a ResNet-18 encoder (Katsuno et al. 2021), written in plain torch.

    Encoder: ResNet-18 (7×7/2 stem, 3×3/2 max pool, four stages of two basic blocks, 64-128-256-512
    channels). Decoder as in ``segmentation_models_pytorch.Unet`` (which Katsuno et al. used): five blocks,
    each nearest ×2 up-sampling, concatenation with the encoder feature of the same scale, two 3×3
    conv-BN-ReLU; decoder channels (256, 128, 64, 32, 16); a 3×3 output convolution. Trained with L1
    (:func:`stemquant.restore.mae_loss`). No ImageNet weights (no downloads); 1 input channel.

    Parameters
    ----------
    decoder_channels : tuple of int
        Channels of the five decoder blocks.

    References
    ----------
    Katsuno, Kimura, Yamazaki, Takigawa, "Fast improvement of TEM image with low-dose electrons by deep
    learning" (2021). arXiv:2106.01718
    """

    size_multiple = 32

    def __init__(self, decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)):
        super().__init__()
        if len(decoder_channels) != 5:
            raise ValueError(f"decoder_channels must have 5 entries, got {decoder_channels!r}")
        self.stem = nn.Sequential(nn.Conv2d(1, 64, 7, stride=2, padding=3, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU())
        widths, stages, c_in = (64, 128, 256, 512), [], 64
        for i, c in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(_BasicBlock(c_in, c, stride), _BasicBlock(c, c, 1)))
            c_in = c
        self.stages = nn.ModuleList(stages)
        skip_ch = (256, 128, 64, 64, 0)
        blocks, c_in = [], 512
        for c_skip, c_out in zip(skip_ch, decoder_channels, strict=True):
            blocks.append(nn.Sequential(*_conv_bn_relu(c_in + c_skip, c_out), *_conv_bn_relu(c_out, c_out)))
            c_in = c_out
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c_in, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_multiple(x, self.size_multiple, "ResNetUNet")
        f1 = self.stem(x)  # stride 2, 64
        h = F.max_pool2d(f1, 3, stride=2, padding=1)
        feats = [f1]
        for stage in self.stages:
            h = stage(h)
            feats.append(h)  # strides 4, 8, 16, 32
        skips = [feats[3], feats[2], feats[1], feats[0], None]
        for block, skip in zip(self.decoder, skips, strict=True):
            h = F.interpolate(h, scale_factor=2, mode="nearest")
            if skip is not None:
                h = torch.cat([h, skip], dim=1)
            h = block(h)
        return self.head(h)


def _check_multiple(x: torch.Tensor, m: int, name: str) -> None:
    """Raise if x is not (B, 1, H, W) with H, W multiples of m."""
    if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] % m or x.shape[-2] % m:
        raise ValueError(f"{name} input must have shape (B, 1, H, W) with H and W multiples of {m}, got "
                         f"{tuple(x.shape)}; stemquant.restore.restore pads for you")
