"""The unit of work: one plane of one file -> its output arrays in input units.

:func:`process_plane` is a pure function of ``(input path, plane index, EnhanceSettings,
ModelRef)``; :func:`enhance_plane` does the same on a plane already in memory and a loaded
model (what ``cvdm evaluate`` calls, so that its scores are of what ``cvdm enhance`` writes).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cvdm_cli import errors
from cvdm_cli.core.devices import (
    auto_batch_size,
    free_device_memory,
    is_out_of_memory,
    round_tile,
)
from cvdm_cli.core.model import CVDM
from cvdm_cli.core.normalize import (
    NormParams,
    denormalize,
    denormalize_std,
    denormalize_variance,
    percentile_normalize,
)
from cvdm_cli.core.variance import (
    pool_variance,
)
from cvdm_cli.io.tiff import open_tiff
from cvdm_cli.run.models import get_model
from cvdm_cli.run.settings import EnhanceSettings, ModelRef
from cvdm_cli.sampling.plane import plan_for, reconstruct_plane


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
    out = enhance_plane(
        get_model(model_ref),
        plane,
        index,
        settings,
        label=label or f"{path} plane {index}",
        progress=progress,
        notice=notice,
    )
    out.timings = {**timings, **out.timings}
    return out


def enhance_plane(
    model: CVDM,
    plane: np.ndarray,
    index: int,
    settings: EnhanceSettings,
    *,
    label: str,
    progress: Callable[[int, int], None] | None = None,
    notice: Callable[[str], None] | None = None,
) -> PlaneOutput:
    """Normalise, sample and denormalise one raw (Y, X) plane that is plane ``index`` of
    its file: what :func:`process_plane` does after the read, on a model already loaded.

    ``cvdm evaluate`` calls this on each LR image as plane 0, so its scores are scores of
    the arrays ``cvdm enhance`` writes for that file with the same model and settings.
    ``label`` names the plane in errors and notices.
    """
    timings: dict[str, float] = {}
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
    new_tile = max(min_tile, round_tile(tile // 2, mult))
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
                current,
                plane_index=index,
                callback=progress,
                return_samples=current.save_samples,
            )
            return rec, current
        except (RuntimeError, MemoryError) as exc:
            if not is_out_of_memory(exc):
                raise
        # retried outside the handler, so the traceback (and the tensors its frames hold)
        # is released before the next attempt
        free_device_memory(model.device)
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
