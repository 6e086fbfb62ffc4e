"""Samplers: pure functions of (model, condition, steps, generator) with a progress callback.

Both samplers walk a sequence of per-pixel signal-variance maps g_0 < g_1 < ... < g_n
(noisy -> clean) with one denoiser call per step and the generalised DDIM update
(Song et al. 2021, eq. 12) applied per pixel:

    x0_hat  = (z - sqrt(1 - g_s) eps_hat) / sqrt(g_s)
    sigma^2 = eta^2 (1 - g_t)/(1 - g_s) (1 - g_s/g_t)
    z_t     = sqrt(g_t) x0_hat + sqrt(1 - g_t - sigma^2) eps_hat + sigma * noise

With eta = 1 this is exactly the ancestral DDPM posterior q(z_t | z_s, x0_hat).

- ``reference``: the paper's sampler. alpha_k = clip(1 - beta(k/T, x)/T), gamma_bar_k =
  clip(cumprod alpha), ancestral update (eta = 1) from k = T-1 down to 1: T - 1 calls.
- ``fast`` (default): ``steps`` calls on the continuous gamma(t, x) at t_i = t_max (1 -
  i/n)^p from t_max = 1 - 1/T to 0 (p = :data:`FAST_GRID_POWER`, 1: uniform in t), with
  ``eta`` (default 1: ancestral). Both chosen by measurement, docs/sampling.md.

Passes (fast sampler, ``passes``; by default passes of 2 steps, cvdm_cli/passes.py): the
``steps`` calls are split into passes. The learned schedule does not reach zero signal:
gamma(t_max, x) is about 0.04 for the trained models (the prior and boundary terms of the
loss weigh it only weakly), so in
training z_T still holds sqrt(0.04) = 0.2 of the residual r, while a sampler that starts
from N(0, 1) offers none, and the model reads the start noise as signal (a sample's mean
level follows its start noise's mean, correlation ~0.6 on held-out pairs). After each pass
but the last, the finished residual is noised back to t_max with the training marginal,
z_T = sqrt(g_T) r + sqrt(1 - g_T) eps, and sampled again: a restart to the terminal time
(after Xu et al. 2023, "Restart sampling"), whose chain forgets the start. With an exact
denoiser of a Gaussian, a pure-noise start biases the samples' mean and restarts remove it
(tests/test_passes.py). Measured in docs/sampling.md.

lambda(x) does not depend on t: it is computed once per image, and the K samples of an
image share it. Noise comes from one torch.Generator per (image, sample), seeded from the
caller's generator, so results do not depend on the batch size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cvdm_cli import views
from cvdm_cli.devices import AUTOCAST_DTYPES
from cvdm_cli.diffusion import gamma_map
from cvdm_cli.errors import ConfigError
from cvdm_cli.model import CVDM
from cvdm_cli.passes import PassesSpec, resolve_passes

SAMPLERS = ("fast", "reference")
# Fast grid t_i = t_max (1 - i/n)^power; 1 is uniform in t. A power of 2 (the middle step
# of a 2-step pass at t_max / 4) looked better on validation pairs and was worse on 64
# held-out ones (docs/sampling.md, "Time grid"), so the grid stays uniform.
FAST_GRID_POWER = 1.0
DEFAULT_FAST_ETA = 1.0  # ancestral; measured better than DDIM (eta 0), docs/sampling.md


def resolve_eta(sampler: str, eta: float | None) -> float:
    """The eta a sampler runs with: ``eta`` if given, else DEFAULT_FAST_ETA for the fast
    sampler and 1 (ancestral, the paper's) for the reference one."""
    if eta is not None:
        return eta
    return DEFAULT_FAST_ETA if sampler == "fast" else 1.0


ProgressCallback = Callable[[int, int], None]  # (done, total) in denoiser item-passes


# --- step schedules -------------------------------------------------------------------


class FastSchedule:
    """gamma maps on the grid g_i = gamma(t_max (1 - i/n)^power, x), i = 0..n.

    ``power`` (default :data:`FAST_GRID_POWER`): 1 is uniform in t; above 1 puts more of
    the steps near the clean end (2: the middle step of a 2-step pass at t_max / 4).
    """

    def __init__(self, model: CVDM, lam: Tensor, steps: int, power: float | None = None) -> None:
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
        power = FAST_GRID_POWER if power is None else power
        if power <= 0:
            raise ConfigError(f"grid power must be > 0, got {power}")
        self.model, self.lam, self.n_steps = model, lam, steps
        t_max = 1.0 - 1.0 / model.config.timesteps
        self.times = [t_max * (1.0 - i / steps) ** power for i in range(steps + 1)]

    def gamma(self, i: int) -> Tensor:
        t = torch.full((self.lam.shape[0],), self.times[i], device=self.lam.device)
        return gamma_map(self.model, self.lam, t)


class ReferenceSchedule:
    """The paper's discrete schedule: gamma_bar_k = clip(prod_{j<=k} alpha_j), k = 0..T-1.

    alpha_j = clip(1 - beta(j/T, x)/T, 1e-6, 0.99999); step i uses gamma_bar_{T-1-i}.
    Cumulative log-products are checkpointed every ``chunk`` steps and the maps of one
    chunk recomputed on demand, so memory is (T/chunk + chunk) maps instead of T.
    """

    def __init__(self, model: CVDM, lam: Tensor, chunk: int = 16) -> None:
        cfg = model.config
        self.T, self.lam, self.chunk = cfg.timesteps, lam, chunk
        self.n_steps = self.T - 1
        grid = torch.arange(self.T, device=lam.device, dtype=torch.float32) / self.T
        self.tau = model.tau(grid)  # (T,) scalar network, evaluated once
        self.ckpt: dict[int, Tensor] = {}  # chunk index -> cumulative log before the chunk
        cum = torch.zeros_like(lam)
        for k in range(self.T):
            if k % chunk == 0:
                self.ckpt[k // chunk] = cum.clone()
            cum = cum + self._log_alpha(k)
        self._cache_chunk = -1
        self._cache: list[Tensor] = []

    def _log_alpha(self, k: int) -> Tensor:
        alpha = (1.0 - self.lam * self.tau[k] / self.T).clamp(1e-6, 0.99999)
        return torch.log(alpha)

    def gamma_bar(self, k: int) -> Tensor:
        c = k // self.chunk
        if c != self._cache_chunk:
            cum, maps = self.ckpt[c], []
            for j in range(c * self.chunk, min((c + 1) * self.chunk, self.T)):
                cum = cum + self._log_alpha(j)
                maps.append(cum)
            self._cache_chunk, self._cache = c, maps
        return torch.exp(self._cache[k - c * self.chunk]).clamp(1e-10, 0.99999)

    def gamma(self, i: int) -> Tensor:
        return self.gamma_bar(self.T - 1 - i)


def make_schedule(
    model: CVDM, lam: Tensor, sampler: str, steps: int
) -> FastSchedule | ReferenceSchedule:
    if sampler == "fast":
        return FastSchedule(model, lam, steps)
    if sampler == "reference":
        return ReferenceSchedule(model, lam)
    raise ConfigError(f"unknown sampler {sampler!r}", hint=f"use one of: {', '.join(SAMPLERS)}")


def make_schedules(
    model: CVDM, lam: Tensor, sampler: str, plan: Sequence[int]
) -> list[FastSchedule | ReferenceSchedule]:
    """One schedule per pass of ``plan`` (steps per pass, :func:`resolve_passes`)."""
    return [make_schedule(model, lam, sampler, n) for n in plan]


def ddim_update(
    z: Tensor,
    eps_hat: Tensor,
    g_s: Tensor,
    g_t: Tensor,
    eta: float,
    noise: Tensor | None,
    clip: float | None,
) -> tuple[Tensor, Tensor]:
    """One generalised DDIM step from signal variance g_s to g_t > g_s (module docstring).

    Returns (z_t, x0_hat). ``clip`` bounds x0_hat (the residual) to [-clip, clip], which
    keeps the first steps (g_s ~ 1e-6) from amplifying network error by 1/sqrt(g_s).
    """
    x0 = (z - (1.0 - g_s).sqrt() * eps_hat) / g_s.sqrt()
    if clip is not None:
        x0 = x0.clamp(-clip, clip)
        # Re-derive eps from the clipped x0 so the update stays on the same trajectory.
        eps_hat = (z - g_s.sqrt() * x0) / (1.0 - g_s).sqrt()
    sigma2 = (eta**2) * (1.0 - g_t) / (1.0 - g_s) * (1.0 - g_s / g_t)
    z_t = g_t.sqrt() * x0 + (1.0 - g_t - sigma2).clamp_min(0.0).sqrt() * eps_hat
    if noise is not None and eta > 0:
        z_t = z_t + sigma2.sqrt() * noise
    return z_t, x0


# --- noise ----------------------------------------------------------------------------


class NoiseSource:
    """One CPU generator per item (image-sample), so noise does not depend on batching.

    ``seeds``: one int per item. ``draw(items, shape)`` returns (len(items), *shape) float32
    noise, each row the next draw of that item's generator.
    """

    def __init__(self, seeds: Sequence[int], signs: Sequence[float] | None = None) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.signs = list(signs) if signs is not None else [1.0] * len(self.generators)

    def draw(self, items: Sequence[int], shape: tuple[int, ...], device: torch.device) -> Tensor:
        rows = [self.signs[i] * torch.randn(shape, generator=self.generators[i]) for i in items]
        return torch.stack(rows).to(device)


def noise_mate(sample: int, antithetic: bool) -> tuple[int, float]:
    """(the sample whose noise stream ``sample`` draws, its sign).

    Antithetic pairs: sample 2j + 1 replays sample 2j's noise negated (initial and
    ancestral noise), so the pair's sampling errors partly cancel in the mean (docs/
    sampling.md); an odd last sample stays independent. Otherwise every sample its own.
    """
    if antithetic and sample % 2:
        return sample - 1, -1.0
    return sample, 1.0


def sample_view(sample: int, tta: bool, antithetic: bool) -> int:
    """The view sample ``sample`` is drawn from: k % 8 with TTA; with antithetic pairs the
    two mates share view (k // 2) % 8, so their opposite noises stay aligned."""
    return views.view_of(sample // 2 if antithetic else sample, tta)


def item_seeds(generator: torch.Generator | None, count: int) -> list[int]:
    """``count`` 63-bit seeds drawn from ``generator`` (a fresh random one if None)."""
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.seed()) % (2**63))
    return torch.randint(0, 2**62, (count,), generator=generator).tolist()


# --- the step loop ----------------------------------------------------------------------


EpsFn = Callable[[Tensor, Tensor], Tensor]  # (z, gamma) -> eps_hat, all (B,1,H,W)


def run_steps(
    eps_fn: EpsFn,
    schedule: FastSchedule | ReferenceSchedule,
    z: Tensor,
    *,
    eta: float,
    noise: Callable[[], Tensor],
    clip: float | None = 4.0,
    on_step: Callable[[], None] | None = None,
) -> Tensor:
    """Run all steps of ``schedule`` from z (noise) to the clean residual estimate.

    eps_fn: the denoiser on (z, gamma); gamma maps broadcast over the batch of z.
    noise(): the next noise draw, same shape as z. Returns x0_hat of the last step.
    """
    n = schedule.n_steps
    x0 = z
    g_s = schedule.gamma(0)
    for i in range(n):
        g_t = schedule.gamma(i + 1)
        eps_hat = eps_fn(z, g_s)
        last = i == n - 1
        step_eta = 0.0 if last else eta
        z, x0 = ddim_update(
            z, eps_hat, g_s, g_t, step_eta, None if last else (noise() if eta > 0 else None), clip
        )
        g_s = g_t
        if on_step is not None:
            on_step()
    return x0


def run_passes(
    eps_fn: EpsFn,
    schedules: Sequence[FastSchedule | ReferenceSchedule],
    z: Tensor,
    *,
    eta: float,
    noise: Callable[[], Tensor],
    clip: float | None = 4.0,
    on_step: Callable[[], None] | None = None,
) -> Tensor:
    """:func:`run_steps` for each schedule in turn; returns the last pass's residual.

    Between passes the finished residual r is noised back to the next schedule's start,
    z_T = sqrt(g_T) r + sqrt(1 - g_T) eps (eq. 3 at t_max: the training marginal q(z_T | r);
    module docstring), with the next draw of the same noise stream.
    """
    r = z
    for j, schedule in enumerate(schedules):
        if j:
            g_T = schedule.gamma(0)
            z = g_T.sqrt() * r + (1.0 - g_T).sqrt() * noise()
        r = run_steps(eps_fn, schedule, z, eta=eta, noise=noise, clip=clip, on_step=on_step)
    return r


# --- public API -------------------------------------------------------------------------


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


def autocast_context(device: torch.device, precision: str):
    """torch.autocast for 'bf16'/'fp16', a no-op context for 'fp32'."""
    if precision not in AUTOCAST_DTYPES:
        raise ConfigError(f"unknown precision {precision!r}", hint="use fp32, bf16 or fp16")
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def make_eps_fn(model: CVDM, x: Tensor, precision: str = "fp32") -> EpsFn:
    """Denoiser closure on a fixed condition x (B,1,H,W) (float32 out)."""

    def eps_fn(z: Tensor, gamma: Tensor) -> Tensor:
        with autocast_context(x.device, precision):
            out = model.eps(z, x, gamma.expand_as(z))
        return out.float()

    return eps_fn


def auto_batch_size(pixels_per_item: int, device: torch.device) -> int:
    """Items per denoiser call: ~one 256x256 tile on a CPU (larger batches run slower per
    item there: measured 10.7 s vs 19.6 s for a 256x256 plane, batch 1 vs ~8 tiles), and
    ~8 Mpx on an accelerator."""
    budget = 2**16 if device.type == "cpu" else 2**23
    return max(1, budget // max(1, pixels_per_item))


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
    (:mod:`cvdm_cli.views`); the same number of denoiser passes. ``antithetic``: sample
    2j + 1 draws the negated noise of sample 2j, in the same view (:func:`noise_mate`).
    ``passes``: split the steps into passes, each restarting from the last one's sample
    noised back to t_max (:func:`run_passes`; a count or the steps per pass,
    :func:`cvdm_cli.passes.resolve_passes`; None: passes of 2 steps); the same denoiser calls.
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


def count_steps(sampler: str, steps: int, timesteps: int) -> int:
    """Denoiser calls per sample: ``steps`` for fast, T - 1 for reference."""
    return steps if sampler == "fast" else timesteps - 1


__all__ = [
    "SAMPLERS",
    "FastSchedule",
    "NoiseSource",
    "Reconstruction",
    "ReferenceSchedule",
    "count_steps",
    "ddim_update",
    "make_schedule",
    "make_schedules",
    "reconstruct",
    "run_passes",
    "run_steps",
    "schedule_map",
]
