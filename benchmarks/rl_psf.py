"""How much Richardson-Lucy gains from knowing each image's exact PSF.

`cvdm evaluate` runs RL with the simulator's own PSF of every pair (NA, wavelength, index
mismatch and *that image's defocus*): an oracle no user has. This script re-scores RL on
the same pairs with the PSF a microscopist knows (an in-focus Gaussian from the image's NA
and emission wavelength, 0.21 lambda / NA, integrated over an input pixel), tunes its
iteration count on the same validation pairs, and compares the per-image SSIM of the cvdm
rows of an existing report with both RL variants.

    python benchmarks/rl_psf.py --report report/ --lr sim_eval/lr --hr sim_eval/hr

Prints one table (mean PSNR / SSIM, and cvdm's win rates against each RL variant).
"""

from __future__ import annotations

import argparse
import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from cvdm_cli import baselines, metrics
from cvdm_cli.evaluate import load_params
from cvdm_cli.tiff import read_single_plane


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

    def load(stem: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p = params[stem]
        bic = baselines.bicubic_upsample(read_single_plane(args.lr / f"{stem}.tif"), 2)
        hr = read_single_plane(args.hr / f"{stem}.tif")
        # priority 3 of psf_from_params: no simulation PSF, the nominal in-focus Gaussian
        psf, _ = baselines.psf_from_params(p, float(p["lr_pixel_nm"]) / 2, scale=2)
        return bic, hr, psf

    tuned = baselines.tune_rl_iterations(*zip(*(load(s) for s in val), strict=True))
    nominal = {}
    for stem in scored:
        bic, hr, psf = load(stem)
        nominal[stem] = metrics.fair_scores(baselines.richardson_lucy(bic, psf, tuned.best), hr)

    def col(method: str, key: str) -> np.ndarray:
        return np.array([float(rows[s][method][key]) for s in scored])

    cvdm_psnr, cvdm_ssim = col(args.method, "psnr"), col(args.method, "ssim")
    nom_psnr = np.array([nominal[s].psnr for s in scored])
    nom_ssim = np.array([nominal[s].ssim for s in scored])
    print(
        f"{len(scored)} scored pairs, {len(val)} validation pairs; "
        f"nominal-PSF RL: {tuned.best} iterations (tuned)"
    )
    print("| RL PSF | PSNR | SSIM | cvdm PSNR wins | cvdm SSIM wins |")
    print("|---|---|---|---|---|")
    for name, p, s in (
        ("simulation (exact, per image)", col("rl", "psnr"), col("rl", "ssim")),
        ("nominal (in-focus Gaussian from NA, wavelength)", nom_psnr, nom_ssim),
    ):
        print(
            f"| {name} | {p.mean():.2f} | {s.mean():.3f} | "
            f"{np.mean(cvdm_psnr > p):.0%} | {np.mean(cvdm_ssim > s):.0%} |"
        )
    print(f"| ({args.method}) | {cvdm_psnr.mean():.2f} | {cvdm_ssim.mean():.3f} | | |")


if __name__ == "__main__":
    main()
