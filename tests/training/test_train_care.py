"""The CARE baseline trains: it beats bicubic on held-back pairs of a tiny problem, is
deterministic by seed, and ``cvdm train-care`` writes a CARE file only CARE loaders read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import cvdm

from cvdm_cli.core import metrics
from cvdm_cli.core.care import CareConfig, care_enhance_plane
from cvdm_cli.errors import ConfigError, DataError, InvalidWeightsError
from cvdm_cli.evaluation import baselines
from cvdm_cli.io.weights import load_care, load_weights, read_metadata
from cvdm_cli.training.care import care_data, train_care


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny convolutions on one CPU thread (see conftest)."""


def write_blob_pairs(root: Path, n: int = 6) -> tuple[Path, Path]:
    """n pairs of blobs: HR 32x32 (blur sigma 0.8 px), LR 16x16 uint16 (widefield blur
    sigma 2 px, 2x2 binning, offset 100, Poisson noise), as tests/evaluation write them."""
    from scipy.ndimage import gaussian_filter

    (root / "lr").mkdir(parents=True)
    (root / "hr").mkdir()
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        truth = np.zeros((32, 32))
        truth[rng.integers(2, 30, 12), rng.integers(2, 30, 12)] = 1.0
        hr = gaussian_filter(truth, 0.8) * 1000.0
        wf = gaussian_filter(truth, 2.0) * 1000.0
        lr = wf.reshape(16, 2, 16, 2).sum(axis=(1, 3)) + 100.0
        tifffile.imwrite(root / "lr" / f"pair_{i}.tif", rng.poisson(lr).astype(np.uint16))
        tifffile.imwrite(root / "hr" / f"pair_{i}.tif", hr.astype(np.float32))
    return root / "lr", root / "hr"


def test_care_beats_bicubic_on_held_back_pairs(tmp_path: Path) -> None:
    lr_dir, hr_dir = write_blob_pairs(tmp_path)
    cfg = CareConfig.preset("tiny")
    data = care_data(lr_dir, hr_dir, config=cfg, patch=8, val_fraction=1 / 3, seed=0)
    assert len(data.train) == 4 and len(data.val) == 2
    seen: list[int] = []
    net = train_care(
        data, config=cfg, steps=600, batch_size=8, lr=2e-3, seed=0,
        callback=lambda step, record: seen.append(step),
    )  # fmt: skip
    assert seen == list(range(1, 601)) and not net.training
    care, bic = [], []
    for pair in data.val:  # scored in input units with the fair comparison, as evaluate does
        raw = tifffile.imread(lr_dir / f"{pair.name}.tif")
        hr = tifffile.imread(hr_dir / f"{pair.name}.tif").astype(np.float64)
        care.append(metrics.fair_scores(care_enhance_plane(net, raw).astype(np.float64), hr).psnr)
        bic.append(metrics.fair_scores(baselines.bicubic_upsample(raw, 2), hr).psnr)
    # measured: CARE 21.51 dB vs bicubic 20.34 dB (pairs 2 and 3), ~5 s on one thread
    assert np.mean(care) > np.mean(bic) + 0.5
    assert all(c > b for c, b in zip(care, bic, strict=True))
    val = net.info["validation"]
    assert val["val_psnr"] > val["val_psnr_bicubic"] + 3.0  # normalised units
    training = net.info["training"]
    assert training["steps"] == 600 and training["loss"] == "mae"
    assert training["parameters"] == net.n_parameters()
    assert net.info["data"] == {"train_pairs": 4, "val_pairs": 2, "patch_lr": 8}


def test_training_is_deterministic_by_seed(tmp_path: Path) -> None:
    lr_dir, hr_dir = write_blob_pairs(tmp_path, n=3)
    cfg = CareConfig.preset("tiny")
    data = care_data(lr_dir, hr_dir, config=cfg, patch=8, val_fraction=0.0)
    a, b, c = (train_care(data, config=cfg, steps=15, lr=2e-3, seed=s) for s in (1, 1, 2))
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert not torch.equal(a.out.weight, c.out.weight)
    assert a.info["validation"] == {}  # nothing held out
    with pytest.raises(ConfigError, match="HR patch 16 is not a multiple of 32"):
        train_care(data, config=CareConfig.preset("tiny", depth=5), steps=1)
    with pytest.raises(ConfigError, match="steps >= 1"):
        train_care(data, config=cfg, steps=0)


