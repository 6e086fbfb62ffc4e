"""How well does the std map track the error, per pooling width of the sample variance?

Draws K fast samples per pair once (as `cvdm evaluate`: TTA on, test pair i with seed
--seed + i; validation pair j with --seed + 1000 + j), then scores Spearman(std, |error|),
its calibrated value and the AUSE for each Gaussian sigma (output pixels) of
`cvdm_cli.core.variance.pool_variance` (0 = the per-pixel sample std), separately on the
validation pairs (the split `cvdm evaluate --val-fraction F --seed S` holds out to tune
Richardson-Lucy, where a sigma may be chosen) and on the scored ones. The mean and the
coverages do not depend on sigma; the script prints the mean SSIM / PSNR once as a check
against the evaluate report. Two maps that are not the samples' spread are scored alongside
for reference: the learned schedule map lambda(x) (`--difficulty`, one network pass) and
the reconstruction's own intensity |mean| (errors grow with the signal, so intensity alone
ranks the error well: what a std map has to beat to add information). A line per split says
whether the std has the right size: the rms error of the mean over the rms of
sqrt(1 + 1/K) x the std, what a calibrated sampler's mean of K samples would miss by
(pooling keeps the map's level, so this does not depend on sigma).

    python research/studies/variance_smoothing.py \\
        --model cvdm_cli/models/cvdm-small-v1.safetensors \\
        --lr sim_eval/lr --hr sim_eval/hr --val-fraction 0.2 [--antithetic]
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from cvdm_cli.core import metrics
from cvdm_cli.core.normalize import denormalize, percentile_normalize
from cvdm_cli.evaluation.evaluate import ImagePair, find_pairs, read_plane
from cvdm_cli.io.weights import load_weights
from cvdm_cli.sampling.api import reconstruct, schedule_map


def split_pairs(
    pairs: Sequence[ImagePair], val_fraction: float, seed: int
) -> tuple[list[ImagePair], list[ImagePair]]:
    """(validation, scored) pairs, each sorted by stem: the split `cvdm evaluate
    --val-fraction F --seed S` makes to tune Richardson-Lucy (the same draw)."""
    n_val = min(len(pairs) - 1, max(1, round(val_fraction * len(pairs))))
    order = np.random.default_rng(seed).permutation(len(pairs))
    val = sorted((pairs[i] for i in order[:n_val]), key=lambda p: p.stem)
    test = sorted((pairs[i] for i in order[n_val:]), key=lambda p: p.stem)
    return val, test


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--lr", type=Path, required=True)
    ap.add_argument("--hr", type=Path, required=True)
    ap.add_argument("--val-fraction", type=float, default=0.25)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--passes", help="as cvdm enhance --passes (default: passes of 2 steps)")
    ap.add_argument("--sigmas", default="0,0.5,1,1.5,2,3,4")
    ap.add_argument("--antithetic", action="store_true")
    ap.add_argument("--no-tta", action="store_true")
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()

    sigmas = [float(s) for s in args.sigmas.split(",")]
    raw = sigmas.index(0.0) if 0.0 in sigmas else None  # the per-pixel std, to compare with
    model = load_weights(args.model)
    val, test = split_pairs(find_pairs(args.lr, args.hr), args.val_fraction, args.seed)
    for split, pairs, base in (("validation", val, 1000), ("scored", test, 0)):
        scores = np.zeros((len(pairs), len(sigmas), 3))  # spearman, calibrated, AUSE
        size = np.zeros(len(pairs))  # rms error / rms predicted std (pooling keeps the level)
        others = np.zeros((len(pairs), 2, 2))  # (lambda, |mean|) x (spearman, AUSE)
        quality = []
        for index, pair in enumerate(pairs):
            lr, hr = read_plane(pair.lr), read_plane(pair.hr)
            x, norm = percentile_normalize(lr, model.config.norm_low, model.config.norm_high)
            rec = reconstruct(
                model,
                x,
                samples=args.samples,
                generator=torch.Generator().manual_seed(args.seed + base + index),
                tta=not args.no_tta,
                antithetic=args.antithetic,
                precision=args.precision,
                passes=args.passes,
                return_samples=True,
            )
            s = denormalize(rec.samples, norm).astype(np.float64)
            fair = metrics.fair_scores(s.mean(axis=0), hr)  # as evaluate.score_samples
            fitted = fair.alpha * s + fair.beta
            quality.append((fair.ssim, fair.psnr))
            err = np.abs(fair.fitted - fair.target)
            # the error a calibrated sampler's mean of K samples has: sqrt(1 + 1/K) x its std
            var = fitted.var(axis=0, ddof=1) * (1 + 1 / len(fitted))
            size[index] = np.sqrt(np.mean(err**2) / np.mean(var))
            for j, sigma in enumerate(sigmas):
                u = metrics.uncertainty_scores(fitted, fair.fitted, fair.target, smoothing=sigma)
                scores[index, j] = (u.spearman, u.calibrated_spearman, u.ause)
            for j, other in enumerate((schedule_map(model, x), np.abs(fair.fitted))):
                others[index, j] = (metrics.spearman(other, err), metrics.ause(other, err))
            print(f"{split} {pair.stem}: " + " ".join(
                f"{sigma:g}:{scores[index, j, 0]:.3f}" for j, sigma in enumerate(sigmas)
            ), flush=True)  # fmt: skip
        q = np.array(quality)
        print(
            f"== {split} pairs: {len(pairs)}, mean SSIM {q[:, 0].mean():.4f}, "
            f"PSNR {q[:, 1].mean():.3f}"
        )
        print(
            f"std size: rms error of the mean / rms of sqrt(1 + 1/K) x std, median over pairs "
            f"{np.median(size):.3f} (quartiles {np.percentile(size, 25):.3f}-"
            f"{np.percentile(size, 75):.3f}; 1 = the right size)"
        )
        print("sigma (px) | Spearman | calibrated | AUSE | pairs above sigma 0 (Spearman)")
        for j, sigma in enumerate(sigmas):
            m = scores[:, j].mean(axis=0)
            better = "-" if raw in (None, j) else int((scores[:, j, 0] > scores[:, raw, 0]).sum())
            print(f"{sigma:g} | {m[0]:.4f} | {m[1]:.4f} | {m[2]:.4f} | {better}")
        for j, name in enumerate(("lambda(x), the schedule map", "|mean|, intensity alone")):
            m = others[:, j].mean(axis=0)
            print(f"{name} | {m[0]:.4f} | - | {m[1]:.4f} | -")


if __name__ == "__main__":
    main()
