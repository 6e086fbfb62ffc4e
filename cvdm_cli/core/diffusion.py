"""CVDM equations: the learned per-pixel schedule, the forward process and the losses.

Notation (arXiv 2312.02246, Sec. 3):
    x       condition: bicubic upsampling of the normalised low-res input, (N,1,H,W)
    y       normalised high-res target, (N,1,H,W); the model diffuses r = y - x
    lam     lambda(x) = softplus(U-Net_s(x)) >= 0, per pixel
    gamma   gamma(t, x) = clamp(exp(-lam * tau_int(t)), gamma_min, gamma_max)   (eq. 1)
            the signal variance ("alpha bar"): ~1 at t = 0, ~0 at t = 1
    beta    beta(t, x) = lam * tau(t) >= 0                                      (eq. 2)
    z_t     sqrt(gamma) r + sqrt(1 - gamma) eps                                 (eq. 3)

Time derivatives are analytic in lam and autograd in t through the scalar networks:
    d gamma/dt     = -lam tau_int'(t) gamma
    d2 gamma/dt2   = gamma (lam^2 tau_int'(t)^2 - lam tau_int''(t))
both zero where the clamp is active (as the reference's tf.gradients through clip_by_value).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cvdm_cli.core.model import CVDM


def _per_sample(t: Tensor) -> Tensor:
    """(N,) -> (N,1,1,1) for broadcasting against image maps."""
    return t.reshape(-1, 1, 1, 1)


def gamma_map(model: CVDM, lam: Tensor, t: Tensor) -> Tensor:
    """gamma(t, x) (eq. 1). lam: (N,1,H,W); t: (N,) or scalar in [0, 1]. -> (N,1,H,W)."""
    cfg = model.config
    t = torch.as_tensor(t, dtype=torch.float32, device=lam.device)
    tau_int = model.tau_int(t.reshape(-1))
    return torch.exp(-lam * _per_sample(tau_int)).clamp(cfg.gamma_min, cfg.gamma_max)


def beta_map(model: CVDM, lam: Tensor, t: Tensor) -> Tensor:
    """beta(t, x) = lam * tau(t) (eq. 2). Shapes as :func:`gamma_map`."""
    t = torch.as_tensor(t, dtype=torch.float32, device=lam.device)
    return lam * _per_sample(model.tau(t.reshape(-1)))


@dataclass
class ScheduleAtT:
    """The schedule and its time derivatives at one t per sample; all (N,1,H,W)."""

    gamma: Tensor
    beta: Tensor
    dgamma_dt: Tensor
    d2gamma_dt2: Tensor


def schedule_with_derivatives(model: CVDM, lam: Tensor, t: Tensor) -> ScheduleAtT:
    """gamma, beta, d gamma/dt and d2 gamma/dt2 at t (N,), differentiable w.r.t. params."""
    cfg = model.config
    t_leaf = t.detach().reshape(-1).to(lam.device, torch.float32).requires_grad_(True)
    with torch.enable_grad():
        tau_int = model.tau_int(t_leaf)
        # tau_int acts elementwise on t, so the gradient of the sum is the per-sample
        # derivative; create_graph keeps the terms trainable.
        d1 = torch.autograd.grad(tau_int.sum(), t_leaf, create_graph=True)[0]
        d2 = torch.autograd.grad(d1.sum(), t_leaf, create_graph=True)[0]
    raw = torch.exp(-lam * _per_sample(tau_int))
    gamma = raw.clamp(cfg.gamma_min, cfg.gamma_max)
    inside = ((raw > cfg.gamma_min) & (raw < cfg.gamma_max)).to(raw.dtype)
    d1, d2 = _per_sample(d1), _per_sample(d2)
    dgamma = -lam * d1 * gamma * inside
    d2gamma = gamma * (lam.square() * d1.square() - lam * d2) * inside
    beta = lam * _per_sample(model.tau(t_leaf))
    return ScheduleAtT(gamma=gamma, beta=beta, dgamma_dt=dgamma, d2gamma_dt2=d2gamma)


def q_sample(r: Tensor, gamma: Tensor, eps: Tensor) -> Tensor:
    """z_t = sqrt(gamma) r + sqrt(1 - gamma) eps (eq. 3)."""
    return gamma.sqrt() * r + (1.0 - gamma).sqrt() * eps


def prior_kl(r: Tensor, gamma_T: Tensor) -> Tensor:
    """Per-pixel KL(q(z_T | r) || N(0, 1)) with q = N(sqrt(g) r, 1 - g).

    = 0.5 (g r^2 + (1 - g) - 1 - log(1 - g)). This is the prior term of a VDM-style bound.
    (The reference code evaluates the KL with its arguments swapped, KL(N(0,1) || q); we
    use the direction of the variational bound.)
    """
    g = gamma_T
    return 0.5 * (g * r.square() - g - torch.log1p(-g))


@dataclass
class LossTerms:
    """The CVDM loss terms, each averaged over every pixel of the whole batch."""

    eps: Tensor  # 1. ||eps - eps_hat||^2
    beta: Tensor  # 2. (dgamma/dt + beta gamma)^2 + (gamma(1/T) - 1)^2 + gamma(1 - 1/T)^2
    prior: Tensor  # 3. KL(q(z_T|r) || N(0,1)) at t = 1 - 1/T
    smooth: Tensor  # 4. alpha (d2 gamma/dt2)^2
    total: Tensor  # weighted sum, weights from config.loss_weights (paper: 1, 2, 2, 2)
    terminal: Tensor  # mean gamma(1 - 1/T): the signal left at the last time (~0 wanted)

    NAMES = ("total", "eps", "beta", "prior", "smooth", "terminal")

    def as_floats(self, *extra: Tensor) -> tuple[dict[str, float], list[float]]:
        """The terms as Python floats, plus ``extra`` scalar tensors (e.g. the gradient
        norm), read in one device-to-host copy: on a GPU each separate read is a sync."""
        values = [getattr(self, k).detach().float().reshape(()) for k in self.NAMES]
        values += [e.detach().float().reshape(()) for e in extra]
        host = torch.stack(values).tolist()
        return dict(zip(self.NAMES, host[: len(self.NAMES)], strict=True)), host[len(self.NAMES) :]


def cvdm_losses(
    model: CVDM,
    x: Tensor,
    y: Tensor,
    *,
    t: Tensor | None = None,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
    autocast_dtype: torch.dtype | None = None,
    terminal_weight: float = 0.0,
) -> LossTerms:
    """All CVDM loss terms for a batch.

    x: condition on the output grid (N,1,H,W) (``model.condition(lowres)``); y: target.
    t: (N,) times in [0, 1) (default: uniform per sample); eps: noise (default: normal).
    autocast_dtype: run the denoiser under autocast (e.g. torch.bfloat16 on CUDA); the
    schedule terms stay in float32.
    terminal_weight: adds ``terminal_weight * mean(gamma(1 - 1/T, x))`` to the total (0:
    the paper's loss). The paper's own terminal terms (gamma_T^2 in the beta loss and the
    prior KL) are quadratic in gamma_T and leave it at ~0.04 after training, so a sampler
    starting from pure noise starts off the training marginal (docs/sampling.md,
    "Passes"); this linear term keeps a constant pull towards zero terminal signal.
    """
    cfg = model.config
    n = x.shape[0]
    if t is None:
        t = torch.rand(n, generator=generator, device="cpu").to(x.device)
    t = t.clamp(0.0, cfg.gamma_max)  # as the reference (t clipped to 0.99999)
    if eps is None:
        eps = torch.randn(y.shape, generator=generator, device="cpu").to(x.device)
    r = y - x
    lam = model.lam(x)

    sched = schedule_with_derivatives(model, lam, t)
    z_t = q_sample(r, sched.gamma, eps)
    if autocast_dtype is not None:
        with torch.autocast(x.device.type, dtype=autocast_dtype):
            eps_hat = model.eps(z_t, x, sched.gamma).float()
    else:
        eps_hat = model.eps(z_t, x, sched.gamma)

    T = cfg.timesteps
    ones = torch.ones(n, device=x.device)
    gamma_0 = gamma_map(model, lam, ones / T)  # should be ~1
    gamma_T = gamma_map(model, lam, ones * (1.0 - 1.0 / T))  # should be ~0

    l_eps = (eps - eps_hat).square().mean()
    l_beta = (
        (sched.dgamma_dt + sched.beta * sched.gamma).square()
        + (gamma_0 - 1.0).square()
        + gamma_T.square()
    ).mean()
    l_prior = prior_kl(r, gamma_T).mean()
    l_smooth = cfg.alpha_smooth * sched.d2gamma_dt2.square().mean()
    w = cfg.loss_weights
    l_terminal = gamma_T.mean()
    total = w[0] * l_eps + w[1] * l_beta + w[2] * l_prior + w[3] * l_smooth
    if terminal_weight:
        total = total + terminal_weight * l_terminal
    return LossTerms(
        eps=l_eps, beta=l_beta, prior=l_prior, smooth=l_smooth, total=total, terminal=l_terminal
    )
