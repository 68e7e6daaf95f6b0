"""Image and table I/O: load/save images with their pixel size [Å], atomic writes.

Supported image formats
-----------------------
==================  =========================================================================================
extension           how
==================  =========================================================================================
``.npy``            numpy (no pixel size is stored; :func:`load_image` returns ``None``)
``.tif``/``.tiff``  tifffile; pixel size from (1) the JSON description written by :func:`save_image`
                    (``pixel_size`` in Å), (2) ImageJ metadata (``unit`` + X resolution), (3) the TIFF
                    ``XResolution``/``ResolutionUnit`` tags (centimetre or inch; a pixel > 1 µm is a print
                    resolution such as 150 dpi, not a calibration: ``None`` with a warning)
``.h5``/``.hdf5``   h5py; dataset ``"image"`` or the only 2-D/3-D dataset; attribute ``pixel_size`` [Å] on the
                    dataset or on the file root (an optional ``pixel_size_unit`` attribute is honoured)
``.dm3`` ``.dm4``   rosettasciio (``pip install "stemquant[io]"``); the pixel size is read from the calibrated
``.ser`` ``.emd``   signal axes and converted to Å (nm, pm, µm are recognised)
``.hspy`` ``.mrc``
``.blo`` ``.unf``
==================  =========================================================================================

Writing is atomic: data go to a temporary file in the destination directory which is then moved into place
with ``os.replace`` (or ``os.link`` when overwriting is forbidden, so a file created concurrently is never
clobbered).
:func:`atomic_write` and :func:`write_csv_atomic` are public so that the CLI and other modules reuse them.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np

__all__ = [
    "OverwriteError",
    "atomic_write",
    "check_image_suffix",
    "check_outputs",
    "load_image",
    "save_image",
    "write_csv_atomic",
    "IMAGE_EXTENSIONS",
]

_NATIVE_EXTENSIONS = (".npy", ".tif", ".tiff", ".h5", ".hdf5")
_RSCIIO_EXTENSIONS = {
    ".dm3": "digitalmicrograph",
    ".dm4": "digitalmicrograph",
    ".ser": "tia",
    ".emd": "emd",
    ".hspy": "hspy",
    ".mrc": "mrc",
    ".blo": "blockfile",
    ".unf": "semper",
}
#: Every extension :func:`load_image` understands (rosettasciio formats need the ``io`` extra).
IMAGE_EXTENSIONS = _NATIVE_EXTENSIONS + tuple(_RSCIIO_EXTENSIONS)

# Length units -> Å. Keys are lower-cased and stripped.
_LENGTH_TO_ANGSTROM = {
    "å": 1.0, "a": 1.0, "angstrom": 1.0, "angstroms": 1.0, "\u212b": 1.0, "ang": 1.0,
    "nm": 10.0, "nanometer": 10.0, "nanometre": 10.0, "nanometers": 10.0,
    "pm": 0.01, "picometer": 0.01, "picometre": 0.01,
    "µm": 1.0e4, "μm": 1.0e4, "um": 1.0e4, "micron": 1.0e4, "microns": 1.0e4, "micrometer": 1.0e4,
    "\\u00b5m": 1.0e4, "mm": 1.0e7, "cm": 1.0e8, "m": 1.0e10,
}
_CM_IN_ANGSTROM = 1.0e8
#: Largest pixel size [Å] (1 µm) taken from TIFF resolution tags; larger ones are print resolutions (dpi).
_MAX_CALIBRATED_PIXEL = 1.0e4
_INCH_IN_ANGSTROM = 2.54e8


class OverwriteError(FileExistsError, ValueError):
    """The destination exists and ``overwrite=False``. Subclasses both FileExistsError and ValueError."""


class _ReadError(ValueError):
    """A readable file whose content we reject (our own message; passed through unwrapped)."""


# --------------------------------------------------------------------------------------------------- writing
@contextlib.contextmanager
def atomic_write(path, *, overwrite: bool = False) -> Iterator[Path]:
    """Context manager yielding a temporary path that replaces ``path`` atomically on success.

    The temporary file lives in the destination directory and keeps the destination's extension (so libraries
    that dispatch on the suffix, e.g. ``np.save``, behave). On an exception the temporary file is removed and
    ``path`` is untouched.

    Parameters
    ----------
    path : str or Path
        Destination file. Its directory must exist.
    overwrite : bool, optional
        Replace an existing ``path``. When False (default) an existing file raises :class:`OverwriteError`,
        both before writing and — if another process created it meanwhile — at the final move.

    Yields
    ------
    tmp : Path
        Where to write the data.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> with atomic_write(os.path.join(d, "a.npy")) as tmp:
    ...     np.save(tmp, np.zeros(3))
    >>> np.load(os.path.join(d, "a.npy")).shape
    (3,)
    """
    path = Path(path)
    _check_writable(path, overwrite)
    tmp = _new_temp(path)
    try:
        yield tmp
        if overwrite:
            os.replace(tmp, path)
        else:
            _link_no_clobber(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _new_temp(path: Path) -> Path:
    """A new empty file next to ``path``. Created with mode 0666 so that the kernel applies the umask, as for any
    new file (``tempfile.mkstemp`` makes it private, 0600, and reading the umask back is racy)."""
    for _ in range(100):
        tmp = path.parent / f".{path.stem}.{secrets.token_hex(4)}.tmp{path.suffix}"
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"could not create a temporary file next to {str(path)!r}")


def _check_writable(path: Path, overwrite: bool) -> None:
    """Raise clear errors for a missing directory, a directory target or a forbidden overwrite."""
    if not path.parent.is_dir():
        raise FileNotFoundError(
            f"directory {str(path.parent)!r} does not exist; create it before writing {path.name}"
        )
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give a file name")
    if path.exists() and not overwrite:
        raise OverwriteError(f"{str(path)!r} already exists; pass overwrite=True (--overwrite) to replace it")


def check_outputs(*paths, overwrite: bool, inputs=()) -> None:
    """Refuse before any long work when an output cannot be written: a missing or read-only directory, a
    directory given as a file, an existing file without ``overwrite``, two outputs naming one file, or an output
    that is one of the ``inputs`` — never replaced, even with ``overwrite`` (None entries are skipped). The
    atomic writers check again."""
    ins = [Path(p) for p in inputs if p]
    seen: list[Path] = []
    for p in paths:
        if not p:
            continue
        path = Path(p)
        for q in ins:  # first: "exists, pass --overwrite" would be the wrong advice
            if _same_file(path, q):
                raise ValueError(f"output {str(path)!r} is the input file {str(q)!r}: stemquant never overwrites "
                                 "its inputs (not even with --overwrite); choose another output name")
        _check_writable(path, overwrite)
        try:  # a real probe: permission bits do not tell root about read-only or virtual file systems
            with tempfile.TemporaryFile(dir=path.parent):
                pass
        except OSError as exc:
            raise PermissionError(f"cannot write {str(path)!r}: no file can be created in {str(path.parent)!r} "
                                  f"({exc.strerror or exc})") from None
        for q in seen:
            if _same_file(path, q):
                raise ValueError(f"two outputs name the same file {str(path)!r}; give them different names")
        seen.append(path)


def _same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file (links and relative paths resolved; a missing file only by its path)."""
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def _link_no_clobber(tmp: Path, path: Path) -> None:
    """Move ``tmp`` to ``path``, failing if ``path`` exists (hard link; replace if links are unsupported)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OverwriteError(
            f"{str(path)!r} was created while writing; pass overwrite=True to replace it"
        ) from None
    except OSError:  # file systems without hard links: best effort check-then-replace
        if path.exists():
            raise OverwriteError(f"{str(path)!r} already exists; pass overwrite=True to replace it") from None
        os.replace(tmp, path)


def write_csv_atomic(df, path, *, overwrite: bool = False, index: bool = False) -> Path:
    """Write a pandas DataFrame to CSV atomically (see :func:`atomic_write`).

    Parameters
    ----------
    df : pandas.DataFrame
        Table to write.
    path : str or Path
        Destination ``.csv`` file.
    overwrite : bool, optional
        Replace an existing file (default False: raise :class:`OverwriteError`).
    index : bool, optional
        Write the DataFrame index (default False).

    Returns
    -------
    path : Path
        The written file.
    """
    if not hasattr(df, "to_csv"):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as tmp:
        df.to_csv(tmp, index=index)
    return path


def check_image_suffix(path) -> str:
    """The lower-case extension of an image output path if :func:`save_image` can write it (ValueError
    otherwise), so that callers can refuse a bad name before long work."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in _NATIVE_EXTENSIONS:
        raise ValueError(
            f"cannot write extension {path.suffix!r} (path {str(path)!r}); "
            f"use one of {', '.join(_NATIVE_EXTENSIONS)}"
        )
    return ext


