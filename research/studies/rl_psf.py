"""How much Richardson-Lucy gains from knowing each image's exact PSF.

`cvdm evaluate` runs RL with the simulator's own PSF of every pair (NA, wavelength, index
mismatch and *that image's defocus*): an oracle no user has. This script re-scores RL on
the same pairs with two PSFs a microscopist could know: an in-focus Gaussian from the
image's NA and emission wavelength (0.21 lambda / NA), and the simulator's own PSF model
*in focus* (the exact optics without the defocus; needs microsim), both integrated over an
input pixel; it tunes each one's iteration count on the same validation pairs, and compares
the per-image SSIM of the cvdm rows of an existing report with every RL variant.

    python research/studies/rl_psf.py --report report/ --lr sim_eval/lr --hr sim_eval/hr

Prints one table (mean PSNR / SSIM, cvdm's win rates against each RL variant, and the
pairs where RL's SSIM is higher).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from cvdm_cli.core import metrics
from cvdm_cli.evaluation import baselines
from cvdm_cli.evaluation.evaluate import load_params
from cvdm_cli.io.tiff import read_single_plane


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--report", type=Path, required=True, help="folder of a cvdm evaluate run")
    ap.add_argument("--lr", type=Path, required=True)
    ap.add_argument("--hr", type=Path, required=True)
    ap.add_argument("--method", default="cvdm_fast", help="cvdm row to compare")
    args = ap.parse_args()

    params = load_params(args.lr.parent, args.hr.parent)  # where cvdm evaluate looks
    rows: dict[str, dict[str, dict[str, str]]] = defaultdict(dict)
    with (args.report / "metrics.csv").open() as f:
        for row in csv.DictReader(f):
            rows[row["stem"]][row["method"]] = row
    scored = sorted(s for s, r in rows.items() if "rl" in r and args.method in r)
    val = sorted(p.stem for p in args.lr.glob("*.tif") if p.stem not in rows)

    def in_focus(entry, pixel_nm: float) -> np.ndarray:
        from cvdm_cli.training import simulation

        return simulation.widefield_psf_2d(simulation.SimulationParams.from_dict(entry), pixel_nm)

    def load(stem: str, variant: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = params[stem]
        bic = baselines.bicubic_upsample(read_single_plane(args.lr / f"{stem}.tif"), 2)
        hr = read_single_plane(args.hr / f"{stem}.tif")
        # nominal: priority 3 of psf_from_params (no simulation PSF), the in-focus Gaussian
        sim = in_focus if variant == "in_focus" else None
        psf, _ = baselines.psf_from_params(
            p, float(p["lr_pixel_nm"]) / 2, scale=2, simulation_psf=sim
        )
        return bic, hr, psf

    def col(method: str, key: str) -> np.ndarray:
        return np.array([float(rows[s][method][key]) for s in scored])

    cvdm_psnr, cvdm_ssim = col(args.method, "psnr"), col(args.method, "ssim")
    variants = [("simulation (exact, per image)", col("rl", "psnr"), col("rl", "ssim"), None)]
    for variant, name in (
        ("nominal", "nominal (in-focus Gaussian from NA, wavelength)"),
        ("in_focus", "simulation's optics in focus (no defocus)"),
    ):
        tuned = baselines.tune_rl_iterations(*zip(*(load(s, variant) for s in val), strict=True))
        fair = []
        for stem in scored:
            bic, hr, psf = load(stem, variant)
            fair.append(metrics.fair_scores(baselines.richardson_lucy(bic, psf, tuned.best), hr))
        psnr = np.array([f.psnr for f in fair])
        ssim = np.array([f.ssim for f in fair])
        variants.append((f"{name}, {tuned.best} iterations", psnr, ssim, tuned.best))
    print(f"{len(scored)} scored pairs, {len(val)} validation pairs")
    print("| RL PSF | PSNR | SSIM | cvdm PSNR wins | cvdm SSIM wins | RL better SSIM on |")
    print("|---|---|---|---|---|---|")
    for name, p, s, _ in variants:
        lost = ", ".join(
            st.removeprefix("pair_")
            for st, c, r in zip(scored, cvdm_ssim, s, strict=True)
            if c <= r
        )
        print(
            f"| {name} | {p.mean():.2f} | {s.mean():.3f} | "
            f"{np.mean(cvdm_psnr > p):.0%} | {np.mean(cvdm_ssim > s):.0%} | {lost} |"
        )
    print(f"| ({args.method}) | {cvdm_psnr.mean():.2f} | {cvdm_ssim.mean():.3f} | | | |")


if __name__ == "__main__":
    main()
