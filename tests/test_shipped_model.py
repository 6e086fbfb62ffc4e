"""The README's promise, on the model shipped in the package: `cvdm enhance` on the example
gives a sharper image than bicubic upsampling, and a variance map that is larger where the
reconstruction is wrong. Offline: the default model resolves from the package alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import cvdm, json_lines

from cvdm_cli.core.metrics import fair_scores, spearman
from cvdm_cli.evaluation.baselines import bicubic_upsample
from cvdm_cli.hub import registry
from cvdm_cli.io.tiff import read_single_plane

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "widefield.tif"
TRUTH = REPO / "examples" / "widefield_truth.tif"


@pytest.mark.slow
def test_default_model_sharpens_the_example(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    default = registry.resolve_model(None)
    assert default.source == "package" and default.verified

    # 4 samples x 10 steps (passes of 2, TTA) instead of 8 x 20: a quarter of the README
    # command's cost on the same image, the same model and sampler.
    run = cvdm(
        "enhance", EXAMPLE, "-o", tmp_path, "--samples", "4", "--steps", "10", "--seed", "0",
        "--precision", "fp32", "--std", "--json",
    )  # fmt: skip
    assert run.code == 0, run.err
    record = next(r for r in json_lines(run.out) if r.get("type") == "summary")
    assert record["done"] == 1 and record["failed"] == 0
    assert record["model"] == default.name

    lowres = read_single_plane(EXAMPLE, dtype=np.float64)
    truth = read_single_plane(TRUTH, dtype=np.float64)
    mean = read_single_plane(tmp_path / "widefield_cvdm.tif", dtype=np.float64)
    std = read_single_plane(tmp_path / "widefield_cvdm_std.tif", dtype=np.float64)
    assert mean.shape == std.shape == truth.shape == (2 * lowres.shape[0], 2 * lowres.shape[1])

    ours = fair_scores(mean, truth)
    bicubic = fair_scores(bicubic_upsample(lowres, 2), truth)
    # measured with these settings: cvdm-small-v2 37.4 dB / SSIM 0.965, cvdm-small-v1 36.1 /
    # 0.915, bicubic 32.9 / 0.758; the margins leave room for other CPUs' rounding, not a blur
    assert ours.psnr > bicubic.psnr + 2.5, (ours.psnr, bicubic.psnr)
    assert ours.ssim > bicubic.ssim + 0.12, (ours.ssim, bicubic.ssim)
    # the std map ranks the absolute error of the fitted reconstruction (measured: v2 0.48,
    # v1 0.42)
    assert spearman(std, np.abs(ours.fitted - ours.target)) > 0.3
