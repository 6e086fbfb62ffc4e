"""The CARE baseline network: shapes, the identity at initialisation, its input, config."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cvdm_cli.core.care import CareConfig, CareNet, care_enhance_plane, upsample
from cvdm_cli.errors import ConfigError, UnknownPresetError


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny convolutions on one CPU thread (see conftest)."""


def _perturbed(net: CareNet, seed: int = 0) -> CareNet:
    """The net with every parameter moved, so that the last conv is no longer zero."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return net


def test_presets_sizes_and_validation() -> None:
    tiny, small = CareConfig.preset("tiny"), CareConfig.preset("small")
    assert (small.channels, small.depth, small.convs_per_level) == (32, 2, 2)  # CSBDeep's
    n_small = CareNet(small).n_parameters()
    assert 400_000 < n_small < 600_000  # "small": ~0.5 M (measured 470 977)
    assert CareNet(tiny).n_parameters() < 50_000
    assert CareConfig.preset("tiny", channels=4).channels == 4
    with pytest.raises(UnknownPresetError, match=r"unknown CARE preset 'huge'.*tiny, small"):
        CareConfig.preset("huge")
    for bad in ({"kernel": 4}, {"channels": 0}, {"activation": "tanh"}, {"norm_low": 99.9}):
        with pytest.raises(ConfigError):
            CareConfig(**bad)


def test_config_round_trip() -> None:
    cfg = CareConfig.preset("small", activation="gelu", kernel=5, norm_high=99.5)
    assert CareConfig.from_dict(cfg.to_dict()) == cfg
    assert CareConfig.from_json(cfg.to_json()) == cfg
    assert cfg.to_dict()["activation"] == "gelu" and cfg.pad_multiple == 4
    with pytest.raises(ConfigError, match="unknown CARE config fields: \\['width'\\]"):
        CareConfig.from_dict({**cfg.to_dict(), "width": 3})


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_shapes_any_size_and_the_multiple_rule(activation: str) -> None:
    net = _perturbed(CareNet(CareConfig.preset("tiny", depth=3, activation=activation)))
    assert net.pad_multiple == 8
    x = torch.randn(2, 1, 16, 24)
    assert net(x).shape == (2, 1, 16, 24)
    with pytest.raises(ValueError, match="not a multiple of 8"):
        net(torch.randn(1, 1, 12, 16))
    # predict: the normalised LR of any size -> scale x that size, padded and cropped inside
    for h, w in ((7, 9), (8, 12), (1, 1), (3, 20)):
        out = net.predict(torch.randn(2, 1, h, w))
        assert out.shape == (2, 1, 2 * h, 2 * w)
        assert torch.isfinite(out).all()
    # on a size that needs no padding predict is forward(upsample(lowres))
    lowres = torch.randn(1, 1, 8, 12)
    torch.testing.assert_close(net.predict(lowres), net(upsample(lowres)))


def test_identity_at_init_and_the_input_is_cvdms_condition() -> None:
    from cvdm_cli import CVDM, ModelConfig
    from cvdm_cli.training.data import make_pair

    torch.manual_seed(0)
    net = CareNet(CareConfig.preset("tiny"))
    assert not net.out.weight.any() and not net.out.bias.any()
    lowres = torch.rand(3, 1, 10, 14) * 2 - 1
    with torch.no_grad():
        pred = net.predict(lowres)  # 20 x 28: pads to 20 x 28 (multiples of 4): none
        odd = net.predict(lowres[..., :9, :13])  # 18 x 26 -> padded to 20 x 28, cropped
    cond = CVDM(ModelConfig.preset("tiny")).condition(lowres)
    assert torch.equal(upsample(lowres), cond)  # the same function, value for value
    assert torch.equal(pred, cond)  # y_hat = x + 0
    assert torch.equal(odd, upsample(lowres[..., :9, :13]))
    # ... and the condition x the trainer precomputes for a pair
    lr = np.random.default_rng(0).uniform(0, 100, (16, 16)).astype(np.float32)
    pair = make_pair("a", lr, np.zeros((32, 32), np.float32) + lr.mean(), config=ModelConfig(),
                     patch=8)  # fmt: skip
    assert torch.equal(upsample(pair.lowres[None])[0], pair.x)
    # gradients reach every layer although the last one starts at zero
    net.train()
    x = torch.randn(2, 1, 16, 16)
    (net(x) * torch.randn_like(x)).sum().backward()
    assert net.out.weight.grad.abs().sum() > 0


def test_enhance_plane_in_input_units() -> None:
    """Raw plane -> normalise (1 / 99.8) -> predict -> the LR's inverse map."""
    from cvdm_cli.core.normalize import denormalize, percentile_normalize
    from cvdm_cli.evaluation import baselines

    raw = np.random.default_rng(3).poisson(200.0, (12, 10)).astype(np.uint16)
    fresh = CareNet(CareConfig.preset("tiny"))
    # an untrained net is bicubic, which commutes with the affine normalisation
    out = care_enhance_plane(fresh, raw)
    assert out.shape == (24, 20) and out.dtype == np.float32
    np.testing.assert_allclose(out, baselines.bicubic_upsample(raw, 2), rtol=1e-5, atol=1e-3)
    net = _perturbed(CareNet(CareConfig.preset("tiny", norm_low=2.0, norm_high=99.0)))
    norm, params = percentile_normalize(raw, 2.0, 99.0)
    with torch.no_grad():
        expected = net.predict(torch.from_numpy(norm)[None, None])[0, 0].numpy()
    np.testing.assert_array_equal(care_enhance_plane(net, raw), denormalize(expected, params))
    assert net.training  # the mode is restored
