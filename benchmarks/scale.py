"""Scaling benchmark: throughput of `cvdm enhance` on 1, 2, ... Dask workers (and GPUs).

A synthetic uint16 stack (``--planes`` planes of ``--side`` x ``--side`` input pixels) is
processed by

- ``one process``: the single-process pipeline (``run_batch``, no Dask);
- ``N workers``: a local Dask cluster of N single-threaded worker processes
  (``cluster.connect(ClusterOptions(workers=N))``, as ``cvdm enhance --workers N``);
- ``K GPUs`` (when CUDA is available): one pinned worker per GPU (as ``--gpus``).

The model has random-init weights of the preset's architecture (same arithmetic as a
trained model of that size). Each configuration runs once after its workers are up and
the model is loaded (start-up seconds are listed apart). Throughput = input megapixels /
wall seconds of the batch; scaling efficiency = throughput / (N x throughput of 1 worker)
(1 GPU for GPU counts). On a CPU each worker gets cores // N torch threads (see
``cluster.ModelPlugin``), so "1 worker" already uses every core through threads: the
efficiency then says what processes add over threads. Every run's outputs are checked
bit-identical to the single-process run.

    .venv/bin/python benchmarks/scale.py                    # short: ~1 min on 2 CPU cores
    .venv/bin/python benchmarks/scale.py --preset small --planes 16 --side 128 --workers 1,2,4
    .venv/bin/python benchmarks/scale.py --json             # one JSON object on stdout
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _synthetic(path: Path, planes: int, side: int) -> None:
    """Smooth pattern plus noise, uint16 ZYX, 100 nm pixels."""
    import tifffile

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:side, 0:side]
    base = 800 + 600 * np.sin(yy / 17.0) * np.cos(xx / 11.0)
    data = np.stack([base + rng.normal(0, 60, (side, side)) + 20 * i for i in range(planes)])
    tifffile.imwrite(
        path,
        np.clip(data, 0, 65535).astype(np.uint16),
        imagej=True,
        resolution=(10.0, 10.0),
        metadata={"axes": "ZYX", "unit": "um"},
    )


def _arrays(folder: Path) -> dict[str, np.ndarray]:
    import tifffile

    return {p.name: tifffile.imread(p) for p in sorted(folder.glob("*_cvdm*.tif"))}


def _row(
    label: str,
    workers: int,
    threads: str,
    startup: float,
    seconds: float,
    mpx: float,
    identical: bool | None,
) -> dict:
    return {
        "config": label,
        "workers": workers,
        "torch_threads_per_worker": threads,
        "startup_seconds": round(startup, 3),
        "seconds": round(seconds, 3),
        "input_megapixels": round(mpx, 6),
        "megapixels_per_second": round(mpx / seconds, 6) if seconds > 0 else None,
        "identical_to_one_process": identical,
    }


def _distributed(
    options,
    label: str,
    n: int,
    job_input: Path,
    out: Path,
    weights: Path,
    settings,
    reference: dict[str, np.ndarray],
) -> dict:
    from cvdm_cli.run import cluster
    from cvdm_cli.run.inputs import discover_inputs

    t0 = time.perf_counter()
    with cluster.connect(options) as conn:
        conn.client.wait_for_workers(n)
        ref, _setup = cluster.prepare_workers(
            conn.client,
            str(weights),
            name="bench",
            device="cuda" if options.gpus else "cpu",
            precision=settings.precision,
            tile=settings.tile,
            samples=settings.samples,
        )
        threads = conn.client.run(lambda: __import__("torch").get_num_threads())
        startup = time.perf_counter() - t0
        jobs = discover_inputs([job_input], output_dir=out)
        batch = cluster.run_batch_distributed(jobs, settings, ref, conn.client)
    assert not batch.failed, batch.failed[0].error
    got = _arrays(out)
    same = got.keys() == reference.keys() and all(np.array_equal(got[k], reference[k]) for k in got)
    per = ",".join(str(t) for t in sorted(set(threads.values())))
    return _row(label, n, per, startup, batch.seconds, batch.input_megapixels, same)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", help="model architecture (random init)")
    parser.add_argument("--planes", type=int, default=8)
    parser.add_argument("--side", type=int, default=64, help="input plane side, pixels")
    parser.add_argument("--samples", type=int, default=2)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--tile", type=int, default=64, help="output pixels (0: whole planes)")
    parser.add_argument("--workers", default="1,2", help="CPU worker counts, e.g. 1,2,4")
    parser.add_argument("--no-gpus", action="store_true", help="skip the GPU counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    import torch

    from cvdm_cli import CVDM, ModelConfig, save_weights
    from cvdm_cli.run import cluster
    from cvdm_cli.run.batch import run_batch
    from cvdm_cli.run.inputs import discover_inputs
    from cvdm_cli.run.models import get_model
    from cvdm_cli.run.settings import EnhanceSettings, ModelRef

    counts = [int(c) for c in args.workers.split(",") if c.strip()]
    n_gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cvdm-scale-") as tmp:
        root = Path(tmp)
        torch.manual_seed(0)
        weights = save_weights(
            CVDM(ModelConfig.preset(args.preset)).eval(), root / "m.safetensors", note="bench"
        )
        src = root / "stack.tif"
        _synthetic(src, args.planes, args.side)
        tile = args.tile or None
        for device in ["cpu"] + (["cuda"] if n_gpus and not args.no_gpus else []):
            precision = "fp32" if device == "cpu" else "bf16"
            settings = EnhanceSettings(
                samples=args.samples, steps=args.steps, tile=tile, precision=precision
            )
            ref = ModelRef(str(weights), device, "bench")
            get_model(ref)  # loaded before timing, like the workers' plugin
            one = root / f"one-{device}"
            jobs = discover_inputs([src], output_dir=one)
            batch = run_batch(jobs, settings, ref)
            assert not batch.failed, batch.failed[0].error
            reference = _arrays(one)
            rows.append(
                _row(
                    f"one process ({device})",
                    1,
                    str(torch.get_num_threads()),
                    0.0,
                    batch.seconds,
                    batch.input_megapixels,
                    True,
                )
            )
            if device == "cpu":
                for n in counts:
                    options = cluster.ClusterOptions(workers=n)
                    out = root / f"w{n}"
                    rows.append(
                        _distributed(
                            options, f"{n} CPU worker(s)", n, src, out, weights, settings, reference
                        )
                    )
            else:
                for k in range(1, n_gpus + 1):
                    options = cluster.ClusterOptions(gpus=cluster.gpu_devices(range(k), n_gpus))
                    out = root / f"g{k}"
                    rows.append(
                        _distributed(
                            options, f"{k} GPU(s)", k, src, out, weights, settings, reference
                        )
                    )
    # efficiency against the first distributed row of the same device kind
    for kind in ("CPU worker", "GPU"):
        group = [r for r in rows if kind in r["config"]]
        if not group:
            continue
        base = group[0]["megapixels_per_second"] / group[0]["workers"]
        for r in group:
            r["scaling_efficiency"] = round(r["megapixels_per_second"] / (r["workers"] * base), 3)
    info = {
        "preset": args.preset,
        "planes": args.planes,
        "side": args.side,
        "samples": args.samples,
        "steps": args.steps,
        "tile": tile,
        "cpu_cores": len(__import__("os").sched_getaffinity(0)),
        "gpus": n_gpus,
        "rows": rows,
    }
    if args.json:
        print(json.dumps(info))
        return 0
    print(
        f"preset {args.preset}, {args.planes} planes of {args.side}x{args.side} px, "
        f"{args.samples} samples x {args.steps} steps, tile {tile}, "
        f"{info['cpu_cores']} CPU cores, {n_gpus} GPU(s)"
    )
    head = f"{'config':<24}{'threads':>8}{'start s':>9}{'run s':>8}{'Mpx/s':>10}{'eff.':>7}  same"
    print(head)
    for r in rows:
        eff = r.get("scaling_efficiency")
        print(
            f"{r['config']:<24}{r['torch_threads_per_worker']:>8}{r['startup_seconds']:>9.2f}"
            f"{r['seconds']:>8.2f}{r['megapixels_per_second']:>10.4f}"
            f"{'-' if eff is None else f'{eff:.2f}':>7}  "
            f"{'yes' if r['identical_to_one_process'] else 'NO'}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
