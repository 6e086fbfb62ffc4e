"""CARE, the regression baseline a microscopist would otherwise train (Weigert et al. 2018).

A U-Net in the style of CSBDeep's ``common_unet``: per level ``convs_per_level``
convolutions (``kernel`` x ``kernel``, ReLU or GELU), 2x2 max pooling on the way down,
nearest-neighbour upsampling followed by the level's convolutions on the way up, skip
connections by concatenation, widths ``channels * 2**level``, and a residual output

    y_hat = x + U-Net(x),

where x is the LR normalised by percentiles (CSBDeep's 1 / 99.8, the same rule and values
as cvdm, :mod:`cvdm_cli.core.normalize`) and upsampled bicubically to the HR grid by
:func:`upsample`, which is exactly the CVDM condition (``CVDM.condition``: torch bicubic,
``align_corners=False``). The last 1x1 convolution starts at zero, so an untrained net is
the bicubic image.

Shapes: :meth:`CareNet.forward` takes (B, 1, H, W) with H and W multiples of
``2**depth`` (:attr:`CareNet.pad_multiple`); :meth:`CareNet.predict` takes the normalised
LR (B, 1, h, w) of any size and pads and crops for you; :func:`care_enhance_plane` runs a
raw (Y, X) plane in input units end to end (normalise, upsample, predict, map back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvdm_cli.core.config import JsonConfig
from cvdm_cli.core.normalize import denormalize, percentile_normalize
from cvdm_cli.errors import ConfigError

__all__ = ["CARE_KIND", "CareConfig", "CareNet", "care_enhance_plane", "upsample"]

CARE_KIND = "care"  # the ``kind`` a CARE weights file declares (cvdm_cli.io.weights)


@dataclass(frozen=True)
class CareConfig(JsonConfig):
    """Everything needed to build a :class:`CareNet`.

    channels: width of level 0 (CSBDeep ``unet_n_first``, 32); level i has
        ``channels * 2**i`` and the bottleneck ``channels * 2**depth``.
    depth: number of poolings (CSBDeep ``unet_n_depth``, 2).
    convs_per_level: convolutions per level and way (CSBDeep ``n_conv_per_depth``, 2).
    kernel: odd convolution size (CSBDeep ``unet_kern_size``: 5 in 2D).
    activation: "relu" (CSBDeep) or "gelu".
    scale: output / input sampling ratio (2x).
    norm_low, norm_high: LR and HR percentiles mapped to -1 and +1 (CSBDeep's 1, 99.8).
    """

    name: str = "custom"
    channels: int = 32
    depth: int = 2
    convs_per_level: int = 2
    kernel: int = 3
    activation: Literal["relu", "gelu"] = "relu"
    scale: int = 2
    norm_low: float = 1.0
    norm_high: float = 99.8
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.channels < 1 or self.depth < 0 or self.convs_per_level < 1:
            raise ConfigError(
                f"CARE needs channels >= 1, depth >= 0 and convs_per_level >= 1, got "
                f"{self.channels}, {self.depth}, {self.convs_per_level}"
            )
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ConfigError(f"the CARE kernel must be odd and positive, got {self.kernel}")
        if self.activation not in ("relu", "gelu"):
            raise ConfigError(f"CARE activation must be relu or gelu, got {self.activation!r}")
        if self.scale < 1:
            raise ConfigError("scale must be >= 1")
        if not 0 <= self.norm_low < self.norm_high <= 100:
            raise ConfigError("need 0 <= norm_low < norm_high <= 100")

    @property
    def pad_multiple(self) -> int:
        """Output-grid H and W of :meth:`CareNet.forward` must be multiples of this."""
        return 2**self.depth

    _what = "CARE"

    @classmethod
    def _presets(cls) -> dict[str, CareConfig]:
        return _PRESETS


_PRESETS: dict[str, CareConfig] = {
    # For tests: 29.6 k parameters, a few ms per step on 32x32 patches on one CPU thread.
    "tiny": CareConfig(name="tiny", channels=8, depth=2, convs_per_level=2, kernel=3),
    # 0.47 M parameters: CSBDeep's default 2D U-Net (32 channels, depth 2, 2 convolutions
    # per level) with 3x3 instead of 5x5 kernels (1.3 M with 5x5 in this layout).
    "small": CareConfig(name="small", channels=32, depth=2, convs_per_level=2, kernel=3),
}


def upsample(lowres: Tensor, scale: int = 2) -> Tensor:
    """Bicubic upsampling to the output grid: (N,1,h,w) -> (N,1,scale*h,scale*w).

    The same call as ``CVDM.condition`` and ``training.data.make_pair`` (torch bicubic,
    ``align_corners=False``), so CARE's input is cvdm's condition x, value for value.
    """
    return F.interpolate(lowres, scale_factor=float(scale), mode="bicubic", align_corners=False)


def _block(c_in: int, c_out: int, cfg: CareConfig) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(cfg.convs_per_level):
        layers.append(nn.Conv2d(c_in if i == 0 else c_out, c_out, cfg.kernel, padding="same"))
        layers.append(nn.ReLU() if cfg.activation == "relu" else nn.GELU())
    return nn.Sequential(*layers)


class CareNet(nn.Module):
    """CARE U-Net with residual output: (B,1,H,W) -> (B,1,H,W), H, W multiples of
    :attr:`pad_multiple`. ``info`` holds free-form metadata of a weights file."""

    def __init__(self, config: CareConfig) -> None:
        super().__init__()
        self.config = config
        c = config.channels
        self.down = nn.ModuleList()
        c_prev = 1
        for level in range(config.depth):
            self.down.append(_block(c_prev, c * 2**level, config))
            c_prev = c * 2**level
        self.middle = _block(c_prev, c * 2**config.depth, config)
        c_prev = c * 2**config.depth
        self.up = nn.ModuleList()
        for level in reversed(range(config.depth)):
            self.up.append(_block(c_prev + c * 2**level, c * 2**level, config))
            c_prev = c * 2**level
        self.out = nn.Conv2d(c_prev, 1, 1)
        nn.init.zeros_(self.out.weight)  # starts as the identity: y_hat = x
        nn.init.zeros_(self.out.bias)
        self.info: dict[str, object] = {}

    @property
    def pad_multiple(self) -> int:
        return self.config.pad_multiple

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def n_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, x: Tensor) -> Tensor:
        m = self.pad_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            msg = f"CareNet input {tuple(x.shape[-2:])} is not a multiple of {m} (use predict)"
            raise ValueError(msg)
        skips = []
        h = x
        for block in self.down:
            h = block(h)
            skips.append(h)
            h = F.max_pool2d(h, 2)
        h = self.middle(h)
        for block in self.up:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1))
        return x + self.out(h)

    def predict(self, lowres: Tensor) -> Tensor:
        """Normalised LR (B,1,h,w) of any size -> prediction (B,1,scale*h,scale*w).

        The bicubic image is reflect-padded (replicated when too small to reflect) at the
        bottom and right to a multiple of :attr:`pad_multiple`, and the result cropped.
        """
        x = upsample(lowres, self.config.scale)
        h, w = x.shape[-2:]
        m = self.pad_multiple
        ph, pw = -h % m, -w % m
        if ph or pw:
            mode = "reflect" if ph < h and pw < w else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return self(x)[..., :h, :w]


@torch.no_grad()
def care_enhance_plane(
    net: CareNet,
    plane: np.ndarray,
    *,
    nan_policy: Literal["raise", "replace"] = "raise",
    label: str = "",
) -> np.ndarray:
    """A raw (Y, X) LR plane in the file's units -> the CARE prediction (scale*Y, scale*X),
    float32 in the same units: percentile normalisation with the net's own percentiles,
    :meth:`CareNet.predict`, then the inverse affine map of the LR's percentiles (the rule
    ``cvdm enhance`` applies to its samples)."""
    cfg = net.config
    norm, params = percentile_normalize(
        plane, cfg.norm_low, cfg.norm_high, nan_policy=nan_policy, plane_label=label
    )
    was_training = net.training
    net.eval()
    lowres = torch.from_numpy(np.ascontiguousarray(norm))[None, None].to(net.device)
    pred = net.predict(lowres)[0, 0].float().cpu().numpy()
    net.train(was_training)
    return denormalize(pred, params)
