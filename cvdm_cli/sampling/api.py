"""Public sampling API: :func:`reconstruct` and :func:`schedule_map` on whole images.

Imported as ``from cvdm_cli import reconstruct, schedule_map``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cvdm_cli.core.devices import auto_batch_size
from cvdm_cli.core.model import CVDM
from cvdm_cli.errors import ConfigError
from cvdm_cli.sampling import views
from cvdm_cli.sampling.noise import NoiseSource, item_seeds, noise_mate, sample_view
from cvdm_cli.sampling.passes import PassesSpec, resolve_passes
from cvdm_cli.sampling.schedules import count_steps, make_schedules, resolve_eta
from cvdm_cli.sampling.steps import ProgressCallback, make_eps_fn, run_passes


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


@torch.inference_mode()
def reconstruct(
    model: CVDM,
    lowres: np.ndarray | Tensor,
    *,
    samples: int = 8,
    steps: int = 20,
    sampler: str = "fast",
    generator: torch.Generator | None = None,
    batch_size: int | None = None,
    callback: ProgressCallback | None = None,
    return_samples: bool = False,
    eta: float | None = None,
    precision: str = "fp32",
    clip: float | None = 4.0,
    tta: bool = False,
    antithetic: bool = False,
    passes: PassesSpec = None,
) -> Reconstruction:
    """Sample the model ``samples`` times per image; return mean and variance.

    lowres: normalised low-res image(s), (h, w) or (N, 1, h, w), on the model's device.
    Outputs are on the (scale*h, scale*w) grid. Memory does not grow with ``samples``
    (streaming Welford) unless ``return_samples``. ``batch_size`` counts image-samples per
    denoiser call. ``callback(done, total)`` after each call, in image-sample passes.
    ``tta``: sample k is drawn from view k % 8 of the input and mapped back
    (:mod:`cvdm_cli.sampling.views`); the same number of denoiser passes. ``antithetic``: sample
    2j + 1 draws the negated noise of sample 2j, in the same view (:func:`noise_mate`).
    ``passes``: split the steps into passes, each restarting from the last one's sample
    noised back to t_max (:func:`run_passes`; a count or the steps per pass,
    :func:`cvdm_cli.sampling.passes.resolve_passes`; None: passes of 2 steps); the same
    denoiser calls.
    """
    if samples < 1:
        raise ConfigError(f"samples must be >= 1, got {samples}")
    model.prepare_inference()
    device = model.device
    lr, squeeze = _as_batch(lowres, device)
    h, w = model.config.scale * lr.shape[-2], model.config.scale * lr.shape[-1]
    n_img = lr.shape[0]
    items = [(i, k) for i in range(n_img) for k in range(samples)]  # image-major order
    seeds = item_seeds(generator, len(items))  # seeds do not depend on views
    mates = [(i, *noise_mate(k, antithetic)) for i, k in items]  # (image, mate, sign)
    noise = NoiseSource([seeds[i * samples + m] for i, m, _ in mates], [g for _, _, g in mates])

    def view(k: int) -> int:
        return sample_view(k, tta, antithetic)

    # condition and lambda(x) once per image and view, shared by that view's samples
    used = sorted({view(k) for k in range(samples)})
    xs, lams = {}, {}
    for v in used:
        xs[v], _ = pad_to_multiple(model.condition(views.forward(lr, v)), model.pad_multiple)
        lams[v] = model.lam(xs[v])
    bs = batch_size or auto_batch_size(xs[0].shape[-1] * xs[0].shape[-2], device)
    plan = resolve_passes(sampler, steps, passes)
    n_steps = count_steps(sampler, steps, model.config.timesteps)
    total, done = len(items) * n_steps, 0
    eta_value = resolve_eta(sampler, eta)

    count = np.zeros(n_img, dtype=np.int64)
    mean = torch.zeros((n_img, 1, h, w), device=device)
    m2 = torch.zeros_like(mean)
    kept = torch.zeros((samples, n_img, 1, h, w)) if return_samples else None

    # items whose views have the same padded shape share batches (all of them when h == w)
    groups: dict[tuple[int, ...], list[int]] = {}
    for j, (_, k) in enumerate(items):
        groups.setdefault(tuple(xs[view(k)].shape[-2:]), []).append(j)
    for members in groups.values():
        for start in range(0, len(members), bs):
            chunk = members[start : start + bs]
            # (image, view) of each item in the chunk
            keys = [(items[j][0], view(items[j][1])) for j in chunk]
            x_b = torch.stack([xs[v][i] for i, v in keys])
            lam_b = torch.stack([lams[v][i] for i, v in keys])
            schedules = make_schedules(model, lam_b, sampler, plan)
            shape = tuple(x_b.shape[1:])
            z = noise.draw(chunk, shape, device)

            def on_step(n_items: int = len(chunk)) -> None:
                nonlocal done
                done += n_items
                if callback is not None:
                    callback(done, total)

            r = run_passes(
                make_eps_fn(model, x_b, precision),
                schedules,
                z,
                eta=eta_value,
                noise=lambda c=chunk, s=shape: noise.draw(c, s, device),
                clip=clip,
                on_step=on_step,
            )
            y_b = x_b + r
            for row, j in enumerate(chunk):  # Welford, one sample at a time
                i, k = items[j]
                v = keys[row][1]
                vh, vw = views.view_shape((h, w), v)
                y = views.inverse(y_b[row, :, :vh, :vw], v)
                count[i] += 1
                delta = y - mean[i]
                mean[i] += delta / count[i]
                m2[i] += delta * (y - mean[i])
                if kept is not None:
                    kept[k, i] = y.cpu()

    var = m2 / max(samples - 1, 1)
    out_mean, out_var = mean.cpu().numpy(), var.cpu().numpy()
    out_samples = None if kept is None else kept.numpy()
    if squeeze:
        out_mean, out_var = out_mean[0, 0], out_var[0, 0]
        out_samples = None if out_samples is None else out_samples[:, 0, 0]
    return Reconstruction(mean=out_mean, var=out_var, samples=out_samples)


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
