"""Fast incoherent HAADF image model: probe intensity convolved with SCS-weighted column profiles."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from stemquant._device import resolve_device
from stemquant._validate import check_pixel_size, check_positive

from ._library import ScsLibrary
from ._probe import ProbeParams, _check_shape, probe_intensity

_CHUNK = 2048  # columns per matrix product in _sum_columns


def _check_columns(columns) -> tuple[np.ndarray, np.ndarray]:
    """Columns must be a DataFrame with finite x, y [Å] and n_atoms >= 0."""
    if not isinstance(columns, pd.DataFrame):
        raise TypeError(
            f"columns must be a pandas DataFrame (project_columns output), got {type(columns).__name__}"
        )
    missing = {"x", "y", "n_atoms"} - set(columns.columns)
    if missing:
        raise ValueError(f"columns is missing {sorted(missing)}: it needs x, y [Å] and n_atoms")
    xy = columns[["x", "y"]].to_numpy(np.float64)
    n = columns["n_atoms"].to_numpy(np.float64)
    if not np.all(np.isfinite(xy)):
        raise ValueError("columns x, y contain NaN/Inf [Å]")
    if np.any(n < 0) or not np.all(np.isfinite(n)):
        raise ValueError(f"columns n_atoms must be finite and >= 0, got min {n.min()}")
    return xy, n


def _oversampling(params: ProbeParams, pixel_size: float) -> int:
    """Integer factor so that the fine grid samples the probe intensity unaliased (q <= lambda / 4 alpha)."""
    q_max = params.wavelength / (4 * params.semiangle_cutoff * 1e-3)
    return max(1, int(np.ceil(pixel_size / (0.95 * q_max))))


def render_incoherent(columns: pd.DataFrame, *, shape: tuple[int, int], pixel_size: float, probe: ProbeParams,
                      library: ScsLibrary, background: float = 0.0, column_sigma: float = 0.1,
                      margin: float = 6.0, device: str = "cpu") -> np.ndarray:
    """Fast incoherent HAADF-STEM image of projected atomic columns (an approximation to multislice).

    ``I(r) = background + sum_c SCS(n_c) [P * g_c](r - r_c)``, where ``P`` is the effective probe intensity
    (``probe_intensity``: aberrated probe with source-size broadening) as a density [1/Å²], ``g_c`` a
    normalised Gaussian column profile of std ``column_sigma`` and ``SCS(n)`` the library's cross-section of
    a column of ``n`` atoms. By construction the integral of ``I - background`` around an isolated column
    equals its SCS (Friedrich 2023, eq. (2.20)), as the abTEM library it is calibrated against.

    This is the incoherent-imaging approximation: it ignores channelling-dependent changes of the column shape
    with thickness, cross-talk between columns and the real peak shape, so pixel-level contrast differs from
    a frozen-phonon multislice image (``simulate_haadf_abtem``); integrated column intensities follow the
    library.

    The image is computed exactly in Fourier space on a grid padded by ``margin`` on each side (so columns up
    to ``margin`` outside the field of view contribute their tails; columns further out are ignored),
    oversampled when ``pixel_size`` is too coarse to sample the probe intensity, then point-sampled at pixel
    centres ``((j + 0.5) p, (i + 0.5) p)`` (docs/conventions.md).

    Parameters
    ----------
    columns : pandas.DataFrame
        Columns with ``x``, ``y`` [Å] and ``n_atoms`` (``stemquant.structures.project_columns``).
    shape : tuple of int
        Image shape ``(H, W)`` [pixels].
    pixel_size : float
        Pixel size [Å] (0.12 for the particle, Table 2.1).
    probe : ProbeParams
        Probe settings, e.g. ``PRESETS["particle"]``.
    library : ScsLibrary
        SCS(n) table, e.g. ``load_scs_library("pt001_particle")``.
    background : float, optional
        Constant added to every pixel [fraction of the beam]. Default 0.
    column_sigma : float, optional
        Std of the Gaussian projected column profile [Å] (thermal smearing and potential width). Default 0.1.
    margin : float, optional
        Padding around the field of view [Å]. Default 6.
    device : {"cpu", "cuda", "auto"}
        Torch device for the Fourier-space sum; the same code runs on both.

    Returns
    -------
    image : ndarray, shape (H, W)
        Normalised intensity (fraction of the incident beam); ``image * pixel_size**2`` summed around a column
        ≈ its SCS [Å²].

    Examples
    --------
    >>> import pandas as pd
    >>> from stemquant.simulate import PRESETS, load_scs_library
    >>> cols = pd.DataFrame({"x": [3.0], "y": [3.0], "n_atoms": [5]})
    >>> img = render_incoherent(cols, shape=(50, 50), pixel_size=0.12, probe=PRESETS["particle"],
    ...                         library=load_scs_library("pt001_particle"))
    >>> img.shape
    (50, 50)
    """
    xy, n = _check_columns(columns)
    h, w = _check_shape(shape)
    p = check_pixel_size(pixel_size)
    if not isinstance(probe, ProbeParams):
        raise TypeError(f"probe must be a ProbeParams (e.g. PRESETS['particle']), got {type(probe).__name__}")
    if not isinstance(library, ScsLibrary):
        raise TypeError(f"library must be a ScsLibrary (load_scs_library(...)), got {type(library).__name__}")
    if not np.isfinite(background):
        raise ValueError(f"background must be finite [fraction of the beam], got {background}")
    if not (np.isfinite(column_sigma) and column_sigma >= 0):
        raise ValueError(f"column_sigma must be >= 0 [Å], got {column_sigma}")
    margin = check_positive(margin, "margin", "Å")
    dev = resolve_device(device)

    s = _oversampling(probe, p)
    q = p / s
    pad = int(np.ceil(margin / p))
    hf, wf = (h + 2 * pad) * s, (w + 2 * pad) * s
    # fine-grid sample J sits at x = (J q) - pad p + p/2 in image coordinates
    origin = -pad * p + 0.5 * p
    keep = ((xy[:, 0] > -margin) & (xy[:, 0] < w * p + margin)
            & (xy[:, 1] > -margin) & (xy[:, 1] < h * p + margin))
    weights = library.scs(n[keep])
    rel = xy[keep] - origin

    otf = _transfer(probe, (hf, wf), q, column_sigma)
    img = _sum_columns(rel, weights, (hf, wf), q, otf, dev)
    img = img[::s, ::s][pad:pad + h, pad:pad + w]
    return img + float(background)


def _transfer(probe: ProbeParams, shape: tuple[int, int], q: float, column_sigma: float) -> np.ndarray:
    """Fourier transform (rfft layout) of probe density ⊗ column Gaussian, unit value at k = 0."""
    pint = probe_intensity(probe, shape, q)
    otf = np.fft.rfft2(np.fft.ifftshift(pint))
    ky = np.fft.fftfreq(shape[0], d=q)
    kx = np.fft.rfftfreq(shape[1], d=q)
    g = np.exp(-2 * np.pi**2 * column_sigma**2 * (ky[:, None] ** 2 + kx[None, :] ** 2))
    return otf * g


def _sum_columns(rel: np.ndarray, weights: np.ndarray, shape: tuple[int, int], q: float, otf: np.ndarray,
                 dev: torch.device) -> np.ndarray:
    """Fourier series of sum_c w_c delta(r - r_c) (separable in x, y) times the transfer, inverse FFT."""
    hf, wf = shape
    t = torch.as_tensor
    ky = t(np.fft.fftfreq(hf, d=q), dtype=torch.float64, device=dev)
    kx = t(np.fft.rfftfreq(wf, d=q), dtype=torch.float64, device=dev)
    x = t(rel[:, 0], dtype=torch.float64, device=dev)
    y = t(rel[:, 1], dtype=torch.float64, device=dev)
    wt = t(weights, dtype=torch.complex128, device=dev)
    spec = torch.zeros((hf, wf // 2 + 1), dtype=torch.complex128, device=dev)
    for lo in range(0, len(weights), _CHUNK):  # bounded memory for many columns
        sl = slice(lo, lo + _CHUNK)
        ey = torch.exp(-2j * np.pi * ky[:, None] * y[None, sl])  # (Hf, n)
        ex = torch.exp(-2j * np.pi * kx[:, None] * x[None, sl])  # (Wf//2+1, n)
        spec += (ey * wt[None, sl]) @ ex.T  # (Hf, Wf//2+1)
    spec = spec * t(otf, dtype=torch.complex128, device=dev)
    # density per Å²: a delta of weight w on a grid of spacing q has height w / q²
    img = torch.fft.irfft2(spec, s=(hf, wf)) / q**2
    return img.cpu().numpy()