def test_cli_writes_a_care_file_that_only_care_loaders_read(
    tmp_path: Path, tiny_weights: Path, no_debug: None
) -> None:
    lr_dir, hr_dir = write_blob_pairs(tmp_path / "d", n=4)
    out = tmp_path / "care.safetensors"
    args = ["train-care", "--lr", lr_dir, "--hr", hr_dir, "--out", out, "--preset", "tiny",
            "--steps", 12, "--patch", 8, "--batch-size", 4, "--learning-rate", 1e-3,
            "--seed", 3, "--device", "cpu", "--threads", 1, "--val-fraction", 0.25]  # fmt: skip
    r = cvdm(*args, "--json", "-q")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["out"] == str(out) and summary["steps"] == 12 and summary["preset"] == "tiny"
    net = load_care(out)
    assert net.config == CareConfig.preset("tiny") and not net.training
    assert summary["parameters"] == net.n_parameters()
    assert net.info["training"]["steps"] == 12 and net.info["training"]["seed"] == 3
    assert net.info["training"]["lr"] == 1e-3 and net.info["training"]["batch_size"] == 4
    assert net.info["data"]["lr"] == str(lr_dir) and net.info["data"]["val_pairs"] == 1
    assert net.info["command"].startswith("cvdm ")  # sys.argv: pytest's here
    assert summary["validation"] == net.info["validation"]
    assert set(net.info["validation"]) == {"val_psnr", "val_psnr_bicubic"}
    # the same run in the library gives the same weights (seeded, CPU)
    data = care_data(lr_dir, hr_dir, config=net.config, patch=8, val_fraction=0.25, seed=3)
    again = train_care(data, config=net.config, steps=12, batch_size=4, lr=1e-3, seed=3)
    for key, value in again.state_dict().items():
        assert torch.equal(value, net.state_dict()[key]), key
    meta = read_metadata(out)
    assert meta["cvdm.kind"] == "care" and "cvdm.config" not in meta
    assert json.loads(meta["cvdm.norm"]) == {"kind": "percentile", "low": 1.0, "high": 99.8}
    assert json.loads(meta["cvdm.care"])["name"] == "tiny" and meta["cvdm.scale"] == "2"
    # the CVDM loader refuses it with one line naming the file, and the reverse
    with pytest.raises(InvalidWeightsError) as refused:
        load_weights(out)
    text = str(refused.value)
    assert str(out) in text and "holds a CARE baseline network, not a CVDM model" in text
    assert "--baseline care:" in text and "\n" not in text
    with pytest.raises(InvalidWeightsError, match="holds a CVDM model, not a CARE baseline"):
        load_care(tiny_weights)
    enhance = cvdm("enhance", tmp_path / "d" / "lr" / "pair_0.tif", "-m", out, "-o", tmp_path)
    assert enhance.code != 0 and "holds a CARE baseline network" in enhance.err
    # an existing file is kept unless --overwrite
    again = cvdm(*args, "-q")
    assert again.code == 2 and "already exists" in again.err
    assert cvdm(*args, "-q", "--overwrite").code == 0
    # not .safetensors: refused before any work
    bad = cvdm(*args[:5], "--out", tmp_path / "care.pt", *args[7:], "-q")
    assert bad.code == 2 and "pickle" in bad.err and not (tmp_path / "care.pt").exists()


def test_cli_refuses_a_heldout_set(tmp_path: Path, no_debug: None) -> None:
    lr_dir, hr_dir = write_blob_pairs(tmp_path / "g", n=2)
    (tmp_path / "g" / "params.json").write_text(json.dumps({"heldout": True, "pairs": {}}))
    with pytest.raises(DataError, match="held-out test set"):
        care_data(lr_dir, hr_dir, config=CareConfig.preset("tiny"), patch=8, val_fraction=0)
    out = tmp_path / "care.safetensors"
    r = cvdm("train-care", "--lr", lr_dir, "--hr", hr_dir, "--out", out, "--preset", "tiny",
             "--steps", 1, "--patch", 8, "-q")  # fmt: skip
    assert r.code != 0 and "held-out test set" in r.err and not out.exists()
