"""Public sampling API: :func:`reconstruct` and :func:`schedule_map` on whole images.

Imported as ``from cvdm_cli import reconstruct, schedule_map``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cvdm_cli.core.model import CVDM
from cvdm_cli.core.progress import ProgressCallback
from cvdm_cli.errors import ConfigError
from cvdm_cli.sampling.plane import PlaneReconstruction, plan_for, reconstruct_plane
from cvdm_cli.sampling.schedules import count_steps
from cvdm_cli.sampling.settings import CLIP, SamplerSettings


@dataclass
class Reconstruction:
    """Outputs on the scale-x grid, in normalised units (float32 numpy).

    mean: mean of the samples of y = x + r; var: per-pixel unbiased variance (ddof=1;
    zeros when samples == 1); samples: (K, ...) when asked for, else None.
    Shapes follow the input: (H, W) for a 2D input, (N, 1, H, W) for a batch.
    """

    mean: np.ndarray
    var: np.ndarray
    samples: np.ndarray | None = None


def _as_batch(lowres: np.ndarray | Tensor, device: torch.device) -> tuple[Tensor, bool]:
    t = torch.as_tensor(np.asarray(lowres) if not isinstance(lowres, Tensor) else lowres)
    t = t.to(device=device, dtype=torch.float32)
    if t.ndim == 2:
        return t[None, None], True
    if t.ndim == 4 and t.shape[1] == 1:
        return t, False
    raise ConfigError(f"lowres must have shape (H, W) or (N, 1, H, W), got {tuple(t.shape)}")


def pad_to_multiple(x: Tensor, multiple: int) -> tuple[Tensor, tuple[int, int]]:
    """Pad (N,C,H,W) at the bottom/right to multiples of ``multiple`` (reflect, or
    replicate when the image is too small to reflect). Returns (padded, (H, W))."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        mode = "reflect" if ph < h and pw < w else "replicate"
        x = F.pad(x, (0, pw, 0, ph), mode=mode)
    return x, (h, w)


def reconstruct(
    model: CVDM,
    lowres: np.ndarray | Tensor,
    settings: SamplerSettings | None = None,
    *,
    generator: torch.Generator | None = None,
    callback: ProgressCallback | None = None,
    return_samples: bool = False,
    clip: float | None = CLIP,
    **changes: Any,
) -> Reconstruction:
    """Sample the model ``settings.samples`` times per image; return mean and variance.

    lowres: normalised low-res image(s), (h, w) or (N, 1, h, w). Outputs are on the
    (scale*h, scale*w) grid, in normalised units. Each image goes through the one sampling
    driver (:func:`cvdm_cli.sampling.plane.reconstruct_plane`) as plane ``i`` of a file, so
    ``reconstruct(model, x, seed=s)`` draws what ``cvdm enhance --seed s`` draws for the
    same normalised plane and settings.

    settings: the sampling settings (default: ``SamplerSettings(tile=None)``, the
    command-line defaults on whole images); keyword ``changes`` replace fields of it
    (``samples=4, steps=10, tta=False, ...``). generator: if given, the seed is drawn from
    it instead of ``settings.seed``. ``callback(done, total)`` in tile-sample denoiser
    passes over all images. Memory does not grow with the samples unless ``return_samples``.
    """
    base = settings if settings is not None else SamplerSettings(tile=None)
    s = dataclasses.replace(base, **changes) if changes else base
    if generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        s = dataclasses.replace(s, seed=seed)
    batch, squeeze = _as_batch(lowres, torch.device("cpu"))
    planes = batch[:, 0].numpy()
    done_before = 0
    outs: list[PlaneReconstruction] = []
    for i, plane in enumerate(planes):

        def on_progress(done: int, total: int, offset: int = done_before) -> None:
            if callback is not None:
                callback(offset + done, total * len(planes))

        outs.append(
            reconstruct_plane(
                model,
                plane,
                s,
                plane_index=i,
                callback=on_progress,
                return_samples=return_samples,
                clip=clip,
            )
        )
        done_before += _passes_of(model, plane.shape, s)
    mean = np.stack([o.mean for o in outs])[:, None]
    var = np.stack([o.var for o in outs])[:, None]
    samples = None
    if return_samples:
        samples = np.stack([o.samples for o in outs], axis=1)[:, :, None]  # (K, N, 1, H, W)
    if squeeze:
        mean, var = mean[0, 0], var[0, 0]
        samples = None if samples is None else samples[:, 0, 0]
    return Reconstruction(mean=mean, var=var, samples=samples)


def _passes_of(model: CVDM, lr_shape: tuple[int, int], s: SamplerSettings) -> int:
    """Tile-sample denoiser passes of one plane (the driver's progress total)."""
    tiles = len(plan_for(model, lr_shape, s.tile, s.overlap if s.tile is not None else 0).tiles)
    return s.samples * tiles * count_steps(s.sampler, s.steps, model.config.timesteps)


@torch.inference_mode()
def schedule_map(model: CVDM, lowres: np.ndarray | Tensor) -> np.ndarray:
    """The learned per-pixel schedule rate lambda(x) on the output grid (float32 numpy).

    gamma(t, x) = exp(-lambda(x) tau_int(t)): a pixel with a larger lambda loses its signal
    to noise earlier in the forward process, so the model spends more of the reverse
    process (more denoising steps) on it. The paper shows this map highlights the regions
    the model finds hard (fine, dense structure); it costs one small network pass and no
    sampling, so it is a free first look at where to distrust the output. Shapes as
    :func:`reconstruct`.
    """
    model.prepare_inference()
    lr, squeeze = _as_batch(lowres, model.device)
    x, (h, w) = pad_to_multiple(model.condition(lr), model.pad_multiple)
    lam = model.lam(x)[:, :, :h, :w].float().cpu().numpy()
    return lam[0, 0] if squeeze else lam


__all__ = ["Reconstruction", "reconstruct", "schedule_map"]
