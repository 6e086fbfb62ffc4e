"""The outputs of one input file: their kinds and names, the existing-outputs check, the
provenance record, and :class:`FileOutputs`, the life of one file's outputs (open the
atomic writers, write planes in any order, keep the std statistics, commit or abort).

The local batch (:mod:`cvdm_cli.run.batch`) and the Dask client
(:mod:`cvdm_cli.run.cluster`) both write through :class:`FileOutputs`, so their files and
statistics are the same bytes and floats.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from cvdm_cli import errors
from cvdm_cli._version import __version__
from cvdm_cli.io.tiff import OutputTiff, TiffInput, output_spec, with_samples_axis
from cvdm_cli.run.settings import EnhanceSettings, ModelRef

if TYPE_CHECKING:  # pragma: no cover
    # inputs.py imports this module (for the suffixes): at run time a FileJob is only used
    from cvdm_cli.run.inputs import FileJob
    from cvdm_cli.run.plane import PlaneOutput


# --- kinds of output -------------------------------------------------------------------------


@dataclass(frozen=True)
class OutputKind:
    """One kind of output file: ``<stem><suffix>.tif``, holding ``holds`` (the sentence
    written into the file's provenance record)."""

    suffix: str
    holds: str


OUTPUT_KINDS: dict[str, OutputKind] = {
    "mean": OutputKind("_cvdm", "reconstruction: mean of the samples, input intensity units"),
    "var": OutputKind("_cvdm_var", "variance of the samples, squared input intensity units"),
    "std": OutputKind("_cvdm_std", "standard deviation of the samples, input intensity units"),
    "difficulty": OutputKind("_cvdm_difficulty", "learned schedule lambda(x), unitless"),
    "samples": OutputKind("_cvdm_samples", "the samples, input intensity units"),
}

# kind -> file name suffix (what FileJob.output_path and input discovery use)
OUTPUT_SUFFIXES: dict[str, str] = {kind: k.suffix for kind, k in OUTPUT_KINDS.items()}


# --- before any work: the folder and the outputs already there -------------------------------


def prepare_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``-o`` (and its parents) and check it is writable; errors.OutputNotWritableError."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise errors.OutputNotWritableError(
            "is a file, not a folder", path=folder, hint="give a folder for -o/--output"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.OutputNotWritableError(
            f"cannot create the output folder ({exc.strerror})",
            path=folder,
            hint="choose a writable -o/--output folder",
        ) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise errors.OutputNotWritableError(
            "output folder is not writable",
            path=folder,
            hint="choose a writable -o/--output folder or fix its permissions",
        )
    return folder


def skip_existing(job: FileJob, settings: EnhanceSettings) -> bool:
    """Whether ``job`` is already done: True when every output of ``settings`` exists (skip
    the file), False when none does or ``settings.overwrite`` is set (go).

    Raises errors.OutputExistsError when only some exist: redoing the file would overwrite
    them, and keeping them would leave outputs of two different runs side by side.
    """
    if settings.overwrite:
        return False
    outputs = job.outputs(settings)
    existing = [p for p in outputs.values() if p.exists()]
    if not existing:
        return False
    if len(existing) == len(outputs):
        return True
    missing = [p.name for p in outputs.values() if not p.exists()]
    raise errors.OutputExistsError(
        f"{', '.join(p.name for p in existing)} already exist(s) but {', '.join(missing)}"
        " do(es) not",
        path=job.input,
        hint="pass --overwrite to redo this file, or delete the old outputs",
    )


# --- what is written into each file ----------------------------------------------------------


def provenance(kind: str, input_name: str, settings: EnhanceSettings, model_ref: ModelRef) -> str:
    """JSON text saying how an output file was made, written into it (ImageJ "Info" /
    OME Description): cvdm version, what the file holds, the input's file name, the model
    and every sampling setting. No time stamp or path, so reruns give identical files."""
    record: dict[str, Any] = {
        "software": f"cvdm {__version__}",
        "output": OUTPUT_KINDS[kind].holds,
        "input": input_name,
        "model": {"name": model_ref.name or Path(model_ref.path).stem, "sha256": model_ref.sha256},
        "sampler": settings.sampler_record(),  # every setting; passes as --passes takes them
    }
    if kind in ("var", "std"):
        record["variance_smoothing_px"] = settings.variance_smoothing
    return json.dumps(record, indent=1)


# --- the std statistics of one file ----------------------------------------------------------


STD_SUBSAMPLE = 1 << 20  # about this many std pixels per file are kept for the percentile


class StdStats:
    """Statistics of the std map of one file, in input intensity units.

    :meth:`add` keeps, per plane index, the plane's float64 sum, its pixel count, the count
    above ``threshold`` and every ``stride``-th pixel (``total_pixels``: the whole file's
    output pixels, so about STD_SUBSAMPLE are kept in all). :meth:`result` combines them in
    plane order, so planes added in any order (a cluster) give the same floats as planes
    added in order (one process).
    """

    def __init__(self, total_pixels: int, threshold: float | None) -> None:
        self.stride = max(1, math.ceil(total_pixels / STD_SUBSAMPLE))
        self.threshold = threshold
        # plane index -> (sum, pixels, pixels above threshold, subsample)
        self._planes: dict[int, tuple[float, int, int, np.ndarray]] = {}

    def add(self, index: int, std: np.ndarray) -> None:
        """Record plane ``index`` (its std map, any shape); a second add replaces the first."""
        flat = std.ravel()
        above = 0 if self.threshold is None else int(np.count_nonzero(flat > self.threshold))
        total = float(flat.sum(dtype=np.float64))
        self._planes[index] = (total, flat.size, above, flat[:: self.stride].copy())

    def result(self) -> dict[str, float | None]:
        """{"std_mean", "std_p99"} (None before any plane), plus "threshold" and
        "fraction_above" (of all pixels) when a threshold is set."""
        total, count, above = 0.0, 0, 0
        kept: list[np.ndarray] = []
        for index in sorted(self._planes):  # plane order: the same float64 sum every time
            part_total, part_count, part_above, part_kept = self._planes[index]
            total += part_total
            count += part_count
            above += part_above
            kept.append(part_kept)
        if not count:
            return {"std_mean": None, "std_p99": None}
        out: dict[str, float | None] = {
            "std_mean": total / count,
            "std_p99": float(np.percentile(np.concatenate(kept), 99)),
        }
        if self.threshold is not None:
            out["threshold"] = self.threshold
            out["fraction_above"] = above / count
        return out


# --- the life of one file's outputs ----------------------------------------------------------


class FileOutputs:
    """The output files of one input, from creation to commit or abort.

    Creating it makes the output folder (errors.OutputNotWritableError) and one atomic
    :class:`~cvdm_cli.io.tiff.OutputTiff` per kind of ``settings.output_kinds()``: a hidden
    partial file each, sized for the whole output (``inp``'s planes, YX times ``scale``,
    float32), its provenance record written in (errors.OutputExistsError when a final name
    exists and ``settings.overwrite`` is not set). Then:

    - :meth:`write` puts one plane's outputs (a PlaneOutput, input units) into every file,
      at plane ``out.index``, in any order, and records the plane's std statistics;
    - :meth:`commit` renames every file into place and returns those statistics;
    - :meth:`abort` deletes the partial files (idempotent; a no-op once committed).

    As a context manager it aborts on leaving unless committed (an exception, Ctrl-C, or a
    forgotten commit). ``timings``: the seconds spent writing files (not the statistics)
    are added to its "write" entry, e.g. a FileResult's timings.
    """

    def __init__(
        self,
        job: FileJob,
        inp: TiffInput,
        settings: EnhanceSettings,
        scale: int,
        model_ref: ModelRef,
        *,
        timings: dict[str, float] | None = None,
    ) -> None:
        self.paths: dict[str, Path] = job.outputs(settings)
        self.n_planes = inp.n_planes
        self.planes_written = 0
        self.timings = {} if timings is None else timings
        self._spread = settings.spread
        self._writers: dict[str, OutputTiff] = {}
        self._committed = False
        prepare_output_dir(job.out_dir)
        shape, axes, px = output_spec(inp, scale)
        self.stats = StdStats(self.n_planes * shape[-2] * shape[-1], settings.threshold)
        try:
            for kind, path in self.paths.items():
                kw: dict[str, Any] = {
                    "pixel_size": px,
                    "unit": inp.unit,
                    "overwrite": settings.overwrite,
                    "z_spacing": inp.z_spacing,
                    "description": provenance(kind, inp.path.name, settings, model_ref),
                }
                if kind == "samples":
                    s_shape, s_axes, letter = with_samples_axis(shape, axes, settings.samples)
                    writer = OutputTiff(path, shape=s_shape, axes=s_axes, extra_axis=letter, **kw)
                else:
                    writer = OutputTiff(path, shape=shape, axes=axes, **kw)
                self._writers[kind] = writer
        except BaseException:  # also Ctrl-C: the files already created go again
            self.abort()
            raise

    def write(self, out: PlaneOutput) -> None:
        """Write plane ``out.index`` of every output and record its std statistics.

        mean, var/std (``out.spread``) and difficulty: (H, W) planes; samples: (K, H, W),
        written along the samples axis. The std statistics are of ``out.spread`` (the
        square root of the variance for a var output).
        """
        t = time.perf_counter()
        for kind, writer in self._writers.items():
            if kind == "mean":
                writer.write_plane(out.mean, out.index)
            elif kind in ("var", "std"):
                writer.write_plane(out.spread, out.index)
            elif kind == "difficulty":
                writer.write_plane(out.difficulty, out.index)
            elif kind == "samples":
                writer.write_samples(out.samples, out.index)
        self._add_write_time(time.perf_counter() - t)
        spread = out.spread
        std = spread if self._spread == "std" else np.sqrt(np.maximum(spread, 0))
        self.stats.add(out.index, std)
        self.planes_written += 1

    def commit(self) -> dict[str, float | None]:
        """Rename every file into place; returns the std statistics (see StdStats.result).

        Every plane must have been written (else IncompleteOutputError). A failure here
        aborts the files not yet renamed and propagates; files renamed before it stay.
        """
        t = time.perf_counter()
        try:
            for writer in self._writers.values():
                writer.commit()
        except BaseException:
            self.abort()
            raise
        self._committed = True
        self._add_write_time(time.perf_counter() - t)
        return self.stats.result()

    def abort(self) -> None:
        """Close and delete every partial file; never creates a final name. Idempotent."""
        if self._committed:
            return
        for writer in self._writers.values():
            writer.abort()

    def _add_write_time(self, seconds: float) -> None:
        self.timings["write"] = self.timings.get("write", 0.0) + seconds

    def __enter__(self) -> FileOutputs:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()  # a no-op once committed
