"""Where in the image does cvdm gain or lose SSIM against Richardson-Lucy?

For every scored pair of a `cvdm evaluate` report, draws K fast samples as `cvdm evaluate`
did (TTA, seed = report seed + pair index) and runs Richardson-Lucy as it did (the report's
iteration count, each pair's PSF from params.json, built as `cvdm evaluate` builds it:
the simulator's PSF model with that pair's defocus, or the Gaussian approximation without
microsim or for the toy simulator; a note is printed where RL's SSIM differs from the
report's), then splits skimage's SSIM map (7x7
windows, after the CSBDeep fair comparison) into

- structure windows (the target's 7x7 maximum above 0.1 after the fair normalisation,
  which maps the target's 0.1 / 99.9 percentiles to 0 / 1) and background windows (the rest),
  with the standard deviation of each estimate over the background pixels: how much
  texture it leaves where the truth is empty;
- bands by distance to the image border (0-8, 8-16, 16-32 and 32+ output pixels).

Prints one line per pair (SSIM of both methods, per window kind, the background sd) and
then, for both splits, the mean SSIM-map gain of cvdm over RL and the pairs where cvdm
gains. Lines for the pairs that RL wins are marked with '*'.

    python research/studies/ssim_where.py --model cvdm_cli/models/cvdm-small-v1.safetensors \\
        --lr sim_eval/lr --hr sim_eval/hr --report report/ [--precision fp32]
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.ndimage import maximum_filter
from skimage.metrics import structural_similarity

from cvdm_cli.core import metrics
from cvdm_cli.core.normalize import denormalize, percentile_normalize
from cvdm_cli.errors import MissingExtraError
from cvdm_cli.evaluation import baselines
from cvdm_cli.evaluation.evaluate import load_params, read_plane
from cvdm_cli.io.weights import load_weights
from cvdm_cli.sampling.api import reconstruct

STRUCTURE_LEVEL = 0.1  # fair-normalised target units (0 / 1 = its 0.1 / 99.9 percentiles)
WINDOW = 7  # skimage's default SSIM window, also the structure neighbourhood
BANDS = ((0, 8), (8, 16), (16, 32), (32, None))  # output pixels from the nearest border


def ssim_map(pred: np.ndarray, hr: np.ndarray) -> tuple[float, np.ndarray, metrics.FairScores]:
    """(mean SSIM, SSIM map (H, W), fair scores) after the CSBDeep fit, as cvdm evaluate."""
    fair = metrics.fair_scores(pred, hr)
    _, full = structural_similarity(fair.target, fair.fitted, data_range=fair.data_range, full=True)
    return fair.ssim, full, fair


def structure_mask(target: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose 7x7 neighbourhood in the fair-normalised target (metrics.
    fair_scores' ``target``) reaches STRUCTURE_LEVEL; the rest is background."""
    return maximum_filter(target, WINDOW) > STRUCTURE_LEVEL


def exact_psf(entry: dict[str, Any], scale: int = 2) -> np.ndarray:
    """The RL PSF `cvdm evaluate` uses for a simulated pair (its params.json entry) on the
    output grid: the simulator's PSF model with the pair's own defocus; the Gaussian
    approximation for the toy simulator or without microsim."""
    if "lr_pixel_nm" in entry:
        pixel_nm = float(entry["lr_pixel_nm"]) / scale
    else:
        pixel_nm = float(entry["hr_pixel_nm"])

    def simulated(e: dict[str, Any], pixel: float) -> np.ndarray:
        from cvdm_cli.training import simulation

        params = simulation.SimulationParams.from_dict(e)
        return simulation.widefield_psf_2d(params, pixel, defocus_nm=params.defocus_nm)

    toy = entry.get("simulator") == "gaussian2d-toy"
    try:
        psf, _ = baselines.psf_from_params(
            entry, pixel_nm, scale=scale, simulation_psf=None if toy else simulated
        )
    except MissingExtraError:  # no microsim: the Gaussian approximation, as cvdm evaluate
        psf, _ = baselines.psf_from_params(entry, pixel_nm, scale=scale)
    return psf


