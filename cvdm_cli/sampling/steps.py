"""The step loop: the generalised DDIM update per pixel, steps and restart passes.

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

Passes (fast sampler, ``passes``; by default passes of 2 steps, cvdm_cli/sampling/passes.py): the
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
(tests/sampling/test_passes.py). Measured in docs/sampling.md.

lambda(x) does not depend on t: it is computed once per image, and the K samples of an
image share it. Noise comes from one torch.Generator per (image, sample), seeded from the
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from torch import Tensor

from cvdm_cli.core.devices import autocast_context
from cvdm_cli.core.model import CVDM
from cvdm_cli.sampling.schedules import FastSchedule, ReferenceSchedule


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


def make_eps_fn(model: CVDM, x: Tensor, precision: str = "fp32") -> EpsFn:
    """Denoiser closure on a fixed condition x (B,1,H,W) (float32 out)."""

    def eps_fn(z: Tensor, gamma: Tensor) -> Tensor:
        with autocast_context(x.device, precision):
            out = model.eps(z, x, gamma.expand_as(z))
        return out.float()

    return eps_fn
