"""Fast-sampler pass plans (`--passes`): the same denoiser calls in one or more passes.

Each plan splits `--steps` calls into passes as `cvdm enhance --passes` does (TTA on, 8
samples), on the given pairs with the same noise for every plan and, with `--grid-powers`,
for every time grid t_i = t_max (1 - i/n)^power within a pass (default: the library's
`cvdm_cli.sampling.schedules.FAST_GRID_POWER`), and scores the sample mean and std the way
`cvdm evaluate` does (CSBDeep fair comparison; Spearman of the pooled std and the error;
coverage of the central 50 / 90 % sample intervals). Choose a plan on pairs that the
evaluation leaves out (its validation split, `validation_stems` in report.json):

    python research/studies/sampler_passes.py --model cvdm_cli/models/cvdm-small-v1.safetensors \\
        --lr sim_eval/lr --hr sim_eval/hr --report report/ --plans "1;1,1,18;4,4,12;5"
    python research/studies/sampler_passes.py ... --report report/ --plans 10 --grid-powers 1,2,3

The library's sampler always walks FAST_GRID_POWER, so this study draws its samples itself
(:func:`draw_samples`: the library's views, schedules and step loop, with the grid passed
to each `FastSchedule`). Its noise is seeded from (--seed + pair index, sample) only: every
plan and grid of a run sees the same noise, but the draws are not those of
`reconstruct` or `cvdm evaluate`, so figures recorded in research/log.md (taken with the
library's sampler of their day) reproduce in distribution, not to the last digit.

Prints one line per pair and plan, then one JSON line per plan (means over the pairs).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from cvdm_cli.core.model import CVDM
from cvdm_cli.core.normalize import denormalize, percentile_normalize
from cvdm_cli.evaluation.evaluate import find_pairs, read_plane, score_samples
from cvdm_cli.io.weights import load_weights
from cvdm_cli.sampling import views
from cvdm_cli.sampling.api import pad_to_multiple
from cvdm_cli.sampling.noise import NoiseSource, noise_mate, sample_view
from cvdm_cli.sampling.passes import resolve_passes
from cvdm_cli.sampling.schedules import FAST_GRID_POWER, FastSchedule
from cvdm_cli.sampling.settings import DEFAULT_SAMPLING
from cvdm_cli.sampling.steps import make_eps_fn, run_passes

KEYS = ("psnr", "ssim", "spearman", "coverage50", "coverage90")
NoiseFactory = Callable[[Sequence[int], Sequence[float]], NoiseSource]


def sample_seeds(seed: int, samples: int) -> list[int]:
    """One noise seed per sample, from (seed, sample) only."""
    return [int(np.random.SeedSequence([seed, k]).generate_state(1)[0]) for k in range(samples)]


@torch.inference_mode()
def draw_samples(
    model: CVDM,
    x_norm: np.ndarray,
    *,
    samples: int = 8,
    steps: int = 20,
    passes: str | int | None = None,
    power: float = FAST_GRID_POWER,
    seed: int = 0,
    tta: bool = True,
    antithetic: bool = False,
    precision: str = "fp32",
    noise_factory: NoiseFactory = NoiseSource,
) -> np.ndarray:
    """(K, H, W) fast-sampler samples of one normalised plane (normalised units), every
    pass on the grid t_i = t_max (1 - i/n)^power.

    passes: as `--passes` (None: passes of 2 steps). tta / antithetic: sample k from
    view `sample_view(k, tta, antithetic)`, mates replaying their partner's noise negated.
    noise_factory(seeds, signs): the noise source (one stream per sample index).
    """
    model.prepare_inference()
    device = model.device
    lr = torch.as_tensor(np.asarray(x_norm, dtype=np.float32), device=device)[None, None]
    h, w = model.config.scale * lr.shape[-2], model.config.scale * lr.shape[-1]
    seeds = sample_seeds(seed, samples)
    mates = [noise_mate(k, antithetic) for k in range(samples)]
    noise = noise_factory([seeds[m] for m, _ in mates], [sign for _, sign in mates])
    plan = resolve_passes("fast", steps, passes)
    eta = DEFAULT_SAMPLING.eta_value  # the fast sampler's default
    view_of = [sample_view(k, tta, antithetic) for k in range(samples)]
    xs, lams = {}, {}
    for v in sorted(set(view_of)):  # condition and lambda(x) once per view
        xs[v], _ = pad_to_multiple(model.condition(views.forward(lr, v)), model.pad_multiple)
        lams[v] = model.lam(xs[v])
    groups: dict[tuple[int, ...], list[int]] = {}  # views of one padded shape share a batch
    for k in range(samples):
        groups.setdefault(tuple(xs[view_of[k]].shape[-2:]), []).append(k)
    out = np.zeros((samples, h, w), dtype=np.float32)
    for ks in groups.values():
        x_b = torch.cat([xs[view_of[k]] for k in ks])
        lam_b = torch.cat([lams[view_of[k]] for k in ks])
        schedules = [FastSchedule(model, lam_b, n, power=power) for n in plan]
        shape = tuple(x_b.shape[1:])

        def draw(ks: list[int] = ks, shape: tuple[int, ...] = shape) -> torch.Tensor:
            return noise.draw(ks, shape, device)

        r = run_passes(make_eps_fn(model, x_b, precision), schedules, draw(), eta=eta, noise=draw)
        y_b = x_b + r
        for row, k in enumerate(ks):
            vh, vw = views.view_shape((h, w), view_of[k])
            out[k] = views.inverse(y_b[row, 0, :vh, :vw], view_of[k]).float().cpu().numpy()
    return out


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
        default=f"{FAST_GRID_POWER:g}",
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
            drawn = draw_samples(
                model, x_norm, samples=args.samples, steps=args.steps, passes=plan,
                power=power, seed=args.seed + index, tta=True,
            )  # fmt: skip
            samples = denormalize(drawn, norm).astype(np.float64)
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
