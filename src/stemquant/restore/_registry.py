"""Model registry: names -> architectures, weights in ``restore/weights/<name>.pt`` (``gambini-ae``:
``gambini.pt``) with a model card.

Building a model never touches the network or the disk; :func:`load_model` reads local files only.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .._device import resolve_device
from ._baselines import BiasFreeUNet, GambiniAutoencoder, ResNetUNet
from ._cgrdn import CGRDN, CGRDNConfig

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
CARD_KEYS = ("architecture", "data", "command", "seed", "metrics")


@dataclass(frozen=True)
class _Spec:
    """A registered architecture; ``cgrdn`` entries take their size from the weight file when loading.

    ``file`` is the stem of the weight file and model card in the weights folder (default: the name).
    """

    build: Callable[[], nn.Module]
    description: str
    cgrdn: bool = False
    file: str = ""


_REGISTRY: dict[str, _Spec] = {
    "hrstem": _Spec(lambda: CGRDN(CGRDNConfig.published()),
                    "CGRDN for HR-STEM; built at the published size (4×4×8, growth 32, 64 features; 7.04 M "
                    "parameters), loaded at the size stored in hrstem.pt", cgrdn=True),
    "hrstem-lite": _Spec(lambda: CGRDN(CGRDNConfig.lite()),
                         "CGRDN lite for CPU (2×2×4, growth 16, 32 features; 0.18 M parameters)", cgrdn=True),
    "gambini-ae": _Spec(GambiniAutoencoder, "Gambini et al. (2023) convolutional autoencoder, 32 filters; "
                        "weights gambini.pt (configs/gambini.toml)", file="gambini"),
    "mohan-bf-unet": _Spec(BiasFreeUNet, "Mohan et al. (2022) bias-free UNet, 6 scales, 128 channels"),
    "katsuno-resnet-unet": _Spec(ResNetUNet, "Katsuno et al. (2021) UNet with ResNet-18 encoder"),
}


def list_models() -> list[str]:
    """Names of the registered restoration models (weights may or may not exist yet).

    Examples
    --------
    >>> "hrstem" in list_models()
    True
    """
    return sorted(_REGISTRY)


def _spec(name: str) -> _Spec:
    """Look up a registry entry or raise a ValueError listing the names."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; available models: {', '.join(list_models())}")
    return _REGISTRY[name]


def build_model(name: str, *, device: str | torch.device = "cpu") -> nn.Module:
    """Build a registered architecture with random (PyTorch default) weights, in eval mode.

    Never reads files or the network. The model is put in ``channels_last`` memory format (2× faster
    convolutions on CPU, see benchmarks/RESULTS.md).

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.
    device : {"cpu", "cuda", "auto"} or torch.device
        Where to put the parameters.

    Returns
    -------
    torch.nn.Module
    """
    model = _spec(name).build()
    return model.to(device=resolve_device(device), memory_format=torch.channels_last).eval()


def _cgrdn_config_from_state(state: dict) -> CGRDNConfig:
    """Infer the CGRDNConfig of a CGRDN state_dict from its key names and tensor shapes."""
    try:
        f, c_in = state["head.weight"].shape[:2]
        n_grdb = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("body.blocks."))
        n_rdb = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("body.blocks.0.blocks."))
        layer_keys = [k for k in state if k.startswith("body.blocks.0.blocks.0.layers.") and k.endswith("weight")]
        n_layers = 1 + max(int(k.split(".")[6]) for k in layer_keys)
        growth = state["body.blocks.0.blocks.0.layers.0.weight"].shape[0]
    except (KeyError, ValueError, IndexError, AttributeError) as exc:
        raise ValueError(f"weights do not look like a CGRDN state_dict ({type(exc).__name__}: {exc})") from exc
    return CGRDNConfig(n_grdb=n_grdb, n_rdb=n_rdb, n_layers=n_layers, growth=int(growth), features=int(f),
                       in_channels=int(c_in))


def network_from_state(state: dict) -> nn.Module:
    """Build the (untrained) network whose ``state_dict`` is ``state``, read from its key names and shapes.

    The weight files hold plain state_dicts (the format of the shipped ``hrstem.pt``); each architecture
    has its own key layout, so the file itself records what it is: ``head.weight`` -> :class:`CGRDN` (size
    from :func:`_cgrdn_config_from_state`), ``encoder.0.weight`` -> :class:`GambiniAutoencoder` (filters),
    ``inc.0.weight`` -> :class:`BiasFreeUNet` (scales, channels), ``stem.0.weight`` -> :class:`ResNetUNet`
    (decoder channels).

    Raises
    ------
    ValueError
        If the layout matches none of them.
    """
    if not isinstance(state, dict):
        raise ValueError(f"weights must be a state_dict (dict of tensors), got {type(state).__name__}")
    if "head.weight" in state and "body.blocks.0.blocks.0.layers.0.weight" in state:
        return CGRDN(_cgrdn_config_from_state(state))
    if "encoder.0.weight" in state:
        return GambiniAutoencoder(int(state["encoder.0.weight"].shape[0]))
    if "inc.0.weight" in state:
        scales = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("down."))
        return BiasFreeUNet(scales=scales, channels=int(state["inc.0.weight"].shape[0]))
    if "stem.0.weight" in state:
        dec = tuple(int(state[f"decoder.{i}.0.weight"].shape[0]) for i in range(5))
        return ResNetUNet(dec)
    raise ValueError("weights match no known architecture (CGRDN, GambiniAutoencoder, BiasFreeUNet, ResNetUNet); "
                     f"first keys: {list(state)[:4]}")


