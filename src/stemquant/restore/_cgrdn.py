"""Concatenated Grouped Residual Dense Network (CGRDN), the generator of Lobato et al. (2023).

Structure (Fig. 9 of Lobato et al.; thesis Fig. 2.10 of Friedrich 2023)::

    x ─ conv3×3(1→F) ─ conv4×4/2(F→F) = s ─┬─ GRDB ─ GRDB ─ … ─ GRDB          (n_grdb blocks, cascaded)
                                          │    │      │           │
                                          │   concat(all GRDB outputs) ─ conv1×1(n_grdb·F→F)
                                          └──────────────── + ─────────────── (semi-global residual)
       ─ convT4×4/2(F→F) ─ conv3×3(F→1) ─ + x                                 (global residual)

    GRDB: n_rdb cascaded RDBs, concat of their outputs, conv1×1(n_rdb·F→F), + GRDB input.
    RDB:  n_layers densely connected conv3×3(·→G)+ReLU, conv1×1(F+n_layers·G→F), + RDB input.

The published HR-STEM model (``CGRDNConfig.published()``) has 4 GRDB × 4 RDB × 8 layers, growth G = 32 and
F = 64 features: 7,035,521 parameters, the "7.04 M" of Table 1 of Lobato et al. The GRDN of the same size
(cascaded GRDBs, no concatenation/fusion) has 7,019,073 + CBAM ≈ 7.02 M, so the concatenation-and-fusion is
a single 1×1 convolution (+16,448 parameters, "only an additional 20,000 parameters").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class CGRDNConfig:
    """Size of a :class:`CGRDN`.

    Parameters
    ----------
    n_grdb : int
        Number of grouped residual dense blocks.
    n_rdb : int
        Residual dense blocks per GRDB.
    n_layers : int
        Densely connected 3×3 conv layers per RDB.
    growth : int
        Channels added by each dense layer (growth rate).
    features : int
        Base number of feature maps.
    in_channels : int
        Image channels (1 for HAADF-STEM).
    """

    n_grdb: int = 4
    n_rdb: int = 4
    n_layers: int = 8
    growth: int = 32
    features: int = 64
    in_channels: int = 1

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"CGRDNConfig.{name} must be a positive integer, got {value!r}")

    @classmethod
    def published(cls) -> CGRDNConfig:
        """The released HR-STEM configuration of Lobato et al. (2023): 7,035,521 parameters."""
        return cls(n_grdb=4, n_rdb=4, n_layers=8, growth=32, features=64)

    @classmethod
    def lite(cls) -> CGRDNConfig:
        """A CPU-sized configuration (2 GRDB × 2 RDB × 4 layers, growth 16, 32 features; 181,377 parameters).

        Chosen so that a 1024×1024 image restores in under 3 s on a 2-core CPU (see
        ``benchmarks/restore_speed.py`` and ``docs/restoration.md``); same class and connectivity as the
        published model, about 39× fewer parameters and multiply-adds per pixel.
        """
        return cls(n_grdb=2, n_rdb=2, n_layers=4, growth=16, features=32)


class _RDB(nn.Module):
    """Residual dense block: dense 3×3 conv+ReLU layers, 1×1 local fusion, local residual."""

    def __init__(self, features: int, growth: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Conv2d(features + i * growth, growth, 3, padding=1) for i in range(n_layers)
        )
        self.fusion = nn.Conv2d(features + n_layers * growth, features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = [x]
        for layer in self.layers:
            feats.append(torch.relu(layer(torch.cat(feats, dim=1))))
        return x + self.fusion(torch.cat(feats, dim=1))


class _ConcatFuse(nn.Module):
    """Cascade of blocks whose outputs are concatenated, fused by a 1×1 conv and added to the input."""

    def __init__(self, blocks: list[nn.Module], features: int):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.fusion = nn.Conv2d(len(blocks) * features, features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outs = []
        h = x
        for block in self.blocks:
            h = block(h)
            outs.append(h)
        return x + self.fusion(torch.cat(outs, dim=1))


class CGRDN(nn.Module):
    """Concatenated Grouped Residual Dense Network (image restoration generator).

    Implements the generator of Lobato et al. (2023), section "Generator architecture" (Fig. 9): GRDN of
    Kim et al. (2019) without CBAM, with the cascade of GRDBs replaced by feature concatenation, 1×1 feature
    fusion and a semi-global residual connection.

    Parameters
    ----------
    config : CGRDNConfig, optional
        Network size; default :meth:`CGRDNConfig.published` (4 × 4 × 8, growth 32, 64 features).

    Notes
    -----
    Input ``x : Tensor, shape (B, C, H, W)`` with even ``H`` and ``W`` (one stride-2 down-sampling); output
    has the same shape. ``size_multiple = 2`` tells :func:`stemquant.restore.restore` how to pad.
    The network learns the residual ``G(x) - x`` (global residual connection). Weights use PyTorch's default
    initialisation; building a model never reads weights (see :func:`stemquant.restore.load_model`).

    References
    ----------
    Lobato, Friedrich, Van Aert, "Deep convolutional neural networks to restore single-shot electron
    microscopy images" (2023). DOI: 10.48550/arXiv.2303.17025
    Kim, Chung, Jung, "GRDN: Grouped residual dense network for real image denoising", CVPR Workshops 2019.

    Examples
    --------
    >>> net = CGRDN(CGRDNConfig.lite())
    >>> net(torch.zeros(1, 1, 32, 32)).shape
    torch.Size([1, 1, 32, 32])
    """

    size_multiple = 2

    def __init__(self, config: CGRDNConfig | None = None):
        super().__init__()
        cfg = CGRDNConfig.published() if config is None else config
        if not isinstance(cfg, CGRDNConfig):
            raise TypeError(f"config must be a CGRDNConfig, got {type(cfg).__name__}")
        self.config = cfg
        f = cfg.features
        self.head = nn.Conv2d(cfg.in_channels, f, 3, padding=1)
        self.down = nn.Conv2d(f, f, 4, stride=2, padding=1)
        grdbs = [
            _ConcatFuse([_RDB(f, cfg.growth, cfg.n_layers) for _ in range(cfg.n_rdb)], f)
            for _ in range(cfg.n_grdb)
        ]
        self.body = _ConcatFuse(grdbs, f)
        self.up = nn.ConvTranspose2d(f, f, 4, stride=2, padding=1)
        self.tail = nn.Conv2d(f, cfg.in_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[-1] % 2 or x.shape[-2] % 2:
            raise ValueError(
                f"CGRDN input must have shape (B, C, H, W) with even H and W, got {tuple(x.shape)}; "
                "pad the image (stemquant.restore.restore does this for you)"
            )
        h = self.down(self.head(x))
        h = self.body(h)
        return x + self.tail(self.up(h))
