"""CUDA checks: the GPU path computes what the CPU path computes, and training runs there.

Marked ``gpu`` and skipped without CUDA (CI has none); run on a GPU machine with
``pytest -m gpu``. Tolerances: float32 convolutions on a GPU may use TF32 (about 1e-3
relative), bf16 operands about 1e-2.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from typer.testing import CliRunner

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

DEVICE = "cuda"
REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "widefield.tif"


def rel_err(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def assert_fp32_match(cpu, gpu, shape: tuple[int, int]) -> None:
    """A CUDA fp32 reconstruction equals the CPU's within TF32 tolerance (mean and var)."""
    assert gpu.mean.shape == cpu.mean.shape == shape
    assert np.isfinite(gpu.mean).all() and np.isfinite(gpu.var).all()
    assert rel_err(gpu.mean, cpu.mean) < 2e-2
    assert rel_err(gpu.var, cpu.var) < 1e-1


@pytest.fixture(scope="module")
def shipped():
    from cvdm_cli import load_weights
    from cvdm_cli.hub.registry import resolve_model

    return load_weights(resolve_model(None).path)  # the default model shipped in the package


@pytest.fixture(scope="module")
def lowres() -> np.ndarray:
    from cvdm_cli.core.normalize import percentile_normalize

    image = tifffile.imread(EXAMPLE)[:48, :48]
    normed, _ = percentile_normalize(image, 1.0, 99.8)
    return normed


@pytest.mark.parametrize("sampler", ["fast", "reference"])
def test_cuda_fp32_matches_cpu(shipped, lowres, sampler):
    """Same seeds (noise is drawn on the CPU per item) -> the same mean and variance."""
    from cvdm_cli import reconstruct

    def run(device: str):
        model = shipped.to(device)
        return reconstruct(
            model,
            lowres,
            samples=3,
            steps=6,
            sampler=sampler,
            generator=torch.Generator().manual_seed(1),
        )

    cpu, gpu = run("cpu"), run("cuda")
    assert_fp32_match(cpu, gpu, (96, 96))
    shipped.to("cpu")


@pytest.mark.parametrize("sampler", ["fast", "reference"])
def test_cuda_tiled_tta_matches_cpu(shipped, lowres, sampler):
    """reconstruct_plane with TTA, tiles and both samplers: the CUDA path equals the CPU's."""
    from conftest import sample_plane

    plane = np.ascontiguousarray(lowres[:, :40])  # non-square: transposed views, other plans

    def run(device: str):
        model = shipped.to(device)
        return sample_plane(
            model, plane, tile=64, overlap=16, samples=3, steps=4, sampler=sampler,
            seed=2, tta=True,
        )  # fmt: skip

    cpu, gpu = run("cpu"), run("cuda")
    assert_fp32_match(cpu, gpu, (96, 80))
    shipped.to("cpu")


def test_bf16_close_to_fp32_and_batching_invariant(shipped, lowres):
    from cvdm_cli import reconstruct

    model = shipped.to("cuda")
    kw = {"samples": 4, "steps": 10, "generator": None}
    fp32 = reconstruct(model, lowres, **{**kw, "generator": torch.Generator().manual_seed(3)})
    bf16 = reconstruct(
        model, lowres, precision="bf16", **{**kw, "generator": torch.Generator().manual_seed(3)}
    )
    one_by_one = reconstruct(
        model, lowres, batch_size=1, **{**kw, "generator": torch.Generator().manual_seed(3)}
    )
    assert rel_err(bf16.mean, fp32.mean) < 5e-2
    assert rel_err(one_by_one.mean, fp32.mean) < 1e-2  # batching changes only rounding (TF32)
    shipped.to("cpu")


def test_training_on_cuda_lowers_loss_and_resume_continues(tmp_path):
    """A few dozen bf16 steps of the tiny preset on CUDA lower the loss; resuming from the
    checkpoint continues at the saved step with the same data stream."""
    from cvdm_cli import ModelConfig, load_weights
    from cvdm_cli.training.trainer import Pair, PairedData, TrainConfig, make_pair, train

    rng = np.random.default_rng(0)
    config = ModelConfig.preset("tiny")
    pairs: list[Pair] = []
    for i in range(6):
        hr = rng.poisson(200 * rng.random((64, 64)) ** 4 + 20).astype(np.float32)
        lr = hr.reshape(32, 2, 32, 2).mean(axis=(1, 3))
        pairs.append(make_pair(f"p{i}", lr, hr, config=config, patch=16))
    data = PairedData(pairs, val_fraction=0.2, patch=16, scale=2)
    cfg = TrainConfig(steps=60, batch_size=8, patch=16, warmup=5, val_every=0, lr=1e-3)
    losses: list[float] = []
    state = train(
        data,
        model_config=config,
        cfg=cfg,
        out=tmp_path / "m.safetensors",
        device=DEVICE,
        callback=lambda step, rec: losses.append(rec["total"]),
        stop_after=40,
    )
    assert state.step == 40 and next(state.model.parameters()).device.type == DEVICE
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    resumed = train(
        data,
        model_config=config,
        cfg=cfg,
        out=tmp_path / "m.safetensors",
        device=DEVICE,
        resume=tmp_path / "m.ckpt.safetensors",
    )
    assert resumed.step == 60
    model = load_weights(tmp_path / "m.safetensors")
    training = model.info["training"]
    assert training["steps"] == 60 and training["device"] == DEVICE


def test_cli_enhance_on_cuda_matches_cpu(tmp_path):
    from cvdm_cli.cli.app import app

    runner = CliRunner()
    outs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        result = runner.invoke(
            app,
            [
                "enhance",
                str(EXAMPLE),
                "-o",
                str(out),
                "--device",
                device,
                "--precision",
                "fp32",
                "--samples",
                "2",
                "--steps",
                "4",
                "--seed",
                "5",
                "--quiet",
            ],
        )
        assert result.exit_code == 0, result.output
        outs[device] = (
            tifffile.imread(out / "widefield_cvdm.tif"),
            tifffile.imread(out / "widefield_cvdm_var.tif"),
        )
    (mean_cpu, var_cpu), (mean_gpu, var_gpu) = outs["cpu"], outs["cuda"]
    assert mean_gpu.shape == mean_cpu.shape == (192, 192)
    assert rel_err(mean_gpu, mean_cpu) < 2e-2
    assert rel_err(var_gpu, var_cpu) < 1e-1


def test_auto_batch_is_larger_on_cuda():
    from cvdm_cli.core.devices import auto_batch_size

    assert auto_batch_size(256 * 256, torch.device("cuda")) > auto_batch_size(
        256 * 256, torch.device("cpu")
    )
