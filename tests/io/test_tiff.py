"""cvdm_cli.io.tiff: reading every supported layout lazily, atomic plane-by-plane writing,
pixel size / axes round trips, and refusals with specific errors naming the file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from cvdm_cli import errors
from cvdm_cli.io.lzw import lzw_decode
from cvdm_cli.io.tiff import (
    IncompleteOutputError,
    OutputTiff,
    choose_layout,
    normalize_unit,
    open_tiff,
    output_spec,
    with_samples_axis,
    write_plane_tiff,
)

DTYPES = ["uint8", "uint16", "int16", "uint32", "float32", "float64"]


def make_data(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    if dt.kind == "f":
        return (rng.standard_normal(shape) * 100).astype(dt)
    info = np.iinfo(dt)
    return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dt)


def assert_planes(path: Path, data: np.ndarray, axes: str, user_axes: str | None = None) -> None:
    with open_tiff(path, axes=user_axes) as inp:
        assert inp.axes == axes
        assert inp.shape == data.shape
        assert inp.dtype == data.dtype
        planes = data.reshape(-1, *data.shape[-2:])
        assert inp.n_planes == len(planes)
        assert inp.plane_shape == data.shape[-2:]
        for i, plane in enumerate(inp.iter_planes()):
            assert plane.dtype == data.dtype
            np.testing.assert_array_equal(plane, planes[i])


# --- reading: layouts x dtypes --------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_single_page(tmp_path, dtype):
    data = make_data((37, 29), dtype)
    path = tmp_path / "single.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata=None)
    assert_planes(path, data, "YX")


@pytest.mark.parametrize("dtype", DTYPES)
def test_plain_multipage_is_a_z_stack(tmp_path, dtype):
    # no metadata: tifffile calls the page axis I; Fiji opens it as slices (Z)
    data = make_data((5, 20, 24), dtype)
    path = tmp_path / "pages.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata=None)
    assert_planes(path, data, "ZYX")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "kw",
    [
        {"compression": "zlib", "rowsperstrip": 5},
        {"compression": "deflate", "tile": (16, 16)},
        {"tile": (16, 16)},
        {"bigtiff": True},
        {"bigtiff": True, "compression": "zlib", "tile": (16, 32)},
    ],
    ids=["zlib-strips", "deflate-tiled", "tiled", "bigtiff", "bigtiff-zlib-tiled"],
)
def test_compressed_tiled_bigtiff(tmp_path, dtype, kw):
    data = make_data((3, 40, 35), dtype)
    path = tmp_path / "c.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata=None, **kw)
    assert_planes(path, data, "ZYX")


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_imagej_hyperstack(tmp_path, dtype):
    data = make_data((2, 3, 2, 16, 12), dtype)
    path = tmp_path / "hyper.tif"
    tifffile.imwrite(
        path,
        data,
        imagej=True,
        resolution=(1 / 0.065, 1 / 0.0645),
        metadata={"axes": "TZCYX", "unit": "micron", "spacing": 0.25},
    )
    assert_planes(path, data, "TZCYX")
    with open_tiff(path) as inp:
        assert inp.layout == "imagej"
        assert inp.plane_axes == "TZC"
        assert inp.plane_index_shape == (2, 3, 2)
        assert inp.unit == "µm"
        assert inp.pixel_size == pytest.approx((0.0645, 0.065), rel=1e-6)
        assert inp.z_spacing == pytest.approx(0.25)
        assert inp.plane_index(7) == (1, 0, 1)  # 7 = t*6 + z*2 + c
        assert inp.plane_label(7) == "T=1 Z=0 C=1"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("axes", ["ZYX", "CZYX", "TCYX"])
def test_ome_tiff(tmp_path, dtype, axes):
    shape = {"ZYX": (4, 20, 18), "CZYX": (2, 3, 20, 18), "TCYX": (3, 2, 20, 18)}[axes]
    data = make_data(shape, dtype)
    path = tmp_path / "img.ome.tif"
    tifffile.imwrite(
        path,
        data,
        ome=True,
        compression="zlib" if dtype == "uint16" else None,
        metadata={
            "axes": axes,
            "PhysicalSizeX": 0.1,
            "PhysicalSizeXUnit": "µm",
            "PhysicalSizeY": 0.12,
            "PhysicalSizeYUnit": "µm",
        },
    )
    assert_planes(path, data, axes)
    with open_tiff(path) as inp:
        assert inp.layout == "ome"
        assert inp.pixel_size == pytest.approx((0.12, 0.1))
        assert inp.unit == "µm"


def _write_lzw(path: Path, planes: np.ndarray) -> None:
    pil = pytest.importorskip("PIL.Image")
    images = [pil.fromarray(p) for p in planes]
    images[0].save(path, compression="tiff_lzw", save_all=True, append_images=images[1:])


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_lzw(tmp_path, dtype):
    # random data fills the 4096-entry table, so code widths 9..12 and clear codes occur
    data = make_data((3, 130, 140), dtype)
    path = tmp_path / "lzw.tif"
    _write_lzw(path, data)
    with tifffile.TiffFile(path) as tif:
        assert tif.pages[0].compression == 5
    assert_planes(path, data, "ZYX")


def test_lzw_decode_known_stream():
    # "TOBEORNOTTOBEORTOBEORNOT" encoded with TIFF LZW (9-bit codes, clear first, EOI)
    text = b"TOBEORNOTTOBEORTOBEORNOT"
    # a minimal encoder (codes 258.. are new strings; all codes fit 9 bits here)
    table = {bytes([i]): i for i in range(256)}
    out, w = [256], b""
    for ch in text:
        wc = w + bytes([ch])
        if wc in table:
            w = wc
        else:
            out.append(table[w])
            table[wc] = len(table) + 2
            w = bytes([ch])
    out += [table[w], 257]
    assert out[1:10] == list(text[:9]) and max(out) < 512 and len(out) < len(text)
    bits = "".join(f"{c:09b}" for c in out)
    bits += "0" * (-len(bits) % 8)
    stream = int(bits, 2).to_bytes(len(bits) // 8, "big")
    assert lzw_decode(stream) == text


def test_user_axes_override_and_validation(tmp_path):
    data = make_data((4, 16, 16), "uint16")
    path = tmp_path / "p.tif"
    tifffile.imwrite(path, data, photometric="minisblack", metadata=None)
    assert_planes(path, data, "TYX", user_axes="tyx")
    with pytest.raises(errors.UnsupportedLayoutError, match=r"p\.tif.*3 dimensions"):
        open_tiff(path, axes="TZYX")
    with pytest.raises(errors.UnsupportedLayoutError, match=r"p\.tif.*no Y or no X"):
        open_tiff(path, axes="TZY")
    with pytest.raises(errors.ConfigError, match=r"p\.tif.*letters 'W'"):
        open_tiff(path, axes="WYX")


def test_user_axes_split_rgb_and_transposed(tmp_path):
    rgb = make_data((20, 24, 3), "uint8")
    path = tmp_path / "rgb.tif"
    tifffile.imwrite(path, rgb, photometric="rgb")
    with open_tiff(path, axes="YXC") as inp:
        assert inp.plane_axes == "C"
        for c in range(3):
            np.testing.assert_array_equal(inp.read_plane(c), rgb[..., c])
        shape, axes, _ = output_spec(inp, 2)
        assert (shape, axes) == ((3, 40, 48), "CYX")
    # X before Y: planes still come back as (Y, X)
    with open_tiff(path, axes="XYC") as inp:
        assert inp.plane_shape == (24, 20)
        np.testing.assert_array_equal(inp.read_plane(1), rgb[..., 1].T)


def test_pixel_size_from_plain_resolution_tags(tmp_path):
    data = make_data((8, 8), "uint16")
    path = tmp_path / "cm.tif"
    # 0.1 µm pixels = 1e5 pixels per cm
    tifffile.imwrite(path, data, resolution=(1e5, 1e5 / 2), resolutionunit="CENTIMETER")
    with open_tiff(path) as inp:
        assert inp.unit == "µm"
        assert inp.pixel_size == pytest.approx((0.2, 0.1))
    uncal = tmp_path / "none.tif"
    tifffile.imwrite(uncal, data, metadata=None)
    with open_tiff(uncal) as inp:
        assert inp.pixel_size is None and inp.unit is None


def test_units_normalised():
    for spelling in ("micron", "um", "µm", "μm", "\\u00B5m", "Micron"):
        assert normalize_unit(spelling) == "µm"
    assert normalize_unit("nm") == "nm"
    assert normalize_unit("furlong") == "furlong"
    assert normalize_unit("") is None


def _peak_bytes(fn) -> int:
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize(
    ("kw", "axes"),
    [
        ({"imagej": True, "metadata": {"axes": "ZYX"}}, None),  # contiguous: pread
        ({"photometric": "minisblack", "compression": "zlib", "metadata": None}, None),
        ({"photometric": "minisblack", "metadata": None}, "YXZ"),  # strided: memmap
    ],
    ids=["contiguous", "compressed-pages", "strided"],
)
def test_planes_are_read_lazily(tmp_path, kw, axes):
    data = make_data((64, 128, 128), "uint16")  # 2 MiB stack, 32 KiB planes
    path = tmp_path / "lazy.tif"
    tifffile.imwrite(path, data, **kw)
    with open_tiff(path, axes=axes) as inp:
        idx = 40
        expect = data[idx] if axes is None else data[:, :, idx]
        inp.read_plane(idx)  # warm caches (tifffile parses page tags lazily)
        plane = None

        def read():
            nonlocal plane
            plane = inp.read_plane(idx)

        peak = _peak_bytes(read)
        np.testing.assert_array_equal(plane, expect)
        assert peak < 8 * expect.nbytes, f"read {peak} bytes for a {expect.nbytes}-byte plane"
        assert peak < data.nbytes / 4


# --- writing --------------------------------------------------------------------------


def _write_all(out: OutputTiff, planes: np.ndarray) -> None:
    for p in planes.reshape(-1, *planes.shape[-2:]):
        out.write_plane(p)


@pytest.mark.parametrize("axes", ["YX", "ZYX", "CYX", "TZCYX", "TCYX"])
def test_write_imagej_round_trip(tmp_path, axes):
    sizes = {"T": 2, "Z": 3, "C": 2, "Y": 10, "X": 14}
    shape = tuple(sizes[a] for a in axes)
    data = make_data(shape, "float32")
    path = tmp_path / "out.tif"
    with OutputTiff(
        path, shape=shape, axes=axes, pixel_size=(0.05, 0.04), unit="µm", z_spacing=0.3
    ) as out:
        assert out.layout.kind == "imagej"
        _write_all(out, data)
        assert not path.exists()  # only the hidden partial file while writing
        assert out.temp_path.exists() and out.temp_path.name.startswith(".out.tif.partial-")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.tif"]
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and not tif.is_bigtiff
        assert tif.series[0].axes == axes
        np.testing.assert_array_equal(tif.series[0].asarray(), data)
        ij = tif.imagej_metadata
        assert ij["unit"] == "micron"
        if "Z" in axes:
            assert ij["spacing"] == pytest.approx(0.3)
        page = tif.pages[0]
        assert page.tags["XResolution"].value[0] / page.tags["XResolution"].value[1] == (
            pytest.approx(1 / 0.04)
        )
        assert page.tags["YResolution"].value[0] / page.tags["YResolution"].value[1] == (
            pytest.approx(1 / 0.05)
        )
    assert_planes(path, data, axes)
    with open_tiff(path) as inp:
        assert inp.pixel_size == pytest.approx((0.05, 0.04), rel=1e-6)
        assert inp.unit == "µm"


@pytest.mark.parametrize(("axes", "kind"), [("ZYX", "imagej"), ("CZYX", "ome")])
def test_write_description_in_both_layouts(tmp_path, axes, kind):
    text = '{"software": "cvdm", "note": "a <b> & \\"c\\""}\nsecond line'
    sizes = {"Z": 2, "C": 2, "Y": 6, "X": 8}
    shape = tuple(sizes[a] for a in axes)
    path = tmp_path / "out.tif"
    with OutputTiff(
        path, shape=shape, axes=axes, pixel_size=None, unit=None, description=text
    ) as out:
        assert out.layout.kind == kind
        _write_all(out, make_data(shape, "float32"))
    with tifffile.TiffFile(path) as tif:
        if kind == "imagej":  # the ImageJ "Info" property (Fiji: Image > Show Info)
            assert tif.imagej_metadata["Info"] == text
        else:  # OME Image/Description, XML-escaped by tifffile
            image = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
            assert image["Description"] == text


@pytest.mark.parametrize("axes", ["ZTYX", "CZYX"])
def test_write_non_imagej_order_is_ome(tmp_path, axes):
    sizes = {"T": 2, "Z": 3, "C": 2, "Y": 10, "X": 14}
    shape = tuple(sizes[a] for a in axes)
    data = make_data(shape, "float32")
    path = tmp_path / "out.ome.tif"
    with OutputTiff(path, shape=shape, axes=axes, pixel_size=(0.05, 0.04), unit="nm") as out:
        assert out.layout.kind == "ome" and not out.layout.bigtiff
        _write_all(out, data)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and tif.series[0].axes == axes
        assert 'PhysicalSizeX="0.04"' in tif.ome_metadata
        assert 'PhysicalSizeXUnit="nm"' in tif.ome_metadata
        assert tif.pages[0].resolutionunit == 3  # CENTIMETER
        np.testing.assert_allclose(tif.pages[0].get_resolution(), (1e7 / 0.04, 1e7 / 0.05))
    assert_planes(path, data, axes)
    with open_tiff(path) as inp:
        assert inp.pixel_size == pytest.approx((0.05, 0.04))
        assert inp.unit == "nm"


def test_bigtiff_switch(tmp_path):
    shape, axes = (3, 2, 16, 16), "TZYX"
    nbytes = 3 * 2 * 16 * 16 * 4
    assert choose_layout(shape, axes).kind == "imagej"
    assert choose_layout(shape, axes, bigtiff_threshold=nbytes + 6 * 256) == (
        choose_layout(shape, axes)
    )
    big = choose_layout(shape, axes, bigtiff_threshold=nbytes)
    assert big.kind == "ome" and big.bigtiff
    # the real threshold: a 4 GiB float32 output does not fit classic TIFF
    assert choose_layout((1024, 1024, 1024), "ZYX").bigtiff
    assert not choose_layout((950, 1024, 1024), "ZYX").bigtiff
    data = make_data(shape, "float32")
    path = tmp_path / "big.tif"
    with OutputTiff(
        path, shape=shape, axes=axes, pixel_size=(0.1, 0.1), unit="micron", bigtiff_threshold=1000
    ) as out:
        _write_all(out, data)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_bigtiff and tif.is_ome
        assert 'PhysicalSizeXUnit="µm"' in tif.ome_metadata
    assert_planes(path, data, axes)


def test_output_spec_and_full_pipeline_shape(tmp_path):
    data = make_data((2, 3, 10, 12), "uint16")
    src = tmp_path / "in.tif"
    tifffile.imwrite(
        src,
        data,
        imagej=True,
        resolution=(1 / 0.1, 1 / 0.1),
        metadata={"axes": "ZCYX", "unit": "um", "spacing": 0.5},
    )
    with open_tiff(src) as inp:
        shape, axes, px = output_spec(inp, 2)
        assert shape == (2, 3, 20, 24) and axes == "ZCYX"
        assert px == pytest.approx((0.05, 0.05))
        dst = tmp_path / "out.tif"
        with OutputTiff(
            dst, shape=shape, axes=axes, pixel_size=px, unit=inp.unit, z_spacing=inp.z_spacing
        ) as out:
            for plane in inp.iter_planes():
                out.write_plane(np.repeat(np.repeat(plane, 2, 0), 2, 1).astype(np.float32))
    with open_tiff(dst) as res:
        assert res.axes == "ZCYX" and res.z_spacing == pytest.approx(0.5)
        assert res.pixel_size == pytest.approx((0.05, 0.05), rel=1e-6)
        np.testing.assert_array_equal(res.read_plane(5)[::2, ::2], data[1, 2])
    assert src.stat().st_size > 0 and tifffile.imread(src).shape == data.shape  # untouched


def test_output_spec_renames_non_imagej_axes(tmp_path):
    data = make_data((2, 3, 8, 8), "uint16")
    src = tmp_path / "s.tif"
    tifffile.imwrite(src, data, ome=True, metadata={"axes": "TZYX"})
    with open_tiff(src, axes="SZYX") as inp:  # CSBDeep's sample axis S
        shape, axes, px = output_spec(inp, 2)
    assert axes == "TZYX" and shape == (2, 3, 16, 16) and px is None


def test_samples_axis(tmp_path):
    assert with_samples_axis((8, 8), "YX", 4) == ((4, 8, 8), "TYX", "T")
    assert with_samples_axis((3, 8, 8), "ZYX", 4) == ((4, 3, 8, 8), "TZYX", "T")
    assert with_samples_axis((2, 3, 8, 8), "TZYX", 4) == ((2, 3, 4, 8, 8), "TZCYX", "C")
    assert with_samples_axis((2, 3, 2, 8, 8), "TZCYX", 4) == ((2, 4, 3, 2, 8, 8), "TQZCYX", "Q")
    # K samples per input plane, written by input plane number
    base = make_data((3, 8, 8), "float32")
    shape, axes, letter = with_samples_axis((3, 8, 8), "ZYX", 2)
    path = tmp_path / "samples.tif"
    with OutputTiff(
        path, shape=shape, axes=axes, pixel_size=None, unit=None, extra_axis=letter
    ) as out:
        for i in range(3):
            out.write_samples(np.stack([base[i], -base[i]]), i)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_imagej and tif.series[0].axes == "TZYX"
        arr = tif.series[0].asarray()
        assert tif.imagej_metadata["Labels"][:2] == ["sample 1/2", "sample 1/2"]
    np.testing.assert_array_equal(arr[0], base)
    np.testing.assert_array_equal(arr[1], -base)
    # no free ImageJ axis: an OME modulo axis that tifffile reads back
    shape, axes, letter = with_samples_axis((1, 1, 2, 8, 8), "TZCYX", 3)
    path = tmp_path / "q.ome.tif"
    with OutputTiff(
        path, shape=shape, axes=axes, pixel_size=None, unit=None, extra_axis=letter
    ) as out:
        for i in range(2):
            out.write_samples(np.stack([base[i] * k for k in range(3)]), i)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome and "cvdm samples" in tif.ome_metadata
        arr = tif.series[0].asarray()
    np.testing.assert_array_equal(np.squeeze(arr)[2, 1], base[1] * 2)


def test_write_at_explicit_index(tmp_path):
    data = make_data((2, 3, 6, 6), "float32")
    path = tmp_path / "o.tif"
    with OutputTiff(path, shape=data.shape, axes="TZYX", pixel_size=None, unit=None) as out:
        for t in (1, 0):
            for z in (2, 0, 1):
                out.write_plane(data[t, z], index=(t, z))
    np.testing.assert_array_equal(tifffile.imread(path), data)


# --- atomic writing and refusals to write ----------------------------------------------


def test_exception_leaves_nothing(tmp_path):
    path = tmp_path / "o.tif"
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        with (
            pytest.raises(type(exc)),
            OutputTiff(path, shape=(2, 8, 8), axes="ZYX", pixel_size=None, unit=None) as out,
        ):
            out.write_plane(np.ones((8, 8)))
            raise exc
        assert list(tmp_path.iterdir()) == []


def test_incomplete_output_is_refused(tmp_path):
    path = tmp_path / "o.tif"
    with (
        pytest.raises(IncompleteOutputError, match=r"o\.tif.*only 1 of 2 planes"),
        OutputTiff(path, shape=(2, 8, 8), axes="ZYX", pixel_size=None, unit=None) as out,
    ):
        out.write_plane(np.ones((8, 8)))
    assert list(tmp_path.iterdir()) == []


def test_existing_output(tmp_path):
    path = tmp_path / "o.tif"
    path.write_bytes(b"precious")
    with pytest.raises(errors.OutputExistsError, match=r"o\.tif.*--overwrite"):
        OutputTiff(path, shape=(8, 8), axes="YX", pixel_size=None, unit=None)
    assert path.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.tif"]
    with OutputTiff(path, shape=(8, 8), axes="YX", pixel_size=None, unit=None, overwrite=True) as o:
        o.write_plane(np.full((8, 8), 3.0))
    np.testing.assert_array_equal(tifffile.imread(path), np.full((8, 8), 3.0, np.float32))


def test_sigkill_mid_write_leaves_no_final_file(tmp_path):
    final = tmp_path / "killed.tif"
    marker = tmp_path / "started"
    script = textwrap.dedent(
        f"""
        import time, numpy as np
        from cvdm_cli.io.tiff import OutputTiff
        with OutputTiff({str(final)!r}, shape=(50, 64, 64), axes="ZYX",
                        pixel_size=None, unit=None) as out:
            for i in range(50):
                out.write_plane(np.full((64, 64), i, np.float32))
                if i == 3:
                    open({str(marker)!r}, "w").close()
                time.sleep(0.2)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while not marker.exists():
            assert proc.poll() is None, "writer exited early"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not final.exists()
    left = [p.name for p in tmp_path.iterdir() if p.name != "started"]
    assert len(left) == 1 and left[0].startswith(".killed.tif.partial-")


