"""Enhance benchmark: where the time goes, throughput and peak memory of `cvdm enhance`.

For each model preset and each case (one large plane; a stack of planes) a synthetic
uint16 TIFF is written and processed by the real pipeline (``run_batch``: read
ahead in a thread, percentile normalisation, tiled sampling, denormalisation, atomic
plane-by-plane writes), in a fresh subprocess per run so that its peak RSS (ru_maxrss) is
its own. The model has random-init weights of the preset's architecture: the arithmetic
and memory are those of a trained model of that size, the images are not meaningful.

Time split (seconds, summed over planes):
    read         reading planes (in the read-ahead thread; ``read wait`` is what the main
                 thread actually waited for)
    normalise    per-plane percentiles and the affine map
    schedule     condition x (bicubic) and lambda(x) per tile: once per plane
    denoiser     the U-Net calls (samples x steps x tiles)
    stitch       the rest of sampling: cutting tiles from the latent, tapered blending,
                 DDIM updates, noise draws, the running mean/variance
    denormalise  pooling the variance over --variance-smoothing pixels, back to input units
    write        float32 planes into the outputs, flush and rename
Throughput is input megapixels per second of wall time (the output has 4x the pixels).

    .venv/bin/python benchmarks/enhance.py               # short: ~1-2 min on 2 CPU cores
    .venv/bin/python benchmarks/enhance.py --full        # the issue's sizes (hours on a CPU)
    .venv/bin/python benchmarks/enhance.py --presets tiny --plane 1024 --samples 4 --json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAGES = (
    "read",
    "read_wait",
    "normalise",
    "schedule",
    "denoiser",
    "stitch",
    "denormalise",
    "write",
)


def _synthetic(path: Path, planes: int, side: int) -> None:
    """Smooth blobs and noise, uint16, ZYX (or YX for one plane), 100 nm pixels."""
    import tifffile

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    base = 800 + 600 * np.sin(yy / 17.0) * np.cos(xx / 11.0)
    data = np.stack([base + rng.normal(0, 60, (side, side)) + 20 * i for i in range(planes)])
    data = np.clip(data, 0, 65535).astype(np.uint16)
    axes = "ZYX" if planes > 1 else "YX"
    tifffile.imwrite(
        path,
        data if planes > 1 else data[0],
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"axes": axes, "unit": "um"},
    )


class _Timed:
    """Wraps a model method; accumulates its wall time (synchronising CUDA)."""

    def __init__(self, fn, device) -> None:
        self.fn, self.device, self.seconds, self.calls = fn, device, 0.0, 0

    def __call__(self, *args, **kwargs):
        import torch

        sync = self.device.type == "cuda"
        if sync:
            torch.cuda.synchronize(self.device)
        t = time.perf_counter()
        out = self.fn(*args, **kwargs)
        if sync:
            torch.cuda.synchronize(self.device)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


def _child(args: argparse.Namespace) -> dict:
    """One (preset, case) run in this process; prints its JSON record."""
    import torch

    from cvdm_cli import CVDM, ModelConfig, save_weights
    from cvdm_cli.core.devices import default_tile
    from cvdm_cli.run.batch import run_batch
    from cvdm_cli.run.inputs import discover_inputs
    from cvdm_cli.run.models import get_model
    from cvdm_cli.run.settings import EnhanceSettings, ModelRef

    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(args.workdir)
    src = work / f"{args.case}.tif"
    _synthetic(src, args.planes, args.side)
    torch.manual_seed(0)
    weights = save_weights(
        CVDM(ModelConfig.preset(args.preset)), work / f"{args.preset}.safetensors"
    )
    ref = ModelRef(str(weights), args.device, args.preset)
    model = get_model(ref)
    timers = {
        name: _Timed(getattr(model, name), model.device) for name in ("condition", "lam", "eps")
    }
    for name, timer in timers.items():
        setattr(model, name, timer)  # instance attributes shadow the methods
    tile = args.tile if args.tile is not None else default_tile(model, model.device)
    settings = EnhanceSettings(
        samples=args.samples,
        steps=args.steps,
        tile=tile or None,
        overlap=args.overlap,
        tiling=args.tiling,
        precision=args.precision,
        tta=args.tta,
    )
    jobs = discover_inputs([src], output_dir=work / "out")
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    batch = run_batch(jobs, settings, ref)
    wall = time.perf_counter() - t0
    res = batch.files[0]
    if res.status != "done":
        raise SystemExit(f"run failed: {res.error}")
    t = dict(res.timings)
    schedule = timers["condition"].seconds + timers["lam"].seconds
    t["schedule"] = schedule
    t["denoiser"] = timers["eps"].seconds
    t["stitch"] = t["sample"] - schedule - timers["eps"].seconds
    return {
        "preset": args.preset,
        "case": args.case,
        "input": f"{args.planes}x{args.side}x{args.side}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "tile": tile,
        "tiles_per_plane": res.tiles,
        "samples": args.samples,
        "steps": args.steps,
        "tta": args.tta,
        "denoiser_calls": timers["eps"].calls,
        "wall_s": wall,
        "timings": {k: t.get(k, 0.0) for k in STAGES},
        "input_mpx_per_s": res.input_megapixels / wall,
        "output_mpx_per_s": 4 * res.input_megapixels / wall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_run_mb": rss0 / 1024,
        "device": str(model.device),
        "threads": torch.get_num_threads(),
    }


def _table(rows: list[dict]) -> str:
    head = ["preset", "case", "input", "tiles", "wall s", *STAGES, "in Mpx/s", "peak RSS MB"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        t = r["timings"]
        lines.append(
            " | ".join(
                [
                    r["preset"],
                    r["case"],
                    r["input"],
                    str(r["tiles_per_plane"]),
                    f"{r['wall_s']:.2f}",
                    *(f"{t[s]:.3f}" for s in STAGES),
                    f"{r['input_mpx_per_s']:.4f}",
                    f"{r['peak_rss_mb']:.0f}",
                ]
            )
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default="tiny,small", help="comma-separated model presets")
    p.add_argument("--plane", type=int, default=256, help="side of the single-plane case")
    p.add_argument("--stack", type=int, default=16, help="planes of the stack case")
    p.add_argument("--stack-side", type=int, default=64, help="side of each stack plane")
    p.add_argument("--samples", type=int, default=2)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--tile", type=int, default=None, help="default: default_tile")
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--tiling", default="sync")
    p.add_argument(
        "--tta",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sample k from flip/rotation k mod 8 (the product's default)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument(
        "--full",
        action="store_true",
        help="the issue's sizes: 2048x2048 plane, 16 planes of 512x512, 8 samples, 20 steps",
    )
    p.add_argument("--json", action="store_true", help="print the records as JSON")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", help=argparse.SUPPRESS)
    p.add_argument("--case", help=argparse.SUPPRESS)
    p.add_argument("--planes", type=int, help=argparse.SUPPRESS)
    p.add_argument("--side", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(_child(args)))
        return
    if args.full:
        args.plane, args.stack, args.stack_side, args.samples, args.steps = 2048, 16, 512, 8, 20
    cases = [("plane", 1, args.plane), ("stack", args.stack, args.stack_side)]
    rows = []
    for preset in args.presets.split(","):
        for case, planes, side in cases:
            with tempfile.TemporaryDirectory(prefix="cvdm-bench-") as work:
                cmd = [
                    sys.executable,
                    __file__,
                    "--child",
                    "--preset",
                    preset,
                    "--case",
                    case,
                    "--planes",
                    str(planes),
                    "--side",
                    str(side),
                    "--workdir",
                    work,
                    "--samples",
                    str(args.samples),
                    "--steps",
                    str(args.steps),
                    "--overlap",
                    str(args.overlap),
                    "--tiling",
                    args.tiling,
                    "--device",
                    args.device,
                    "--precision",
                    args.precision,
                    "--tta" if args.tta else "--no-tta",
                    "--threads",
                    str(args.threads),
                ]
                if args.tile is not None:
                    cmd += ["--tile", str(args.tile)]
                env = {**os.environ, "PYTHONPATH": str(ROOT)}
                done = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if done.returncode:
                    sys.stderr.write(done.stderr)
                    raise SystemExit(f"{preset}/{case} failed")
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"{preset}/{case}: {rows[-1]['wall_s']:.2f} s", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(
            f"samples {args.samples}, steps {args.steps}, tiling {args.tiling}, "
            f"tta {args.tta}, device "
            f"{args.device}, precision {args.precision}, random-init weights"
        )
        print(_table(rows))


if __name__ == "__main__":
    main()
