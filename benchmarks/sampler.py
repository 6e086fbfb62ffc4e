"""Sampler benchmark: model sizes, FLOPs, throughput, fast vs reference sampler.

Prints, for each preset: parameters, GFLOP per denoiser pass at 256x256 (counted with
torch.utils.flop_counter, multiply-add = 2 FLOP), passes/s on this CPU (fp32 and bf16
autocast, NCHW and channels-last weights) and, when CUDA is available, on the GPU with
bf16 autocast + channels_last (+ torch.compile with --compile) and the achieved fraction
of the device's peak bf16 FLOP/s. Then the time and
network calls (NFE) of the reference vs the fast sampler for 8 samples of one 256x256
image, and, for a tiny model trained for a few minutes on simulated pairs (or a model
given with --model and pairs with --data), the PSNR of the fast sampler at 10/20/50 steps
against the reference sampler.

    python benchmarks/sampler.py                       # everything, CPU (+GPU if present)
    python benchmarks/sampler.py --presets tiny,small --skip-quality
    python benchmarks/sampler.py --model m.safetensors --data sim/ --images 8
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from cvdm_cli import CVDM, ModelConfig, load_weights, reconstruct
from cvdm_cli.core.devices import cpu_has_native_bf16
from cvdm_cli.sampling.schedules import count_steps

# Dense bf16 tensor-core peaks (FLOP/s) of common accelerators, from vendor datasheets.
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def denoiser_flops(model: CVDM, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.zeros(1, 1, size, size, device=model.device)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eps(x, x, x + 0.5)
    return float(counter.get_total_flops())


def passes_per_second(
    model: CVDM,
    size: int,
    batch: int,
    *,
    bf16: bool = False,
    compile_model: bool = False,
    min_time: float = 2.0,
) -> float:
    device = model.device
    x = torch.randn(batch, 1, size, size, device=device)
    g = torch.rand_like(x)
    fn = model.eps
    if compile_model:
        fn = torch.compile(model.eps)
    ctx = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if bf16
        else torch.autocast(device.type, enabled=False)
    )
    with torch.inference_mode(), ctx:
        fn(x, x, g)  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        n, start = 0, time.perf_counter()
        while True:
            fn(x, x, g)
            n += 1
            if device.type == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            if elapsed >= min_time or (device.type == "cpu" and n >= 3 and elapsed > 0.5):
                break
    return n * batch / elapsed


def gpu_peak() -> tuple[str, float | None]:
    name = torch.cuda.get_device_name()
    for key, peak in PEAK_BF16.items():
        if key in name:
            return name, peak
    return name, None


def bench_presets(
    presets: list[str],
    size: int,
    cpu_batch: int,
    gpu_batch: int,
    compile_model: bool,
    skip_cpu: bool = False,
) -> list[dict]:
    rows = []
    for name in presets:
        torch.manual_seed(0)
        model = CVDM(ModelConfig.preset(name)).eval()
        flops = denoiser_flops(model, size)
        row = {
            "preset": name,
            "params_M": model.n_parameters() / 1e6,
            "gflop_per_pass": flops / 1e9,
        }
        if not skip_cpu:
            # NCHW as constructed, then channels-last as the samplers run it
            # (CVDM.prepare_inference); bf16 autocast is what --precision auto picks on CPUs
            # with native bf16.
            for layout in ("nchw", "nhwc"):
                if layout == "nhwc":
                    model.prepare_inference()
                for label, bf16 in (("fp32", False), ("bf16", True)):
                    rate = passes_per_second(model, size, cpu_batch, bf16=bf16)
                    row[f"cpu_{layout}_{label}_passes_per_s"] = rate
            row["cpu_native_bf16"] = cpu_has_native_bf16()
        if torch.cuda.is_available():
            gpu = model.to("cuda").prepare_inference()  # channels-last, as the samplers
            dev_name, peak = gpu_peak()
            for label, kwargs in (
                ("fp32", {}),
                ("bf16", {"bf16": True}),
                *(
                    [("bf16_compile", {"bf16": True, "compile_model": True})]
                    if compile_model
                    else []
                ),
            ):
                rate = passes_per_second(gpu, size, gpu_batch, **kwargs)
                row[f"gpu_{label}_passes_per_s"] = rate
                if peak and label.startswith("bf16"):
                    row[f"gpu_{label}_peak_fraction"] = rate * flops / peak
            row["gpu"] = dev_name
        rows.append(row)
        print(
            json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}),
            flush=True,
        )
    return rows


def bench_samplers(
    model: CVDM, size: int, samples: int, batch: int | None, precision: str = "fp32"
) -> list[dict]:
    lowres = np.random.default_rng(0).standard_normal((size // 2, size // 2)).astype(np.float32)
    rows = []
    for sampler, steps in (("fast", 20), ("reference", 20)):
        calls = 0

        def hook(*_):
            nonlocal calls
            calls += 1

        handle = model.denoiser.register_forward_hook(hook)
        start = time.perf_counter()
        reconstruct(
            model,
            lowres,
            samples=samples,
            steps=steps,
            sampler=sampler,
            generator=torch.Generator().manual_seed(0),
            batch_size=batch,
            precision=precision,
        )
        seconds = time.perf_counter() - start
        handle.remove()
        row = {
            "sampler": sampler,
            "steps": steps,
            "samples": samples,
            "size": size,
            "precision": precision,
            "nfe_per_sample": count_steps(sampler, steps, model.config.timesteps),
            "denoiser_calls": calls,
            "seconds": seconds,
        }
        rows.append(row)
        print(
            json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
            flush=True,
        )
    return rows


def quick_trained_model(minutes: float, data: Path | None) -> tuple[CVDM, Path]:
    """Train the tiny preset for a few minutes on simulated pairs (or ``data``)."""
    from cvdm_cli.training.trainer import PairedData, TrainConfig, train

    tmp = Path(tempfile.mkdtemp(prefix="cvdm-bench-"))
    if data is None:
        from cvdm_cli.training.simulation import simulate_dataset

        data = tmp / "sim"
        simulate_dataset(data, 48, seed=4242, size=128)
    cfg_model = ModelConfig.preset("tiny")
    pairs = PairedData.from_folders(
        data / "lr", data / "hr", config=cfg_model, patch=32, val_fraction=0.2
    )
    cfg = TrainConfig(
        steps=100_000, batch_size=8, patch=32, warmup=50, val_every=0, checkpoint_every=10_000
    )
    out = tmp / "tiny.safetensors"
    deadline = time.time() + 60 * minutes
    state = None
    while time.time() < deadline:
        state = train(
            pairs,
            model_config=cfg_model,
            cfg=cfg,
            out=out,
            resume=None if state is None else out.with_name("tiny.ckpt.safetensors"),
            stop_after=100,
        )
    return load_weights(out), data


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return 10 * math.log10(4.0 / float(np.mean((a.astype(np.float64) - b) ** 2)))


def bench_quality(model: CVDM, data: Path, images: int, samples: int) -> dict:
    from cvdm_cli.training.trainer import PairedData

    pairs = PairedData.from_folders(
        data / "lr", data / "hr", config=model.config, patch=16, val_fraction=0.5
    )
    test = pairs.val[:images]
    results: dict[str, list[float]] = {"bicubic": []}
    for i, pair in enumerate(test):
        target = pair.y.numpy()[0]
        results["bicubic"].append(psnr(pair.x.numpy()[0], target))
        runs = (  # (sampler, steps, eta, passes); None: the defaults
            ("fast", 10, None, None),
            ("fast", 20, None, None),
            ("fast", 50, None, None),
            ("fast", 20, 0.0, None),
            ("fast", 20, None, 1),  # one pass from pure noise, the default before passes
            ("reference", 0, None, None),
        )
        for sampler, steps, eta, passes in runs:
            rec = reconstruct(
                model,
                pair.lowres[0].numpy(),
                samples=samples,
                steps=max(steps, 1),
                sampler=sampler,
                eta=eta,
                passes=passes,
                generator=torch.Generator().manual_seed(i),
            )
            key = f"{sampler}{steps or ''}" + ("" if eta is None else f"_eta{eta:g}")
            key += "" if passes is None else "_1pass"
            results.setdefault(key, []).append(psnr(rec.mean, target))
    summary = {k: float(np.mean(v)) for k, v in results.items()}
    summary["images"] = len(test)
    for k in ("fast10", "fast20", "fast50", "fast20_eta0", "fast20_1pass"):
        summary[f"gap_{k}_vs_reference_db"] = summary["reference"] - summary[k]
    print(
        json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in summary.items()}),
        flush=True,
    )
    return summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="tiny,small,base,paper")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--cpu-batch", type=int, default=1)
    ap.add_argument("--gpu-batch", type=int, default=16)
    ap.add_argument("--compile", action="store_true", help="also time torch.compile on GPU")
    ap.add_argument("--skip-cpu", action="store_true", help="GPU rates only")
    ap.add_argument("--sampler-preset", default="small")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--sampler-size", type=int, help="output side of the sampler runs (--size)")
    ap.add_argument("--sampler-precision", default="fp32", help="fp32 or bf16 (GPU)")
    ap.add_argument("--skip-samplers", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--model", type=Path, help="trained model for the quality comparison")
    ap.add_argument("--data", type=Path, help="folder with lr/ and hr/ pairs")
    ap.add_argument("--train-minutes", type=float, default=4.0)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--quality-samples", type=int, default=4)
    args = ap.parse_args()

    torch.set_num_threads(torch.get_num_threads())
    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
        f"cuda={torch.cuda.is_available()}",
        flush=True,
    )
    print("## presets", flush=True)
    bench_presets(
        args.presets.split(","),
        args.size,
        args.cpu_batch,
        args.gpu_batch,
        args.compile,
        args.skip_cpu,
    )
    if not args.skip_samplers:
        side = args.sampler_size or args.size
        print(f"## samplers (one {side}x{side} output image)", flush=True)
        torch.manual_seed(0)
        model = CVDM(ModelConfig.preset(args.sampler_preset)).eval()
        if torch.cuda.is_available():
            model = model.to("cuda")
        bench_samplers(model, side, args.samples, None, args.sampler_precision)
    if not args.skip_quality:
        print("## fast vs reference sampler quality (PSNR dB, normalised units)", flush=True)
        if args.model:
            model, data = load_weights(args.model), args.data
        else:
            model, data = quick_trained_model(args.train_minutes, args.data)
        bench_quality(model, data, args.images, args.quality_samples)


if __name__ == "__main__":
    main()
