"""`cvdm evaluate --baseline care:FILE`: a care row in every table, scored like bicubic.

An untrained tiny CVDM (T = 10) and a CARE net trained for a few steps on 16x16 -> 32x32
pairs; every care number is recomputed here from the prediction on the raw LR file.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import cvdm

from cvdm_cli.core import metrics
from cvdm_cli.core.care import CareConfig, care_enhance_plane
from cvdm_cli.errors import ConfigError, InvalidWeightsError
from cvdm_cli.evaluation import baselines
from cvdm_cli.io.weights import load_care, save_care
from cvdm_cli.training.care import care_data, train_care


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    """Tiny convolutions on one CPU thread (see conftest)."""


def _write_pairs(root: Path, n: int = 5) -> None:
    """n pairs of blurred, binned, noisy blobs (lr 16x16 uint16, hr 32x32) and a params.json
    for the Gaussian PSF of RL (tests/evaluation/test_evaluate.py writes the same)."""
    from scipy.ndimage import gaussian_filter

    (root / "lr").mkdir(parents=True)
    (root / "hr").mkdir()
    entries = {}
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        truth = np.zeros((32, 32))
        truth[rng.integers(2, 30, 12), rng.integers(2, 30, 12)] = 1.0
        hr = gaussian_filter(truth, 0.8) * 1000.0
        lr = gaussian_filter(truth, 2.0).reshape(16, 2, 16, 2).sum(axis=(1, 3)) * 1000 + 100
        tifffile.imwrite(root / "lr" / f"pair_{i}.tif", rng.poisson(lr).astype(np.uint16))
        tifffile.imwrite(root / "hr" / f"pair_{i}.tif", hr.astype(np.float32))
        entries[f"pair_{i}"] = {
            "na": 1.4, "emission_nm": 600.0, "lr_pixel_nm": 90.0, "simulator": "gaussian2d-toy",
        }  # fmt: skip
    (root / "params.json").write_text(json.dumps({"pairs": entries}))


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path, Path]:
    """(data folder, tiny CVDM file, CARE file trained 40 steps on the same pairs)."""
    from cvdm_cli import CVDM, ModelConfig, save_weights

    data = tmp_path / "data"
    _write_pairs(data)
    torch.manual_seed(0)
    model = save_weights(CVDM(ModelConfig.preset("tiny", timesteps=10)), tmp_path / "m.safetensors")
    cfg = CareConfig.preset("tiny")
    pairs = care_data(data / "lr", data / "hr", config=cfg, patch=8, val_fraction=0.0)
    net = train_care(pairs, config=cfg, steps=40, batch_size=4, lr=2e-3, seed=0)
    care = save_care(net, tmp_path / "care.safetensors")
    return data, model, care


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_care_rows_summary_wins_and_report(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from cvdm_cli.evaluation.evaluate import evaluate

    data, model, care = setup
    report = evaluate(
        model, data / "lr", data / "hr", samples=2, steps=2, samplers=("fast",),
        rl_grid=(2, 5), seed=7, out_dir=tmp_path / "r", extra_baselines=[f"care:{care}"],
    )  # fmt: skip
    rows = _rows(tmp_path / "r" / "metrics.csv")
    stems = sorted({r["stem"] for r in rows})
    assert len(stems) == 4  # 5 pairs, one held out to tune RL (never scored)
    assert [r["method"] for r in rows] == ["bicubic", "rl", "care", "cvdm_fast"] * 4
    net = load_care(care)
    for stem in stems:
        by = {r["method"]: r for r in rows if r["stem"] == stem}
        raw = tifffile.imread(data / "lr" / f"{stem}.tif")  # the file's dtype, as cvdm reads it
        hr = tifffile.imread(data / "hr" / f"{stem}.tif").astype(np.float64)
        fair = metrics.fair_scores(care_enhance_plane(net, raw).astype(np.float64), hr)
        for key in ("psnr", "ssim", "nrmse", "alpha", "beta"):
            assert float(by["care"][key]) == pytest.approx(getattr(fair, key), rel=1e-9), key
        assert by["care"]["spearman"] == "" and by["care"]["samples"] == ""  # no uncertainty
        assert float(by["care"]["seconds"]) > 0
        # trained for 40 steps it already differs from bicubic
        bic = metrics.fair_scores(baselines.bicubic_upsample(raw, 2), hr)
        assert float(by["bicubic"]["psnr"]) == pytest.approx(bic.psnr, rel=1e-9)
        assert abs(fair.psnr - bic.psnr) > 1e-3

    doc = json.loads((tmp_path / "r" / "report.json").read_text())
    care_psnr = [float(r["psnr"]) for r in rows if r["method"] == "care"]
    assert doc["summary"]["care"]["n"] == 4
    assert doc["summary"]["care"]["mean"]["psnr"] == pytest.approx(np.mean(care_psnr))
    assert doc["summary"]["care"]["mean"]["seconds"] > 0
    gains = np.array(
        [float(a["psnr"]) - float(b["psnr"]) for a, b in zip(rows[3::4], rows[2::4], strict=True)]
    )
    w = doc["wins"]["cvdm_fast"]["care"]
    assert w["n"] == 4 and w["psnr_win_fraction"] == pytest.approx(np.mean(gains > 0))
    assert w["mean_psnr_gain"] == pytest.approx(gains.mean())
    assert w["psnr_lost"] == [s for s, g in zip(stems, gains, strict=True) if g <= 0]
    assert set(doc["wins"]["cvdm_fast"]) == {"bicubic", "rl", "care"}
    assert "care" not in doc["wins"]  # baselines are not compared with each other
    (described,) = doc["settings"]["baselines"]
    assert described["name"] == "care" and described["kind"] == "care"
    assert described["source"] == str(care) and described["preset"] == "tiny"
    assert described["parameters"] == net.n_parameters()
    assert described["input_percentiles"] == [1.0, 99.8]
    assert described["training"]["steps"] == 40 and described["training"]["loss"] == "mae"

    md = (tmp_path / "r" / "report.md").read_text()
    assert md == report.to_markdown()
    mean = doc["summary"]["care"]["mean"]
    assert f"| care | 4 | {mean['psnr']:.2f} (" in md
    assert f"| cvdm_fast | care | 4 | {w['psnr_win_fraction']:.0%} |" in md
    assert f"care: CARE U-Net 'tiny' ({net.n_parameters()} parameters; trained 40 steps" in md
    assert "percentiles 1 / 99.8" in md


def test_several_baselines_and_bad_specs(setup: tuple[Path, Path, Path], tmp_path: Path) -> None:
    from cvdm_cli.evaluation.evaluate import evaluate

    data, model, care = setup
    common = dict(samples=2, steps=1, samplers=("fast",), rl_iterations=2, limit=2)
    report = evaluate(
        model, data / "lr", data / "hr", **common, extra_baselines=[f"care:{care}"] * 2
    )
    by = {(r["stem"], r["method"]): r for r in report.rows}
    assert [m for m in report.summary] == ["bicubic", "rl", "care", "care2", "cvdm_fast"]
    for stem in {s for s, _ in by}:
        assert by[stem, "care"]["psnr"] == by[stem, "care2"]["psnr"]  # the same file twice
    assert [b["name"] for b in report.settings["baselines"]] == ["care", "care2"]
    assert set(report.wins["cvdm_fast"]) == {"bicubic", "rl", "care", "care2"}
    # without a baseline: the rows and settings of before (and an empty list)
    plain = evaluate(model, data / "lr", data / "hr", **common)
    assert plain.settings["baselines"] == [] and "care" not in plain.summary
    assert "CARE" not in plain.to_markdown()
    for bad in ("care", "rcan:x.safetensors", "care:"):
        with pytest.raises(ConfigError, match="not a baseline spec"):
            evaluate(model, data / "lr", data / "hr", **common, extra_baselines=[bad])
    with pytest.raises(InvalidWeightsError, match="holds a CVDM model, not a CARE"):
        evaluate(model, data / "lr", data / "hr", **common, extra_baselines=[f"care:{model}"])
    net = load_care(care)
    net.config = CareConfig.preset("tiny", scale=3)
    three = save_care(net, tmp_path / "care3x.safetensors")
    with pytest.raises(ConfigError, match="the CARE network is 3x but the model is 2x"):
        evaluate(model, data / "lr", data / "hr", **common, extra_baselines=[f"care:{three}"])


def test_cli_baseline_option(
    setup: tuple[Path, Path, Path], tmp_path: Path, no_debug: None
) -> None:
    data, model, care = setup
    args = ["evaluate", "--model", model, "--lr", data / "lr", "--hr", data / "hr",
            "--samples", 2, "--steps", 1, "--no-reference", "--rl-iterations", 2, "--limit", 2,
            "--device", "cpu", "--baseline", f"care:{care}"]  # fmt: skip
    r = cvdm(*args, "--json", "-q")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert list(doc["summary"]) == ["bicubic", "rl", "care", "cvdm_fast"]
    assert doc["settings"]["baselines"][0]["source"] == str(care)
    table = cvdm(*args)
    assert table.code == 0, table.err
    assert "beats care" in table.out
    care_line = next(line for line in table.out.splitlines() if line.strip().startswith("care "))
    assert f"{doc['summary']['care']['mean']['psnr']:.2f}" in care_line
    w = doc["wins"]["cvdm_fast"]["care"]
    fast_line = next(line for line in table.out.splitlines() if "cvdm_fast" in line)
    assert f"{w['psnr_win_fraction']:.0%} / {w['ssim_win_fraction']:.0%}" in fast_line
    bad = cvdm(*args[:-1], "nope:x.safetensors")
    assert bad.code == 2 and "--baseline: not a baseline spec" in bad.err
    wrong = cvdm(*args[:-1], f"care:{model}")
    assert wrong.code != 0 and "holds a CVDM model, not a CARE baseline network" in wrong.err
