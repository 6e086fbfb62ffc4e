"""``cvdm simulate``: write physically based widefield (LR) / SIM (HR) training pairs."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import typer

from cvdm_cli.cli.common import run_guarded, stderr

STRUCTURE_HELP = (
    "Ground truth: filaments, vesicles, reticulum, lines (straight, sparse to dense meshes), "
    "mixed (the first three), broad (all four) or kinds joined by '+' (e.g. vesicles+lines)."
)
RECIPE_HELP = (
    "Parameter draws: v2 (those of cvdm-small-v2's data) or broad (wider signal and "
    "background, thick-sample haze, camera offsets, fixed-pattern noise, hot pixels)."
)
HR_TARGET_HELP = (
    "HR target: sim (SIM image, widefield PSF scaled by 1/2 in 3D) or gaussian "
    "(all-in-focus slab projection, Gaussian of FWHM 0.5 x 0.51 lambda/NA)."
)


def simulate(
    outdir: Path = typer.Argument(..., help="Output folder (gets lr/, hr/ and params.json)."),
    n: int = typer.Option(..., "--n", "-n", help="Number of pairs.", min=1),
    structure: str = typer.Option("mixed", "--structure", "-s", help=STRUCTURE_HELP),
    seed: int = typer.Option(0, "--seed", help="Dataset seed; pair i uses (seed, i)."),
    size: int = typer.Option(256, "--size", help="HR (target) size in pixels; LR is size/2."),
    simple: bool = typer.Option(
        False, "--simple", help="Toy simulator (2D Gaussian PSF, Poisson noise) for comparison."
    ),
    recipe: str = typer.Option("v2", "--recipe", help=RECIPE_HELP),
    hr_target: str = typer.Option("sim", "--hr-target", help=HR_TARGET_HELP),
    na: float | None = typer.Option(None, "--na", help="Fix the numerical aperture."),
    ni: float | None = typer.Option(None, "--ni", help="Fix the immersion refractive index."),
    ns: float | None = typer.Option(None, "--ns", help="Fix the specimen refractive index."),
    emission_nm: float | None = typer.Option(
        None, "--emission-nm", help="Fix the emission wavelength (nm)."
    ),
    pixel_nm: float | None = typer.Option(
        None, "--pixel-nm", help="Fix the widefield pixel size in the sample (nm)."
    ),
    depth_um: float | None = typer.Option(
        None, "--depth-um", help="Fix the slab depth below the coverslip (µm)."
    ),
    defocus_nm: float | None = typer.Option(None, "--defocus-nm", help="Fix the defocus (nm)."),
    photons: float | None = typer.Option(
        None, "--photons", help="Fix the photons per pixel on the brightest structures."
    ),
    photons_range: str | None = typer.Option(
        None,
        "--photons-range",
        help="LOW:HIGH bounds of the drawn photons (log-uniform; default 20:2000, broad 10:5000).",
    ),
    background: float | None = typer.Option(
        None, "--background", help="Fix the background (photons per pixel)."
    ),
    read_noise: float | None = typer.Option(
        None, "--read-noise", help="Fix the camera read noise (e- rms)."
    ),
    gain: float | None = typer.Option(None, "--gain", help="Fix the camera gain (ADU/e-)."),
    offset: float | None = typer.Option(None, "--offset", help="Fix the camera offset (ADU)."),
    workers: int = typer.Option(1, "--workers", "-j", help="Processes (same files for any)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing dataset."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Simulate N widefield/SIM training pairs with randomised optics, camera and signal."""

    def body() -> None:
        from cvdm_cli.training.simulation import check_dataset_options, simulate_dataset

        fixed = {
            "na": na,
            "ni": ni,
            "ns": ns,
            "emission_nm": emission_nm,
            "lr_pixel_nm": pixel_nm,
            "depth_um": depth_um,
            "defocus_nm": defocus_nm,
            "photons": photons,
            "background": background,
            "read_noise_e": read_noise,
            "gain": gain,
            "offset_adu": offset,
        }
        if hr_target != "sim":
            fixed["hr_target"] = hr_target
        if recipe != "v2":
            fixed["recipe"] = recipe
        if photons_range is not None:
            fixed["photons_range"] = parse_photons_range(photons_range)
        check_dataset_options(
            outdir, n, structure=structure, seed=seed, size=size, overwrite=overwrite, **fixed
        )
        args = ["cvdm", "simulate", str(outdir), "--n", str(n), "--structure", structure]
        args += ["--seed", str(seed), "--size", str(size)] + (["--simple"] if simple else [])
        names = {"lr_pixel_nm": "pixel-nm", "read_noise_e": "read-noise", "offset_adu": "offset"}
        for key, value in fixed.items():
            if key == "photons_range":
                args += ["--photons-range", f"{value[0]:g}:{value[1]:g}"]
            elif isinstance(value, str):
                args += [f"--{key.replace('_', '-')}", value]
            elif value is not None:
                args += [f"--{names.get(key, key.replace('_', '-'))}", f"{value:g}"]
        command = shlex.join(args)
        start = time.perf_counter()
        kwargs = dict(
            structure=structure,
            seed=seed,
            size=size,
            simple=simple,
            workers=workers,
            overwrite=overwrite,
            command=command,
            **fixed,
        )
        if quiet:
            simulate_dataset(outdir, n, **kwargs)
        else:
            from cvdm_cli.cli.progress import progress_bar

            with progress_bar(transient=False) as bar:
                task = bar.add_task("simulating", total=n)
                simulate_dataset(
                    outdir, n, progress=lambda done, _t: bar.update(task, completed=done), **kwargs
                )
        if not quiet:
            took = time.perf_counter() - start
            stderr.print(
                f"wrote {n} pairs to {outdir} ({took:.1f} s, {took / n:.2f} s/pair): "
                "lr/*.tif, hr/*.tif, params.json"
            )

    run_guarded(body)


def parse_photons_range(text: str) -> tuple[float, float]:
    """'LOW:HIGH' -> (low, high); ConfigError naming the option on anything else."""
    from cvdm_cli.errors import ConfigError
    from cvdm_cli.training.simulation import check_photons_range

    parts = text.split(":")
    try:
        low, high = (float(v) for v in parts)
    except ValueError:
        msg = f"--photons-range {text!r} is not LOW:HIGH"
        hint = "e.g. --photons-range 10:2000"
        raise ConfigError(msg, path="--photons-range", hint=hint) from None
    return check_photons_range((low, high))


def register(app: typer.Typer) -> None:
    app.command("simulate")(simulate)
