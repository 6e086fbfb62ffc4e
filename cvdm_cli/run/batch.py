"""One file or a batch: discover -> read -> normalise -> sample -> denormalise -> write.

The unit of work is :func:`process_plane`, a pure function of
``(input path, plane index, EnhanceSettings, ModelRef)`` that returns the plane's output
arrays (:class:`PlaneOutput`, in input intensity units). Everything it needs is picklable
(frozen dataclasses and a path), and the model is loaded once per process
(:func:`get_model`), so a Dask layer can map it over planes on other GPUs or nodes. The
single-process driver (:func:`run_batch`) calls the same function, handing it the plane it
read ahead in a thread.

Per file (:func:`enhance_file`): every YX plane of a T/Z/C stack is read, percentile-
normalised with the model's percentiles (``NormParams`` per plane), sampled with
:func:`cvdm_cli.sampling.plane.reconstruct_plane` (tiles x samples batched on the device, lambda(x)
once per plane), denormalised (mean: inverse affine map; variance x ((hi-lo)/2)^2; std x
(hi-lo)/2; difficulty lambda(x) unscaled) and written plane by plane through one
:class:`cvdm_cli.run.outputs.FileOutputs` (atomic :class:`cvdm_cli.io.tiff.OutputTiff`
files). Outputs, next to the input or under ``-o``::

    <stem>_cvdm.tif             mean of the samples            (enhance)
    <stem>_cvdm_var.tif         per-pixel variance             (or _cvdm_std.tif with --std)
    <stem>_cvdm_difficulty.tif  learned schedule map lambda(x) (--difficulty; uncertainty)
    <stem>_cvdm_samples.tif     every sample, as an extra axis (--save-samples)

Nothing is written over an input; existing outputs make a file "skipped" unless
``overwrite``. The library never prints: progress and notices go to a :class:`Reporter`.
"""

from __future__ import annotations

import contextlib
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cvdm_cli import errors
from cvdm_cli.core.devices import auto_batch_size, autocast_context, synchronize
from cvdm_cli.core.model import CVDM
from cvdm_cli.io.tiff import TiffInput, open_tiff, output_spec
from cvdm_cli.run.inputs import FileJob
from cvdm_cli.run.models import get_model
from cvdm_cli.run.outputs import FileOutputs, skip_existing
from cvdm_cli.run.plane import check_tiling, process_plane
from cvdm_cli.run.settings import EnhanceSettings, ModelRef
from cvdm_cli.sampling.plane import plan_for
from cvdm_cli.sampling.schedules import count_steps

Status = Literal["done", "skipped", "failed", "interrupted", "planned"]


# --- reporting (the library never prints) ----------------------------------------------------


class Reporter:
    """Receives progress events from :func:`run_batch`; every method is a no-op here.

    The CLI subclasses it (rich progress bars on stderr, JSON lines on stdout).
    """

    def batch_started(self, jobs: Sequence[FileJob]) -> None: ...

    def file_started(self, job: FileJob, n_planes: int) -> None: ...

    def plane_started(self, job: FileJob, index: int, label: str) -> None: ...

    def sampling(self, done: int, total: int) -> None: ...

    def plane_done(self, job: FileJob, index: int) -> None: ...

    def file_done(self, result: FileResult) -> None: ...

    def notice(self, message: str) -> None: ...


# --- one file --------------------------------------------------------------------------------


