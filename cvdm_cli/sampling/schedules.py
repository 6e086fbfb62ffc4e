"""Step schedules: the per-pixel signal-variance maps g_0 < g_1 < ... < g_n a sampler walks.

- ``reference``: the paper's sampler. alpha_k = clip(1 - beta(k/T, x)/T), gamma_bar_k =
  clip(cumprod alpha), ancestral update (eta = 1) from k = T-1 down to 1: T - 1 calls.
- ``fast`` (default): ``steps`` calls on the continuous gamma(t, x) at t_i = t_max (1 -
  i/n)^p from t_max = 1 - 1/T to 0 (p = :data:`FAST_GRID_POWER`, 1: uniform in t), with
  ``eta`` (default 1: ancestral). Both chosen by measurement, docs/sampling.md.

lambda(x) does not depend on t: a schedule takes it computed once per image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cvdm_cli.core.diffusion import gamma_map
from cvdm_cli.core.model import CVDM
from cvdm_cli.errors import ConfigError
from cvdm_cli.sampling.settings import SAMPLERS

# Fast grid t_i = t_max (1 - i/n)^power; 1 is uniform in t. A power of 2 (the middle step
# of a 2-step pass at t_max / 4) looked better on validation pairs and was worse on 64
# held-out ones (research/log.md, "Time grid"), so the grid stays uniform. Read once, at
# import: a study that wants another grid passes ``power=`` to FastSchedule.
FAST_GRID_POWER = 1.0


# --- step schedules -------------------------------------------------------------------


class FastSchedule:
    """gamma maps on the grid g_i = gamma(t_max (1 - i/n)^power, x), i = 0..n.

    ``power`` (default :data:`FAST_GRID_POWER`): 1 is uniform in t; above 1 puts more of
    the steps near the clean end (2: the middle step of a 2-step pass at t_max / 4).
    """

    def __init__(
        self, model: CVDM, lam: Tensor, steps: int, power: float = FAST_GRID_POWER
    ) -> None:
        if steps < 1:
            raise ConfigError(f"steps must be >= 1, got {steps}")
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


def count_steps(sampler: str, steps: int, timesteps: int) -> int:
    """Denoiser calls per sample: ``steps`` for fast, T - 1 for reference."""
    return steps if sampler == "fast" else timesteps - 1
