"""abTEM multislice backend (optional extra ``sim``): SCS thickness series and full HAADF images.

Everything here imports abTEM lazily so that ``stemquant.simulate`` works without it.
"""

from __future__ import annotations

import numbers

import numpy as np

from stemquant._validate import check_pixel_size, check_positive
from stemquant.units import fwhm_to_sigma

from ._probe import ProbeParams

#: Default r.m.s. thermal displacement of Pt per Cartesian direction [Å]: sqrt(B / (8 pi^2)) with the
#: room-temperature Debye-Waller factor B = 0.31 Å^2 (choice documented in docs/simulation.md).
PT_PHONON_SIGMA = 0.0627


def _require_abtem():
    """Import abTEM or raise an ImportError naming the extra to install."""
    try:
        import abtem
    except ImportError as exc:  # pragma: no cover - exercised only without abtem
        raise ImportError("the abTEM backend needs abtem: pip install 'stemquant[sim]'") from exc
    return abtem


def _abtem_device(device: str) -> str:
    """Map stemquant device names to abTEM's ('cpu' | 'gpu')."""
    if device not in ("cpu", "gpu", "cuda", "auto"):
        raise ValueError(f"device must be 'cpu', 'gpu'/'cuda' or 'auto', got {device!r}")
    if device == "auto":
        try:
            import cupy  # noqa: F401
            return "gpu"
        except ImportError:
            return "cpu"
    return "gpu" if device in ("gpu", "cuda") else "cpu"


