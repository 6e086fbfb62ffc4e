"""Training: the tiny model learns, resume is exact, bad data gives clear errors."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from conftest import cvdm

from cvdm_cli import ModelConfig, load_weights, reconstruct
from cvdm_cli.core.metrics import psnr
from cvdm_cli.errors import DataError, InvalidPixelsError
from cvdm_cli.io.pairs import find_pairs
from cvdm_cli.training.data import PairedData, make_pair, read_image
from cvdm_cli.training.trainer import TrainConfig, checkpoint_path, train


def _pattern_pair(seed: int, lr_size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A sharp HR image of dots and lines, and its blurred 2x2-binned LR version."""
    rng = np.random.default_rng(seed)
    hr = np.zeros((2 * lr_size, 2 * lr_size), np.float32)
    for _ in range(12):
        y, x = rng.integers(0, 2 * lr_size, 2)
        hr[y, x] = 1.0
    hr[rng.integers(0, 2 * lr_size), :] = 0.6
    t = torch.from_numpy(hr)[None, None]
    blurred = F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="reflect"), 3, stride=1)
    lr = F.avg_pool2d(blurred, 2)[0, 0].numpy()
    return lr.astype(np.float32) * 1000 + 100, hr * 1000 + 100


def _write_pairs(folder, n: int, lr_size: int = 16):
    (folder / "lr").mkdir(parents=True)
    (folder / "hr").mkdir()
    for i in range(n):
        lr, hr = _pattern_pair(i, lr_size)
        tifffile.imwrite(folder / "lr" / f"p{i}.tif", lr)
        tifffile.imwrite(folder / "hr" / f"p{i}.tif", hr)
    return folder / "lr", folder / "hr"


def test_tiny_model_overfits_one_pair_and_beats_bicubic(tmp_path):
    cfg_model = ModelConfig.preset("tiny")
    lr, hr = _pattern_pair(7)
    pair = make_pair("one", lr, hr, config=cfg_model, patch=16)
    data = PairedData([pair, pair], val_fraction=0.0, patch=16, scale=2)
    cfg = TrainConfig(
        steps=400,
        batch_size=8,
        patch=16,
        lr=2e-3,
        warmup=20,
        val_every=0,
        checkpoint_every=10_000,
        ema_decay=0.99,
    )
    losses: list[float] = []
    state = train(
        data,
        model_config=cfg_model,
        cfg=cfg,
        out=tmp_path / "m.safetensors",
        callback=lambda step, rec: losses.append(rec["total"]),
    )
    first, last = np.mean(losses[:25]), np.mean(losses[-25:])
    assert last < 0.5 * first, (first, last)
    model = load_weights(tmp_path / "m.safetensors")
    assert model.info["training"]["steps"] == state.step == 400
    rec = reconstruct(
        model,
        pair.lowres[0].numpy(),
        samples=4,
        steps=20,
        generator=torch.Generator().manual_seed(0),
    )
    target = pair.y.numpy()[0]
    # normalised images span [-1, 1]: data range 2, as the trainer's validation scores them
    assert psnr(rec.mean, target, 2.0) > psnr(pair.x.numpy()[0], target, 2.0) + 1.0


def _small_data(tmp_path, n=4):
    lr_dir, hr_dir = _write_pairs(tmp_path / "pairs", n)
    return PairedData.from_folders(
        lr_dir, hr_dir, config=ModelConfig.preset("tiny"), patch=8, val_fraction=0.25
    )