def test_disk_full_reported(tmp_path, monkeypatch):
    import errno

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    path = tmp_path / "o.tif"
    with pytest.raises(errors.DiskFullError, match=r"partial.*disk full"):
        OutputTiff(path, shape=(4, 8, 8), axes="ZYX", pixel_size=None, unit=None)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setattr(os, "pwrite", full)
    with (
        pytest.raises(errors.DiskFullError, match=r"o\.tif: disk full while writing plane 0"),
        OutputTiff(path, shape=(4, 8, 8), axes="ZYX", pixel_size=None, unit=None) as out,
    ):
        out.write_plane(np.zeros((8, 8)))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder(tmp_path):
    target = Path("/sys/cvdm-test-output.tif")  # sysfs refuses new files, even to root
    try:
        target.write_bytes(b"")
    except OSError:
        pass
    else:  # pragma: no cover - not the case on Linux
        target.unlink()
        pytest.skip("/sys accepted a file")
    with pytest.raises(errors.OutputNotWritableError, match=r"cannot write here"):
        OutputTiff(target, shape=(8, 8), axes="YX", pixel_size=None, unit=None)
    with pytest.raises(errors.OutputNotWritableError, match=r"does not exist"):
        OutputTiff(tmp_path / "nope" / "o.tif", shape=(8, 8), axes="YX", pixel_size=None, unit=None)
    if os.geteuid() != 0:  # permissions do not bind root
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o555)
        with pytest.raises(errors.OutputNotWritableError):
            OutputTiff(ro / "o.tif", shape=(8, 8), axes="YX", pixel_size=None, unit=None)


