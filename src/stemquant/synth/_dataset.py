"""An infinite, seeded, multi-worker torch IterableDataset of (noisy, clean) training pairs."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from stemquant._validate import as_rng, check_dose, check_image, check_pixel_size, check_positive

from ._image import IMAGE_KINDS, random_clean_image
from ._specimen import _check_shape

NOMINAL_PIXEL_SIZE = 0.1  # [Å] converts dose [e⁻/Å²] to counts per pixel for the normalised clean image


def _check_distortion_args(dose, rng, pixel_size):
    """Validate the common arguments of the distortion callables; ``rng`` as a Generator."""
    dose = check_dose(dose, allow_none=False)
    pixel_size = check_pixel_size(pixel_size)
    return as_rng(rng), dose, pixel_size


def poisson_distortion(clean: np.ndarray, dose: float, rng: int | np.random.Generator | None, *,
                       pixel_size: float = NOMINAL_PIXEL_SIZE) -> np.ndarray:
    """Plain shot noise: Poisson(clean * dose * p^2) / (dose * p^2), same scale as ``clean``.

    ``dose`` [e⁻/Å²] and ``pixel_size`` [Å] must be positive; ``rng`` is an int, a numpy Generator or None.
    """
    from stemquant.distort import poisson_noise

    rng, dose, pixel_size = _check_distortion_args(dose, rng, pixel_size)
    return poisson_noise(check_image(clean, name="clean"), dose=dose, pixel_size=pixel_size, rng=rng) / (
        dose * pixel_size**2)


def stem_distortion(clean: np.ndarray, dose: float, rng: int | np.random.Generator | None, *,
                    pixel_size: float = NOMINAL_PIXEL_SIZE) -> np.ndarray:
    """Random STEM distortion from ``stemquant.distort``; counts divided by dose * p^2.

    The parameters (``sample_stem_params``) and the noise are drawn one after the other from the same
    generator; an int ``rng`` seeds that one generator (it is not reused for each draw).
    """
    from stemquant.distort import STEMDistortion, sample_stem_params

    rng, dose, pixel_size = _check_distortion_args(dose, rng, pixel_size)
    out = STEMDistortion(sample_stem_params(rng))(clean, dose=dose, pixel_size=pixel_size, rng=rng)
    return np.asarray(out.image, dtype=np.float64) / (dose * pixel_size**2)


def tem_distortion(clean: np.ndarray, dose: float, rng: int | np.random.Generator | None, *,
                   pixel_size: float = NOMINAL_PIXEL_SIZE) -> np.ndarray:
    """Random TEM (camera) distortion from ``stemquant.distort``; counts divided by dose * p^2.

    ``TEMDistortion(sample_tem_params(rng))`` (Lobato et al. eqs. 27-40: MTF, shot noise, fixed-pattern, dark
    current, read-out noises, black pixels, zingers, clipping, quantisation). Pass it as
    ``PairDataset(distortion=tem_distortion)`` for TEM training pairs; the clean target is not blurred by the
    MTF (see ``stemquant.distort.TEMDistortion``). As in ``stem_distortion``, an int ``rng`` seeds one
    generator for the parameters and the noise.
    """
    from stemquant.distort import TEMDistortion, sample_tem_params

    rng, dose, pixel_size = _check_distortion_args(dose, rng, pixel_size)
    out = TEMDistortion(sample_tem_params(rng))(clean, dose=dose, pixel_size=pixel_size, rng=rng)
    return np.asarray(out.image, dtype=np.float64) / (dose * pixel_size**2)


def default_distortion() -> Callable:
    """``stem_distortion`` if ``stemquant.distort`` provides it, else ``poisson_distortion``."""
    try:
        from stemquant.distort import STEMDistortion, sample_stem_params  # noqa: F401
    except ImportError:
        return poisson_distortion
    return stem_distortion


def worker_rng(seed: int, worker_id: int, num_workers: int) -> np.random.Generator:
    """Independent stream of one worker: SeedSequence(seed).spawn(num_workers)[worker_id]."""
    return np.random.default_rng(np.random.SeedSequence(seed).spawn(num_workers)[worker_id])


class PairDataset(IterableDataset):
    """Infinite stream of (noisy, clean) pairs, torch float32 tensors of shape (1, H, W).

    Parameters
    ----------
    shape : tuple of int
        Image shape (H, W) [pixels].
    seed : int
        Root seed. Worker w of n (``torch.utils.data.get_worker_info``) draws from
        ``SeedSequence(seed).spawn(n)[w]``; in the main process n = 1, w = 0.
    distortion : callable, optional
        ``f(clean, dose, rng) -> noisy`` with ``clean`` the normalised image (H, W), ``dose`` [e⁻/Å²] and a
        numpy Generator. None selects :func:`default_distortion`: random STEM distortions from
        ``stemquant.distort`` when that module provides them, else Poisson noise; :func:`tem_distortion`
        gives TEM camera distortions. Either default treats the
        clean image as intensity at pixel size ``pixel_size`` and divides the counts by ``dose * pixel_size²``
        so that noisy and clean share the normalised-intensity scale.
    dose_range : tuple of float
        (low, high) dose [e⁻/Å²]; each pair draws a log-uniform dose in it.
    kind : {"hrstem", "lowres", "any"}
        Passed to :func:`random_clean_image`.
    pixel_size : float
        Nominal pixel size [Å] used by the default distortions to convert dose into counts (0.1 Å: a peak
        pixel receives 5 to 5000 electrons over the default dose range).

    Examples
    --------
    >>> ds = PairDataset(shape=(32, 32), seed=0, distortion=None, kind="lowres")
    >>> noisy, clean = next(iter(ds))
    >>> tuple(noisy.shape), noisy.dtype
    ((1, 32, 32), torch.float32)
    """

    def __init__(self, shape=(256, 256), seed: int = 0, distortion: Callable | None = None,
                 dose_range=(5e2, 5e5), kind: str = "hrstem", pixel_size: float = NOMINAL_PIXEL_SIZE):
        super().__init__()
        self.shape = _check_shape(shape)
        if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
        lo, hi = (check_positive(d, "dose_range", "e⁻/Å²") for d in dose_range)
        if lo > hi:
            raise ValueError(f"dose_range must be (low, high) with low <= high [e⁻/Å²], got {dose_range}")
        if kind not in IMAGE_KINDS:
            raise ValueError(f"kind must be one of {IMAGE_KINDS}, got {kind!r}")
        if distortion is not None and not callable(distortion):
            raise ValueError(f"distortion must be a callable f(clean, dose, rng) or None, got {distortion!r}")
        self.seed = int(seed)
        self.dose_range = (lo, hi)
        self.kind = kind
        self.pixel_size = check_pixel_size(pixel_size)
        self.distortion = distortion

    def _distort(self) -> Callable:
        """The distortion callable, defaults bound to this dataset's pixel size."""
        if self.distortion is not None:
            return self.distortion
        f = default_distortion()
        return lambda clean, dose, rng: f(clean, dose, rng, pixel_size=self.pixel_size)

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (0, 1) if info is None else (info.id, info.num_workers)
        rng = worker_rng(self.seed, wid, nw)
        distort = self._distort()
        log_lo, log_hi = np.log(self.dose_range[0]), np.log(self.dose_range[1])
        while True:
            clean = random_clean_image(self.shape, rng=rng, kind=self.kind)
            dose = float(np.exp(rng.uniform(log_lo, log_hi)))
            noisy = np.asarray(distort(clean, dose, rng), dtype=np.float32)
            yield torch.from_numpy(noisy)[None], torch.from_numpy(clean.astype(np.float32))[None]
