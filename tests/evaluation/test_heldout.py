"""The held-out G1 generator (microsim end to end): deterministic, aligned, never trained on."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("microsim")
tifffile = pytest.importorskip("tifffile")

from conftest import cvdm  # noqa: E402

from cvdm_cli import errors  # noqa: E402
from cvdm_cli.core.config import ModelConfig  # noqa: E402
from cvdm_cli.evaluation.heldout import G1_NAME, G1Optics, g1_pair  # noqa: E402
from cvdm_cli.io.tiff import open_tiff  # noqa: E402
from cvdm_cli.training.data import PairedData  # noqa: E402

SMALL = G1Optics(size=32, exposures_ms=(300.0,))


@pytest.fixture(scope="module")
def g1_set(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("g1") / "set"
    r = cvdm("heldout", root, "--n", "3", "--size", "32", "--seed", "4", "-q",
             "--na", "1.3", "--pixel-nm", "65", "--exposure-ms", "20,300")  # fmt: skip
    assert r.code == 0, r.err
    return root


def test_deterministic_by_seed_and_index():
    a_lr, a_hr, a_p = g1_pair(7, 0, SMALL)
    b_lr, b_hr, b_p = g1_pair(7, 0, SMALL)
    np.testing.assert_array_equal(a_lr, b_lr)
    np.testing.assert_array_equal(a_hr, b_hr)
    assert a_p == b_p
    c_lr, _, c_p = g1_pair(7, 1, SMALL)
    d_lr, _, _ = g1_pair(8, 0, SMALL)
    assert not np.array_equal(a_lr, c_lr) and not np.array_equal(a_lr, d_lr)
    assert c_p["slab_thickness_nm"] != a_p["slab_thickness_nm"]
    assert 320 <= a_p["slab_thickness_nm"] <= 480
    assert a_lr.shape == (32, 32) and a_lr.dtype == np.uint16
    assert a_hr.shape == (64, 64) and a_hr.dtype == np.float32
    assert a_p["hr_fwhm_nm"] == pytest.approx(0.5 * 0.51 * 525 / 1.4)


def test_lr_and_hr_share_one_pixel_grid():
    """The HR, binned 2x2 and blurred like the widefield image, lines up with the LR
    (camera offset removed) to a fraction of an LR pixel: no half-pixel shift."""
    from scipy.ndimage import gaussian_filter
    from skimage.registration import phase_cross_correlation

    lr, hr, p = g1_pair(3, 0, G1Optics(size=64, exposures_ms=(300.0,)))
    signal = lr.astype(np.float64) - p["camera_offset_adu"]
    binned = hr.reshape(64, 2, 64, 2).sum(axis=(1, 3))
    sigma_lr = p["widefield_fwhm_nm"] / 2.355 / p["lr_pixel_nm"]
    shift, _, _ = phase_cross_correlation(
        gaussian_filter(binned, sigma_lr), signal, upsample_factor=20
    )
    assert np.abs(shift).max() < 0.25, shift


def test_cli_set_files_and_metadata(g1_set: Path):
    params = json.loads((g1_set / "params.json").read_text())
    assert params["heldout"] is True and params["generator"]["name"] == G1_NAME
    assert sorted(params["pairs"]) == ["pair_00000", "pair_00001", "pair_00002"]
    assert [e["exposure_ms"] for e in params["pairs"].values()] == [20.0, 300.0, 20.0]
    with open_tiff(g1_set / "lr" / "pair_00000.tif") as lr:
        assert lr.pixel_size == pytest.approx((0.065, 0.065)) and lr.unit == "µm"
    with open_tiff(g1_set / "hr" / "pair_00000.tif") as hr:
        assert hr.pixel_size == pytest.approx((0.0325, 0.0325))
    again = cvdm("heldout", g1_set, "--n", "1", "--size", "32", "-q")
    assert again.code == 2 and "--overwrite" in again.err


def test_training_refuses_a_heldout_set(g1_set: Path, tmp_path: Path):
    with pytest.raises(errors.DataError, match="held-out test set"):
        PairedData.from_folders(
            g1_set / "lr", g1_set / "hr", config=ModelConfig.preset("tiny"), patch=16,
            val_fraction=0.0,
        )  # fmt: skip
    r = cvdm("train", "--lr", g1_set / "lr", "--hr", g1_set / "hr", "--out",
             tmp_path / "m.safetensors", "--preset", "tiny", "--steps", "1")  # fmt: skip
    assert r.code != 0 and "held-out test set" in r.err
    assert not (tmp_path / "m.safetensors").exists()


def test_evaluate_scores_a_heldout_set(g1_set: Path, tiny_weights: Path, tmp_path: Path):
    r = cvdm("evaluate", "--lr", g1_set / "lr", "--hr", g1_set / "hr", "-m", tiny_weights,
             "--samples", "2", "--steps", "2", "--no-reference", "--rl-iterations", "3",
             "--device", "cpu", "--json", "-q", "--no-figures")  # fmt: skip
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert set(doc["summary"]) == {"bicubic", "rl", "cvdm_fast"}
    # RL on a held-out set: the Gaussian widefield PSF from NA and wavelength, not our model
    assert doc["settings"]["psf_source"].startswith("gaussian")
