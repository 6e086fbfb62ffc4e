"""``cvdm train``: train a CVDM on paired folders or on freshly simulated pairs."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from cvdm_cli.cli.common import run_guarded, stderr, stdout
from cvdm_cli.cli.options import ThreadsOpt
from cvdm_cli.errors import ConfigError

if TYPE_CHECKING:
    from cvdm_cli.core.model import CVDM


def train(
    out: Path = typer.Option(
        ...,
        "--out",
        "-o",
        help="Where to write the final weights "
        "(.safetensors). The checkpoint goes next to it (.ckpt.safetensors).",
    ),
    lr_dir: Path | None = typer.Option(None, "--lr", help="Folder of low-resolution TIFFs."),
    hr_dir: Path | None = typer.Option(
        None, "--hr", help="Folder of high-resolution TIFFs (same names, exactly 2x the LR size)."
    ),
    simulate: bool = typer.Option(
        False,
        "--simulate",
        help="Train on pairs simulated first with `cvdm simulate` settings (--sim-*).",
    ),
    sim_n: int = typer.Option(1000, "--sim-n", help="Pairs to simulate with --simulate."),
    sim_seed: int = typer.Option(0, "--sim-seed", help="Seed of the simulated pairs."),
    sim_size: int = typer.Option(256, "--sim-size", help="HR size of simulated pairs (pixels)."),
    sim_dir: Path | None = typer.Option(
        None,
        "--sim-dir",
        help="Folder for simulated pairs (default: next to --out). Reused if it exists.",
    ),
    structure: str = typer.Option(
        "mixed",
        "--structure",
        help="Simulated structures: filaments, vesicles, reticulum or mixed.",
    ),
    simple: bool = typer.Option(
        False,
        "--simple",
        help="Use the toy simulator (2D Gaussian PSF) instead of the physically based one.",
    ),
    workers: int = typer.Option(1, "--sim-workers", help="Processes for simulation."),
    preset: str | None = typer.Option(
        None, "--preset", help="Model size: tiny, small, medium, base, paper.  [default: small]"
    ),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Fine-tune: start from these weights (registry name, .safetensors file or "
        "hf://...) instead of a new --preset model.",
    ),
    steps: int = typer.Option(10_000, "--steps", help="Total optimisation steps."),
    batch_size: int = typer.Option(8, "--batch-size", help="Patches per step."),
    patch: int = typer.Option(64, "--patch", help="LR patch size (HR patch is 2x)."),
    learning_rate: float = typer.Option(2e-4, "--learning-rate", help="Peak AdamW rate."),
    warmup: int = typer.Option(200, "--warmup", help="Linear warm-up steps."),
    ema_decay: float = typer.Option(0.999, "--ema", help="EMA decay of exported weights."),
    checkpoint_every: int = typer.Option(
        250, "--checkpoint-every", help="Steps between checkpoints."
    ),
    val_every: int = typer.Option(500, "--val-every", help="Steps between validations (0: never)."),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Held-out share of pairs."),
    val_images: int = typer.Option(
        4, "--val-images", min=0, help="Held-out pairs scored per validation (0: all)."
    ),
    val_samples: int = typer.Option(
        2, "--val-samples", min=1, help="Samples per image in validation (their mean is scored)."
    ),
    seed: int = typer.Option(0, "--seed", help="Training seed (init, patches, noise)."),
    resume: Path | None = typer.Option(
        None, "--resume", help="Continue exactly from a .ckpt.safetensors checkpoint."
    ),
    export_only: bool = typer.Option(
        False,
        "--export-only",
        help="With --resume: only "
        "export the checkpoint's EMA weights to --out (scored "
        "on the held-out pairs).",
    ),
    stop_after: int | None = typer.Option(
        None, "--stop-after", help="Stop (with a checkpoint) after this many steps of this run."
    ),
    terminal_weight: float = typer.Option(
        0.0,
        "--terminal-weight",
        min=0.0,
        help="Extra loss weight on the mean gamma(t_max), the signal the schedule leaves at "
        "the last time (0: the paper's loss; > 0 pulls it to zero so that the reference "
        "sampler starts from the training marginal).",
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N or mps."),
    threads: ThreadsOpt = None,
    precision: str = typer.Option(
        "auto",
        "--precision",
        help="auto (bf16 on CUDA and on CPUs with native bf16), fp32, bf16, fp16.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only errors."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary on stdout."),
) -> None:
    """Train a CVDM (AdamW, warm-up + cosine, EMA, checkpoints, validation PSNR)."""

    def body() -> None:
        from cvdm_cli.core.devices import set_torch_threads

        set_torch_threads(threads)

        from cvdm_cli.core.config import ModelConfig
        from cvdm_cli.core.devices import pick_device
        from cvdm_cli.training.data import PairedData
        from cvdm_cli.training.trainer import TrainConfig
        from cvdm_cli.training.trainer import train as run_training

        if not out.name.endswith(".safetensors"):
            raise ConfigError(
                "--out must end in .safetensors", path=out, hint="e.g. --out my-model.safetensors"
            )
        if export_only:
            _export_only(resume, out, lr_dir, hr_dir, quiet=quiet, json_out=json_out)
            return
        if simulate == (lr_dir is not None or hr_dir is not None):
            raise ConfigError(
                "give either --lr and --hr, or --simulate",
                path="cvdm train",
                hint="see `cvdm train --help`",
            )
        if not simulate and (lr_dir is None or hr_dir is None):
            raise ConfigError(
                "--lr and --hr go together", path="cvdm train", hint="pass both folders"
            )
        dev = pick_device(device)
        cfg = TrainConfig(
            steps=steps,
            batch_size=batch_size,
            patch=patch,
            lr=learning_rate,
            warmup=warmup,
            ema_decay=ema_decay,
            checkpoint_every=checkpoint_every,
            val_every=val_every,
            val_fraction=val_fraction,
            val_images=val_images,
            val_samples=val_samples,
            seed=seed,
            precision=precision,
            terminal_weight=terminal_weight,
        )
        if init is not None and (resume is not None or preset is not None):
            raise ConfigError(
                f"--init cannot be combined with {'--resume' if resume else '--preset'}",
                path="--init",
                hint="the starting weights fix the model size; --resume continues a run "
                "that already started from them",
            )
        data_info: dict[str, object] = {"command": shlex.join(["cvdm", *sys.argv[1:]])}
        init_model = None
        if resume is not None:
            from cvdm_cli.training.trainer import checkpoint_configs

            model_config, _ = checkpoint_configs(resume)  # metadata only; train() loads it
        elif init is not None:
            init_model, data_info["init"] = _load_init(init)
            model_config = init_model.config
        else:
            model_config = ModelConfig.preset(preset or "small")
        if simulate:
            folder = sim_dir or out.with_name(out.name.removesuffix(".safetensors") + ".simdata")
            if not (folder / "params.json").exists():
                _simulate(folder, sim_n, structure, sim_seed, sim_size, simple, workers, quiet)
            data_lr, data_hr = folder / "lr", folder / "hr"
            data_info["data"] = {
                "kind": "simulated",
                "simulator": "simple" if simple else "widefield3d-microsim",
                "structure": structure,
                "n": sim_n,
                "seed": sim_seed,
                "size": sim_size,
            }
        else:
            data_lr, data_hr = lr_dir, hr_dir
            data_info["data"] = {"kind": "folders", "lr": str(lr_dir), "hr": str(hr_dir)}
        data = PairedData.from_folders(
            data_lr, data_hr, config=model_config, patch=patch, val_fraction=val_fraction, seed=seed
        )
        if not quiet:
            stderr.print(
                f"training {model_config.name} on {len(data.train)} pairs "
                f"({len(data.val)} held out), device {dev}"
            )
        started = time.time()
        state = _run_with_progress(
            run_training,
            data,
            model_config,
            cfg,
            out,
            dev,
            resume,
            data_info,
            stop_after,
            quiet,
            init_model,
        )
        summary = {
            "out": str(out),
            "steps": state.step,
            "seconds": round(time.time() - started, 1),
            "last": state.history[-1] if state.history else {},
        }
        if json_out:
            stdout.print(json.dumps(summary), soft_wrap=True)
        elif not quiet:
            stderr.print(f"wrote {out} after step {state.step}")

    run_guarded(body)


def _export_only(
    resume: Path | None,
    out: Path,
    lr_dir: Path | None,
    hr_dir: Path | None,
    *,
    quiet: bool,
    json_out: bool,
) -> None:
    """Write a checkpoint's EMA weights to ``out``; with --lr/--hr, score them first on the
    pairs the run held out (the checkpoint's own split: its seed and validation share)."""
    from cvdm_cli.training.data import PairedData
    from cvdm_cli.training.trainer import checkpoint_configs, export_checkpoint

    if resume is None:
        raise ConfigError(
            "--export-only needs the checkpoint to export",
            path="--export-only",
            hint="add --resume RUN.ckpt.safetensors",
        )
    if (lr_dir is None) != (hr_dir is None):
        raise ConfigError("--lr and --hr go together", path="cvdm train", hint="pass both folders")
    data = None
    if lr_dir is not None and hr_dir is not None:
        model_config, cfg = checkpoint_configs(resume)
        data = PairedData.from_folders(
            lr_dir,
            hr_dir,
            config=model_config,
            patch=cfg.patch,
            val_fraction=cfg.val_fraction,
            seed=cfg.seed,
        )
    export_checkpoint(resume, out, data=data)
    from cvdm_cli.io.weights import read_metadata

    info = json.loads(read_metadata(out)["cvdm.info"])
    summary = {
        "out": str(out),
        "steps": info["training"]["steps"],
        "validation": info.get("validation", {}),
    }
    if json_out:
        stdout.print(json.dumps(summary), soft_wrap=True)
    elif not quiet:
        stderr.print(f"wrote {out} (EMA weights of step {summary['steps']})")


def _simulate(
    folder: Path,
    n: int,
    structure: str,
    seed: int,
    size: int,
    simple: bool,
    workers: int,
    quiet: bool,
) -> None:
    from cvdm_cli.cli.progress import progress_bar
    from cvdm_cli.training.simulation import simulate_dataset

    with progress_bar(disable=quiet) as progress:
        task = progress.add_task("simulating pairs", total=n)
        simulate_dataset(
            folder,
            n,
            structure=structure,
            seed=seed,
            size=size,
            simple=simple,
            workers=workers,
            progress=lambda done, total: progress.update(task, completed=done),
        )


def _load_init(spec: str) -> tuple[CVDM, dict[str, object]]:
    """The weights ``--init`` names, and a record of them for the new model's metadata."""
    from cvdm_cli.hub.registry import resolve_model
    from cvdm_cli.io.weights import load_weights

    resolved = resolve_model(spec)
    model = load_weights(resolved.path)
    training = model.info.get("training", {})
    record = {
        "model": spec,
        "sha256": resolved.sha256,
        "config": model.config.name,
        "steps": training.get("steps") if isinstance(training, dict) else None,
        "data": model.info.get("data"),
    }
    return model, record


def _run_with_progress(
    run_training, data, model_config, cfg, out, dev, resume, info, stop_after, quiet, init_model
):
    from rich.progress import TextColumn

    from cvdm_cli.cli.progress import progress_bar

    terms = TextColumn("{task.fields[terms]}")
    with progress_bar(disable=quiet, transient=False, extra=[terms]) as progress:
        task = progress.add_task("train", total=cfg.steps, terms="")

        plain_log = not quiet and not stderr.is_terminal

        def callback(step: int, record: dict[str, float]) -> None:
            if plain_log and (step % 50 == 0 or "val_psnr" in record):
                stderr.print(json.dumps({k: round(v, 5) for k, v in record.items()}))
            terms = " ".join(
                f"{k}={record[k]:.4g}"
                for k in ("total", "eps", "beta", "prior", "smooth", "terminal")
            )
            if "val_psnr" in record:
                terms += f" val_psnr={record['val_psnr']:.2f}"
            progress.update(task, completed=step, terms=terms)

        return run_training(
            data,
            model_config=model_config,
            cfg=cfg,
            out=out,
            device=dev,
            resume=resume,
            init=init_model,
            info=info,
            callback=callback,
            stop_after=stop_after,
        )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