def border_distance(shape: tuple[int, int]) -> np.ndarray:
    """(H, W) integer distance of each pixel to the nearest image edge."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return np.minimum(np.minimum(yy, xx), np.minimum(shape[0] - 1 - yy, shape[1] - 1 - xx))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--lr", type=Path, required=True)
    ap.add_argument("--hr", type=Path, required=True)
    ap.add_argument("--report", type=Path, required=True, help="a cvdm evaluate report folder")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--precision", default="fp32")
    args = ap.parse_args()

    settings = json.loads((args.report / "report.json").read_text())["settings"]
    with (args.report / "metrics.csv").open() as fh:
        rl_rows = {r["stem"]: r for r in csv.DictReader(fh) if r["method"] == "rl"}
    iterations = int(settings["rl_iterations"])
    params = load_params(args.lr.parent, args.hr.parent)
    plan = settings.get("passes") or []  # steps per pass; reports before passes have none
    passes = ",".join(str(n) for n in plan) if len(plan) > 1 else "1"  # one pass: as a count
    model = load_weights(args.model)

    kinds: list[tuple[float, float, float, float]] = []  # structure / background gains, sds
    bands: list[list[float]] = []
    for index, stem in enumerate(sorted(rl_rows)):
        lr_path = args.lr / f"{stem}.tif"
        lr, hr = read_plane(lr_path), read_plane(args.hr / f"{stem}.tif")
        x, norm = percentile_normalize(lr, model.config.norm_low, model.config.norm_high)
        rec = reconstruct(
            model,
            x,
            samples=args.samples,
            generator=torch.Generator().manual_seed(int(settings["sampler_seed"]) + index),
            tta=bool(settings["tta"]),
            passes=passes,
            precision=args.precision,
            return_samples=True,
        )
        mean = denormalize(rec.samples, norm).astype(np.float64).mean(axis=0)
        rl = baselines.richardson_lucy(
            baselines.bicubic_upsample(lr, 2), exact_psf(params[stem]), iterations
        )
        (c_ssim, c_map, c_fair), (r_ssim, r_map, r_fair) = ssim_map(mean, hr), ssim_map(rl, hr)
        structure = structure_mask(c_fair.target)
        background = ~structure
        c_sd, r_sd = (
            f.fitted[background].std() if background.any() else np.nan for f in (c_fair, r_fair)
        )
        split = [
            m[sel].mean() if sel.any() else np.nan
            for m in (c_map, r_map)
            for sel in (structure, background)
        ]
        kinds.append((split[0] - split[2], split[1] - split[3], c_sd, r_sd))
        dist = border_distance(c_map.shape)
        gain = c_map - r_map
        bands.append(
            [gain[(dist >= lo) & (dist < (hi or dist.max() + 1))].mean() for lo, hi in BANDS]
        )
        mark = "*" if c_ssim <= r_ssim else " "
        print(
            f"{mark}{stem}: SSIM cvdm {c_ssim:.3f} RL {r_ssim:.3f} | structure windows "
            f"({structure.mean():.0%}) {split[0]:.3f} vs {split[2]:.3f} | background "
            f"{split[1]:.3f} vs {split[3]:.3f}, sd {c_sd:.4f} vs {r_sd:.4f}",
            flush=True,
        )
        if abs(r_ssim - float(rl_rows[stem]["ssim"])) > 1e-6:
            print(f"  note: RL SSIM {r_ssim:.6f} differs from the report's {rl_rows[stem]['ssim']}")

    k, b = np.array(kinds), np.array(bands)
    n = len(k)
    for name, col in (("structure windows", 0), ("background windows", 1)):
        v = k[:, col][~np.isnan(k[:, col])]
        print(
            f"{name}: mean SSIM-map gain cvdm - RL {v.mean():+.4f}, "
            f"cvdm better on {int((v > 0).sum())}/{len(v)} pairs"
        )
    print(
        f"background sd (fair units, median over pairs): cvdm {np.nanmedian(k[:, 2]):.4f}, "
        f"RL {np.nanmedian(k[:, 3]):.4f}"
    )
    for (lo, hi), col in zip(BANDS, b.T, strict=True):
        where = f"{lo}-{hi}" if hi else f"{lo}+"
        print(
            f"border distance {where} px: mean SSIM-map gain {col.mean():+.4f}, "
            f"cvdm better on {int((col > 0).sum())}/{n} pairs"
        )


if __name__ == "__main__":
    main()
