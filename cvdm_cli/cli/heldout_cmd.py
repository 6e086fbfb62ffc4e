"""``cvdm heldout``: write a held-out test set from a generator never used for training."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from cvdm_cli.cli.common import run_guarded, stderr
from cvdm_cli.errors import ConfigError


def heldout(
    outdir: Path = typer.Argument(..., help="Output folder (gets lr/, hr/ and params.json)."),
    n: int = typer.Option(..., "--n", "-n", help="Number of pairs."),
    generator: str = typer.Option(
        "g1",
        "--generator",
        help=(
            "g1: microsim's MatsLines sample, Widefield modality and CMOS camera, end to end; "
            "g3: g1's pairs under haze, uneven illumination or camera column offsets."
        ),
    ),
    seed: int = typer.Option(0, "--seed", help="Set seed; pair i uses (seed, i)."),
    na: float = typer.Option(1.4, "--na", help="Numerical aperture."),
    pixel_nm: float = typer.Option(62.5, "--pixel-nm", help="Widefield pixel at the sample."),
    exposure_ms: str = typer.Option(
        "10,50,300",
        "--exposure-ms",
        help="Camera exposures (ms), cycled over the pairs: dim to bright.",
    ),
    size: int = typer.Option(128, "--size", help="LR side in pixels (HR is twice that)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing set."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Write N test pairs from a held-out generator, for cvdm evaluate only.

    The set is marked held out in params.json: cvdm train refuses it, and no model is
    selected on it (docs/evaluation.md)."""

    def body() -> None:
        from cvdm_cli.cli.progress import progress_bar
        from cvdm_cli.evaluation.heldout import G1Optics, write_heldout_set

        try:
            exposures = tuple(float(x) for x in exposure_ms.split(","))
        except ValueError:
            raise ConfigError(
                f"not a list of numbers: {exposure_ms!r}", path="--exposure-ms", hint="10,50,300"
            ) from None
        optics = G1Optics(na=na, lr_pixel_nm=pixel_nm, exposures_ms=exposures, size=size)
        start = time.perf_counter()
        with progress_bar(disable=quiet, transient=False) as bar:
            task = bar.add_task(f"{generator} pairs", total=n)
            write_heldout_set(
                outdir, n, generator=generator, seed=seed, optics=optics, overwrite=overwrite,
                progress=lambda done, _total: bar.update(task, completed=done),
            )  # fmt: skip
        if not quiet:
            took = time.perf_counter() - start
            stderr.print(f"wrote {n} held-out pairs to {outdir} ({took:.1f} s)")

    run_guarded(body)


def register(app: typer.Typer) -> None:
    app.command("heldout")(heldout)
