"""The shipped Gambini autoencoder baseline (`weights/gambini.pt`, registry name `gambini-ae`)."""

import numpy as np
import pytest

from stemquant.restore import GambiniAutoencoder, load_model, model_card, weights_path

pytestmark = pytest.mark.skipif(not weights_path("gambini-ae").is_file(), reason="gambini weights not shipped")


def test_card_and_weights_load():
    card = model_card("gambini-ae")
    assert {"architecture", "data", "command", "seed", "metrics"} <= set(card)
    assert card["config"]["architecture"] == "gambini" and card["steps_done"] == card["config"]["steps"]
    model = load_model("gambini-ae", device="cpu")
    assert isinstance(model, GambiniAutoencoder) and not model.training
    assert sum(p.numel() for p in model.parameters()) == card["parameters"]


def test_shipped_autoencoder_denoises_low_dose_images():
    # Same 8 Poisson-only low-dose images (5e2-5e3 e⁻/Å², 128², a multiple of 4) as the
    # hrstem test. Measured with these weights: gain 10 log10(MSE_raw / MSE_restored) = 7.6 dB mean, 4.0 dB
    # sd per image (standard error 1.4 dB). Mean > 2 dB is 4 standard errors below: false-failure rate
    # ~3e-5 for weights of equal quality (normal approximation of the mean of 8).
    from .test_shipped_model import denoising_gains

    assert np.mean(denoising_gains("gambini-ae")) > 2.0
