"""Model configuration: a frozen dataclass with named presets.

A checkpoint carries its own config (safetensors metadata, see ``weights.py``), so the
presets here only matter when a model is built from scratch.

Only the standard library is imported here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from cvdm_cli.errors import ConfigError, UnknownPresetError


class JsonConfig:
    """(De)serialisation and presets shared by the frozen config dataclasses (ModelConfig,
    :class:`cvdm_cli.core.care.CareConfig`): JSON for safetensors metadata, lists back to
    tuples, unknown fields refused. A subclass sets ``_what`` (for messages) and returns
    its preset table from ``_presets()``."""

    _what = "config"

    @classmethod
    def _presets(cls) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> Any:
        """A named preset, optionally changed (UnknownPresetError naming the choices)."""
        presets = cls._presets()
        try:
            base = presets[name]
        except KeyError:
            raise UnknownPresetError(
                f"unknown {cls._what} preset {name!r}", hint=f"choose one of: {', '.join(presets)}"
            ) from None
        return dataclasses.replace(base, **overrides) if overrides else base

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown {cls._what} config fields: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})

    @classmethod
    def from_json(cls, text: str) -> Any:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class ModelConfig(JsonConfig):
    """Everything needed to build a :class:`cvdm_cli.core.model.CVDM`.

    Denoiser (SR3-style U-Net predicting eps from concat(z_t, x), conditioned on the
    per-pixel gamma map):
        channels: width of the first level.
        channel_mults: width multiplier per resolution level (one level per entry).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_levels: level indices (0 = full resolution) with self-attention; the
            bottleneck always has one attention block when ``mid_attention`` is true.
        dropout: dropout inside residual blocks (training only).
    Schedule network (lambda(x) = softplus(U-Net_s(x)), per pixel):
        schedule_channels: widths of the small schedule U-Net levels.
        tau_features: sigmoid features of the monotone networks tau(t) and tau_int(t).
    Diffusion:
        timesteps: T, the number of discrete steps of the reference sampler (paper: 200).
        scale: output / input sampling ratio (super-resolution factor).
        gamma_min, gamma_max: clamp of gamma(t, x) (signal variance),
            gamma = clamp(exp(-lambda tau_int(t)), min, max).
        tau_init_slope: initial tau_int(1); with lambda(x) ~ softplus(0) = 0.69 this gives
            gamma(1) ~ exp(-0.69 * slope), i.e. close to pure noise before training.
        alpha_smooth: weight alpha of the (d^2 gamma/dt^2)^2 regulariser (paper: 1e-3).
        loss_weights: weights of (eps, beta, prior KL, gamma-smoothness) (paper: 1, 2, 2, 2).
    Data:
        norm_low, norm_high: input percentiles mapped to -1 and +1 (CSBDeep default 1, 99.8).
    """

    name: str = "custom"
    channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_levels: tuple[int, ...] = ()
    mid_attention: bool = True
    dropout: float = 0.0
    groups: int = 8
    schedule_channels: tuple[int, ...] = (16, 32)
    tau_features: int = 1024
    timesteps: int = 200
    scale: int = 2
    gamma_min: float = 1e-6
    gamma_max: float = 0.99999
    tau_init_slope: float = 14.0
    alpha_smooth: float = 1e-3
    loss_weights: tuple[float, float, float, float] = (1.0, 2.0, 2.0, 2.0)
    norm_low: float = 1.0
    norm_high: float = 99.8
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.channels <= 0 or not self.channel_mults:
            raise ConfigError("channels and channel_mults must be positive and non-empty")
        if any(level >= len(self.channel_mults) for level in self.attention_levels):
            raise ConfigError(
                f"attention_levels {self.attention_levels} exceed the "
                f"{len(self.channel_mults)} levels of channel_mults"
            )
        for width in (self.channels * m for m in self.channel_mults):
            if width % self.groups:
                raise ConfigError(f"width {width} is not divisible by groups={self.groups}")
        if self.timesteps < 2:
            raise ConfigError("timesteps must be at least 2")
        if self.scale < 1:
            raise ConfigError("scale must be >= 1")
        if not 0 <= self.norm_low < self.norm_high <= 100:
            raise ConfigError("need 0 <= norm_low < norm_high <= 100")

    @property
    def pad_multiple(self) -> int:
        """Output-grid sizes must be multiples of this (one halving per level below 0)."""
        return 2 ** (len(self.channel_mults) - 1)

    _what = "model"

    @classmethod
    def _presets(cls) -> dict[str, ModelConfig]:
        return _PRESETS


_SMALL = ModelConfig(
    name="small",
    channels=32,
    channel_mults=(1, 2, 3, 4),
    num_res_blocks=1,
    attention_levels=(),
    mid_attention=True,
    groups=16,
    schedule_channels=(16, 32, 64),
    tau_features=1024,
)

_PRESETS: dict[str, ModelConfig] = {
    # For tests: well under 1M parameters, trains in seconds on a CPU.
    "tiny": ModelConfig(
        name="tiny",
        channels=16,
        channel_mults=(1, 2),
        num_res_blocks=1,
        attention_levels=(),
        mid_attention=False,
        groups=8,
        schedule_channels=(8, 16),
        tau_features=64,
    ),
    # The model shipped in the package (~3M parameters).
    "small": _SMALL,
    # ~5M parameters: small, 1.5x wider at full resolution (48 channels, widths 48/96/144/144);
    # fits the 25 MB shipped-file cap in float32 (19.8 MB).
    "medium": dataclasses.replace(_SMALL, name="medium", channels=48, channel_mults=(1, 2, 3, 3)),
    # ~30M parameters.
    "base": ModelConfig(
        name="base",
        channels=64,
        channel_mults=(1, 2, 4, 4),
        num_res_blocks=3,
        attention_levels=(3,),
        mid_attention=True,
        groups=32,
        schedule_channels=(32, 64, 128),
        tau_features=1024,
    ),
    # The SR3 denoiser of the paper: 64 channels, (1,2,4,8,8), 3 residual blocks per level,
    # attention only at the 16x16 level of a 256x256 input (level 4), T = 200.
    "paper": ModelConfig(
        name="paper",
        channels=64,
        channel_mults=(1, 2, 4, 8, 8),
        num_res_blocks=3,
        attention_levels=(4,),
        mid_attention=True,
        groups=32,
        schedule_channels=(32, 64, 128, 256),
        tau_features=1024,
    ),
}
