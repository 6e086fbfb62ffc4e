"""Samplers: call counts, determinism, Welford statistics, shapes."""

import numpy as np
import pytest
import torch

from cvdm_cli import reconstruct, schedule_map
from cvdm_cli.core.diffusion import gamma_map
from cvdm_cli.sampling.schedules import FAST_GRID_POWER, FastSchedule, ReferenceSchedule


def _counting_hooks(model):
    counts = {"denoiser": 0, "schedule_net": 0}

    def hook(name):
        def fn(*_):
            counts[name] += 1

        return fn

    handles = [
        model.denoiser.register_forward_hook(hook("denoiser")),
        model.schedule_net.register_forward_hook(hook("schedule_net")),
    ]
    return counts, handles


@pytest.mark.parametrize("sampler,steps,expected", [("fast", 7, 7), ("reference", 20, 199)])
def test_call_counts(tiny_model, sampler, steps, expected):
    lr = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    counts, handles = _counting_hooks(tiny_model)
    try:
        reconstruct(
            tiny_model,
            lr,
            samples=4,
            steps=steps,
            sampler=sampler,
            generator=torch.Generator().manual_seed(0),
            batch_size=8,
        )
    finally:
        for h in handles:
            h.remove()
    # each image is one plane of the driver: its 4 samples (4 TTA views) in one batch, so one
    # denoiser call per step per image; lambda once per image (all its views in one call)
    assert counts["denoiser"] == 2 * expected
    assert counts["schedule_net"] == 2


def test_same_seed_same_output_and_batch_size_independent(tiny_model):
    lr = np.random.default_rng(1).standard_normal((12, 10)).astype(np.float32)
    a = reconstruct(tiny_model, lr, samples=3, steps=4, generator=torch.Generator().manual_seed(5))
    b = reconstruct(
        tiny_model, lr, samples=3, steps=4, generator=torch.Generator().manual_seed(5), batch_size=1
    )
    c = reconstruct(tiny_model, lr, samples=3, steps=4, generator=torch.Generator().manual_seed(6))
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.var, b.var)
    assert np.abs(a.mean - c.mean).max() > 1e-3


def test_samples_differ_and_welford_matches_numpy(tiny_model):
    lr = np.random.default_rng(2).standard_normal((8, 8)).astype(np.float32)
    rec = reconstruct(
        tiny_model,
        lr,
        samples=5,
        steps=3,
        eta=1.0,
        return_samples=True,
        generator=torch.Generator().manual_seed(0),
        batch_size=2,
    )
    assert rec.samples.shape == (5, 16, 16) and rec.mean.shape == (16, 16)
    assert np.abs(rec.samples[0] - rec.samples[1]).max() > 1e-3
    np.testing.assert_allclose(rec.mean, rec.samples.mean(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rec.var, rec.samples.var(0, ddof=1), rtol=1e-4, atol=1e-5)


def test_batch_input_shapes_and_padding(tiny_model):
    lr = np.zeros((3, 1, 7, 9), np.float32)  # odd sizes -> padded internally, cropped back
    gen = torch.Generator().manual_seed(0)
    rec = reconstruct(tiny_model, lr, samples=2, steps=2, generator=gen)
    assert rec.mean.shape == (3, 1, 14, 18) and rec.var.shape == (3, 1, 14, 18)
    assert rec.mean.dtype == np.float32
    assert schedule_map(tiny_model, lr[0, 0]).shape == (14, 18)
    assert np.all(schedule_map(tiny_model, lr[0, 0]) >= 0)


def test_reference_schedule_matches_cumprod(tiny_model):
    lam = torch.rand(1, 1, 4, 4) * 2
    sched = ReferenceSchedule(tiny_model, lam, chunk=7)
    T = tiny_model.config.timesteps
    tau = tiny_model.tau(torch.arange(T) / T)
    alphas = (1 - lam[None] * tau.reshape(-1, 1, 1, 1, 1) / T).clamp(1e-6, 0.99999)
    expected = torch.cumprod(alphas.double(), 0).clamp(1e-10, 0.99999).float()
    for k in (0, 6, 7, 50, 198, 199):
        torch.testing.assert_close(sched.gamma_bar(k), expected[k], rtol=1e-4, atol=1e-9)
    # step i walks gamma_bar from k = T-1 down to 0
    torch.testing.assert_close(sched.gamma(0), expected[T - 1], rtol=1e-4, atol=1e-9)


def test_fast_grid_times_and_maps(tiny_model):
    T = tiny_model.config.timesteps
    t_max = 1 - 1 / T
    lam = torch.rand(1, 1, 4, 4) * 2
    assert FAST_GRID_POWER == 1.0
    squared = FastSchedule(tiny_model, lam, 2, power=2.0)  # middle step at t_max / 4
    assert squared.times == pytest.approx([t_max, t_max / 4, 0.0])
    uniform = FastSchedule(tiny_model, lam, 4)  # the default
    assert uniform.times == pytest.approx([t_max, 0.75 * t_max, 0.5 * t_max, 0.25 * t_max, 0])
    # each step's map is gamma(t_i, x), rising towards the clean end
    expected = gamma_map(tiny_model, lam, torch.tensor([t_max / 4]))
    torch.testing.assert_close(squared.gamma(1), expected)
    assert bool((squared.gamma(2) >= squared.gamma(1)).all())
    assert bool((squared.gamma(1) >= squared.gamma(0)).all())


def test_bad_arguments(tiny_model):
    from cvdm_cli.errors import ConfigError

    with pytest.raises(ConfigError):
        reconstruct(tiny_model, np.zeros((4, 4), np.float32), sampler="euler")
    with pytest.raises(ConfigError):
        FastSchedule(tiny_model, torch.ones(1, 1, 4, 4), 2, power=0.0)
    with pytest.raises(ConfigError):
        reconstruct(tiny_model, np.zeros((2, 4, 4), np.float32))
