"""Training of restoration networks on synthetic (noisy, clean) pairs: ``TrainConfig`` and ``train``.

The trainer is a small class whose steps (:meth:`Trainer.build_model`, :meth:`Trainer.compute_loss`,
:meth:`Trainer.evaluate`) can be overridden. Inputs and targets are normalised exactly as
:func:`stemquant.restore.restore` normalises at inference (per-sample mean and standard deviation of the
NOISY input, the target mapped with the same affine transform). See ``docs/training.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .._device import resolve_device
from ..io import OverwriteError
from ._baselines import BiasFreeUNet, GambiniAutoencoder, ResNetUNet
from ._cgrdn import CGRDN, CGRDNConfig
from ._discriminator import PatchDiscriminator
from ._losses import LossWeights, discriminator_loss, generator_loss
from ._registry import load_state, read_state

ARCHITECTURES = {
    "lite": CGRDNConfig.lite,
    "published": CGRDNConfig.published,
    # a minimal network for tests and smoke runs (1 GRDB x 1 RDB x 1 layer, 4 features)
    "tiny": lambda: CGRDNConfig(n_grdb=1, n_rdb=1, n_layers=1, growth=4, features=4),
}
"""CGRDN sizes: architecture name -> CGRDNConfig factory."""
BASELINE_ARCHITECTURES = {
    "gambini": GambiniAutoencoder,
    "mohan": BiasFreeUNet,
    "katsuno": ResNetUNet,
}
"""Baseline networks (stemquant.restore._baselines) the trainer can build: name -> constructor (defaults)."""
# H, W of a training patch must be multiples of the network's down-sampling factor; the constructors'
# defaults: Gambini 2 poolings, Mohan 6 scales (2**6), Katsuno ResNet-18 stride 32. Kept as constants so a
# config can be validated without building (Mohan's default network has 7 M parameters).
SIZE_MULTIPLES = {"lite": CGRDN.size_multiple, "published": CGRDN.size_multiple, "tiny": CGRDN.size_multiple,
                  "gambini": GambiniAutoencoder.size_multiple,
                  "mohan": 2**BiasFreeUNet.default_scales,
                  "katsuno": ResNetUNet.size_multiple}
ARCHITECTURE_NAMES = {
    "lite": "CGRDN lite (CGRDNConfig.lite())",
    "published": "CGRDN published (CGRDNConfig.published())",
    "tiny": "CGRDN tiny (n_grdb=1, n_rdb=1, n_layers=1, growth=4, features=4)",
    "gambini": "Gambini et al. (2023) convolutional autoencoder (GambiniAutoencoder(), 32 filters)",
    "mohan": "Mohan et al. (2022) bias-free UNet (BiasFreeUNet(), 6 scales, 128 channels)",
    "katsuno": "Katsuno et al. (2021) UNet with a ResNet-18 encoder (ResNetUNet())",
}


def build_network(architecture: str) -> nn.Module:
    """A freshly initialised network of a trainer architecture name (CGRDN size or baseline).

    Parameters
    ----------
    architecture : str
        A key of :data:`ARCHITECTURES` (CGRDN) or :data:`BASELINE_ARCHITECTURES`.

    Returns
    -------
    torch.nn.Module
        Random (PyTorch default) initialisation from the current torch RNG state.
    """
    if architecture in ARCHITECTURES:
        return CGRDN(ARCHITECTURES[architecture]())
    if architecture in BASELINE_ARCHITECTURES:
        return BASELINE_ARCHITECTURES[architecture]()
    raise ValueError(f"architecture must be one of {sorted(SIZE_MULTIPLES)}, got {architecture!r}")


SCHEDULES = ("cosine", "step", "constant")
TRAIN_STREAM = 0
"""First spawn-key entry of the training data stream; evaluation uses 1 (see ``_evaluate.EVAL_STREAM``)."""
CHECKPOINT_NAME = "checkpoint.pt"
MAX_REDRAWS = 20


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run; loadable from TOML with :meth:`from_toml`.

    Parameters
    ----------
    architecture : {"lite", "published", "tiny", "gambini", "mohan", "katsuno"}
        CGRDN size: :meth:`CGRDNConfig.lite` (0.18 M parameters), :meth:`CGRDNConfig.published` (7.04 M)
        or a minimal test network; or a baseline at its published size: :class:`GambiniAutoencoder`,
        :class:`BiasFreeUNet` (Mohan), :class:`ResNetUNet` (Katsuno). The loss is always ``loss``; to train a
        baseline with its own paper's loss set only the matching term (docs/training.md): Gambini's weighted
        MSE -> ``l2``, Mohan's MSE -> ``l2``, Katsuno's L1 -> ``l1``.
    patch_size : int
        Side of the square training patches [pixels], >= 16, a multiple of the network's down-sampling
        factor (:data:`SIZE_MULTIPLES`: 2 for the CGRDN, 4 Gambini, 64 Mohan, 32 Katsuno).
    batch_size : int
        Pairs per optimisation step.
    lr : float
        Peak learning rate of Adam.
    schedule : {"cosine", "step", "constant"}
        Learning-rate decay after the linear warm-up: cosine from ``lr`` to ``lr_min`` over ``steps``;
        "step" multiplies by ``gamma`` every ``step_size`` steps (counted from step 0).
    lr_min, warmup_steps, step_size, gamma : float, int, int, float
        Schedule parameters.
    steps : int
        Total optimisation steps.
    loss : LossWeights
        Weights of the generator loss (eqs. 13–14 of Lobato et al. 2023). In TOML: a ``[loss]`` table.
    adversarial : bool
        Add the relativistic GAN term after ``gan_start`` pixel-loss warm-up steps (default off: CPU).
    gan_start : int
        Pixel-loss-only warm-up steps before the discriminator is trained.
    seed : int
        Root seed of the training data (step ``k`` draws from ``SeedSequence(seed, spawn_key=(0, k))``)
        and of the weight initialisation.
    dose_range : tuple of float
        (low, high) dose [e⁻/Å²], log-uniform, as :class:`stemquant.synth.PairDataset`.
    kind : {"hrstem", "lowres", "any"}
        Image family of :func:`stemquant.synth.random_clean_image`.
    device : {"auto", "cpu", "cuda"}
        Compute device.
    amp : bool
        Mixed precision (float16 autocast + grad scaling); used on CUDA only, ignored on the CPU.
    threads : int
        ``torch.set_num_threads`` in the training process (0 = leave unchanged).
    checkpoint_dir : str
        Folder of ``checkpoint.pt`` (written atomically).
    checkpoint_every : int
        Checkpoint every N steps (0 = only at the end and on interruption).
    checkpoint_seconds : float
        Also checkpoint when this many seconds passed since the last one (0 = off).
    eval_every : int
        Evaluate on the small fixed held-out set every N steps (0 = off).
    eval_images, eval_size : int
        Size of that set: number of images and their side [pixels].
    num_workers : int
        Data-loading worker processes (0 = generate in the training process).
    init_weights : str
        If not empty, a generator ``state_dict`` (``.pt``, e.g. an exported model) loaded after the random
        initialisation of a fresh run: fine-tuning / a second training stage. Ignored when resuming (the
        checkpoint holds the weights). Its architecture must match ``architecture``.
    export : str
        If not empty, the generator weights (float32 state_dict) are exported to this ``.pt`` path (with a
        model card ``.json``/``.md`` next to it) at every checkpoint.
    """

    architecture: str = "lite"
    patch_size: int = 128
    batch_size: int = 8
    lr: float = 5e-4
    schedule: str = "cosine"
    lr_min: float = 1e-5
    warmup_steps: int = 100
    step_size: int = 1000
    gamma: float = 0.5
    steps: int = 5000
    loss: LossWeights = field(default_factory=LossWeights)
    adversarial: bool = False
    gan_start: int = 1000
    seed: int = 0
    dose_range: tuple[float, float] = (5e2, 5e5)
    kind: str = "hrstem"
    device: str = "auto"
    amp: bool = True
    threads: int = 0
    checkpoint_dir: str = "runs/hrstem"
    checkpoint_every: int = 500
    checkpoint_seconds: float = 0.0
    eval_every: int = 500
    eval_images: int = 8
    eval_size: int = 128
    num_workers: int = 0
    init_weights: str = ""
    export: str = ""

    def __post_init__(self):
        if self.architecture not in SIZE_MULTIPLES:
            raise ValueError(f"architecture must be one of {sorted(SIZE_MULTIPLES)}, got {self.architecture!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        _int(self.patch_size, "patch_size", 16, "pixels")
        m = SIZE_MULTIPLES[self.architecture]
        if self.patch_size % m:
            what = "even" if m == 2 else f"a multiple of {m}"
            raise ValueError(f"patch_size must be {what} [pixels] (architecture {self.architecture!r} down-samples "
                             f"by {m}), got {self.patch_size}")
        for name, lo in (("batch_size", 1), ("steps", 1), ("warmup_steps", 0), ("step_size", 1),
                         ("gan_start", 0), ("seed", 0), ("threads", 0), ("checkpoint_every", 0),
                         ("eval_every", 0), ("eval_images", 1), ("num_workers", 0)):
            _int(getattr(self, name), name, lo)
        _int(self.eval_size, "eval_size", 16, "pixels")
        for name in ("lr", "gamma"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int | float) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not (isinstance(self.lr_min, int | float) and 0 <= self.lr_min <= self.lr):
            raise ValueError(f"lr_min must lie in [0, lr={self.lr}], got {self.lr_min!r}")
        if not (isinstance(self.checkpoint_seconds, int | float) and self.checkpoint_seconds >= 0):
            raise ValueError(f"checkpoint_seconds must be >= 0 [s] (0 = off), got {self.checkpoint_seconds!r}")
        if not isinstance(self.loss, LossWeights):
            raise ValueError(f"loss must be a LossWeights, got {type(self.loss).__name__}")
        lo, hi = self.dose_range
        if not (0 < lo <= hi and math.isfinite(hi)):
            raise ValueError(f"dose_range must be (low, high) with 0 < low <= high [e⁻/Å²], got {self.dose_range}")
        if self.kind not in ("hrstem", "lowres", "any"):
            raise ValueError(f"kind must be 'hrstem', 'lowres' or 'any', got {self.kind!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")

    def to_dict(self) -> dict:
        """Plain dict (TOML/JSON friendly); the loss weights become a nested dict."""
        d = asdict(self)
        d["dose_range"] = list(self.dose_range)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """Build from a dict as written by :meth:`to_dict` (unknown keys raise ValueError)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; valid keys: {sorted(known)}")
        d = dict(d)
        if "loss" in d and not isinstance(d["loss"], LossWeights):
            lw = {f.name for f in fields(LossWeights)}
            bad = sorted(set(d["loss"]) - lw)
            if bad:
                raise ValueError(f"unknown loss weight(s) {bad}; valid: {sorted(lw)}")
            d["loss"] = LossWeights(**d["loss"])
        if "dose_range" in d:
            d["dose_range"] = tuple(float(v) for v in d["dose_range"])
        return cls(**d)

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Read a TOML file: top-level keys are the fields, ``[loss]`` the :class:`LossWeights`."""
        try:
            import tomllib
        except ImportError:  # Python 3.10
            try:
                import tomli as tomllib
            except ImportError as exc:
                raise ImportError("reading TOML on Python 3.10 needs the 'tomli' package "
                                  "(pip install tomli); Python >= 3.11 has tomllib") from exc
        with open(path, "rb") as fh:
            return cls.from_dict(tomllib.load(fh))

    def to_toml(self) -> str:
        """TOML text that :meth:`from_toml` reads back to an equal config."""
        lines, loss = [], []
        for k, v in self.to_dict().items():
            if k == "loss":
                loss = [f"{lk} = {_toml_value(lv)}" for lk, lv in v.items()]
            else:
                lines.append(f"{k} = {_toml_value(v)}")
        return "\n".join(lines + ["", "[loss]"] + loss) + "\n"


def _int(value, name: str, minimum: int, unit: str = "") -> None:
    """Check an integer option >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{f' [{unit}]' if unit else ''}, got {value!r}")


def _toml_value(v) -> str:
    """Serialise a scalar or list to TOML."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return repr(v)


# ---------------------------------------------------------------------------------------------- data
def _step_rng(seed: int, step: int, stream: int = TRAIN_STREAM) -> np.random.Generator:
    """Independent generator of one step/image: ``SeedSequence(seed, spawn_key=(stream, step))``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream, step)))


def make_pair(rng: np.random.Generator, shape, *, dose_range=(5e2, 5e5), kind: str = "hrstem"
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """One (noisy, clean, dose) pair drawn exactly as :class:`stemquant.synth.PairDataset` draws it.

    ``clean`` from :func:`stemquant.synth.random_clean_image`, a log-uniform dose [e⁻/Å²], and ``noisy``
    from :func:`stemquant.synth.default_distortion` at the nominal pixel size 0.1 Å (same intensity scale).
    A pair whose noisy image is constant (the STEM distortions occasionally return one, e.g. a fully
    saturated small frame) cannot be normalised as :func:`stemquant.restore.restore` does and is redrawn
    from the same generator (deterministic). ``random_clean_image`` redraws empty specimens itself; the
    ``except ValueError`` below is kept only as a guard and consumes the same generator, so the stream is
    unchanged either way.
    """
    from stemquant.synth import default_distortion, random_clean_image

    for _ in range(MAX_REDRAWS):
        try:
            clean = random_clean_image(tuple(shape), rng=rng, kind=kind)
        except ValueError:  # guard only: synth now redraws specimens without atoms itself (was seen 2026-11-22)
            continue
        dose = float(np.exp(rng.uniform(np.log(dose_range[0]), np.log(dose_range[1]))))
        noisy = np.asarray(default_distortion()(clean, dose, rng), dtype=np.float64)
        if noisy.std() > 1e-6 * max(np.abs(noisy).max(), 1e-30):
            return noisy, clean, dose
    raise RuntimeError(f"{MAX_REDRAWS} consecutive failed draws (constant noisy image or synth error); "
                       "check stemquant.synth / stemquant.distort")


class _BatchStream(IterableDataset):
    """Batches ``start, start+1, ...``; batch k is drawn from ``_step_rng(seed, k)`` whatever the workers.

    Worker w of n produces the batches k ≡ start + w (mod n); the DataLoader returns workers' items round
    robin, so the order (and therefore resumption) does not depend on ``num_workers``.
    """

    def __init__(self, config: TrainConfig, start: int):
        super().__init__()
        self.config, self.start = config, start

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        c = self.config
        k = self.start + wid
        while True:
            rng = _step_rng(c.seed, k)
            pairs = [make_pair(rng, (c.patch_size,) * 2, dose_range=c.dose_range, kind=c.kind)
                     for _ in range(c.batch_size)]
            noisy = torch.from_numpy(np.stack([p[0] for p in pairs]).astype(np.float32))[:, None]
            clean = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.float32))[:, None]
            yield noisy, clean
            k += nw


def normalise_pair(noisy: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Map both with the noisy input's per-sample ``(x - mean(x)) / std(x)``, as ``restore`` does.

    Parameters
    ----------
    noisy, clean : Tensor, shape (B, 1, H, W)

    Returns
    -------
    (Tensor, Tensor), shapes (B, 1, H, W)
    """
    mean = noisy.mean(dim=(1, 2, 3), keepdim=True)
    std = noisy.std(dim=(1, 2, 3), keepdim=True, correction=0).clamp_min(1e-12)
    return (noisy - mean) / std, (clean - mean) / std


def _lr_factor(config: TrainConfig):
    """Multiplicative learning-rate schedule as a function of the step (for LambdaLR)."""
    c = config

    def factor(step: int) -> float:
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return 1.0
        if c.schedule == "step":
            return c.gamma ** (step // c.step_size)
        t = min(1.0, (step - c.warmup_steps) / max(1, c.steps - c.warmup_steps))
        return (c.lr_min + 0.5 * (c.lr - c.lr_min) * (1 + math.cos(math.pi * t))) / c.lr

    return factor


# ------------------------------------------------------------------------------------------- trainer
class Trainer:
    """Pixel-loss (+ optional GAN) trainer of a CGRDN or a baseline network; override the methods to change a step.

    Use :func:`train` for the usual run. Attributes after :meth:`setup`: ``model``, ``optimizer``,
    ``scheduler``, ``disc``/``disc_optimizer`` (GAN only), ``scaler`` (CUDA AMP), ``step``, ``history``.
    """

    def __init__(self, config: TrainConfig, *, command: str | None = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        self.config = config
        self.command = command if command is not None else shlex.join(sys.argv)
        self.device = resolve_device(config.device)
        self.use_amp = config.amp and self.device.type == "cuda"
        self.step = 0
        self.history: list[dict] = []
        self.last_metrics: dict = {}
        self._stop = False

    # ---- construction ------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """The generator (CGRDN of the configured size or a baseline network, :func:`build_network`),
        initialised from ``config.seed``, then from ``config.init_weights`` if given."""
        torch.manual_seed(self.config.seed)
        model = build_network(self.config.architecture)
        if self.config.init_weights:
            path = Path(self.config.init_weights)
            if not path.is_file():
                raise FileNotFoundError(f"init_weights: no weight file at {path}")
            load_state(model, read_state(path), "cpu",
                       f"init_weights {path} does not fit architecture {self.config.architecture!r}")
        return model

    def setup(self) -> None:
        """Build model, optimiser, scheduler (and discriminator for GAN training)."""
        c = self.config
        if c.threads:
            torch.set_num_threads(c.threads)
        self.model = self.build_model().to(self.device, memory_format=torch.channels_last).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=c.lr, betas=(0.9, 0.999))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, _lr_factor(c))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.disc = self.disc_optimizer = None
        if c.adversarial:
            self.disc = PatchDiscriminator(1).to(self.device).train()
            self.disc_optimizer = torch.optim.Adam(self.disc.parameters(), lr=c.lr, betas=(0.5, 0.999))

    # ---- one step --------------------------------------------------------------------------------
    def compute_loss(self, noisy: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """Generator loss (mean over the batch) of a normalised batch; returns (loss, logs)."""
        pred = self.model(noisy)
        logs = {}
        if self.disc is not None and self.step >= self.config.gan_start:
            d_real, d_fake = self.disc(clean, noisy), self.disc(pred, noisy)
            loss = generator_loss(pred, clean, d_real, d_fake, weights=self.config.loss).mean()
            self._pred = pred
        else:
            loss = generator_loss(pred, clean, weights=self.config.loss).mean()
        logs["loss"] = float(loss.detach())
        return loss, logs

    def discriminator_step(self, noisy: torch.Tensor, clean: torch.Tensor) -> dict:
        """One critic update on the last generated batch (GAN phase only)."""
        with torch.autocast(self.device.type, enabled=self.use_amp):
            d_real, d_fake = self.disc(clean, noisy), self.disc(self._pred.detach(), noisy)
            loss = discriminator_loss(d_real, d_fake).mean()
        self.disc_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.disc_optimizer)
        return {"d_loss": float(loss.detach())}

    def train_step(self, noisy: torch.Tensor, clean: torch.Tensor) -> dict:
        """Normalise, forward, backward, optimiser and scheduler step."""
        noisy, clean = normalise_pair(noisy.to(self.device), clean.to(self.device))
        noisy = noisy.contiguous(memory_format=torch.channels_last)
        clean = clean.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            loss, logs = self.compute_loss(noisy, clean)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {float(loss)} at step {self.step}; lower lr")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        if self.disc is not None and self.step >= self.config.gan_start:
            logs.update(self.discriminator_step(noisy, clean))
        self.scaler.update()
        self.scheduler.step()
        logs["lr"] = self.optimizer.param_groups[0]["lr"]
        return logs

    def evaluate(self) -> dict:
        """PSNR/SSIM of the model and of the raw input on the small fixed held-out set (mean values)."""
        from ._evaluate import heldout_pairs, score_model

        c = self.config
        pairs = heldout_pairs(c.eval_images, shape=(c.eval_size, c.eval_size))
        df = score_model(self.model, pairs, device=self.device)
        return {"step": self.step, "n_images": c.eval_images, "shape": [c.eval_size, c.eval_size],
                **{f"{k}": float(v) for k, v in df.mean(numeric_only=True).items()}}

    # ---- checkpoints -----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        """``<checkpoint_dir>/checkpoint.pt``."""
        return Path(self.config.checkpoint_dir) / CHECKPOINT_NAME

    def state_dict(self) -> dict:
        """Everything needed to continue bit for bit (tensors and plain Python values only)."""
        state = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "torch_rng": torch.get_rng_state(),
            "config": json.dumps(self.config.to_dict()),
            "history": json.dumps(self.history),
            "last_metrics": json.dumps(self.last_metrics),
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        if self.disc is not None:
            state["disc"] = self.disc.state_dict()
            state["disc_optimizer"] = self.disc_optimizer.state_dict()
        return state

    def save_checkpoint(self) -> Path:
        """Write the checkpoint atomically (temporary file + ``os.replace``); export weights if asked."""
        path = self.checkpoint_path
        path.parent.mkdir(parents=True, exist_ok=True)
        _atomic_save(self.state_dict(), path)
        if self.config.export:
            self.export(self.config.export)
        return path

    def load_checkpoint(self, path: str | Path | None = None) -> None:
        """Restore the state written by :meth:`save_checkpoint` (``torch.load(weights_only=True)``)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint to resume from at {path}; train without resume first")
        state = torch.load(path, map_location=self.device, weights_only=True)
        saved = TrainConfig.from_dict(json.loads(state["config"]))
        if replace(saved, steps=self.config.steps) != replace(self.config, steps=self.config.steps):
            diff = {k: (v, getattr(self.config, k)) for k, v in saved.to_dict().items()
                    if k != "steps" and v != self.config.to_dict()[k]}
            print(f"warning: resuming with a changed config (saved, now): {diff}", file=sys.stderr)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        torch.set_rng_state(state["torch_rng"].cpu())
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        if self.disc is not None and "disc" in state:
            self.disc.load_state_dict(state["disc"])
            self.disc_optimizer.load_state_dict(state["disc_optimizer"])
        self.history = json.loads(state["history"])
        self.last_metrics = json.loads(state["last_metrics"])

    def export(self, path: str | Path) -> Path:
        """Save the generator's float32 state_dict to ``path`` and a model card next to it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in self.model.state_dict().items()}
        _atomic_save(weights, path)
        write_card(path, self)
        return path

    # ---- loop ------------------------------------------------------------------------------------
    def _on_sigterm(self, signum, frame) -> None:
        """Ask the loop to checkpoint and stop after the current step."""
        self._stop = True

    def fit(self, *, resume: bool = False, overwrite: bool = False, progress: bool = True,
            until: int | None = None) -> nn.Module:
        """Run (or continue) the training loop up to ``config.steps`` (or stop early at step ``until``,
        with a checkpoint, as if interrupted); returns the generator.

        A fresh run (``resume=False``) into a folder that already holds a checkpoint raises
        :class:`stemquant.io.OverwriteError` before any work unless ``overwrite=True``: a forgotten ``resume``
        must not replace hours of training.
        """
        from tqdm.auto import tqdm

        c = self.config
        if not resume and not overwrite and self.checkpoint_path.exists():
            raise OverwriteError(f"{self.checkpoint_path} already exists: resume=True (--resume) continues that run, "
                                 "overwrite=True (--overwrite) starts afresh and replaces it; or choose another "
                                 "checkpoint_dir")
        self.setup()
        if resume:
            self.load_checkpoint()
        loader = DataLoader(_BatchStream(c, self.step), batch_size=None, num_workers=c.num_workers,
                            persistent_workers=False, prefetch_factor=2 if c.num_workers else None)
        old = None
        if threading.current_thread() is threading.main_thread():
            old = signal.signal(signal.SIGTERM, self._on_sigterm)
        bar = tqdm(total=c.steps, initial=self.step, disable=not progress, dynamic_ncols=True)
        last_ckpt = time.monotonic()
        try:
            batches = iter(loader)
            end = c.steps if until is None else min(until, c.steps)
            while self.step < end and not self._stop:
                noisy, clean = next(batches)
                logs = self.train_step(noisy, clean)
                self.step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{logs['loss']:.4f}", lr=f"{logs['lr']:.2e}")
                if self.step % 50 == 0 or self.step == c.steps:
                    self.history.append({"step": self.step, **logs})
                if c.eval_every and self.step % c.eval_every == 0:
                    self.last_metrics = self.evaluate()
                    bar.write(f"step {self.step}: {json.dumps(self.last_metrics)}")
                due = c.checkpoint_every and self.step % c.checkpoint_every == 0
                due = due or (c.checkpoint_seconds and time.monotonic() - last_ckpt >= c.checkpoint_seconds)
                if due and self.step < c.steps:
                    self.save_checkpoint()
                    last_ckpt = time.monotonic()
        except BaseException as exc:  # Ctrl-C or a crash: keep the last consistent state, then re-raise
            bar.write(f"{type(exc).__name__} at step {self.step}: checkpointing to {self.checkpoint_path}")
            self.save_checkpoint()
            raise
        finally:
            bar.close()
            if old is not None:
                signal.signal(signal.SIGTERM, old)
        self.save_checkpoint()
        return self.model.eval()


def write_card(path: Path, trainer: Trainer) -> None:
    """Model card ``<path>.json`` and ``<path>.md`` of exported weights (keys of restore/weights/README.md)."""
    c = trainer.config
    card = {
        "architecture": ARCHITECTURE_NAMES[c.architecture],
        "parameters": sum(p.numel() for p in trainer.model.parameters()),
        "data": (f"synthetic pairs drawn on the fly: stemquant.synth.random_clean_image(kind={c.kind!r}), "
                 f"{c.patch_size}x{c.patch_size} patches, dose log-uniform in {list(c.dose_range)} e-/A^2, "
                 "noisy = stemquant.synth.default_distortion() (STEM distortions of stemquant.distort, nominal "
                 f"pixel size 0.1 A); {trainer.step * c.batch_size} pairs seen ({trainer.step} steps x "
                 f"{c.batch_size}); git commit {_git_commit()}"),
        "normalisation": "input and target mapped with the noisy input's per-frame (x - mean(x)) / std(x), "
                         "as stemquant.restore.restore",
        "command": trainer.command,
        "seed": {"train": c.seed, "train_stream": f"SeedSequence({c.seed}, spawn_key=(0, step))",
                 "eval": "SeedSequence(12345, spawn_key=(1, i))"},
        "steps_done": trainer.step,
        "config": c.to_dict(),
        "metrics": trainer.last_metrics,
        "updated": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    _atomic_write(path.with_suffix(".json"), json.dumps(card, indent=2) + "\n")
    m = trainer.last_metrics
    table = "\n".join(f"| {k} | {v:.4g} |" for k, v in m.items() if isinstance(v, float))
    md = (f"# Model card: {path.stem}\n\n- architecture: {card['architecture']}, {card['parameters']:,} "
          f"parameters\n- data: {card['data']}\n- normalisation: {card['normalisation']}\n"
          f"- command: `{card['command']}`\n- seed: {card['seed']}\n- steps done: {trainer.step} of "
          f"{c.steps}\n- updated: {card['updated']}\n\n## Latest evaluation\n\n"
          f"{m.get('n_images', '-')} held-out images {m.get('shape', '-')} (mean over images):\n\n"
          f"| metric | value |\n|---|---|\n{table}\n")
    _atomic_write(path.with_suffix(".md"), md)


def _git_commit() -> str:
    """Current git commit of the source tree, or 'unknown'."""
    import subprocess

    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except Exception:  # pragma: no cover - no git
        return "unknown"


def _atomic_write(path: Path, text: str) -> None:
    """Write text to a temporary file and atomically replace ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _atomic_save(obj, path: Path) -> None:
    """torch.save to a temporary file in the same folder, then atomically replace ``path``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def train(config: TrainConfig, *, resume: bool = False, overwrite: bool = False, progress: bool = True
          ) -> nn.Module:
    """Train a CGRDN (or baseline) restoration network on synthetic HR-STEM pairs.

    Step k draws ``batch_size`` pairs from ``SeedSequence(config.seed, spawn_key=(0, k))`` (images of
    :func:`stemquant.synth.random_clean_image`, STEM distortions of :mod:`stemquant.distort`), normalises
    input and target with the input's per-sample mean and standard deviation (as
    :func:`stemquant.restore.restore`), and minimises the pixel-wise loss of eqs. (2)–(12) of Lobato et al.
    (2023) (plus the adversarial term of eq. 13 when ``config.adversarial``, after ``gan_start`` steps).
    A checkpoint (model, optimiser, scheduler, step, RNG state, config) is written atomically every
    ``checkpoint_every`` steps / ``checkpoint_seconds`` seconds, at the end, on SIGTERM and on Ctrl-C.

    Parameters
    ----------
    config : TrainConfig
        The run.
    resume : bool
        Continue from ``<checkpoint_dir>/checkpoint.pt``; the result is bit-for-bit the same as an
        uninterrupted run on the same device.
    overwrite : bool
        Start afresh even if ``<checkpoint_dir>/checkpoint.pt`` exists (it is replaced at the first checkpoint);
        without it (and without ``resume``) that raises :class:`stemquant.io.OverwriteError`.
    progress : bool
        Show a tqdm progress bar.

    Returns
    -------
    torch.nn.Module
        The generator, in eval mode.
    """
    return Trainer(config).fit(resume=resume, overwrite=overwrite, progress=progress)


# ----------------------------------------------------------------------------------------------- CLI
def train_parser() -> argparse.ArgumentParser:
    """Argument parser of ``stemquant train``."""
    p = argparse.ArgumentParser(prog="stemquant train", description="Train a CGRDN (or baseline) restoration "
                                "network on synthetic HR-STEM pairs (docs/training.md).")
    p.add_argument("--config", help="TOML file with TrainConfig fields (default: built-in defaults)")
    p.add_argument("--resume", action="store_true", help="continue from <checkpoint_dir>/checkpoint.pt")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="override the config's device")
    p.add_argument("--steps", type=int, help="override the total number of steps")
    p.add_argument("--checkpoint-dir", help="override the checkpoint folder")
    p.add_argument("--export", help="override the exported weight file (.pt)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads in the training process")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--overwrite", action="store_true", help="start a fresh run even if <checkpoint_dir>/"
                   "checkpoint.pt exists (it is replaced at the first checkpoint); without it that is an error")
    return p


def train_main(argv: list[str] | None = None) -> int:
    """``stemquant train`` entry point; returns the exit status."""
    args = train_parser().parse_args(argv)
    config = TrainConfig.from_toml(args.config) if args.config else TrainConfig()
    over = {k: v for k, v in (("device", args.device), ("steps", args.steps), ("threads", args.threads),
                              ("checkpoint_dir", args.checkpoint_dir), ("export", args.export)) if v is not None}
    config = replace(config, **over)
    cmd = "stemquant train " + shlex.join(sys.argv[1:] if argv is None else argv)
    trainer = Trainer(config, command=cmd)
    trainer.fit(resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    print(f"stopped at step {trainer.step} of {config.steps}; checkpoint in {trainer.checkpoint_path}")
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