def test_resume_reproduces_uninterrupted_run(tmp_path):
    data = _small_data(tmp_path)
    cfg = TrainConfig(steps=12, batch_size=2, patch=8, warmup=3, val_every=0, checkpoint_every=100)
    tiny = ModelConfig.preset("tiny")
    full = train(data, model_config=tiny, cfg=cfg, out=tmp_path / "a.safetensors")
    part = tmp_path / "b.safetensors"
    train(data, model_config=tiny, cfg=cfg, out=part, stop_after=5)
    resumed = train(data, model_config=tiny, cfg=cfg, out=part, resume=checkpoint_path(part))
    assert resumed.step == full.step == 12
    for (name, a), b in zip(
        full.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    for a, b in zip(full.ema.parameters(), resumed.ema.parameters(), strict=True):
        assert torch.equal(a, b)


def test_training_lowers_loss_on_folder_pairs(tmp_path):
    data = _small_data(tmp_path, n=6)
    cfg = TrainConfig(
        steps=60,
        batch_size=4,
        patch=8,
        lr=2e-3,
        warmup=5,
        val_every=30,
        checkpoint_every=30,
        val_images=1,
        val_samples=1,
        val_steps=2,
    )
    losses = []
    state = train(
        data,
        model_config=ModelConfig.preset("tiny"),
        cfg=cfg,
        out=tmp_path / "m.safetensors",
        callback=lambda s, r: losses.append(r["eps"]),
    )
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert any("val_psnr" in rec for rec in state.history)
    assert checkpoint_path(tmp_path / "m.safetensors").exists()


def test_data_errors(tmp_path):
    lr_dir, hr_dir = _write_pairs(tmp_path / "a", 2)
    (hr_dir / "p1.tif").rename(hr_dir / "other.tif")
    with pytest.raises(DataError, match="unpaired") as err:
        find_pairs(lr_dir, hr_dir, purpose="training")
    assert "p1.tif" in str(err.value) or "other.tif" in str(err.value)
    cfg = ModelConfig.preset("tiny")
    lr, hr = _pattern_pair(0)
    with pytest.raises(DataError, match="not exactly 2x"):
        make_pair("x", lr, hr[:-2], config=cfg, patch=8)
    with pytest.raises(DataError, match="smaller than the training patch"):
        make_pair("x", lr, hr, config=cfg, patch=64)
    with pytest.raises(DataError, match=r"no \.tif"):
        empty = tmp_path / "empty"
        (empty / "lr").mkdir(parents=True)
        (empty / "hr").mkdir()
        find_pairs(empty / "lr", empty / "hr", purpose="training")
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.ones((3, 16, 16), np.float32), imagej=True, metadata={"axes": "ZYX"})
    with pytest.raises(DataError, match=r"has 3 planes.*training pairs are 2D") as err:
        read_image(stack)
    assert "stack.tif" in str(err.value)
    bad = tmp_path / "nan.tif"
    tifffile.imwrite(bad, np.full((16, 16), np.nan, np.float32))
    with pytest.raises(InvalidPixelsError, match="NaN"):
        read_image(bad)


def test_cli_export_only_writes_the_checkpoints_ema_scored_on_its_held_out_pairs(tmp_path):
    """`cvdm train --export-only --resume CKPT` exports the checkpoint's EMA weights (a run
    stopped early), scored on the run's own held-out split; without --resume: exit 2."""
    import json

    from cvdm_cli.training.trainer import load_checkpoint

    lr_dir, hr_dir = _write_pairs(tmp_path / "pairs", 5)
    run = tmp_path / "run.safetensors"
    trained = cvdm(
        "train", "--lr", lr_dir, "--hr", hr_dir, "--preset", "tiny", "--patch", 8,
        "--out", run, "--steps", 20, "--stop-after", 7, "--quiet", "--batch-size", 2,
        "--warmup", 2, "--val-fraction", 0.4, "--seed", 3,
    )  # fmt: skip
    assert trained.code == 0, trained.err
    assert not run.exists() or load_weights(run).info["training"]["steps"] == 7
    out = tmp_path / "exported.safetensors"
    exported = cvdm(
        "train", "--lr", lr_dir, "--hr", hr_dir, "--export-only",
        "--resume", checkpoint_path(run), "--out", out, "--json",
    )  # fmt: skip
    assert exported.code == 0, exported.err
    summary = json.loads(exported.out)
    model = load_weights(out)
    assert summary["steps"] == model.info["training"]["steps"] == 7
    assert model.info["training"]["val_pairs"] == 2  # the run's split: 0.4 of 5 pairs
    assert np.isfinite(model.info["validation"]["val_psnr"])
    ckpt_ema = load_checkpoint(checkpoint_path(run), TrainConfig(), torch.device("cpu")).ema
    for a, b in zip(ckpt_ema.parameters(), model.parameters(), strict=True):
        assert torch.equal(a, b)
    missing = cvdm("train", "--export-only", "--out", out)
    assert missing.code == 2 and "--resume" in missing.out + missing.err
    absent = cvdm(
        "train", "--export-only", "--resume", tmp_path / "nope.ckpt.safetensors", "--out", out
    )
    assert absent.code != 0 and "checkpoint not found" in absent.out + absent.err


