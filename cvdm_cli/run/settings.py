"""What decides a plane's outputs, and which model file on which device: frozen,
picklable settings that a Dask worker receives as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from cvdm_cli import errors
from cvdm_cli.core.devices import CPU_TILE
from cvdm_cli.core.variance import (
    DEFAULT_VARIANCE_SMOOTHING,
    check_variance_smoothing,
)
from cvdm_cli.sampling.passes import resolve_passes
from cvdm_cli.sampling.plane import TILINGS
from cvdm_cli.sampling.schedules import SAMPLERS
from cvdm_cli.sampling.views import TTA_DEFAULT

# --- settings and model reference (picklable) ----------------------------------------------


@dataclass(frozen=True)
class EnhanceSettings:
    """Everything that decides a plane's outputs, frozen (hashable, picklable).

    tile, overlap: output pixels; tile=None processes a plane in one piece.
    batch_size: tile-samples per denoiser call (None: from the device, see
        ``sampler.auto_batch_size``). precision: "fp32", "bf16" or "fp16" (already
        resolved from "auto" for the device). spread: "var" or "std" output.
    variance_smoothing: Gaussian sigma (output pixels) over which the sample variance is
        pooled before it is written (:mod:`cvdm_cli.core.variance`); 0 writes it per pixel.
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
