"""How a plane is sampled: one frozen record with every sampling default and bound.

:class:`SamplerSettings` is what the one sampling driver
(:func:`cvdm_cli.sampling.plane.reconstruct_plane`) takes, and what ``cvdm enhance``,
``cvdm uncertainty``, ``cvdm evaluate`` and the trainer's validation build: the defaults
below are the only place they are written, and :meth:`SamplerSettings.validate` (run on
construction) the only place they are checked. Errors name the command-line option.

torch-free, so the CLI can read the defaults at import time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from cvdm_cli.core.tiling import CPU_TILE
from cvdm_cli.errors import ConfigError
from cvdm_cli.sampling.passes import resolve_passes
from cvdm_cli.sampling.views import TTA_DEFAULT

SAMPLERS = ("fast", "reference")
TILINGS = ("sync", "independent")
PRECISIONS = ("fp32", "bf16", "fp16")  # resolved; "auto" is resolved by core.devices first
DEFAULT_FAST_ETA = 1.0  # ancestral; measured better than DDIM (eta 0), docs/sampling.md
CLIP = 4.0  # bound of x0_hat (residual units), see cvdm_cli.sampling.steps.ddim_update


@dataclass(frozen=True)
class SamplerSettings:
    """Everything that decides the samples of one plane (frozen, hashable, picklable).

    samples: draws per plane (mean and variance over them). steps: denoiser calls per
    sample of the fast sampler (the reference one always takes T - 1). passes: the fast
    sampler's steps split into restarts, a count or steps per pass ("2,2,16"; None: passes
    of 2 steps, :func:`cvdm_cli.sampling.passes.resolve_passes`). eta: None = the sampler's
    default (:meth:`eta_value`). tta: draw sample k from view k % 8. antithetic: sample
    2j + 1 draws the negated noise of sample 2j. seed: with the plane index, fixes every
    noise draw. precision: the denoiser's autocast ("fp32", "bf16", "fp16"; resolved).
    tile, overlap: output pixels; tile None processes a plane in one piece. tiling:
    "sync" (one latent per sample, MultiDiffusion) or "independent". batch_size:
    tile-samples per denoiser call (None: from the device).
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
    eta: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError (naming the option) for values that cannot work."""
        if self.samples < 1:
            raise _bad("--samples", f"must be >= 1, got {self.samples}", "e.g. --samples 8")
        if self.steps < 1:
            raise _bad("--steps", f"must be >= 1, got {self.steps}", "e.g. --steps 20")
        if self.sampler not in SAMPLERS:
            raise _bad("--sampler", f"unknown sampler {self.sampler!r}", "use fast or reference")
        resolve_passes(self.sampler, self.steps, self.passes)
        if self.tiling not in TILINGS:
            raise _bad("--tiling", f"unknown tiling {self.tiling!r}", "use sync or independent")
        if self.overlap < 0:
            raise _bad("--overlap", f"must be >= 0, got {self.overlap}", "e.g. --overlap 32")
        if self.tile is not None and self.tile <= self.overlap:
            raise _bad(
                "--tile",
                f"tile {self.tile} must be larger than the overlap {self.overlap}",
                "e.g. --tile 256 --overlap 32",
            )
        if self.batch_size is not None and self.batch_size < 1:
            raise _bad("--batch-size", f"must be >= 1, got {self.batch_size}", "or leave it out")
        if self.precision not in PRECISIONS:
            raise _bad("--precision", f"unknown precision {self.precision!r}", "fp32, bf16, fp16")

    @property
    def eta_value(self) -> float:
        """The eta the sampler runs with: ``eta`` if given, else DEFAULT_FAST_ETA for the
        fast sampler and 1 (ancestral, the paper's) for the reference one."""
        if self.eta is not None:
            return self.eta
        return DEFAULT_FAST_ETA if self.sampler == "fast" else 1.0

    @property
    def pass_plan(self) -> tuple[int, ...]:
        """Steps of each pass (one pass of T - 1 for the reference sampler: ``(steps,)``
        is only a placeholder there, the reference schedule has its own length)."""
        return tuple(resolve_passes(self.sampler, self.steps, self.passes))

    @property
    def passes_text(self) -> str:
        """The pass plan as ``--passes`` takes it ("2,2,..."), for records and reports."""
        return ",".join(str(n) for n in self.pass_plan)

    def sampler_record(self) -> dict[str, Any]:
        """Every sampling setting, as outputs and reports record them (JSON-ready)."""
        return {
            "name": self.sampler,
            "samples": self.samples,
            "steps": self.steps,
            "passes": self.passes_text,
            "eta": self.eta_value,
            "tta": self.tta,
            "antithetic": self.antithetic,
            "seed": self.seed,
            "precision": self.precision,
            "tile": self.tile,
            "overlap": self.overlap,
            "tiling": self.tiling,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _bad(option: str, what: str, hint: str) -> ConfigError:
    return ConfigError(what, path=option, hint=hint)


DEFAULT_SAMPLING = SamplerSettings()

__all__ = [
    "CLIP",
    "DEFAULT_FAST_ETA",
    "DEFAULT_SAMPLING",
    "PRECISIONS",
    "SAMPLERS",
    "TILINGS",
    "SamplerSettings",
]