# --- refusals to read -----------------------------------------------------------------


def test_missing_empty_and_not_a_tiff(tmp_path):
    with pytest.raises(errors.InputNotFoundError, match=r"missing\.tif"):
        open_tiff(tmp_path / "missing.tif")
    empty = tmp_path / "empty.tif"
    empty.touch()
    with pytest.raises(errors.NotATiffError, match=r"empty\.tif: file is empty"):
        open_tiff(empty)
    png = tmp_path / "photo.tif"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(errors.NotATiffError, match=r"photo\.tif: not a TIFF file"):
        open_tiff(png)
    with pytest.raises(errors.NotATiffError, match=r"is a folder"):
        open_tiff(tmp_path)


@pytest.mark.parametrize(
    "kw",
    [
        {"imagej": True, "metadata": {"axes": "ZYX"}},
        {"photometric": "minisblack", "metadata": None},
        {"ome": True, "metadata": {"axes": "ZYX"}},
        {"photometric": "minisblack", "metadata": None, "compression": "zlib"},
    ],
    ids=["imagej", "plain", "ome", "zlib"],
)
@pytest.mark.parametrize("cut", ["30%", "60%", "97%", "last-ifd"])
def test_truncated(tmp_path, kw, cut):
    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, make_data((6, 40, 30), "uint16"), **kw)
    raw = path.read_bytes()
    if cut == "last-ifd":  # one byte short of the last directory (classic TIFF: 12-byte tags)
        with tifffile.TiffFile(path) as tif:
            last = tif.pages[len(tif.pages) - 1]
            keep = last.offset + 2 + 12 * len(last.tags) + 4 - 1
    else:
        keep = len(raw) * int(cut[:-1]) // 100
    path.write_bytes(raw[:keep])
    with (
        pytest.raises(errors.NotATiffError, match=r"cut\.tif: truncated") as info,
        open_tiff(path) as inp,
    ):
        for _ in inp.iter_planes():
            pass
    assert "copy or export it again" in str(info.value)


