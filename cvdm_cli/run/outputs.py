"""The outputs of one input file: names, provenance, writers, statistics."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cvdm_cli import errors
from cvdm_cli._version import __version__
from cvdm_cli.io.tiff import OutputTiff, TiffInput, output_spec, with_samples_axis
from cvdm_cli.run.settings import EnhanceSettings, ModelRef
from cvdm_cli.sampling.passes import resolve_passes
from cvdm_cli.sampling.schedules import resolve_eta

if TYPE_CHECKING:  # pragma: no cover
    from cvdm_cli.run.inputs import FileJob
    from cvdm_cli.run.plane import PlaneOutput

OUTPUT_SUFFIXES = {
    "mean": "_cvdm",
    "var": "_cvdm_var",
    "std": "_cvdm_std",
    "difficulty": "_cvdm_difficulty",
    "samples": "_cvdm_samples",
}


STD_SUBSAMPLE = 1 << 20


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
