"""Microscopy TIFF in and out (tifffile is imported only here and in :mod:`cvdm_cli.io.lzw`).

Reading (:func:`open_tiff`): plain single/multi-page TIFF, ImageJ hyperstacks, OME-TIFF
(single file), BigTIFF; uncompressed, zlib/deflate or LZW; striped or tiled; uint8, uint16,
int16, uint32, float32, float64 (and other real integer/float types). Planes are read one
YX plane at a time (``os.pread`` on contiguous data, a short-lived memory map for strided
layouts, or tifffile page access for compressed files), never the whole stack.

Writing (:class:`OutputTiff`): float32, uncompressed, laid out by tifffile once (metadata,
IFDs, a contiguous data block), then filled plane by plane with ``os.pwrite`` into a hidden
temporary file ``.<name>.partial-<pid>`` next to the destination, which is renamed into
place only by :meth:`OutputTiff.commit`. ImageJ hyperstack when it fits (< 4 GB, axes in
TZCYX order), OME-TIFF otherwise (BigTIFF past 4 GB). :func:`write_plane_tiff` writes one
small calibrated YX plane in one go (simulated training pairs). Both use the partial-file
rule of :mod:`cvdm_cli.io.atomic`; the LZW fallback decoder is in :mod:`cvdm_cli.io.lzw`.

Axes use CSBDeep / tifffile letters: T time, Z depth, C channel, Y, X, S sample (CSBDeep's
batch axis when given by the user), Q/I other. See docs/io.md for the rules.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import struct
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import permutations
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np
import tifffile

from cvdm_cli import errors
from cvdm_cli.io.atomic import atomic_path, partial_path, remove_quietly
from cvdm_cli.io.lzw import install_lzw_fallback, lzw_decode

__all__ = [
    "BIGTIFF_THRESHOLD",
    "IncompleteOutputError",
    "OutputLayout",
    "OutputTiff",
    "TiffInput",
    "choose_layout",
    "lzw_decode",
    "normalize_unit",
    "open_tiff",
    "output_spec",
    "read_single_plane",
    "with_samples_axis",
    "write_plane_tiff",
]

# Letters a user may pass with --axes (CSBDeep's STCZYX plus tifffile's Q/I "other").
USER_AXES = "STCZYXQI"
# Axes an output file may carry: ImageJ's TZC(YX), plus Q for the samples axis (OME only).
IMAGEJ_ORDER = "TZCYX"
# Classic TIFF offsets are 32-bit: past this many bytes of pixel data (leaving 32 MiB for
# IFDs and metadata) the output is written as OME BigTIFF.
BIGTIFF_THRESHOLD = 2**32 - 2**25

TRUNCATED_HINT = "the file is incomplete or damaged (interrupted copy?); copy or export it again"
RGB_HINT = "split the channels in Fiji (Image > Color > Split Channels) or pass --axes"

_MICRON = "µm"
_UNIT_ALIASES = {
    "micron": _MICRON,
    "microns": _MICRON,
    "micrometer": _MICRON,
    "micrometre": _MICRON,
    "um": _MICRON,
    "µm": _MICRON,  # micro sign U+00B5
    "μm": _MICRON,  # greek mu U+03BC
    "\\u00b5m": _MICRON,  # ImageJ's escaped form
    "nm": "nm",
    "nanometer": "nm",
    "mm": "mm",
    "cm": "cm",
    "m": "m",
    "inch": "inch",
    "in": "inch",
}
# length of one unit in µm, for conversions between metric units
_UNIT_UM = {"nm": 1e-3, _MICRON: 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6, "inch": 25400.0}
# OME UnitsLength spellings
_OME_UNIT = {_MICRON: "µm", "nm": "nm", "mm": "mm", "cm": "cm", "m": "m", "inch": "in"}


class IncompleteOutputError(errors.OutputError):
    """commit() was called before every plane of the output was written."""


def normalize_unit(unit: str | None) -> str | None:
    """Canonical spelling of a length unit ("micron", "um", "\\u00B5m" -> "µm"); None stays None."""
    if unit is None:
        return None
    text = str(unit).strip()
    if not text:
        return None
    return _UNIT_ALIASES.get(text.lower(), text)


# LZW without imagecodecs: see cvdm_cli.io.lzw
install_lzw_fallback()


# ------------------------------------------------------------------------------------
# Reading
# ------------------------------------------------------------------------------------


class _LogCatcher(logging.Handler):
    """Collects tifffile's error log records (it logs corrupt/truncated files and goes on)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _catch_tifffile_errors() -> Iterator[_LogCatcher]:
    logger = logging.getLogger("tifffile")
    catcher = _LogCatcher()
    logger.addHandler(catcher)
    try:
        yield catcher
    finally:
        logger.removeHandler(catcher)


_CORRUPT_WORDS = ("offset", "corrupt", "truncat", "invalid")


def _native(dtype: np.dtype) -> np.dtype:
    return dtype.newbyteorder("=")


def _fiji_letters(letters: str, used: str) -> str:
    """Rename the unknown axes in ``letters`` ('?' marks) to free ImageJ axes (Z, T, C).

    Prefers an assignment that keeps ImageJ's T, Z, C order, and a lone unknown becomes Z
    (Fiji opens a plain multi-page file as a Z stack).
    """
    n = letters.count("?")
    if n == 0:
        return letters
    free = [a for a in "ZTC" if a not in used]
    if n > len(free):
        return ""
    best = ""
    for choice in permutations(free, n):
        it = iter(choice)
        cand = "".join(next(it) if a == "?" else a for a in letters)
        ordered = "".join(a for a in IMAGEJ_ORDER if a in cand) == cand
        if ordered:
            return cand
        best = best or cand
    return best


