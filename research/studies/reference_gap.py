"""Why the paper's sampler (``--sampler reference``) scores below the fast one (issue 26 item 4).

For a model and a few pairs, measures the two suspects and the gap itself:

1. terminal signal: gamma(t_max, x), the signal variance the learned schedule leaves at the
   last training time t = 1 - 1/T (quantiles over every pixel). The reference sampler starts
   from pure noise, which is the training marginal only when this is ~0.
2. discrete vs continuous schedule: the reference's gamma_bar_k = prod_j clip(1 - beta(j/T)
   / T) against the continuous gamma(k/T) = exp(-lam tau_int(k/T)) the network was trained
   on; printed as the largest |log SNR| difference over k and pixels, and at k = T - 1.
3. the gap: the sample mean of the reference sampler (T - 1 steps from pure noise) and of
   the fast default (10 passes of 2 steps), both with ``--samples`` samples, TTA, scored as
   ``cvdm evaluate`` scores them (CSBDeep fair PSNR / SSIM).

    python research/studies/reference_gap.py --model cvdm_cli/models/cvdm-small-v2.safetensors \\
        --lr g1_na14/lr --hr g1_na14/hr --report rep_g1_na14/ --samples 2 --limit 4

Prints one line per pair, then one JSON line with the means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from cvdm_cli.core.diffusion import gamma_map
from cvdm_cli.core.normalize import denormalize, percentile_normalize
from cvdm_cli.evaluation.evaluate import find_pairs, read_plane, score_samples
from cvdm_cli.io.weights import load_weights
from cvdm_cli.sampling.api import reconstruct
from cvdm_cli.sampling.schedules import ReferenceSchedule


def log_snr(g: torch.Tensor) -> torch.Tensor:
    g = g.clamp(1e-10, 1 - 1e-7)
    return torch.log(g) - torch.log1p(-g)


@torch.inference_mode()
def schedule_diagnostics(model, x_norm: np.ndarray) -> dict[str, float]:
    """Terminal gamma quantiles and the discrete-vs-continuous log-SNR gap for one image."""
    cfg = model.config
    x = model.condition(torch.from_numpy(x_norm).float()[None, None])
    lam = model.lam(x)
    T = cfg.timesteps
    g_T = gamma_map(model, lam, torch.ones(1) * (1.0 - 1.0 / T))
    ref = ReferenceSchedule(model, lam)
    worst, last = 0.0, 0.0
    for k in range(1, T):
        cont = gamma_map(model, lam, torch.ones(1) * (k / T))
        diff = (log_snr(ref.gamma_bar(k)) - log_snr(cont)).abs()
        worst = max(worst, float(diff.max()))
        if k == T - 1:
            last = float(diff.mean())
    q = torch.quantile(
        g_T.flatten()[:: max(1, g_T.numel() // 100000)], torch.tensor([0.05, 0.5, 0.95])
    )
    return {
        "gamma_T_p05": float(q[0]),
        "gamma_T_median": float(q[1]),
        "gamma_T_p95": float(q[2]),
        "gamma_bar_T_median": float(ref.gamma_bar(T - 1).median()),
        "logsnr_gap_max": worst,
        "logsnr_gap_at_T_mean": last,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--lr", required=True)
    ap.add_argument("--hr", required=True)
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--pairs", default="", help="comma-separated stems (default: all)")
    group.add_argument("--report", help="a cvdm evaluate report folder: its validation pairs")
    ap.add_argument("--limit", type=int, default=0, help="at most this many pairs (0: all)")
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_weights(args.model, device="cpu")
    cfg = model.config
    pairs = {p.stem: p for p in find_pairs(args.lr, args.hr)}
    if args.report:
        stems = json.loads((Path(args.report) / "report.json").read_text())["settings"][
            "validation_stems"
        ]
    else:
        stems = args.pairs.split(",") if args.pairs else sorted(pairs)
    if args.limit:
        stems = stems[: args.limit]
    rows = []
    for stem in stems:
        lr, hr = read_plane(pairs[stem].lr), read_plane(pairs[stem].hr)
        x_norm, norm = percentile_normalize(lr, cfg.norm_low, cfg.norm_high)
        row: dict[str, float | str] = {"pair": stem, **schedule_diagnostics(model, x_norm)}
        for sampler in ("fast", "reference"):
            rec = reconstruct(
                model, x_norm, samples=args.samples, sampler=sampler, seed=args.seed,
                return_samples=True,
            )  # fmt: skip
            samples = denormalize(rec.samples, norm).astype(np.float64)
            scored, _, _ = score_samples(stem, sampler, samples, hr)
            row[f"{sampler}_psnr"] = float(scored["psnr"])
            row[f"{sampler}_ssim"] = float(scored["ssim"])
        rows.append(row)
        print(
            json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}),
            flush=True,
        )
    keys = [k for k in rows[0] if k != "pair"]
    means = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in keys}
    means["gap_psnr"] = round(means["fast_psnr"] - means["reference_psnr"], 3)
    means["gap_ssim"] = round(means["fast_ssim"] - means["reference_ssim"], 4)
    print(json.dumps({"pairs": len(rows), "samples": args.samples, **means}), flush=True)


if __name__ == "__main__":
    main()
