"""PSF hint: the deconvolved second condition channel, its model, training and CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch
from conftest import cvdm
from scipy.signal import fftconvolve

from cvdm_cli import CVDM, ModelConfig, load_weights, reconstruct, save_weights
from cvdm_cli.baselines import gaussian_psf
from cvdm_cli.errors import ConfigError
from cvdm_cli.model import with_psf_hint
from cvdm_cli.psf_hint import compute_hint, input_grid_psf, read_psf, simulation_hint_psfs
from cvdm_cli.tiled import reconstruct_plane
from cvdm_cli.trainer import PairedData, TrainConfig, checkpoint_path, make_pair, train


def _blurred_points(seed: int = 0, size: int = 32, sigma: float = 1.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size))
    img[rng.integers(4, size - 4, 6), rng.integers(4, size - 4, 6)] = 100.0
    return fftconvolve(img, gaussian_psf(sigma), mode="same") + 5.0


def _hint_model(seed: int = 0) -> CVDM:
    """A tiny PSF-hint model whose hint weights are not zero (so the hint matters)."""
    torch.manual_seed(seed)
    model = CVDM(ModelConfig.preset("tiny", psf_hint=True)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def test_input_grid_psf_keeps_the_centre_and_halves_the_width():
    fine = gaussian_psf(2.0)  # sigma 2 output pixels = 1 input pixel
    coarse = input_grid_psf(fine, 2)
    assert coarse.shape[0] % 2 == 1 and coarse.shape[0] == coarse.shape[1]
    assert coarse.sum() == pytest.approx(1.0)
    c = coarse.shape[0] // 2
    assert np.unravel_index(np.argmax(coarse), coarse.shape) == (c, c)
    expected = gaussian_psf(1.0, truncate=c)  # same support, sigma 1 input pixel
    assert expected.shape == coarse.shape
    np.testing.assert_allclose(coarse, expected, atol=1e-6)
    np.testing.assert_array_equal(input_grid_psf(fine, 1), fine / fine.sum())


def test_hint_sharpens_blurred_points_and_keeps_units():
    psf = gaussian_psf(1.5)
    img = _blurred_points()
    hint = compute_hint(img, psf, 10)
    assert hint.shape == img.shape and hint.dtype == np.float32
    assert hint.max() > 1.5 * img.max()  # deconvolved points are taller
    # affine maps (normalisation) commute with the hint: same units as the plane
    scaled = compute_hint(3.0 * img - 7.0, psf, 10)
    np.testing.assert_allclose(scaled, 3.0 * hint - 7.0, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="2D"):
        compute_hint(img[None], psf, 10)


def test_read_psf_normalises_and_names_bad_files(tmp_path):
    good = tmp_path / "psf.tif"
    tifffile.imwrite(good, (gaussian_psf(1.0) * 1000).astype(np.float32))
    p = read_psf(good)
    assert p.sum() == pytest.approx(1.0) and p.ndim == 2
    bad = tmp_path / "zeros.tif"
    tifffile.imwrite(bad, np.zeros((5, 5), np.float32))
    with pytest.raises(ConfigError, match="not a usable PSF"):
        read_psf(bad)


def test_with_psf_hint_starts_as_the_original_model(tiny_model):
    hinted = with_psf_hint(tiny_model)
    assert hinted.config.psf_hint and not tiny_model.config.psf_hint
    assert hinted.denoiser.inp.weight.shape[1] == 3
    torch.manual_seed(1)
    z, x, g = torch.randn(2, 1, 16, 16), torch.randn(2, 1, 16, 16), torch.rand(2, 1, 16, 16)
    hint = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        before = tiny_model.eps(z, x, g)
        after = hinted.eps(z, torch.cat([x, hint], 1), g)
    torch.testing.assert_close(before, after, rtol=0, atol=0)
    # blind mode: channel 1 copies the input; models without a hint refuse one
    lowres = torch.randn(1, 1, 8, 8)
    both = hinted.with_hint(lowres, None)
    assert both.shape == (1, 2, 8, 8) and torch.equal(both[:, 1], lowres[:, 0])
    with pytest.raises(ConfigError, match="not trained with a PSF hint"):
        tiny_model.with_hint(lowres, lowres)


def test_samplers_use_the_hint_and_blind_means_the_input():
    model = _hint_model()
    rng = np.random.default_rng(0)
    lr = rng.normal(size=(16, 16)).astype(np.float32)
    hint = rng.normal(size=(16, 16)).astype(np.float32)

    def run(h, **kw):
        return reconstruct(
            model, lr, hint=h, samples=2, steps=3, generator=torch.Generator().manual_seed(0), **kw
        ).mean

    blind, given = run(None), run(hint)
    np.testing.assert_array_equal(blind, run(lr))  # no PSF = the input as its own hint
    assert np.abs(blind - given).max() > 1e-3
    tiled = reconstruct_plane(model, lr, hint=hint, samples=2, steps=3, tile=16, overlap=8)
    whole = reconstruct_plane(model, lr, hint=hint, samples=2, steps=3)
    blind_plane = reconstruct_plane(model, lr, samples=2, steps=3)
    assert tiled.mean.shape == whole.mean.shape == (32, 32)
    assert np.abs(whole.mean - blind_plane.mean).max() > 1e-3
    with pytest.raises(ConfigError, match="hint shape"):
        reconstruct_plane(model, lr, hint=hint[:8], samples=1, steps=2)


def test_paired_data_mixes_hints_and_blind_patches():
    config = ModelConfig.preset("tiny", psf_hint=True)
    lr = _blurred_points(1, 16)
    hr = np.kron(lr, np.ones((2, 2)))
    psf = gaussian_psf(1.5)
    with_psf = make_pair("a", lr, hr, config=config, patch=8, psfs=[psf])
    without = make_pair("b", lr, hr, config=config, patch=8)
    assert len(with_psf.hints) == 1 and with_psf.hints[0].shape == with_psf.x.shape
    assert not without.hints

    def channels(pairs, blind):
        data = PairedData(pairs, val_fraction=0.0, patch=8, scale=2, psf_hint=True,
                          hint_blind=blind)  # fmt: skip
        x, y = data.batch(np.random.default_rng(0), 64)
        assert x.shape == (64, 2, 16, 16) and y.shape == (64, 1, 16, 16)
        return x

    x = channels([with_psf, with_psf], 0.0)  # every patch hinted
    assert all(not torch.equal(x[i, 0], x[i, 1]) for i in range(len(x)))
    x = channels([with_psf, with_psf], 1.0)  # every patch blind
    assert all(torch.equal(x[i, 0], x[i, 1]) for i in range(len(x)))
    x = channels([with_psf, with_psf], 0.25)
    blind = sum(torch.equal(x[i, 0], x[i, 1]) for i in range(len(x)))
    assert 4 <= blind <= 32  # ~16 of 64
    x = channels([without, without], 0.0)  # no PSF known: blind
    assert all(torch.equal(x[i, 0], x[i, 1]) for i in range(len(x)))


def test_resume_with_hints_reproduces_the_uninterrupted_run(tmp_path):
    config = ModelConfig.preset("tiny", psf_hint=True)
    pairs = []
    for i in range(4):
        lr = _blurred_points(i, 16)
        pairs.append(make_pair(f"p{i}", lr, np.kron(lr, np.ones((2, 2))), config=config,
                               patch=8, psfs=[gaussian_psf(1.5), gaussian_psf(1.0)]))  # fmt: skip
    data = PairedData(pairs, val_fraction=0.25, patch=8, scale=2, psf_hint=True)
    cfg = TrainConfig(steps=8, batch_size=2, patch=8, warmup=2, val_every=4, val_samples=1,
                      val_steps=2, checkpoint_every=100)  # fmt: skip
    full = train(data, model_config=config, cfg=cfg, out=tmp_path / "a.safetensors")
    part = tmp_path / "b.safetensors"
    train(data, model_config=config, cfg=cfg, out=part, stop_after=3)
    resumed = train(data, model_config=config, cfg=cfg, out=part, resume=checkpoint_path(part))
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    assert load_weights(tmp_path / "a.safetensors").config.psf_hint


def test_simulation_psfs_give_the_exact_and_the_in_focus_psf():
    pytest.importorskip("microsim")
    entry = {
        "na": 1.4, "ni": 1.515, "ns": 1.47, "emission_nm": 560.0, "lr_pixel_nm": 80.0,
        "depth_um": 1.0, "defocus_nm": 300.0, "simulator": "widefield3d-microsim",
    }  # fmt: skip
    psfs = simulation_hint_psfs({"p": entry}, 2)
    exact, in_focus = psfs("p", None)
    assert exact.sum() == pytest.approx(1.0) and in_focus.sum() == pytest.approx(1.0)
    assert exact.shape[0] % 2 == 1 and exact.shape == in_focus.shape
    assert in_focus.max() > 1.2 * exact.max()  # 300 nm of defocus spreads the light
    assert psfs("other", None) == []
    toy = simulation_hint_psfs({"p": {**entry, "simulator": "gaussian2d-toy"}}, 2)("p", None)
    assert len(toy) == 1


def _write_sim_like_pairs(folder, n: int = 4, size: int = 16):
    (folder / "lr").mkdir(parents=True)
    (folder / "hr").mkdir()
    entries = {}
    for i in range(n):
        lr = _blurred_points(i, size)
        tifffile.imwrite(folder / "lr" / f"p{i}.tif", lr.astype(np.float32))
        tifffile.imwrite(folder / "hr" / f"p{i}.tif", np.kron(lr, np.ones((2, 2))).astype("f4"))
        entries[f"p{i}"] = {"na": 1.4, "emission_nm": 560.0, "lr_pixel_nm": 100.0,
                            "simulator": "gaussian2d-toy"}  # fmt: skip
    (folder / "params.json").write_text(json.dumps({"pairs": entries}))
    return folder / "lr", folder / "hr"


def test_cli_train_psf_hint_from_params_and_from_a_file(tmp_path):
    lr_dir, hr_dir = _write_sim_like_pairs(tmp_path / "pairs")
    common = ["train", "--lr", lr_dir, "--hr", hr_dir, "--patch", 8, "--batch-size", 2,
              "--val-every", 0, "--warmup", 1, "--steps", 3, "--quiet"]  # fmt: skip
    out = tmp_path / "h.safetensors"
    ran = cvdm(*common, "--preset", "tiny", "--psf-hint", "--out", out)
    assert ran.code == 0, ran.err
    model = load_weights(out)
    assert model.config.psf_hint
    assert model.info["psf_hint"]["pairs_with_psf"] == 4
    assert model.info["psf_hint"]["source"] == "params.json"

    psf = tmp_path / "psf.tif"
    tifffile.imwrite(psf, gaussian_psf(1.2).astype(np.float32))
    (tmp_path / "pairs" / "params.json").unlink()
    ran = cvdm(*common, "--preset", "tiny", "--psf-hint", "--psf", psf, "--out", out)
    assert ran.code == 0, ran.err
    assert load_weights(out).info["psf_hint"]["source"] == str(psf)

    no_params = cvdm(*common, "--preset", "tiny", "--psf-hint", "--out", out)
    assert no_params.code == 2 and "params.json" in no_params.err
    no_flag = cvdm(*common, "--preset", "tiny", "--psf", psf, "--out", out)
    assert no_flag.code == 2 and "--psf is only used with --psf-hint" in no_flag.err


def test_cli_init_psf_hint_adds_the_channel_to_a_trained_model(tmp_path, tiny_weights):
    lr_dir, hr_dir = _write_sim_like_pairs(tmp_path / "pairs")
    out = tmp_path / "tuned.safetensors"
    ran = cvdm("train", "--lr", lr_dir, "--hr", hr_dir, "--patch", 8, "--batch-size", 2,
               "--val-every", 0, "--warmup", 1, "--steps", 2, "--learning-rate", 0,
               "--init", tiny_weights, "--psf-hint", "--out", out, "--quiet")  # fmt: skip
    assert ran.code == 0, ran.err
    start, tuned = load_weights(tiny_weights), load_weights(out)
    assert tuned.config.psf_hint and not start.config.psf_hint
    w = tuned.denoiser.inp.weight
    torch.testing.assert_close(w[:, :2], start.denoiser.inp.weight, rtol=0, atol=0)
    assert torch.count_nonzero(w[:, 2]) == 0  # learning rate 0: the hint still ignored


def test_cli_enhance_psf(tmp_path, tiny_weights, no_debug):
    img = tmp_path / "in.tif"
    tifffile.imwrite(img, _blurred_points(3, 24).astype(np.float32))
    psf = tmp_path / "psf.tif"
    tifffile.imwrite(psf, gaussian_psf(1.5).astype(np.float32))
    hint_weights = tmp_path / "hint.safetensors"
    save_weights(_hint_model(), hint_weights)
    base = ["enhance", img, "--samples", 2, "--steps", 2, "--quiet", "--model"]

    refused = cvdm(*base, tiny_weights, "-o", tmp_path / "r", "--psf", psf)
    assert refused.code == 2 and "not trained with a PSF hint" in refused.err
    assert not (tmp_path / "r" / "in_cvdm.tif").exists()
    missing = cvdm(*base, hint_weights, "-o", tmp_path / "m", "--psf", tmp_path / "no.tif")
    assert missing.code != 0 and "PSF file not found" in missing.err

    given = cvdm(*base, hint_weights, "-o", tmp_path / "g", "--psf", psf)
    blind = cvdm(*base, hint_weights, "-o", tmp_path / "b")
    assert given.code == 0 and blind.code == 0, given.err + blind.err
    a = tifffile.imread(tmp_path / "g" / "in_cvdm.tif")
    b = tifffile.imread(tmp_path / "b" / "in_cvdm.tif")
    assert a.shape == b.shape == (48, 48)
    assert np.abs(a - b).max() > 0  # the PSF changed the result


def test_evaluate_gives_hint_models_the_rl_psf(tmp_path):
    from cvdm_cli.evaluate import evaluate

    lr_dir, hr_dir = _write_sim_like_pairs(tmp_path / "pairs", n=3)
    model = _hint_model()
    kw = dict(samples=2, steps=2, samplers=("fast",), rl_iterations=3, figures=False)
    given = evaluate(model, lr_dir, hr_dir, **kw)
    blind = evaluate(model, lr_dir, hr_dir, psf_hint=False, **kw)
    assert given.settings["psf_hint"] is True and blind.settings["psf_hint"] is False
    rows = {(r["stem"], r["method"]): r for r in given.rows}
    rows_blind = {(r["stem"], r["method"]): r for r in blind.rows}
    assert rows[("p0", "rl")]["psnr"] == rows_blind[("p0", "rl")]["psnr"]
    assert rows[("p0", "cvdm_fast")]["psnr"] != rows_blind[("p0", "cvdm_fast")]["psnr"]
    plain = evaluate(_plain_tiny_model(), lr_dir, hr_dir, **kw)
    assert plain.settings["psf_hint"] is None


def _plain_tiny_model() -> CVDM:
    torch.manual_seed(0)
    return CVDM(ModelConfig.preset("tiny")).eval()