class TiffInput:
    """An open input TIFF: axes, shape, pixel size and lazy access to its YX planes.

    Attributes:
        path: the file.
        axes: one letter per dimension of ``shape`` (the user's string when given).
        shape, dtype: of the whole image (dtype in native byte order).
        plane_shape: (Y, X) in pixels.
        plane_axes / plane_index_shape: the non-YX axes in order and their sizes; planes are
            numbered in C order over them (``n_planes`` in all).
        pixel_size: (y, x) in ``unit``, or None when the file has no calibration.
        unit: canonical length unit ("µm", "nm", "inch", ...) or None.
        z_spacing: Z step in ``unit`` (ImageJ spacing / OME PhysicalSizeZ) or None.
        file_axes: the axes tifffile found in the file (before a user override).
        layout: "imagej", "ome" or "tiff" (which metadata the axes came from).
    """

    def __init__(self, path: str | os.PathLike[str], *, axes: str | None = None) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._tif: tifffile.TiffFile | None = None
        try:
            self._open(axes)
        except BaseException:
            self.close()
            raise

    # -- opening ---------------------------------------------------------------------

    def _fail(
        self, cls: type[errors.CvdmError], message: str, hint: str | None = None
    ) -> errors.CvdmError:
        return cls(message, path=self.path, hint=hint)

    def _open(self, user_axes: str | None) -> None:
        path = self.path
        if not path.exists():
            raise self._fail(
                errors.InputNotFoundError, "no such file", "check the path and its spelling"
            )
        if path.is_dir():
            raise self._fail(errors.NotATiffError, "is a folder, not a TIFF file")
        size = path.stat().st_size
        self._size = size
        if size == 0:
            raise self._fail(
                errors.NotATiffError, "file is empty (0 bytes)", "copy or export it again"
            )
        with _catch_tifffile_errors() as log:
            try:
                tif = tifffile.TiffFile(path)
            except tifffile.TiffFileError as exc:
                with open(path, "rb") as fh:
                    head = fh.read(4)
                raise self._fail(
                    errors.NotATiffError,
                    f"not a TIFF file (it starts with {head!r})",
                    "export it as TIFF in Fiji (File > Save As > Tiff...)",
                ) from exc
            except PermissionError:
                raise self._fail(
                    errors.InputError,
                    "cannot read the file (permission denied)",
                    "check the file's permissions",
                ) from None
            except (OSError, ValueError, struct.error, EOFError) as exc:
                raise self._fail(
                    errors.NotATiffError,
                    f"unreadable TIFF header ({exc})",
                    TRUNCATED_HINT,
                ) from None
            self._tif = tif
            try:
                series = tif.series[0] if tif.series else None
                ifd_end = _ifd_chain_end(tif)
            except Exception as exc:  # tifffile parses metadata lazily; any failure = corrupt
                raise self._fail(
                    errors.NotATiffError,
                    f"truncated or corrupt TIFF ({exc})",
                    TRUNCATED_HINT,
                ) from None
        if ifd_end > size:
            raise self._fail(
                errors.NotATiffError,
                f"truncated TIFF: its last directory ends at byte {ifd_end} but the file has "
                f"{size}",
                TRUNCATED_HINT,
            )
        corrupt = [m for m in log.messages if any(w in m.lower() for w in _CORRUPT_WORDS)]
        if corrupt:
            raise self._fail(
                errors.NotATiffError,
                f"truncated or corrupt TIFF ({corrupt[0]})",
                TRUNCATED_HINT,
            )
        if series is None or not series.pages or series.pages[0] is None:
            raise self._fail(errors.NotATiffError, "TIFF file contains no image")
        self._series = series
        self.layout = "imagej" if tif.is_imagej else "ome" if tif.is_ome else "tiff"

        shape = tuple(int(n) for n in series.shape)
        dtype = np.dtype(series.dtype)
        file_axes = str(series.axes)
        self.file_axes = file_axes
        if 0 in shape or len(shape) == 0:
            raise self._fail(
                errors.UnsupportedLayoutError,
                f"image has a zero-size axis (axes {file_axes}, shape {shape})",
                "the file holds no pixels; export the image again",
            )
        if dtype.kind == "c":
            raise self._fail(
                errors.UnsupportedLayoutError,
                f"complex pixel type {dtype} is not a microscopy intensity image",
                "save the magnitude (or real part) as a real-valued TIFF",
            )
        if dtype.kind not in "uif":
            raise self._fail(
                errors.UnsupportedLayoutError,
                f"unsupported pixel type {dtype}",
                "convert to 8/16/32-bit grey values in Fiji (Image > Type)",
            )
        if user_axes is not None:
            axes = self._check_user_axes(user_axes, shape)
        else:
            axes = self._file_axes_to_ours(file_axes, shape)
        self.axes = axes
        self.shape = shape
        self.dtype = _native(dtype)
        self._file_dtype = dtype.newbyteorder(tif.byteorder)
        for ax in "YX":
            if shape[axes.index(ax)] < 2:
                raise self._fail(
                    errors.UnsupportedLayoutError,
                    f"axis {ax} has size {shape[axes.index(ax)]} (axes {axes}, shape {shape}); "
                    "this is not a 2D image",
                    "pass --axes naming the image's two largest dimensions Y and X",
                )
        self._check_codec()
        self._check_data_in_file()
        self._setup_planes()
        self.pixel_size, self.unit, self.z_spacing = self._read_calibration()

    def _check_user_axes(self, user_axes: str, shape: tuple[int, ...]) -> str:
        axes = user_axes.strip().upper()
        bad = sorted(set(axes) - set(USER_AXES))
        if bad or len(set(axes)) != len(axes):
            what = f"letters {''.join(bad)!r}" if bad else "repeated letters"
            raise self._fail(
                errors.ConfigError,
                f"axes {user_axes!r} has {what}",
                f"use each of {USER_AXES} at most once, e.g. TZCYX, ZYX or YX",
            )
        if len(axes) != len(shape):
            raise self._fail(
                errors.UnsupportedLayoutError,
                f"--axes {axes} has {len(axes)} letters but the image has {len(shape)} "
                f"dimensions (shape {shape}, file axes {self.file_axes})",
                f"pass --axes with {len(shape)} letters",
            )
        if "Y" not in axes or "X" not in axes:
            raise self._fail(
                errors.UnsupportedLayoutError,
                f"--axes {axes} names no Y or no X axis",
                "include Y and X in --axes",
            )
        return axes

    def _file_axes_to_ours(self, file_axes: str, shape: tuple[int, ...]) -> str:
        if "S" in file_axes and shape[file_axes.index("S")] > 1:
            n = shape[file_axes.index("S")]
            photometric = int(getattr(self._series.pages[0], "photometric", 1))
            kind = f"{n} samples per pixel"
            if photometric == 2:  # PHOTOMETRIC.RGB
                kind = {3: "RGB", 4: "RGBA"}.get(n, f"RGB with {n} samples per pixel")
            raise self._fail(
                errors.UnsupportedLayoutError,
                f"{kind} image (axes {file_axes}, shape {shape}); cvdm needs grey planes",
                RGB_HINT,
            )
        if "Y" not in file_axes or "X" not in file_axes:
            raise self._fail(
                errors.UnsupportedLayoutError,
                f"image has no Y/X extent (axes {file_axes}, shape {shape})",
                "pass --axes naming Y and X",
            )
        # tifffile's generic letters (I sequence, Q other, S size 1) become free Fiji axes
        known = "TZCYX"
        marked = "".join(a if a in known else "?" for a in file_axes)
        renamed = _fiji_letters(marked, "".join(a for a in file_axes if a in known))
        if not renamed:
            # more unknown axes than free T/Z/C: keep tifffile's letters (unique by design)
            return file_axes
        return renamed

    def _check_codec(self) -> None:
        page = self._series.pages[0]
        try:
            tifffile.TIFF.DECOMPRESSORS[page.compression]
        except KeyError:
            name = getattr(page.compression, "name", page.compression)
            raise self._fail(
                errors.UnsupportedLayoutError,
                f"compression {name} needs the optional 'imagecodecs' package",
                "pip install imagecodecs, or re-save the file uncompressed in Fiji",
            ) from None
        predictor = int(getattr(page, "predictor", 1) or 1)
        if predictor != 1:
            try:
                tifffile.TIFF.UNPREDICTORS[predictor]
            except KeyError:
                raise self._fail(
                    errors.UnsupportedLayoutError,
                    f"predictor {predictor} needs the optional 'imagecodecs' package",
                    "pip install imagecodecs, or re-save the file uncompressed in Fiji",
                ) from None

    def _check_data_in_file(self) -> None:
        """Refuse files whose pixel data run past the end (truncated copies)."""
        series = self._series
        offset = series.dataoffset
        if offset is not None:
            end = int(offset) + int(np.prod(self.shape)) * self._file_dtype.itemsize
        else:
            end = 0
            for page in series.pages:
                if page is None:
                    continue
                for off, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                    end = max(end, int(off) + int(count))
        if end > self._size:
            raise self._fail(
                errors.NotATiffError,
                f"truncated TIFF: pixel data end at byte {end} but the file has {self._size}",
                TRUNCATED_HINT,
            )

    def _setup_planes(self) -> None:
        axes, shape = self.axes, self.shape
        self.plane_axes = "".join(a for a in axes if a not in "YX")
        self.plane_index_shape = tuple(shape[axes.index(a)] for a in self.plane_axes)
        self.plane_shape = (shape[axes.index("Y")], shape[axes.index("X")])
        self.n_planes = int(np.prod(self.plane_index_shape, dtype=np.int64))
        self._yx_last = axes.index("Y") == len(axes) - 2 and axes.index("X") == len(axes) - 1
        series = self._series
        self._dataoffset = None if series.dataoffset is None else int(series.dataoffset)
        if self._dataoffset is None:
            page_shape = tuple(int(n) for n in series.pages[0].shape)
            k = len(page_shape)
            outer = shape[: len(shape) - k]
            if shape[len(shape) - k :] != page_shape or int(np.prod(outer)) != len(series.pages):
                raise self._fail(
                    errors.UnsupportedLayoutError,
                    f"pages of shape {page_shape} do not tile the image shape {shape}",
                    "re-save the file in Fiji (File > Save As > Tiff...)",
                )
            self._outer_nd = len(outer)
        if self._dataoffset is not None and self._yx_last:
            self._fd = os.open(self.path, os.O_RDONLY)

    def _read_calibration(self) -> tuple[tuple[float, float] | None, str | None, float | None]:
        tif = self._tif
        assert tif is not None
        page = self._series.pages[0]
        if tif.is_ome and tif.ome_metadata:
            found = _ome_calibration(tif.ome_metadata)
            if found[0] is not None:
                return found
        xres, yres = _resolution(page)
        resunit = int(getattr(page, "resolutionunit", 1) or 1)
        if tif.is_imagej:
            meta = tif.imagej_metadata or {}
            unit = normalize_unit(meta.get("unit"))
            spacing = meta.get("spacing")
            if unit is not None and xres > 0 and yres > 0:
                return (1.0 / yres, 1.0 / xres), unit, _float_or_none(spacing)
        # plain TIFF resolution tags: INCH (2), CENTIMETER (3); tifffile adds MM (4), UM (5)
        tag_unit = {2: "inch", 3: "cm", 4: "mm", 5: _MICRON}.get(resunit)
        if tag_unit is None or xres <= 0 or yres <= 0:
            return None, None, None
        py, px = 1.0 / yres, 1.0 / xres
        if tag_unit != "inch":  # metric: report in µm, what microscopists read
            f = _UNIT_UM[tag_unit]
            return (py * f, px * f), _MICRON, None
        return (py, px), tag_unit, None

    # -- access ----------------------------------------------------------------------

    def plane_index(self, i: int) -> tuple[int, ...]:
        """The index over ``plane_axes`` of plane ``i`` (C order)."""
        if not 0 <= i < self.n_planes:
            msg = f"plane {i} out of range 0..{self.n_planes - 1}"
            raise IndexError(msg)
        return tuple(int(v) for v in np.unravel_index(i, self.plane_index_shape))

    def plane_label(self, i: int) -> str:
        """Human label of plane ``i``, e.g. "T=0 Z=3" (or "plane 0" for a 2D image)."""
        idx = self.plane_index(i)
        if not idx:
            return "plane 0"
        return " ".join(f"{a}={v}" for a, v in zip(self.plane_axes, idx, strict=True))

    def read_plane(self, i: int) -> np.ndarray:
        """Plane ``i`` as a (Y, X) array in the file's dtype (native byte order)."""
        if self._tif is None:
            msg = f"{self.path} is closed"
            raise ValueError(msg)
        idx = self.plane_index(i)
        try:
            if self._fd is not None:
                plane = self._pread_plane(i)
            elif self._dataoffset is not None:
                plane = self._memmap_plane(idx)
            else:
                plane = self._page_plane(idx)
        except errors.CvdmError:
            raise
        except (ValueError, EOFError, OSError, IndexError) as exc:
            raise self._fail(
                errors.NotATiffError,
                f"cannot read plane {i} ({self.plane_label(i)}): {exc}",
                TRUNCATED_HINT,
            ) from None
        return plane

    def iter_planes(self) -> Iterator[np.ndarray]:
        """Planes 0..n_planes-1 in C order over ``plane_axes``, one at a time."""
        for i in range(self.n_planes):
            yield self.read_plane(i)

    def _full_index(self, idx: tuple[int, ...]) -> list[int | slice]:
        it = iter(idx)
        return [slice(None) if a in "YX" else next(it) for a in self.axes]

    def _to_yx(self, arr: np.ndarray) -> np.ndarray:
        # the free dims of ``arr`` are Y and X in the order they appear in ``axes``
        if self.axes.index("X") < self.axes.index("Y"):
            arr = arr.T
        return np.ascontiguousarray(arr, dtype=self.dtype)

    def _pread_plane(self, i: int) -> np.ndarray:
        # contiguous uncompressed data with Y, X last: plane i is one block of bytes
        ny, nx = self.plane_shape
        nbytes = ny * nx * self._file_dtype.itemsize
        offset = self._dataoffset + i * nbytes
        buf = bytearray(nbytes)
        view = memoryview(buf)
        got = 0
        while got < nbytes:
            n = os.preadv(self._fd, [view[got:]], offset + got)
            if n == 0:
                msg = f"unexpected end of file at byte {offset + got}"
                raise EOFError(msg)
            got += n
        arr = np.frombuffer(buf, dtype=self._file_dtype).reshape(ny, nx)
        return arr.astype(self.dtype, copy=False)

    def _memmap_plane(self, idx: tuple[int, ...]) -> np.ndarray:
        # strided layout (e.g. user axes YXC on interleaved RGB): map, copy one plane, unmap
        mm = np.memmap(
            self.path, dtype=self._file_dtype, mode="r", offset=self._dataoffset, shape=self.shape
        )
        try:
            return self._to_yx(np.array(mm[tuple(self._full_index(idx))]))
        finally:
            del mm

    def _page_plane(self, idx: tuple[int, ...]) -> np.ndarray:
        full = self._full_index(idx)
        nd = self._outer_nd
        outer, inner = full[:nd], tuple(full[nd:])
        outer_shape = self.shape[:nd]
        free = [d for d in range(nd) if isinstance(outer[d], slice)]
        pieces = []
        for combo in np.ndindex(*[outer_shape[d] for d in free]):
            pos = list(outer)
            for d, v in zip(free, combo, strict=True):
                pos[d] = v
            k = int(np.ravel_multi_index(pos, outer_shape)) if nd else 0
            page = self._series.pages[k]
            if page is None:  # OME files may omit planes: tifffile's convention is zeros
                pieces.append(np.zeros(self._series.pages[0].shape, self.dtype)[inner])
            else:
                pieces.append(page.asarray()[inner])
        arr = np.stack(pieces).reshape(tuple(outer_shape[d] for d in free) + pieces[0].shape)
        return self._to_yx(arr)

    # -- lifetime --------------------------------------------------------------------

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._tif is not None:
            self._tif.close()
            self._tif = None

    def __enter__(self) -> TiffInput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        px = "uncalibrated" if self.pixel_size is None else f"{self.pixel_size} {self.unit}"
        return (
            f"TiffInput({str(self.path)!r}, axes={self.axes!r}, shape={self.shape}, "
            f"dtype={self.dtype}, pixel_size={px})"
        )


