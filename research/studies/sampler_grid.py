"""Fast-sampler time grids in one pass: uniform t against power spacing near the clean end.

The fast sampler walks t_i = t_max (1 - i/n)^rho, i = 0..n (rho =
`cvdm_cli.sampling.schedules.FAST_GRID_POWER`, 1: uniform, as shipped). This script runs
one pass of it, without TTA, with other rho (rho > 1: more of the n steps near t = 0, where
the fine detail is decided) and step counts, and scores the sample mean and the std map the
way `cvdm evaluate` does (CSBDeep fair comparison, Spearman of std and error). The samples
come from `sampler_passes.draw_samples`, which passes rho to each schedule (the library's
sampler always walks FAST_GRID_POWER); the same noise for every grid, so the rows differ
only by the grid. `sampler_passes.py --grid-powers` does the same for passes of a few steps.

    python research/studies/sampler_grid.py --model cvdm_cli/models/cvdm-small-v1.safetensors \\
        --lr sim_eval/lr --hr sim_eval/hr --pairs pair_00001,pair_00009 --grids 1:20,2:20,1:50

Prints one JSON line per grid (means over the pairs, and the per-pair SSIM).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_passes import draw_samples  # the study's sampler with an explicit grid

from cvdm_cli.core.normalize import denormalize, percentile_normalize
from cvdm_cli.evaluation.evaluate import find_pairs, read_plane, score_samples
from cvdm_cli.io.weights import load_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help=".safetensors file")
    ap.add_argument("--lr", required=True)
    ap.add_argument("--hr", required=True)
    ap.add_argument("--pairs", default="", help="comma-separated stems (default: all)")
    ap.add_argument("--grids", default="1:20,2:20,3:20,1:50", help="rho:steps, comma-separated")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1000, help="pair i uses seed + i")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = load_weights(args.model, device="cpu")
    cfg = model.config
    pairs = {p.stem: p for p in find_pairs(args.lr, args.hr)}
    stems = args.pairs.split(",") if args.pairs else sorted(pairs)
    data = [(s, read_plane(pairs[s].lr), read_plane(pairs[s].hr)) for s in stems]
    for spec in args.grids.split(","):
        rho, steps = float(spec.split(":")[0]), int(spec.split(":")[1])
        scores = []
        for index, (stem, lr, hr) in enumerate(data):
            x_norm, norm = percentile_normalize(lr, cfg.norm_low, cfg.norm_high)
            drawn = draw_samples(
                model, x_norm, samples=args.samples, steps=steps, power=rho,
                seed=args.seed + index, tta=False, passes=1,  # one pass: the grid is the point
            )  # fmt: skip
            samples = denormalize(drawn, norm).astype(np.float64)
            row, _, _ = score_samples(stem, "fast", samples, hr)  # as cvdm evaluate
            scores.append((row["psnr"], row["ssim"], row["spearman"]))
        a = np.array(scores)
        print(
            json.dumps(
                {
                    "rho": rho,
                    "steps": steps,
                    "samples": args.samples,
                    "pairs": len(stems),
                    "psnr": round(float(a[:, 0].mean()), 3),
                    "ssim": round(float(a[:, 1].mean()), 4),
                    "spearman": round(float(np.nanmean(a[:, 2])), 3),
                    "ssim_per_pair": dict(zip(stems, np.round(a[:, 1], 3).tolist(), strict=True)),
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