def test_rgb_refused_with_fiji_hint(tmp_path):
    for name, kw, shape in [
        ("rgb.tif", {"photometric": "rgb"}, (20, 20, 3)),
        ("rgba.tif", {"photometric": "rgb"}, (20, 20, 4)),
        ("planar.tif", {"photometric": "rgb", "planarconfig": "separate"}, (3, 20, 20)),
        ("ij_rgb.tif", {"imagej": True, "photometric": "rgb"}, (2, 20, 20, 3)),
    ]:
        path = tmp_path / name
        tifffile.imwrite(path, make_data(shape, "uint8"), **kw)
        with pytest.raises(errors.UnsupportedLayoutError) as info:
            open_tiff(path)
        msg = str(info.value)
        assert name in msg and "RGB" in msg
        assert "Split Channels" in msg and "--axes" in msg


def test_complex_and_zero_size_refused(tmp_path):
    path = tmp_path / "complex.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.complex64))
    with pytest.raises(errors.UnsupportedLayoutError, match=r"complex\.tif: complex"):
        open_tiff(path)
    zero = tmp_path / "zero.tif"
    with pytest.warns(UserWarning):
        tifffile.imwrite(zero, np.zeros((0, 16, 16), np.uint16))
    with pytest.raises(errors.UnsupportedLayoutError, match=r"zero\.tif: image has a zero-size"):
        open_tiff(zero)
    # a page whose ImageWidth tag says 0
    width0 = tmp_path / "width0.tif"
    tifffile.imwrite(width0, np.ones((16, 16), np.uint16), metadata=None)
    with tifffile.TiffFile(width0) as tif:
        offset = tif.pages[0].tags["ImageWidth"].valueoffset
    raw = bytearray(width0.read_bytes())
    raw[offset : offset + 2] = b"\x00\x00"
    width0.write_bytes(bytes(raw))
    with pytest.raises(errors.UnsupportedLayoutError, match=r"width0\.tif: image has a zero-size"):
        open_tiff(width0)


