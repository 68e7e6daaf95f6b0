"""Tiled, batched, normalised inference: ``restore(image, model=...)`` for images of any size."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .._device import resolve_device
from .._validate import check_image
from ._registry import load_model

MIN_SIZE = 16
"""Smallest image side [pixels] :func:`restore` accepts; sides below the network's size are padded."""


def _check_int(value, name: str, minimum: int, unit: str = " [pixels]") -> int:
    """Check an integer option >= minimum."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{unit}, got {value!r}")
    return int(value)


def _normalise(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-frame ``(x - mean) / std``; raise for constant frames. Returns (normalised, mean, std)."""
    # max |x| from max and min: no temporary array the size of the stack
    scale = np.maximum(np.abs(frames.max(axis=(1, 2))), np.abs(frames.min(axis=(1, 2))))
    # the variance squares the values: frames beyond ~1e±154 would overflow or underflow, so bring them to
    # unit magnitude first (a copy, needed only for such frames)
    unit = np.where((scale > 1e100) | ((scale > 0) & (scale < 1e-100)), scale, 1.0)
    if np.any(unit != 1.0):
        frames = frames / unit[:, None, None]
    mean = frames.mean(axis=(1, 2))
    std = frames.std(axis=(1, 2))
    flat = std <= 1e-12 * np.maximum(scale / unit, np.finfo(np.float64).tiny)
    if np.any(flat):
        i = int(np.argmax(flat))
        raise ValueError(
            f"image frame {i} is constant (value {mean[i] * unit[i]:g}, std {std[i] * unit[i]:g}, below 1e-12 "
            "of its magnitude): there is nothing to restore and it cannot be normalised to unit standard "
            "deviation; remove it from the stack"
        )
    norm = frames - mean[:, None, None]
    norm /= std[:, None, None]  # in place: one image-sized temporary, not two
    return norm, mean * unit, std * unit


def _axis_tiles(length: int, tile: int, overlap: int, multiple: int) -> tuple[int, list[int]]:
    """Tile size and start offsets (multiples of ``multiple``) covering ``length`` with >= overlap shared."""
    if length <= tile:
        return length, [0]
    eff = overlap + multiple  # slack for rounding the starts to the network's stride
    n = math.ceil((length - eff) / (tile - eff))
    size = math.ceil((length + (n - 1) * eff) / n)
    size = min(tile, multiple * math.ceil(size / multiple))
    last = (length - size) // multiple
    starts = [multiple * int(round(v)) for v in np.linspace(0, last, n)]
    return size, starts


