"""The CVDM networks (parameters only; the equations live in ``diffusion.py``).

Shapes: images are (N, 1, H, W) float tensors on the output grid unless stated; H and W
must be multiples of ``CVDM.pad_multiple`` (the sampler pads for you).

Parts (arXiv 2312.02246, Sec. 3, and the reference TensorFlow code casus/cvdm):
- ``ScheduleUNet``: lambda(x) = softplus(U-Net_s(x)) >= 0, a per-pixel rate.
- ``MonotoneScalarNet``: tau(t) and tau_int(t), scalar, non-decreasing, 0 at t = 0.
- ``GammaConditionedUNet``: the SR3-style denoiser eps_hat(z_t, x, gamma); the gamma MAP is
  embedded by convolutions and added inside every residual block, so the per-pixel
  schedule reaches the network (a scalar-t embedding would hide it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cvdm_cli.core.config import ModelConfig


def _inv_softplus(y: float) -> float:
    """x such that softplus(x) = y (y > 0)."""
    return y + math.log(-math.expm1(-y))


class MonotoneScalarNet(nn.Module):
    """f(t) = t * softplus(a t + sum_j w_j sigmoid(u_j t + b_j) + c), with a, u, w >= 0.

    The inner function is non-decreasing in t (non-negative weights, sigmoid features, as
    in the reference ``time_model``), its softplus is positive and non-decreasing, and the
    factor t makes f(0) = 0 and f strictly increasing on t >= 0. Non-negativity is by
    reparameterisation (softplus of free parameters), not by clipping.

    Input t: any shape; output: the same shape.
    """

    def __init__(self, features: int, init_slope: float, init_offset: float) -> None:
        """At initialisation inner(t) ~ init_slope * t + init_offset (features cancelled)."""
        super().__init__()
        self.raw_a = nn.Parameter(
            torch.tensor(_inv_softplus(init_slope) if init_slope > 0 else -10.0)
        )
        # Feature slopes u in ~[0.5, 20] and offsets placing the transitions inside [0, 1].
        self.raw_u = nn.Parameter(torch.empty(features).uniform_(-0.5, 3.0))
        self.b = nn.Parameter(torch.empty(features).uniform_(0.0, 1.0))
        # Output weights w ~ 1/features so that the features sum to ~0.5 at init.
        self.raw_w = nn.Parameter(torch.full((features,), _inv_softplus(1.0 / features)))
        self.c = nn.Parameter(torch.tensor(0.0))
        with torch.no_grad():
            self.b.mul_(-F.softplus(self.raw_u))
            self.c.fill_(init_offset - float(self.inner(torch.tensor(0.0))))

    def inner(self, t: Tensor) -> Tensor:
        """The non-decreasing inner function g(t) (before softplus and the factor t)."""
        a, u, w = F.softplus(self.raw_a), F.softplus(self.raw_u), F.softplus(self.raw_w)
        features = torch.sigmoid(t.unsqueeze(-1) * u + self.b)
        return a * t + features @ w + self.c

    def forward(self, t: Tensor) -> Tensor:
        return t * F.softplus(self.inner(t))


def _conv(c_in: int, c_out: int, k: int = 3) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, k, padding=k // 2)


class ScheduleUNet(nn.Module):
    """Small U-Net giving the pre-softplus schedule rate per pixel: (N,1,H,W) -> (N,1,H,W).

    No normalisation layers, so lambda(x) at a pixel depends only on its neighbourhood
    (tiles of a plane agree). The last convolution starts at zero, so lambda starts at
    softplus(0) = log 2 everywhere.
    """

    def __init__(self, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.down = nn.ModuleList()
        c_prev = 1
        for width in widths:
            self.down.append(
                nn.Sequential(_conv(c_prev, width), nn.SiLU(), _conv(width, width), nn.SiLU())
            )
            c_prev = width
        self.up = nn.ModuleList()
        for width in reversed(widths[:-1]):
            self.up.append(
                nn.Sequential(
                    _conv(c_prev + width, width), nn.SiLU(), _conv(width, width), nn.SiLU()
                )
            )
            c_prev = width
        self.out = nn.Conv2d(c_prev, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        h = x
        for i, block in enumerate(self.down):
            if i > 0:
                h = F.avg_pool2d(h, 2)
            h = block(h)
            skips.append(h)
        skips.pop()
        for block in self.up:
            h = F.interpolate(h, scale_factor=2.0, mode="nearest")
            h = block(torch.cat([h, skips.pop()], dim=1))
        return self.out(h)


class ResBlock(nn.Module):
    """Pre-activation residual block with the gamma-map embedding added after conv 1.

    x: (N, c_in, H, W); emb: (N, c_emb, H, W) embedding of the gamma map at this level.
    """

    def __init__(self, c_in: int, c_out: int, c_emb: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, c_in), c_in)
        self.conv1 = _conv(c_in, c_out)
        self.emb = nn.Conv2d(c_emb, c_out, 1)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv(c_out, c_out)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb(emb)
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over all pixels of a feature map, residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1))
        out = out.squeeze(1).transpose(-1, -2).reshape(n, c, h, w)
        return x + self.proj(out)


class GammaConditionedUNet(nn.Module):
    """SR3-style denoiser: eps_hat = f(concat(z_t, x), gamma_map).

    Inputs: zx (N, 2, H, W), gamma (N, 1, H, W); output (N, 1, H, W).
    The gamma map is embedded once by a 7x7 convolution + softplus (as in the reference
    ``sr3``), average-pooled alongside the features, and projected by a 1x1 convolution
    into every residual block.
    """

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        ch, g = cfg.channels, cfg.groups
        widths = [ch * m for m in cfg.channel_mults]
        self.n_levels = len(widths)
        self.gamma_embed = nn.Conv2d(1, ch, 7, padding=3)
        self.inp = _conv(2, ch)

        self.down_blocks = nn.ModuleList()
        self.down_attn = nn.ModuleList()
        skip_widths = [ch]
        c_prev = ch
        for level, width in enumerate(widths):
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResBlock(c_prev, width, ch, g, cfg.dropout))
                attns.append(
                    AttentionBlock(width, g) if level in cfg.attention_levels else nn.Identity()
                )
                c_prev = width
                skip_widths.append(width)
            self.down_blocks.append(blocks)
            self.down_attn.append(attns)
            if level < self.n_levels - 1:
                skip_widths.append(width)

        self.mid1 = ResBlock(c_prev, c_prev, ch, g, cfg.dropout)
        self.mid_attn = AttentionBlock(c_prev, g) if cfg.mid_attention else nn.Identity()
        self.mid2 = ResBlock(c_prev, c_prev, ch, g, cfg.dropout)

        self.up_blocks = nn.ModuleList()
        self.up_attn = nn.ModuleList()
        for level in reversed(range(self.n_levels)):
            width = widths[level]
            blocks, attns = nn.ModuleList(), nn.ModuleList()
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResBlock(c_prev + skip_widths.pop(), width, ch, g, cfg.dropout))
                attns.append(
                    AttentionBlock(width, g) if level in cfg.attention_levels else nn.Identity()
                )
                c_prev = width
            self.up_blocks.append(blocks)
            self.up_attn.append(attns)
        assert not skip_widths
        self.out_norm = nn.GroupNorm(g, c_prev)
        self.out = _conv(c_prev, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, zx: Tensor, gamma: Tensor) -> Tensor:
        emb = F.softplus(self.gamma_embed(gamma.to(zx.dtype)))
        embs = [emb]
        for _ in range(self.n_levels - 1):
            embs.append(F.avg_pool2d(embs[-1], 2))

        h = self.inp(zx)
        skips = [h]
        for level in range(self.n_levels):
            for block, attn in zip(self.down_blocks[level], self.down_attn[level], strict=True):
                h = attn(block(h, embs[level]))
                skips.append(h)
            if level < self.n_levels - 1:
                # Resampling without convolutions, as the reference sr3 (average pool down,
                # nearest up).
                h = F.avg_pool2d(h, 2)
                skips.append(h)

        h = self.mid2(self.mid_attn(self.mid1(h, embs[-1])), embs[-1])

        for i, level in enumerate(reversed(range(self.n_levels))):
            for block, attn in zip(self.up_blocks[i], self.up_attn[i], strict=True):
                # Skips scaled by 1/sqrt(2) as in the reference up_resblock.
                h = attn(block(torch.cat([h, skips.pop() / math.sqrt(2.0)], dim=1), embs[level]))
            if level > 0:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
        return self.out(F.silu(self.out_norm(h)))


class CVDM(nn.Module):
    """Conditional Variational Diffusion Model for 2x super-resolution.

    x = bicubic upsampling of the normalised low-resolution input (the condition);
    the model diffuses the residual r = y - x (``diffusion.q_sample``) and the sampler adds
    x back. ``info`` holds free-form metadata from a weights file (training data, steps,
    metrics); it is not part of the state dict.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.schedule_net = ScheduleUNet(config.schedule_channels)
        # Initialised consistent with beta = -d log(gamma)/dt = lam * d tau_int/dt, the
        # relation L_beta enforces: tau_int(t) ~ S t^2 (for t >~ 0.2), tau(t) ~ 2 S t, with
        # S = config.tau_init_slope, so gamma(1) ~ exp(-S log 2) before training.
        s = config.tau_init_slope
        self.tau = MonotoneScalarNet(config.tau_features, 0.0, _inv_softplus(2.0 * s))
        self.tau_int = MonotoneScalarNet(config.tau_features, s, 0.0)
        self.denoiser = GammaConditionedUNet(config)
        self.info: dict[str, object] = {}

    @property
    def pad_multiple(self) -> int:
        """Output-grid H and W must be multiples of this."""
        schedule = 2 ** (len(self.config.schedule_channels) - 1)
        return max(self.config.pad_multiple, schedule)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def prepare_inference(self) -> CVDM:
        """eval(), and on CPU and CUDA the 4D weights stored channels-last (NHWC).

        oneDNN and cuDNN run these convolutions faster in NHWC (on the 2-core Xeon: 2.2x
        with bf16, 1.2x in fp32; docs/performance.md), and the activations follow the
        weights' layout. Values are unchanged (outputs agree to float rounding) and saving
        makes tensors contiguous again. Idempotent: a no-op once converted. The samplers
        call it inside ``torch.inference_mode``; the new weights are made outside it, so the
        model can still be trained afterwards (inference tensors cannot enter autograd).
        """
        self.eval()
        probe = self.denoiser.inp.weight
        if probe.device.type in ("cpu", "cuda") and not probe.is_contiguous(
            memory_format=torch.channels_last
        ):
            with torch.inference_mode(False), torch.no_grad():
                self.to(memory_format=torch.channels_last)
        return self

    def condition(self, lowres: Tensor) -> Tensor:
        """Bicubic upsampling to the output grid: (N,1,h,w) -> (N,1,scale*h,scale*w)."""
        return F.interpolate(
            lowres, scale_factor=float(self.config.scale), mode="bicubic", align_corners=False
        )

    def lam(self, x: Tensor) -> Tensor:
        """lambda(x) = softplus(U-Net_s(x)) >= 0, per pixel: (N,1,H,W) -> (N,1,H,W)."""
        return F.softplus(self.schedule_net(x))

    def eps(self, z: Tensor, x: Tensor, gamma: Tensor) -> Tensor:
        """eps_hat(z_t, x, gamma): all (N,1,H,W) -> (N,1,H,W)."""
        return self.denoiser(torch.cat([z, x], dim=1), gamma)

    def n_parameters(self, part: str | None = None) -> int:
        module = self if part is None else getattr(self, part)
        return sum(p.numel() for p in module.parameters())
