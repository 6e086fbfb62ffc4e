"""``cvdm train-care``: train the CARE baseline on the pairs cvdm trains on."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import typer

from cvdm_cli.cli.common import run_guarded, stderr, stdout
from cvdm_cli.cli.options import DeviceOpt, QuietOpt, ThreadsOpt


def train_care(
    lr_dir: Path = typer.Option(..., "--lr", help="Folder of low-resolution TIFFs."),
    hr_dir: Path = typer.Option(
        ..., "--hr", help="Folder of high-resolution TIFFs (same names, exactly 2x the LR size)."
    ),
    out: Path = typer.Option(
        ..., "--out", "-o", help="Where to write the CARE weights (.safetensors)."
    ),
    preset: str = typer.Option(
        "small", "--preset", help="CARE U-Net size: tiny (tests) or small (~0.5 M parameters)."
    ),
    steps: int = typer.Option(10_000, "--steps", min=1, help="Total optimisation steps."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Patches per step."),
    patch: int = typer.Option(64, "--patch", min=1, help="LR patch size (HR patch is 2x)."),
    learning_rate: float = typer.Option(4e-4, "--learning-rate", help="Peak AdamW rate."),
    val_fraction: float = typer.Option(
        0.1, "--val-fraction", help="Share of pairs held out and scored at the end."
    ),
    seed: int = typer.Option(0, "--seed", help="Training seed (init, split, patches)."),
    device: DeviceOpt = "auto",
    threads: ThreadsOpt = None,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    quiet: QuietOpt = False,
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Train a CARE U-Net (bicubic input, residual output, L1 loss) as a baseline.

    Same pairs, normalisation (percentiles 1 / 99.8), patches and learning-rate schedule as
    cvdm train. Score it next to cvdm with cvdm evaluate --baseline care:OUT.
    """

    def body() -> None:
        from cvdm_cli.core.devices import set_torch_threads

        set_torch_threads(threads)

        from cvdm_cli.core.care import CareConfig
        from cvdm_cli.core.devices import pick_device
        from cvdm_cli.errors import OutputExistsError
        from cvdm_cli.io.weights import check_weights_path, save_care
        from cvdm_cli.training.care import care_data
        from cvdm_cli.training.care import train_care as run_training

        check_weights_path(out)  # .safetensors only, before any work
        if out.exists() and not overwrite:
            raise OutputExistsError(
                "already exists", path=out, hint="choose another --out, or pass --overwrite"
            )
        config = CareConfig.preset(preset)
        dev = pick_device(device)
        data = care_data(
            lr_dir, hr_dir, config=config, patch=patch, val_fraction=val_fraction, seed=seed
        )
        if not quiet:
            stderr.print(
                f"training CARE {config.name} on {len(data.train)} pairs "
                f"({len(data.val)} held out), device {dev}"
            )
        started = time.time()
        net = _run_with_progress(
            run_training, data, config, steps, batch_size, learning_rate, seed, dev, quiet
        )
        info = {
            "command": shlex.join(["cvdm", *sys.argv[1:]]),
            "data": {"kind": "folders", "lr": str(lr_dir), "hr": str(hr_dir), **data.describe()},
        }
        save_care(net, out, **info)
        summary = {
            "out": str(out),
            "preset": config.name,
            "parameters": net.n_parameters(),
            "steps": steps,
            "seconds": round(time.time() - started, 1),
            "validation": net.info.get("validation", {}),
        }
        if json_out:
            stdout.print(json.dumps(summary), soft_wrap=True)
        elif not quiet:
            val = summary["validation"]
            score = (
                f"; held-out PSNR {val['val_psnr']:.2f} dB, bicubic "
                f"{val['val_psnr_bicubic']:.2f} dB (normalised images)"
                if isinstance(val, dict) and "val_psnr" in val
                else ""
            )
            stderr.print(f"wrote {out} after {steps} steps{score}")

    run_guarded(body)


def _run_with_progress(run_training, data, config, steps, batch_size, lr, seed, dev, quiet):
    from rich.progress import TextColumn

    from cvdm_cli.cli.progress import progress_bar

    loss = TextColumn("{task.fields[loss]}")
    plain_log = not quiet and not stderr.is_terminal
    with progress_bar(disable=quiet, transient=False, extra=[loss]) as progress:
        task = progress.add_task("train CARE", total=steps, loss="")

        def callback(step: int, record: dict[str, float]) -> None:
            if plain_log and step % 50 == 0:
                stderr.print(json.dumps({k: round(v, 6) for k, v in record.items()}))
            progress.update(task, completed=step, loss=f"L1={record['loss']:.4g}")

        return run_training(
            data,
            config=config,
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            seed=seed,
            device=dev,
            callback=callback,
        )


def register(app: typer.Typer) -> None:
    app.command("train-care")(train_care)
