"""Evaluation of restoration networks on a fixed, held-out synthetic HR-STEM set: PSNR / SSIM tables.

The held-out set is generated on the fly and deterministically: image ``i`` of a set with seed ``s`` comes
from ``SeedSequence(s, spawn_key=(1, i))`` (training uses spawn keys ``(0, step)``, the Gaussian-σ tuning set
``(2, i)``), so it never overlaps the training stream. See ``docs/training.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

from ._baselines import GaussianFilter, bm3d_denoise
from ._cgrdn import CGRDN
from ._inference import restore
from ._registry import load_model, load_state, network_from_state, read_state, weights_path
from ._train import ARCHITECTURES, BASELINE_ARCHITECTURES, make_pair

EVAL_SEED = 12345
EVAL_STREAM = 1
TUNE_STREAM = 2
NOMINAL_PIXEL_SIZE = 0.1  # [Å], the pixel size at which the synthetic doses are converted to counts
GAUSSIAN_SIGMAS = (0.5, 0.75, 1.0, 1.5, 2.0, 3.0)  # [pixels] grid for the Gaussian-filter baseline
N_TUNE = 8


def heldout_pairs(n_images: int = 64, *, seed: int = EVAL_SEED, shape=(256, 256), stream: int = EVAL_STREAM,
                  dose_range=(5e2, 5e5), kind: str = "hrstem") -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The fixed held-out set: ``n_images`` (noisy, clean, dose) triples.

    Parameters
    ----------
    n_images : int
        Number of images.
    seed : int
        Root seed; image i is drawn from ``SeedSequence(seed, spawn_key=(stream, i))``.
    shape : tuple of int
        Image shape (H, W) [pixels].
    stream : int
        Spawn-key prefix (1 = evaluation, 2 = Gaussian-σ tuning; training uses 0).
    dose_range : tuple of float
        (low, high) dose [e⁻/Å²], log-uniform, as in training.
    kind : {"hrstem", "lowres", "any"}
        Image family.

    Returns
    -------
    list of (ndarray (H, W), ndarray (H, W), float)
        Noisy and clean images on the normalised-intensity scale, and the dose [e⁻/Å²].
    """
    if isinstance(n_images, bool) or not isinstance(n_images, int) or n_images < 1:
        raise ValueError(f"n_images must be a positive integer, got {n_images!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    shape = tuple(int(v) for v in shape)
    if len(shape) != 2 or min(shape) < 16:
        raise ValueError(f"shape must be (H, W) with H, W >= 16 [pixels], got {shape}")
    out = []
    for i in range(n_images):
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, i)))
        out.append(make_pair(rng, shape, dose_range=dose_range, kind=kind))
    return out


