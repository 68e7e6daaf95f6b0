"""Neural-network restoration of (S)TEM images: CGRDN generator, patch discriminator, losses, baselines,
tiled inference and a model registry.

Implements Lobato, Friedrich & Van Aert (2023) (network, eqs. 2–15) and the baselines of Gambini et al.
(2023), Mohan et al. (2022) and Katsuno et al. (2021). See ``docs/restoration.md``.
"""

from ._baselines import (
    BiasFreeUNet,
    GambiniAutoencoder,
    GaussianFilter,
    ResNetUNet,
    anscombe,
    bm3d_denoise,
    inverse_anscombe,
)
from ._cgrdn import CGRDN, CGRDNConfig
from ._discriminator import PatchDiscriminator
from ._evaluate import evaluate
from ._inference import restore
from ._losses import (
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
from ._registry import build_model, list_models, load_model, model_card, weights_path
from ._train import TrainConfig, Trainer, train

__all__ = [
    "CGRDN",
    "CGRDNConfig",
    "PatchDiscriminator",
    "GaussianFilter",
    "GambiniAutoencoder",
    "BiasFreeUNet",
    "ResNetUNet",
    "anscombe",
    "inverse_anscombe",
    "bm3d_denoise",
    "LossWeights",
    "l1_loss",
    "l2_loss",
    "local_whitening",
    "mlwt_loss",
    "fourier_loss",
    "mean_loss",
    "std_loss",
    "mae_loss",
    "mse_loss",
    "wmse_loss",
    "adversarial_loss",
    "discriminator_loss",
    "generator_loss",
    "restore",
    "TrainConfig",
    "Trainer",
    "train",
    "evaluate",
    "list_models",
    "build_model",
    "load_model",
    "model_card",
    "weights_path",
]
