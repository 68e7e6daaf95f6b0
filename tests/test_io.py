"""Tests for stemquant.io: image load/save with pixel size, atomic writes, error cases."""

import importlib

import h5py
import numpy as np
import pandas as pd
import pytest
import tifffile

from stemquant.io import OverwriteError, atomic_write, load_image, save_image, write_csv_atomic


@pytest.fixture
def image(rng):
    return rng.random((37, 31))


@pytest.mark.parametrize("ext", [".tif", ".tiff", ".h5", ".hdf5"])
@pytest.mark.parametrize("pixel_size", [0.1234567, 0.013, 3.7])
def test_roundtrip_with_pixel_size(tmp_path, image, ext, pixel_size):
    path = save_image(tmp_path / f"img{ext}", image, pixel_size)
    out, p = load_image(path)
    np.testing.assert_array_equal(out, image)
    assert out.dtype == image.dtype
    assert p == pytest.approx(pixel_size, rel=1e-12)


@pytest.mark.parametrize("ext", [".npy", ".tif", ".h5"])
def test_roundtrip_counts_stack_without_pixel_size(tmp_path, rng, ext):
    stack = rng.poisson(50, size=(3, 17, 19)).astype(np.uint16)  # detector counts keep their dtype
    out, p = load_image(save_image(tmp_path / f"s{ext}", stack))
    np.testing.assert_array_equal(out, stack)
    assert out.dtype == np.uint16 and p is None


def test_npy_warns_that_pixel_size_is_dropped(tmp_path, image):
    with pytest.warns(UserWarning, match="cannot store pixel_size"):
        save_image(tmp_path / "a.npy", image, 0.2)
    assert load_image(tmp_path / "a.npy")[1] is None


def test_foreign_tiff_calibrations(tmp_path, image):
    # ImageJ: unit in the description, X resolution in pixels per unit (0.05 nm pixels -> 0.5 Å)
    tifffile.imwrite(tmp_path / "ij.tif", image.astype(np.float32), imagej=True, resolution=(20.0, 20.0),
                     metadata={"unit": "nm"})
    assert load_image(tmp_path / "ij.tif")[1] == pytest.approx(0.5)
    tifffile.imwrite(tmp_path / "ij_um.tif", image.astype(np.float32), imagej=True, resolution=(1e3, 1e3),
                     metadata={"unit": "\\u00B5m"})  # ImageJ's escaped µ; 1 nm pixels -> 10 Å
    assert load_image(tmp_path / "ij_um.tif")[1] == pytest.approx(10.0)
    tifffile.imwrite(tmp_path / "ij_px.tif", image.astype(np.float32), imagej=True,
                     metadata={"unit": "pixel"})
    assert load_image(tmp_path / "ij_px.tif")[1] is None
    # plain TIFF with resolution in pixels per centimetre (1e8 Å per cm)
    tifffile.imwrite(tmp_path / "cm.tif", image, resolution=(1e8 / 0.25, 1e8 / 0.25),
                     resolutionunit="CENTIMETER", metadata=None)
    assert load_image(tmp_path / "cm.tif")[1] == pytest.approx(0.25)
    # no calibration at all
    tifffile.imwrite(tmp_path / "plain.tif", image, metadata=None)
    assert load_image(tmp_path / "plain.tif")[1] is None
    # print resolutions from image editors (150 dpi = 1.7 mm pixels, 72 px/cm) are not calibrations
    for res, unit in ((150.0, "INCH"), (72.0, "CENTIMETER")):
        tifffile.imwrite(tmp_path / "print.tif", image, resolution=(res, res), resolutionunit=unit, metadata=None)
        with pytest.warns(UserWarning, match="print resolution"):
            assert load_image(tmp_path / "print.tif")[1] is None
    # an inch-calibrated microscope pixel (0.5 Å) is still read
    tifffile.imwrite(tmp_path / "inch.tif", image, resolution=(2.54e8 / 0.5,) * 2, resolutionunit="INCH",
                     metadata=None)
    assert load_image(tmp_path / "inch.tif")[1] == pytest.approx(0.5)


def test_colour_and_complex_files_are_refused(tmp_path, image):
    rgb = np.stack([image] * 3, axis=-1).astype(np.uint8)  # (H, W, 3): would read as H frames of W x 3 px
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    with pytest.raises(ValueError, match="samples per pixel"):
        load_image(tmp_path / "rgb.tif")
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb", planarconfig="separate")
    with pytest.raises(ValueError, match="samples per pixel"):  # would read as a (3, H, W) stack
        load_image(tmp_path / "planar.tif")
    # an 8-bit grey-palette TIFF (image tools write these) holds the grey levels: loaded as they are
    grey = rgb[..., 0]
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (3, 1))
    tifffile.imwrite(tmp_path / "pal.tif", grey, photometric="palette", colormap=ramp)
    np.testing.assert_array_equal(load_image(tmp_path / "pal.tif")[0], grey)
    tifffile.imwrite(tmp_path / "cpal.tif", grey, photometric="palette", colormap=ramp[::-1] * [[1], [0], [1]])
    with pytest.raises(ValueError, match="colour-palette"):
        load_image(tmp_path / "cpal.tif")
    np.save(tmp_path / "rgb.npy", rgb)
    with pytest.raises(ValueError, match="RGB"):
        load_image(tmp_path / "rgb.npy")
    np.save(tmp_path / "c.npy", image.astype(np.complex64))
    with pytest.raises(ValueError, match="real-valued"):
        load_image(tmp_path / "c.npy")


