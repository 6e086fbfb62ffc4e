"""Fast-sampler pass plans (`--passes`): the same denoiser calls in one or more passes.

Each plan runs `reconstruct(..., passes=plan)` with TTA, as `cvdm enhance` does, on the
given pairs with the same noise seeds for every plan (and, with `--grid-powers`, for every
time grid t_i = t_max (1 - i/n)^power within a pass; default: the sampler's), and scores
the sample mean and std the way `cvdm evaluate` does (CSBDeep fair comparison; Spearman of
the pooled std and the error; coverage of the central 50 / 90 % sample intervals). Choose
a plan on pairs that the evaluation leaves out (its validation split, `validation_stems`
in report.json):

    python benchmarks/sampler_passes.py --model cvdm_cli/models/cvdm-small-v1.safetensors \\
        --lr sim_eval/lr --hr sim_eval/hr --report report/ --plans "1;1,1,18;4,4,12;5"
    python benchmarks/sampler_passes.py ... --report report/ --plans 10 --grid-powers 1,2,3

Prints one line per pair and plan, then one JSON line per plan (means over the pairs).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cvdm_cli.sampler as smp
import numpy as np
import torch

from cvdm_cli.core.normalize import denormalize, percentile_normalize
from cvdm_cli.evaluation.evaluate import find_pairs, read_plane, score_samples
from cvdm_cli.io.weights import load_weights

KEYS = ("psnr", "ssim", "spearman", "coverage50", "coverage90")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help=".safetensors file")
    ap.add_argument("--lr", required=True)
    ap.add_argument("--hr", required=True)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--pairs", default="", help="comma-separated stems (default: all)")
    group.add_argument("--report", help="a cvdm evaluate report folder: its validation pairs")
    ap.add_argument("--plans", default="1;1,1,18;2,2,16;4,4,12;5;10", help="';'-separated")
    ap.add_argument(
        "--grid-powers",
        default=str(smp.FAST_GRID_POWER),
        help="comma-separated powers of the time grid within a pass (1: uniform)",
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1000, help="pair i uses seed + i")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_weights(args.model, device="cpu")
    cfg = model.config
    pairs = {p.stem: p for p in find_pairs(args.lr, args.hr)}
    if args.report:
        report = json.loads((Path(args.report) / "report.json").read_text())
        stems = report["settings"]["validation_stems"]
    else:
        stems = args.pairs.split(",") if args.pairs else sorted(pairs)
    powers = [float(p) for p in args.grid_powers.split(",")]
    runs = [(plan, power) for plan in args.plans.split(";") for power in powers]
    scores: dict[tuple[str, float], list[dict[str, float]]] = {run: [] for run in runs}
    for index, stem in enumerate(stems):
        lr, hr = read_plane(pairs[stem].lr), read_plane(pairs[stem].hr)
        x_norm, norm = percentile_normalize(lr, cfg.norm_low, cfg.norm_high)
        line = []
        for plan, power in runs:
            smp.FAST_GRID_POWER = power  # read by each FastSchedule
            rec = smp.reconstruct(
                model, x_norm, samples=args.samples, steps=args.steps, sampler="fast",
                generator=torch.Generator().manual_seed(args.seed + index), tta=True,
                passes=plan, return_samples=True,
            )  # fmt: skip
            samples = denormalize(rec.samples, norm).astype(np.float64)
            row, _, _ = score_samples(stem, "fast", samples, hr)  # as cvdm evaluate
            scores[plan, power].append({k: float(row[k]) for k in KEYS})
            label = f"{plan}@{power:g}"
            line.append(
                f"{label}: {row['ssim']:.3f} / {row['psnr']:.2f} dB / {row['spearman']:.2f}"
            )
        print(f"{stem}  " + " | ".join(line), flush=True)
    for (plan, power), rows in scores.items():
        means = {k: round(float(np.nanmean([s[k] for s in rows])), 4) for k in KEYS}
        print(
            json.dumps({"plan": plan, "grid_power": power, "pairs": len(stems), **means}),
            flush=True,
        )


if __name__ == "__main__":
    main()