def test_line_image_refused(tmp_path):
    path = tmp_path / "line.tif"
    tifffile.imwrite(path, np.ones((5, 1, 40), np.uint16), photometric="minisblack")
    with pytest.raises(errors.UnsupportedLayoutError, match=r"line\.tif.*(Y|no Y/X)"):
        open_tiff(path)


# --- one calibrated plane (simulated training pairs) -----------------------------------


@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_write_plane_tiff_is_imagej_with_pixel_size_in_microns(tmp_path, dtype):
    plane = make_data((24, 20), dtype)
    path = write_plane_tiff(tmp_path / "p.tif", plane, pixel_nm=62.6)
    assert [p.name for p in tmp_path.iterdir()] == ["p.tif"]  # no partial file left
    # the bytes tifffile writes for an ImageJ YX plane with unit=um (what Fiji saves)
    reference = tmp_path / "ref" / "p.tif"
    reference.parent.mkdir()
    um = 62.6 / 1000.0
    tifffile.imwrite(
        reference, plane, imagej=True, resolution=(1 / um, 1 / um),
        metadata={"axes": "YX", "unit": "um"},
    )  # fmt: skip
    assert path.read_bytes() == reference.read_bytes()
    with open_tiff(path) as inp:
        assert inp.layout == "imagej" and inp.axes == "YX" and inp.dtype == np.dtype(dtype)
        assert inp.unit == "µm" and inp.pixel_size == pytest.approx((0.0626, 0.0626))
        np.testing.assert_array_equal(inp.read_plane(0), plane)


def test_write_plane_tiff_refuses_what_imagej_cannot_hold(tmp_path):
    with pytest.raises(ValueError, match="one \\(Y, X\\) plane"):
        write_plane_tiff(tmp_path / "a.tif", np.zeros((2, 4, 4), np.float32), pixel_nm=50)
    with pytest.raises(ValueError, match="uint8, uint16 or float32"):
        write_plane_tiff(tmp_path / "a.tif", np.zeros((4, 4)), pixel_nm=50)
    with pytest.raises(ValueError, match="positive"):
        write_plane_tiff(tmp_path / "a.tif", np.zeros((4, 4), np.uint16), pixel_nm=0)
    assert list(tmp_path.iterdir()) == []