def _ifd_chain_end(tif: tifffile.TiffFile) -> int:
    """End (in bytes) of the last image file directory and its tag values.

    ``len(tif.pages)`` walks the whole IFD chain, which makes tifffile log broken links;
    a file cut inside its last directory still parses, so that end is checked by hand.
    """
    n = len(tif.pages)
    last = tif.pages[n - 1] if n else None
    if last is None:
        return 0
    t = tif.tiff
    tags = getattr(last, "tags", None)
    if tags is None:  # a TiffFrame: only its position is known
        return int(last.offset) + t.tagnosize
    end = int(last.offset) + t.tagnosize + len(tags) * t.tagsize + t.offsetsize
    for tag in tags.values():
        end = max(end, int(tag.valueoffset) + int(tag.valuebytecount))
    return end


def _float_or_none(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _resolution(page: Any) -> tuple[float, float]:
    """(x, y) pixels per resolution unit from the tags (0 where absent)."""
    out = []
    for name in ("XResolution", "YResolution"):
        tag = page.tags.get(name)
        if tag is None:
            out.append(0.0)
            continue
        num, den = tag.value if isinstance(tag.value, tuple) else (tag.value, 1)
        out.append(float(num) / float(den) if den else 0.0)
    x, y = out
    if x == 1.0 and y == 1.0 and int(getattr(page, "resolutionunit", 1) or 1) == 1:
        return 0.0, 0.0  # tifffile's default (1, 1) without unit: no calibration
    return x, y


def _ome_calibration(xml: str) -> tuple[tuple[float, float] | None, str | None, float | None]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, None, None
    pixels = next(
        (el for el in root.iter() if el.tag.endswith("}Pixels") or el.tag == "Pixels"), None
    )
    if pixels is None:
        return None, None, None
    a = pixels.attrib
    px, py = _float_or_none(a.get("PhysicalSizeX")), _float_or_none(a.get("PhysicalSizeY"))
    if px is None or py is None:
        return None, None, None
    ux = normalize_unit(a.get("PhysicalSizeXUnit", _MICRON))
    uy = normalize_unit(a.get("PhysicalSizeYUnit", _MICRON))
    if uy != ux and uy in _UNIT_UM and ux in _UNIT_UM:
        py = py * _UNIT_UM[uy] / _UNIT_UM[ux]
    z = _float_or_none(a.get("PhysicalSizeZ"))
    uz = normalize_unit(a.get("PhysicalSizeZUnit", _MICRON))
    if z is not None and uz != ux:
        z = z * _UNIT_UM[uz] / _UNIT_UM[ux] if uz in _UNIT_UM and ux in _UNIT_UM else None
    return (py, px), ux, z


def open_tiff(path: str | os.PathLike[str], *, axes: str | None = None) -> TiffInput:
    """Open an input TIFF lazily (use as a context manager).

    Args:
        path: the file.
        axes: CSBDeep-style axes string (e.g. "TZCYX", "ZYX", "YX"); overrides the file's
            metadata. Must have one letter per dimension of the image tifffile reads.

    Raises:
        errors.InputNotFoundError, errors.NotATiffError, errors.UnsupportedLayoutError,
        errors.ConfigError (bad letters in ``axes``); each names the file.
    """
    return TiffInput(path, axes=axes)


def read_single_plane(
    path: str | os.PathLike[str], *, dtype: Any = np.float64, purpose: str = "image pairs"
) -> np.ndarray:
    """The one YX plane of a 2D TIFF as ``dtype`` (H, W), for training and evaluation pairs.

    Raises errors.DataError (several planes) or errors.InvalidPixelsError (NaN or Inf),
    naming the file, besides the errors of :func:`open_tiff`.
    """
    with open_tiff(path) as tif:
        if tif.n_planes != 1:
            raise errors.DataError(
                f"has {tif.n_planes} planes (axes {tif.axes}); {purpose} are 2D images",
                path=path,
                hint="save one YX plane per file (e.g. as written by cvdm simulate)",
            )
        plane = np.asarray(tif.read_plane(0), dtype=dtype)
    if not np.isfinite(plane).all():
        raise errors.InvalidPixelsError("NaN or Inf pixels", path=path, hint="fix the image")
    return plane


# ------------------------------------------------------------------------------------
# Output geometry
# ------------------------------------------------------------------------------------


def output_spec(
    inp: TiffInput, scale: int = 2
) -> tuple[tuple[int, ...], str, tuple[float, float] | None]:
    """(shape, axes, pixel_size) of the output for ``inp`` upsampled ``scale`` times in YX.

    The non-YX axes keep their order and sizes, followed by Y*scale, X*scale, so output
    plane i is input plane i. Letters that are not ImageJ axes (S, Q, I, ...) are renamed to
    free ones among Z, T, C so Fiji opens the file as a hyperstack. The pixel size is
    divided by ``scale``; its unit is ``inp.unit``.
    """
    if scale < 1:
        msg = f"scale must be >= 1, got {scale}"
        raise ValueError(msg)
    plane_axes = inp.plane_axes
    marked = "".join(a if a in "TZC" else "?" for a in plane_axes)
    renamed = _fiji_letters(marked, "".join(a for a in plane_axes if a in "TZC"))
    if len(plane_axes) > 3 or (marked and not renamed):
        raise errors.UnsupportedLayoutError(
            f"{len(plane_axes)} non-YX axes ({plane_axes}) do not fit a TZCYX hyperstack",
            path=inp.path,
            hint="pass --axes with at most T, Z, C besides Y and X",
        )
    ny, nx = inp.plane_shape
    shape = (*inp.plane_index_shape, ny * scale, nx * scale)
    px = None
    if inp.pixel_size is not None:
        px = (inp.pixel_size[0] / scale, inp.pixel_size[1] / scale)
    return shape, renamed + "YX", px


def with_samples_axis(
    shape: Sequence[int], axes: str, samples: int
) -> tuple[tuple[int, ...], str, str]:
    """Add an axis of ``samples`` planes (for --save-samples) to an output spec.

    The samples go on the first ImageJ axis the image does not use, in the order T, Z, C
    (so Fiji's frame slider steps through samples), inserted at its TZCYX position. A TZCYX
    image has none free: the samples then become an OME "modulo" axis Q right after T
    (Fiji's Bio-Formats shows it as T x samples). Returns (shape, axes, samples_letter).
    """
    shape, axes = tuple(int(n) for n in shape), str(axes)
    for letter in "TZC":
        if letter in axes:
            continue
        rank = IMAGEJ_ORDER.index(letter)
        pos = sum(1 for a in axes[:-2] if a in IMAGEJ_ORDER and IMAGEJ_ORDER.index(a) < rank)
        return (*shape[:pos], samples, *shape[pos:]), axes[:pos] + letter + axes[pos:], letter
    pos = axes.index("T") + 1
    return (*shape[:pos], samples, *shape[pos:]), axes[:pos] + "Q" + axes[pos:], "Q"


@dataclass(frozen=True)
class OutputLayout:
    """How an output is written: "imagej" (classic TIFF) or "ome" (BigTIFF if ``bigtiff``)."""

    kind: Literal["imagej", "ome"]
    bigtiff: bool


def choose_layout(
    shape: Sequence[int],
    axes: str,
    *,
    itemsize: int = 4,
    bigtiff_threshold: int = BIGTIFF_THRESHOLD,
) -> OutputLayout:
    """ImageJ hyperstack when the axes are in TZCYX order and the file stays below
    ``bigtiff_threshold`` bytes (pixel data plus ~256 bytes of IFD per plane); OME-TIFF
    otherwise, BigTIFF past the threshold (ImageJ cannot write BigTIFF; Fiji opens big
    OME-TIFFs through Bio-Formats)."""
    n_planes = int(np.prod(shape[:-2], dtype=np.int64))
    nbytes = int(np.prod(shape, dtype=np.int64)) * itemsize + 256 * n_planes
    big = nbytes > bigtiff_threshold
    imagej_order = "".join(a for a in IMAGEJ_ORDER if a in axes) == axes
    if imagej_order and not big:
        return OutputLayout("imagej", False)
    return OutputLayout("ome", big)


# ------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------


# the pixel types ImageJ opens as they are (no conversion on load)
IMAGEJ_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.float32))


