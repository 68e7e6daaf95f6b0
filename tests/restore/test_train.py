"""Tests of the restoration trainer (stemquant.restore._train) on tiny configs."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from stemquant.restore import CGRDN, LossWeights
from stemquant.restore._inference import _normalise
from stemquant.restore._registry import CARD_KEYS
from stemquant.restore._train import (
    ARCHITECTURES,
    TrainConfig,
    Trainer,
    _lr_factor,
    make_pair,
    normalise_pair,
    train,
    train_main,
)

REPO = Path(__file__).resolve().parents[2]


def tiny(tmp_path, **kw) -> TrainConfig:
    """A config that trains in well under a second per step on the CPU."""
    base = dict(architecture="tiny", patch_size=32, batch_size=2, steps=4, warmup_steps=1, device="cpu",
                checkpoint_dir=str(tmp_path / "run"), checkpoint_every=0, eval_every=0, num_workers=0)
    base.update(kw)
    return TrainConfig(**base)


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# --------------------------------------------------------------------------------------------- config
def test_config_toml_round_trip(tmp_path):
    cfg = TrainConfig(architecture="published", patch_size=96, lr=1e-3, schedule="step", steps=123,
                      loss=LossWeights(l1=2.0, mlwt=0.0), adversarial=True, dose_range=(1e3, 1e4),
                      export="w/x.pt")
    path = tmp_path / "c.toml"
    path.write_text(cfg.to_toml())
    assert TrainConfig.from_toml(path) == cfg


def test_shipped_config_loads():
    cfg = TrainConfig.from_toml(REPO / "configs" / "hrstem.toml")
    assert cfg.architecture == "lite" and not cfg.adversarial
    # re-running the shipped stage-1 config must not overwrite the shipped (stage-2) weights and model card
    from stemquant.restore import weights_path

    export = (REPO / cfg.export).resolve()
    assert export.suffix == ".pt"
    assert export.parent != weights_path("hrstem").resolve().parent


@pytest.mark.parametrize("kw, match", [
    ({"architecture": "huge"}, "architecture"),
    ({"patch_size": 33}, "patch_size must be even"),
    ({"patch_size": 8}, "patch_size"),
    ({"batch_size": 0}, "batch_size"),
    ({"lr": -1e-3}, "lr must be a positive"),
    ({"lr_min": 1.0}, "lr_min"),
    ({"schedule": "linear"}, "schedule"),
    ({"dose_range": (1e4, 1e3)}, "dose_range"),
    ({"device": "tpu"}, "device"),
    ({"steps": 2.5}, "steps"),
    ({"checkpoint_seconds": -1}, "checkpoint_seconds"),
])
def test_config_bad_values(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_config_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match="unknown TrainConfig key"):
        TrainConfig.from_dict({"patchsize": 64})
    path = tmp_path / "bad.toml"
    path.write_text('architecture = "lite"\n[loss]\nl3 = 1.0\n')
    with pytest.raises(ValueError, match="unknown loss weight"):
        TrainConfig.from_toml(path)


def test_lr_schedule_warmup_and_cosine_end():
    cfg = TrainConfig(lr=1e-3, lr_min=1e-5, warmup_steps=10, steps=110)
    f = _lr_factor(cfg)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(110) * cfg.lr == pytest.approx(cfg.lr_min)
    assert all(f(k) >= f(k + 1) for k in range(10, 110))
    g = _lr_factor(replace(cfg, schedule="step", step_size=20, gamma=0.5))
    assert g(19) == 1.0 and g(29) == 0.5 and g(45) == 0.25  # counted from step 0


# ----------------------------------------------------------------------------------------------- data
def test_normalise_pair_matches_restore():
    rng = np.random.default_rng(0)
    noisy = torch.from_numpy(rng.poisson(20.0, (3, 1, 16, 16)).astype(np.float64))
    clean = torch.from_numpy(rng.uniform(10, 30, (3, 1, 16, 16)))
    xn, yn = normalise_pair(noisy, clean)
    ref, mean, std = _normalise(noisy[:, 0].numpy())
    np.testing.assert_allclose(xn[:, 0].numpy(), ref, rtol=1e-12, atol=1e-12)
    # the target goes through the same affine map: inverting it with the input's mean/std gives it back
    np.testing.assert_allclose(yn[:, 0].numpy() * std[:, None, None] + mean[:, None, None],
                               clean[:, 0].numpy(), rtol=1e-12)


def test_make_pair_contract_and_determinism():
    a = make_pair(np.random.default_rng(1), (32, 24))
    b = make_pair(np.random.default_rng(1), (32, 24))
    c = make_pair(np.random.default_rng(2), (32, 24))
    noisy, clean, dose = a
    assert noisy.shape == clean.shape == (32, 24)
    assert 5e2 <= dose <= 5e5 and noisy.std() > 0
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])


# -------------------------------------------------------------------------------------------- training
def test_train_smoke_and_checkpoint(tmp_path):
    cfg = tiny(tmp_path)
    model = train(cfg, progress=False)
    assert isinstance(model, CGRDN) and not model.training
    out = model(torch.zeros(1, 1, 32, 32))
    assert out.shape == (1, 1, 32, 32)
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 4
    assert TrainConfig.from_dict(json.loads(state["config"])) == cfg
    assert {"model", "optimizer", "scheduler", "torch_rng"} <= set(state)


def test_resume_is_bit_for_bit(tmp_path):
    straight = train(tiny(tmp_path, checkpoint_dir=str(tmp_path / "a")), progress=False)
    cfg = tiny(tmp_path, checkpoint_dir=str(tmp_path / "b"))
    Trainer(cfg).fit(until=2, progress=False)
    assert torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["step"] == 2
    resumed = train(cfg, resume=True, progress=False)
    assert same_weights(straight, resumed)


def test_init_weights_starts_from_exported_model(tmp_path):
    first = tiny(tmp_path, steps=2, checkpoint_dir=str(tmp_path / "a"), export=str(tmp_path / "w.pt"))
    trained = train(first, progress=False)
    second = Trainer(tiny(tmp_path, checkpoint_dir=str(tmp_path / "b"), init_weights=str(tmp_path / "w.pt"),
                          seed=7))
    second.setup()  # a different seed would give different random weights: the file must win
    assert same_weights(trained, second.model)


def test_init_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="init_weights"):
        Trainer(tiny(tmp_path, init_weights=str(tmp_path / "missing.pt"))).setup()
    torch.save({"bogus": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="does not fit"):
        Trainer(tiny(tmp_path, init_weights=str(tmp_path / "bad.pt"))).setup()


def test_resume_without_checkpoint_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(tiny(tmp_path), resume=True, progress=False)


def test_training_determinism(tmp_path):
    a = train(tiny(tmp_path, steps=2, checkpoint_dir=str(tmp_path / "a")), progress=False)
    b = train(tiny(tmp_path, steps=2, checkpoint_dir=str(tmp_path / "b")), progress=False)
    c = train(tiny(tmp_path, steps=2, seed=1, checkpoint_dir=str(tmp_path / "c")), progress=False)
    assert same_weights(a, b)
    assert not same_weights(a, c)


def test_data_stream_independent_of_workers(tmp_path):
    a = train(tiny(tmp_path, steps=3, checkpoint_dir=str(tmp_path / "a")), progress=False)
    b = train(tiny(tmp_path, steps=3, num_workers=2, checkpoint_dir=str(tmp_path / "b")), progress=False)
    assert same_weights(a, b)


def test_gan_phase_trains_discriminator(tmp_path):
    cfg = tiny(tmp_path, adversarial=True, gan_start=1, steps=3)
    trainer = Trainer(cfg)
    trainer.fit(progress=False)
    assert trainer.disc is not None
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert "disc" in state and state["disc_optimizer"]["state"]  # the critic took optimiser steps


class _SignalAt(Trainer):
    """Sends itself SIGTERM (or raises KeyboardInterrupt) during step 2."""

    def __init__(self, config, how):
        super().__init__(config)
        self.how = how

    def train_step(self, noisy, clean):
        logs = super().train_step(noisy, clean)
        if self.step == 1:
            if self.how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise KeyboardInterrupt
        return logs


def test_sigterm_checkpoints_and_stops(tmp_path):
    trainer = _SignalAt(tiny(tmp_path, steps=10), "sigterm")
    trainer.fit(progress=False)
    assert trainer.step == 2  # the step in progress completes, then the loop stops
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 2
    assert signal.getsignal(signal.SIGTERM) is not trainer._on_sigterm  # handler restored


def test_keyboard_interrupt_checkpoints_and_reraises(tmp_path):
    trainer = _SignalAt(tiny(tmp_path, steps=10), "interrupt")
    with pytest.raises(KeyboardInterrupt):
        trainer.fit(progress=False)
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 1


def test_export_round_trip_and_card(tmp_path):
    cfg = tiny(tmp_path, steps=2, eval_every=2, eval_images=2, eval_size=32,
               export=str(tmp_path / "w" / "hrstem.pt"))
    model = train(cfg, progress=False)
    state = torch.load(tmp_path / "w" / "hrstem.pt", weights_only=True)
    assert all(v.dtype == torch.float32 for v in state.values())
    net = CGRDN(ARCHITECTURES["tiny"]())
    net.load_state_dict(state, strict=True)
    assert same_weights(net, model)
    card = json.loads((tmp_path / "w" / "hrstem.json").read_text())
    assert set(CARD_KEYS) <= set(card)
    assert card["steps_done"] == 2 and card["metrics"]["step"] == 2
    assert {"psnr_raw", "psnr_model", "ssim_raw", "ssim_model"} <= set(card["metrics"])
    assert (tmp_path / "w" / "hrstem.md").read_text().startswith("# Model card")


def test_train_main(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        train_main(["--help"])
    assert exc.value.code == 0
    assert "--resume" in capsys.readouterr().out
    path = tmp_path / "c.toml"
    path.write_text(tiny(tmp_path, steps=50).to_toml())
    assert train_main(["--config", str(path), "--steps", "2", "--device", "cpu", "--no-progress"]) == 0
    assert "stopped at step 2 of 2" in capsys.readouterr().out
    assert train_main(["--config", str(path), "--steps", "3", "--resume", "--no-progress"]) == 0
    assert torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["step"] == 3


def test_fresh_run_keeps_an_existing_checkpoint_unless_overwrite(tmp_path):
    """The library guards the checkpoint itself (not only the CLI): a fresh run into a used folder is refused."""
    cfg = tiny(tmp_path, steps=1)
    first = train(cfg, progress=False)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    before = ckpt.read_bytes()
    with pytest.raises(FileExistsError, match="already exists"):
        Trainer(cfg).fit(progress=False)
    with pytest.raises(ValueError, match="overwrite"):  # OverwriteError is both
        train(cfg, progress=False)
    assert ckpt.read_bytes() == before
    again = train(cfg, overwrite=True, progress=False)  # same seed, fresh run -> the same single step
    assert same_weights(first, again)
    assert torch.load(ckpt, weights_only=True)["step"] == 1


def test_train_main_keeps_an_existing_checkpoint_without_resume_or_overwrite(tmp_path, capsys):
    """A fresh `stemquant train` into a folder that holds a checkpoint (a forgotten --resume) must not replace it."""
    path = tmp_path / "c.toml"
    path.write_text(tiny(tmp_path, steps=1).to_toml())
    argv = ["--config", str(path), "--device", "cpu", "--no-progress"]
    assert train_main(argv) == 0
    ckpt = tmp_path / "run" / "checkpoint.pt"
    before = ckpt.read_bytes()
    with pytest.raises(ValueError, match="--resume"):
        train_main(argv)
    assert ckpt.read_bytes() == before
    assert train_main(argv + ["--overwrite"]) == 0  # explicit: a fresh run, same seed -> same single step
    assert torch.load(ckpt, weights_only=True)["step"] == 1


def test_make_pair_redraws_failed_synth_draws(monkeypatch):
    import stemquant.synth as synth

    real, calls = synth.random_clean_image, []

    def flaky(shape, *, rng, kind):
        calls.append(1)
        if len(calls) == 1:
            raise ValueError("numbers must be atomic numbers in [1, 103], got []")
        return real(shape, rng=rng, kind=kind)

    monkeypatch.setattr(synth, "random_clean_image", flaky)
    noisy, clean, _ = make_pair(np.random.default_rng(3), (32, 32))
    assert len(calls) == 2 and noisy.shape == clean.shape == (32, 32)
    monkeypatch.setattr(synth, "random_clean_image", lambda *a, **k: (_ for _ in ()).throw(ValueError("x")))
    with pytest.raises(RuntimeError, match="consecutive failed draws"):
        make_pair(np.random.default_rng(3), (32, 32))


# ------------------------------------------------------------------------------------- baselines
def test_baseline_architectures_build_the_baseline_networks():
    from stemquant.restore import BiasFreeUNet, GambiniAutoencoder, ResNetUNet
    from stemquant.restore._train import SIZE_MULTIPLES, build_network

    for arch, cls in (("gambini", GambiniAutoencoder), ("mohan", BiasFreeUNet), ("katsuno", ResNetUNet)):
        net = build_network(arch)
        assert type(net) is cls and net.size_multiple == SIZE_MULTIPLES[arch]
    assert isinstance(build_network("tiny"), CGRDN)
    with pytest.raises(ValueError, match="architecture must be one of"):
        TrainConfig(architecture="unet")


@pytest.mark.parametrize("arch, bad, good", [("gambini", 130, 132), ("mohan", 96, 128), ("katsuno", 80, 96)])
def test_patch_size_must_fit_the_baseline_stride(arch, bad, good):
    with pytest.raises(ValueError, match="patch_size must be a multiple of"):
        TrainConfig(architecture=arch, patch_size=bad)
    assert TrainConfig(architecture=arch, patch_size=good).patch_size == good


def test_gambini_training_uses_the_cgrdn_data_and_exports_a_loadable_network(tmp_path):
    from stemquant.restore import GambiniAutoencoder
    from stemquant.restore._evaluate import resolve_model
    from stemquant.restore._registry import load_model

    l2 = LossWeights(l1=0, l2=1, mlwt=0, fourier=0, mean=0, std=0, adversarial=0)
    cfg = tiny(tmp_path, architecture="gambini", loss=l2, export=str(tmp_path / "w" / "gambini.pt"))
    trainer = Trainer(cfg)
    trainer.setup()
    # same seed -> the same initial network as a directly built one (torch.manual_seed(seed) first)
    torch.manual_seed(cfg.seed)
    assert same_weights(trainer.model, GambiniAutoencoder())
    trainer = Trainer(cfg)
    net = trainer.fit(progress=False)
    assert isinstance(net, GambiniAutoencoder) and trainer.step == cfg.steps
    torch.manual_seed(cfg.seed)
    assert not same_weights(net, GambiniAutoencoder())  # it was trained
    card = json.loads((tmp_path / "w" / "gambini.json").read_text())
    assert card["config"]["architecture"] == "gambini" and set(CARD_KEYS) <= set(card)
    assert "Gambini" in card["architecture"]
    # the weight file alone says what it is: rebuilt by the evaluator and by the registry (gambini.pt)
    assert same_weights(resolve_model(str(tmp_path / "w" / "gambini.pt"), device="cpu"), net)
    assert same_weights(load_model("gambini-ae", device="cpu", weights_dir=tmp_path / "w"), net)
    # a card that contradicts the weight file is an error
    card["config"]["architecture"] = "lite"
    (tmp_path / "w" / "gambini.json").write_text(json.dumps(card))
    with pytest.raises(ValueError, match="says architecture 'lite'"):
        resolve_model(str(tmp_path / "w" / "gambini.pt"), device="cpu")


def test_baseline_data_stream_is_the_cgrdn_stream(tmp_path):
    # the architecture does not enter the data: both see the batches of _step_rng(seed, k)
    from stemquant.restore._train import _BatchStream

    a = next(iter(_BatchStream(tiny(tmp_path), 3)))
    b = next(iter(_BatchStream(tiny(tmp_path, architecture="gambini"), 3)))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