def test_h5_dataset_discovery_and_units(tmp_path, image):
    with h5py.File(tmp_path / "one.h5", "w") as f:
        d = f.create_dataset("data/haadf", data=image)
        d.attrs["pixel_size"] = 0.02
        d.attrs["pixel_size_unit"] = "nm"
        f.create_dataset("meta/angles", data=np.arange(3.0))  # 1-D: ignored
    out, p = load_image(tmp_path / "one.h5")
    np.testing.assert_array_equal(out, image)
    assert p == pytest.approx(0.2)
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f.create_dataset("a", data=image)
        f.create_dataset("b", data=image)
    with pytest.raises(ValueError, match="no dataset named 'image'"):
        load_image(tmp_path / "two.h5")


def test_refuses_to_overwrite(tmp_path, image):
    path = save_image(tmp_path / "a.tif", image, 0.2)
    with pytest.raises(OverwriteError, match="overwrite=True"):
        save_image(path, image * 2, 0.2)
    assert issubclass(OverwriteError, ValueError) and issubclass(OverwriteError, FileExistsError)
    np.testing.assert_array_equal(load_image(path)[0], image)  # untouched
    save_image(path, image * 2, 0.3, overwrite=True)
    out, p = load_image(path)
    np.testing.assert_array_equal(out, image * 2)
    assert p == pytest.approx(0.3)


def test_atomic_write_cleans_up_on_error(tmp_path):
    dest = tmp_path / "x.npy"
    np.save(dest, np.zeros(2))
    with pytest.raises(RuntimeError, match="boom"), atomic_write(dest, overwrite=True) as tmp:
        np.save(tmp, np.ones(5))
        raise RuntimeError("boom")
    np.testing.assert_array_equal(np.load(dest), np.zeros(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy"]  # no temporary file left behind


def test_write_csv_atomic(tmp_path):
    df = pd.DataFrame({"x": [1.0, 2.0], "y": [3.0, 4.0]})
    path = write_csv_atomic(df, tmp_path / "t.csv")
    pd.testing.assert_frame_equal(pd.read_csv(path), df)
    with pytest.raises(FileExistsError):
        write_csv_atomic(df, path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_csv_atomic(df, tmp_path / "missing_dir" / "t.csv")
    with pytest.raises(TypeError):
        write_csv_atomic([1, 2], tmp_path / "u.csv")


def test_read_errors(tmp_path, image):
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "nope.tif")
    (tmp_path / "a.png").write_bytes(b"x")
    with pytest.raises(ValueError, match="unsupported image extension"):
        load_image(tmp_path / "a.png")
    (tmp_path / "bad.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(ValueError, match="could not read"):
        load_image(tmp_path / "bad.tif")
    (tmp_path / "bad.h5").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="could not read"):
        load_image(tmp_path / "bad.h5")
    (tmp_path / "bad.npy").write_bytes(b"garbage")  # np.load alone would report "pickled data"
    with pytest.raises(ValueError, match="not a .npy file"):
        load_image(tmp_path / "bad.npy")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ValueError, match="Object arrays"):
        load_image(tmp_path / "obj.npy")
    np.save(tmp_path / "v.npy", np.arange(5.0))
    with pytest.raises(ValueError, match="expected"):
        load_image(tmp_path / "v.npy")
    with pytest.raises(ValueError, match="directory"):
        load_image(tmp_path)


def test_write_errors(tmp_path, image):
    with pytest.raises(ValueError, match="cannot write extension"):
        save_image(tmp_path / "a.png", image)
    with pytest.raises(ValueError, match="pixel_size"):
        save_image(tmp_path / "a.tif", image, pixel_size=-1.0)
    with pytest.raises(ValueError, match="shape"):
        save_image(tmp_path / "a.tif", np.arange(4.0))


def test_rosettasciio_hspy_in_nm(tmp_path, image):
    hspy = pytest.importorskip("rsciio.hspy")
    axes = [{"size": n, "scale": 0.02, "units": "nm", "name": name, "offset": 0.0, "navigate": False}
            for n, name in zip(image.shape, ("y", "x"), strict=True)]
    meta = {"General": {"title": "t"}, "Signal": {"signal_type": ""}}
    signal = {"data": image, "axes": axes, "metadata": meta,
              "original_metadata": {}, "tmp_parameters": {}, "attributes": {"_lazy": False},
              "learning_results": {}, "package_info": {"name": "stemquant", "version": "test"}, "models": {}}
    hspy.file_writer(str(tmp_path / "a.hspy"), signal)
    out, p = load_image(tmp_path / "a.hspy")
    np.testing.assert_array_equal(out, image)
    assert p == pytest.approx(0.2)  # 0.02 nm -> 0.2 Å


def test_rosettasciio_missing_gives_install_hint(tmp_path, monkeypatch):
    (tmp_path / "a.dm4").write_bytes(b"\x00" * 16)
    real = importlib.import_module

    def fake(name, *args, **kwargs):
        if name.startswith("rsciio"):
            raise ImportError(name)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib, "import_module", fake)
    with pytest.raises(ValueError, match=r'pip install "stemquant\[io\]"'):
        load_image(tmp_path / "a.dm4")


def test_atomic_write_gives_the_usual_file_mode(tmp_path):
    """Outputs get 0666 minus the umask like any new file, not mkstemp's private 0600."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        dest = tmp_path / "out.npy"
        save_image(dest, np.ones((4, 4)))
        assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    finally:
        os.umask(old)