def save_image(path, image, pixel_size: float | None = None, *, overwrite: bool = False) -> Path:
    """Save an image (and its pixel size) atomically as ``.npy``, ``.tif``/``.tiff`` or ``.h5``/``.hdf5``.

    Parameters
    ----------
    path : str or Path
        Destination; the extension selects the format. ``.npy`` cannot store a pixel size (a warning is issued
        when one is given).
    image : ndarray, shape (H, W) or (B, H, W)
        Image or stack, written with its dtype unchanged (no rescaling).
    pixel_size : float or None, optional
        Pixel size [Å]. TIFF: JSON description ``{"pixel_size": p, "unit": "Å"}`` plus ``XResolution`` /
        ``YResolution`` in pixels per centimetre (omitted when p < 0.05 Å, which overflows the tag).
        HDF5: attribute ``pixel_size`` on dataset ``"image"``.
    overwrite : bool, optional
        Replace an existing file (default False: raise :class:`OverwriteError`).

    Returns
    -------
    path : Path
        The written file.
    """
    path = Path(path)
    arr = np.asarray(image)
    if arr.ndim not in (2, 3) or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise ValueError(
            f"image must be a numeric array of shape (H, W) or (B, H, W), got {arr.dtype} {arr.shape}"
        )
    if pixel_size is not None:
        from stemquant._validate import check_pixel_size

        pixel_size = check_pixel_size(pixel_size)
    ext = check_image_suffix(path)
    with atomic_write(path, overwrite=overwrite) as tmp:
        if ext == ".npy":
            if pixel_size is not None:
                warnings.warn(f".npy cannot store pixel_size={pixel_size} Å; use .tif or .h5 to keep it",
                              UserWarning, stacklevel=2)
            np.save(tmp, arr, allow_pickle=False)
        elif ext in (".tif", ".tiff"):
            _write_tiff(tmp, arr, pixel_size)
        else:
            _write_h5(tmp, arr, pixel_size)
    return path


