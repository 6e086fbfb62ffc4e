import pytest
import torch

from cvdm_cli import CVDM, ModelConfig
from cvdm_cli.errors import ConfigError, UnknownPresetError


@pytest.mark.parametrize("name", ["tiny", "small", "medium", "base"])
def test_preset_shapes(name):
    model = CVDM(ModelConfig.preset(name)).eval()
    size = model.pad_multiple * 4
    x = torch.randn(2, 1, size, size)
    with torch.no_grad():
        eps = model.eps(torch.randn_like(x), x, torch.rand_like(x))
        lam = model.lam(x)
    assert eps.shape == x.shape and lam.shape == x.shape
    assert torch.all(lam >= 0)


def test_preset_sizes():
    names = ("tiny", "small", "medium", "base")
    counts = {n: CVDM(ModelConfig.preset(n)).n_parameters() for n in names}
    assert counts["tiny"] < 1_000_000
    assert 2_000_000 <= counts["small"] <= 6_000_000
    # medium must fit the 25 MB cap of a file shipped in the package, in float32
    assert counts["small"] < counts["medium"] and counts["medium"] * 4 <= 25e6
    assert 25_000_000 <= counts["base"] <= 36_000_000


def test_paper_preset_matches_sr3_size():
    cfg = ModelConfig.preset("paper")
    assert (cfg.channels, cfg.channel_mults, cfg.num_res_blocks) == (64, (1, 2, 4, 8, 8), 3)
    assert cfg.attention_levels == (4,)  # 256 / 2**4 = 16: the 16x16 level
    assert cfg.timesteps == 200
    n = CVDM(cfg).n_parameters()
    assert abs(n - 118e6) / 118e6 < 0.10, n


def test_unknown_preset_lists_valid_names():
    with pytest.raises(UnknownPresetError) as err:
        ModelConfig.preset("huge")
    for name in ("tiny", "small", "medium", "base", "paper"):
        assert name in str(err.value)


def test_config_roundtrip_and_validation():
    cfg = ModelConfig.preset("small", timesteps=100)
    assert ModelConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError):
        ModelConfig.preset("tiny", attention_levels=(5,))
    with pytest.raises(ConfigError):
        ModelConfig.from_dict({"bogus": 1})