def test_cli_init_fine_tunes_from_given_weights_and_records_them(tmp_path):
    """`cvdm train --init M` starts from M's weights and config (not a fresh --preset model),
    records M's name and sha256 in the new file, and refuses --init with --preset/--resume."""
    import hashlib

    lr_dir, hr_dir = _write_pairs(tmp_path / "pairs", 4)
    base = tmp_path / "base.safetensors"
    common = ["train", "--lr", lr_dir, "--hr", hr_dir, "--patch", 8, "--batch-size", 2]
    common += ["--val-every", 0, "--warmup", 1, "--quiet"]
    made = cvdm(*common, "--preset", "tiny", "--out", base, "--steps", 6)
    assert made.code == 0, made.err
    start = load_weights(base)

    # learning rate 0: fine-tuning must leave the starting weights exactly as they were,
    # which a fresh model (initialised from --seed) would not match
    tuned = tmp_path / "tuned.safetensors"
    ran = cvdm(*common, "--init", base, "--out", tuned, "--steps", 3, "--learning-rate", 0)
    assert ran.code == 0, ran.err
    model = load_weights(tuned)
    assert model.config == start.config and model.config.name == "tiny"
    for (name, a), b in zip(start.state_dict().items(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    init = model.info["init"]
    assert init["model"] == str(base) and init["steps"] == 6
    assert init["sha256"] == hashlib.sha256(base.read_bytes()).hexdigest()
    assert model.info["training"]["steps"] == 3

    # with a learning rate the weights move away from the start
    moved = tmp_path / "moved.safetensors"
    ran = cvdm(*common, "--init", base, "--out", moved, "--steps", 3, "--terminal-weight", 2)
    assert ran.code == 0, ran.err
    changed = load_weights(moved)
    assert changed.info["training"]["train_config"]["terminal_weight"] == 2.0  # recorded
    assert any(
        not torch.equal(a, b) for a, b in zip(start.parameters(), changed.parameters(), strict=True)
    )

    for extra in (["--preset", "tiny"], ["--resume", checkpoint_path(base)]):
        refused = cvdm(*common, "--init", base, "--out", moved, *extra)
        assert refused.code == 2 and "--init cannot be combined" in refused.out + refused.err


@pytest.mark.parametrize(("val_images", "scored"), [(0, 3), (2, 2)])
def test_validation_scores_the_requested_number_of_held_out_pairs(tmp_path, val_images, scored):
    data = _small_data(tmp_path, n=6)
    data = PairedData(data.train + data.val, val_fraction=0.5, patch=8, scale=2)
    assert len(data.val) == 3
    cfg = TrainConfig(
        steps=1, batch_size=2, patch=8, val_every=0, val_images=val_images, val_steps=2
    )
    train(data, model_config=ModelConfig.preset("tiny"), cfg=cfg, out=tmp_path / "m.safetensors")
    validation = load_weights(tmp_path / "m.safetensors").info["validation"]
    assert validation["val_images"] == scored
    assert np.isfinite(validation["val_psnr"]) and np.isfinite(validation["val_psnr_bicubic"])


def test_trainer_keeps_the_data_names_and_scores_psnr_with_core_metrics():
    """The data helpers live in training/data.py (re-exported by the trainer for one
    release); the trainer's validation PSNR is core.metrics.psnr with data range 2."""
    from cvdm_cli.training import data, trainer
    from cvdm_cli.training.trainer import VAL_DATA_RANGE

    for name in ("Pair", "PairedData", "make_pair", "read_image", "pair_files"):
        assert getattr(trainer, name) is getattr(data, name)
    assert VAL_DATA_RANGE == 2.0  # normalised images span [-1, 1]
    assert not hasattr(trainer, "psnr")  # one PSNR: cvdm_cli.core.metrics.psnr


def test_checkpoint_written_before_the_io_move_still_loads(tmp_path):
    """A checkpoint is a plain .safetensors file (tensor names and string metadata as
    save_checkpoint writes them): one written directly with safetensors loads and resumes."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from cvdm_cli.training.trainer import load_checkpoint, new_state, save_checkpoint

    cfg = TrainConfig(steps=3, batch_size=2, patch=8)
    state = new_state(ModelConfig.preset("tiny"), cfg, torch.device("cpu"))
    written = save_checkpoint(tmp_path / "new.ckpt.safetensors", state, cfg)
    with safe_open(str(written), framework="pt") as f:
        meta = f.metadata()
    legacy = tmp_path / "old.ckpt.safetensors"
    save_file(load_file(str(written)), str(legacy), metadata=meta)  # the old writer's call
    loaded = load_checkpoint(legacy, cfg, torch.device("cpu"))
    assert loaded.step == 0 and loaded.model.config == state.model.config
    for a, b in zip(state.model.parameters(), loaded.model.parameters(), strict=True):
        assert torch.equal(a.detach(), b)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
