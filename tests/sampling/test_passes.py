"""Passes of the fast sampler: the plan, the restart from the training marginal at t_max,
and that restarts remove the bias a pure-noise start leaves when gamma(t_max) > 0."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import cvdm, sample_plane

from cvdm_cli.errors import ConfigError
from cvdm_cli.sampling.api import reconstruct
from cvdm_cli.sampling.passes import resolve_passes, split_steps
from cvdm_cli.sampling.steps import run_passes, run_steps

pytestmark = pytest.mark.usefixtures("one_thread")


# --- the plan ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampler,steps,passes,plan",
    [
        ("fast", 20, None, [2] * 10),  # the default: passes of 2 steps
        ("fast", 5, None, [3, 2]),
        ("fast", 3, None, [3]),
        ("fast", 1, None, [1]),
        ("fast", 20, 1, [20]),
        ("fast", 20, 3, [7, 7, 6]),
        ("fast", 20, "5", [4, 4, 4, 4, 4]),
        ("fast", 20, "2,2,16", [2, 2, 16]),
        ("fast", 20, [1, 1, 18], [1, 1, 18]),
        ("fast", 3, 3, [1, 1, 1]),
        ("reference", 20, None, [20]),
        ("reference", 20, 1, [20]),
    ],
)
def test_plans(sampler, steps, passes, plan):
    assert resolve_passes(sampler, steps, passes) == plan


@pytest.mark.parametrize(
    "sampler,steps,passes",
    [
        ("fast", 20, 0),
        ("fast", 4, 5),  # more passes than steps
        ("fast", 20, "2,2,2"),  # does not add up to --steps
        ("fast", 20, "0,20"),  # an empty pass
        ("fast", 20, "two"),
        ("reference", 20, 3),  # the reference schedule is walked once
    ],
)
def test_bad_plans_name_the_option(sampler, steps, passes):
    with pytest.raises(ConfigError) as info:
        resolve_passes(sampler, steps, passes)
    assert "--passes" in str(info.value)


def test_split_steps_puts_the_longer_passes_first():
    for steps in range(1, 30):
        for n in range(1, steps + 1):
            parts = split_steps(steps, n)
            assert sum(parts) == steps and len(parts) == n
            assert parts == sorted(parts, reverse=True) and parts[0] - parts[-1] <= 1


# --- the restart ---------------------------------------------------------------------------


class LogSnrSchedule:
    """A schedule object as run_steps reads it: gamma from g_T (i = 0) to g_0 (i = n),
    log-SNR linear in i; the same for every pixel."""

    def __init__(self, n_steps: int, g_T: float = 0.1, g_0: float = 0.9999) -> None:
        self.n_steps, self.g_T, self.g_0 = n_steps, g_T, g_0

    def gamma(self, i: int) -> torch.Tensor:
        logit = lambda g: math.log(g / (1.0 - g))  # noqa: E731
        lam = logit(self.g_T) + (logit(self.g_0) - logit(self.g_T)) * i / self.n_steps
        return torch.tensor(1.0 / (1.0 + math.exp(-lam)))


def test_a_pass_restarts_from_the_training_marginal():
    """Pass 2 starts from z_T = sqrt(g_T) r1 + sqrt(1 - g_T) n, with r1 pass 1's result and n
    the next draw of the same noise stream."""
    draws = [torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(i)) for i in range(9)]
    seen: list[torch.Tensor] = []

    def eps_fn(z, gamma):  # any deterministic denoiser; records what it is given
        seen.append(z.clone())
        return 0.3 * z

    stream = iter(draws[1:])
    r = run_passes(eps_fn, [LogSnrSchedule(2), LogSnrSchedule(3)], draws[0], eta=1.0,
                   noise=lambda: next(stream))  # fmt: skip
    # pass 1 alone, on the same stream: 2 steps use one ancestral draw (the last step none)
    stream1 = iter(draws[1:])
    r1 = run_steps(lambda z, g: 0.3 * z, LogSnrSchedule(2), draws[0], eta=1.0,
                   noise=lambda: next(stream1))  # fmt: skip
    g_T = LogSnrSchedule(3).gamma(0)
    expected = g_T.sqrt() * r1 + (1.0 - g_T).sqrt() * draws[2]
    assert len(seen) == 5
    torch.testing.assert_close(seen[2], expected)
    assert r.shape == draws[0].shape and not torch.equal(r, r1)


def _gaussian_eps(mu: float, s2: float):
    """The exact denoiser for r ~ N(mu, s2) per pixel: eps from E[r | z] (eq. 3)."""

    def eps_fn(z, g):
        mean = mu + g.sqrt() * s2 * (z - g.sqrt() * mu) / (g * s2 + 1.0 - g)
        return (z - g.sqrt() * mean) / (1.0 - g).sqrt()

    return eps_fn


def _toy_samples(plan: list[int], mu: float = 1.0, s2: float = 0.25) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)

    def noise():
        return torch.randn((8, 1, 64, 64), generator=gen)

    schedules = [LogSnrSchedule(n) for n in plan]
    return run_passes(_gaussian_eps(mu, s2), schedules, noise(), eta=1.0, noise=noise)


def test_restarts_remove_the_bias_of_a_pure_noise_start():
    """With g_T = 0.1 the training marginal at t_max is N(sqrt(0.1) mu, ...), not N(0, 1):
    even the exact denoiser, started from pure noise, pulls the samples' mean towards 0.
    Two 1-step restarts ahead of the same 20 calls remove that bias and keep the spread."""
    one = _toy_samples([20])
    restarted = _toy_samples([1, 1, 18])
    assert 1.0 - float(one.mean()) > 0.02  # the start's bias (0.032 here)
    assert abs(1.0 - float(restarted.mean())) < 0.01  # 0.004
    assert float(restarted.var()) > 0.9 * float(one.var())  # 0.186 vs 0.193 (truth 0.25)


# --- through the samplers ------------------------------------------------------------------


def test_reconstruct_with_passes_same_calls_seeded_and_batch_invariant(tiny_model):
    lr = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)

    def run(passes, batch_size=None, seed=5):
        gen = torch.Generator().manual_seed(seed)
        return reconstruct(tiny_model, lr, samples=3, steps=6, generator=gen,
                           batch_size=batch_size, passes=passes, return_samples=True)  # fmt: skip

    a, b = run("2,4"), run("2,4", batch_size=1)
    np.testing.assert_allclose(a.samples, b.samples, rtol=1e-5, atol=1e-6)
    one = run(1)  # the paper's single pass
    assert not np.allclose(a.samples, one.samples)
    np.testing.assert_array_equal(run(None).samples, run("2,2,2").samples)  # the default
    np.testing.assert_array_equal(run([6]).samples, one.samples)
    done = []
    reconstruct(
        tiny_model, lr, samples=2, steps=6, passes=3, callback=lambda d, t: done.append((d, t))
    )
    assert done[-1] == (12, 12)  # 2 samples x 6 calls: passes cost nothing extra


def test_tiled_plane_with_passes_seeded_and_checked(tiny_model):
    plane = np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32)
    kw = {"samples": 2, "steps": 4, "seed": 3, "return_samples": True}
    a = sample_plane(tiny_model, plane, passes="1,3", **kw)
    b = sample_plane(tiny_model, plane, passes="1,3", **kw)
    c = sample_plane(tiny_model, plane, **kw)
    np.testing.assert_array_equal(a.samples, b.samples)
    assert not np.allclose(a.samples, c.samples)
    indep = sample_plane(tiny_model, plane, passes=2, tile=16, overlap=8,
                              tiling="independent", **kw)  # fmt: skip
    assert indep.samples.shape == a.samples.shape
    with pytest.raises(ConfigError):
        sample_plane(tiny_model, plane, passes=5, **kw)


# --- the command line ----------------------------------------------------------------------


def test_cli_passes_runs_and_rejects_a_bad_plan(tmp_path, tiny_weights):
    import tifffile

    src = tmp_path / "a.tif"
    tifffile.imwrite(src, np.random.default_rng(0).random((12, 10)).astype(np.float32))
    base = ["enhance", str(src), "--model", str(tiny_weights), "--samples", "2", "--steps", "4"]
    ok = cvdm(*base, "--passes", "1,3", "-o", str(tmp_path / "out"), "--json")
    assert ok.code == 0, ok.err
    assert tifffile.imread(tmp_path / "out" / "a_cvdm.tif").shape == (24, 20)
    bad = cvdm(*base, "--passes", "2,3", "-o", str(tmp_path / "bad"), "--json")
    assert bad.code == 2 and bad.out == ""
    last = bad.err.strip().splitlines()[-1]
    assert last.startswith("error: ") and "--passes" in last and "Traceback" not in bad.err
    assert not (tmp_path / "bad").exists() or not list((tmp_path / "bad").iterdir())
