"""The widefield/SIM simulator: PSF widths against theory, noise statistics, determinism,
files and the ``cvdm simulate`` command."""

from __future__ import annotations

import dataclasses
import json
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("microsim")

from scipy.optimize import brentq, curve_fit
from scipy.special import jv

from cvdm_cli import errors
from cvdm_cli.training.simulation import (
    SimulationParams,
    draw_params,
    fine_grid,
    pair_seed_sequence,
    render_pair,
    sim_psf_2d,
    simulate_dataset,
    simulate_pair,
    widefield_psf_2d,
)
from cvdm_cli.training.structures import splat

tifffile = pytest.importorskip("tifffile")


def richards_wolf_fwhm(na: float, ni: float, wavelength_nm: float) -> float:
    """In-focus FWHM (nm) of the vectorial widefield PSF of an unpolarised emitter
    (Richards & Wolf 1959): I(r) = |I0|^2 + 2|I1|^2 + |I2|^2 with
    I_m = int_0^alpha sqrt(cos t) sin t (1 + cos t, sin t, 1 - cos t) J_m(k r sin t) dt.
    Independent of microsim (direct quadrature)."""
    alpha = np.arcsin(na / ni)
    t = np.linspace(0.0, alpha, 2001)
    k = 2 * np.pi * ni / wavelength_nm
    c, s = np.cos(t), np.sin(t)

    def intensity(r: float) -> float:
        u = k * r * s
        i0 = np.trapezoid(np.sqrt(c) * s * (1 + c) * jv(0, u), t)
        i1 = np.trapezoid(np.sqrt(c) * s * s * jv(1, u), t)
        i2 = np.trapezoid(np.sqrt(c) * s * (1 - c) * jv(2, u), t)
        return i0**2 + 2 * i1**2 + i2**2

    peak = intensity(0.0)
    return 2.0 * brentq(lambda r: intensity(r) - peak / 2, 1e-3, wavelength_nm)


if not hasattr(np, "trapezoid"):  # numpy < 2
    np.trapezoid = np.trapz  # type: ignore[attr-defined]


def gaussian_fwhm(img: np.ndarray, pixel_nm: float, radius: int = 5) -> float:
    """FWHM (nm) of the best-fit 2D Gaussian around the brightest pixel, with the camera
    pixel's box integration (variance a^2/12) removed."""
    cy, cx = np.unravel_index(int(np.argmax(img)), img.shape)
    win = img[cy - radius : cy + radius + 1, cx - radius : cx + radius + 1]
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]

    def model(yx, amp, y0, x0, sigma):
        return amp * np.exp(-((yx[0] - y0) ** 2 + (yx[1] - x0) ** 2) / (2 * sigma**2))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        (_, _, _, sigma), _ = curve_fit(
            model, (yy.ravel(), xx.ravel()), win.ravel(), p0=(win.max(), 0.0, 0.0, 1.5)
        )
    return 2.3548 * np.sqrt(sigma**2 - 1 / 12) * pixel_nm


