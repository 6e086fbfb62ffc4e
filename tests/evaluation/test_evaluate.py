"""Baselines (bicubic as torch does it, Richardson–Lucy, PSFs) and `cvdm evaluate` end to end.

The end-to-end tests use an untrained tiny model (T = 10 so that the reference sampler
costs 9 calls) on 16x16 -> 32x32 pairs written here; they check that every number in the
report is the score of what the method produced, recomputed independently.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F

from cvdm_cli.core import metrics
from cvdm_cli.core.variance import DEFAULT_VARIANCE_SMOOTHING
from cvdm_cli.errors import ConfigError, DataError, OutputExistsError
from cvdm_cli.evaluation import baselines
from cvdm_cli.sampling.schedules import FAST_GRID_POWER


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """One thread: on a shared 2-core machine two threads are ~20x slower per tiny conv."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# --- baselines ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "scale"), [((7, 9), 2), ((16, 16), 3), ((2, 5, 6), 4), ((1, 1), 2)]
)
def test_bicubic_matches_torch_interpolate(shape: tuple[int, ...], scale: int) -> None:
    x = np.random.default_rng(0).normal(size=shape)
    t = torch.from_numpy(x).reshape(-1, 1, *shape[-2:])
    ref = F.interpolate(t, scale_factor=float(scale), mode="bicubic", align_corners=False)
    ref = ref.numpy().reshape(*shape[:-2], shape[-2] * scale, shape[-1] * scale)
    np.testing.assert_allclose(baselines.bicubic_upsample(x, scale), ref, atol=1e-12)


def test_bicubic_matches_the_model_condition() -> None:
    from cvdm_cli import CVDM, ModelConfig

    model = CVDM(ModelConfig.preset("tiny"))
    x = np.random.default_rng(1).uniform(-1, 1, (12, 10)).astype(np.float32)
    cond = model.condition(torch.from_numpy(x)[None, None])[0, 0].detach().numpy()
    np.testing.assert_allclose(baselines.bicubic_upsample(x, 2), cond, atol=1e-5)


def _second_moment(psf: np.ndarray) -> float:
    """Variance along x of a centred PSF (pixels^2)."""
    c = psf.shape[1] // 2
    x = np.arange(psf.shape[1]) - c
    return float((psf.sum(axis=0) * x**2).sum())


def test_psfs_have_the_stated_width() -> None:
    assert baselines.widefield_sigma_nm(1.4, 600.0) == pytest.approx(90.0)
    g = baselines.gaussian_psf(2.5)
    assert g.sum() == pytest.approx(1.0)
    assert g.shape == (2 * 10 + 1,) * 2
    assert _second_moment(g) == pytest.approx(2.5**2, rel=1e-3)
    # one input pixel of a 2x grid is the footprint (1/4, 1/2, 1/4): variance + 1/2 px^2
    assert _second_moment(baselines.pixel_integrate(g, 2)) == pytest.approx(2.5**2 + 0.5, rel=1e-3)
    # a 3x grid: a box of 3 pixels, variance + 2/3
    assert _second_moment(baselines.pixel_integrate(g, 3)) == pytest.approx(
        2.5**2 + 2 / 3, rel=1e-3
    )
    psf, source = baselines.psf_from_params({"na": 1.4, "emission_nm": 600.0}, 30.0, scale=2)
    assert _second_moment(psf) == pytest.approx(3.0**2 + 0.5, rel=1e-3)  # 90 nm / 30 nm
    assert source.startswith("gaussian")
    psf, source = baselines.psf_from_params(None, 30.0, scale=1, sigma_nm=60.0)
    assert _second_moment(psf) == pytest.approx(4.0, rel=1e-3)
    assert "user" in source
    with pytest.raises(ValueError, match="no PSF"):
        baselines.psf_from_params({"na": 1.4}, 30.0, scale=2)