def _psnr(clean: np.ndarray, test: np.ndarray) -> float:
    """PSNR [dB] with data_range = the clean image's range; +inf for an exact copy."""
    rng = float(clean.max() - clean.min())
    if np.array_equal(clean, test):
        return float("inf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(peak_signal_noise_ratio(clean, test, data_range=rng))


def _ssim(clean: np.ndarray, test: np.ndarray) -> float:
    """SSIM with data_range = the clean image's range."""
    return float(structural_similarity(clean, test, data_range=float(clean.max() - clean.min())))


def _scores(method: str, pairs, outputs) -> pd.DataFrame:
    """Per-image table (image, dose, method, psnr, ssim)."""
    rows = [{"image": i, "dose": d, "method": method, "psnr": _psnr(c, o), "ssim": _ssim(c, o)}
            for i, ((_, c, d), o) in enumerate(zip(pairs, outputs, strict=True))]
    return pd.DataFrame(rows)


def score_model(model: nn.Module, pairs, *, device="auto") -> pd.DataFrame:
    """Per-image PSNR/SSIM of the raw input and of ``restore(noisy, model)``; wide, one row per image.

    Returns
    -------
    DataFrame with columns ``dose, psnr_raw, ssim_raw, psnr_model, ssim_model``
    """
    was = model.training
    raw = _scores("raw", pairs, [p[0] for p in pairs])
    net = _scores("model", pairs, [restore(p[0], model, device=device) for p in pairs])
    model.train(was)
    return pd.DataFrame({"dose": raw["dose"], "psnr_raw": raw["psnr"], "ssim_raw": raw["ssim"],
                         "psnr_model": net["psnr"], "ssim_model": net["ssim"]})


def tune_gaussian_sigma(*, seed: int = EVAL_SEED, shape=(256, 256), n_images: int = N_TUNE,
                        sigmas=GAUSSIAN_SIGMAS) -> float:
    """σ [pixels] of the Gaussian-filter baseline with the best mean PSNR on a separate tuning set."""
    pairs = heldout_pairs(n_images, seed=seed, shape=shape, stream=TUNE_STREAM)
    best = max(sigmas, key=lambda s: np.mean([_psnr(c, _gaussian(x, s)) for x, c, _ in pairs]))
    return float(best)


def _gaussian(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian filter of one image (reflecting borders)."""
    return restore(image, GaussianFilter(sigma), device="cpu", dtype=torch.float64)


def _bm3d(noisy: np.ndarray, dose: float) -> np.ndarray:
    """BM3D with the Anscombe transform on the counts ``noisy · dose · p²`` (clipped at 0), scaled back."""
    scale = dose * NOMINAL_PIXEL_SIZE**2
    return bm3d_denoise(np.clip(noisy * scale, 0, None)) / scale


def _have_bm3d() -> bool:
    """Whether the optional ``bm3d`` package is importable."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_model(model_or_name, *, device="auto") -> nn.Module:
    """An nn.Module from a module, a registry name, or a ``.pt`` state_dict path.

    The architecture of a ``.pt`` file is read from the file itself (:func:`network_from_state`: CGRDN of
    any size, Gambini autoencoder, Mohan bias-free UNet, Katsuno ResNet-UNet); if a model card ``.json``
    with ``config.architecture`` sits next to it, the two must agree.
    """
    if isinstance(model_or_name, nn.Module):
        return model_or_name
    if not isinstance(model_or_name, str | Path):
        raise TypeError(f"model_or_name must be an nn.Module, a registry name or a .pt path, "
                        f"got {type(model_or_name).__name__}")
    path = Path(model_or_name)
    if path.suffix != ".pt":
        return load_model(str(model_or_name), device=device)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {path} does not exist")
    state = read_state(path)
    try:
        net = network_from_state(state)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    card = path.with_suffix(".json")
    arch = json.loads(card.read_text()).get("config", {}).get("architecture") if card.is_file() else None
    expected = CGRDN if arch in ARCHITECTURES else BASELINE_ARCHITECTURES.get(arch)
    if expected is not None and not isinstance(net, expected):
        raise ValueError(f"{path} holds a {type(net).__name__} but its card {card.name} says architecture "
                         f"{arch!r} ({expected.__name__})")
    return load_state(net, state, device, f"weights in {path} do not fit {type(net).__name__}")


def evaluate(model_or_name, *, n_images: int = 64, seed: int = EVAL_SEED, shape=(256, 256),
             device="auto", baselines: bool = True, per_image: bool = False, progress: bool = False
             ) -> pd.DataFrame:
    """PSNR / SSIM of a restoration model and baselines on the fixed held-out synthetic HR-STEM set.

    Methods: ``raw`` (the noisy input), ``gaussian`` (σ tuned on a separate set,
    :func:`tune_gaussian_sigma`), ``bm3d`` (Anscombe + BM3D, if the optional ``bm3d`` package is
    importable), ``gambini-ae`` (the Gambini et al. autoencoder, if its weights ``restore/weights/gambini.pt``
    exist; trained with ``configs/gambini.toml``) and ``model``. PSNR and SSIM use
    ``skimage.metrics`` with ``data_range`` = max − min of the clean image; an exact restoration has
    PSNR = +inf.

    Parameters
    ----------
    model_or_name : nn.Module or str
        A module, a registry name, or the path of a ``.pt`` state_dict (architecture read from the file).
    n_images : int
        Number of held-out images.
    seed : int
        Root seed of the held-out set (image i: ``SeedSequence(seed, spawn_key=(1, i))``).
    shape : tuple of int
        Image shape (H, W) [pixels].
    device : {"auto", "cpu", "cuda"}
        Device of the networks.
    baselines : bool
        Include gaussian / bm3d / gambini-ae.
    per_image : bool
        Return the per-image long table (image, dose, method, psnr, ssim) instead of the summary.

    Returns
    -------
    DataFrame
        Summary indexed by method with columns ``psnr_mean, psnr_std, ssim_mean, ssim_std, n`` (means over
        images; std = standard deviation over images), or the per-image table.
    """
    model = resolve_model(model_or_name, device=device)
    pairs = heldout_pairs(n_images, seed=seed, shape=shape)
    outs = {"raw": [p[0] for p in pairs]}
    if baselines:
        sigma = tune_gaussian_sigma(seed=seed, shape=shape)
        outs[f"gaussian(sigma={sigma:g}px)"] = [_gaussian(p[0], sigma) for p in pairs]
        if _have_bm3d():
            outs["bm3d"] = [_bm3d(p[0], p[2]) for p in pairs]
        if weights_path("gambini-ae").is_file():
            ae = load_model("gambini-ae", device=device)
            outs["gambini-ae"] = [restore(p[0], ae, device=device) for p in pairs]
    outs["model"] = [restore(p[0], model, device=device) for p in pairs]
    table = pd.concat([_scores(m, pairs, o) for m, o in outs.items()], ignore_index=True)
    return table if per_image else summarise(table)


def summarise(table: pd.DataFrame) -> pd.DataFrame:
    """Summary of a per-image table (``evaluate(..., per_image=True)``): one row per method, in order.

    Returns
    -------
    DataFrame indexed by method with columns ``psnr_mean, psnr_std, ssim_mean, ssim_std, n``
    """
    g = table.groupby("method", sort=False)
    return pd.DataFrame({"psnr_mean": g["psnr"].mean(), "psnr_std": g["psnr"].std(ddof=1),
                         "ssim_mean": g["ssim"].mean(), "ssim_std": g["ssim"].std(ddof=1),
                         "n": g["psnr"].size()})


def evaluate_parser() -> argparse.ArgumentParser:
    """Argument parser of ``stemquant evaluate``."""
    p = argparse.ArgumentParser(prog="stemquant evaluate", description="PSNR/SSIM of a restoration model "
                                "and baselines on the fixed held-out synthetic HR-STEM set.")
    p.add_argument("model", nargs="?", default=None,
                   help="registry name or .pt weight file (default: restore/weights/hrstem.pt)")
    p.add_argument("--config", help="TOML TrainConfig: evaluate its exported weights (`export`)")
    p.add_argument("--n-images", type=int, default=64, help="held-out images (default 64)")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help=f"held-out seed (default {EVAL_SEED})")
    p.add_argument("--size", type=int, default=256, help="image side [pixels] (default 256)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--no-baselines", action="store_true", help="only raw and the model")
    p.add_argument("--csv", help="also write the summary table to this CSV file")
    p.add_argument("--per-image-csv", help="also write the per-image table (image, dose, method, psnr, ssim)")
    p.add_argument("--overwrite", action="store_true", help="replace existing CSV files")
    return p


def evaluate_main(argv: list[str] | None = None) -> int:
    """``stemquant evaluate`` entry point; prints the table, returns the exit status."""
    from stemquant.io import check_outputs, write_csv_atomic

    args = evaluate_parser().parse_args(argv)
    # before the (long) evaluation; the model file and config are inputs, never replaced
    check_outputs(args.csv, args.per_image_csv, overwrite=args.overwrite,
                  inputs=(args.model if args.model and Path(args.model).exists() else None, args.config))
    model = args.model
    if args.config:
        from ._train import TrainConfig

        model = TrainConfig.from_toml(args.config).export or model
    if model is None:
        model = str(weights_path("hrstem"))
    table = evaluate(model, n_images=args.n_images, seed=args.seed, shape=(args.size, args.size),
                     device=args.device, baselines=not args.no_baselines, per_image=True)
    df = summarise(table)
    print(df.to_string(float_format=lambda v: f"{v:.4f}"))
    if args.per_image_csv:
        write_csv_atomic(table, args.per_image_csv, overwrite=args.overwrite)
    if args.csv:
        write_csv_atomic(df, args.csv, overwrite=args.overwrite, index=True)
    return 0


if __name__ == "__main__":
    sys.exit(evaluate_main())