def _check_int(value, name: str, lo: int = 1) -> int:
    """Check an integer option >= lo."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    return int(value)


def _check_sampling(params: ProbeParams, sampling: float) -> float:
    """The potential sampling must resolve the detector's outer angle inside abTEM's 2/3 antialias limit."""
    sampling = check_positive(sampling, "sampling", "Å")
    max_angle = 2 / 3 * 0.5 / sampling * params.wavelength * 1e3
    if max_angle < params.outer:
        raise ValueError(
            f"sampling={sampling} Å only reaches {max_angle:.0f} mrad after antialiasing but the detector "
            f"extends to outer={params.outer} mrad; use sampling <= "
            f"{2 / 3 * 0.5 * params.wavelength * 1e3 / params.outer:.4f} Å"
        )
    return sampling


def _seeds(seed: int, num_configs: int):
    """One seed per frozen-phonon configuration (abTEM takes an int for one configuration)."""
    return [int(seed) + i for i in range(num_configs)] if num_configs > 1 else int(seed)


def _abtem_probe(abtem, params: ProbeParams, device: str):
    """abTEM Probe with the round aberrations of ``params`` (abTEM uses C10 = -defocus, same as we do)."""
    return abtem.Probe(energy=params.energy, semiangle_cutoff=params.semiangle_cutoff, C10=params.C10,
                       C30=params.Cs, C50=params.C50, device=device)


def abtem_scs_series(params: ProbeParams, *, max_cells: int, seed: int, num_configs: int = 1,
                     sigma: float = PT_PHONON_SIGMA, lateral_cells: int = 5, sampling: float = 0.0295,
                     scan_gpts: int = 7, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """SCS of one Pt [001] column vs thickness from an abTEM frozen-phonon multislice run.

    One multislice run through ``max_cells`` unit cells records the HAADF signal at every unit-cell exit
    plane. The probe scans the ``a/2 x a/2`` Voronoi cell of the column at the supercell centre on a
    ``scan_gpts``-square grid (no endpoint); the SCS is the mean detected fraction times the cell area
    ``(a/2)^2`` (the integral of eq. (2.20) of Friedrich (2023) over the column's cell). Uniform grid means
    are exact for a band-limited signal when the step is below ``lambda / (2 alpha)``; 7 points over 1.96 Å
    (0.28 Å) satisfy this.

    Parameters
    ----------
    params : ProbeParams
        Probe and detector settings (``PRESETS["bulk"]`` or ``PRESETS["particle"]``).
    max_cells : int
        Largest thickness [unit cells]; exit planes at 1 ... max_cells cells.
    seed : int
        Seed of the frozen-phonon displacements.
    num_configs : int, optional
        Frozen-phonon configurations averaged in this call. Default 1.
    sigma : float, optional
        R.m.s. displacement per Cartesian direction [Å]. Default 0.0627.
    lateral_cells : int, optional
        Supercell size in unit cells along x and y. Default 5 (19.6 Å).
    sampling : float, optional
        Potential/wave sampling [Å]; must reach the detector outer angle. Default 0.0295.
    scan_gpts : int, optional
        Scan points per direction over the column cell. Default 7.
    device : {"cpu", "gpu", "cuda", "auto"}
        abTEM device.

    Returns
    -------
    n_atoms : ndarray of int, shape (max_cells,)
        Atoms in the column (= unit cells, 1 ... max_cells).
    scs : ndarray, shape (max_cells,)
        Scattering cross-section [Å²] (fraction of the beam times Å²).
    """
    abtem = _require_abtem()
    from stemquant.structures import pt_bulk
    from stemquant.structures._bulk import PT_LATTICE_CONSTANT as a

    max_cells = _check_int(max_cells, "max_cells")
    num_configs = _check_int(num_configs, "num_configs")
    lateral_cells = _check_int(lateral_cells, "lateral_cells")
    scan_gpts = _check_int(scan_gpts, "scan_gpts")
    sampling = _check_sampling(params, sampling)
    dev = _abtem_device(device)

    atoms = pt_bulk(max_cells, repeat=(lateral_cells, lateral_cells))
    centre = (lateral_cells // 2) * a  # a corner-type column (its first atom is in the first slice)
    frozen = abtem.FrozenPhonons(atoms, num_configs=num_configs, sigmas=float(sigma),
                                 seed=_seeds(seed, num_configs))
    potential = abtem.Potential(frozen, sampling=sampling, slice_thickness=a / 2, exit_planes=2,
                                projection="infinite", device=dev)
    probe = _abtem_probe(abtem, params, dev)
    half = a / 4
    scan = abtem.GridScan(start=(centre - half, centre - half), end=(centre + half, centre + half),
                          gpts=scan_gpts, endpoint=False)
    detector = abtem.AnnularDetector(inner=params.inner, outer=params.outer)
    meas = probe.scan(potential, scan=scan, detectors=detector)
    arr = np.asarray(meas.compute(scheduler="single-threaded", progress_bar=False).array, dtype=np.float64)
    arr = arr.reshape(arr.shape[0], -1) if arr.ndim == 3 else arr.reshape(1, -1)
    thickness = np.asarray(potential.exit_thicknesses, dtype=np.float64)
    n_cells = np.rint(thickness / a).astype(int)
    keep = n_cells >= 1
    scs = arr.mean(axis=1) * (a / 2) ** 2
    return n_cells[keep], scs[keep]


def simulate_haadf_abtem(atoms, params: ProbeParams, *, pixel_size: float, num_configs: int = 4,
                         seed: int = 0, sigma: float = PT_PHONON_SIGMA, sampling: float = 0.0295,
                         slice_thickness: float = 1.96, device: str = "cpu") -> np.ndarray:
    """Full frozen-phonon HAADF image of ``atoms`` with abTEM (normalised intensity, fraction of the beam).

    The probe scans the whole periodic cell with step ``pixel_size`` (pixel centres at ``(j + 0.5) p``, see
    docs/conventions.md); the image is then convolved with the Gaussian source-size broadening
    (Friedrich 2023, Sec. 2.3).

    Parameters
    ----------
    atoms : ase.Atoms
        Specimen with the beam along z; its cell sets the field of view.
    params : ProbeParams
        Probe and detector settings.
    pixel_size : float
        Scan step [Å].
    num_configs, seed, sigma, sampling, slice_thickness, device
        Frozen-phonon configurations, their seed, r.m.s. displacement [Å], potential sampling [Å], slice
        thickness [Å] and abTEM device.

    Returns
    -------
    image : ndarray, shape (H, W)
        ``H = round(cell_y / pixel_size)``, ``W = round(cell_x / pixel_size)``.
    """
    abtem = _require_abtem()
    pixel_size = check_pixel_size(pixel_size)
    sampling = _check_sampling(params, sampling)
    num_configs = _check_int(num_configs, "num_configs")
    dev = _abtem_device(device)
    full = np.asarray(atoms.cell)
    if not np.allclose(full, np.diag(np.diag(full))) or np.any(np.diag(full) <= 0):
        raise ValueError("atoms must have an orthogonal cell with positive lengths [Å] (beam along z); "
                         f"got cell {full.tolist()}")
    cell = np.diag(full)[:2]
    w, h = (max(int(round(c / pixel_size)), 3) for c in cell)
    frozen = abtem.FrozenPhonons(atoms, num_configs=num_configs, sigmas=float(sigma),
                                 seed=_seeds(seed, num_configs))
    potential = abtem.Potential(frozen, sampling=sampling, slice_thickness=slice_thickness, device=dev)
    probe = _abtem_probe(abtem, params, dev)
    scan = abtem.GridScan(start=(pixel_size / 2, pixel_size / 2),
                          end=(pixel_size / 2 + w * pixel_size, pixel_size / 2 + h * pixel_size),
                          gpts=(w, h), endpoint=False)
    detector = abtem.AnnularDetector(inner=params.inner, outer=params.outer)
    meas = probe.scan(potential, scan=scan, detectors=detector)
    img = np.asarray(meas.compute(scheduler="single-threaded", progress_bar=False).array, dtype=np.float64).T
    from ._probe import _gaussian_blur_periodic

    return _gaussian_blur_periodic(img, fwhm_to_sigma(params.source_size_fwhm), pixel_size)
