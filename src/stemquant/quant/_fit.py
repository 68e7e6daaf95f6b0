"""Joint fit of all atomic columns: least squares (StatSTEM) or Poisson maximum likelihood, batched over frames.

Engine: Levenberg–Marquardt on all parameters jointly (positions, heights, widths, background), every frame of a
stack in one batch. The damped normal equations (JᵀWJ + λ·diag) δ = JᵀW r are solved matrix-free by conjugate
gradients preconditioned with the exact per-column 4×4 blocks (and a Schur complement for the global parameters);
J·v and Jᵀ·u use the separable patch kernels of ``_model.py``, so one iteration costs O(N·P²) and the whole fit
grows linearly with the number of columns. Near the optimum each frame switches from Gauss–Newton / Fisher scoring
to Newton steps (second-derivative term added, same fixed point, quadratic convergence).
The heights and background enter linearly: they are first solved with positions and widths fixed (variable
projection start, as StatSTEM does for large images), then all parameters are refined jointly.

Criteria (``noise``):
- ``"gaussian"``: minimise Σ (d − f)², the StatSTEM criterion (W = 1).
- ``"poisson"``: maximise the Poisson likelihood of counts; Fisher scoring gives W = 1/f and the working residual
  d − f (iteratively reweighted least squares). Efficient at low dose, where least squares is not.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from stemquant._device import resolve_device
from stemquant._validate import (
    check_dose,
    check_image,
    check_pixel_size,
    check_positions,
    check_positive,
    outside_image,
)

from . import _model as M
from ._crlb import crlb_from_state

_WIDTH_MODES = ("common", "individual")
# Stopping threshold: a column's share of the predicted decrease of the last step, ½δₙᵀgₙ, in log-likelihood units
# (Poisson) or units of σ² (least squares); 5e-5 means the step moved it by ~1e-2 of its statistical uncertainty.
_STOP_SHARE = 5e-5
_NEWTON = True
# A CPU stack is split into at least this many batches (13 frames of a 25-column image per batch were as fast per
# frame as one batch of 100 in benchmarks/fit_precision.py's sweep): room for up to 8 worker threads.
_MIN_CPU_BATCHES = 8


@dataclass(frozen=True)
class FitResult:
    """Result of :func:`fit_columns`.

    Arrays have a leading frame axis ``B`` only when a stack ``(B, H, W)`` was fitted.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per column (frame-major for a stack) with ``frame``, ``column``, ``type``, ``x``, ``y`` [Å],
        ``width`` ρ [Å], ``height`` η and ``background`` ζ [image intensity units], ``scs`` = 2πηρ²
        [intensity·Å²], ``x_crlb``, ``y_crlb`` [Å] and ``scs_crlb`` [intensity·Å²] (standard deviations, i.e.
        square roots of the Cramér–Rao lower bounds; NaN when ``crlb=False``), ``converged`` (bool), ``empty_site``
        and ``runaway`` (bool, see ``converged``).
    positions : ndarray, shape ([B,] N, 2)
        Fitted (x, y) [Å].
    widths, heights, scs : ndarray, shape ([B,] N)
    background : ndarray, shape ([B])
    converged : ndarray of bool, shape ([B,] N)
        The frame's optimiser converged, the column's centre lies inside the image (a column fitted outside
        it describes a tail of noise, not a column), no other column's centre lies closer than the larger of
        their widths (two Gaussians sharing one column split its SCS), no other start took its site over (it
        ended more than half-way to the nearest other start while another column ended closer to its start), and
        it is not an empty site — a start with
        no significant column under it (a vacancy or spurious start), removed from the model: height and SCS 0,
        position and width at the start, NaN bounds (``table["empty_site"]``; docs/fitting.md) — nor a runaway
        width: an individual width that grew past 3x its start while drifting off (a start on a broad feature the
        model has no term for), fitted at its start position and width, only its height free
        (``table["runaway"]``). ``fit_columns`` warns when any column is not converged. (``table["width_fixed"]``
        marks the columns whose individual width was fixed at its start: the runaways, and columns removed as empty
        sites and restored twice — these converge only within their start width of their start position; their SCS
        assumes that width.)
    n_iter : ndarray of int, shape ([B])
        Levenberg–Marquardt iterations used per frame.
    objective : ndarray, shape ([B])
        Final criterion per frame: ½Σ(d−f)² (gaussian) or the Poisson half-deviance Σ[f − d + d ln(d/f)].
    """

    table: pd.DataFrame
    positions: np.ndarray
    widths: np.ndarray
    heights: np.ndarray
    scs: np.ndarray
    background: np.ndarray
    converged: np.ndarray
    n_iter: np.ndarray
    objective: np.ndarray
    pixel_size: float
    dose: float | None
    noise: str
    width_mode: str
    info: dict = field(default_factory=dict)


def fit_columns(
    image,
    positions,
    pixel_size: float,
    *,
    dose: float | None = None,
    width: str | float = "common",
    noise: str = "gaussian",
    background: str | float = "fit",
    types=None,
    width_init: float | None = None,
    truncation: float = 4.0,
    max_iter: int = 100,
    crlb: bool = True,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    frames_per_batch: int | None = None,
    num_threads: int | None = 1,
    workers: int | None = None,
    progress: bool | None = None,
) -> FitResult:
    """Fit a constant background plus one round Gaussian per atomic column to an image or a stack of frames.

    Implements the model of eq. (2.19) of Friedrich (2023), fitted jointly to all columns; SCS by eq. (2.20).

    Parameters
    ----------
    image : ndarray, shape (H, W) or (B, H, W)
        Normalised intensity (with ``dose``) or detector counts (``dose=None``). A stack is fitted frame by frame,
        all frames in one batched computation (e.g. 100 noise realisations of one specimen).
    positions : ndarray, shape (N, 2) or (B, N, 2)
        Initial (x, y) column positions [Å], shared by all frames or one set per frame.
    pixel_size : float
        Pixel size [Å].
    dose : float, optional
        Electron dose [e⁻/Å²] of a normalised-intensity image; expected counts = intensity·dose·pixel_size².
        Required for ``noise="poisson"`` unless the image is in counts.
    width : {"common", "individual"} or float
        ``"common"``: one width per column type and frame (StatSTEM's default); ``"individual"``: one width per
        column; a float fixes all widths to this value [Å].
    noise : {"gaussian", "poisson", "auto"}
        Fitting criterion: least squares or Poisson maximum likelihood (counts must be non-negative); ``"auto"``:
        Poisson when ``dose`` is given, least squares otherwise (the CLI's default).
    background : "fit" or float
        Fit one constant background per frame, or fix it to this value [image intensity units].
    types : array of int, shape (N,), optional
        Column type of each column, any non-negative integer labels (0, 1, … or e.g. atomic numbers); with
        ``width="common"`` each type has its own width. The table reports the labels as given.
    width_init : float, optional
        Initial width [Å] of every column; estimated from the image, per column type, when omitted.
    truncation : float
        Each Gaussian is evaluated on a window of half-size ceil(truncation · width) pixels around its current
        position (zero outside; tails ≤ exp(-truncation²/2) of the peak are neglected); windows are re-centred
        and enlarged as columns move and widths grow. The CRLB uses windows of the same size.
    max_iter : int
        Maximum Levenberg–Marquardt iterations.
    crlb : bool
        Compute the Cramér–Rao lower bounds of x, y and SCS at the fitted parameters (``column_crlb``): with
        Poisson statistics when the counts are known (``dose`` given, or ``noise="poisson"``), otherwise Gaussian
        statistics with the noise variance estimated from the residuals.
    device : {"cpu", "cuda", "auto"}
    dtype : torch.dtype
        Working precision (float64 by default; float32 is faster on GPUs).
    frames_per_batch : int, optional
        Frames processed together. By default a batch holds about 10⁶ window pixels on a CPU (cache-sized; a
        stack is split into at least min(B, 8) batches of equal size, for ``workers``) and 2·10⁷ on a GPU.
    num_threads : int or None
        Torch intra-op threads used on a CPU during the fit (restored afterwards); None keeps torch's setting.
        The kernels are many small operations: one thread was 10x faster than two on a loaded 2-core machine
        (benchmarks/RESULTS.md); parallelise over frames or images instead. On an idle machine two threads fit a
        single 400-column image 10–15 % faster (``benchmarks/fit_speed.py``).
    workers : int, optional
        Frame batches fitted concurrently on a CPU, each in its own thread with ``num_threads`` torch threads (torch
        releases the interpreter lock inside its kernels). Default: as many as the available cores allow
        (``cores // num_threads``; 1 when ``num_threads`` is None), at most 8 (memory: each worker holds a batch,
        ~0.1 GB, or one frame's CRLB, ~0.3 GB for 3,600 columns) and at most the number of batches. Batches are the
        same whatever the number of workers, so are the fitted parameters. The CRLBs are computed frame by frame on
        the same threads; threads that no frame needs (all of them for a single image) go to the dense linear
        algebra of a frame's bound, which may then differ from a one-thread run in the last digits. Ignored on a
        GPU (one stream).
    progress : bool, optional
        Show a tqdm progress bar over frame batches (default: for stacks of ≥ 20,000 column fits, ~3 s and more).

    Returns
    -------
    FitResult

    Raises
    ------
    ValueError
        For NaN/Inf pixels, wrong shapes, non-positive pixel size or dose, positions outside the image, negative
        counts with the Poisson criterion, or unknown options.

    Examples
    --------
    >>> import numpy as np
    >>> from stemquant.quant import fit_columns
    >>> yy, xx = (np.mgrid[0:40, 0:40] + 0.5) * 0.2
    >>> img = 0.1 + np.exp(-((xx - 4.0) ** 2 + (yy - 4.1) ** 2) / (2 * 0.5**2))
    >>> fit = fit_columns(img, [[3.9, 4.0]], 0.2, crlb=False)
    >>> [round(float(v), 3) for v in fit.table.loc[0, ["x", "y", "width", "height"]]]
    [4.0, 4.1, 0.5, 1.0]
    """
    img = check_image(image)
    p = check_pixel_size(pixel_size)
    dose = check_dose(dose)
    if noise == "auto":  # Poisson ML whenever the counts are known: efficient at low dose
        noise = "poisson" if dose is not None else "gaussian"
    if noise not in ("gaussian", "poisson"):
        raise ValueError(f"noise must be 'gaussian', 'poisson' or 'auto', got {noise!r}")
    stack = img.ndim == 3
    img3 = img if stack else img[None]
    B, H, W = img3.shape
    pos = check_positions(positions, (H, W), p, batch=B)
    pos3 = np.broadcast_to(pos if pos.ndim == 3 else pos[None], (B, *pos.shape[-2:]))
    N = pos3.shape[1]
    c0 = pos3 / p - 0.5  # (B, N, 2) pixel-centre coordinates
    nearest = _nearest_start(c0, shared=pos3.strides[0] == 0, pixel_size=p)  # refuses starts < 1 px apart
    spacing = _start_spacing(nearest)
    fixed_width = None
    if isinstance(width, str):
        if width not in _WIDTH_MODES:
            raise ValueError(f"width must be 'common', 'individual' or a positive float [Å], got {width!r}")
    else:
        fixed_width = check_positive(width, "width", "Å")
    fixed_bg = None
    if isinstance(background, str):
        if background != "fit":
            raise ValueError(f"background must be 'fit' or a float [intensity], got {background!r}")
    else:
        try:
            if isinstance(background, bool):  # True would fix the background at 1.0
                raise TypeError
            fixed_bg = float(background)
        except TypeError:
            raise TypeError(f"background must be 'fit' or a float [intensity], got {background!r}") from None
        if not math.isfinite(fixed_bg):
            raise ValueError(f"background must be finite, got {background}")
    types_arr = _check_types(types, N)
    # the engine numbers the types 0..T-1: a label without columns would get a free width with no data
    type_index = np.unique(types_arr, return_inverse=True)[1].astype(np.int64)
    if width_init is not None:
        check_positive(width_init, "width_init", "Å")
    check_positive(truncation, "truncation", "widths")
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise ValueError(f"workers must be an integer >= 1 or None, got {workers!r}")
    if noise == "poisson" and fixed_bg is not None and fixed_bg <= 0:
        raise ValueError(
            f"background fixed at {fixed_bg} with noise='poisson': the Poisson model needs a positive background "
            "(expected counts > 0 everywhere); fit it (background='fit') or give a positive value"
        )
    scale = dose * p * p if dose is not None else 1.0  # image units -> data units
    if noise == "poisson":
        if np.any(img3 < 0):
            raise ValueError(
                "noise='poisson' needs non-negative counts, but the image has negative pixels; "
                "use noise='gaussian' for background-subtracted or restored images"
            )
    _check_intensity_units(img3, dose, noise, p)
    if _least_squares_at_low_counts(img3, scale, noise, dose, below=1.0) and not np.any(img3 < 0):
        # (not for a background-subtracted or restored image with negative pixels: Poisson ML refuses those)
        counts = float(np.mean(img3)) * scale
        # measured (individual widths, 5x5 lattice, 40 frames): at 10³ e⁻/Å² (~0.5 counts/pixel) 15 converged SCS
        # 5-8 bounds off, several columns shrunk onto a few pixels; Poisson ML on the same frames: none past 5
        warnings.warn(f"least squares on {counts:.2g} counts per pixel (image mean): there its estimates are "
                      "inefficient and biased, and with individual widths a column can shrink onto a few noisy pixels "
                      "and still converge (SCS several bounds off). Use noise='poisson' with the dose.", UserWarning,
                      stacklevel=2)
    dev = resolve_device(device)

    # Everything below works in pixel units and data units (counts when scale = dose·p²).
    data_all = img3 * scale
    n_types = int(type_index.max()) + 1
    rho0 = (  # start width per frame and column type [px], (B, T)
        np.full((B, n_types), fixed_width / p)
        if fixed_width is not None
        else (np.full((B, n_types), width_init / p) if width_init is not None
              else _estimate_width(data_all, c0, type_index, spacing))
    )
    h = int(math.ceil(truncation * float(rho0.max())))
    # Frames per batch: on a CPU keep the window arrays cache-sized (larger batches were slower per column) and
    # split a stack into at least _MIN_CPU_BATCHES batches, so that up to that many worker threads share it
    # whatever the machine (the split does not depend on the cores: neither do the numbers); on a GPU fill the
    # device.
    if frames_per_batch:
        batches = [slice(a, min(B, a + frames_per_batch)) for a in range(0, B, frames_per_batch)]
    else:
        per = max(1, int((1e6 if dev.type == "cpu" else 2e7) // max(1, N * (2 * h + 1) ** 2)))
        n_batches = -(-B // per)
        if dev.type == "cpu":
            n_batches = max(n_batches, min(B, _MIN_CPU_BATCHES))
        bounds = np.arange(n_batches + 1) * B // n_batches  # equal sizes to one frame
        batches = [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    threads = _n_workers(workers, num_threads, dev)
    n_workers = min(threads, B if crlb else len(batches))  # the CRLB goes frame by frame
    # a frame's CRLB is dense linear algebra that does use several torch threads (~1.8x with 2 for 2,000 columns
    # and more): the bounds get the threads that no frame needs (a single image: all of them)
    crlb_threads = None if dev.type != "cpu" or num_threads is None else num_threads * max(1, threads // n_workers)
    # a progress bar for fits that take more than a few seconds (~20,000 column fits)
    show = progress if progress is not None else (len(batches) > 1 and B * N >= 20_000)

    def fit(sl):
        return _fit_batch(
            torch.as_tensor(data_all[sl], dtype=dtype, device=dev),
            torch.as_tensor(np.ascontiguousarray(c0[sl]), dtype=dtype, device=dev),
            torch.as_tensor(rho0[sl], dtype=dtype, device=dev),
            torch.as_tensor(type_index, device=dev),
            noise=noise,
            width_mode="fixed" if fixed_width is not None else width,
            fixed_bg=None if fixed_bg is None else fixed_bg * scale,
            max_iter=max_iter,
            truncation=truncation,
        )

    with _cpu_threads(num_threads if dev.type == "cpu" else None), _pool(n_workers) as pool:
        outs = list(_progress(pool.map(fit, batches), show, len(batches)))
        st = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        return _assemble(st, img3, p, scale, dose, noise, width, fixed_width, fixed_bg, types_arr, crlb, stack,
                         pool, crlb_threads, max_iter, truncation, pos3, nearest * p)


def _start_spacing(nearest: np.ndarray) -> np.ndarray:
    """Median nearest-neighbour distance of the starts per frame, shape (B,), from :func:`_nearest_start` (B, N)
    [px]; 16 px for a single column."""
    if nearest.shape[1] < 2:
        return np.full(nearest.shape[0], 16.0)
    return np.median(nearest, axis=1)


def _nearest_start(c0: np.ndarray, shared: bool, pixel_size: float | None = None) -> np.ndarray:
    """Distance [px] from each start position ``c0`` (B, N, 2) to the nearest other one, shape (B, N) (inf for a
    single column), from one k-d tree per frame (one for a stack that shares its starts).

    With ``pixel_size`` [Å] it also refuses starts less than one pixel apart: two Gaussians on one column split its
    SCS between them (and the fit cannot tell them apart), so every count downstream would be wrong.
    """
    from scipy.spatial import cKDTree

    B, N = c0.shape[:2]
    out = np.full((B, N), np.inf)
    if N < 2:
        return out
    for b in range(1 if shared else B):
        tree = cKDTree(c0[b])
        d = tree.query(c0[b], k=2)[0][:, 1]
        if pixel_size is not None and d.min() < 1.0:
            pairs = tree.query_pairs(np.nextafter(1.0, 0.0), output_type="ndarray")  # closer than 1 px
            i, j = pairs[0]
            where = f" in frame {b}" if B > 1 and not shared else ""
            raise ValueError(
                f"{len(pairs)} pair(s) of start positions lie less than one pixel ({pixel_size:g} Å) apart{where}, "
                f"e.g. columns {i} and {j} ({float(np.hypot(*(c0[b, i] - c0[b, j]))) * pixel_size:.3g} Å): "
                "duplicate rows? Remove one of each pair (remove_columns)"
            )
        out[b] = d
    if shared:
        out[:] = out[0]
    return out


def _collapsed(x: np.ndarray, y: np.ndarray, rho: np.ndarray) -> np.ndarray:
    """Columns (B, N) whose fitted centres lie closer than the larger of the two widths: two Gaussians sharing one
    column (its SCS split between them, e.g. a spurious start that became a wide faint Gaussian on a column's
    flank), not two columns. Resolved projected columns are farther apart than their widths (dumbbells of
    0.8-1.4 Å against widths of 0.4-0.7 Å); two columns closer than that cannot be told apart reliably anyway."""
    from scipy.spatial import cKDTree

    out = np.zeros(x.shape, dtype=bool)
    for b in range(x.shape[0]):
        xy = np.stack((x[b], y[b]), -1)
        ok = np.isfinite(xy).all(1) & np.isfinite(rho[b])
        if not ok.any():
            continue
        idx = np.flatnonzero(ok)
        pairs = idx[cKDTree(xy[ok]).query_pairs(float(np.abs(rho[b, ok]).max()), output_type="ndarray")]
        if len(pairs):
            i, j = pairs[:, 0], pairs[:, 1]
            close = np.hypot(*(xy[i] - xy[j]).T) < np.maximum(rho[b, i], rho[b, j])
            out[b, i[close]] = out[b, j[close]] = True
    return out


def _whole_numbers(a: np.ndarray) -> bool:
    """Whether every value is a whole number. Runs on every fit: a normalised image fails on its first values,
    so a small sample is tested before the whole stack is rounded."""
    flat = a.reshape(-1)
    head = flat[:4096]
    return bool(np.array_equal(head, np.round(head))) and bool(np.array_equal(flat, np.round(flat)))


def _looks_like_counts(img3: np.ndarray, c: float) -> bool:
    """Whether an image given with ``c = dose·p²`` expected electrons per unit intensity is integer counts.

    A normalised counts image holds k / c. All whole numbers then means k / c integral for every pixel: for
    c ≤ 1 that happens when 1/c is an integer — but then the values times c are whole numbers too (exempt); for
    c > 1 it needs every count to be a multiple of c, which no real image is. c = 1 cannot tell, and need not.
    """
    if abs(c - 1.0) < 1e-9 or not np.any(img3):
        return False
    if not _whole_numbers(img3):
        return False
    if c > 1.0:
        return True
    scaled = img3 * c
    return not np.allclose(scaled, np.round(scaled), rtol=0, atol=1e-6)


def _check_intensity_units(img3: np.ndarray, dose, noise: str, pixel_size: float) -> None:
    """Catch an image whose units contradict ``dose`` (docs/conventions.md): every number downstream — the
    Poisson weights, the CRLB — scales with the assumed counts.

    With a dose the image is normalised intensity, a fraction of the incident beam, so its mean cannot exceed 1
    (allowed: 1.5, for the bright-field case of mean ≈ 1 and calibration error); a larger mean means detector
    counts, whose CRLB would come out ~sqrt(dose·p²) times too small; so does an all-integer image at low dose
    (:func:`_looks_like_counts`). Without a dose, the Poisson criterion takes
    the values as counts: a mean below 1 with fractional values is almost surely normalised intensity (warning).
    """
    mean = float(np.mean(img3))
    advice = ("Omit dose for a counts image (noise='poisson' then takes the values as counts), or divide the image "
              "by dose·pixel_size²")
    if dose is not None and mean > 1.5:
        raise ValueError(
            f"with dose the image must be normalised intensity (a fraction of the incident beam: expected counts = "
            f"intensity·dose·pixel_size²), but its mean is {mean:.4g} > 1, more than the whole beam: it looks like "
            f"detector counts. {advice}"
        )
    if dose is not None and _looks_like_counts(img3, dose * pixel_size**2):
        raise ValueError(
            f"with dose the image must be normalised intensity (counts / (dose·pixel_size²) = counts / "
            f"{dose * pixel_size**2:.4g}), but every pixel is a whole number while these quotients are not: it "
            f"looks like detector counts at low dose. {advice}"
        )
    if dose is None and noise == "poisson" and mean < 1.0 and not _whole_numbers(img3):
        warnings.warn(
            f"noise='poisson' without dose takes the pixel values as electron counts, but they are fractional with "
            f"a mean of {mean:.3g}: a normalised image? Then pass dose [e⁻/Å²], or the fit weights and CRLBs are "
            "meaningless", UserWarning, stacklevel=3)


def _least_squares_at_low_counts(img3, scale, noise, dose, below: float = 10.0) -> bool:
    """Whether a least-squares fit runs on counts so low (image mean < ``below`` counts/pixel, a dose given) that
    Poisson ML is due."""
    return noise == "gaussian" and dose is not None and float(np.mean(img3)) * scale < below


@contextlib.contextmanager
def _cpu_threads(n: int | None):
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _n_workers(workers, num_threads, dev) -> int:
    """Worker threads allowed for concurrent frame batches or frames (see ``fit_columns``; ``workers``
    validated); the caller caps them by the number of tasks."""
    if dev.type != "cpu":
        return 1
    if workers is None:  # at most _MIN_CPU_BATCHES: each worker holds a batch (~0.1 GB) or a frame's CRLB (~0.3 GB)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = 1 if num_threads is None else min(_MIN_CPU_BATCHES, max(1, cores // max(1, int(num_threads))))
    return max(1, workers)


class _Serial:
    """Stand-in for a thread pool of one: ``map`` runs in the calling thread."""

    def map(self, fn, items):
        return map(fn, items)


@contextlib.contextmanager
def _pool(n: int):
    """A thread pool of ``n`` workers (ordered ``map``), or the calling thread alone for n = 1.

    ``Executor.map`` cancels the batches not yet started when a result raises or the wait is interrupted (Ctrl-C):
    only those running finish.
    """
    if n <= 1:
        yield _Serial()
        return
    with ThreadPoolExecutor(n) as ex:
        yield ex


def _progress(results, show: bool, total: int):
    if not show:
        return results
    from tqdm.auto import tqdm

    return tqdm(results, total=total, desc="fitting frames", unit="batch")


def _check_types(types, n: int) -> np.ndarray:
    if types is None:
        return np.zeros(n, dtype=np.int64)
    t = np.asarray(types)
    if t.shape != (n,) or not np.issubdtype(t.dtype, np.integer) or t.min() < 0:
        raise ValueError(f"types must be non-negative integers of shape ({n},), got shape {t.shape}, dtype {t.dtype}")
    return t.astype(np.int64)


def _estimate_width(data: np.ndarray, c0: np.ndarray, types: np.ndarray, spacing: np.ndarray | None = None
                    ) -> np.ndarray:
    """Initial width per frame and column type [px], shape (B, T), from the volume-to-peak ratio of
    background-subtracted columns.

    For a Gaussian, volume / peak = 2πρ². The volume is summed over a disc of radius d_nn/2 around each column
    (d_nn the median nearest-neighbour distance of all columns, ``spacing`` (B,) [px] from :func:`_start_spacing`
    when given; 16 px, a disc of radius 8 px, for a single column) on a lightly smoothed
    image (σ = 1 px, whose broadening is removed); the median over columns is robust to neighbours and noise.

    One start per column type where the types clearly differ: a single start for types of different widths (a
    checkerboard of columns 3× apart) left both far off, 8–15 iterations instead of 5. Otherwise all columns get
    the start of all columns together (the estimate for one type): a faint type's disc holds mostly its bright
    neighbours' tails, not its own volume (O columns at 3 % of Sr: a start 1.8× too wide, frames lost), so a type
    whose median peak is below _EMPTY_SHARE of the brightest type's, or without a usable column, gets the joint
    start; and when the bright types' own estimates are within _DISTINCT_WIDTHS of each other, so do they (those
    estimates are biased by the disc's cut and the neighbours' tails by more than such differences: Sr and Ti
    columns 0.45 and 0.40 Å wide estimated 0.41 and 0.39 Å, and the O columns between them then lost a frame in 6,
    where the joint start of 0.46 Å for all lost none). Clipped to [0.5 px, 0.4·d_nn].
    """
    from scipy.ndimage import gaussian_filter

    B, H, W = data.shape
    if spacing is None:
        spacing = _start_spacing(_nearest_start(c0, shared=False))
    n_types = int(types.max()) + 1
    out = np.empty((B, n_types))
    # Medians over all columns, so that the start does not depend on the order of the positions (a subsample of
    # every k-th column followed it: positions listed cell by cell, O, Sr, O, Ti, ..., gave a joint start from the
    # faint O columns alone, 1.8x too wide, frames lost); a few ms for 10⁴ columns. A subsampled 2nd percentile
    # gives the background.
    for b in range(B):
        c = c0[b]
        dnn = float(spacing[b])
        sm = gaussian_filter(data[b], 1.0)
        few = sm.ravel()[:: max(1, sm.size // 20000)]
        k = int(0.02 * (len(few) - 1))
        sm -= np.partition(few, k)[k]
        R = max(1.5, dnn / 2)
        ri = int(math.ceil(R))
        i = np.round(c[:, 1]).astype(int)
        j = np.round(c[:, 0]).astype(int)
        inside = (i >= ri) & (j >= ri) & (i < H - ri) & (j < W - ri)
        i, j, lab = i[inside], j[inside], types[inside]
        # the disc x² + y² ≤ R² as one row segment |x| ≤ half(y) per row, summed from running sums along the rows
        # (2 look-ups per row instead of one per pixel: ~5x faster for 2,000 columns)
        dy = np.arange(-ri, ri + 1)
        half = np.floor(np.sqrt(np.maximum(R * R - dy * dy, 0.0))).astype(int)
        run = np.pad(np.cumsum(sm, axis=1), ((0, 0), (1, 0)))  # run[:, k] = Σ sm[:, :k]
        rows = i[:, None] + dy
        seg = run[rows, j[:, None] + half + 1] - run[rows, j[:, None] - half]
        vol = (seg * (R * R >= dy * dy)).sum(1)
        peak = sm[i, j]
        typical = np.array([np.median(peak[lab == t]) if np.any(lab == t) else -np.inf for t in range(n_types)])
        good = (peak > 0) & (vol > 0)
        r, lab = np.sqrt(vol[good] / (2 * np.pi * peak[good])), lab[good]
        r = np.sqrt(np.maximum(r * r - 1.0, 0.25))  # remove the σ = 1 px smoothing
        together = float(np.median(r)) if len(r) else dnn / 5
        bright = [t for t in range(n_types) if np.any(lab == t) and typical[t] >= _EMPTY_SHARE * typical.max()]
        est = np.full(n_types, together)
        own = np.array([np.median(r[lab == t]) for t in bright])
        if len(own) > 1 and own.max() > _DISTINCT_WIDTHS * own.min():
            est[bright] = own
        out[b] = np.minimum(np.maximum(est, 0.5), 0.4 * dnn)
    return out


class _State:
    """Parameters of a batch: per column (B, N, 4) = (c_x, c_y, η, ρ_n) and global (B, 1 + T) = (ζ, ρ_t)."""

    def __init__(self, col, glob, types, width_mode):
        self.col, self.glob, self.types, self.width_mode = col, glob, types, width_mode

    def rho(self):
        if self.width_mode == "individual":
            return self.col[..., M.RHO]
        if self.glob.shape[1] == 2:  # one column type: a view of its width (no gather; read-only)
            return self.glob[:, 1:].expand(-1, self.col.shape[1])
        return self.glob[:, 1:][:, self.types]

    def copy(self):
        return _State(self.col.clone(), self.glob.clone(), self.types, self.width_mode)


def _poisson_constant(d: torch.Tensor) -> torch.Tensor:
    """Σ (d ln d − d) per frame of counts ``d`` (B, …): the constant part of the Poisson half-deviance.

    d ln d with 0 ln 0 = 0: for counts d ≥ 0 the log clamped at the dtype's smallest normal number equals xlogy (~5x
    slower; a fixed 1e-300 rounds to 0 in float32: 0·ln 0 = NaN). Computed once per fit from the unpadded data.
    """
    d = d.reshape(d.shape[0], -1)
    return (d * torch.log(torch.clamp(d, min=torch.finfo(d.dtype).tiny)) - d).sum(1)


class _Problem:
    """Data, weights and the matrix-free operators of one batch of frames."""

    def __init__(self, data, geom, mask, types, width_mode, noise, col_free, glob_free, const):
        self.data, self.geom, self.mask, self.types = data, geom, mask, types
        self.width_mode, self.noise = width_mode, noise
        self.col_free, self.glob_free = col_free, glob_free
        self.n_types = int(types.max()) + 1
        self.data_real = None
        self.const = const  # Poisson: Σ (d ln d − d) per frame (:func:`_poisson_constant`); None for least squares
        self._lo_arrays = {}  # dtype -> (mask, data) converted once, shared with with_free copies (same data)

    def with_free(self, geom, col_free, glob_free):
        """This problem with other windows and free-parameter flags (same data: the Poisson constant and the
        low-precision data are kept)."""
        out = copy.copy(self)
        out.__dict__.pop("_lowp", None)  # the cached low-precision view holds the old flags
        out.geom, out.col_free, out.glob_free = geom, col_free, glob_free
        return out

    def lowp(self, lo):
        """A view of this problem with mask and free-parameter flags in dtype ``lo`` (cached per dtype)."""
        if lo == self.mask.dtype:
            return self
        cache = self.__dict__.setdefault("_lowp", {})
        pl = cache.get(lo)
        if pl is None:
            pl = copy.copy(self)
            pl.__dict__.pop("_lowp", None)
            arrays = self._lo_arrays.get(lo)
            if arrays is None:
                arrays = self._lo_arrays[lo] = (self.mask.to(lo), self.data.to(lo))
            pl.mask, pl.data = arrays
            pl.col_free, pl.glob_free = self.col_free.to(lo), self.glob_free.to(lo)
            cache[lo] = pl
        pl.geom = self.geom  # windows are re-centred during the fit
        return pl

    def model(self, st: _State):
        prof = M.profiles(self.geom, st.col[..., M.CX], st.col[..., M.CY], st.rho())
        return prof, M.render(self.geom, prof, st.col[..., M.ETA], st.glob[:, 0], self.mask)

    def real(self, t):
        """Strided (B, H, W) view of the real pixels of a flattened padded map."""
        g = self.geom
        Hp, Wp = g.padded_shape
        return t.view(-1, Hp, Wp)[:, g.pad : g.pad + g.shape[0], g.pad : g.pad + g.shape[1]]

    def objective(self, f):
        # on the real pixels only: ~35 % fewer elements than the padded stack and no mask product
        if self.data_real is None:
            self.data_real = self.real(self.data).contiguous()
        d, fr = self.data_real, self.real(f)
        if self.noise == "gaussian":
            r = d - fr
            return 0.5 * (r * r).sum((1, 2))
        # A pixel with f ≤ 0 makes the criterion +inf: there log f is −inf or NaN, so f − d·ln f is +inf or NaN
        # (also for d = 0: 0·(−inf) = NaN) and so is the sum — one pass instead of a clamp and a separate f ≤ 0 test
        out = (fr - d * torch.log(fr)).sum((1, 2)) + self.const
        return torch.where(torch.isnan(out), math.inf, out)

    # --- J, Jᵀ restricted to the free parameters -------------------------------------------------------
    def expand(self, vcol, vglob):
        """Per-column steps (B, N, 4) with the shared widths' steps written into the ρ slots (common widths)."""
        if self.width_mode == "common":  # slot ρ is not free: it carries the step of the column type's width
            return torch.cat((vcol[..., :M.RHO], vglob[:, 1:][:, self.types, None]), -1)
        return vcol

    def reduce(self, gcol, gz):
        """Free components of a per-column map (B, N, 4) and a background component gz (B, 1): the transpose of
        :meth:`expand` (ρ slots summed into the shared widths)."""
        B = gcol.shape[0]
        if self.width_mode != "common":
            gr = gz.new_zeros(B, self.n_types)
        elif self.n_types == 1:
            gr = gcol[..., M.RHO].sum(1, keepdim=True)
        else:
            gr = gz.new_zeros(B, self.n_types).index_add_(1, self.types, gcol[..., M.RHO])
        return gcol * self.col_free, torch.cat((gz, gr), 1) * self.glob_free

    def J(self, st, prof, vcol, vglob):
        return M.jvp(self.geom, prof, st.col[..., M.ETA], st.rho(), self.expand(vcol, vglob), vglob[:, 0],
                     self.mask)

    def JT(self, st, prof, u):
        B = self.geom.i0.shape[0]
        gcol, _ = M.vjp(self.geom, prof, st.col[..., M.ETA], st.rho(), u, None)
        return self.reduce(gcol, u.view(B, -1).sum(1, keepdim=True))  # u is already masked (zero on padding)


# Narrowest width [px] of a converged column. Below ~half a pixel a Gaussian sampled at pixel centres no longer has
# a determined volume: at ρ = 0.5 px the sampled sum is within ±3 % of 2πρ² wherever the centre sits, at 0.2 px it
# is 4x too large on a pixel centre and 30x too small between pixels. A column the fit shrank onto one noisy pixel
# (individual widths, low dose: 0.2 px in a review) is not an estimate; real columns are ≥ 1 px wide (ρ ≈ 0.3-0.7 Å
# at pixel sizes ≤ 0.3 Å).
_MIN_WIDTH_PX = 0.5


# inference mode: no autograd bookkeeping (version counters, views' grad metadata), ~1-2 µs less per torch call.
# A fit issues ~3,000 small operations, so this is ~10 % of a 400-column fit (paired A/B in benchmarks/RESULTS.md).
# It is thread-local, hence on the function each worker thread runs.
@torch.inference_mode()
def _fit_batch(data, c0, rho0, types, *, noise, width_mode, fixed_bg, max_iter, truncation):
    """Fit one batch of frames: ``data`` (B, H, W) in data units, start positions ``c0`` (B, N, 2) [px], start
    widths ``rho0`` (B, T) per frame and column type [px], ``types`` (N,) in 0..T-1."""
    B, H, W = data.shape
    N = c0.shape[1]
    dt, dev = data.dtype, data.device
    # A window of half-size max(H, W) round a column in the image already covers all of it: larger windows (widths
    # grown past a quarter of the image) would only add padding — 160 px windows on an 85 px image, 200-600 s for 70
    # columns (a start width 2.5x too wide on overlapping columns at 10³ e⁻/Å², fuzzing helper-46)
    pad_cap = max(H, W) + 2
    h = min(_half_size(rho0.max(), truncation), pad_cap)
    pad = min(_half_size(3 * rho0.max(), truncation) + 2, pad_cap)  # margin for width growth (up to 3x), edge columns
    dpad, mask = M.pad_stack(data, pad)
    n_types = int(types.max()) + 1
    col_free = torch.tensor([1.0, 1.0, 1.0, 1.0 if width_mode == "individual" else 0.0], dtype=dt, device=dev)
    glob_free = torch.tensor(
        [1.0 if fixed_bg is None else 0.0] + [1.0 if width_mode == "common" else 0.0] * n_types, dtype=dt, device=dev
    )
    geom = M.make_geometry(c0[..., 0], c0[..., 1], h, (H, W), pad)
    # the Poisson constant from the real pixels, once (the padding adds nothing; a re-padded problem keeps it)
    const = _poisson_constant(data) if noise == "poisson" else None
    prob = _Problem(dpad.reshape(-1), geom, mask, types, width_mode, noise, col_free, glob_free, const)

    # Start: background from a low percentile, heights from the image at the start pixel, then a linear
    # least-squares solve of (η, ζ) with positions and widths fixed (variable projection start).
    flat = data.reshape(B, -1)
    if fixed_bg is None:  # 2nd percentile of a strided subsample: a start value only
        sub = flat[:, :: max(1, flat.shape[1] // 20000)]
        zeta0 = sub.kthvalue(max(1, int(0.02 * sub.shape[1])), dim=1).values
    else:
        zeta0 = torch.full((B,), fixed_bg, dtype=dt, device=dev)
    ii = torch.clamp(torch.round(c0[..., 1]).long(), 0, H - 1)
    jj = torch.clamp(torch.round(c0[..., 0]).long(), 0, W - 1)
    eta0 = data[torch.arange(B, device=dev)[:, None], ii, jj] - zeta0[:, None]
    eta0 = torch.clamp(eta0, min=1e-3 * torch.clamp(eta0.max(), min=1e-12))
    rho0c = rho0[:, types]  # per column (B, N)
    col = torch.stack((c0[..., 0], c0[..., 1], eta0, rho0c), dim=-1).contiguous()
    glob = torch.cat((zeta0[:, None], rho0), dim=1).contiguous()
    st = _State(col, glob, types, "individual" if width_mode == "individual" else "common")
    # positions and widths stay: the start's profiles serve the first render too
    prof = M.profiles(geom, st.col[..., M.CX], st.col[..., M.CY], st.rho())
    step_eta, step_zeta = _linear_start(prob, st, prof, fit_background=fixed_bg is None)
    st.col[..., M.ETA] += step_eta
    st.glob[:, 0] += step_zeta
    if noise == "poisson":  # the likelihood needs f > 0 everywhere
        # columns with a tiny or negative start height (false detections, vacancies not yet removed) start at a
        # small positive height: at exactly 0 every other derivative of a column vanishes and its block is singular
        floor = 1e-3 * st.col[..., M.ETA].amax(dim=1, keepdim=True).clamp(min=1e-12)
        st.col[..., M.ETA] = torch.maximum(st.col[..., M.ETA], floor)
        st.glob[:, 0].clamp_(min=1e-6 * float(data.mean()) + 1e-12)
    empty = torch.zeros(B, N, dtype=torch.bool, device=dev)  # empty sites: removed (height 0, nothing free)

    # Levenberg–Marquardt, one damping factor per frame.
    f = M.render(geom, prof, st.col[..., M.ETA], st.glob[:, 0], prob.mask)
    obj = prob.objective(f)
    npix = float(H * W)
    lam = torch.full((B,), 1e-4, dtype=dt, device=dev)
    done = torch.zeros(B, dtype=torch.bool, device=dev)
    n_iter = torch.zeros(B, dtype=torch.long, device=dev)
    blocks = None
    failed = torch.zeros(B, dtype=torch.bool, device=dev)  # frames stopped: widths ran away, or infeasible
    infeasible_frames = torch.zeros(B, dtype=torch.bool, device=dev)
    n_cg = 0
    cg_cap = _CG_ITER
    # per frame: take Newton steps now / only once the step's share (stopping units) is at most this (after a
    # failed Newton step: 1/100 of the share at the failure)
    newton = torch.zeros(B, dtype=torch.bool, device=dev)
    newton_below = torch.full((B,), math.inf if _NEWTON else -1.0, dtype=dt, device=dev)
    type_onehot = torch.nn.functional.one_hot(types, n_types).to(dt)  # (N, T)
    h0 = h  # the windows' start half-size: they shrink back to it (at most) when a runaway width is fixed
    runaways = torch.zeros(B, N, dtype=torch.bool, device=dev)  # runaway widths, fixed at their start (_runaways)
    fixed_w = torch.zeros(B, N, dtype=torch.bool, device=dev)  # widths fixed at their start: runaways, twice restored
    wide_run = torch.zeros(B, N, dtype=torch.long, device=dev)  # iterations in a row past _RUNAWAY_WIDTH x start
    released = torch.zeros(B, N, dtype=torch.long, device=dev)  # times each empty site was restored
    seen = torch.zeros(B, N, dtype=torch.bool, device=dev)  # columns that were significant at some solve
    over_cap = torch.zeros(B, dtype=torch.long, device=dev)  # iterations in a row with a width past the cap
    # share (in stopping units) of the last step, where it was an accepted Newton step whose quadratic model held
    quad_share = torch.full((B,), math.inf, dtype=dt, device=dev)
    last_share = torch.full((B,), math.inf, dtype=dt, device=dev)  # share of the last accepted step (stopping units)
    for it in range(max_iter):
        reset = ~torch.isfinite(obj) & ~done  # (a frame stopped as infeasible keeps its ∞)
        if bool(reset.any()):
            st, prof, f, obj, infeasible = _restore_feasibility(prob, st, obj, empty, done)
            failed |= infeasible
            infeasible_frames |= infeasible
            done |= infeasible
            blocks, newton = None, newton & ~reset
            last_share = torch.where(reset, math.inf, last_share)
            quad_share = torch.where(reset, math.inf, quad_share)
            if bool(done.all()):
                break
        # The preconditioner blocks settle after the first step (re-centred windows only change their truncated
        # tails): reuse them, and refresh when the last solve needed more CG iterations than usual or every 5th
        # iteration. Stale blocks change the path, not the fixed point.
        refresh = blocks is None or it % 5 == 0 or n_cg > 3
        step_c, step_g, pred, blocks, share, n_cg, took_newton, g_eta, cg_met = _solve_step(
            prob, st, prof, f, lam, cg_iter=cg_cap, cg_tol=1e-2, blocks=None if refresh else blocks, newton=newton)
        # A solve cut at the CG cap gives an inexact step, whose share understates what is left to the optimum
        # (where the block preconditioner is weak: strongly overlapping columns): such a frame does not stop on
        # it, and the next solve may take more CG iterations.
        cg_cap = _CG_ITER if bool((cg_met | done).all()) else min(2 * cg_cap, _CG_ITER_MAX)
        # Empty sites (vacancies, spurious starts): see _empty_sites. They are removed (height 0, nothing free) or
        # restored (at the start shape with the height of the score test, everything free). The step just solved
        # is then taken without the removed columns' part, from the re-rendered state (the acceptance test below
        # compares with the criterion of that state); such a frame does not stop in this iteration.
        new_empty, release, eta_score, significant = _empty_sites(st, c0, rho0c, blocks["cb"], g_eta, obj / npix, noise,
                                                                  types, n_types, empty, released, done, seen)
        seen |= significant
        event = (new_empty | release).any(1)
        if bool(event.any()):
            empty = (empty | new_empty) & ~release
            if width_mode == "individual":
                # a column restored a second time had faded again with its width free: a real column whose width
                # the data do not determine (at ~1 count per pixel, least squares: one shrank onto a 0.11 Å spike,
                # its SCS 1/3 of the truth, 7.6 bounds off, reported converged; the single-atom rim columns of the
                # Pt particle at 5·10² e⁻/Å² widened and roamed, removed and restored until every frame ran to
                # max_iter). It is restored with its width fixed at its start, and reported converged only if it
                # stays within that width of its start (a spurious start on a faint hump, width fixed, slid 0.7-1.8 Å
                # towards the hump).
                fixed_w |= release & (released > 0)
            released += release.long()
            st.col = _reset_empty(st.col, new_empty, c0, rho0c)
            st.col[..., M.ETA] = torch.where(release, eta_score, st.col[..., M.ETA])
            step_c = step_c * (~new_empty)[..., None]
            prob = prob.with_free(M.make_geometry(st.col[..., M.CX], st.col[..., M.CY], prob.geom.h, (H, W), pad),
                                  *_free_flags(col_free, glob_free, empty, fixed_w, runaways, type_onehot))
            prof, f = prob.model(st)
            obj = prob.objective(f)
            blocks = None
            newton = newton & ~event
        # A frame whose nearly undamped step moves every column by < 1e-2 of its statistical uncertainty (the
        # stopping test below, applied before the step) takes it unchecked and stops: evaluating so small a step
        # would only cost a render. Its criterion is then the predicted one (exact to third order in the step).
        unit = 1.0 if noise == "poisson" else 2 * obj / npix
        s_k = share / unit  # the step's largest share in stopping units (tested here and after the step)
        settled = ~done & ~event & cg_met & _small_step(s_k, last_share) & (lam <= 1e-3)
        # Likewise the last step of a quadratically converging frame: a Newton step right after one whose quadratic
        # model held (``quad_share`` finite, see the stop below) and that already meets that stop's prediction
        # before it is taken (next share ≤ 1/10 of the stopping threshold) is the frame's last. Its model error is
        # third order in a step ≥ 10x shorter than the one whose model just held: it is taken unchecked, one render
        # and criterion fewer per fit (the check after the step used to confirm what this predicts).
        settled |= ~done & ~event & took_newton & cg_met & (lam <= 1e-3) & _quadratic_stop(s_k, quad_share)
        if bool(settled.any()):
            st.col = st.col + step_c * settled[:, None, None]
            st.glob = st.glob + step_g * settled[:, None]
            obj = torch.where(settled, obj - pred, obj)
            n_iter += settled.long()
            done = done | settled
            if bool(done.all()):
                break
        step_c = step_c * (~done)[:, None, None]
        step_g = step_g * (~done)[:, None]
        trial = _State(st.col + step_c, st.glob + step_g, types, st.width_mode)
        # A large step (every frame's largest share ≥ _RECENTRE_SHARE units, ≳ 1.4 statistical uncertainties) that
        # carries a column > 1 px from its window's centre re-centres the windows on the trial: the trial render is
        # then the render on the new windows, instead of a second render of the accepted state below (one render
        # and criterion fewer per fit whenever the start is > ~0.5 px off). The criteria compared across the two
        # windows differ by the re-cut 4-width tails, small against such a step's decrease (same fits as
        # re-centring after the step: within 0.0045 CRLB in 15 of 16 review runs, the 16th better).
        geom_before = None
        if not bool(done.any()) and bool((s_k >= _RECENTRE_SHARE).all()):
            if bool((_off_centre(prob.geom, trial.col) > 1.0).any()):
                geom_before = prob.geom
                prob.geom = M.make_geometry(trial.col[..., M.CX], trial.col[..., M.CY], prob.geom.h, (H, W), pad)
        tprof, tf = prob.model(trial)
        tobj = _guard(prob.objective(tf), trial)
        # Fisher scoring / Gauss–Newton can overshoot where the curvature model is poor (very low counts):
        # then take the minimum of the quadratic through φ(0), φ'(0) = -2·pred and φ(1) along the same step.
        gain = (obj - tobj) / torch.clamp(pred, min=1e-300)
        poor = (gain < 0.25) & ~done & torch.isfinite(tobj)
        if bool(poor.any()):
            curv = tobj - obj + 2 * pred
            alpha = torch.where(curv > 0, torch.clamp(pred / torch.where(curv > 0, curv, 1), 0.05, 1.0), 1.0)
            alpha = torch.where(poor, alpha, 1.0)
            trial2 = _State(st.col + alpha[:, None, None] * step_c, st.glob + alpha[:, None] * step_g, types,
                            st.width_mode)
            tprof2, tf2 = prob.model(trial2)
            tobj2 = _guard(prob.objective(tf2), trial2)
            better = poor & (tobj2 < tobj)
            trial = _State(torch.where(better[:, None, None], trial2.col, trial.col),
                           torch.where(better[:, None], trial2.glob, trial.glob), types, st.width_mode)
            tobj = torch.where(better, tobj2, tobj)
            pred = torch.where(better, pred * alpha * (2 - alpha), pred)
            gain = (obj - tobj) / torch.clamp(pred, min=1e-300)
            if bool(better.any()):
                tprof, tf = prob.model(trial)
        ok = (tobj <= obj) & torch.isfinite(tobj) & ~done  # (an infeasible trial is never "no worse")
        # A slide: an accepted step that decreased the criterion by more than 1.5x the quadratic model's prediction
        # (the criterion is nearly linear along it: Gauss–Newton's curvature overstates the true one) while its
        # share grew from the last accepted step's is far from the optimum along a flat direction, where the steps
        # creep (a rim column of the Pt particle at 10³ e⁻/Å², individual widths, widened into the halo for 50
        # iterations, each step ~5 % longer than the last with twice the predicted decrease, until the frame hit
        # max_iter). The same step is tried once more from the trial, and kept if the criterion falls further.
        # Well-determined fits converge without sliding (their shares shrink; the benchmark lattice is
        # bit-identical); low-count fits may slide a few times on their way (7 of 137 fit tests).
        slide = ok & ~event & (gain > 1.5) & (s_k > 1.05 * last_share)
        if bool(slide.any()):
            trial3 = _State(trial.col + step_c * slide[:, None, None], trial.glob + step_g * slide[:, None], types,
                            st.width_mode)
            tprof3, tf3 = prob.model(trial3)
            tobj3 = _guard(prob.objective(tf3), trial3)
            # (only where every window still holds its Gaussian: a doubled step doubles both the offset from the
            # window's centre and the width growth, and a truncated render could be accepted wrongly)
            held_in = (trial3.rho() * truncation + _off_centre(prob.geom, trial3.col) <= prob.geom.h + 1.0).all(1)
            further = slide & (tobj3 < tobj) & held_in
            if bool(further.any()):
                trial = _State(torch.where(further[:, None, None], trial3.col, trial.col),
                               torch.where(further[:, None], trial3.glob, trial.glob), types, st.width_mode)
                tobj = torch.where(further, tobj3, tobj)
                fp = further[:, None, None, None]
                tprof = M.Profiles(torch.where(fp, tprof3.vx, tprof.vx), torch.where(fp, tprof3.vy, tprof.vy))
                tf = torch.where(further[:, None], tf3.view(B, -1), tf.view(B, -1)).reshape(-1)
        st.col = torch.where(ok[:, None, None], trial.col, st.col)
        st.glob = torch.where(ok[:, None], trial.glob, st.glob)
        # Stop when the step moves every column's parameters by < 1e-2 of their statistical uncertainty, allowing
        # for slow contraction (_small_step): a column's share of the predicted decrease, ½δₙᵀgₙ ≈ ½‖δₙ‖²_F, is in
        # log-likelihood units for Poisson and in units of σ² (estimated from the residuals) for least squares. Per
        # column, so the test does not tighten with the number of columns. The relative-change test ends
        # noise-free fits.
        small = ((cg_met & _small_step(s_k, last_share)) | ((obj - tobj).abs() <= 1e-13 * (1 + obj.abs()))) & ~event
        # Newton steps converge quadratically: with step sizes t ∝ √share and t_k+1 ≈ C·t_k², C ≈ t_k / t_k-1², the
        # next step's share is ≈ s_k³ / s_k-1². After two accepted Newton steps in a row whose quadratic model held
        # (gain within 20 % of 1), whose CG solves converged (a step cut at the CG cap is inexact and converges
        # linearly: a frame of a strongly overlapping lattice stopped 0.43 CRLB from its optimum) and which
        # contracted by > 10x in step size (100x in share), a frame whose predicted next share is 10x below the
        # stopping threshold stops now instead of solving for that step (one solve of ~5 per fit).
        held = ok & took_newton & cg_met & (gain > 0.8) & (gain < 1.25) & ~event
        small |= held & _quadratic_stop(s_k, quad_share)
        quad_share = torch.where(held, s_k, math.inf)
        last_share = torch.where(event, math.inf, torch.where(ok, s_k, last_share))
        n_iter += (~done).long()
        # Switch to Newton steps once the last step moved every column by < ~14 of its statistical uncertainties
        # (share ≤ 100 units), where the Hessian is positive definite in practice. A frame whose Newton Hessian was
        # not positive definite (it took the Gauss–Newton step), or whose Newton step was rejected or poor, goes
        # back to Gauss–Newton until its steps are 10x shorter (share 100x smaller): far from the optimum the
        # Hessian may be indefinite, near it Newton converges quadratically where Gauss–Newton crawls.
        newton_failed = ~done & ((newton & ~took_newton) | (took_newton & ~(ok & (gain > 0.25))))
        newton_below = torch.where(newton_failed, 0.01 * s_k, newton_below)
        newton = ~done & (share <= 100 * unit) & (s_k <= newton_below)
        new_lam = torch.where(ok & (gain > 0.5), torch.clamp(lam / 10, min=1e-9),
                              torch.where(ok & (gain > 0.25), lam, lam * 10))
        lam = torch.where(done, lam, new_lam)
        done = done | (ok & small) | (lam > 1e12)
        obj = torch.where(ok, tobj, obj)
        # the model of the accepted state: the trial's where the step was taken (no new render)
        if geom_before is not None and not bool(ok.all()):  # a frame kept its state: back to its windows
            prob.geom = geom_before
            if bool(ok.any()):
                prof, f = prob.model(st)
                obj = prob.objective(f)
        elif bool(ok.all()):
            prof, f = tprof, tf
        elif bool(ok.any()):
            okp = ok[:, None, None, None]
            prof = M.Profiles(torch.where(okp, tprof.vx, prof.vx), torch.where(okp, tprof.vy, prof.vy))
            f = torch.where(ok[:, None], tf.view(B, -1), f.view(B, -1)).reshape(-1)
        if bool(done.all()):
            break
        # keep every Gaussian inside its window: re-centre/enlarge windows when columns move or widths grow (empty
        # sites have no Gaussian: with shared widths theirs is that of a type which may have no column left)
        rho = torch.where(empty, 0.0, st.rho())
        moved = _off_centre(prob.geom, st.col)
        # Widths that outgrow the padded margin (sized for 3x the widest start): the stack is re-padded for them
        # (twice the widest, never past _MAX_WIDTH_GROWTH x the widest start) and the fit goes on. A frame whose
        # widths grow systematically (>= 10 % of the columns, or half of one column type: the start width was far
        # too small, e.g. strongly overlapping columns defeat its estimate) and stay past _MAX_WIDTH_GROWTH x their
        # type's start for _RUNAWAY_PATIENCE iterations stops: reported not converged, the other frames go on.
        # (Windows are shared by all columns: a runaway widens every window up to the cap, ~64x the area.) A few
        # individual widths running away are fixed instead (_runaways) and the frame goes on.
        h_min = prob.geom.h
        froze = False
        if width_mode == "individual":
            freeze, wide_run = _runaways(rho, rho0c, _drift(st.col, c0), wide_run, type_onehot, done, runaways)
            froze = bool(freeze.any())
        if froze:
            # back to the start position and width, both fixed (its height is fitted); its frame starts its
            # stopping tests afresh
            runaways |= freeze
            fixed_w |= freeze
            st.col = torch.where(freeze[..., None], torch.cat((c0, st.col[..., M.ETA:M.RHO], rho0c[..., None]), -1),
                                 st.col)
            prob = prob.with_free(prob.geom, *_free_flags(col_free, glob_free, empty, fixed_w, runaways, type_onehot))
            reset = freeze.any(1)
            last_share = torch.where(reset, math.inf, last_share)
            quad_share = torch.where(reset, math.inf, quad_share)
            newton = newton & ~reset
            blocks, h_min = None, h0
            rho = torch.where(empty, 0.0, st.rho())
        grown = (rho * truncation > pad).any(1) & (pad < pad_cap)
        over_cap = torch.where((rho / rho0c).amax(1) > _MAX_WIDTH_GROWTH, over_cap + 1, torch.zeros_like(over_cap))
        runaway = ~done & (over_cap >= _RUNAWAY_PATIENCE)
        repad = False
        if bool(runaway.any()):
            failed |= runaway
            done |= runaway
            if bool(done.all()):
                break
        if bool((grown & ~done).any()):
            cap = _MAX_WIDTH_GROWTH * float(rho0.max())
            pad = min(_half_size(min(2 * float(rho[~done].max()), cap), truncation) + 2, pad_cap)
            dpad, mask = M.pad_stack(data, pad)
            prob = _Problem(dpad.reshape(-1), prob.geom, mask, types, width_mode, noise, prob.col_free,
                            prob.glob_free, const)
            blocks, repad = None, True
        live = ~failed
        need_h = min(_half_size(rho[live].max(), truncation), pad) if bool(live.any()) else prob.geom.h
        h_new = max(need_h, h_min)
        if repad or bool((moved > 1.0).any()) or h_new != prob.geom.h or froze:
            prob.geom = M.make_geometry(st.col[..., M.CX], st.col[..., M.CY], h_new, (H, W), pad)
            prof, f = prob.model(st)
            obj = prob.objective(f)
    rho = st.rho()
    moved = torch.maximum((st.col[..., M.CX] - c0[..., 0]).abs(), (st.col[..., M.CY] - c0[..., 1]).abs())
    conv = (
        done[:, None]
        & ~failed[:, None]
        & (lam[:, None] <= 1e12)
        & (st.col[..., M.ETA] > 0)
        & _held(prob.geom, rho, truncation)
        & (rho >= _MIN_WIDTH_PX)
        & (moved < 4 * rho0c)
        & ~empty
        & ~runaways
        & ~(fixed_w & (_drift(st.col, c0) > rho0c))
    )
    # noise variance of the least-squares bounds: the criterion is ½Σ(d − f)² over the real pixels (no second pass
    # over the image); Poisson bounds need none
    dof = max(1, H * W - int(4 * N + 2))
    sigma2 = 2 * obj / dof if noise == "gaussian" else torch.full_like(obj, math.nan)
    return {
        "col": torch.cat((st.col[..., :3], torch.where(empty, rho0c, rho)[..., None]), dim=-1),
        "zeta": st.glob[:, 0],
        "conv": conv,
        "n_iter": n_iter,
        "obj": obj,
        "sigma2": sigma2,
        "h": torch.full((B,), prob.geom.h, device=dev),
        "too_wide": failed & ~infeasible_frames,
        "infeasible": infeasible_frames,
        "empty": empty,
        "runaway": runaways,
        "width_fixed": fixed_w,
    }


def _restore_feasibility(prob, st, obj, empty, done):
    """Frames whose Poisson criterion is not finite (B,): a reset made their model negative somewhere. Negative
    heights go to a small positive floor and the frame is re-rendered; returns the state, its model and criterion,
    and the frames still infeasible (to be stopped, not converged).

    A column with a negative height may be compensated by an overlapping neighbour; when that neighbour is reset
    (a runaway width fixed at its start, an empty site removed, windows shrunk back) the model goes negative, the
    Poisson criterion is infinite, and every trial looked "no worse": a strongly overlapping lattice (1.2 Å
    spacing, individual widths, 10⁴ e⁻/Å²) accepted a NaN step and the fit crashed in the window sizing.
    """
    bad = ~torch.isfinite(obj) & ~done
    eta = st.col[..., M.ETA]
    floor = 1e-3 * eta.amax(dim=1, keepdim=True).clamp(min=1e-12)  # as for the start heights
    st.col[..., M.ETA] = torch.where(bad[:, None] & ~empty & (eta < floor), floor, eta)
    prof, f = prob.model(st)
    obj = torch.where(bad, prob.objective(f), obj)
    return st, prof, f, obj, bad & ~torch.isfinite(obj)


def _free_flags(col_free, glob_free, empty, fixed_w, runaways, type_onehot):
    """Free-parameter flags per column (B, N, 4) and per frame (B, 1 + T): empty sites have nothing free, the
    widths ``fixed_w`` (runaways, columns restored twice) are fixed, so are the positions of the ``runaways`` (left
    free, one crawled 1.4 Å towards the feature it had run away to, for ~60 iterations), and a shared width whose
    columns were all removed has no data left (fixed in that frame)."""
    B, N = empty.shape
    free = col_free.expand(B, N, 4).clone()
    free[..., M.RHO] *= (~fixed_w).to(free.dtype)
    free[..., M.CX : M.ETA] *= (~runaways).to(free.dtype)[..., None]
    free[empty] = 0.0
    gfree = glob_free.expand(B, -1).clone()
    gfree[:, 1:] *= ((~empty).to(gfree.dtype) @ type_onehot > 0).to(gfree.dtype)  # (free only with common widths)
    return free, gfree


def _runaways(rho, rho0c, drift, wide_run, type_onehot, done, earlier):
    """Individual widths that ran away, to be fixed now ((B, N) bool), and the updated count per column of
    iterations in a row as a runaway: past _RUNAWAY_WIDTH x its start width ``rho0c`` having drifted more than that
    start width from its start position (``drift``, [px]), or past _MAX_WIDTH_GROWTH x wherever it is.

    A significant column that widens far past its start and drifts — a start on a broad feature the model has no
    term for (a thickness hump, an amorphous patch, the halo of probe tails under a particle, which a constant
    background cannot take up) — keeps growing: on the 333-column Pt particle (Poisson, 10⁴ e⁻/Å²) a single-atom
    rim column slid ~10 Å into the particle and widened to 4.8 Å, 9x its start. Such a column is reset to its start
    position and width, both fixed (its height is fitted), and reported not converged; the frame goes on (it used
    to stop as a runaway, all 333 columns unconverged, after iterations whose windows, shared by all columns, had
    grown to ~150 px). A column of a wider kind stays on its site and settles: it is left alone up to
    _MAX_WIDTH_GROWTH x. Only a few columns count (one, or < 10 % of the columns and < half of every type, those
    fixed earlier (``earlier``) included, for _RUNAWAY_PATIENCE iterations in a row, which lets a first
    overshooting step settle): many columns growing together mean a start width far too small, which the frame's
    re-padding handles (past _MAX_WIDTH_GROWTH x, its stop), or a broad feature under many columns (a hump of
    0.5–1x the column height, σ 4 Å, under an 8x8 lattice: its columns ran away a few at a time, each fixing
    restarting the frame's stopping tests, and every frame ran to max_iter; past 10 % the frame now falls back to
    the stop at _MAX_WIDTH_GROWTH x)."""
    ratio = rho / rho0c
    beyond = ((ratio > _RUNAWAY_WIDTH) & (drift > rho0c)) | (ratio > _MAX_WIDTH_GROWTH)
    share = (beyond | earlier).to(rho.dtype)
    # (one column alone is never systematic, though it is 10 % of a 10-column image)
    systematic = (share.sum(1) >= 2) & ((share.mean(1) >= 0.1)
                                         | ((share @ type_onehot / type_onehot.sum(0)).amax(1) >= 0.5))
    wide_run = torch.where(beyond & ~systematic[:, None], wide_run + 1, torch.zeros_like(wide_run))
    freeze = (wide_run >= _RUNAWAY_PATIENCE) & ~done[:, None]
    return freeze, torch.where(freeze, torch.zeros_like(wide_run), wide_run)


def _empty_sites(st, c0, rho0c, cb, g_eta, half_msr, noise, types, n_types, empty, released, done, seen):
    """Columns to remove as empty sites now, empty sites to restore (each (B, N) bool), the score-test height
    of every removed column (B, N) and the columns significant now (for the caller's record ``seen``).

    Significance of a column: its height in standard errors, z = η·sqrt(F/σ²) (Wald test with the Fisher
    information of η alone, ``cb[..., η, η]``; σ² = 1 for Poisson, the mean squared residual 2·``half_msr`` for
    least squares), taken for a column of its type's width w (the median width of the type's columns significant
    as they are; Σ g² ∝ ρ²): a Gaussian shrunk onto one noisy pixel
    (individual widths) has a tall height but the volume of a spike, so the same volume at width w (z × ρ/w, and,
    in a type with fewer than half its columns significant, height η·(ρ/w)² in the faintness test below); one
    spread over the background collects a large volume at a low height, so that height at width w (z × w/ρ).
    (Before the significance of a spike was taken at width w, the spikes of an invisible type looked significant
    and set the type's typical height: SrTiO3-like, O at 3 % of Sr, individual widths, Poisson at 2·10⁴ e⁻/Å²
    (O peaks < 1 count), frames ran to max_iter with Sr and Ti unconverged.)
    Shared widths are taken as they are down to half the type's start width; below, with the same volume at half
    the start width (z × 2ρ/ρ₀), and the type's columns roam: an invisible type's width crawled to a fraction of a
    pixel while its columns fitted single noisy pixels that looked significant at that width (SrTiO3-like, O at 3 %
    of Sr, 10³ e⁻/Å²: the frame ran to max_iter and every column was reported unconverged). Significant columns
    are those with z ≥ _Z_EMPTY.

    A faint column (height below _EMPTY_SHARE of the 90th percentile of the heights of its type's significant columns,
    z ≥ _Z_EMPTY — or any height if the type has none; a guard against a least-squares σ² inflated by a misfit
    elsewhere) is removed — height 0, nothing free — when there is clearly nothing there (z < _Z_NONE) or when it
    is not significant (z < _Z_EMPTY) and roams: moved more than 2w from its start, or (individual widths) a width
    outside [w/2, 2w]; in a type without any significant column, when not significant at all. Left free, such
    shapes (a vacancy or spurious start shrinking onto one noisy pixel, widening
    into the background, sliding onto a neighbour) ruined the damping of the whole frame: every column unconverged,
    or 100 slow iterations. A weak real column that stays put (a light column ~4 standard errors tall, say) is left
    alone; so is a column that was significant at an earlier solve, has not moved more than 2w and has a
    significant column's centre within 2w (a dumbbell partner mid-way through the iterations may explain its
    intensity for the moment; a start that was never significant, e.g. a spurious one next to a column, gets no
    such cover). A removed one is reset to its start position and width.
    The test runs from the first solve on, before vacancies roam (letting them take one step first cost ~30 s
    instead of 0.5 s on a 15×15 lattice with 10 vacancy starts, as their windows grew); the price: a start width
    far off at very low dose can make a few real columns' first linear heights look insignificant (5·10² e⁻/Å²,
    start width 0.3 Å for 0.4 Å columns: 6 of 1,200 removed). An empty site is restored, at most _MAX_RELEASES
    times, when the score test at its start shape finds a column after all (the height one Newton step from 0 would
    give, ``g_eta / F``, is ≥ _Z_RELEASE standard errors: a real column that a poor start — e.g. a background level
    far off, or a least-squares σ² still mostly misfit — made look empty); after that it can only be removed again,
    so the fit terminates. ``released`` counts the restores per column; with individual widths the caller fixes
    the width of a column restored a second time at its start.
    """
    var = 1.0 if noise == "poisson" else 2 * half_msr[:, None]
    eta, rho = st.col[..., M.ETA], st.rho()
    live = ~done[:, None]
    fisher = torch.clamp(cb[..., M.ETA, M.ETA], min=1e-300)
    z_own = eta * torch.sqrt(fisher / var)
    per_type = [types == t for t in range(n_types)]

    def over_type(x, among, fn, fallback):  # a statistic over each type's columns `among`, per column
        x = torch.where(among, x, torch.nan)
        return torch.nan_to_num(torch.stack([fn(x[:, k]) for k in per_type], 1)[:, types], nan=fallback)

    significant = ~empty & (z_own >= _Z_EMPTY)
    if st.width_mode == "individual":
        median = lambda v: v.nanmedian(dim=1).values  # noqa: E731
        width = over_type(rho, significant, median, 0.0)
        width = torch.where(width > 0, width, over_type(rho, ~empty, median, 0.0))
        width = torch.where(width > 0, width, rho)
        ratio = rho / width
        z = z_own * torch.minimum(ratio, 1 / ratio)
        # the significant columns are those significant at width w (spikes do not set the type's typical height);
        # in a type of which fewer than half the columns are significant (an invisible or barely visible
        # sublattice), a spike's height is that of its volume at width w, so it does not look bright against that
        # typical height either. (Taken in every type, this removed real columns of a strongly overlapping lattice
        # while they traded intensity with their neighbours: 100 iterations, every column unconverged.)
        significant = ~empty & (z >= _Z_EMPTY)
        visible = over_type(significant.to(eta.dtype), ~empty, lambda v: v.nanmean(dim=1), 0.0) >= 0.5
        height = torch.where(visible, eta, eta * torch.clamp(ratio, max=1.0) ** 2)
    else:  # shared widths: every column of a type has the type's width, tested as is down to half its start
        # width; a type whose width shrank further (an invisible sublattice whose columns fit single noisy pixels,
        # its shared width crawling to a fraction of a pixel) is tested with the same volume at half its start
        # width, and its columns roam
        width = rho
        ratio = torch.clamp(rho / rho0c, max=1.0)
        z = z_own * torch.clamp(2 * ratio, max=1.0)
        significant = ~empty & (z >= _Z_EMPTY)
        height = eta
    seen = seen | significant  # ``seen``: significant at an earlier solve (the caller records this one's)
    candidates = ~empty & live & (z < _Z_EMPTY)
    if not bool((candidates | empty).any()):  # the usual case: every column significant, none removed
        return candidates, candidates, eta, significant
    eta_score = g_eta / fisher  # the height one Newton step from η = 0 (the column's shape at its start)
    z_score = eta_score * torch.sqrt(fisher / var)
    release = empty & (released < _MAX_RELEASES) & live & (z_score >= _Z_RELEASE)
    if not bool(candidates.any()):
        return candidates, release, eta_score, significant
    typical = over_type(height, significant, lambda v: v.nanquantile(0.9, dim=1), math.inf)
    faint = height < _EMPTY_SHARE * typical
    moved = _drift(st.col, c0)
    roams = (moved > 2 * width) | (ratio < 0.5) | (ratio > 2.0)
    # a type without a single significant column (an invisible sublattice given as a type) shows nothing: its
    # insignificant columns go even when they stay put (they would only steer the type's shared width)
    silent = torch.isinf(typical)
    new_empty = candidates & faint & ((z < _Z_NONE) | roams | silent)
    # a column that was significant before and fades only now, near its start, while a significant neighbour
    # sits within 2w (a dumbbell partner mid-way through the iterations) is kept for now; a start that was never
    # significant (a spurious start next to a column) or has drifted off gets no such cover
    shielded = new_empty & seen & ~silent & (moved <= 2 * width)
    if bool(shielded.any()):
        new_empty &= ~_covered(st.col, shielded, significant, width)
    return new_empty, release, eta_score, significant


def _covered(col, which, present, width):
    """Columns ``which`` (B, N) with another ``present`` column's centre within twice their type width: a
    neighbour close to or on the site (e.g. the partner of a dumbbell, mid-way through the iterations) may explain
    its intensity for the moment, so its low height says little about the site (the pair is reported collapsed if
    it ends so)."""
    out = torch.zeros_like(which)
    for b, n in which.nonzero().tolist():
        d = torch.hypot(col[b, :, M.CX] - col[b, n, M.CX], col[b, :, M.CY] - col[b, n, M.CY])
        d[n] = math.inf
        out[b, n] = bool(((d < 2 * width[b, n]) & present[b]).any())
    return out


def _reset_empty(col, new, c0, rho0c):
    """Columns ``new`` (B, N) back to their start position and width (``rho0c``, (B, N)) with height 0 (empty
    sites)."""
    start = torch.cat((c0, torch.zeros_like(c0[..., :1]), rho0c[..., None]), -1)
    return torch.where(new[..., None], start, col)


def _strayed(x, y, start, nearest, empty):
    """Columns (B, N) whose site another column took over: ended more than half-way to the nearest other start
    (``start`` (B, N, 2), ``nearest`` (B, N) [Å]) while another non-empty column ended closer to its start than it.

    A spurious start 0.25 Å from a column took it over; a vacancy start sliding onto its neighbour's site pushed
    that column 1.6 Å off, reported converged with x_crlb 0.04 Å (fuzzing, helper-46): their parameters describe
    no column their start names. The column that took the site is kept (a duplicate start that correctly ended on
    the column was flagged too when the distance alone counted — review helper-47); so is a faint column that
    wandered without another taking its site.
    """
    from scipy.spatial import cKDTree

    moved = np.hypot(x - start[..., 0], y - start[..., 1])
    out = ~empty & (moved > 0.5 * nearest)
    for b in np.flatnonzero(out.any(1)):
        kept = np.flatnonzero(~empty[b])
        tree = cKDTree(np.c_[x[b, kept], y[b, kept]])
        for n in np.flatnonzero(out[b]):
            d, i = tree.query(start[b, n], k=2)
            other = [dd for dd, ii in zip(d, i, strict=True) if np.isfinite(dd) and kept[ii] != n]
            out[b, n] = bool(other) and other[0] < moved[b, n]
    return out


def _held(geom, rho, truncation):
    """Whether each column's Gaussian (widths ``rho`` (B, N) [px]) is held by its window: ``truncation`` widths fit
    in it, or the window covers the whole image (windows are capped there: _fit_batch)."""
    H, W = geom.shape
    covers = (geom.i0 <= 0) & (geom.i0 + 2 * geom.h >= H - 1) & (geom.j0 <= 0) & (geom.j0 + 2 * geom.h >= W - 1)
    return (rho * truncation <= geom.h + 0.5) | covers


def _drift(col, c0):
    """How far [px] each column (B, N) lies from its start position ``c0`` (B, N, 2)."""
    return torch.hypot(col[..., M.CX] - c0[..., 0], col[..., M.CY] - c0[..., 1])


def _off_centre(geom, col):
    """How far [px] each column (B, N) lies from the centre of its window (the larger of the x and y offsets)."""
    return torch.maximum((col[..., M.CX] - (geom.j0 + geom.h)).abs(), (col[..., M.CY] - (geom.i0 + geom.h)).abs())


def _quadratic_stop(s, s_prev):
    """Newton's quadratic convergence predicts the next step's largest share ≤ 1/10 of the stopping threshold:
    the share ``s`` contracted > 100x from ``s_prev`` (the last accepted Newton step whose quadratic model held;
    inf for none) and s³/s_prev² ≤ _STOP_SHARE / 10 (step sizes t ∝ √share, t_k+1 ≈ C·t_k², C ≈ t_k / t_k-1²)."""
    return torch.isfinite(s_prev) & (s <= 0.01 * s_prev) & (10 * s**3 <= _STOP_SHARE * s_prev**2)


def _small_step(s, s_prev):
    """The stopping test of a step whose largest share is ``s`` (stopping units, (B,)) after an accepted step of
    share ``s_prev``: the step moves every column by < 1e-2 of its statistical uncertainty (s ≤ _STOP_SHARE), and
    so does what remains to the optimum when steps contract slowly. With step sizes t ∝ √s contracting by
    r = √(s / s_prev), the steps still to come add up to ~t·r/(1 − r) (a geometric series): for r > 1/2 the share
    is tested inflated by (r/(1 − r))², capped at 100 (a step 10x below the tolerance always stops). A step that
    was 10⁻³ CRLB small but crawling along a flat direction (individual widths at 10³ e⁻/Å²) stopped 1.9 CRLB from
    the optimum, reported converged."""
    r = torch.sqrt(s / s_prev)  # 0 when no step was accepted before (s_prev = inf)
    spread = torch.where(r < 1, r / (1 - r), math.inf).clamp(1.0, 10.0)
    return s * spread * spread <= _STOP_SHARE


def _guard(obj, st: _State):
    """Reject states with non-positive widths (objective +inf)."""
    return torch.where((st.rho() <= 0.2).any(1), torch.full_like(obj, math.inf), obj)


# Truncated-Newton test of the CG solves: stop once iteration k adds at most this share of the decrease so far, /k.
_CG_DECREASE_TOL = 0.25
# CG iterations per solve, and the cap they may double up to while solves stop at it (_fit_batch)
_CG_ITER = 30
_CG_ITER_MAX = 240

# The block preconditioner's Schur complement of the global parameters is kept ⪰ this share of their own block
# (_coupling_scale). 0.05, 0.2 and 0.5 converged the strongly overlapping lattices in about the same iterations (0.1
# in the 76-scenario sweep).
_SCHUR_MARGIN = 0.1

# A step re-centres the windows on its trial (instead of on the accepted state, with a render of its own) when every
# frame's largest share is at least this many units (σ² for least squares, log-likelihood for Poisson).
_RECENTRE_SHARE = 1.0

# Empty sites (_empty_sites): a faint column below _Z_NONE standard errors is removed at once, one below _Z_EMPTY
# when it also roams; _Z_EMPTY also defines the significant columns that set a type's width and typical height.
_Z_NONE = 1.0
_Z_EMPTY = 3.0
# Faint: below this share of the 90th percentile of the heights of the significant columns of its type.
_EMPTY_SHARE = 0.25
# An empty site whose score-test height reaches this many standard errors is restored, at most _MAX_RELEASES times
# (a bound, so the fit terminates; with one restore, real 9σ O columns removed at a first solve whose least-squares
# σ² was mostly misfit stayed removed when they faded once more).
_Z_RELEASE = 4.0
_MAX_RELEASES = 3

# Column types get their own start widths only when these differ by more than this factor (_estimate_width).
_DISTINCT_WIDTHS = 1.5

# A frame whose widths grow past this multiple of their start stops (not converged): a runaway, not a poor start.
_MAX_WIDTH_GROWTH = 8.0
# An individual width past this multiple of its start (the padded margin), drifting, for _RUNAWAY_PATIENCE
# iterations in a row, in a frame where only a few are (_runaways), is fixed at its start; as many iterations with
# widths past _MAX_WIDTH_GROWTH stop the frame.
_RUNAWAY_WIDTH = 3.0
_RUNAWAY_PATIENCE = 3


def _half_size(rho_max, truncation: float) -> int:
    """Window half-size [px] that holds ``truncation`` widths."""
    return max(2, int(math.ceil(truncation * float(rho_max))))


def _solve_step(prob, st, prof, f, lam, *, cg_iter, cg_tol, blocks=None, newton=None, decrease_test=True):
    """Solve (JᵀWJ + λ·D) δ = JᵀW r by block-Jacobi preconditioned conjugate gradients, batched over frames.

    ``blocks`` may be the per-column blocks of a previous iteration: they only set the preconditioner and the
    Marquardt scaling D, so a slightly stale copy changes the path, not the fixed point.
    In the frames flagged by ``newton`` (bool, shape (B,)) the Hessian includes the second-derivative term (falls
    back to Gauss–Newton in a frame where it is not positive definite). Returns the step (per-column, global), the
    predicted decrease ½ δᵀg per frame, the blocks used, the largest per-column share of the predicted decrease,
    the number of CG iterations, the frames that took a Newton step, the η components of JᵀW r before the
    free-parameter mask (B, N) (the score of removed heights) and the frames whose CG iterations converged (the
    others stopped at ``cg_iter``: an inexact step, for which Newton's quadratic convergence does not hold).
    ``decrease_test=False`` stops the CG iterations on the residual test alone (no Nash–Sofer test; for a start
    value, where one iteration usually meets it).
    """
    geom = prob.geom
    B = geom.i0.shape[0]
    dt = f.dtype
    # Everything that only needs ~1e-6 relative accuracy runs in float32 (half the memory traffic): the weights,
    # the gradient JᵀW r (its rounding moves the fixed point by ~1e-7 of the statistical error: the residual d − f
    # itself is formed in the working precision), the preconditioner blocks and the CG iterations, which only need
    # a ~1e-2 accurate step. The criterion and the parameters stay in the working precision.
    lo = torch.float32 if dt == torch.float64 else dt
    pl = prob.lowp(lo)
    stl = _State(st.col.to(lo), st.glob.to(lo), st.types, st.width_mode)
    profl = M.Profiles(prof.vx.to(lo), prof.vy.to(lo), M.coefficients(stl.col[..., M.ETA], stl.rho()))
    ml = pl.mask.reshape(-1)
    if prob.noise == "gaussian":  # W = mask
        wl = ml
    else:  # Fisher scoring: W = 1/f on the real pixels
        wl = ml / torch.clamp(f.to(lo), min=1e-12)
    rl = (prob.data - f).to(lo) * wl  # W (d − f), zero on padding
    if newton is None:
        newton = torch.zeros(B, dtype=torch.bool, device=f.device)
    use_newton = bool(newton.any())
    if use_newton:
        # Newton near the optimum: the Hessian adds −Σ (W r)_p ∇²f_p, block-diagonal per column, to JᵀW'J,
        # with W' = d/f² (observed information) for Poisson. Gauss–Newton / Fisher scoring converge linearly
        # (error × ~0.1 per step at typical doses); Newton's quadratic convergence saves iterations.
        X = M.residual_moments(geom, profl, stl.col[..., M.CX], stl.col[..., M.CY], rl)
        graw = M.moments_gradient(X, profl.coef)
        gcol, gglob = pl.reduce(graw, rl.view(B, -1).sum(1, keepdim=True))
        curv = M.curvature_blocks(X, stl.col[..., M.ETA], stl.rho()) * newton[:, None, None, None]
        if prob.noise == "gaussian":
            wH = wl
        else:  # observed information d/f² in the Newton frames, expected 1/f in the others
            wH = torch.where(newton[:, None], (pl.data * wl * wl).view(B, -1), wl.view(B, -1)).reshape(-1)
    else:
        graw, _ = M.vjp(geom, profl, stl.col[..., M.ETA], stl.rho(), rl, None)  # = pl.JT before the free mask
        gcol, gglob = pl.reduce(graw, rl.view(B, -1).sum(1, keepdim=True))
        wH = wl
    # Preconditioner: the exact per-column 4x4 blocks of JᵀWJ plus the exact coupling of every column with the
    # global parameters (background, shared widths), eliminated by a Schur complement; only overlaps between
    # neighbouring columns are left to the CG iterations.
    G = gglob.shape[1]
    if blocks is None:
        eta, rho = stl.col[..., M.ETA], stl.rho()
        gauss = prob.noise == "gaussian"  # W = mask: separable, no window gather
        if gauss:
            cb = M.column_blocks(geom, profl, eta, rho, None).to(dt)
        else:  # Jᵀw (the background's coupling below) from the same gathered weight windows
            cb, jtw = M.column_blocks(geom, profl, eta, rho, wl, gradient=True)
            cb = cb.to(dt)
        # exact columns of JᵀWJ for each global parameter (one J·v, Jᵀ·u pair each): the coupling of the
        # background and shared widths with every column, overlaps included, and the global-global block
        zc = torch.zeros_like(gcol)
        C = torch.zeros(B, cb.shape[1], G, 4, dtype=dt, device=f.device)
        Gm0 = torch.zeros(B, G, G, dtype=dt, device=f.device)
        for g in range(G):
            if not bool((prob.glob_free[..., g] != 0).any()):
                continue
            if g == 0 and gauss:  # J e_ζ is the 0/1 mask: Jᵀ mask from 1-D sums, Σ mask = H·W per frame
                hc, hg = pl.reduce(M.mask_gradient(geom, profl, eta, rho),
                                   torch.full((B, 1), float(geom.shape[0] * geom.shape[1]), dtype=lo, device=f.device))
            elif g == 0:  # J e_ζ is the 0/1 mask of real pixels: W·J e_ζ = W, Jᵀw from the blocks' windows
                hc, hg = pl.reduce(jtw, wl.view(B, -1).sum(1, keepdim=True))
            else:
                e = torch.zeros_like(gglob)
                e[:, g] = 1.0
                hc, hg = pl.JT(stl, profl, pl.J(stl, profl, zc, e) * wl)
            C[:, :, g, :], Gm0[:, :, g] = hc.to(dt), hg.to(dt)
        blocks = {"cb": cb, "C": C, "Gm0": Gm0}
    # The factorised preconditioner depends on λ only through λ·D: while λ stays ≤ 1e-3 (a ≤ 0.1 % change of the
    # diagonal) the one built for an earlier λ is as good, so it is rebuilt with the blocks or when λ grows.
    if use_newton:  # the per-column curvature changes every step: precondition with the Newton blocks
        pre = _preconditioner(*_newton_blocks(prob, blocks, curv.to(dt)), lam, prob.col_free, prob.glob_free, lo,
                              dsrc=(blocks["cb"], blocks["Gm0"]))
    else:
        pre = blocks.get("pre")
        if pre is None or not bool((((lam <= 1e-3) & (blocks["lam"] <= 1e-3)) | (lam == blocks["lam"])).all()):
            pre = blocks["pre"] = _preconditioner(blocks["cb"], blocks["C"], blocks["Gm0"], lam, prob.col_free,
                                                  prob.glob_free, lo)
            blocks["lam"] = lam
    Pc_inv, C, K, S_inv, Dcoll, Dglobl = pre
    laml = lam.to(lo)

    # CG on one flat vector per frame, (4N + G) = (columns, globals): fewer, larger tensor operations
    N = gcol.shape[1]
    nc = 4 * N

    def split(v):
        return v[:, :nc].view(B, N, 4), v[:, nc:]

    lamD = laml[:, None] * torch.cat((Dcoll.reshape(B, nc), Dglobl), 1)

    def apply_H(v):
        vc, vg = split(v)
        hc, hg = pl.JT(stl, profl, pl.J(stl, profl, vc, vg) * wH)
        if use_newton:
            sc, sg = pl.reduce((curv @ pl.expand(vc, vg)[..., None])[..., 0], vg[:, :1] * 0)
            hc, hg = hc - sc, hg - sg
        return torch.cat((hc.reshape(B, nc), hg), 1).addcmul_(lamD, v)

    def precond(rv):
        rc, rg = split(rv)
        y = (Pc_inv @ rc[..., None])[..., 0]
        zg = (S_inv @ (rg - (C @ y[..., None])[..., 0].sum(1))[..., None])[..., 0]
        return torch.cat(((y - (K @ zg[:, None, :, None])[..., 0]).reshape(B, nc), zg), 1)

    g = torch.cat((gcol.reshape(B, nc), gglob), 1)
    x, n_it, indefinite, cg_met = _pcg(g, apply_H, precond, cg_iter=cg_iter, cg_tol=cg_tol, decrease_test=decrease_test,
                               newton=newton if use_newton else None)
    if indefinite is not None:
        # the Newton Hessian of these frames is not positive definite (far from the optimum, or a column fading to
        # zero height): they take the Gauss–Newton step instead, always a descent direction
        return _solve_step(prob, st, prof, f, lam, cg_iter=cg_iter, cg_tol=cg_tol, blocks=blocks,
                           newton=newton & ~indefinite, decrease_test=decrease_test)
    xc, xg = split(x)
    xc, xg = xc.to(dt), xg.to(dt)
    gcol, gglob = gcol.to(dt), gglob.to(dt)
    pred = 0.5 * ((xc * gcol).sum((1, 2)) + (xg * gglob).sum(1))
    # largest share of one column (or one global parameter) in the predicted decrease: the stopping test
    share = torch.maximum((0.5 * xc * gcol).sum(-1).abs().amax(1), (0.5 * xg * gglob).abs().amax(1))
    return xc, xg, pred, blocks, share, n_it, newton, graw[..., M.ETA].to(dt), cg_met


def _linear_start(prob, st, prof, *, fit_background: bool, cg_iter: int = 50, cg_tol: float = 1e-2):
    """Start step of the heights (B, N) and background (B,) towards their least-squares values with positions and
    widths fixed (the variable projection start; ``prof``: the profiles of the current state): conjugate gradients
    on the normal equations of (η, ζ) from the current state, preconditioned by the heights' diagonal and the
    background's Schur complement — the preconditioner of :func:`_solve_step` with only η and ζ free — and stopped
    by the residual test alone (a start value: ``cg_tol`` = 1e-2 is usually met after one iteration; stopping early
    also keeps the heights of nearly coincident starts sane, which an exact solve of the ill-conditioned system
    would not).

    The least-squares matrix of the heights is Σ gₙgₘ over the real pixels, which ``_model.height_gram`` gives from
    1-D sums for every pair of overlapping windows: no render and no image-space product, only one gather of the data
    (Jᵀd). Runs in float32, as the CG iterations of :func:`_solve_step`.
    """
    geom = prob.geom
    B, N = geom.i0.shape
    lo = torch.float32 if prob.data.dtype == torch.float64 else prob.data.dtype
    pl = prob.lowp(lo)
    vy, vx = prof.vy[..., :1, :].to(lo), prof.vx[..., :1, :].to(lo)
    diag, off, u = M.height_gram(geom, M.Profiles(vx, vy))
    n, m = M.overlap_pairs(geom)
    n_real = float(geom.shape[0] * geom.shape[1])
    zf = 1.0 if fit_background else 0.0
    eta, zeta = st.col[..., M.ETA].to(lo), st.glob[:, 0].to(lo)

    def hess(v):  # v = (η, ζ) (B, N + 1) -> (Σₘ Γₙₘ ηₘ + uₙ ζ, Σₙ uₙ ηₙ + H·W ζ)
        ve, vz = v[:, :N], v[:, N]
        vf = ve.reshape(-1)
        hv = (diag * ve).reshape(-1).index_add(0, n, off * vf[m]).index_add(0, m, off * vf[n]).view(B, N)
        return torch.cat((hv + u * vz[:, None], (((u * ve).sum(1) + n_real * vz) * zf)[:, None]), 1)

    jd = ((vy @ M.gather_patches(pl.data, geom)) @ vx.transpose(-1, -2))[..., 0, 0]  # Jᵀd (data zero on padding)
    h = hess(torch.cat((eta, zeta[:, None]), 1))
    res = torch.cat((jd - h[:, :N], ((pl.data.view(B, -1).sum(1) - h[:, N]) * zf)[:, None]), 1)  # the gradient
    # preconditioner: 1/Γₙₙ (with the tiny ridge of _arrow_schur) and the background's Schur complement, with the
    # coupling scaled down where the diagonal blocks make that complement non-positive (_coupling_scale)
    inv = 1.0 / (diag + 1e-12 * torch.clamp(diag, min=1.0))
    k = u * inv * zf
    theta = torch.sqrt(_coupling_scale((u * k).sum(1) / n_real))[:, None]
    up, k = u * theta, k * theta
    schur = (n_real - (up * k).sum(1)) * zf + (1.0 - zf)
    s_inv = 1.0 / (schur + 1e-12 * schur.abs())

    def precond(r):
        y = r[:, :N] * inv
        z_z = s_inv * (r[:, N] - (up * y).sum(1) * zf) * zf
        return torch.cat((y - k * z_z[:, None], z_z[:, None]), 1)

    x = _pcg(res, hess, precond, cg_iter=cg_iter, cg_tol=cg_tol, decrease_test=False)[0].to(st.col.dtype)
    return x[:, :N], x[:, N]


def _pcg(g, apply_H, precond, *, cg_iter: int, cg_tol: float, decrease_test: bool = True, newton=None):
    """Preconditioned conjugate gradients for H x = g, batched over frames (rows of ``g``, shape (B, n)), from x = 0.

    Stops when every frame's preconditioned residual rᵀM⁻¹r is ≤ ``cg_tol``² of its start AND (``decrease_test``)
    the last iteration added little to the quadratic model's decrease (Nash & Sofer's truncated-Newton test,
    k·gain_k ≤ τ·q_k): a preconditioner that misjudges one strongly coupled direction (e.g. individual widths of
    overlapping columns of very different widths) shrinks the first residual by orders of magnitude in one step and
    fooled the residual test alone. Returns (x, iterations, None, met), ``met`` (bool (B,)): the frames that meet
    these tests at the last iteration (the others were cut at ``cg_iter``; a frame that met them earlier while its
    batch went on may fail them at the end — rare, and only makes that step count as inexact), or
    (None, iterations, frames, None) as soon as a frame flagged in ``newton`` (bool (B,)) meets non-positive
    curvature (its Newton Hessian is not positive definite).
    """
    x = torch.zeros_like(g)
    res = g.clone()
    z = precond(res)
    pv = z
    rz = (res * z).sum(1)
    stop = cg_tol * cg_tol * rz
    q = torch.zeros_like(rz)  # decrease of the quadratic model so far, ½ Σ α rz
    for it in range(cg_iter):
        Hp = apply_H(pv)
        pHp = (pv * Hp).sum(1)
        if newton is not None:
            indefinite = newton & ((rz < 0) | ((pHp <= 0) & (rz > 0)))
            if bool(indefinite.any()):
                return None, it + 1, indefinite, None
        alpha = torch.where(pHp > 0, rz / torch.where(pHp > 0, pHp, 1), 0.0)[:, None]
        x.addcmul_(alpha, pv)
        res.addcmul_(alpha, Hp, value=-1.0)
        z = precond(res)
        rz_new = (res * z).sum(1)
        gain = 0.5 * alpha[:, 0] * rz
        q = q + gain
        met = (rz_new <= stop) & (((it + 1) * gain <= _CG_DECREASE_TOL * q) | (not decrease_test))
        if bool(met.all()):
            break
        beta = torch.where(rz > 0, rz_new / torch.where(rz > 0, rz, 1), 0.0)[:, None]
        pv = torch.addcmul(z, beta, pv)
        rz = rz_new
    return x, it + 1, None, met


def _newton_blocks(prob, blocks, curv):
    """Blocks of the Newton Hessian: the Gauss–Newton blocks minus the curvature Σ r ∇²f, whose ρ row couples a
    column to its type's shared width (common widths)."""
    cb, C, Gm0 = blocks["cb"] - curv, blocks["C"], blocks["Gm0"]
    if prob.width_mode == "common":
        onehot = torch.nn.functional.one_hot(prob.types, prob.n_types).to(curv.dtype)  # (N, T)
        C = C.clone()
        C[:, :, 1:, :] -= onehot[None, :, :, None] * curv[..., M.RHO, None, :]
        Gm0 = Gm0.clone()
        Gm0[:, 1:, 1:] -= torch.diag_embed(curv[..., M.RHO, M.RHO] @ onehot)
    return cb, C, Gm0


def _coupling_scale(a: torch.Tensor) -> torch.Tensor:
    """θ² (B,) that scales the column–global coupling of the block preconditioner so that the Schur complement of
    the global parameters stays positive definite: ``a`` (B,) is the largest eigenvalue of Gm⁻¹·Σₙ CₙPₙ⁻¹Cₙᵀ.

    With exact per-column blocks Pₙ but no coupling between columns, Σₙ CₙPₙ⁻¹Cₙᵀ overstates what the columns
    explain of the global parameters wherever columns overlap (their 4-parameter subspaces are not orthogonal), and
    the complement Gm − Σₙ CₙPₙ⁻¹Cₙᵀ turns indefinite (a ≥ 1): a 10×10 lattice at 2.7 widths spacing has a ≈ 2.6,
    and even a 4.4-width lattice with individual widths a ≈ 1.1. Conjugate gradients with an indefinite
    preconditioner lose their descent property: the steps crawled along the flat directions (every frame of that
    lattice at 100 iterations, 1,443 to converge; common widths 21–94 instead of 5). With the coupling scaled by θ,
    θ² = min(1, (1 − _SCHUR_MARGIN)/a), the complement is Gm − θ²Σ… ⪰ _SCHUR_MARGIN·Gm, and the preconditioner is
    positive definite; where a ≤ 1 − _SCHUR_MARGIN (separated columns, e.g. a ≈ 0.5) it is unchanged."""
    return torch.clamp((1.0 - _SCHUR_MARGIN) / torch.clamp(a, min=1e-300), max=1.0)


def _arrow_schur(cb, C, Gm0, fc, fg, dcol, dglob):
    """Per-column block inverses, free couplings, K = Pc⁻¹Cᵀ and the Schur complement S of the global parameters
    of the arrow matrix [[blocks + diag(dcol), Cᵀ], [C, Gm0 + diag(dglob)]] (fixed parameters as identity rows),
    with the coupling C (and K) scaled by θ (:func:`_coupling_scale`) where S would not be positive definite.
    Shapes: cb (B, N, 4, 4), C (B, N, G, 4), Gm0 (B, G, G), dcol (B, N, 4) and dglob (B, G), or None for none;
    free flags fc (4,) or per column (B, N, 4), fg (G,) or per frame (B, G)."""
    B, G = Gm0.shape[0], Gm0.shape[1]
    eye = torch.eye(4, dtype=cb.dtype, device=cb.device)
    Pc = cb * (fc[..., :, None] * fc[..., None, :]) + eye * (1 - fc)[..., None, :]
    if dcol is not None:
        Pc = Pc + torch.diag_embed(dcol)
    # a tiny ridge keeps blocks of columns with vanishing height invertible (it does not change regular ones)
    ridge = 1e-12 * torch.diagonal(Pc, dim1=-2, dim2=-1).abs().amax(-1, keepdim=True) + 1e-300
    Pc_inv = torch.linalg.inv(Pc + torch.diag_embed(ridge.expand(*Pc.shape[:-1])))
    C = C * fg[..., None, :, None] * fc[..., None, :]
    Gm = Gm0 * (fg[..., :, None] * fg[..., None, :])
    if dglob is not None:
        Gm = Gm + torch.diag_embed(dglob)
    K = Pc_inv @ C.transpose(-1, -2)  # (B, N, 4, G)
    CK = (C @ K).sum(1)
    Gm = Gm + torch.diag_embed(1.0 - fg).expand(B, G, G)
    if G == 1:  # the generalised eigenvalue is a ratio
        a = CK[:, 0, 0] / Gm[:, 0, 0]
    else:  # largest eigenvalue of L⁻¹ CK L⁻ᵀ, Gm = LLᵀ (a frame whose Gm is not positive definite keeps θ = 1)
        L, info = torch.linalg.cholesky_ex(Gm)
        Li = torch.linalg.solve_triangular(L, torch.eye(G, dtype=L.dtype, device=L.device).expand(B, G, G), upper=False)
        a = torch.where(info == 0, torch.linalg.eigvalsh(Li @ CK @ Li.transpose(-1, -2))[:, -1], 0.0)
    th2 = _coupling_scale(a)
    th = torch.sqrt(th2)[:, None, None, None]
    return Pc_inv, C * th, K * th, Gm - CK * th2[:, None, None]


def _preconditioner(cb, C, Gm0, lam, fc, fg, lo, dsrc=None):
    """Factorised block preconditioner of JᵀWJ + λ·D in dtype ``lo``: per-column block inverses, the Schur
    complement of the global parameters, and the Marquardt diagonals D (columns, globals), taken from the blocks
    ``dsrc`` = (cb, Gm0) when given."""
    dcb, dGm = (cb, Gm0) if dsrc is None else dsrc
    Dcol = torch.diagonal(dcb, dim1=-2, dim2=-1) * fc
    Dglob = torch.diagonal(dGm, dim1=-2, dim2=-1) * fg
    Pc_inv, C, K, S = _arrow_schur(cb, C, Gm0, fc, fg, lam[:, None, None] * Dcol, lam[:, None] * Dglob)
    S_inv = torch.linalg.inv(S + torch.diag_embed(1e-12 * torch.diagonal(S, dim1=-2, dim2=-1).abs() + 1e-300))
    return tuple(t.to(lo) for t in (Pc_inv, C, K, S_inv, Dcol, Dglob))


def _assemble(st, img3, p, scale, dose, noise, width, fixed_width, fixed_bg, types, crlb, stack, pool,
              crlb_threads, max_iter, truncation, start, nearest) -> FitResult:
    col = st["col"].cpu().numpy()
    B, N, _ = col.shape
    x = (col[..., M.CX] + 0.5) * p
    y = (col[..., M.CY] + 0.5) * p
    rho = col[..., M.RHO] * p
    eta = col[..., M.ETA] / scale
    zeta = st["zeta"].cpu().numpy() / scale
    scs = 2 * np.pi * eta * rho**2
    conv = st["conv"].cpu().numpy()
    empty = st["empty"].cpu().numpy()
    runaway = st["runaway"].cpu().numpy() & ~empty  # (a runaway later removed as an empty site is an empty site)
    width_fixed = st["width_fixed"].cpu().numpy() & ~empty
    # a column whose centre left the image is fitting a tail of noise (e.g. a spurious peak at the border): the
    # optimum may be genuine, but its parameters are not an estimate of a column, so it is not reported converged
    outside = outside_image(np.stack((x, y), -1), img3.shape[1:], p)
    conv = conv & ~outside
    collapsed = _collapsed(np.where(empty, np.nan, x), y, rho)  # empty sites are not in the model
    conv = conv & ~collapsed
    strayed = _strayed(x, y, start, nearest, empty)
    conv = conv & ~strayed
    width_mode = "fixed" if fixed_width is not None else width
    if crlb:
        stats = "poisson" if (dose is not None or noise == "poisson") else "gaussian"
        sig = np.sqrt(st["sigma2"].cpu().numpy()) / scale

        def bounds(f, k):  # CRLB of frames f (slice) restricted to the columns k
            with _cpu_threads(crlb_threads):
                return crlb_from_state(
                    np.stack((x[f][:, k], y[f][:, k]), -1), rho[f][:, k], eta[f][:, k], zeta[f], img3.shape[1:], p,
                    dose=dose, noise=stats, noise_sigma=sig[f], width=width_mode, background_free=fixed_bg is None,
                    types=types[k], truncation=truncation, device=st["col"].device, invalid="nan", pool=pool,
                )

        # empty sites are not in the fitted model (height 0, nothing free): the bounds are those of the model
        # without them, and theirs are NaN (no estimate). Frames with the same empty sites (all frames of a sweep
        # without any, or the same vacancy starts) share one batched call.
        cr = {k: np.full((B, N), np.nan) for k in ("x_crlb", "y_crlb", "scs_crlb")}
        masks, group = np.unique(empty, axis=0, return_inverse=True)
        for g, m in enumerate(masks):
            frames, k = group.reshape(-1) == g, ~m
            if k.any():
                for name, v in bounds(frames, k).items():
                    cr[name][np.ix_(frames, k)] = v
        bad = np.isnan(cr["x_crlb"]).all(axis=1) & ~empty.all(axis=1)
        retried = 0
        for f in np.flatnonzero(bad & conv.any(axis=1) & ~conv.all(axis=1)):
            # one diverged column (negative height, collapsed onto its neighbour) can make the whole model invalid
            # for the bound; the converged columns get theirs from the model without the unconverged ones
            k = conv[f]  # (empty sites are never converged)
            sub = bounds(slice(f, f + 1), k)
            for name, v in sub.items():
                cr[name][f, k] = v[0]
            retried += int(not np.isnan(sub["x_crlb"]).all())
        if bad.any():
            warnings.warn(f"the fitted model of {int(bad.sum())} of {B} frame(s) has non-positive intensity or a "
                          f"singular Fisher matrix (diverged columns, see `converged`); in {retried} of them the "
                          "converged columns got their CRLB from the model without the unconverged ones, all other "
                          "bounds of these frames are NaN", UserWarning, stacklevel=3)
    else:
        cr = {k: np.full((B, N), np.nan) for k in ("x_crlb", "y_crlb", "scs_crlb")}
    if not conv.all():
        hint = (" Least squares is unstable at a few counts per pixel: use noise='poisson' with the dose."
                if _least_squares_at_low_counts(img3, scale, noise, dose) else "")
        too_wide = st["too_wide"].cpu().numpy()
        if too_wide.any():  # the start width was far too small (strongly overlapping columns defeat the estimate)
            hint += (f" In {int(too_wide.sum())} frame(s) widths ran away (many columns past "
                     f"{_MAX_WIDTH_GROWTH:g}x the start value) and the fit stopped: a start width far too small (give "
                     "width_init [Å] near the expected column width), or a whole column type of a much wider kind "
                     "(give it its own type).")
        infeasible = st["infeasible"].cpu().numpy()
        if infeasible.any():
            hint += (f" In {int(infeasible.sum())} frame(s) the Poisson model went negative (a negative background "
                     "or heights no step could repair) and the fit stopped: a negative or background-subtracted "
                     "image region, or columns covering every pixel; fit with noise='gaussian' or common widths.")
        # frames still moving at max_iter (slow contraction along a flat direction; the stopping test allows for it)
        slow = (st["n_iter"].cpu().numpy() >= max_iter) & ~too_wide & ~infeasible & ~conv.all(1)
        if slow.any():
            hint += (f" {int(slow.sum())} frame(s) reached max_iter={max_iter} while their steps still contracted "
                     "slowly (e.g. individual widths at low dose): raise max_iter, or fit common widths.")
        moved = f", {int(outside.sum())} of them moved outside the image" if outside.any() else ""
        if empty.any():
            moved += (f", {int(empty.sum())} of them empty sites (no significant column at the start position: a "
                      "vacancy or a spurious start; removed from the model: height 0, SCS 0, position and width at "
                      "the start, CRLB NaN; fit.table['empty_site'])")
        if runaway.any():
            moved += (f", {int(runaway.sum())} of them runaway widths (past {_RUNAWAY_WIDTH:g}x their start width "
                      "and drifting: fitted at the start position and width, only the height free; "
                      "fit.table['runaway'])")
            hint += (" A runaway width is a start on a broad feature the model has no term for (a halo of probe "
                     "tails, a thickness hump, an amorphous patch) or a column of a much wider kind (give it its own "
                     "type); common widths avoid it.")
        if collapsed.any():
            moved += (f", {int(collapsed.sum())} of them collapsed onto a neighbour (centres closer than their "
                      "width: two start positions for one column?)")
        if (strayed & ~collapsed).any():
            moved += (f", {int((strayed & ~collapsed).sum())} of them lost their site to another column (they "
                      "strayed more than half-way to the nearest other start)")
        warnings.warn(f"{int((~conv).sum())} of {conv.size} columns did not converge{moved} (fit.table['converged'] "
                      f"is False for them; their parameters are not estimates).{hint}", UserWarning, stacklevel=3)
    faded = width_fixed & ~runaway
    if faded.any():
        warnings.warn(f"{int(faded.sum())} column(s) faded twice with their width free and were fitted with the "
                      "width fixed at its start value (fit.table['width_fixed']; converged only within that width of "
                      "the start position): the data do not determine their individual widths (low dose, or least "
                      "squares at ~1 count per pixel; common widths or a higher dose do). Their SCS assumes that "
                      "width.", UserWarning, stacklevel=3)
    table = pd.DataFrame(
        {
            "frame": np.repeat(np.arange(B), N),
            "column": np.tile(np.arange(N), B),
            "type": np.tile(types, B),
            "x": x.ravel(),
            "y": y.ravel(),
            "width": rho.ravel(),
            "height": eta.ravel(),
            "scs": scs.ravel(),
            "x_crlb": cr["x_crlb"].ravel(),
            "y_crlb": cr["y_crlb"].ravel(),
            "scs_crlb": cr["scs_crlb"].ravel(),
            "background": np.repeat(zeta, N),
            "converged": conv.ravel(),
            "empty_site": empty.ravel(),
            "runaway": runaway.ravel(),
            "width_fixed": width_fixed.ravel(),
        }
    )
    sq = (lambda a: a) if stack else (lambda a: a[0])
    return FitResult(
        table=table,
        positions=sq(np.stack((x, y), -1)),
        widths=sq(rho),
        heights=sq(eta),
        scs=sq(scs),
        background=sq(zeta),
        converged=sq(conv),
        n_iter=sq(st["n_iter"].cpu().numpy()),
        objective=sq(st["obj"].cpu().numpy()),
        pixel_size=p,
        dose=dose,
        noise=noise,
        width_mode=width_mode,
        info={"window_half_size_px": int(st["h"].max()), "empty_sites": int(empty.sum()),
              "runaways": int(runaway.sum()), "widths_fixed": int(width_fixed.sum())},
    )
