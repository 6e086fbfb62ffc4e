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
:func:`cvdm_cli.tiled.reconstruct_plane` (tiles x samples batched on the device, lambda(x)
once per plane), denormalised (mean: inverse affine map; variance x ((hi-lo)/2)^2; std x
(hi-lo)/2; difficulty lambda(x) unscaled) and written plane by plane into atomic
:class:`cvdm_cli.tiff.OutputTiff` files. Outputs, next to the input or under ``-o``::

    <stem>_cvdm.tif             mean of the samples            (enhance)
    <stem>_cvdm_var.tif         per-pixel variance             (or _cvdm_std.tif with --std)
    <stem>_cvdm_difficulty.tif  learned schedule map lambda(x) (--difficulty; uncertainty)
    <stem>_cvdm_samples.tif     every sample, as an extra axis (--save-samples)

Nothing is written over an input; existing outputs make a file "skipped" unless
``overwrite``. The library never prints: progress and notices go to a :class:`Reporter`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import math
import os
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from cvdm_cli import errors
from cvdm_cli._version import __version__
from cvdm_cli.model import CVDM
from cvdm_cli.normalize import (
    NormParams,
    denormalize,
    denormalize_std,
    denormalize_variance,
    percentile_normalize,
)
from cvdm_cli.passes import resolve_passes
from cvdm_cli.sampler import SAMPLERS, auto_batch_size, count_steps, resolve_eta
from cvdm_cli.tiff import OutputTiff, TiffInput, open_tiff, output_spec, with_samples_axis
from cvdm_cli.tiled import TILINGS, plan_for, reconstruct_plane
from cvdm_cli.variance import (
    DEFAULT_VARIANCE_SMOOTHING,
    check_variance_smoothing,
    pool_variance,
)
from cvdm_cli.views import TTA_DEFAULT

__all__ = [
    "DEFAULT_GLOBS",
    "OUTPUT_SUFFIXES",
    "BatchResult",
    "EnhanceSettings",
    "FileJob",
    "FileResult",
    "ModelRef",
    "PlaneOutput",
    "Reporter",
    "check_tiling",
    "clear_model_cache",
    "default_tile",
    "denoiser_seconds",
    "discover_inputs",
    "enhance_file",
    "get_model",
    "is_cvdm_output",
    "plan_file",
    "prepare_output_dir",
    "process_plane",
    "run_batch",
]

DEFAULT_GLOBS = ("*.tif", "*.tiff")
# output kind -> file name suffix (before .tif)
OUTPUT_SUFFIXES = {
    "mean": "_cvdm",
    "var": "_cvdm_var",
    "std": "_cvdm_std",
    "difficulty": "_cvdm_difficulty",
    "samples": "_cvdm_samples",
}
# --tile default on CPU / MPS, output pixels (see default_tile)
CPU_TILE = 256
# values of the std map kept per file for its 99th percentile (exact below this size)
STD_SUBSAMPLE = 1 << 20

Status = Literal["done", "skipped", "failed", "interrupted", "planned"]


# --- settings and model reference (picklable) ----------------------------------------------


