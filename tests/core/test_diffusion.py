"""The learned schedule and the loss: bounds, monotonicity, derivatives, batch use."""

import pytest
import torch

from cvdm_cli import CVDM, ModelConfig
from cvdm_cli.core.diffusion import (
    beta_map,
    cvdm_losses,
    gamma_map,
    prior_kl,
    q_sample,
    schedule_with_derivatives,
)


@pytest.fixture(scope="module")
def model64():
    torch.manual_seed(3)
    m = CVDM(ModelConfig.preset("tiny")).double()
    # Move the monotone nets away from their symmetric init so derivatives are non-trivial.
    with torch.no_grad():
        for net in (m.tau, m.tau_int):
            net.raw_w.add_(torch.randn_like(net.raw_w))
            net.raw_a.fill_(0.5)
            net.c.fill_(1.0)
    return m


def test_gamma_bounds_and_decreasing_in_t(tiny_model):
    lam = torch.rand(3, 1, 8, 8) * 5 + 0.01
    ts = torch.linspace(0, 1, 101)
    gammas = torch.stack([gamma_map(tiny_model, lam, t.repeat(3)) for t in ts])
    cfg = tiny_model.config
    assert gammas.min() >= cfg.gamma_min and gammas.max() <= cfg.gamma_max
    diffs = gammas[1:] - gammas[:-1]
    assert torch.all(diffs <= 0), "gamma must not increase with t at any pixel"
    assert torch.all(gammas[0] == cfg.gamma_max)  # tau_int(0) = 0 -> gamma clamps to max
    # at init lambda ~ log 2 and tau_int(1) ~ 14: close to pure noise at t = 1
    assert torch.all(gammas[-1][lam > 0.5] < 0.01)


def test_tau_zero_at_zero_and_beta_nonnegative(tiny_model):
    t = torch.tensor([0.0, 0.3, 1.0])
    assert tiny_model.tau(t)[0] == 0 and tiny_model.tau_int(t)[0] == 0
    assert torch.all(torch.diff(tiny_model.tau_int(torch.linspace(0, 1, 50))) > 0)
    lam = torch.rand(2, 1, 4, 4)
    for tv in (0.0, 0.5, 1.0):
        assert torch.all(beta_map(tiny_model, lam, torch.full((2,), tv)) >= 0)