def point_source(params: SimulationParams, z_nm: float = 0.0) -> np.ndarray:
    """A single emitter at the centre of the central LR pixel, at depth z_nm in the slab."""
    grid, margin = fine_grid(params)
    c = margin + 4 * (params.lr_size // 2) + 1.5  # LR pixel j covers fine 4j..4j+3
    return splat(grid, np.array([z_nm]), np.array([c]), np.array([c]), np.array([1.0]))


def quiet_params(**kw) -> SimulationParams:
    base = dict(size=64, ns=1.515, background=0.0, offset_adu=0.0, gain=1.0, photons=1000.0)
    base.update(kw)
    return SimulationParams(**base)


OPTICS = [(1.2, 500.0, 55.0), (1.4, 525.0, 62.6), (1.49, 680.0, 110.0)]


@pytest.mark.parametrize(("na", "wavelength", "pixel"), OPTICS)
def test_in_focus_fwhm_matches_theory_for_lr_and_hr(na, wavelength, pixel):
    params = quiet_params(na=na, emission_nm=wavelength, lr_pixel_nm=pixel)
    lr, hr = render_pair(params, point_source(params), noise=False)
    theory = richards_wolf_fwhm(na, params.ni, wavelength)
    # sanity of the theory itself: the Airy 0.51 lambda/NA, widened by high-NA vector effects
    assert 1.0 < theory / (0.51 * wavelength / na) < 1.15
    lr_fwhm = gaussian_fwhm(lr, params.lr_pixel_nm)
    hr_fwhm = gaussian_fwhm(hr, params.hr_pixel_nm)
    assert abs(lr_fwhm / theory - 1) < 0.10, (lr_fwhm, theory)
    # HR target = linear SIM: half the widefield width
    assert abs(hr_fwhm / (theory / 2) - 1) < 0.10, (hr_fwhm, theory / 2)
    assert lr.shape == (32, 32) and hr.shape == (64, 64)


def test_psf_widens_with_defocus_and_out_of_focus_emitters():
    widths, peaks = [], []
    for defocus in (0.0, 250.0, 400.0):
        params = quiet_params(na=1.4, emission_nm=600.0, lr_pixel_nm=65.0, defocus_nm=defocus)
        lr, _ = render_pair(params, point_source(params), noise=False)
        widths.append(gaussian_fwhm(lr, params.lr_pixel_nm))
        peaks.append(lr.max() / lr.sum())
    assert widths[0] < widths[1] < widths[2]
    assert peaks[0] > peaks[1] > peaks[2]
    # an emitter 300 nm above the focal plane of the slab centre is blurred the same way
    params = quiet_params(na=1.4, emission_nm=600.0, lr_pixel_nm=65.0)
    lr_in, _ = render_pair(params, point_source(params, 0.0), noise=False)
    lr_out, _ = render_pair(params, point_source(params, 300.0), noise=False)
    assert gaussian_fwhm(lr_out, 65.0) > 1.2 * gaussian_fwhm(lr_in, 65.0)
    assert lr_out.max() / lr_out.sum() < 0.8 * lr_in.max() / lr_in.sum()


def test_index_mismatch_adds_aberration():
    matched = quiet_params(na=1.4, emission_nm=600.0, lr_pixel_nm=65.0, ns=1.515, depth_um=3.0)
    water = dataclasses.replace(matched, ns=1.33)
    psf_m, psf_w = widefield_psf_2d(matched), widefield_psf_2d(water)
    assert psf_w.max() < 0.9 * psf_m.max()  # Strehl drops with depth in water


@pytest.mark.parametrize(
    ("photons", "background", "read", "gain"), [(200.0, 50.0, 2.0, 2.2), (20.0, 1.0, 4.0, 0.8)]
)
def test_flat_field_noise_follows_poisson_plus_gaussian(photons, background, read, gain):
    params = SimulationParams(
        size=256,
        photons=photons,
        background=background,
        read_noise_e=read,
        gain=gain,
        offset_adu=100.0,
        seed=3,
    )
    flat = np.ones(fine_grid(params)[0].shape)
    expected, _ = render_pair(params, flat, noise=False)
    mean_e = photons + background
    assert np.allclose(expected, gain * mean_e + 100.0, rtol=1e-6)
    lr, _ = render_pair(params, flat, rng=np.random.default_rng(7))
    adu = lr.astype(np.float64)
    # sCMOS model: var_ADU = g^2 (mean_e + read^2) + 1/12 (quantisation)
    var_model = gain**2 * (mean_e + read**2) + 1 / 12
    assert abs(adu.mean() / (gain * mean_e + 100.0) - 1) < 0.01
    assert abs(adu.var() / var_model - 1) < 0.10, (adu.var(), var_model)


def test_simple_simulator_is_poisson_only_and_shares_the_hr_target():
    params = draw_params(np.random.default_rng(pair_seed_sequence(4, 0)), "mixed", size=64)
    lr_s, hr_s, meta_s = simulate_pair(params, simple=True)
    lr_p, hr_p, meta_p = simulate_pair(params)
    assert np.array_equal(hr_s, hr_p)  # the same target definition
    assert meta_s["simulator"] == "gaussian2d-toy" and meta_p["simulator"] == "widefield3d-microsim"
    assert lr_s.dtype == np.uint16 and lr_s.shape == (32, 32)
    assert not np.array_equal(lr_s, lr_p)
    flat_params = dataclasses.replace(params, size=256, photons=300.0)
    flat = np.ones(fine_grid(flat_params)[0].shape)
    lr, _ = render_pair(flat_params, flat, simple=True, rng=np.random.default_rng(1))
    assert abs(lr.mean() / 300.0 - 1) < 0.01
    assert abs(lr.var() / 300.0 - 1) < 0.10  # Poisson: variance = mean, no offset


def test_simulate_pair_shapes_types_and_signal_level():
    params = draw_params(np.random.default_rng(pair_seed_sequence(0, 1)), "filaments", size=64)
    lr, hr, meta = simulate_pair(params)
    assert lr.dtype == np.uint16 and lr.shape == (32, 32)
    assert hr.dtype == np.float32 and hr.shape == (64, 64)
    assert hr.min() >= 0
    assert abs(np.percentile(hr, 99.9) / params.hr_photons - 1) < 0.1
    assert lr.min() >= 0 and lr.max() > params.offset_adu
    assert meta["lr_pixel_nm"] == params.lr_pixel_nm
    assert meta["hr_pixel_nm"] == params.lr_pixel_nm / 2
    assert meta["structure"] == "filaments"
    # the pair is a pure function of its parameters
    lr2, hr2, _ = simulate_pair(SimulationParams.from_dict(json.loads(json.dumps(meta))))
    assert np.array_equal(lr, lr2) and np.array_equal(hr, hr2)


def test_psf_2d_for_deconvolution():
    params = SimulationParams(na=1.3, emission_nm=600.0, lr_pixel_nm=80.0)
    psf = widefield_psf_2d(params)
    assert psf.ndim == 2 and psf.shape[0] == psf.shape[1] and psf.shape[0] % 2 == 1
    assert np.isclose(psf.sum(), 1.0)
    c = psf.shape[0] // 2
    assert np.unravel_index(int(np.argmax(psf)), psf.shape) == (c, c)
    assert np.allclose(psf, psf.T, atol=1e-6)
    fwhm = gaussian_fwhm(psf, 80.0, radius=min(5, c))
    assert abs(fwhm / richards_wolf_fwhm(1.3, 1.515, 600.0) - 1) < 0.10
    sim = sim_psf_2d(params, 40.0)
    assert np.isclose(sim.sum(), 1.0)
    assert abs(gaussian_fwhm(sim, 40.0) / (fwhm / 2) - 1) < 0.10


def test_draw_params_ranges_and_fixed_values():
    draws = [draw_params(np.random.default_rng(i), "mixed") for i in range(300)]
    na = np.array([p.na for p in draws])
    px = np.array([p.lr_pixel_nm for p in draws])
    em = np.array([p.emission_nm for p in draws])
    ph = np.array([p.photons for p in draws])
    assert na.min() >= 1.2 and na.max() <= 1.5
    assert px.min() >= 55 and px.max() <= 110 and px.max() > 90
    assert em.min() >= 500 and em.max() <= 680 and em.max() > 640
    assert 20 <= ph.min() < 40 and 1000 < ph.max() <= 2000
    assert np.mean(np.abs(px - 62.6) < 6) > 0.45  # BioSR-like half
    assert all(abs(p.defocus_nm) <= 400 for p in draws)
    fixed = draw_params(np.random.default_rng(0), "vesicles", size=128, na=1.3, lr_pixel_nm=70)
    free = draw_params(np.random.default_rng(0), "vesicles", size=128)
    assert fixed.na == 1.3 and fixed.lr_pixel_nm == 70.0 and fixed.size == 128
    assert fixed.emission_nm == free.emission_nm and fixed.seed == free.seed
    with pytest.raises(errors.ConfigError):
        draw_params(np.random.default_rng(0), "mixed", wavelength=500)
    with pytest.raises(errors.ConfigError):
        draw_params(np.random.default_rng(0), "mixed", na=1.6)
    with pytest.raises(errors.ConfigError):
        SimulationParams(structure="beads")


def test_photons_range_moves_only_the_signal():
    default = [draw_params(np.random.default_rng(i), "mixed") for i in range(50)]
    same = [
        draw_params(np.random.default_rng(i), "mixed", photons_range=(20, 2000)) for i in range(50)
    ]
    dim = [draw_params(np.random.default_rng(i), "mixed", photons_range=(5, 10)) for i in range(50)]
    assert default == same  # the default bounds are 20:2000
    for d, p in zip(default, dim, strict=True):
        assert 5.0 <= p.photons <= 10.0
        # the same uniform draw, mapped log-linearly onto the new bounds
        u = np.log(d.photons / 20.0) / np.log(100.0)
        assert np.isclose(np.log(p.photons / 5.0) / np.log(2.0), u)
        assert p.background / p.photons == pytest.approx(d.background / d.photons)
        assert (p.na, p.seed, p.defocus_nm, p.gain) == (d.na, d.seed, d.defocus_nm, d.gain)
    pinned = draw_params(np.random.default_rng(0), "mixed", photons_range=(5, 10), photons=300)
    assert pinned.photons == 300.0
    for bad in [(0, 10), (10, 5), (10, 40000)]:
        with pytest.raises(errors.ConfigError):
            draw_params(np.random.default_rng(0), "mixed", photons_range=bad)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*.tif"))}


def test_same_seed_gives_identical_files_and_pairs_do_not_depend_on_n(tmp_path):
    a = simulate_dataset(tmp_path / "a", 2, seed=11, size=64)
    simulate_dataset(tmp_path / "b", 2, seed=11, size=64)
    simulate_dataset(tmp_path / "c", 1, seed=11, size=64)
    simulate_dataset(tmp_path / "d", 1, seed=12, size=64)
    fa, fb, fc, fd = (_files(tmp_path / k) for k in "abcd")
    assert sorted(fa) == [
        "hr/pair_00000.tif",
        "hr/pair_00001.tif",
        "lr/pair_00000.tif",
        "lr/pair_00001.tif",
    ]
    assert fa == fb
    assert fc["lr/pair_00000.tif"] == fa["lr/pair_00000.tif"]
    assert fd["lr/pair_00000.tif"] != fa["lr/pair_00000.tif"]
    assert (tmp_path / "a" / "params.json").read_bytes() == (
        tmp_path / "b" / "params.json"
    ).read_bytes()
    doc = json.loads((tmp_path / "a" / "params.json").read_text())
    assert doc == json.loads(json.dumps(a))
    assert doc["generator"]["seed"] == 11 and set(doc["pairs"]) == {"pair_00000", "pair_00001"}
    meta = doc["pairs"]["pair_00001"]
    for key in ("lr_pixel_nm", "hr_pixel_nm", "na", "ni", "ns", "emission_nm", "photons", "seed"):
        assert key in meta
    with tifffile.TiffFile(tmp_path / "a" / "lr" / "pair_00001.tif") as tif:
        lr = tif.asarray()
        x_res = tif.pages[0].tags["XResolution"].value
        assert tif.imagej_metadata["unit"] == "um"
    assert lr.dtype == np.uint16 and lr.shape == (32, 32)
    assert np.isclose(x_res[1] / x_res[0] * 1000, meta["lr_pixel_nm"], rtol=1e-5)
    with tifffile.TiffFile(tmp_path / "a" / "hr" / "pair_00001.tif") as tif:
        hr = tif.asarray()
        x_res = tif.pages[0].tags["XResolution"].value
    assert hr.dtype == np.float32 and hr.shape == (64, 64)
    assert np.isclose(x_res[1] / x_res[0] * 1000, meta["lr_pixel_nm"] / 2, rtol=1e-5)


def test_existing_dataset_is_not_overwritten(tmp_path):
    simulate_dataset(tmp_path, 1, size=32, simple=True)
    with pytest.raises(errors.OutputExistsError):
        simulate_dataset(tmp_path, 1, size=32, simple=True)
    simulate_dataset(tmp_path, 1, size=32, simple=True, overwrite=True, seed=5)
    assert json.loads((tmp_path / "params.json").read_text())["generator"]["seed"] == 5


@pytest.mark.slow
def test_workers_do_not_change_the_files(tmp_path):
    simulate_dataset(tmp_path / "one", 3, seed=2, size=64)
    simulate_dataset(tmp_path / "two", 3, seed=2, size=64, workers=2)
    assert _files(tmp_path / "one") == _files(tmp_path / "two")


# --- the command ---------------------------------------------------------------------


def _invoke(args):
    from typer.testing import CliRunner

    from cvdm_cli.cli.app import app

    return CliRunner().invoke(app, args)


def test_cli_writes_a_dataset(tmp_path):
    out = tmp_path / "set"
    res = _invoke(
        [
            "simulate",
            str(out),
            "--n",
            "2",
            "--seed",
            "3",
            "--size",
            "64",
            "--structure",
            "vesicles",
            "--na",
            "1.3",
            "--pixel-nm",
            "70",
            "--photons",
            "100",
            "--quiet",
        ]
    )
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "params.json").read_text())
    assert doc["generator"]["fixed"]["na"] == 1.3
    for meta in doc["pairs"].values():
        assert meta["na"] == 1.3 and meta["lr_pixel_nm"] == 70.0 and meta["photons"] == 100.0
        assert meta["structure"] == "vesicles"
    assert len(list((out / "lr").glob("*.tif"))) == 2 and len(list((out / "hr").glob("*.tif"))) == 2


