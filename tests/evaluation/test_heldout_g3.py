"""The held-out G3 generator: G1's pairs under acquisition conditions our simulator does
not draw (haze, uneven illumination, camera column offsets)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("microsim")

from conftest import cvdm

from cvdm_cli.evaluation.heldout import (
    G3_CONDITIONS,
    G3_NAME,
    G1Optics,
    g1_pair,
    g3_pair,
)

OPTICS = G1Optics(size=64, exposures_ms=(300.0,))


@pytest.fixture(scope="module")
def pairs() -> dict[str, tuple]:
    """condition -> (G3 pair, the G1 pair it is built on), seed 3."""
    return {G3_CONDITIONS[i]: (g3_pair(3, i, OPTICS), g1_pair(3, i, OPTICS)) for i in range(3)}


def test_conditions_cycle_and_are_deterministic(pairs):
    for i, name in enumerate(G3_CONDITIONS):
        (lr, hr, p), _ = pairs[name]
        assert p["condition"] == name and p["generator"] == G3_NAME
        lr2, hr2, p2 = g3_pair(3, i, OPTICS)
        np.testing.assert_array_equal(lr, lr2)
        np.testing.assert_array_equal(hr, hr2)
        assert p == p2
        assert lr.shape == (64, 64) and lr.dtype == np.uint16 and hr.shape == (128, 128)
    assert g3_pair(3, 3, OPTICS)[2]["condition"] == G3_CONDITIONS[0]


def test_haze_adds_smooth_light_to_the_input_only(pairs):
    (lr, hr, p), (lr1, hr1, p1) = pairs["haze"]
    np.testing.assert_array_equal(hr, hr1)
    added = lr.astype(float) - lr1.astype(float)
    signal = lr1.astype(float).mean() - p1["camera_offset_adu"]
    # the haze adds haze_to_signal x the in-focus signal's mean (shot noise aside)
    assert added.mean() / signal == pytest.approx(p["haze_to_signal"], rel=0.1)
    # low-frequency light: beyond the shot noise of the two images, the difference is smooth
    from scipy.ndimage import gaussian_filter

    residual = added - gaussian_filter(added, 2.0)
    assert residual.std() < 1.5 * np.sqrt(lr.astype(float).mean() + lr1.astype(float).mean())


def test_uneven_illumination_dims_input_and_target_alike(pairs):
    (lr, hr, p), (lr1, hr1, _) = pairs["uneven"]
    assert 0.3 <= p["beam_corner"] <= 0.7
    ratio_hr = hr.sum() / hr1.sum()
    ratio_lr = (lr.astype(float) - 100).sum() / (lr1.astype(float) - 100).sum()
    assert ratio_hr < 0.98 and ratio_lr == pytest.approx(ratio_hr, abs=0.03)
    assert np.all(hr <= hr1 + 1e-3 * hr1.max())


def test_camera_condition_has_column_offsets_and_hot_pixels(pairs):
    (lr, hr, p), (lr1, hr1, _) = pairs["camera"]
    np.testing.assert_array_equal(hr, hr1)
    diff = lr.astype(float) - lr1.astype(float)
    assert p["camera_offset_adu"] == 1000
    cols = np.median(diff, axis=0)
    assert np.median(cols) == pytest.approx(900, abs=3)
    assert 3.0 < cols.std() < 7.5  # 5 ADU rms between columns
    assert np.sum(diff - cols[None, :] > 150) == p["hot_pixels"]


def test_cli_writes_a_g3_set(tmp_path: Path):
    root = tmp_path / "g3"
    r = cvdm("heldout", root, "--generator", "g3", "--n", "3", "--size", "32", "-q")
    assert r.code == 0, r.err
    doc = json.loads((root / "params.json").read_text())
    assert doc["heldout"] is True and doc["generator"]["name"] == G3_NAME
    assert [m["condition"] for m in doc["pairs"].values()] == list(G3_CONDITIONS)
    r = cvdm("heldout", tmp_path / "x", "--generator", "g7", "--n", "1", "-q")
    assert r.code == 2 and "g7" in r.err