def write_plane_tiff(
    path: str | os.PathLike[str], plane: np.ndarray, *, pixel_nm: float, fsync: bool = True
) -> Path:
    """Write one YX plane as a small ImageJ TIFF with its pixel size, atomically.

    Args:
        path: the file to (over)write; written as ``.<name>.partial-<pid>`` first
            (:func:`cvdm_cli.io.atomic.atomic_path`).
        plane: (H, W) array of uint8, uint16 or float32 (ImageJ's own types), stored as it
            is: uncompressed, one strip per tifffile's default, native byte order.
        pixel_nm: the side of a (square) pixel in nm; stored in µm as ImageJ does
            (``unit=um`` in the description, resolution tags in pixels per µm), so Fiji and
            :func:`open_tiff` read ``pixel_size == (pixel_nm / 1000,) * 2`` in "µm".

    The training pairs of ``cvdm simulate`` are written this way. Returns ``path``; an
    OSError (read-only folder, disk full) propagates, leaving no file behind.
    """
    array = np.asarray(plane)
    if array.ndim != 2:
        msg = f"expected one (Y, X) plane, got shape {array.shape}"
        raise ValueError(msg)
    if array.dtype not in IMAGEJ_DTYPES:
        msg = f"ImageJ TIFF planes are uint8, uint16 or float32, not {array.dtype}"
        raise ValueError(msg)
    if not (math.isfinite(pixel_nm) and pixel_nm > 0):
        msg = f"pixel_nm must be a positive number, got {pixel_nm}"
        raise ValueError(msg)
    um = pixel_nm / 1000.0
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        tifffile.imwrite(
            tmp,
            array,
            imagej=True,
            resolution=(1.0 / um, 1.0 / um),
            metadata={"axes": "YX", "unit": "um"},
        )
    return path