def test_time_derivatives_match_finite_differences(model64):
    lam = torch.rand(2, 1, 5, 5, dtype=torch.float64) * 0.8 + 0.05
    t = torch.tensor([0.3, 0.6], dtype=torch.float64)
    sched = schedule_with_derivatives(model64, lam, t)
    h = 1e-4

    def g(tt):
        tau_int = model64.tau_int(tt)
        return torch.exp(-lam * tau_int.reshape(-1, 1, 1, 1)).clamp(1e-6, 0.99999)

    with torch.no_grad():
        fd1 = (g(t + h) - g(t - h)) / (2 * h)
        fd2 = (g(t + h) - 2 * g(t) + g(t - h)) / h**2
    inside = (sched.gamma > 1e-6) & (sched.gamma < 0.99999)
    assert inside.float().mean() > 0.9
    torch.testing.assert_close(sched.dgamma_dt[inside], fd1[inside], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(sched.d2gamma_dt2[inside], fd2[inside], rtol=1e-3, atol=1e-5)
    assert sched.d2gamma_dt2.abs().max() > 1e-3  # the check is not vacuous


def test_q_sample_and_prior_kl():
    r = torch.tensor([0.5, -1.0])
    eps = torch.tensor([1.0, 2.0])
    g = torch.tensor([0.64, 0.36])
    torch.testing.assert_close(q_sample(r, g, eps), torch.tensor([0.8 * 0.5 + 0.6, -0.6 + 0.8 * 2]))
    # KL(N(m, v) || N(0,1)) = 0.5 (m^2 + v - 1 - log v), m = sqrt(g) r, v = 1 - g
    m, v = g.sqrt() * r, 1 - g
    torch.testing.assert_close(prior_kl(r, g), 0.5 * (m**2 + v - 1 - torch.log(v)))
    assert torch.all(prior_kl(r, torch.full((2,), 1e-6)) < 1e-5)


def _randomised(model):
    """A copy whose zero-initialised output layers are random (as after some training)."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for conv in (m.denoiser.out, m.schedule_net.out):
            conv.weight.normal_(0, 0.1)
    return m


def test_loss_terms_use_the_whole_batch(tiny_model):
    """Each term is a mean over every batch element: changing the LAST element changes
    every schedule-dependent term (the reference used only the first element)."""
    torch.manual_seed(0)
    tiny_model = _randomised(tiny_model)
    x = torch.randn(3, 1, 16, 16) * 0.3
    y = x + torch.randn_like(x) * 0.1
    t = torch.tensor([0.2, 0.5, 0.8])
    eps = torch.randn_like(x)
    base = cvdm_losses(tiny_model, x, y, t=t, eps=eps)
    x2 = x.clone()
    x2[-1] += 1.0
    changed = cvdm_losses(tiny_model, x2, y, t=t, eps=eps)
    for name in ("eps", "beta", "prior", "smooth"):
        assert getattr(base, name) != getattr(changed, name), name
    w = tiny_model.config.loss_weights
    expected = w[0] * base.eps + w[1] * base.beta + w[2] * base.prior + w[3] * base.smooth
    torch.testing.assert_close(base.total, expected)
    assert w == (1.0, 2.0, 2.0, 2.0)


def test_loss_gradients_reach_every_network(tiny_model):
    m = _randomised(tiny_model).train()
    x = torch.randn(2, 1, 16, 16)
    cvdm_losses(m, x, x + 0.1).total.backward()
    for part in ("denoiser", "schedule_net", "tau", "tau_int"):
        grads = [p.grad for p in getattr(m, part).parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads), part


def test_loss_terms_as_floats_reads_every_term_and_extras_at_once():
    from cvdm_cli.core.diffusion import LossTerms

    terms = LossTerms(
        eps=torch.tensor(0.5),
        beta=torch.tensor(0.25, dtype=torch.bfloat16),
        prior=torch.tensor([0.125]),
        smooth=torch.tensor(2.0, requires_grad=True),
        total=torch.tensor(3.0),
        terminal=torch.tensor(0.0625),
    )
    losses, extra = terms.as_floats(torch.tensor(7.5), torch.tensor(1.0))
    assert losses == {
        "total": 3.0, "eps": 0.5, "beta": 0.25, "prior": 0.125, "smooth": 2.0, "terminal": 0.0625
    }  # fmt: skip
    assert extra == [7.5, 1.0]
    assert all(type(v) is float for v in [*losses.values(), *extra])


def test_terminal_weight_adds_the_mean_terminal_gamma_and_lowers_it():
    """terminal_weight w adds w * mean(gamma(1 - 1/T, x)); a few steps on that term drive
    the terminal signal down while the paper's loss alone leaves it (issue 26 item 4)."""
    import copy
    import dataclasses

    from cvdm_cli import CVDM, ModelConfig
    from cvdm_cli.core.diffusion import gamma_map

    torch.manual_seed(0)
    # tau_int(1) = 4 at init: gamma_T ~ exp(-0.69 * 4) = 0.06, about a trained model's 0.04
    config = dataclasses.replace(ModelConfig.preset("tiny"), tau_init_slope=4.0)
    x = torch.randn(2, 1, 16, 16) * 0.3
    y = x + torch.randn_like(x) * 0.1
    t, eps = torch.tensor([0.3, 0.9]), torch.randn_like(x)
    model = _randomised(CVDM(config))
    plain = cvdm_losses(model, x, y, t=t, eps=eps)
    pulled = cvdm_losses(model, x, y, t=t, eps=eps, terminal_weight=5.0)
    T = model.config.timesteps
    g_T = gamma_map(model, model.lam(x), torch.ones(2) * (1 - 1 / T))
    torch.testing.assert_close(plain.terminal, g_T.mean())
    torch.testing.assert_close(pulled.total, plain.total + 5.0 * g_T.mean())
    assert 0.01 < float(plain.terminal) < 0.2

    def terminal_after(weight: float) -> float:
        m = copy.deepcopy(model).train()
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        for _ in range(20):
            opt.zero_grad()
            cvdm_losses(m, x, y, t=t, eps=eps, terminal_weight=weight).total.backward()
            opt.step()
        with torch.no_grad():
            return float(gamma_map(m, m.lam(x), torch.ones(2) * (1 - 1 / T)).mean())

    start = float(plain.terminal)
    assert terminal_after(10.0) < 0.5 * min(start, terminal_after(0.0))
