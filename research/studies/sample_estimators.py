"""How good is each of the K samples, and can the samples' agreement pick the better ones?

For every scored pair of a `cvdm evaluate` report, draws K fast samples as `cvdm enhance`
does (TTA, seed = --seed + pair index) and scores, like `cvdm evaluate` (CSBDeep fair
comparison): every sample on its own, the mean of all K (what cvdm writes), the mean of the
k samples that agree best with the others ("consensus": SSIM of a sample against the mean
of the other K - 1, no truth involved), the single most central sample (a minimum-Bayes-risk
choice), a consensus-weighted mean, and the mean with its Monte-Carlo noise filtered
("wiener": the mean's sampling variance, the samples' variance / K pooled over 1.5 output
pixels, removed by a local adaptive Wiener filter that shrinks the mean towards its Gaussian
blur where its local variance is no larger than that noise). With --extra-model M
(repeatable), also M's own mean of K samples and an ensemble: K/2 samples of each model,
and per pair how much the models make the same mistakes: the correlation, over the
background pixels, between the error of the model's first K/2-sample mean and that of its
other K/2 samples (the same model, other noise) or of M's first K/2.
With --antithetic, sample 2j + 1 is drawn with the
negated noise of sample 2j: without TTA, or with --tta --shared-views in the same view (both
as `cvdm --antithetic`), or with --tta alone in separate views (the noise carried across;
these samples come from the study's own sampler, `sampler_passes.draw_samples`, with a
noise source that maps each mate's noise into its view, seeded from (--seed + pair index,
sample): not the library's draws).

Prints one line per pair (the spread of the per-sample SSIMs, the correlation of consensus
with true quality, each estimator's SSIM / PSNR gain over the report's Richardson-Lucy
row), then per estimator the mean SSIM and PSNR, the pairs won against RL and those lost.

    python research/studies/sample_estimators.py \\
        --model cvdm_cli/models/cvdm-small-v1.safetensors \\
        --lr sim_eval/lr --hr sim_eval/hr --report report/
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter, uniform_filter
from skimage.metrics import structural_similarity

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sampler_passes import draw_samples  # the study's sampler (noise source replaceable)
from ssim_where import structure_mask  # the background of research/studies/ssim_where.py

from cvdm_cli.core import metrics
from cvdm_cli.core.normalize import NormParams, denormalize, percentile_normalize
from cvdm_cli.core.variance import pool_variance
from cvdm_cli.evaluation.evaluate import read_plane
from cvdm_cli.io.weights import load_weights
from cvdm_cli.sampling import views
from cvdm_cli.sampling.api import reconstruct
from cvdm_cli.sampling.noise import NoiseSource


class SeparateViewAntithetic(NoiseSource):
    """Antithetic mates in different views (one image, sample k in view k % 8): item 2j + 1
    replays item 2j's generator negated, carried from view 2j's frame into view 2j + 1's, so
    both see opposite noise at the same place of the image. `cvdm --antithetic` instead
    puts the mates in one view (``cvdm_cli.sampling.noise.sample_view``), which needs no
    mapping."""

    def __init__(self, seeds, signs=None) -> None:  # signs: all +1, reconstruct pairs nothing
        seeds = list(seeds)
        super().__init__(
            [seeds[j - j % 2] for j in range(len(seeds))],
            [-1.0 if j % 2 else 1.0 for j in range(len(seeds))],
        )

    def draw(self, items, shape, device):
        rows = []
        for i in items:
            eps = self.signs[i] * torch.randn(shape, generator=self.generators[i])
            if i % 2:
                mate, own = views.view_of(i - 1, True), views.view_of(i, True)
                eps = views.forward(views.inverse(eps, mate), own)
            rows.append(eps)
        return torch.stack(rows).to(device)


def consensus(samples: np.ndarray) -> np.ndarray:
    """SSIM of each sample (K, H, W; normalised units) against the mean of the others."""
    k = len(samples)
    return np.array(
        [
            structural_similarity(samples[i], np.delete(samples, i, 0).mean(0), data_range=2.0)
            for i in range(k)
        ]
    )


def wiener_mean(samples: np.ndarray, sigma: float = 1.5, window: int = 7) -> np.ndarray:
    """The mean of K samples (K, H, W) with its Monte-Carlo noise filtered: the noise
    variance var / K (pooled over ``sigma`` pixels) is removed by a local adaptive Wiener
    filter (``window`` x ``window`` local statistics) towards the mean's Gaussian blur."""
    mean = samples.mean(0)
    noise = pool_variance(samples.var(0, ddof=1) / len(samples), sigma)
    blurred = gaussian_filter(mean, sigma)
    local_mean = uniform_filter(mean, window)
    local_var = uniform_filter(mean * mean, window) - local_mean**2
    keep = np.clip((local_var - noise) / np.maximum(local_var, 1e-12), 0.0, 1.0)
    return blurred + keep * (mean - blurred)


def error_agreement(
    reference: np.ndarray, others: dict[str, np.ndarray], norm: NormParams, hr: np.ndarray
) -> dict[str, float]:
    """Correlation, over the background pixels (``ssim_where.structure_mask``'s complement),
    between the error of ``reference`` and that of each of ``others`` (normalised-unit
    estimates of one pair, each fitted to ``hr`` on its own): whether two estimates make the
    same mistakes where the truth is empty."""
    ref = metrics.fair_scores(denormalize(reference, norm), hr)
    background = ~structure_mask(ref.target)
    if background.sum() < 2:
        return {name: float("nan") for name in others}
    out = {}
    for name, estimate in others.items():
        fair = metrics.fair_scores(denormalize(estimate, norm), hr)
        # the fair normalisation of the truth does not depend on the estimate
        err_ref, err = (e.fitted[background] - ref.target[background] for e in (ref, fair))
        out[name] = float(np.corrcoef(err_ref, err)[0, 1])
    return out