def _raise_write_error(exc: OSError, path: Path, what: str) -> None:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        raise errors.DiskFullError(
            f"disk full while {what}",
            path=path,
            hint="free some space or choose another --output folder",
        ) from None
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        raise errors.OutputNotWritableError(
            f"cannot write here ({exc.strerror})",
            path=path,
            hint="choose a writable --output folder or fix its permissions",
        ) from None
    raise exc


class OutputTiff:
    """A float32 output TIFF written plane by plane, atomically.

    Args:
        final_path: where the finished file goes.
        shape, axes: the whole output (axes end in "YX"; letters from TZCYX, plus Q for a
            samples axis).
        pixel_size: (y, x) in ``unit`` or None; written to the resolution tags and to the
            ImageJ description or the OME PhysicalSizeX/Y.
        unit: length unit (any spelling :func:`normalize_unit` knows).
        overwrite: replace an existing ``final_path`` (else errors.OutputExistsError here).
        extra_axis: the letter in ``axes`` that holds samples (see :func:`with_samples_axis`);
            enables :meth:`write_samples` and labels the planes.
        z_spacing: Z step in ``unit`` (kept from the input), or None.
        bigtiff_threshold: bytes past which OME BigTIFF is used (tests lower it).
        fsync: flush to disk before the rename (so a power cut cannot leave a torn file).
        description: free text about how the file was made (cvdm writes JSON): the ImageJ
            "Info" property (Fiji: Image > Show Info) or the OME Image Description.

    Planes are written in C order over the non-YX axes by :meth:`write_plane` (or at an
    explicit index). ``commit()`` (run by a clean ``with`` exit) renames the temporary file
    ``.<name>.partial-<pid>`` to ``final_path``; an exception, KeyboardInterrupt or
    :meth:`abort` deletes it. A SIGKILL leaves only the hidden partial file, never the name.
    """

    def __init__(
        self,
        final_path: str | os.PathLike[str],
        *,
        shape: Sequence[int],
        axes: str,
        pixel_size: tuple[float, float] | None,
        unit: str | None,
        overwrite: bool = False,
        extra_axis: str | None = None,
        z_spacing: float | None = None,
        bigtiff_threshold: int = BIGTIFF_THRESHOLD,
        fsync: bool = True,
        description: str | None = None,
    ) -> None:
        self.final_path = Path(final_path)
        self.description = description
        self.shape = tuple(int(n) for n in shape)
        self.axes = str(axes).upper()
        self.pixel_size = (
            None if pixel_size is None else (float(pixel_size[0]), float(pixel_size[1]))
        )
        self.unit = normalize_unit(unit)
        self.extra_axis = extra_axis
        self.z_spacing = z_spacing
        self.overwrite = overwrite
        self._fsync = fsync
        self._fd: int | None = None
        self._done = False
        self._check_spec()
        self.layout = choose_layout(self.shape, self.axes, bigtiff_threshold=bigtiff_threshold)
        self.plane_shape = self.shape[-2:]
        self.plane_index_shape = self.shape[:-2]
        self.n_planes = int(np.prod(self.plane_index_shape, dtype=np.int64))
        self._written = np.zeros(self.n_planes, dtype=bool)
        self._next = 0
        self.temp_path = partial_path(self.final_path)  # the rule of every atomic write
        self._create()

    def _check_spec(self) -> None:
        axes, shape = self.axes, self.shape
        if len(axes) != len(shape) or not axes.endswith("YX") or len(set(axes)) != len(axes):
            msg = f"axes {axes!r} must match shape {shape} and end with YX"
            raise ValueError(msg)
        allowed = IMAGEJ_ORDER + ("Q" if self.extra_axis == "Q" else "")
        if set(axes) - set(allowed):
            msg = f"output axes {axes!r} must use letters from {allowed}"
            raise ValueError(msg)
        if self.extra_axis is not None and self.extra_axis not in axes[:-2]:
            msg = f"extra_axis {self.extra_axis!r} is not a non-YX axis of {axes!r}"
            raise ValueError(msg)
        if min(shape) < 1:
            msg = f"output shape {shape} has an empty axis"
            raise ValueError(msg)
        final = self.final_path
        if final.is_dir():
            raise errors.OutputExistsError(
                "is a folder", path=final, hint="give a file name ending in .tif"
            )
        if final.exists() and not self.overwrite:
            raise errors.OutputExistsError(
                "output file already exists",
                path=final,
                hint="pass --overwrite or choose another --output",
            )
        folder = final.parent
        if not folder.is_dir():
            raise errors.OutputNotWritableError(
                "output folder does not exist", path=folder, hint="create it first"
            )

    def _metadata(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"photometric": "minisblack", "software": "cvdm"}
        unit = self.unit
        px = self.pixel_size
        if self.layout.kind == "imagej":
            md: dict[str, Any] = {"axes": self.axes}
            if px is not None:
                # ImageJ's convention: pixels per *description* unit, ResolutionUnit NONE
                kw["resolution"] = (1.0 / px[1], 1.0 / px[0])
                kw["resolutionunit"] = "NONE"
                if unit is not None:
                    md["unit"] = "micron" if unit == _MICRON else unit
            if self.z_spacing is not None and "Z" in self.axes:
                md["spacing"] = float(self.z_spacing)
            if self.extra_axis is not None and self.n_planes <= 100_000:
                k = self.axes.index(self.extra_axis)
                md["Labels"] = [
                    f"sample {int(v[k]) + 1}/{self.shape[k]}"
                    for v in np.ndindex(*self.plane_index_shape)
                ]
            if self.description is not None:
                md["Info"] = self.description
            kw["metadata"] = md
        else:
            md = {"axes": self.axes, "Name": self.final_path.name}
            ome_unit = _OME_UNIT.get(unit or "")
            if px is not None:
                if ome_unit is not None:
                    md.update(
                        PhysicalSizeX=px[1],
                        PhysicalSizeXUnit=ome_unit,
                        PhysicalSizeY=px[0],
                        PhysicalSizeYUnit=ome_unit,
                    )
                    if self.z_spacing is not None and "Z" in self.axes:
                        md.update(PhysicalSizeZ=float(self.z_spacing), PhysicalSizeZUnit=ome_unit)
                if unit in _UNIT_UM and unit != "inch":
                    to_cm = _UNIT_UM[unit] / 1e4
                    kw["resolution"] = (1.0 / (px[1] * to_cm), 1.0 / (px[0] * to_cm))
                    kw["resolutionunit"] = "CENTIMETER"
                elif unit == "inch":
                    kw["resolution"] = (1.0 / px[1], 1.0 / px[0])
                    kw["resolutionunit"] = "INCH"
                else:
                    kw["resolution"] = (1.0 / px[1], 1.0 / px[0])
                    kw["resolutionunit"] = "NONE"
            if self.extra_axis == "Q":
                md["TypeDescription"] = {"Q": "cvdm samples"}
            if self.description is not None:
                md["Description"] = self.description
            kw["metadata"] = md
        return kw

    def _create(self) -> None:
        tmp = self.temp_path
        layout = self.layout
        try:
            with tifffile.TiffWriter(
                tmp,
                bigtiff=layout.bigtiff,
                imagej=layout.kind == "imagej",
                ome=layout.kind == "ome",
                byteorder="<",
            ) as writer:
                writer.write(shape=self.shape, dtype="<f4", **self._metadata())
        except OSError as exc:
            self._remove_temp()
            _raise_write_error(exc, tmp, "creating the output")
        except BaseException:
            self._remove_temp()
            raise
        try:
            with tifffile.TiffFile(tmp) as tif:
                offset = tif.series[0].dataoffset
            if offset is None:  # pragma: no cover - tifffile lays uncompressed data contiguously
                msg = "tifffile did not lay out the output contiguously"
                raise RuntimeError(msg)
            self._dataoffset = int(offset)
            self._fd = os.open(tmp, os.O_WRONLY)
            end = self._dataoffset + int(np.prod(self.shape, dtype=np.int64)) * 4
            size = max(end, tmp.stat().st_size)
            try:  # reserve the space now: a full disk fails here, before any work
                os.posix_fallocate(self._fd, 0, size)
            except OSError as exc:
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise
                # EOPNOTSUPP/EINVAL: file system without fallocate; write errors still caught
        except OSError as exc:
            self.abort()
            _raise_write_error(exc, tmp, f"reserving {size / 1e9:.2f} GB for the output")
        except BaseException:
            self.abort()
            raise

    # -- writing ---------------------------------------------------------------------

    def _linear(self, index: int | Sequence[int] | None) -> int:
        if index is None:
            return self._next
        if isinstance(index, (int, np.integer)):
            i = int(index)
        else:
            i = int(np.ravel_multi_index(tuple(int(v) for v in index), self.plane_index_shape))
        if not 0 <= i < self.n_planes:
            msg = f"plane index {index} out of range for {self.n_planes} planes"
            raise IndexError(msg)
        return i

    def write_plane(self, arr: np.ndarray, index: int | Sequence[int] | None = None) -> int:
        """Write one (Y, X) plane as float32; ``index`` = linear or per-axis plane index
        (default: the next plane in C order). Returns the linear index written."""
        if self._fd is None:
            msg = f"{self.final_path} is not open for writing"
            raise ValueError(msg)
        plane = np.asarray(arr)
        if plane.shape != self.plane_shape:
            msg = f"plane shape {plane.shape} != output plane shape {self.plane_shape}"
            raise ValueError(msg)
        i = self._linear(index)
        data = np.ascontiguousarray(plane, dtype="<f4")
        nbytes = data.nbytes
        offset = self._dataoffset + i * nbytes
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < nbytes:
                done += os.pwrite(self._fd, view[done:], offset + done)
        except OSError as exc:
            _raise_write_error(exc, self.final_path, f"writing plane {i}")
        self._written[i] = True
        self._next = i + 1
        return i

    def write_samples(self, samples: np.ndarray, index: int) -> None:
        """Write (K, Y, X) samples of base plane ``index`` (the input plane number: C order
        over the output axes without ``extra_axis``) along ``extra_axis``."""
        if self.extra_axis is None:
            msg = "write_samples needs extra_axis"
            raise ValueError(msg)
        plane_axes = self.axes[:-2]
        k_pos = plane_axes.index(self.extra_axis)
        base_shape = tuple(
            n
            for a, n in zip(plane_axes, self.plane_index_shape, strict=True)
            if a != self.extra_axis
        )
        if samples.shape[0] != self.plane_index_shape[k_pos]:
            msg = f"{samples.shape[0]} samples != {self.plane_index_shape[k_pos]} on axis"
            raise ValueError(msg)
        base = list(np.unravel_index(int(index), base_shape)) if base_shape else []
        for k in range(samples.shape[0]):
            full = [*base[:k_pos], k, *base[k_pos:]]
            self.write_plane(samples[k], index=full)

    # -- finishing -------------------------------------------------------------------

    def commit(self) -> Path:
        """Check every plane was written, flush, and rename to ``final_path``."""
        if self._done:
            return self.final_path
        if self._fd is None:
            msg = f"{self.final_path} was aborted"
            raise ValueError(msg)
        missing = int((~self._written).sum())
        if missing:
            self.abort()
            raise IncompleteOutputError(
                f"only {self.n_planes - missing} of {self.n_planes} planes were written",
                path=self.final_path,
            )
        try:
            if self._fsync:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            self._place()
        except OSError as exc:
            self.abort()
            _raise_write_error(exc, self.final_path, "finishing the output")
        except BaseException:
            self.abort()
            raise
        self._done = True
        return self.final_path

    def _place(self) -> None:
        final, tmp = self.final_path, self.temp_path
        if self.overwrite:
            os.replace(tmp, final)
            return
        # no-clobber rename: link() fails if the name appeared meanwhile
        try:
            os.link(tmp, final)
        except FileExistsError:
            raise errors.OutputExistsError(
                "output file appeared while writing",
                path=final,
                hint="pass --overwrite or choose another --output",
            ) from None
        except OSError:  # file systems without hard links
            if final.exists():
                raise errors.OutputExistsError(
                    "output file appeared while writing", path=final
                ) from None
            os.replace(tmp, final)
            return
        os.unlink(tmp)

    def abort(self) -> None:
        """Close and delete the temporary file; the final name is never created."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        self._remove_temp()

    def _remove_temp(self) -> None:
        remove_quietly(self.temp_path)

    def __enter__(self) -> OutputTiff:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()

    def __del__(self) -> None:  # a dropped, uncommitted writer must not leave its temp file
        if getattr(self, "_done", True) is False and getattr(self, "_fd", None) is not None:
            self.abort()
