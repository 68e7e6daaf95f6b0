"""Tests of the held-out evaluation (stemquant.restore._evaluate) on tiny images."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stemquant.restore import CGRDN
from stemquant.restore._evaluate import (
    _psnr,
    evaluate,
    evaluate_main,
    heldout_pairs,
    resolve_model,
    tune_gaussian_sigma,
)
from stemquant.restore._train import ARCHITECTURES, TrainConfig, Trainer, _step_rng


def test_heldout_pairs_fixed_and_distinct_from_training():
    a = heldout_pairs(2, shape=(32, 32))
    b = heldout_pairs(2, shape=(32, 32))
    c = heldout_pairs(2, shape=(32, 32), seed=7)
    assert len(a) == 2 and a[0][0].shape == a[0][1].shape == (32, 32)
    assert all(np.array_equal(x[0], y[0]) and x[2] == y[2] for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0][0], c[0][0])
    # the training stream of the same root seed draws different numbers (spawn key (0, k) vs (1, i))
    eval_draw = np.random.default_rng(np.random.SeedSequence(12345, spawn_key=(1, 0))).random(4)
    assert not np.array_equal(eval_draw, _step_rng(12345, 0).random(4))


@pytest.mark.parametrize("kw, match", [({"n_images": 0}, "n_images"), ({"seed": -1}, "seed"),
                                       ({"shape": (8, 8)}, "shape")])
def test_heldout_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        heldout_pairs(**{"n_images": 1, **kw})


def test_psnr_inf_for_exact_copy():
    clean = np.linspace(0, 1, 256).reshape(16, 16)
    assert _psnr(clean, clean) == np.inf
    assert np.isfinite(_psnr(clean, clean + 0.01))


def test_evaluate_identity_equals_raw():
    df = evaluate(torch.nn.Identity(), n_images=2, shape=(32, 32), baselines=False, device="cpu")
    assert list(df.index) == ["raw", "model"]
    assert list(df.columns) == ["psnr_mean", "psnr_std", "ssim_mean", "ssim_std", "n"]
    assert (df["n"] == 2).all()
    assert np.isfinite(df.loc["raw", "psnr_mean"])
    # restore() computes an Identity in float32 (eps 1.2e-7): metrics agree to float32 round-off
    np.testing.assert_allclose(df.loc["model"].to_numpy(float), df.loc["raw"].to_numpy(float), rtol=1e-6)


def test_evaluate_baselines_and_per_image():
    df = evaluate(torch.nn.Identity(), n_images=2, shape=(32, 32), device="cpu", per_image=True)
    methods = list(dict.fromkeys(df["method"]))
    assert methods[0] == "raw" and methods[-1] == "model"
    assert any(m.startswith("gaussian(sigma=") for m in methods)
    assert set(df.columns) == {"image", "dose", "method", "psnr", "ssim"}
    assert len(df) == 2 * len(methods)
    # a tuned Gaussian filter must not be worse than the raw image on the tuning grid's best sigma, averaged
    raw = df[df.method == "raw"].psnr.mean()
    gau = df[df.method.str.startswith("gaussian")].psnr.mean()
    assert gau > raw


def test_tune_gaussian_sigma_picks_from_grid():
    s = tune_gaussian_sigma(shape=(32, 32), n_images=2, sigmas=(0.5, 1.0))
    assert s in (0.5, 1.0)


def test_resolve_model_from_exported_weights(tmp_path):
    cfg = TrainConfig(architecture="tiny", patch_size=32, batch_size=1, steps=1, device="cpu",
                      checkpoint_dir=str(tmp_path), eval_every=0, export=str(tmp_path / "m.pt"))
    trainer = Trainer(cfg)
    trainer.fit(progress=False)
    net = resolve_model(str(tmp_path / "m.pt"), device="cpu")
    assert isinstance(net, CGRDN) and net.config == ARCHITECTURES["tiny"]()
    with pytest.raises(FileNotFoundError):
        resolve_model(str(tmp_path / "missing.pt"))
    with pytest.raises(TypeError):
        resolve_model(3)


def test_evaluate_main(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        evaluate_main(["--help"])
    assert exc.value.code == 0
    capsys.readouterr()
    cfg = TrainConfig(architecture="tiny", patch_size=32, batch_size=1, steps=1, device="cpu",
                      checkpoint_dir=str(tmp_path), eval_every=0, export=str(tmp_path / "m.pt"))
    Trainer(cfg).fit(progress=False)
    csv = tmp_path / "t.csv"
    assert evaluate_main([str(tmp_path / "m.pt"), "--n-images", "2", "--size", "32", "--no-baselines",
                          "--device", "cpu", "--csv", str(csv)]) == 0
    out = capsys.readouterr().out
    assert "raw" in out and "model" in out and csv.is_file()
    per = tmp_path / "per.csv"
    assert evaluate_main([str(tmp_path / "m.pt"), "--n-images", "2", "--size", "32", "--no-baselines",
                          "--device", "cpu", "--per-image-csv", str(per)]) == 0
    import pandas as pd

    t = pd.read_csv(per)
    assert len(t) == 4 and set(t.method) == {"raw", "model"}
    # the printed/CSV summary is the per-image table's mean per method
    summary = pd.read_csv(csv, index_col=0)
    np.testing.assert_allclose(summary.loc["model", "psnr_mean"], t[t.method == "model"].psnr.mean(), rtol=1e-9)
