"""Rao-Blackwellised means: the average of the network's x0 predictions at step i.

By the tower property E[ E[x0 | z_t, y] | y ] = E[x0 | y], so averaging the network's
clean-image prediction x0_hat(z_t) over K trajectories at an intermediate step i estimates
the same posterior mean as averaging the K final samples, with less variance when the
network is exact (and more bias where it is not). This script records x0_hat at every step
of the fast sampler (8 samples, one per view as in `cvdm enhance`'s default TTA), scores
the per-step means like `cvdm evaluate` (CSBDeep fair comparison) and prints one JSON line
per pair, then the mean PSNR / SSIM per step, separately for the validation pairs of a
`cvdm evaluate` report (which would choose the step) and its scored pairs, with the number
of scored pairs whose SSIM beats that report's Richardson-Lucy row.

    python research/studies/estimator_step.py --model cvdm_cli/models/cvdm-small-v1.safetensors \\
        --lr sim_eval/lr --hr sim_eval/hr --report report/
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
import torch

from cvdm_cli.core import metrics
from cvdm_cli.core.normalize import denormalize, percentile_normalize
from cvdm_cli.evaluation.evaluate import find_pairs, read_plane
from cvdm_cli.io.weights import load_weights
from cvdm_cli.sampling import views
from cvdm_cli.sampling.api import pad_to_multiple
from cvdm_cli.sampling.noise import NoiseSource
from cvdm_cli.sampling.schedules import make_schedule
from cvdm_cli.sampling.steps import ddim_update, make_eps_fn


@torch.inference_mode()
def per_step_predictions(model, x_norm: np.ndarray, samples: int, steps: int, seed: int):
    """x0_hat (denormalised later) of every sample at every step: list of (K, H, W)."""
    cpu = torch.device("cpu")
    h, w = 2 * x_norm.shape[0], 2 * x_norm.shape[1]
    view_of = [views.view_of(k, True) for k in range(samples)]
    x = torch.cat(
        [
            pad_to_multiple(
                model.condition(torch.from_numpy(views.forward(x_norm, v))[None, None]),
                model.pad_multiple,
            )[0]
            for v in view_of
        ]
    )
    schedule = make_schedule(model, model.lam(x), "fast", steps)
    noise = NoiseSource([seed * 1000 + k for k in range(samples)])
    items, shape = list(range(samples)), tuple(x.shape[1:])
    eps_fn = make_eps_fn(model, x)
    z, g_s, out = noise.draw(items, shape, cpu), schedule.gamma(0), []
    for i in range(steps):
        g_t, last = schedule.gamma(i + 1), i == steps - 1
        draw = None if last else noise.draw(items, shape, cpu)
        z, x0 = ddim_update(z, eps_fn(z, g_s), g_s, g_t, 0.0 if last else 1.0, draw, 4.0)
        g_s = g_t
        y = [views.inverse((x[k] + x0[k])[0, :h, :w], v) for k, v in enumerate(view_of)]
        out.append(torch.stack(y).numpy())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--lr", required=True)
    ap.add_argument("--hr", required=True)
    ap.add_argument("--report", required=True, help="a cvdm evaluate report folder")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_weights(args.model, device="cpu")
    cfg = model.config
    report = json.loads((Path(args.report) / "report.json").read_text())
    val = set(report["settings"]["validation_stems"])
    with open(Path(args.report) / "metrics.csv") as f:
        rl = {r["stem"]: float(r["ssim"]) for r in csv.DictReader(f) if r["method"] == "rl"}
    scores: dict[str, np.ndarray] = {}
    for index, pair in enumerate(find_pairs(args.lr, args.hr)):
        if pair.stem not in val and pair.stem not in rl:
            continue
        lr, hr = read_plane(pair.lr), read_plane(pair.hr)
        x_norm, norm = percentile_normalize(lr, cfg.norm_low, cfg.norm_high)
        per_step = per_step_predictions(model, x_norm, args.samples, args.steps, index)
        fair = [metrics.fair_scores(denormalize(p, norm).mean(axis=0), hr) for p in per_step]
        scores[pair.stem] = np.array([[f.psnr, f.ssim] for f in fair])
        row = {"stem": pair.stem, "ssim": np.round(scores[pair.stem][:, 1], 4).tolist()}
        print(json.dumps(row), flush=True)
    for name, stems in (("validation", sorted(val)), ("scored", sorted(rl))):
        a = np.stack([scores[s] for s in stems])
        summary = {
            "pairs": name,
            "n": len(stems),
            "psnr_per_step": np.round(a[:, :, 0].mean(axis=0), 2).tolist(),
            "ssim_per_step": np.round(a[:, :, 1].mean(axis=0), 4).tolist(),
        }
        if name == "scored":
            wins = a[:, :, 1] > np.array([rl[s] for s in stems])[:, None]
            summary["ssim_wins_vs_rl_per_step"] = wins.sum(axis=0).tolist()
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