def _axis_windows(starts: list[int], size: int, overlap: int) -> list[np.ndarray]:
    """Per-tile 1-D blending windows that sum to 1 over the axis (a partition of unity).

    In the zone shared by two neighbouring tiles the weight passes from one to the other with a raised-
    cosine (sin²/cos²) ramp of ``overlap // 2`` pixels centred on the zone; on both sides of the ramp it is
    exactly 0 or 1, so at least ``overlap // 4`` pixels next to every inner tile edge get weight 0 (they
    serve as context only). Image borders are never tapered.
    """
    ramp = overlap // 2
    t = (np.arange(ramp) + 0.5) / max(ramp, 1)
    rise = np.sin(0.5 * np.pi * t) ** 2
    wins = []
    for k, s in enumerate(starts):
        w = np.ones(size)
        if k > 0:  # left neighbour
            c = (s + starts[k - 1] + size) // 2 - s
            w[: c - ramp // 2] = 0.0
            w[c - ramp // 2 : c - ramp // 2 + ramp] = rise
        if k < len(starts) - 1:  # right neighbour
            c = (starts[k + 1] + s + size) // 2 - s
            w[c - ramp // 2 : c - ramp // 2 + ramp] *= 1.0 - rise
            w[c - ramp // 2 + ramp :] = 0.0
        wins.append(w)
    return wins


def _resolve_model(model, device) -> tuple[nn.Module, torch.device]:
    """Return (module, device) from a registry name or an nn.Module."""
    if isinstance(model, str):
        dev = resolve_device(device)
        return load_model(model, device=dev), dev
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a registry name (str) or a torch.nn.Module, "
                        f"got {type(model).__name__}")
    tensors = list(model.parameters()) + list(model.buffers())
    own = tensors[0].device if tensors else None
    if device is None or (isinstance(device, str) and device == "auto"):
        return model, own if own is not None else torch.device("cpu")
    dev = resolve_device(device)
    if own is not None and own.type != dev.type:
        raise ValueError(f"model lives on {own} but device={device!r}; move it with model.to({str(dev)!r}) "
                         "or pass device='auto'")
    return model, dev


def _model_dtype(model: nn.Module, dtype) -> torch.dtype:
    """Compute dtype: explicit ``dtype``, else the model's floating parameter dtype, else float32."""
    if dtype is not None:
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError(f"dtype must be a torch floating dtype, got {dtype!r}")
        return dtype
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def restore(image, model: str | nn.Module = "hrstem", *, device: str | torch.device = "auto",
            tile: int = 1024, overlap: int = 64, batch_size: int = 1,
            dtype: torch.dtype | None = None) -> np.ndarray:
    """Restore an image (or a stack) with a network, tile by tile, on its own intensity scale.

    Each frame is normalised to zero mean and unit standard deviation (the network's input scale), cut into
    overlapping tiles of at most ``tile`` pixels, restored in batches of ``batch_size`` tiles, blended with
    raised-cosine windows that form a partition of unity, and mapped back with the frame's mean and
    standard deviation: ``restore(a·x + b) = a·restore(x) + b`` for ``a > 0``, so scattering cross-sections
    measured on the output stay in the input's units. Images whose sides are not multiples of the network's
    ``size_multiple`` (or smaller than it) are reflection-padded at the bottom/right and cropped back.

    The normalisation replaces the max-normalisation of eq. (26) of Lobato et al. (2023); networks used
    here must be trained on inputs normalised the same way, with targets ``(y - mean(x)) / std(x)``
    (docs/restoration.md).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
        Image(s) [any intensity unit: counts or normalised intensity], H, W ≥ 16. Integer dtypes are
        converted to float64 without overflow. NaN/Inf and constant frames raise ``ValueError``.
    model : str or torch.nn.Module
        A registry name (:func:`stemquant.restore.list_models`, weights from :func:`load_model`) or a module
        mapping (N, 1, h, w) to (N, 1, h, w); its optional ``size_multiple`` attribute sets the padding.
    device : {"auto", "cpu", "cuda"} or torch.device
        Compute device. With a module and ``"auto"``, the module's own device.
    tile : int
        Maximum tile side [pixels]; tiles shrink to spread the overlap evenly. Memory grows with
        ``batch_size · tile²``, not with the image (published CGRDN, float32, CPU: 1.4 GB peak for one
        1024² tile). Images up to ``tile`` pixels are restored in one piece.
    overlap : int
        Minimum number of pixels shared by neighbouring tiles [pixels]; needs
        ``tile >= 2 (overlap + size_multiple)``. Output pixels within ``overlap // 4`` of an inner tile edge
        are taken from the neighbour, so for a network whose receptive-field radius is at most
        ``overlap // 4`` tiled and untiled inference agree.
    batch_size : int
        Tiles per forward pass; raise it for stacks of small frames or small tiles on a GPU.
    dtype : torch.dtype, optional
        Compute dtype; default the model's parameter dtype (float32 for parameter-free modules).

    Returns
    -------
    ndarray, float64, same shape as ``image``
        The restored image on the input's intensity scale.

    Examples
    --------
    >>> img = np.random.default_rng(0).poisson(5.0, (37, 31))
    >>> out = restore(img, torch.nn.Identity(), dtype=torch.float64)
    >>> bool(np.allclose(out, img))
    True
    """
    arr = check_image(image, ndim=(2, 3), min_size=MIN_SIZE)
    tile = _check_int(tile, "tile", MIN_SIZE)
    overlap = _check_int(overlap, "overlap", 0)
    batch_size = _check_int(batch_size, "batch_size", 1, " [tiles]")
    net, dev = _resolve_model(model, device)
    cdtype = _model_dtype(net, dtype)
    m = int(getattr(net, "size_multiple", 1))
    t_max = (tile // m) * m
    if 2 * (overlap + m) > t_max:
        raise ValueError(f"tile={tile} is too small for overlap={overlap} and a network size multiple of "
                         f"{m}: need tile >= 2 * (overlap + {m}) pixels; increase tile or decrease overlap")

    frames = arr.reshape((-1,) + arr.shape[-2:])
    norm, mean, std = _normalise(frames)
    h, w = frames.shape[-2:]
    hp, wp = m * math.ceil(h / m), m * math.ceil(w / m)
    if (hp, wp) != (h, w):
        norm = np.pad(norm, ((0, 0), (0, hp - h), (0, wp - w)), mode="reflect")

    th, rows = _axis_tiles(hp, t_max, overlap, m)
    tw, cols = _axis_tiles(wp, t_max, overlap, m)
    row_w = _axis_windows(rows, th, overlap)
    col_w = _axis_windows(cols, tw, overlap)
    # the blending weight is separable and the tile grid a product: total weight = outer(A, B)
    total_r, total_c = np.zeros(hp), np.zeros(wp)
    for s, win in zip(rows, row_w, strict=True):
        total_r[s : s + th] += win
    for s, win in zip(cols, col_w, strict=True):
        total_c[s : s + tw] += win

    x = torch.as_tensor(norm, dtype=cdtype).to(dev)
    del norm  # whole-image buffers are the only memory that grows with the image: keep as few as possible
    acc = torch.zeros_like(x)
    rw = [torch.as_tensor(v, dtype=cdtype, device=dev) for v in row_w]
    cw = [torch.as_tensor(v, dtype=cdtype, device=dev) for v in col_w]
    jobs = [(f, i, j) for f in range(x.shape[0]) for i in range(len(rows)) for j in range(len(cols))]

    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for b0 in range(0, len(jobs), batch_size):
                batch = jobs[b0 : b0 + batch_size]
                inp = torch.stack([x[f, rows[i] : rows[i] + th, cols[j] : cols[j] + tw] for f, i, j in batch])
                out = net(inp.unsqueeze(1))
                if out.shape != (len(batch), 1, th, tw):
                    raise ValueError(f"model returned shape {tuple(out.shape)} for input "
                                     f"{(len(batch), 1, th, tw)}; restore needs a network that maps "
                                     "(N, 1, H, W) to (N, 1, H, W)")
                out = out[:, 0].to(cdtype)
                for k, (f, i, j) in enumerate(batch):
                    acc[f, rows[i] : rows[i] + th, cols[j] : cols[j] + tw] += out[k] * rw[i][:, None] * cw[j]
    finally:
        net.train(was_training)

    del x
    res = acc.to("cpu", torch.float64).numpy()
    del acc
    res = res[:, :h, :w]
    res /= total_r[:h, None] * total_c[None, :w]
    res *= std[:, None, None]
    res += mean[:, None, None]
    return np.ascontiguousarray(res).reshape(arr.shape)
