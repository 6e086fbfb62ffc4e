"""The broadened simulator (issue 26 item 3): the all-in-focus Gaussian HR target, the
broad recipe's draws, thick-sample haze, camera fixed-pattern noise and hot pixels, and
that datasets made before them are unchanged."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

pytest.importorskip("microsim")

from cvdm_cli import errors
from cvdm_cli.training.simulation import (
    HR_GAUSSIAN_FWHM_PER_LAMBDA_NA,
    SimulationParams,
    camera,
    draw_params,
    fine_grid,
    haze_photons,
    pair_seed_sequence,
    render_pair,
    simulate_dataset,
    simulate_pair,
)
from tests.training.test_simulation import _invoke, gaussian_fwhm, point_source, quiet_params

V2_FIELDS = ("na", "ni", "ns", "emission_nm", "lr_pixel_nm", "depth_um", "defocus_nm", "seed")


def test_datasets_made_before_the_broad_recipe_are_unchanged():
    # LR of pair 3 of a seed-5 dataset, as written by the simulator before this change
    # (sha256 of the uint16 bytes, computed on the commit before it)
    expected = {"mixed": "b823125b20feb17b", "lines": "228c8f9ea4764c77"}
    for structure, digest in expected.items():
        params = draw_params(np.random.default_rng(pair_seed_sequence(5, 3)), structure, size=64)
        lr, _, meta = simulate_pair(params)
        assert hashlib.sha256(lr.tobytes()).hexdigest()[:16] == digest, structure
        assert meta["hr_target"] == "sim" and meta["haze"] == 0.0


@pytest.mark.parametrize(("na", "wavelength", "pixel"), [(1.4, 525.0, 62.5), (1.2, 650.0, 90.0)])
def test_gaussian_target_is_half_the_textbook_width_at_every_depth(na, wavelength, pixel):
    params = quiet_params(na=na, emission_nm=wavelength, lr_pixel_nm=pixel, hr_target="gaussian")
    sim = dataclasses.replace(params, hr_target="sim")
    expected = HR_GAUSSIAN_FWHM_PER_LAMBDA_NA * wavelength / na
    peaks = []
    for z in (0.0, 300.0):  # the slab centre and its face
        _, hr = render_pair(params, point_source(params, z), noise=False)
        _, hr_sim = render_pair(sim, point_source(sim, z), noise=False)
        fwhm = gaussian_fwhm(hr, params.hr_pixel_nm)
        assert abs(fwhm / expected - 1) < 0.08, (z, fwhm, expected)
        peaks.append(hr.max() / hr.sum())
        if z:  # the SIM target blurs an emitter at the slab's face; the projection does not
            assert gaussian_fwhm(hr_sim, sim.hr_pixel_nm, radius=7) > 1.3 * fwhm
    assert peaks[0] == pytest.approx(peaks[1], rel=1e-6)


def test_gaussian_target_leaves_the_widefield_input_alone():
    params = draw_params(np.random.default_rng(pair_seed_sequence(8, 0)), "lines", size=64)
    lr, hr, _ = simulate_pair(params)
    lr_g, hr_g, meta = simulate_pair(dataclasses.replace(params, hr_target="gaussian"))
    assert np.array_equal(lr, lr_g) and not np.array_equal(hr, hr_g)
    assert meta["hr_target"] == "gaussian"
    assert abs(np.percentile(hr_g, 99.9) / params.hr_photons - 1) < 0.1


def test_broad_recipe_keeps_v2_draws_and_spans_haze_offsets_and_hot_pixels():
    v2 = [draw_params(np.random.default_rng(i), "mixed") for i in range(200)]
    broad = [draw_params(np.random.default_rng(i), "mixed", recipe="broad") for i in range(200)]
    for a, b in zip(v2, broad, strict=True):
        assert [getattr(a, f) for f in V2_FIELDS] == [getattr(b, f) for f in V2_FIELDS]
        assert a.haze == a.offset_fpn_adu == a.gain_fpn == a.hot_pixel_fraction == 0.0
        assert a.offset_adu == 100.0
    ph = np.array([p.photons for p in broad])
    assert 10 <= ph.min() < 30 and 2000 < ph.max() <= 5000
    haze = np.array([p.haze / p.photons for p in broad])
    assert 0.35 < np.mean(haze > 0) < 0.65 and haze.max() <= 2.0 + 1e-9
    assert haze[haze > 0].min() >= 0.05 - 1e-9
    offsets = np.array([p.offset_adu for p in broad])
    assert offsets.min() >= 50 and offsets.max() <= 500 and offsets.std() > 80
    hot = np.array([p.hot_pixel_fraction for p in broad])
    assert 0.35 < np.mean(hot > 0) < 0.65 and hot.max() <= 2e-3
    assert all(0 <= p.gain_fpn <= 0.02 and 0 <= p.offset_fpn_adu <= 3 for p in broad)
    with pytest.raises(errors.ConfigError, match="recipe"):
        draw_params(np.random.default_rng(0), "mixed", recipe="v9")
    with pytest.raises(errors.ConfigError):
        SimulationParams(hr_target="sted")


def _flat(params: SimulationParams) -> np.ndarray:
    return np.full((params.lr_size, params.lr_size), 0.0)


def test_offset_and_gain_fixed_pattern_noise_repeat_with_the_seed_and_have_their_rms():
    params = SimulationParams(
        size=512, photons=100.0, background=0.0, read_noise_e=0.0, gain=1.0, offset_fpn_adu=3.0
    )
    dark = _flat(params)
    frames = [
        camera(params, dark, np.random.default_rng(k), np.random.default_rng(7)) for k in (1, 2)
    ]
    assert np.array_equal(frames[0], frames[1])  # no photons, no read noise: the map alone
    assert abs(frames[0].astype(float).std() / np.sqrt(3.0**2 + 1 / 12) - 1) < 0.05
    other = camera(params, dark, np.random.default_rng(1), np.random.default_rng(8))
    assert not np.array_equal(frames[0], other)
    gain_params = dataclasses.replace(params, offset_fpn_adu=0.0, gain_fpn=0.02, offset_adu=0.0)
    bright = np.full_like(dark, 20000.0)
    mean = np.mean(
        [
            camera(gain_params, bright, np.random.default_rng(k), np.random.default_rng(7))
            for k in range(4)
        ],
        axis=0,
    )
    # per-pixel gain 1 +- 2 %: spread 400 ADU, far above the 71 ADU of 4-frame shot noise
    assert abs(np.std(mean) / np.hypot(400.0, np.sqrt(20000 / 4)) - 1) < 0.08


def test_hot_pixels_take_their_fraction_and_their_dark_signal():
    params = SimulationParams(
        size=512,
        background=0.0,
        read_noise_e=0.0,
        gain=1.0,
        offset_adu=0.0,
        hot_pixel_fraction=2e-3,
        hot_pixel_e=500.0,
    )
    img = camera(params, _flat(params), np.random.default_rng(0), np.random.default_rng(3))
    hot = img > 50
    assert abs(hot.mean() / 2e-3 - 1) < 0.2  # 65 536 pixels: ~131 hot ones
    assert 300 < np.median(img[hot]) < 800 and np.count_nonzero(img[~hot]) == 0
    cold = camera(params, _flat(params), np.random.default_rng(0), None)  # no defect stream
    assert np.count_nonzero(cold) == 0


def test_haze_is_smooth_has_its_mean_and_stays_out_of_the_target():
    params = draw_params(np.random.default_rng(pair_seed_sequence(9, 1)), "vesicles", size=128)
    params = dataclasses.replace(params, background=0.0, haze=200.0, haze_sigma_nm=1500.0)
    field = haze_photons(params, np.random.default_rng(0))
    assert field.shape == (64, 64) and field.mean() == pytest.approx(200.0)
    assert np.abs(np.diff(field, axis=0)).max() < 0.1 * field.max()  # smooth: micron-wide blobs
    density = np.zeros(fine_grid(params)[0].shape)
    density += point_source(params)
    clear = dataclasses.replace(params, haze=0.0)
    lr_haze, hr_haze = render_pair(params, density, noise=False)
    lr_clear, hr_clear = render_pair(clear, density, noise=False)
    assert np.array_equal(hr_haze, hr_clear)
    added = (lr_haze - lr_clear) / params.gain
    assert added.mean() == pytest.approx(200.0, rel=1e-6) and added.min() > 0


def test_broad_dataset_is_deterministic_and_recorded(tmp_path):
    args = dict(seed=21, size=64, structure="broad", recipe="broad", hr_target="gaussian")
    a = simulate_dataset(tmp_path / "a", 3, **args)
    b = simulate_dataset(tmp_path / "b", 3, **args)
    assert a["pairs"] == b["pairs"]
    for stem in a["pairs"]:
        for kind in ("lr", "hr"):
            pa, pb = tmp_path / "a" / kind / f"{stem}.tif", tmp_path / "b" / kind / f"{stem}.tif"
            assert pa.read_bytes() == pb.read_bytes()
    assert a["generator"]["fixed"] == {"recipe": "broad", "hr_target": "gaussian"}
    assert {m["hr_target"] for m in a["pairs"].values()} == {"gaussian"}
    assert all(50 <= m["offset_adu"] <= 500 for m in a["pairs"].values())


def test_cli_recipe_and_target_are_recorded_and_bad_values_exit_2(tmp_path):
    out = tmp_path / "set"
    res = _invoke(
        [
            "simulate",
            str(out),
            "--n",
            "1",
            "--size",
            "32",
            "--recipe",
            "broad",
            "--hr-target",
            "gaussian",
            "--structure",
            "vesicles+lines",
            "--quiet",
        ]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "params.json").read_text())
    command = doc["generator"]["command"]
    assert "--recipe broad" in command and "--hr-target gaussian" in command
    assert "--structure vesicles+lines" in command
    for bad in (["--recipe", "v9"], ["--hr-target", "sted"], ["--structure", "lines+beads"]):
        res = _invoke(["simulate", str(tmp_path / "x"), "--n", "1", "--quiet", *bad])
        assert res.exit_code == 2, (bad, res.output)
        assert bad[1] in res.output
        assert not (tmp_path / "x" / "params.json").exists()