def _write_tiff(tmp: Path, arr: np.ndarray, pixel_size: float | None) -> None:
    """Write a TIFF with a JSON description (pixel size in Å) and resolution tags in pixels/cm."""
    import tifffile

    kwargs = {}
    meta = {"unit": "Å"}
    if pixel_size is not None:
        meta["pixel_size"] = pixel_size
        ppcm = _CM_IN_ANGSTROM / pixel_size
        if ppcm < 2**31:  # RATIONAL tags hold uint32; below ~0.05 Å only the JSON description carries it
            kwargs = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
    tifffile.imwrite(tmp, arr, metadata=meta, photometric="minisblack", **kwargs)


def _write_h5(tmp: Path, arr: np.ndarray, pixel_size: float | None) -> None:
    """Write dataset ``image`` with attributes ``pixel_size`` [Å] and ``pixel_size_unit``."""
    import h5py

    with h5py.File(tmp, "w") as f:
        dset = f.create_dataset("image", data=arr)
        if pixel_size is not None:
            dset.attrs["pixel_size"] = pixel_size
            dset.attrs["pixel_size_unit"] = "Å"


# --------------------------------------------------------------------------------------------------- reading
def load_image(path) -> tuple[np.ndarray, float | None]:
    """Load an image and its pixel size [Å] if the file records one.

    Parameters
    ----------
    path : str or Path
        File with one of the extensions in :data:`IMAGE_EXTENSIONS` (see the module docstring for how each
        format stores the pixel size).

    Returns
    -------
    image : ndarray, shape (H, W) or (B, H, W)
        The data with the file's dtype (detector counts are never rescaled).
    pixel_size : float or None
        Pixel size [Å], or None if the file carries no length calibration.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        Unsupported extension, unreadable/corrupt file, no 2-D/3-D image in it, or a rosettasciio format
        without the ``io`` extra installed.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a directory; give an image file")
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ValueError(
            f"unsupported image extension {path.suffix!r} for {str(path)!r}; "
            f"supported: {', '.join(IMAGE_EXTENSIONS)}"
        )
    try:
        if ext == ".npy":
            image, pixel_size = _read_npy(path), None
        elif ext in (".tif", ".tiff"):
            image, pixel_size = _read_tiff(path)
        elif ext in (".h5", ".hdf5"):
            image, pixel_size = _read_h5(path)
        else:
            image, pixel_size = _read_rsciio(path, _RSCIIO_EXTENSIONS[ext])
    except (_ReadError, FileNotFoundError):
        raise
    except Exception as exc:  # corrupt files raise all sorts of library errors
        raise ValueError(f"could not read {str(path)!r} as {ext} ({type(exc).__name__}: {exc})") from exc
    image = np.asarray(image)
    if image.ndim not in (2, 3):
        raise ValueError(f"{str(path)!r} holds an array of shape {image.shape}; expected (H, W) or (B, H, W)")
    if image.ndim == 3 and image.shape[-1] in (3, 4) and image.shape[0] > 4:
        # (H, W, 3/4) is a colour picture; read as a stack it would be H frames of W x 3 pixels
        raise ValueError(f"{str(path)!r} holds an array of shape {image.shape}: an RGB(A) colour image, not a "
                         "detector signal; give the single-channel image (a stack is (B, H, W))")
    if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool) or np.iscomplexobj(image):
        raise ValueError(f"{str(path)!r} holds {image.dtype} data; expected a real-valued numeric image")
    return image, pixel_size


def _read_npy(path: Path) -> np.ndarray:
    # np.load takes any file without the NumPy header for a pickle and says "pickled data": name the real problem
    with open(path, "rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise _ReadError(f"{str(path)!r} is not a .npy file (no NumPy header): corrupt or another format")
    return np.load(path, allow_pickle=False)


def _read_tiff(path: Path) -> tuple[np.ndarray, float | None]:
    """Read a TIFF and its pixel size (JSON description, ImageJ unit, or resolution tags)."""
    import tifffile

    with tifffile.TiffFile(path) as tf:
        _check_tiff_signal(tf.pages.first, path)
        image = tf.asarray()
        shaped = tf.shaped_metadata
        if shaped and "pixel_size" in shaped[0]:
            unit = shaped[0].get("unit", "Å")
            return image, _to_angstrom(float(shaped[0]["pixel_size"]), unit, path)
        page = tf.pages.first
        xres = page.tags.get("XResolution")
        yres = page.tags.get("YResolution")
        runit = page.tags.get("ResolutionUnit")
        if xres is None:
            return image, None
        px_per_unit = _rational(xres.value)
        if yres is not None and not np.isclose(_rational(yres.value), px_per_unit, rtol=1e-6):
            warnings.warn(f"{path.name}: X and Y resolution differ; using the X resolution", UserWarning,
                          stacklevel=3)
        ij = tf.imagej_metadata or {}
        unit_code = int(runit.value) if runit is not None else 2
        ij_unit = str(ij.get("unit", "")).strip()
        if ij_unit:  # ImageJ's own calibration wins over the TIFF resolution unit
            if ij_unit.lower() in ("pixel", "pixels", "px", "inch", "inches"):
                return image, None
            try:
                return image, _to_angstrom(1.0 / px_per_unit, ij_unit, path)
            except ValueError:
                warnings.warn(f"{path.name}: ImageJ unit {ij_unit!r} is not a length; pixel size unknown",
                              UserWarning, stacklevel=3)
                return image, None
        if unit_code == 3:
            p = _CM_IN_ANGSTROM / px_per_unit
        elif unit_code == 2:
            p = _INCH_IN_ANGSTROM / px_per_unit
        else:
            return image, None
        if p > _MAX_CALIBRATED_PIXEL:
            # inch is the TIFF default, and image editors write print resolutions (72, 150, 300 dpi...): a
            # pixel of more than 1 µm is a print size, not the calibration of an atomic-resolution image
            warnings.warn(f"{path.name}: the TIFF resolution ({px_per_unit:g} pixels per "
                          f"{'cm' if unit_code == 3 else 'inch'}) is a print resolution, not a calibration; "
                          "pixel size unknown (pass it explicitly)", UserWarning, stacklevel=3)
            return image, None
        return image, p


def _check_tiff_signal(page, path: Path) -> None:
    """Refuse TIFFs whose pixel values are not one signal: colour (RGB and the like, interleaved or planar — a
    planar one would read as a 3-frame stack), several samples per pixel (e.g. two detectors, grey + alpha),
    inverted grey (MINISWHITE) and colour palettes. A grey palette whose map is a linear ramp (8-bit "grey"
    TIFFs from image tools) holds the grey levels as indices: accepted."""
    import tifffile

    ph = tifffile.PHOTOMETRIC
    name = getattr(page.photometric, "name", str(page.photometric))
    if page.samplesperpixel > 1:
        stack = (" (tifffile writes a 3- or 4-frame stack as planar RGB unless given photometric='minisblack': "
                 "rewrite it so)") if page.samplesperpixel in (3, 4) and page.planarconfig == 2 else ""
        raise _ReadError(f"{str(path)!r} has {page.samplesperpixel} samples per pixel ({name}: colour, channels or "
                         f"alpha), not one detector signal; save each channel as its own single-channel image{stack}")
    if page.photometric == ph.PALETTE:
        cmap = np.asarray(page.colormap, dtype=np.float64)
        ramp = np.linspace(cmap[0, 0], cmap[0, -1], cmap.shape[1])
        if not (np.array_equal(cmap[0], cmap[1]) and np.array_equal(cmap[0], cmap[2])
                and np.allclose(cmap[0], ramp, atol=1.0) and cmap[0, -1] > cmap[0, 0]):
            raise _ReadError(f"{str(path)!r} is a colour-palette TIFF (its values index a colour table), not a "
                             "detector signal; give the single-channel grey image")
    elif page.photometric != ph.MINISBLACK and page.tags.get("PhotometricInterpretation") is not None:
        # (a file without the tag reads as MINISWHITE in tifffile; such writers mean plain grey values)
        raise _ReadError(f"{str(path)!r} is a {name} TIFF, not a single-channel grey image (MINISBLACK) of the "
                         "detector signal; convert it without changing the values")


def _rational(value) -> float:
    """TIFF RATIONAL (num, den) -> float."""
    if isinstance(value, tuple):
        return float(value[0]) / float(value[1])
    return float(value)


def _read_h5(path: Path) -> tuple[np.ndarray, float | None]:
    """Read dataset ``image`` (or the only 2-D/3-D dataset) and attribute ``pixel_size``."""
    import h5py

    with h5py.File(path, "r") as f:
        if "image" in f and isinstance(f["image"], h5py.Dataset):
            dset = f["image"]
        else:
            found: list = []
            f.visititems(lambda name, obj: found.append(obj)
                         if isinstance(obj, h5py.Dataset) and obj.ndim in (2, 3) else None)
            if len(found) != 1:
                names = [d.name for d in found]
                raise _ReadError(
                    f"{str(path)!r} has no dataset named 'image' and {len(found)} 2-D/3-D datasets {names}; "
                    "rename the image dataset to 'image'"
                )
            dset = found[0]
        image = dset[()]
        for attrs in (dset.attrs, f.attrs):
            if "pixel_size" in attrs:
                unit = attrs.get("pixel_size_unit", "Å")
                unit = unit.decode() if isinstance(unit, bytes) else str(unit)
                return image, _to_angstrom(float(np.asarray(attrs["pixel_size"]).ravel()[0]), unit, path)
    return image, None


def _read_rsciio(path: Path, plugin: str) -> tuple[np.ndarray, float | None]:
    """Read a microscope file through rosettasciio; pixel size from the last (x) signal axis."""
    import importlib

    try:
        module = importlib.import_module(f"rsciio.{plugin}")
    except ImportError:
        raise _ReadError(
            f"reading {path.suffix} files needs rosettasciio; install it with pip install \"stemquant[io]\""
        ) from None
    signals = module.file_reader(str(path))
    for sig in signals:
        data = np.asarray(sig["data"])
        if data.ndim in (2, 3):
            axes = sig.get("axes", [])
            sig_axes = [ax for ax in axes if not ax.get("navigate", False)] or axes
            if not sig_axes:
                return data, None
            ax = sig_axes[-1]
            units = ax.get("units")
            scale = ax.get("scale")
            if scale is None or units in (None, "", "<undefined>", "px", "pixel", "pixels"):
                return data, None
            try:
                return data, _to_angstrom(float(scale), str(units), path)
            except ValueError:
                warnings.warn(f"{path.name}: axis unit {units!r} is not a length; pixel size unknown",
                              UserWarning, stacklevel=3)
                return data, None
    raise _ReadError(f"{str(path)!r} contains no 2-D or 3-D image signal")


def _to_angstrom(value: float, unit: str, path: Path) -> float:
    """Convert a length ``value`` in ``unit`` to Å."""
    key = unit.strip().lower().replace("\\u00c5", "å")
    if key not in _LENGTH_TO_ANGSTROM:
        raise _ReadError(
            f"{path.name}: unknown length unit {unit!r} for the pixel size; expected Å, nm, pm or µm"
        )
    p = value * _LENGTH_TO_ANGSTROM[key]
    if not np.isfinite(p) or p <= 0:
        raise _ReadError(f"{path.name}: pixel size {value} {unit} is not a positive length")
    return p

