"""Training-step benchmark: seconds per step, patches/s and achieved FLOP/s of `cvdm train`.

Times ``trainer.train_step`` (loss, backward, clipping, AdamW, EMA: exactly the loop of
``cvdm train``, minus data loading) on random patches of the training size, after a
warm-up, for each batch size given. FLOPs per step: the denoiser's forward pass counted
with torch.utils.flop_counter (multiply-add = 2 FLOP) times 3 for forward + backward, the
usual estimate (the flop counter cannot follow the autograd-in-t of the loss); the
fraction of peak uses the dense bf16 datasheet rate of the GPU (benchmarks/sampler.py).

    python benchmarks/train_step.py --preset small --batch 8,32 --device cpu --steps 3
    python benchmarks/train_step.py --preset small --batch 16,32,64 --device cuda
    python benchmarks/train_step.py --preset small --batch 8 --device cpu --precision bf16 \
        --steps 5 [--channels-last]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler import denoiser_flops, gpu_peak

from cvdm_cli import ModelConfig
from cvdm_cli.training.trainer import TrainConfig, new_state, resolve_precision, train_step


def bench(
    preset: str,
    batch: int,
    patch: int,
    steps: int,
    device: str,
    precision: str,
    channels_last: bool = False,
) -> dict:
    dev = torch.device(device)
    cfg = TrainConfig(batch_size=batch, patch=patch, precision=precision, warmup=10)
    model_config = ModelConfig.preset(preset)
    state = new_state(model_config, cfg, dev)
    if channels_last:  # the samplers' layout (CVDM.prepare_inference); cvdm train keeps NCHW
        for net in (state.model, state.ema):
            net.to(memory_format=torch.channels_last)
    autocast = resolve_precision(precision, dev)
    side = patch * model_config.scale
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, side, side, generator=gen)
    y = (x + 0.1 * torch.randn(x.shape, generator=gen)).to(dev)
    x = x.to(dev)
    flops = 3.0 * batch * denoiser_flops(state.model, side)
    for _ in range(4):  # warm-up
        train_step(state, x, y, cfg, autocast)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        record = train_step(state, x, y, cfg, autocast)  # reads the loss: one sync per step
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / steps
    row = {
        "preset": preset,
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "precision": "bf16" if autocast is torch.bfloat16 else "fp32",
        "batch": batch,
        "channels_last": channels_last,
        "hr_patch": side,
        "s_per_step": seconds,
        "patches_per_s": batch / seconds,
        "gflop_per_step_est": flops / 1e9,
        "tflop_per_s": flops / seconds / 1e12,
        "loss": record["total"],
    }
    if dev.type == "cuda":
        _, peak = gpu_peak()
        if peak:
            row["peak_fraction"] = flops / seconds / peak
        row["max_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--batch", default="8,32", help="comma-separated batch sizes")
    ap.add_argument("--patch", type=int, default=64, help="LR patch side (HR is 2x)")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per batch size")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--precision", default="auto", help="auto (as cvdm train), fp32, bf16, fp16")
    ap.add_argument(
        "--channels-last", action="store_true", help="time NHWC weights (the samplers' layout)"
    )
    args = ap.parse_args()
    for batch in (int(b) for b in args.batch.split(",")):
        row = bench(
            args.preset, batch, args.patch, args.steps, args.device, args.precision,
            args.channels_last,
        )  # fmt: skip
        print(
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
            flush=True,
        )


if __name__ == "__main__":
    main()
