"""STEM probe: aberration function, aperture, source size; Table 2.1 presets."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from stemquant._validate import check_pixel_size, check_positive
from stemquant.units import electron_wavelength, fwhm_to_sigma


@dataclass(frozen=True)
class ProbeParams:
    """Microscope settings of a HAADF-STEM simulation (Friedrich 2023, Table 2.1).

    Sign convention (written once here): the aberration function is
    ``chi(alpha) = 2 pi / lambda * (C10 alpha^2 / 2 + Cs alpha^4 / 4 + C50 alpha^6 / 6)`` and abTEM's
    ``defocus`` is ``-C10``; Table 2.1's ``C10 = -8.874 nm`` is ``C10=-88.74`` Å, i.e. ``defocus=88.74`` Å.

    Parameters
    ----------
    energy : float
        Acceleration energy [eV].
    semiangle_cutoff : float
        Probe-forming (condenser) aperture semi-angle [mrad].
    C10 : float
        Defocus aberration coefficient [Å] (negative = underfocus in Table 2.1).
    Cs : float
        Third-order spherical aberration C30 [Å].
    C50 : float
        Fifth-order spherical aberration [Å].
    source_size_fwhm : float
        FWHM of the Gaussian source-size broadening [Å].
    inner, outer : float
        HAADF detector collection angles [mrad].
    pixel_size : float
        Pixel size used in the paper's simulation [Å] (informational).
    """

    energy: float = 300e3
    semiangle_cutoff: float = 21.1
    C10: float = -88.74
    Cs: float = 0.04e7
    C50: float = 10e7
    source_size_fwhm: float = 0.7
    inner: float = 60.0
    outer: float = 190.0
    pixel_size: float = 0.15

    def __post_init__(self):
        check_positive(self.energy, "energy", "eV")
        check_positive(self.semiangle_cutoff, "semiangle_cutoff", "mrad")
        for name in ("C10", "Cs", "C50"):
            v = getattr(self, name)
            if not np.isfinite(v):
                raise ValueError(f"{name} must be a finite aberration coefficient [Å], got {v}")
        if not (np.isfinite(self.source_size_fwhm) and self.source_size_fwhm >= 0):
            raise ValueError(
                f"source_size_fwhm must be >= 0 [Å] (0 = no broadening), got {self.source_size_fwhm}"
            )
        check_positive(self.inner, "inner", "mrad")
        check_positive(self.outer, "outer", "mrad")
        if self.outer <= self.inner:
            raise ValueError(f"outer must exceed inner [mrad], got inner={self.inner}, outer={self.outer}")
        check_positive(self.pixel_size, "pixel_size", "Å")

    @property
    def defocus(self) -> float:
        """abTEM-style defocus [Å], ``defocus = -C10``."""
        return -self.C10

    @property
    def C30(self) -> float:
        """Alias of ``Cs`` [Å]."""
        return self.Cs

    @property
    def wavelength(self) -> float:
        """Relativistic electron wavelength [Å]."""
        return electron_wavelength(self.energy)


#: Table 2.1 of Friedrich (2023): MULTEM settings of the bulk, dislocation and nanoparticle studies.
PRESETS: dict[str, ProbeParams] = {
    "bulk": ProbeParams(300e3, 21.1, -88.74, 0.04e7, 10e7, 0.7, 60.0, 190.0, 0.15),
    "dislocation": ProbeParams(300e3, 21.1, -88.74, 0.04e7, 10e7, 0.7, 60.0, 190.0, 0.16),
    "particle": ProbeParams(300e3, 21.0, -108.68, 0.04e7, 10e7, 0.75, 42.0, 220.0, 0.12),
}


def _check_shape(shape) -> tuple[int, int]:
    """Image shape must be two integers >= 3."""
    try:
        h, w = (int(s) for s in shape)
    except Exception as exc:
        raise ValueError(f"shape must be (H, W) with two integers [pixels], got {shape!r}") from exc
    if h < 3 or w < 3 or (h, w) != tuple(shape):
        raise ValueError(f"shape must be (H, W) with integers >= 3 [pixels], got {shape!r}")
    return h, w


def aberration_phase(params: ProbeParams, alpha: np.ndarray) -> np.ndarray:
    """Aberration phase chi(alpha) [rad] for scattering angles ``alpha`` [rad] (round aberrations only)."""
    lam = params.wavelength
    a2 = alpha**2
    return 2 * np.pi / lam * (params.C10 * a2 / 2 + params.Cs * a2**2 / 4 + params.C50 * a2**3 / 6)


def _probe_wave_intensity(params: ProbeParams, shape: tuple[int, int], pixel_size: float) -> np.ndarray:
    """Coherent probe intensity |psi|^2 on a periodic grid, centred at pixel (H//2, W//2), unit sum."""
    h, w = shape
    lam = params.wavelength
    ky = np.fft.fftfreq(h, d=pixel_size)
    kx = np.fft.fftfreq(w, d=pixel_size)
    k = np.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    alpha = k * lam
    cutoff = params.semiangle_cutoff * 1e-3
    kmax = 0.5 / pixel_size
    if cutoff / lam > kmax:
        raise ValueError(
            f"pixel_size={pixel_size} Å is too coarse for the {params.semiangle_cutoff} mrad aperture: "
            f"the grid reaches {kmax * lam * 1e3:.1f} mrad; use pixel_size <= {0.5 * lam / cutoff:.3f} Å"
        )
    aperture = (alpha <= cutoff).astype(np.float64)
    psi_k = aperture * np.exp(-1j * aberration_phase(params, alpha))
    # shift the probe to the central pixel
    yy = (h // 2) * pixel_size
    xx = (w // 2) * pixel_size
    psi_k = psi_k * np.exp(-2j * np.pi * (ky[:, None] * yy + kx[None, :] * xx))
    psi = np.fft.ifft2(psi_k)
    inten = np.abs(psi) ** 2
    return inten / inten.sum()


def _gaussian_blur_periodic(image: np.ndarray, sigma: float, pixel_size: float) -> np.ndarray:
    """Convolve with a normalised Gaussian of std ``sigma`` [Å] via FFT (periodic boundaries)."""
    if sigma <= 0:
        return image
    h, w = image.shape
    ky = np.fft.fftfreq(h, d=pixel_size)
    kx = np.fft.rfftfreq(w, d=pixel_size)
    g = np.exp(-2 * np.pi**2 * sigma**2 * (ky[:, None] ** 2 + kx[None, :] ** 2))
    return np.fft.irfft2(np.fft.rfft2(image) * g, s=(h, w))


def probe_intensity(params: ProbeParams, shape: tuple[int, int], pixel_size: float, *,
                    source_size: bool = True) -> np.ndarray:
    """Effective (incoherent) probe intensity on a grid, centred and normalised to unit sum.

    The coherent probe ``psi = IFT[A(k) exp(-i chi(k))]`` with a sharp aperture ``A`` of semi-angle
    ``semiangle_cutoff`` and the round aberrations C10, C30 (=Cs), C50 (see ``ProbeParams``) is squared and,
    if ``source_size`` is True, convolved with the Gaussian source-size broadening of FWHM
    ``source_size_fwhm`` (Friedrich 2023, Sec. 2.3 and Table 2.1).

    Parameters
    ----------
    params : ProbeParams
        Microscope settings, e.g. ``PRESETS["particle"]``.
    shape : tuple of int
        Grid shape ``(H, W)`` [pixels]. The grid is periodic: choose it larger than the probe tails you need.
    pixel_size : float
        Sampling [Å]; must resolve the aperture (``pixel_size <= lambda / (2 alpha)``).
    source_size : bool, optional
        Apply the Gaussian source-size broadening. Default True.

    Returns
    -------
    probe : ndarray, shape (H, W)
        Non-negative intensity with unit sum; the probe centre is the centre of pixel ``(H // 2, W // 2)``.

    Examples
    --------
    >>> p = probe_intensity(PRESETS["particle"], (64, 64), 0.12)
    >>> round(float(p.sum()), 6)
    1.0
    """
    if not isinstance(params, ProbeParams):
        raise TypeError(f"params must be a ProbeParams (e.g. PRESETS['bulk']), got {type(params).__name__}")
    shape = _check_shape(shape)
    pixel_size = check_pixel_size(pixel_size)
    inten = _probe_wave_intensity(params, shape, pixel_size)
    if source_size:
        inten = _gaussian_blur_periodic(inten, fwhm_to_sigma(params.source_size_fwhm), pixel_size)
    inten = np.clip(inten, 0.0, None)
    return inten / inten.sum()
