"""Is the error of the cvdm mean sampling noise (falls with more samples) or bias (does not)?

For each named pair, draws N fast samples with TTA (as `cvdm evaluate`), splits them into
groups of k consecutive samples (k = 1, 2, 4, ... up to N) and prints the mean SSIM (after
the CSBDeep fair comparison, as `cvdm evaluate`) of the groups' means over the first
``--groups`` groups, with the spread of single samples' SSIM. Where the SSIM stops rising
from 8 to N samples, the mean's remaining error is the model's bias, which no sample count
removes.

    python research/studies/mean_vs_samples.py --model cvdm_cli/models/cvdm-small-v1.safetensors \\
        --lr sim_eval/lr --hr sim_eval/hr --pairs pair_00020,pair_00022 [--samples 32]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from cvdm_cli.core import metrics
from cvdm_cli.core.normalize import denormalize, percentile_normalize
from cvdm_cli.evaluation.evaluate import read_plane
from cvdm_cli.io.weights import load_weights
from cvdm_cli.sampling.api import reconstruct


def group_ssims(samples: np.ndarray, hr: np.ndarray, k: int, groups: int) -> list[float]:
    """SSIM of the means of the first ``groups`` groups of ``k`` samples ((N, H, W) input)."""
    n = min(groups, len(samples) // k)
    return [metrics.fair_scores(samples[i * k : (i + 1) * k].mean(0), hr).ssim for i in range(n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--lr", type=Path, required=True)
    ap.add_argument("--hr", type=Path, required=True)
    ap.add_argument("--pairs", required=True, help="comma-separated stems, e.g. pair_00020")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--passes", help="as cvdm enhance --passes (default: passes of 2 steps)")
    ap.add_argument("--groups", type=int, default=4)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()

    model = load_weights(args.model)
    sizes = [k for k in (1, 2, 4, 8, 16, 32, 64, 128) if k <= args.samples]
    print("pair: single-sample SSIM mean [min, max] | SSIM of the mean of k samples")
    for stem in args.pairs.split(","):
        lr, hr = read_plane(args.lr / f"{stem}.tif"), read_plane(args.hr / f"{stem}.tif")
        x, norm = percentile_normalize(lr, model.config.norm_low, model.config.norm_high)
        rec = reconstruct(
            model,
            x,
            samples=args.samples,
            generator=torch.Generator().manual_seed(args.seed),
            tta=True,
            precision=args.precision,
            passes=args.passes,
            return_samples=True,
        )
        samples = denormalize(rec.samples, norm).astype(np.float64)
        single = group_ssims(samples, hr, 1, len(samples))
        by_k = " ".join(
            f"k={k}: {np.mean(group_ssims(samples, hr, k, args.groups)):.3f}" for k in sizes
        )
        print(
            f"{stem}: {np.mean(single):.3f} [{min(single):.3f}, {max(single):.3f}] | {by_k}",
            flush=True,
        )


if __name__ == "__main__":
    main()