def weights_path(name: str, *, weights_dir: str | Path | None = None) -> Path:
    """Path of the weight file of model ``name`` (``<weights_dir>/<file>.pt``, ``file`` = the name unless the
    entry says otherwise: ``gambini-ae`` -> ``gambini.pt``); it need not exist."""
    spec = _spec(name)
    return Path(WEIGHTS_DIR if weights_dir is None else weights_dir) / f"{spec.file or name}.pt"


def model_card(name: str, *, weights_dir: str | Path | None = None) -> dict:
    """Read the model card next to the weights, ``<weights_dir>/<file>.json`` (architecture, data, command,
    seed, metrics).

    ``architecture`` is a free-text description (e.g. "CGRDN lite (CGRDNConfig.lite())"); the architecture
    itself comes from the registry name and, for CGRDN entries, from the weight file.

    Raises
    ------
    FileNotFoundError
        If the card does not exist.
    ValueError
        If it is not valid JSON or lacks one of the required keys.
    """
    path = weights_path(name, weights_dir=weights_dir).with_suffix(".json")
    if not path.is_file():
        raise FileNotFoundError(f"no model card for {name!r}: expected {path} "
                                "(see restore/weights/README.md)")
    try:
        card = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"model card {path} is not valid JSON: {exc}") from exc
    missing = [k for k in CARD_KEYS if k not in card]
    if missing:
        raise ValueError(f"model card {path} lacks required key(s) {missing}; required: {list(CARD_KEYS)}")
    if not isinstance(card["architecture"], str) or not card["architecture"].strip():
        raise ValueError(f"model card {path}: 'architecture' must be a non-empty description string")
    return card


def load_model(name: str, *, device: str | torch.device = "auto",
               weights_dir: str | Path | None = None) -> nn.Module:
    """Build model ``name`` and load its trained weights, in eval mode.

    Weights are read with ``torch.load(..., weights_only=True)`` from :func:`weights_path` (default folder
    ``stemquant/restore/weights/``; ``gambini-ae`` -> ``gambini.pt``); the model card ``.json`` must sit next
    to them
    (:func:`model_card`). For the CGRDN entries (``hrstem``, ``hrstem-lite``) the network size
    (:class:`CGRDNConfig`) is read from the weight file, so e.g. a lite network trained for HR-STEM can be
    shipped as ``hrstem.pt``; the other entries must match their registered architecture exactly.

    Parameters
    ----------
    name : str
        A name from :func:`list_models`.
    device : {"auto", "cpu", "cuda"} or torch.device
        Where to put the model.
    weights_dir : str or Path, optional
        Folder holding the ``.pt`` weights and ``.json`` card (:func:`weights_path`).

    Returns
    -------
    torch.nn.Module

    Raises
    ------
    FileNotFoundError
        If the weight file (or its model card) is missing; the message names the file.
    ValueError
        If ``name`` is unknown or the weights do not fit the architecture.
    """
    path = weights_path(name, weights_dir=weights_dir)
    if not path.is_file():
        raise FileNotFoundError(
            f"no trained weights for model {name!r}: expected the file {path}. Train the model and save its "
            f"state_dict there with a model card {path.with_suffix('.json').name}, pass weights_dir=, or use "
            f"build_model({name!r}) for random weights"
        )
    model_card(name, weights_dir=weights_dir)
    state = read_state(path)
    model = CGRDN(_cgrdn_config_from_state(state)) if _spec(name).cgrdn else build_model(name, device="cpu")
    return load_state(model, state, device, f"weights in {path} do not fit architecture {name!r}")


def read_state(path: Path) -> dict:
    """The ``state_dict`` of a weight file, on the CPU (``torch.load(weights_only=True)``); ValueError if the
    file holds something else."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} must hold a state_dict (dict of tensors), got {type(state).__name__}")
    return state


def load_state(model: nn.Module, state: dict, device, error: str) -> nn.Module:
    """Load ``state`` strictly into ``model`` (ValueError ``error: ...`` if it does not fit), then move it to
    ``device`` once, channels-last, in eval mode: the one loading path of registry names and weight files."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ValueError(f"{error}: {exc}") from exc
    return model.to(device=resolve_device(device), memory_format=torch.channels_last).eval()