def test_cli_photons_range_is_drawn_recorded_and_repeatable(tmp_path):
    out = tmp_path / "dim"
    args = ["simulate", str(out), "--n", "2", "--seed", "4", "--size", "32"]
    res = _invoke([*args, "--photons-range", "5:12", "--quiet"])
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "params.json").read_text())
    assert doc["generator"]["fixed"]["photons_range"] == [5.0, 12.0]
    assert "--photons-range 5:12" in doc["generator"]["command"]
    assert all(5.0 <= meta["photons"] <= 12.0 for meta in doc["pairs"].values())
    again = simulate_dataset(tmp_path / "again", 2, seed=4, size=32, photons_range=(5, 12))
    assert again["pairs"] == doc["pairs"]


@pytest.mark.parametrize(
    "bad",
    [
        ["--structure", "beads"],
        ["--na", "1.7"],
        ["--size", "31"],
        ["--n", "0"],
        ["--photons-range", "10"],
        ["--photons-range", "a:b"],
        ["--photons-range", "100:10"],
    ],
)
def test_cli_rejects_bad_options_with_exit_2(tmp_path, bad):
    args = ["simulate", str(tmp_path / "x"), "--n", "1", "--quiet", *bad]
    res = _invoke(args)
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "x" / "params.json").exists()


def test_cli_without_microsim_exits_2_with_the_pip_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "microsim.psf", None)  # makes the import fail
    res = _invoke(["simulate", str(tmp_path / "x"), "--n", "1", "--size", "32", "--quiet"])
    assert res.exit_code == 2
    text = res.output + capsys.readouterr().err
    assert 'pip install "cvdm-cli[simulate]"' in text
    assert not (tmp_path / "x" / "params.json").exists()
