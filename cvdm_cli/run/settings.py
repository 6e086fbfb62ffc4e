"""What decides a plane's outputs, and which model file on which device: frozen,
picklable settings that a Dask worker receives as they are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cvdm_cli import errors
from cvdm_cli.core.variance import (
    DEFAULT_VARIANCE_SMOOTHING,
    check_variance_smoothing,
)
from cvdm_cli.sampling.settings import SamplerSettings


@dataclass(frozen=True)
class EnhanceSettings(SamplerSettings):
    """Everything that decides a plane's outputs, frozen (hashable, picklable): the
    sampling settings (:class:`~cvdm_cli.sampling.settings.SamplerSettings`, whose
    fields and defaults come first) and what is written.

    variance_smoothing: Gaussian sigma (output pixels) over which the sample variance is
        pooled before it is written (:mod:`cvdm_cli.core.variance`); 0 writes it per pixel.
    axes: overrides the files' axes. replace_nan: NaN/Inf pixels become the plane median.
    write_mean: False for ``cvdm uncertainty`` (only the uncertainty outputs).
    spread: "var" or "std" output. difficulty / save_samples: extra outputs.
    overwrite: redo inputs whose outputs exist.
    threshold: std in input units; the fraction of pixels above it is reported.
    Validated on construction (and by :meth:`validate`): errors name the option.
    """

    variance_smoothing: float = DEFAULT_VARIANCE_SMOOTHING
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
        super().validate()
        if self.spread not in ("var", "std"):
            raise errors.ConfigError(
                f"unknown uncertainty output {self.spread!r}", path="spread", hint="var or std"
            )
        check_variance_smoothing(self.variance_smoothing)


DEFAULT_ENHANCE = EnhanceSettings()


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