@dataclass(frozen=True)
class EnhanceSettings:
    """Everything that decides a plane's outputs, frozen (hashable, picklable).

    tile, overlap: output pixels; tile=None processes a plane in one piece.
    batch_size: tile-samples per denoiser call (None: from the device, see
        ``sampler.auto_batch_size``). precision: "fp32", "bf16" or "fp16" (already
        resolved from "auto" for the device). spread: "var" or "std" output.
    variance_smoothing: Gaussian sigma (output pixels) over which the sample variance is
        pooled before it is written (:mod:`cvdm_cli.variance`); 0 writes it per pixel.
    passes: the fast sampler's steps split into passes that restart from t_max: a count
        or the steps per pass, "2,2,16" (``passes.resolve_passes``); None: passes of 2 steps.
    write_mean: False for ``cvdm uncertainty`` (only the uncertainty outputs).
    threshold: std in input units; the fraction of pixels above it is reported.
    """

    samples: int = 8
    steps: int = 20
    sampler: str = "fast"
    tile: int | None = CPU_TILE
    overlap: int = 32
    tiling: str = "sync"
    batch_size: int | None = None
    precision: str = "fp32"
    seed: int = 0
    tta: bool = TTA_DEFAULT
    antithetic: bool = False
    passes: str | None = None
    variance_smoothing: float = DEFAULT_VARIANCE_SMOOTHING
    eta: float | None = None
    axes: str | None = None
    replace_nan: bool = False
    write_mean: bool = True
    spread: Literal["var", "std"] = "var"
    difficulty: bool = False
    save_samples: bool = False
    overwrite: bool = False
    threshold: float | None = None

    def output_kinds(self) -> tuple[str, ...]:
        """The outputs written per input, in the order they are listed."""
        kinds = ["mean"] if self.write_mean else []
        kinds.append(self.spread)
        if self.difficulty:
            kinds.append("difficulty")
        if self.save_samples:
            kinds.append("samples")
        return tuple(kinds)

    def validate(self) -> None:
        """Raise errors.ConfigError (naming the option) for values that cannot work."""

        def bad(option: str, what: str, hint: str) -> errors.ConfigError:
            return errors.ConfigError(what, path=option, hint=hint)

        if self.samples < 1:
            raise bad("--samples", f"must be >= 1, got {self.samples}", "e.g. --samples 8")
        if self.steps < 1:
            raise bad("--steps", f"must be >= 1, got {self.steps}", "e.g. --steps 20")
        if self.sampler not in SAMPLERS:
            raise bad("--sampler", f"unknown sampler {self.sampler!r}", "use fast or reference")
        resolve_passes(self.sampler, self.steps, self.passes)
        if self.tiling not in TILINGS:
            raise bad("--tiling", f"unknown tiling {self.tiling!r}", "use sync or independent")
        if self.overlap < 0:
            raise bad("--overlap", f"must be >= 0, got {self.overlap}", "e.g. --overlap 32")
        if self.tile is not None and self.tile <= self.overlap:
            raise bad(
                "--tile",
                f"tile {self.tile} must be larger than the overlap {self.overlap}",
                "e.g. --tile 256 --overlap 32",
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise bad("--batch-size", f"must be >= 1, got {self.batch_size}", "or leave it out")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise bad("--precision", f"unknown precision {self.precision!r}", "fp32, bf16, fp16")
        if self.spread not in ("var", "std"):
            raise bad("spread", f"unknown uncertainty output {self.spread!r}", "var or std")
        check_variance_smoothing(self.variance_smoothing)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class ModelRef:
    """A model by local file and device: what a worker process needs to load it.

    path: a local .safetensors file (resolved from a registry name / hf:// spec first).
    device: a torch device string ("cpu", "cuda", "cuda:1", "mps").
    name: how reports name the model (registry name, file stem or hf:// spec).
    sha256: the file's sha256 when known (resolved models), recorded in the outputs.
    """

    path: str
    device: str = "cpu"
    name: str = ""
    sha256: str = ""


_MODEL_CACHE: dict[tuple[str, int, int, str], CVDM] = {}
_MODEL_LOCK = threading.Lock()


def get_model(ref: ModelRef) -> CVDM:
    """The model of ``ref``, loaded once per process (keyed by file identity and device)."""
    from cvdm_cli.weights import load_weights

    real = os.path.realpath(ref.path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise errors.UnknownModelError(
            "model file not found", path=ref.path, hint="check --model"
        ) from None
    key = (real, st.st_mtime_ns, st.st_size, ref.device)
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = load_weights(real, device=torch.device(ref.device)).prepare_inference()
            _MODEL_CACHE.clear()  # one model per process: free the previous one
            _MODEL_CACHE[key] = model
    return model


def clear_model_cache() -> None:
    """Drop the model :func:`get_model` holds (a worker that goes on with other work)."""
    with _MODEL_LOCK:
        _MODEL_CACHE.clear()


# --- the tile default -------------------------------------------------------------------------


def activation_bytes_per_pixel(model: CVDM) -> float:
    """Rough peak bytes per output pixel of one denoiser item (inference, float32).

    The U-Net keeps (num_res_blocks + 1) skip tensors per level (width channels*mult at
    1/4^level of the pixels) plus ~6 working tensors of the widest full-resolution level.
    Self-attention goes through torch's scaled_dot_product_attention (memory-efficient
    kernels on CUDA), so it is not counted.
    """
    cfg = model.config
    skips = sum(
        (cfg.num_res_blocks + 1) * cfg.channels * m / 4**level
        for level, m in enumerate(cfg.channel_mults)
    )
    working = 6 * cfg.channels * cfg.channel_mults[0]
    return 4.0 * (skips + working)


def default_tile(
    model: CVDM, device: torch.device | str, *, items: int = 8, free_bytes: int | None = None
) -> int:
    """The --tile default, in output pixels: the one place this rule lives.

    CPU and MPS: 256 (CPU time, not memory, is the limit: smaller tiles add overlap work,
    larger ones gain nothing). CUDA: the largest of 1024, 768, 512, 384, 256 for which
    ``items`` tile-samples (one batch) fit in half of the free device memory
    (``torch.cuda.mem_get_info``) after the weights: tile^2 * items *
    :func:`activation_bytes_per_pixel` <= 0.5 * (free - 4 * parameters); else 128. The
    result is a multiple of the network's size divisor. Out-of-memory at run time still
    halves the batch, then the tile (see :func:`process_plane`).
    """
    device = torch.device(device)
    mult = model.pad_multiple
    if device.type != "cuda":
        return _round_tile(CPU_TILE, mult)
    if free_bytes is None:
        free_bytes, _total = torch.cuda.mem_get_info(device)
    weights = 4 * sum(p.numel() for p in model.parameters())
    budget = 0.5 * (free_bytes - weights)
    per_px = activation_bytes_per_pixel(model) * max(1, items)
    for tile in (1024, 768, 512, 384, 256):
        if tile * tile * per_px <= budget:
            return _round_tile(tile, mult)
    return _round_tile(128, mult)


def _round_tile(tile: int, mult: int) -> int:
    return max(mult, tile // mult * mult)


def check_tiling(settings: EnhanceSettings, model: CVDM) -> None:
    """Refuse a --tile / --overlap the network cannot use (errors.ConfigError), before work.

    The tile must be a multiple of ``model.pad_multiple`` and of the scale factor, the
    overlap a multiple of the scale factor and smaller than the tile.
    """
    if settings.tile is None:
        return
    scale = model.config.scale
    side = max(1, -(-settings.tile // scale))
    plan_for(model, (side, side), settings.tile, settings.overlap)


# --- discovering inputs -----------------------------------------------------------------------


def input_stem(path: Path) -> str:
    """``cell.tif`` -> ``cell``; ``cell.ome.tiff`` -> ``cell``."""
    name = path.name
    lower = name.lower()
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def is_cvdm_output(path: Path) -> bool:
    """True for files this tool writes (``*_cvdm*.tif``) and their hidden partial files."""
    if path.name.startswith("."):
        return True
    stem = input_stem(path)
    return any(stem.endswith(suffix) for suffix in OUTPUT_SUFFIXES.values())


@dataclass(frozen=True)
class FileJob:
    """One input file and the folder its outputs go to."""

    input: Path
    out_dir: Path

    @property
    def stem(self) -> str:
        return input_stem(self.input)

    def output_path(self, kind: str) -> Path:
        return self.out_dir / f"{self.stem}{OUTPUT_SUFFIXES[kind]}.tif"

    def outputs(self, settings: EnhanceSettings) -> dict[str, Path]:
        return {kind: self.output_path(kind) for kind in settings.output_kinds()}


def _matches(name: str, globs: Sequence[str]) -> bool:
    lower = name.lower()  # case-insensitive: CELL.TIF is a TIFF too
    return any(fnmatch.fnmatchcase(lower, g.lower()) for g in globs)


def _is_within(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def _walk(folder: Path, globs: Sequence[str], recursive: bool, skip: Path | None) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and not _is_within(here / d, skip)
        )
        for name in sorted(files, key=lambda n: (n.lower(), n)):
            path = here / name
            if _matches(name, globs) and not is_cvdm_output(path):
                found.append(path)
        if not recursive:
            break
    return found


def discover_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    globs: Sequence[str] = DEFAULT_GLOBS,
    recursive: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
) -> list[FileJob]:
    """Files and folders -> one :class:`FileJob` per input file, in a stable order.

    A file is taken as given (whatever its name); a folder contributes the files matching
    ``globs`` (case-insensitive; its sub-folders too when ``recursive``), leaving out hidden
    files, this tool's own outputs (``*_cvdm*.tif``) and anything inside ``output_dir``.
    Outputs go next to each input, or under ``output_dir`` keeping the layout relative to
    the folder given (a file given directly goes straight into ``output_dir``).

    Raises errors.InputNotFoundError (a path that does not exist), errors.ConfigError (no
    file found at all, or two inputs that would write the same output file).
    """
    out_root = Path(output_dir).expanduser() if output_dir is not None else None
    skip = out_root.resolve() if out_root is not None else None
    jobs: list[FileJob] = []
    seen: set[Path] = set()
    empty: list[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise errors.InputNotFoundError(
                "no such file or folder", path=path, hint="check the path and its spelling"
            )
        if path.is_dir():
            files = _walk(path, globs, recursive, skip)
            if not files:
                empty.append(str(path))
            pairs = [(f, f.parent.relative_to(path)) for f in files]
        else:
            pairs = [(path, Path())]
        for file, rel in pairs:
            key = file.resolve()
            if key in seen:
                continue
            seen.add(key)
            out_dir = file.parent if out_root is None else out_root / rel
            jobs.append(FileJob(input=file, out_dir=out_dir))
    if not jobs:
        pattern = " or ".join(globs)
        raise errors.ConfigError(
            f"no input files found (looked for {pattern})",
            path=", ".join(empty) if empty else None,
            hint="pass --recursive for sub-folders, or --glob for other names",
        )
    _check_collisions(jobs)
    return jobs


def _check_collisions(jobs: Sequence[FileJob]) -> None:
    targets: dict[Path, Path] = {}
    for job in jobs:
        for kind in OUTPUT_SUFFIXES:
            target = job.output_path(kind).resolve()
            other = targets.get(target)
            if other is not None and other != job.input:
                raise errors.ConfigError(
                    f"inputs {other} and {job.input} would both write {target.name}",
                    path=target.parent,
                    hint="process them separately, or drop -o so outputs stay next to inputs",
                )
            targets[target] = job.input
    inputs = {job.input.resolve(): job.input for job in jobs}
    for job in jobs:
        for kind in OUTPUT_SUFFIXES:
            target = job.output_path(kind).resolve()
            if target in inputs:
                raise errors.ConfigError(
                    f"output {target.name} of {job.input} is itself an input",
                    path=inputs[target],
                    hint="rename that input (names ending in _cvdm are cvdm outputs)",
                )


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


# --- the unit of work: one plane -------------------------------------------------------------


@dataclass
class PlaneOutput:
    """Outputs of one plane on the output grid, float32, in input intensity units.

    mean: (H, W) or None (uncertainty only); spread: variance or std, (H, W);
    difficulty: lambda(x), unscaled, (H, W) or None; samples: (K, H, W) or None;
    norm: the plane's percentiles; settings: the settings that succeeded (batch / tile
    smaller than asked after an out-of-memory retry); timings: seconds per stage.
    """

    index: int
    mean: np.ndarray | None
    spread: np.ndarray
    difficulty: np.ndarray | None
    samples: np.ndarray | None
    norm: NormParams
    settings: EnhanceSettings
    timings: dict[str, float] = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)


def process_plane(
    path: str | os.PathLike[str],
    index: int,
    settings: EnhanceSettings,
    model_ref: ModelRef,
    *,
    plane: np.ndarray | None = None,
    label: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> PlaneOutput:
    """Read, normalise, sample and denormalise plane ``index`` of ``path``.

    A pure function of (path, index, settings, model_ref) (noise is seeded by
    ``settings.seed`` and ``index``): the same arguments give the same arrays on the same
    device. ``plane`` (the raw (Y, X) plane, already read) and ``label`` only save the
    read; ``progress(done, total)`` counts tile-sample denoiser passes.

    Out of device memory: the batch is halved, then the tile, and the plane retried (each
    retry is announced through ``notice``); errors.DeviceOutOfMemoryError when even one
    tile of the smallest size fails. The returned ``settings`` carry what worked, so a
    driver can keep using it for the next planes.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if plane is None:
        with open_tiff(path, axes=settings.axes) as inp:
            plane = inp.read_plane(index)
            label = label or f"{inp.path} {inp.plane_label(index)}"
        timings["read"] = time.perf_counter() - t0
    label = label or f"{path} plane {index}"
    model = get_model(model_ref)
    cfg = model.config

    t = time.perf_counter()
    norm, params = percentile_normalize(
        plane,
        cfg.norm_low,
        cfg.norm_high,
        nan_policy="replace" if settings.replace_nan else "raise",
        plane_label=label,
    )
    timings["normalise"] = time.perf_counter() - t

    t = time.perf_counter()
    notices: list[str] = []

    def tell(message: str) -> None:
        notices.append(message)
        if notice is not None:
            notice(message)

    rec, used = _sample_with_fallback(model, norm, settings, index, label, progress, tell)
    timings["sample"] = time.perf_counter() - t

    t = time.perf_counter()
    mean = denormalize(rec.mean, params) if settings.write_mean else None
    # pooled over the whole plane (after tiles are joined), so tiles leave no seam in it
    var = pool_variance(rec.var, settings.variance_smoothing)
    if settings.spread == "std":
        spread = denormalize_std(np.sqrt(np.maximum(var, 0.0)), params)
    else:
        spread = denormalize_variance(var, params)
    samples = None
    if rec.samples is not None:
        samples = np.stack([denormalize(s, params) for s in rec.samples])
    difficulty = rec.difficulty.astype(np.float32, copy=False) if settings.difficulty else None
    timings["denormalise"] = time.perf_counter() - t
    return PlaneOutput(
        index=index,
        mean=mean,
        spread=spread,
        difficulty=difficulty,
        samples=samples,
        norm=params,
        settings=used,
        timings=timings,
        notices=notices,
    )


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def _free_device_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _smaller(
    settings: EnhanceSettings, model: CVDM, lr_shape: tuple[int, int]
) -> tuple[EnhanceSettings, str] | None:
    """The next settings to try after running out of memory: half the batch, then half
    the tile (with batch 1); None when already at batch 1 and the smallest tile."""
    plan = plan_for(model, lr_shape, settings.tile, settings.overlap)
    th, tw = plan.tile_shape
    batch = settings.batch_size or auto_batch_size(th * tw, model.device)
    if batch > 1:
        new = batch // 2
        return dataclasses.replace(settings, batch_size=new), f"--batch-size {new}"
    mult, scale = model.pad_multiple, model.config.scale
    tile = max(th, tw)
    min_tile = max(4 * mult, 32)
    if tile <= min_tile:
        return None
    new_tile = max(min_tile, _round_tile(tile // 2, mult))
    overlap = min(settings.overlap, new_tile // 4 // scale * scale)
    changed = dataclasses.replace(settings, tile=new_tile, overlap=overlap, batch_size=1)
    return changed, f"--tile {new_tile} --overlap {overlap} --batch-size 1"


def _sample_with_fallback(
    model: CVDM,
    norm: np.ndarray,
    settings: EnhanceSettings,
    index: int,
    label: str,
    progress: Callable[[int, int], None] | None,
    notice: Callable[[str], None],
) -> tuple[Any, EnhanceSettings]:
    current = settings
    while True:
        try:
            rec = reconstruct_plane(
                model,
                norm,
                tile=current.tile,
                overlap=current.overlap if current.tile is not None else 0,
                tiling=current.tiling,
                samples=current.samples,
                steps=current.steps,
                sampler=current.sampler,
                seed=current.seed,
                tta=current.tta,
                antithetic=current.antithetic,
                passes=current.passes,
                plane_index=index,
                batch_size=current.batch_size,
                precision=current.precision,
                eta=current.eta,
                callback=progress,
                return_samples=current.save_samples,
            )
            return rec, current
        except (RuntimeError, MemoryError) as exc:
            if not _is_out_of_memory(exc):
                raise
        # retried outside the handler, so the traceback (and the tensors its frames hold)
        # is released before the next attempt
        _free_device_memory(model.device)
        nxt = _smaller(current, model, norm.shape)
        if nxt is None:
            raise errors.DeviceOutOfMemoryError(
                f"out of {model.device.type} memory even with one tile-sample per batch"
                " and the smallest tile",
                path=label,
                hint="use --device cpu, a smaller model, or free the device",
            )
        current, what = nxt
        notice(f"{label}: out of {model.device.type} memory; retrying with {what}")


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


class _StdStats:
    """Running statistics of the std map of one file (input units)."""

    def __init__(self, total_pixels: int, threshold: float | None) -> None:
        self.stride = max(1, math.ceil(total_pixels / STD_SUBSAMPLE))
        self.threshold = threshold
        self.total = 0.0
        self.count = 0
        self.above = 0
        self.kept: list[np.ndarray] = []

    def add(self, std: np.ndarray) -> None:
        flat = std.ravel()
        self.total += float(flat.sum(dtype=np.float64))
        self.count += flat.size
        if self.threshold is not None:
            self.above += int(np.count_nonzero(flat > self.threshold))
        self.kept.append(flat[:: self.stride].copy())

    def result(self) -> dict[str, float | None]:
        if not self.count:
            return {"std_mean": None, "std_p99": None}
        kept = np.concatenate(self.kept)
        out: dict[str, float | None] = {
            "std_mean": self.total / self.count,
            "std_p99": float(np.percentile(kept, 99)),
        }
        if self.threshold is not None:
            out["threshold"] = self.threshold
            out["fraction_above"] = self.above / self.count
        return out


def _existing_outputs(outputs: dict[str, Path]) -> list[Path]:
    return [p for p in outputs.values() if p.exists()]


def _skip_or_refuse(job: FileJob, outputs: dict[str, Path], settings: EnhanceSettings) -> str:
    """'' (go), 'skip' (all outputs exist) or raise (some exist, --overwrite not given)."""
    if settings.overwrite:
        return ""
    existing = _existing_outputs(outputs)
    if not existing:
        return ""
    if len(existing) == len(outputs):
        return "skip"
    missing = [p.name for p in outputs.values() if not p.exists()]
    raise errors.OutputExistsError(
        f"{', '.join(p.name for p in existing)} already exist(s) but {', '.join(missing)}"
        " do(es) not",
        path=job.input,
        hint="pass --overwrite to redo this file, or delete the old outputs",
    )


# what each output holds, for the provenance record
_OUTPUT_MEANINGS = {
    "mean": "reconstruction: mean of the samples, input intensity units",
    "var": "variance of the samples, squared input intensity units",
    "std": "standard deviation of the samples, input intensity units",
    "difficulty": "learned schedule lambda(x), unitless",
    "samples": "the samples, input intensity units",
}


def provenance(kind: str, input_name: str, settings: EnhanceSettings, model_ref: ModelRef) -> str:
    """JSON text saying how an output file was made, written into it (ImageJ "Info" /
    OME Description): cvdm version, what the file holds, the input's file name, the model
    and every sampling setting. No time stamp or path, so reruns give identical files."""
    record: dict[str, Any] = {
        "software": f"cvdm {__version__}",
        "output": _OUTPUT_MEANINGS[kind],
        "input": input_name,
        "model": {"name": model_ref.name or Path(model_ref.path).stem, "sha256": model_ref.sha256},
        "sampler": {
            "name": settings.sampler,
            "samples": settings.samples,
            "steps": settings.steps,
            # the steps of each pass, as --passes takes them
            "passes": ",".join(
                str(n) for n in resolve_passes(settings.sampler, settings.steps, settings.passes)
            ),
            "eta": resolve_eta(settings.sampler, settings.eta),
            "tta": settings.tta,
            "antithetic": settings.antithetic,
            "seed": settings.seed,
            "precision": settings.precision,
            "tile": settings.tile,
            "overlap": settings.overlap,
            "tiling": settings.tiling,
        },
    }
    if kind in ("var", "std"):
        record["variance_smoothing_px"] = settings.variance_smoothing
    return json.dumps(record, indent=1)


def _open_outputs(
    stack: contextlib.ExitStack,
    inp: TiffInput,
    outputs: dict[str, Path],
    settings: EnhanceSettings,
    scale: int,
    model_ref: ModelRef,
) -> dict[str, OutputTiff]:
    shape, axes, px = output_spec(inp, scale)
    writers: dict[str, OutputTiff] = {}
    for kind, path in outputs.items():
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
        stack.callback(writer.abort)  # a no-op once committed
        writers[kind] = writer
    return writers


def _describe(result: FileResult, inp: TiffInput, scale: int) -> None:
    result.shape = list(inp.shape)
    result.axes = inp.axes
    result.planes = inp.n_planes
    shape, axes, px = output_spec(inp, scale)
    result.output_shape = list(shape)
    result.output_axes = axes
    result.pixel_size = None if px is None else [px[0], px[1]]
    result.unit = inp.unit


def _add_timings(total: dict[str, float], part: dict[str, float]) -> None:
    for key, value in part.items():
        total[key] = total.get(key, 0.0) + value


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
    outputs = job.outputs(settings)
    result = FileResult(
        input=str(job.input), outputs={k: str(p) for k, p in outputs.items()}, status="done"
    )
    started = time.perf_counter()
    try:
        if _skip_or_refuse(job, outputs, settings) == "skip":
            result.status = "skipped"
            result.reason = "outputs exist (pass --overwrite to redo)"
            return result, settings
        model = get_model(model_ref)
        scale = model.config.scale
        with open_tiff(job.input, axes=settings.axes) as inp:
            _describe(result, inp, scale)
            result.tiles = len(plan_for(model, inp.plane_shape, settings.tile, settings.overlap))
            rep.file_started(job, inp.n_planes)
            settings = _write_planes(job, inp, outputs, settings, model_ref, result, rep, executor)
    except KeyboardInterrupt:
        result.status = "interrupted"
        result.seconds = time.perf_counter() - started
        raise _Interrupted(result) from None
    except Exception as exc:  # a batch goes on past any failed file
        result.status = "failed"
        result.exception = exc
        result.error = _error_text(exc)
        if not isinstance(exc, (errors.CvdmError, OSError, MemoryError)):
            result.traceback = traceback.format_exc()
    result.seconds = time.perf_counter() - started
    return result, settings


class _Interrupted(Exception):
    """Carries the interrupted file's result out of :func:`enhance_file`."""

    def __init__(self, result: FileResult) -> None:
        super().__init__("interrupted")
        self.result = result


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, errors.CvdmError):
        return exc.one_line()
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    if isinstance(exc, MemoryError):
        return "out of memory — use a smaller --tile or --batch-size"
    return f"unexpected {type(exc).__name__}: {exc} — rerun with --debug and report it"


def _write_planes(
    job: FileJob,
    inp: TiffInput,
    outputs: dict[str, Path],
    settings: EnhanceSettings,
    model_ref: ModelRef,
    result: FileResult,
    rep: Reporter,
    executor: ThreadPoolExecutor | None,
) -> EnhanceSettings:
    n = inp.n_planes
    ny, nx = inp.plane_shape
    scale = get_model(model_ref).config.scale
    stats = _StdStats(n * ny * nx * scale * scale, settings.threshold)
    own_executor = executor is None and n > 1
    pool = ThreadPoolExecutor(1, thread_name_prefix="cvdm-read") if own_executor else executor

    def read(i: int) -> tuple[np.ndarray, float]:
        t = time.perf_counter()
        return inp.read_plane(i), time.perf_counter() - t

    pending: Future[tuple[np.ndarray, float]] | None = None
    try:
        with contextlib.ExitStack() as stack:
            prepare_output_dir(job.out_dir)
            writers = _open_outputs(stack, inp, outputs, settings, scale, model_ref)
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
                _add_timings(result.timings, {"read": t_read, "read_wait": wait})
                _add_timings(result.timings, out.timings)
                t = time.perf_counter()
                _write_plane(writers, out, i)
                _add_timings(result.timings, {"write": time.perf_counter() - t})
                std = out.spread if settings.spread == "std" else np.sqrt(np.maximum(out.spread, 0))
                stats.add(std)
                result.planes_done = i + 1
                rep.plane_done(job, i)
            t = time.perf_counter()
            for writer in writers.values():
                writer.commit()
            _add_timings(result.timings, {"write": time.perf_counter() - t})
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(Exception):
                pending.result()  # the reader must be done before the input closes
        if own_executor and pool is not None:
            pool.shutdown(wait=True)
    result.uncertainty = stats.result()
    return settings


def _write_plane(writers: dict[str, OutputTiff], out: PlaneOutput, index: int) -> None:
    for kind, writer in writers.items():
        if kind == "mean":
            writer.write_plane(out.mean, index)
        elif kind in ("var", "std"):
            writer.write_plane(out.spread, index)
        elif kind == "difficulty":
            writer.write_plane(out.difficulty, index)
        elif kind == "samples":
            writer.write_samples(out.samples, index)


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
    from cvdm_cli.sampler import autocast_context

    key = (id(model), str(model.device), tuple(tile_shape), precision, batch)
    cached = _PASS_TIMES.get(key)
    if cached is not None:
        return cached
    device = model.device

    def call(n: int) -> float:
        z = torch.zeros((n, 1, *tile_shape), device=device)
        g = torch.full_like(z, 0.5)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        with autocast_context(device, precision):
            model.eps(z, z, g)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
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
    outputs = job.outputs(settings)
    result = FileResult(
        input=str(job.input), outputs={k: str(p) for k, p in outputs.items()}, status="planned"
    )
    try:
        if _skip_or_refuse(job, outputs, settings) == "skip":
            result.status = "skipped"
            result.reason = "outputs exist (pass --overwrite to redo)"
        model = get_model(model_ref)
        with open_tiff(job.input, axes=settings.axes) as inp:
            _describe(result, inp, model.config.scale)
            plan = plan_for(model, inp.plane_shape, settings.tile, settings.overlap)
    except Exception as exc:
        result.status = "failed"
        result.exception = exc
        result.error = _error_text(exc)
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