@dataclass
class FileResult:
    """What happened to one input (``to_dict()`` is its JSON object).

    shape/axes: the input's; output_shape/output_axes: the mean's (YX doubled);
    seconds: wall time spent on the file; planes_done: planes written before a stop;
    tiles: tiles per plane; uncertainty: std statistics in input units (mean, 99th
    percentile, fraction above the threshold); estimated_seconds: dry-run estimate.
    """

    input: str
    outputs: dict[str, str]
    status: Status
    shape: list[int] | None = None
    axes: str | None = None
    output_shape: list[int] | None = None
    output_axes: str | None = None
    pixel_size: list[float] | None = None
    unit: str | None = None
    planes: int = 0
    planes_done: int = 0
    tiles: int | None = None
    seconds: float = 0.0
    error: str | None = None
    reason: str | None = None
    uncertainty: dict[str, float | None] | None = None
    estimated_seconds: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    exception: BaseException | None = field(default=None, repr=False)
    traceback: str | None = field(default=None, repr=False)

    @classmethod
    def of_job(cls, job: FileJob, settings: EnhanceSettings, status: Status) -> FileResult:
        """The result of ``job`` before any work: its input, the outputs of ``settings``."""
        outputs = {kind: str(path) for kind, path in job.outputs(settings).items()}
        return cls(input=str(job.input), outputs=outputs, status=status)

    def describe(self, inp: TiffInput, scale: int) -> None:
        """Fill in the input's shape, axes and planes, and the mean output's shape, axes,
        pixel size (the input's / ``scale``) and unit, from ``inp``'s header."""
        self.shape = list(inp.shape)
        self.axes = inp.axes
        self.planes = inp.n_planes
        shape, axes, px = output_spec(inp, scale)
        self.output_shape = list(shape)
        self.output_axes = axes
        self.pixel_size = None if px is None else [px[0], px[1]]
        self.unit = inp.unit

    def add_timings(self, part: dict[str, float]) -> None:
        """Add ``part`` (seconds per stage) to ``timings``, stage by stage."""
        for key, value in part.items():
            self.timings[key] = self.timings.get(key, 0.0) + value

    def skip(self) -> None:
        """Mark the file skipped: its outputs exist (see outputs.skip_existing)."""
        self.status = "skipped"
        self.reason = "outputs exist (pass --overwrite to redo)"

    def fail(self, exc: BaseException | str, tb: str | None = None) -> None:
        """Mark the file failed with ``exc`` (or an error line). An unexpected exception
        (not errors.is_expected) keeps its traceback text: ``tb``, or the one being
        handled."""
        self.status = "failed"
        if isinstance(exc, str):
            self.error = exc
            return
        self.exception = exc
        self.error = errors.describe(exc)
        if not errors.is_expected(exc):
            self.traceback = tb or traceback.format_exc()

    @property
    def input_megapixels(self) -> float:
        """Input pixels processed (planes done x Y x X), in millions."""
        if not self.shape or not self.axes or "Y" not in self.axes:
            return 0.0
        ny, nx = self.shape[self.axes.index("Y")], self.shape[self.axes.index("X")]
        return self.planes_done * ny * nx / 1e6

    def to_dict(self) -> dict[str, Any]:
        out = {
            "type": "file",
            "input": self.input,
            "status": self.status,
            "outputs": self.outputs,
            "shape": self.shape,
            "axes": self.axes,
            "output_shape": self.output_shape,
            "output_axes": self.output_axes,
            "pixel_size": self.pixel_size,
            "unit": self.unit,
            "planes": self.planes,
            "planes_done": self.planes_done,
            "tiles_per_plane": self.tiles,
            "time": round(self.seconds, 4),
            "error": self.error,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.uncertainty is not None:
            out["uncertainty"] = self.uncertainty
        if self.estimated_seconds is not None:
            out["estimated_seconds"] = round(self.estimated_seconds, 3)
        if self.timings:
            out["timings"] = {k: round(v, 4) for k, v in self.timings.items()}
        if self.notices:
            out["notices"] = self.notices
        return out


def enhance_file(
    job: FileJob,
    settings: EnhanceSettings,
    model_ref: ModelRef,
    *,
    reporter: Reporter | None = None,
    executor: ThreadPoolExecutor | None = None,
) -> tuple[FileResult, EnhanceSettings]:
    """Process every plane of one input; write its outputs atomically.

    Returns (result, settings to use next: smaller batch/tile after an out-of-memory
    retry). Expected failures (errors.CvdmError, OSError, MemoryError) and unexpected
    ones become a "failed" result (the traceback text kept in ``result.traceback``); a
    KeyboardInterrupt deletes the partial outputs and propagates.
    """
    rep = reporter or Reporter()
    result = FileResult.of_job(job, settings, "done")
    started = time.perf_counter()
    try:
        if skip_existing(job, settings):
            result.skip()
            return result, settings
        model = get_model(model_ref)
        scale = model.config.scale
        with open_tiff(job.input, axes=settings.axes) as inp:
            result.describe(inp, scale)
            result.tiles = len(plan_for(model, inp.plane_shape, settings.tile, settings.overlap))
            rep.file_started(job, inp.n_planes)
            settings = _write_planes(job, inp, settings, model_ref, scale, result, rep, executor)
    except KeyboardInterrupt:
        result.status = "interrupted"
        result.seconds = time.perf_counter() - started
        raise _Interrupted(result) from None
    except Exception as exc:  # a batch goes on past any failed file
        result.fail(exc)
    result.seconds = time.perf_counter() - started
    return result, settings


class _Interrupted(Exception):
    """Carries the interrupted file's result out of :func:`enhance_file`."""

    def __init__(self, result: FileResult) -> None:
        super().__init__("interrupted")
        self.result = result


def _write_planes(
    job: FileJob,
    inp: TiffInput,
    settings: EnhanceSettings,
    model_ref: ModelRef,
    scale: int,
    result: FileResult,
    rep: Reporter,
    executor: ThreadPoolExecutor | None,
) -> EnhanceSettings:
    """Sample every plane of ``inp`` in order, reading the next one ahead in ``executor``
    (or a thread of its own), and write them through one FileOutputs; returns the settings
    that worked last (see process_plane)."""
    n = inp.n_planes
    own_executor = executor is None and n > 1
    pool = ThreadPoolExecutor(1, thread_name_prefix="cvdm-read") if own_executor else executor

    def read(i: int) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        return inp.read_plane(i), time.perf_counter() - t

    pending: Future[tuple[np.ndarray, float]] | None = None
    try:
        with FileOutputs(job, inp, settings, scale, model_ref, timings=result.timings) as outputs:
            for i in range(n):
                if pending is not None:
                    t = time.perf_counter()
                    plane, t_read = pending.result()
                    wait = time.perf_counter() - t
                else:
                    plane, t_read = read(i)
                    wait = t_read
                # read the next plane while this one is sampled (the read releases the GIL)
                pending = pool.submit(read, i + 1) if pool is not None and i + 1 < n else None
                label = f"{inp.path} {inp.plane_label(i)}"
                rep.plane_started(job, i, label)
                out = process_plane(
                    job.input,
                    i,
                    settings,
                    model_ref,
                    plane=plane,
                    label=label,
                    progress=rep.sampling,
                    notice=rep.notice,
                )
                settings = out.settings
                result.notices.extend(out.notices)
                result.add_timings({"read": t_read, "read_wait": wait})
                result.add_timings(out.timings)
                outputs.write(out)  # adds its "write" seconds
                result.planes_done = outputs.planes_written
                rep.plane_done(job, i)
            result.uncertainty = outputs.commit()
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(Exception):
                pending.result()  # the reader must be done before the input closes
        if own_executor and pool is not None:
            pool.shutdown(wait=True)
    return settings


# --- dry run ---------------------------------------------------------------------------------


_PASS_TIMES: dict[tuple[int, str, tuple[int, int], str, int], float] = {}


@torch.inference_mode()
def denoiser_seconds(
    model: CVDM, tile_shape: tuple[int, int], precision: str = "fp32", batch: int = 1
) -> float:
    """Seconds of one denoiser call on ``batch`` tiles, timed on the model's device.

    One warm-up call on one tile, then one timed call on the whole batch (per-item cost
    grows with the batch on a CPU, where memory traffic dominates); cached per (model,
    tile, precision, batch).
    """
    key = (id(model), str(model.device), tuple(tile_shape), precision, batch)
    cached = _PASS_TIMES.get(key)
    if cached is not None:
        return cached
    device = model.device

    def call(n: int) -> float:
        z = torch.zeros((n, 1, *tile_shape), device=device)
        g = torch.full_like(z, 0.5)
        synchronize(device)
        t = time.perf_counter()
        with autocast_context(device, precision):
            model.eps(z, z, g)
        synchronize(device)
        return time.perf_counter() - t

    call(1)
    seconds = call(batch)
    _PASS_TIMES[key] = seconds
    return seconds


def plan_file(job: FileJob, settings: EnhanceSettings, model_ref: ModelRef) -> FileResult:
    """What :func:`enhance_file` would do, without writing: shapes, planes, tiles, outputs
    and an estimated time: planes x tiles x samples x denoiser calls per sample x the
    per-tile time of one denoiser call at the batch size the run will use (timed on the
    device; the schedule map, blending and I/O, a few percent, are not counted)."""
    result = FileResult.of_job(job, settings, "planned")
    try:
        if skip_existing(job, settings):
            result.skip()
        model = get_model(model_ref)
        with open_tiff(job.input, axes=settings.axes) as inp:
            result.describe(inp, model.config.scale)
            plan = plan_for(model, inp.plane_shape, settings.tile, settings.overlap)
    except Exception as exc:
        result.status = "failed"
        result.exception = exc
        result.error = errors.describe(exc)
        return result
    result.tiles = len(plan.tiles)
    calls = count_steps(settings.sampler, settings.steps, model.config.timesteps)
    items = result.tiles * settings.samples
    th, tw = plan.tile_shape
    batch = min(items, settings.batch_size or auto_batch_size(th * tw, model.device))
    per_item = denoiser_seconds(model, plan.tile_shape, settings.precision, batch) / batch
    result.estimated_seconds = result.planes * items * calls * per_item
    return result


# --- the batch -------------------------------------------------------------------------------


@dataclass
class BatchResult:
    """All file results of a run, and its totals (``to_dict()`` is the summary object)."""

    files: list[FileResult]
    seconds: float
    device: str
    precision: str
    model: str = ""
    interrupted: bool = False
    dry_run: bool = False
    settings: EnhanceSettings | None = None

    def count(self, status: Status) -> int:
        return sum(1 for f in self.files if f.status == status)

    @property
    def failed(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "failed"]

    @property
    def input_megapixels(self) -> float:
        return sum(f.input_megapixels for f in self.files)

    @property
    def megapixels_per_second(self) -> float | None:
        busy = sum(f.seconds for f in self.files if f.planes_done)
        return self.input_megapixels / busy if busy > 0 else None

    def to_dict(self) -> dict[str, Any]:
        rate = self.megapixels_per_second
        out: dict[str, Any] = {
            "type": "summary",
            "done": self.count("done"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "interrupted": self.interrupted,
            "files": len(self.files),
            "time": round(self.seconds, 4),
            "input_megapixels": round(self.input_megapixels, 6),
            "megapixels_per_second": None if rate is None else round(rate, 6),
            "device": self.device,
            "precision": self.precision,
            "model": self.model,
            "failures": [{"input": f.input, "error": f.error} for f in self.failed],
        }
        if self.dry_run:
            out["dry_run"] = True
            out["planned"] = self.count("planned")
            out["estimated_seconds"] = round(
                sum(f.estimated_seconds or 0.0 for f in self.files if f.status == "planned"), 3
            )
        if self.settings is not None:
            out["settings"] = self.settings.to_dict()
        return out


def run_batch(
    jobs: Sequence[FileJob],
    settings: EnhanceSettings,
    model_ref: ModelRef,
    *,
    reporter: Reporter | None = None,
    dry_run: bool = False,
) -> BatchResult:
    """Process (or, with ``dry_run``, plan) every job; go on past failed files.

    The model is loaded once (:func:`get_model`). Ctrl-C stops after deleting the partial
    outputs of the current file; the result then has ``interrupted=True`` and lists the
    files completed before it.
    """
    settings.validate()
    rep = reporter or Reporter()
    model = get_model(model_ref)
    check_tiling(settings, model)
    started = time.perf_counter()
    batch = BatchResult(
        files=[],
        seconds=0.0,
        device=str(model.device),
        precision=settings.precision,
        model=model_ref.name or Path(model_ref.path).stem,
        dry_run=dry_run,
        settings=settings,
    )
    rep.batch_started(jobs)
    current = settings
    with ThreadPoolExecutor(1, thread_name_prefix="cvdm-read") as pool:
        for job in jobs:
            if dry_run:
                result = plan_file(job, current, model_ref)
            else:
                try:
                    result, current = enhance_file(
                        job, current, model_ref, reporter=rep, executor=pool
                    )
                except _Interrupted as stop:
                    batch.files.append(stop.result)
                    batch.interrupted = True
                    rep.file_done(stop.result)
                    break
                except KeyboardInterrupt:  # between files
                    batch.interrupted = True
                    break
            batch.files.append(result)
            rep.file_done(result)
    batch.seconds = time.perf_counter() - started
    return batch