def estimators(samples: np.ndarray, agree: np.ndarray, top: int) -> dict[str, np.ndarray]:
    order = np.argsort(-agree)
    weights = np.exp((agree - agree.max()) / 0.02)
    return {
        "mean": samples.mean(0),
        f"top{top}": samples[order[:top]].mean(0),
        "central": samples[order[0]],
        "weighted": np.tensordot(weights / weights.sum(), samples, 1),
        "wiener": wiener_mean(samples),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--lr", type=Path, required=True)
    ap.add_argument("--hr", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True, help="a cvdm evaluate report folder")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--passes", help="as cvdm enhance --passes (default: passes of 2 steps)")
    ap.add_argument("--top", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--antithetic", action="store_true")
    ap.add_argument("--tta", action="store_true", help="with --antithetic: keep TTA")
    ap.add_argument(
        "--shared-views",
        action="store_true",
        help="with --antithetic --tta: mates share a view (sample k in view k // 2 %% 8)",
    )
    ap.add_argument("--precision", default="fp32")
    ap.add_argument(
        "--extra-model",
        action="append",
        default=[],
        help="another model (path): its own mean of K samples, and K/2 + K/2 with --model",
    )
    args = ap.parse_args()

    model = load_weights(args.model)
    extras = {Path(m).stem: load_weights(m) for m in args.extra_model}
    with (args.report / "metrics.csv").open() as fh:
        rl = {r["stem"]: r for r in csv.DictReader(fh) if r["method"] == "rl"}
    # --antithetic [--tta --shared-views] is what `cvdm --antithetic` does; only mates in
    # separate views need another noise source, so those samples come from the study's sampler
    separate = args.antithetic and args.tta and not args.shared_views
    totals: dict[str, list[tuple[float, float, bool]]] = {}
    lost: dict[str, list[str]] = {}  # estimator -> stems where RL's SSIM is not lower
    agreement: dict[str, list[float]] = {}  # other K/2-sample mean -> background error corr
    half_k = args.samples // 2
    for index, stem in enumerate(sorted(rl)):
        lr, hr = read_plane(args.lr / f"{stem}.tif"), read_plane(args.hr / f"{stem}.tif")
        x, norm = percentile_normalize(lr, model.config.norm_low, model.config.norm_high)
        if separate:
            samples = draw_samples(
                model,
                x,
                samples=args.samples,
                seed=args.seed + index,
                tta=True,
                precision=args.precision,
                passes=args.passes,
                noise_factory=SeparateViewAntithetic,
            )
        else:
            samples = reconstruct(
                model,
                x,
                samples=args.samples,
                generator=torch.Generator().manual_seed(args.seed + index),
                tta=args.tta or not args.antithetic,
                antithetic=args.antithetic,
                precision=args.precision,
                passes=args.passes,
                return_samples=True,
            ).samples
        ensembles: dict[str, np.ndarray] = {}
        halves = {"model, other samples": samples[half_k:].mean(0)}  # K/2-sample means
        for j, (name, extra) in enumerate(extras.items(), start=1):
            # its own normalisation (its percentiles), its own seeds, mapped to model's units
            xe, norm_e = percentile_normalize(lr, extra.config.norm_low, extra.config.norm_high)
            other = reconstruct(
                extra,
                xe,
                samples=args.samples,
                generator=torch.Generator().manual_seed(args.seed + index + 10_000 * j),
                tta=True,
                precision=args.precision,
                passes=args.passes,
                return_samples=True,
            ).samples
            other = (denormalize(other, norm_e) - norm.center) / norm.half_range
            ensembles[name] = other.mean(0)
            ensembles[f"{name}+model"] = np.concatenate([samples[:half_k], other[:half_k]]).mean(0)
            halves[name] = other[:half_k].mean(0)
        each = np.array([metrics.fair_scores(denormalize(s, norm), hr).ssim for s in samples])
        agree = consensus(samples)
        rl_ssim, rl_psnr = float(rl[stem]["ssim"]), float(rl[stem]["psnr"])
        parts = []
        for name, estimate in (estimators(samples, agree, args.top) | ensembles).items():
            fair = metrics.fair_scores(denormalize(estimate, norm), hr)
            totals.setdefault(name, []).append((fair.ssim, fair.psnr, fair.ssim > rl_ssim))
            lost.setdefault(name, []).extend([] if fair.ssim > rl_ssim else [stem])
            parts.append(f"{name} {fair.ssim - rl_ssim:+.3f}/{fair.psnr - rl_psnr:+.2f}")
        corr = float(np.corrcoef(agree, each)[0, 1])
        print(
            f"{stem}: samples' SSIM {each.min():.3f}-{each.max():.3f}, "
            f"corr(consensus, SSIM) {corr:+.2f} | gain over RL (SSIM/PSNR): " + ", ".join(parts),
            flush=True,
        )
        if extras:
            shared = error_agreement(samples[:half_k].mean(0), halves, norm, hr)
            for name, r in shared.items():
                agreement.setdefault(name, []).append(r)
            print(
                f"  background error correlation with the model's first {half_k}-sample mean: "
                + ", ".join(f"{name} {r:+.2f}" for name, r in shared.items())
            )
    for name, values in agreement.items():
        print(f"background error correlation, {name}: median {np.nanmedian(values):+.2f}")
    for name, rows in totals.items():
        a = np.array(rows)
        print(
            f"{name}: SSIM {a[:, 0].mean():.4f}, PSNR {a[:, 1].mean():.3f}, "
            f"SSIM wins vs RL {int(a[:, 2].sum())}/{len(a)}; lost: {', '.join(lost[name])}"
        )


if __name__ == "__main__":
    main()