def _blurred_points(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Small blobs (sigma 1 px) blurred by a Gaussian PSF of sigma 2 px, no noise."""
    from scipy.ndimage import gaussian_filter
    from scipy.signal import fftconvolve

    rng = np.random.default_rng(seed)
    truth = np.zeros((64, 64))
    truth[rng.integers(8, 56, 30), rng.integers(8, 56, 30)] = rng.uniform(1, 2, 30)
    truth = gaussian_filter(truth, 1.0)
    psf = baselines.gaussian_psf(2.0)
    return truth, fftconvolve(truth, psf, mode="same") + 0.01, psf


def test_richardson_lucy_sharpens_and_is_affine_equivariant() -> None:
    truth, blurred, psf = _blurred_points()
    before = metrics.fair_scores(blurred, truth).psnr
    after = metrics.fair_scores(baselines.richardson_lucy(blurred, psf, 30), truth).psnr
    assert after > before + 5.0  # measured: 23.8 -> 30.1 dB
    # shifted and scaled input (e.g. a camera offset and gain) -> same result, same units
    a, b = (
        baselines.richardson_lucy(blurred, psf, 10),
        baselines.richardson_lucy(3.0 * blurred + 100.0, psf, 10),
    )
    np.testing.assert_allclose(b, 3.0 * a + 100.0, rtol=1e-9)


def test_rl_tuning_picks_the_most_iterations_on_noise_free_data() -> None:
    truth, blurred, psf = _blurred_points(1)
    t = baselines.tune_rl_iterations([blurred], [truth], [psf], grid=(2, 8, 30), stems=["a"])
    assert t.best == 30  # no noise: more iterations only help
    assert list(t.mean_psnr) == [2, 8, 30]
    assert t.mean_psnr[2] < t.mean_psnr[8] < t.mean_psnr[30]
    assert t.to_dict()["stems"] == ["a"]


# --- evaluate end to end ------------------------------------------------------------------


def _write_pairs(root: Path, n: int = 5, *, params: bool = True) -> None:
    """n pairs of blurred, binned, noisy blobs: lr/pair_i.tif (16x16 uint16), hr/ (32x32)."""
    from scipy.ndimage import gaussian_filter

    (root / "lr").mkdir(parents=True)
    (root / "hr").mkdir()
    entries = {}
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        truth = np.zeros((32, 32))
        truth[rng.integers(2, 30, 12), rng.integers(2, 30, 12)] = 1.0
        hr = gaussian_filter(truth, 0.8) * 1000.0
        wf = gaussian_filter(truth, 2.0) * 1000.0
        lr = wf.reshape(16, 2, 16, 2).sum(axis=(1, 3)) + 100.0
        lr = rng.poisson(lr).astype(np.uint16)
        tifffile.imwrite(root / "lr" / f"pair_{i}.tif", lr)
        tifffile.imwrite(root / "hr" / f"pair_{i}.tif", hr.astype(np.float32))
        entries[f"pair_{i}"] = {
            "na": 1.4,
            "emission_nm": 600.0,
            "lr_pixel_nm": 90.0,
            "simulator": "gaussian2d-toy",  # -> the Gaussian PSF (no microsim call)
        }
    if params:
        (root / "params.json").write_text(json.dumps({"pairs": entries}))


@pytest.fixture
def model_path(tmp_path: Path) -> Path:
    from cvdm_cli import CVDM, ModelConfig, save_weights

    torch.manual_seed(0)
    model = CVDM(ModelConfig.preset("tiny", timesteps=10))
    return save_weights(model, tmp_path / "tiny.safetensors")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_evaluate_end_to_end_numbers_and_files(tmp_path: Path, model_path: Path) -> None:
    from cvdm_cli.evaluation.evaluate import CSV_COLUMNS, evaluate
    from cvdm_cli.io.weights import load_weights
    from cvdm_cli.run.plane import enhance_plane
    from cvdm_cli.run.settings import EnhanceSettings

    data = tmp_path / "data"
    _write_pairs(data)
    events = []
    report = evaluate(
        model_path,
        data / "lr",
        data / "hr",
        samples=3,
        steps=3,
        reference_samples=2,
        limit=3,
        out_dir=tmp_path / "report",
        rl_grid=(2, 5),
        seed=7,
        progress=events.append,
    )
    # split: 5 pairs, 25% -> 1 validation pair, never scored; --limit 3 of the other 4
    val = report.settings["validation_stems"]
    assert len(val) == 1 and report.settings["n_scored"] == 3
    rows = _rows(tmp_path / "report" / "metrics.csv")
    methods = ["bicubic", "rl", "cvdm_fast", "cvdm_fast_k2", "cvdm_reference"]
    assert [r["method"] for r in rows] == methods * 3
    assert list(rows[0]) == list(CSV_COLUMNS)
    stems = sorted({r["stem"] for r in rows})
    assert val[0] not in stems and len(stems) == 3
    assert report.rl_tuning is not None and report.rl_tuning["stems"] == val
    assert report.settings["rl_iterations"] in (2, 5)
    assert report.settings["psf_source"].startswith("gaussian")
    assert report.settings["passes"] == [3]  # 3 steps: one pass (sampling/passes.py)
    assert report.settings["grid_power"] == FAST_GRID_POWER == 1.0
    report_md = (tmp_path / "report" / "report.md").read_text()
    assert "time grid within a pass: uniform in t" in report_md

    # every number is the fair score of what the method produced, recomputed here
    model = load_weights(model_path)
    for stem in stems:
        lr = tifffile.imread(data / "lr" / f"{stem}.tif").astype(np.float64)
        hr = tifffile.imread(data / "hr" / f"{stem}.tif").astype(np.float64)
        by = {r["method"]: r for r in rows if r["stem"] == stem}
        bic = metrics.fair_scores(baselines.bicubic_upsample(lr, 2), hr)
        assert float(by["bicubic"]["psnr"]) == pytest.approx(bic.psnr, rel=1e-9)
        assert float(by["bicubic"]["ssim"]) == pytest.approx(bic.ssim, rel=1e-9)
        assert by["bicubic"]["spearman"] == ""  # no uncertainty for a baseline
        # cvdm: what `cvdm enhance --seed 7 --samples 3 --steps 3` computes for the LR file
        # (its plane 0, the file's dtype), whatever the image's place in the list
        raw = tifffile.imread(data / "lr" / f"{stem}.tif")
        settings = EnhanceSettings(samples=3, steps=3, seed=7, save_samples=True)
        out = enhance_plane(model, raw, 0, settings, label=stem)
        s = out.samples.astype(np.float64)
        fair = metrics.fair_scores(s.mean(axis=0), hr)
        # the std scored is the pooled one cvdm enhance writes (settings: the default sigma)
        sigma = report.settings["variance_smoothing"]
        assert sigma == DEFAULT_VARIANCE_SMOOTHING > 0
        unc = metrics.uncertainty_scores(
            fair.alpha * s + fair.beta, fair.fitted, fair.target, smoothing=sigma
        )
        fast = by["cvdm_fast"]
        assert float(fast["psnr"]) == pytest.approx(fair.psnr, rel=1e-6)
        assert float(fast["nrmse"]) == pytest.approx(fair.nrmse, rel=1e-6)
        assert float(fast["spearman"]) == pytest.approx(unc.spearman, abs=1e-6)
        cal = float(fast["calibrated_spearman"])
        assert cal == pytest.approx(unc.calibrated_spearman, abs=1e-6) and -1 <= cal <= 1
        assert by["cvdm_fast_k2"]["calibrated_spearman"] == ""  # needs 3 samples
        assert float(fast["ause"]) == pytest.approx(unc.ause, abs=1e-6)
        assert float(fast["calibrated90"]) == pytest.approx(0.5)  # K=3: [s_(1), s_(3)] -> 2/4
        k2 = metrics.fair_scores(s[:2].mean(axis=0), hr)
        assert float(by["cvdm_fast_k2"]["psnr"]) == pytest.approx(k2.psnr, rel=1e-6)
        assert by["cvdm_reference"]["steps"] == "9" and by["cvdm_reference"]["samples"] == "2"

    # summary, wins and fast-vs-reference agree with the rows
    doc = json.loads((tmp_path / "report" / "report.json").read_text())
    for m in methods:
        psnrs = [float(r["psnr"]) for r in rows if r["method"] == m]
        assert doc["summary"][m]["n"] == 3
        assert doc["summary"][m]["mean"]["psnr"] == pytest.approx(np.mean(psnrs))
        assert doc["summary"][m]["median"]["psnr"] == pytest.approx(np.median(psnrs))
    for base in ("bicubic", "rl"):
        gains = [
            float(a["psnr"]) - float(b["psnr"])
            for a, b in zip(rows[2::5], rows[methods.index(base) :: 5], strict=True)
        ]
        w = doc["wins"]["cvdm_fast"][base]
        assert w["psnr_win_fraction"] == pytest.approx(np.mean(np.array(gains) > 0))
        stems_in_order = [r["stem"] for r in rows[2::5]]
        lost = [s for s, g in zip(stems_in_order, gains, strict=True) if g <= 0]
        assert w["psnr_lost"] == lost
        assert len(w["ssim_lost"]) == round(3 * (1 - w["ssim_win_fraction"]))
        assert w["mean_psnr_gain"] == pytest.approx(np.mean(gains))
    md = (tmp_path / "report" / "report.md").read_text()
    lost_lists = [
        w[k] for w in doc["wins"]["cvdm_fast"].values() for k in ("psnr_lost", "ssim_lost")
    ]
    assert ("Images where cvdm_fast is not better" in md) == any(lost_lists)
    for stem in {s for lst in lost_lists for s in lst}:
        assert stem in md.split("Images where cvdm_fast is not better")[1]
    fvr = doc["fast_vs_reference"]
    ref = [float(r["psnr"]) for r in rows if r["method"] == "cvdm_reference"]
    fast = [float(r["psnr"]) for r in rows if r["method"] == "cvdm_fast"]
    assert fvr["psnr_difference"] == pytest.approx(np.mean(fast) - np.mean(ref))
    assert set(doc["images"]) == set(stems)
    assert doc["images"][stems[0]]["rl"]["psnr"] == pytest.approx(float(rows[1]["psnr"]))

    md = (tmp_path / "report" / "report.md").read_text()
    assert md == report.to_markdown()
    assert all(f"| {m} | 3 |" in md for m in methods)

    # progress: RL tuning (1 image x 2 counts), then images up to 3 of 3
    tune = [e for e in events if e.task == "tune-rl"]
    assert [e.done for e in tune] == [1, 2] and tune[-1].total == 2
    ev = [e.done for e in events if e.task == "evaluate"]
    assert ev == sorted(ev) and ev[-1] == 3

    # figures: one PNG per image and the summary, or a notice without matplotlib
    if importlib.util.find_spec("matplotlib"):
        pngs = sorted(p.name for p in (tmp_path / "report" / "figures").glob("*.png"))
        assert pngs == [f"{s}.png" for s in stems]
        head = (tmp_path / "report" / "summary.png").read_bytes()[:8]
        assert head == b"\x89PNG\r\n\x1a\n"
    else:
        assert any("matplotlib" in n for n in report.notices)

    # an existing report is not overwritten unless asked
    with pytest.raises(OutputExistsError):
        evaluate(model_path, data / "lr", data / "hr", out_dir=tmp_path / "report")


def test_evaluate_without_psf_skips_rl_and_scores_every_pair(
    tmp_path: Path, model_path: Path
) -> None:
    from cvdm_cli.evaluation.evaluate import evaluate

    _write_pairs(tmp_path, n=2, params=False)
    report = evaluate(
        model_path, tmp_path / "lr", tmp_path / "hr", samples=2, steps=2, samplers=("fast",)
    )
    assert report.settings["n_validation"] == 0 and report.settings["n_scored"] == 2
    assert {r["method"] for r in report.rows} == {"bicubic", "cvdm_fast"}
    assert any("Richardson–Lucy skipped" in n for n in report.notices)
    assert report.fast_vs_reference is None and report.files == {}
    # a Gaussian sigma needs a pixel size: from the TIFF metadata when there is no params.json
    for lr in (tmp_path / "lr").glob("*.tif"):
        um = 0.09
        tifffile.imwrite(
            lr, tifffile.imread(lr), resolution=(1 / um, 1 / um), imagej=True,
            metadata={"unit": "um"},
        )  # fmt: skip
    report = evaluate(
        model_path, tmp_path / "lr", tmp_path / "hr", samples=2, steps=2, samplers=("fast",),
        psf_sigma_nm=90.0, rl_iterations=3, limit=1,
    )  # fmt: skip
    assert [r["method"] for r in report.rows] == ["bicubic", "rl", "cvdm_fast"]
    assert "sigma=90.0nm" in report.settings["psf_source"]


def test_sampler_seed_changes_only_the_cvdm_draws(tmp_path: Path, model_path: Path) -> None:
    from cvdm_cli.evaluation.evaluate import evaluate

    _write_pairs(tmp_path, n=4)
    common = dict(samples=2, steps=2, samplers=("fast",), rl_grid=(2,), seed=3)

    def scores(**kw):
        report = evaluate(model_path, tmp_path / "lr", tmp_path / "hr", **common, **kw)
        by = {(r["stem"], r["method"]): (r["psnr"], r["ssim"]) for r in report.rows}
        return report.settings, by

    settings, base = scores()
    _, same = scores(sampler_seed=3)
    other_settings, other = scores(sampler_seed=4)
    assert settings["sampler_seed"] == 3 and other_settings["sampler_seed"] == 4
    assert same == base  # sampler_seed defaults to seed
    # the report says which draws it shows when they are not the split's seed
    reseeded = evaluate(model_path, tmp_path / "lr", tmp_path / "hr", **common, sampler_seed=4)
    assert "(split seed 3, sampler seed 4)" in reseeded.to_markdown()
    assert (
        "sampler seed"
        not in evaluate(model_path, tmp_path / "lr", tmp_path / "hr", **common).to_markdown()
    )
    # same split and baselines, other cvdm draws
    assert other_settings["validation_stems"] == settings["validation_stems"]
    assert other.keys() == base.keys()
    for key, value in base.items():
        if key[1] == "cvdm_fast":
            assert other[key] != value
        else:
            assert other[key] == value


def test_evaluate_rejects_unpaired_and_wrongly_sized_pairs(
    tmp_path: Path, model_path: Path
) -> None:
    from cvdm_cli.evaluation.evaluate import evaluate, find_pairs

    _write_pairs(tmp_path, n=2)
    tifffile.imwrite(tmp_path / "lr" / "extra.tif", np.zeros((16, 16), np.uint16))
    with pytest.raises(DataError, match="without a HR partner: extra"):
        find_pairs(tmp_path / "lr", tmp_path / "hr")
    (tmp_path / "lr" / "extra.tif").unlink()
    tifffile.imwrite(tmp_path / "hr" / "pair_1.tif", np.zeros((30, 32), np.float32))
    with pytest.raises(DataError, match=r"HR is 30x32 but must be exactly 2x the LR \(16x16\)"):
        evaluate(model_path, tmp_path / "lr", tmp_path / "hr", samples=2, steps=1,
                 samplers=("fast",), rl_iterations=2)  # fmt: skip


def test_markdown_of_a_report_without_baseline_wins() -> None:
    from cvdm_cli.evaluation.evaluate import EvaluationReport

    row = {"stem": "a", "method": "bicubic", "psnr": 20.0, "ssim": 0.5, "nrmse": 0.1}
    row.update({k: math.nan for k in ("spearman", "calibrated_spearman", "coverage50")})
    row.update({k: math.nan for k in ("coverage90", "ause")})
    row.update(mean_std=math.nan, seconds=0.0, calibrated50=math.nan, calibrated90=math.nan)
    from cvdm_cli.evaluation.evaluate import _summaries

    rep = EvaluationReport({"samples": 8}, [row], _summaries([row]), {}, None, None)
    md = rep.to_markdown()
    assert "| bicubic | 1 | 20.00 (20.00) | 0.500 (0.500) | 0.1000 | – (–) |" in md
    assert json.loads(json.dumps(rep.to_dict()))["images"]["a"]["bicubic"]["spearman"] is None


# --- the command ---------------------------------------------------------------------------


def test_cli_evaluate_json_and_errors(tmp_path: Path, model_path: Path) -> None:
    from typer.testing import CliRunner

    from cvdm_cli.cli.app import app
    from cvdm_cli.cli.common import EXIT_USAGE, exit_code_for

    _write_pairs(tmp_path / "d", n=3)
    runner = CliRunner()
    args = ["evaluate", "--model", str(model_path), "--lr", str(tmp_path / "d" / "lr"),
            "--hr", str(tmp_path / "d" / "hr"), "--samples", "2", "--steps", "2",
            "--no-reference", "--rl-iterations", "3", "--device", "cpu", "--seed", "1"]  # fmt: skip
    result = runner.invoke(app, [*args, "--json", "--quiet", "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["settings"]["n_scored"] == 3 and doc["settings"]["rl_iterations"] == 3
    assert doc["settings"]["seed"] == doc["settings"]["sampler_seed"] == 1
    assert set(doc["summary"]) == {"bicubic", "rl", "cvdm_fast"}
    reseeded = runner.invoke(app, [*args, "--sampler-seed", "9", "--json", "--quiet"])
    assert reseeded.exit_code == 0, reseeded.output
    assert json.loads(reseeded.stdout)["settings"]["sampler_seed"] == 9
    for flag, value in (("--tta", True), ("--no-tta", False)):
        flagged = runner.invoke(app, [*args, flag, "--json", "--quiet"])
        assert flagged.exit_code == 0, flagged.output
        assert json.loads(flagged.stdout)["settings"]["tta"] is value
    for value in ("fp32", "bf16"):
        flagged = runner.invoke(app, [*args, "--precision", value, "--json", "--quiet"])
        assert flagged.exit_code == 0, flagged.output
        assert json.loads(flagged.stdout)["settings"]["precision"] == value
    fp16 = runner.invoke(app, [*args, "--precision", "fp16"])
    assert fp16.exit_code != 0 and "fp16 is not supported on the CPU" in fp16.stderr
    assert (tmp_path / "r" / "metrics.csv").is_file()
    report = (tmp_path / "r" / "report.md").read_text()
    assert "2 fast samples x 2 steps. Sample k is drawn from flip" in report
    assert "None" not in report  # no reference run
    # the same run again refuses to overwrite (one red line, the table's exit code)
    again = runner.invoke(app, [*args, "--out", str(tmp_path / "r")])
    assert again.exit_code == exit_code_for(OutputExistsError("x")) != 0
    assert "already holds an evaluation report" in again.stderr
    # a table on stdout without --json
    table = runner.invoke(app, [*args, "--limit", "1"])
    assert table.exit_code == 0, table.output
    assert "cvdm_fast" in table.stdout and "PSNR" in table.stdout
    # with 3 samples the uncertainty table gives the calibrated Spearman next to the measured
    three = [*args[: args.index("--samples") + 1], "3", *args[args.index("--samples") + 2 :]]
    table3 = runner.invoke(app, [*three, "--limit", "1", "--json", "--quiet"])
    fast = json.loads(table3.stdout)["summary"]["cvdm_fast"]["mean"]
    shown = f"{fast['spearman']:.3f} ({fast['calibrated_spearman']:.3f})"
    assert shown in runner.invoke(app, [*three, "--limit", "1"]).stdout
    missing = runner.invoke(app, [*args[:3], "--lr", str(tmp_path / "nope"), *args[5:]])
    assert missing.exit_code == EXIT_USAGE and "folder not found" in missing.stderr


def test_bf16_changes_only_the_cvdm_rows_and_is_reported(tmp_path: Path, model_path: Path) -> None:
    from cvdm_cli.evaluation.evaluate import evaluate

    _write_pairs(tmp_path, n=3)
    common = dict(samples=2, steps=2, samplers=("fast",), rl_iterations=2, seed=3)
    runs = {
        p: evaluate(model_path, tmp_path / "lr", tmp_path / "hr", **common, precision=p)
        for p in ("fp32", "bf16")
    }
    assert runs["fp32"].settings["precision"] == "fp32"
    assert runs["bf16"].settings["precision"] == "bf16"
    assert "bf16 autocast" in runs["bf16"].to_markdown()
    assert "autocast" not in runs["fp32"].to_markdown()
    rows = {p: {(r["stem"], r["method"]): r for r in rep.rows} for p, rep in runs.items()}
    assert rows["fp32"].keys() == rows["bf16"].keys()
    for key, row in rows["fp32"].items():
        other = rows["bf16"][key]
        if key[1] == "cvdm_fast":
            # same seeds, rounded network: a small change, not another draw
            assert other["psnr"] == pytest.approx(row["psnr"], abs=0.5)
            assert other["ssim"] == pytest.approx(row["ssim"], abs=0.03)
        else:
            assert other["psnr"] == row["psnr"] and other["ssim"] == row["ssim"]


def test_variance_smoothing_changes_only_the_std_scores(tmp_path: Path, model_path: Path) -> None:
    from cvdm_cli.evaluation.evaluate import evaluate

    _write_pairs(tmp_path, n=3)
    common = dict(samples=4, steps=2, samplers=("fast",), rl_iterations=2, seed=3)
    std_keys = ("spearman", "calibrated_spearman", "ause", "mean_std")

    def run(sigma: float):
        report = evaluate(
            model_path, tmp_path / "lr", tmp_path / "hr", **common, variance_smoothing=sigma
        )
        return report, {(r["stem"], r["method"]): r for r in report.rows}

    raw, raw_rows = run(0.0)
    pooled, pooled_rows = run(2.0)
    assert raw.settings["variance_smoothing"] == 0.0
    assert "per-pixel sample std" in raw.to_markdown()
    assert "pooled over a Gaussian of sigma 2 output pixels" in pooled.to_markdown()
    assert raw_rows.keys() == pooled_rows.keys()
    for key, a in raw_rows.items():
        b = pooled_rows[key]
        same = [k for k in a if k not in std_keys and k != "seconds"]
        assert {k: a[k] for k in same} == {k: b[k] for k in same}  # mean, coverage: unchanged
        if key[1] == "cvdm_fast":
            assert b["spearman"] != a["spearman"] and b["ause"] != a["ause"]
    with pytest.raises(ConfigError, match="variance smoothing"):
        evaluate(model_path, tmp_path / "lr", tmp_path / "hr", **common, variance_smoothing=-1)


def test_tta_changes_only_the_cvdm_draws_and_is_reported(tmp_path: Path, model_path: Path) -> None:
    from cvdm_cli.evaluation.evaluate import evaluate

    _write_pairs(tmp_path, n=3)
    common = dict(samples=2, steps=2, samplers=("fast",), rl_iterations=2, seed=3)

    def run(tta: bool):
        report = evaluate(model_path, tmp_path / "lr", tmp_path / "hr", **common, tta=tta)
        by = {(r["stem"], r["method"]): (r["psnr"], r["ssim"]) for r in report.rows}
        return report, by

    plain, plain_scores = run(False)
    tta, tta_scores = run(True)
    assert plain.settings["tta"] is False and tta.settings["tta"] is True
    assert "(TTA)" in tta.to_markdown() and "(TTA)" not in plain.to_markdown()
    assert plain_scores.keys() == tta_scores.keys()
    for key, value in plain_scores.items():
        if key[1] == "cvdm_fast":
            assert tta_scores[key] != value  # sample 1 comes from a quarter turn
        else:
            assert tta_scores[key] == value


def test_save_predictions_are_byte_identical_to_cvdm_enhance(
    tmp_path: Path, model_path: Path
) -> None:
    """`cvdm evaluate --save-predictions` writes, for every scored LR file, exactly the
    files `cvdm enhance` writes for it with the same model, seed and settings, and the
    scores in the report are the scores of those files."""
    from typer.testing import CliRunner

    from cvdm_cli.cli.app import app

    _write_pairs(tmp_path / "d", n=3)
    lr_dir, hr_dir = tmp_path / "d" / "lr", tmp_path / "d" / "hr"
    common = ["--model", str(model_path), "--samples", "3", "--steps", "4", "--seed", "5",
              "--device", "cpu", "--precision", "fp32"]  # fmt: skip
    runner = CliRunner()
    ev = runner.invoke(app, [
        "evaluate", "--lr", str(lr_dir), "--hr", str(hr_dir), *common, "--no-reference",
        "--rl-iterations", "3", "--quiet", "--out", str(tmp_path / "r"),
        "--save-predictions", str(tmp_path / "pred"), "--no-figures",
    ])  # fmt: skip
    assert ev.exit_code == 0, ev.output
    en = runner.invoke(app, ["enhance", str(lr_dir), "-o", str(tmp_path / "enh"), *common, "-q"])
    assert en.exit_code == 0, en.output
    predicted = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert predicted == sorted(
        f"pair_{i}{suffix}.tif" for i in range(3) for suffix in ("_cvdm", "_cvdm_var")
    )
    for name in predicted:
        assert (tmp_path / "pred" / name).read_bytes() == (tmp_path / "enh" / name).read_bytes()
    rows = {
        r["stem"]: r for r in _rows(tmp_path / "r" / "metrics.csv") if r["method"] == "cvdm_fast"
    }
    for stem, row in rows.items():
        mean = tifffile.imread(tmp_path / "pred" / f"{stem}_cvdm.tif").astype(np.float64)
        hr = tifffile.imread(hr_dir / f"{stem}.tif").astype(np.float64)
        assert float(row["psnr"]) == pytest.approx(metrics.fair_scores(mean, hr).psnr, rel=1e-5)
    # another seed draws other samples (the seed reaches the files)
    other = runner.invoke(app, [
        "evaluate", "--lr", str(lr_dir), "--hr", str(hr_dir), *common[:-6], "--seed", "6",
        "--device", "cpu", "--no-reference", "--rl-iterations", "3", "--quiet",
        "--save-predictions", str(tmp_path / "pred6"),
    ])  # fmt: skip
    assert other.exit_code == 0, other.output
    a = (tmp_path / "pred" / "pair_0_cvdm.tif").read_bytes()
    assert (tmp_path / "pred6" / "pair_0_cvdm.tif").read_bytes() != a
