"""``cvdm evaluate``: cvdm vs bicubic, Richardson–Lucy and trained baselines (CARE) on
paired LR/HR TIFF folders."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from rich import box
from rich.markup import escape
from rich.table import Table

from cvdm_cli.cli.common import run_guarded, stderr, stdout
from cvdm_cli.cli.options import (
    AntitheticOpt,
    BatchSizeOpt,
    DeviceOpt,
    EvaluateSamplesOpt,
    EvaluateSeedOpt,
    ModelOpt,
    OverlapOpt,
    PassesOpt,
    PrecisionChoice,
    PrecisionOpt,
    QuietOpt,
    StepsOpt,
    ThreadsOpt,
    TileOpt,
    TilingChoice,
    TilingOpt,
    TtaOpt,
    VarianceSmoothingOpt,
)
from cvdm_cli.cli.progress import progress_bar
from cvdm_cli.run.settings import DEFAULT_ENHANCE as D


def evaluate(
    lr: Path = typer.Option(..., "--lr", help="Folder of low-res (widefield) TIFFs."),
    hr: Path = typer.Option(..., "--hr", help="Folder of high-res targets, same file names."),
    model: ModelOpt = None,
    samples: EvaluateSamplesOpt = D.samples,
    steps: StepsOpt = D.steps,
    reference: bool = typer.Option(
        True,
        "--reference/--no-reference",
        help="Also run the paper's sampler (T - 1 network calls per sample).",
    ),
    reference_samples: int = typer.Option(
        2, "--reference-samples", min=1, help="Samples of the reference sampler per image."
    ),
    reference_limit: int | None = typer.Option(
        None, "--reference-limit", min=0, help="Run the reference sampler on N images only."
    ),
    limit: int | None = typer.Option(
        None, "--limit", "-n", min=1, help="Score the first N test images only."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Report folder: metrics.csv, report.json, report.md, PNGs."
    ),
    save_predictions: Path | None = typer.Option(
        None,
        "--save-predictions",
        help="Also write each scored image's <stem>_cvdm.tif and <stem>_cvdm_var.tif into "
        "this folder: the files cvdm enhance writes for that LR file with the same model, "
        "seed and sampler settings.",
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a report in --out (and predictions)."
    ),
    figures: bool = typer.Option(True, "--figures/--no-figures", help="PNG figures (matplotlib)."),
    psf: Path | None = typer.Option(
        None, "--psf", help="PSF TIFF for Richardson–Lucy, sampled at the output pixel size."
    ),
    psf_sigma_nm: float | None = typer.Option(
        None, "--psf-sigma-nm", help="Use a Gaussian PSF of this sigma (nm) for Richardson–Lucy."
    ),
    rl_iterations: int | None = typer.Option(
        None,
        "--rl-iterations",
        min=1,
        help="Fix the Richardson–Lucy iterations (default: tuned on a validation split).",
    ),
    val_fraction: float = typer.Option(
        0.25, "--val-fraction", help="Share of pairs held out to tune Richardson–Lucy."
    ),
    baseline: list[str] | None = typer.Option(
        None,
        "--baseline",
        help="A trained baseline to score next to cvdm, care:PATH.safetensors (from cvdm "
        "train-care); repeat for several (rows care, care2, ...).",
    ),
    seed: EvaluateSeedOpt = D.seed,
    sampler_seed: int | None = typer.Option(
        None,
        "--sampler-seed",
        help="Sampler noise only (same split and baselines; default: --seed): rescore with "
        "other draws to see how much the cvdm scores move with the samples.",
    ),
    tta: TtaOpt = D.tta,
    antithetic: AntitheticOpt = D.antithetic,
    passes: PassesOpt = D.passes,
    variance_smoothing: VarianceSmoothingOpt = D.variance_smoothing,
    tile: TileOpt = None,
    overlap: OverlapOpt = D.overlap,
    tiling: TilingOpt = TilingChoice(D.tiling),
    batch_size: BatchSizeOpt = D.batch_size,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = PrecisionChoice.auto,
    threads: ThreadsOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
    quiet: QuietOpt = False,
) -> None:
    """Score cvdm against bicubic, Richardson–Lucy (and CARE): PSNR, SSIM, NRMSE, uncertainty.

    Pairs lr/<name>.tif with hr/<name>.tif (HR exactly 2x the LR). Metrics follow CSBDeep's
    fair comparison (percentile-normalised target, least-squares scale and offset). cvdm is
    sampled exactly as cvdm enhance samples each LR file (same settings, seed and tiles).
    """

    def body() -> None:
        from cvdm_cli.cli.enhance_cmd import resolve_model, resolve_tile
        from cvdm_cli.core.devices import pick_device, pick_precision, set_torch_threads
        from cvdm_cli.evaluation.evaluate import evaluate as run_evaluation
        from cvdm_cli.io.weights import load_weights
        from cvdm_cli.run.settings import EnhanceSettings

        set_torch_threads(threads)
        dev = pick_device(device)
        resolved = resolve_model(model, None, quiet=quiet or as_json)
        net = load_weights(resolved.path, device=dev)
        # the tile and precision cvdm enhance would use on this device, by the same rules
        sampling = EnhanceSettings(
            samples=samples, steps=steps, tile=None, overlap=overlap, tiling=tiling.value,
            batch_size=batch_size, precision=pick_precision(precision.value, dev),
        )  # fmt: skip
        sampling = resolve_tile(sampling, tile, net, dev)
        start = time.perf_counter()
        with _ProgressBar(disabled=quiet) as bar:
            report = run_evaluation(
                net,
                lr,
                hr,
                samples=samples,
                steps=steps,
                samplers=("fast", "reference") if reference else ("fast",),
                reference_samples=reference_samples,
                reference_limit=reference_limit,
                limit=limit,
                out_dir=out,
                overwrite=overwrite,
                figures=figures,
                val_fraction=val_fraction,
                rl_iterations=rl_iterations,
                psf=psf,
                psf_sigma_nm=psf_sigma_nm,
                seed=seed,
                sampler_seed=sampler_seed,
                tta=tta,
                antithetic=antithetic,
                passes=passes,
                variance_smoothing=variance_smoothing,
                tile=sampling.tile,
                overlap=sampling.overlap,
                tiling=sampling.tiling,
                batch_size=sampling.batch_size,
                device=str(dev),
                precision=sampling.precision,
                save_predictions=save_predictions,
                model_name=resolved.name,
                model_sha256=resolved.sha256 or "",
                model_source=str(resolved.path),
                extra_baselines=baseline or (),
                progress=bar.update,
            )
        for notice in report.notices:
            stderr.print(f"[yellow]note:[/] {escape(notice)}")
        if as_json:
            stdout.print_json(json.dumps(report.to_dict()))
        elif not quiet:
            for table in _tables(report):
                stdout.print(table)
        if not quiet:
            took = time.perf_counter() - start
            where = f"; wrote {escape(str(out))}" if out is not None else ""
            stderr.print(f"evaluated {report.settings['n_scored']} image(s) in {took:.0f} s{where}")

    run_guarded(body)


class _ProgressBar:
    """rich bars on stderr for the "tune-rl" and "evaluate" events of
    cvdm_cli.evaluation.evaluate."""

    def __init__(self, disabled: bool) -> None:
        self.progress = progress_bar("percent", disable=disabled)
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _ProgressBar:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def update(self, event: Any) -> None:
        label = "tuning RL" if event.task == "tune-rl" else "evaluating"
        if event.task not in self.tasks:
            self.tasks[event.task] = self.progress.add_task(label, total=event.total)
        self.progress.update(
            self.tasks[event.task],
            completed=event.done,
            total=event.total,
            description=f"{label} [dim]{escape(event.detail)}[/]",
        )


def _f(v: float | None, d: int = 3) -> str:
    return "–" if v is None or v != v else f"{v:.{d}f}"


def _tables(report: Any) -> list[Table]:
    """Image quality per method (mean over images) and uncertainty quality of cvdm."""
    n = report.settings["n_scored"]
    quality = Table(title=f"{n} image(s), mean; CSBDeep fair comparison", box=box.SIMPLE_HEAD)
    quality.add_column("method", no_wrap=True)
    # the baselines: bicubic, RL, then the trained ones (care, care2, ...) that were run
    trained = [m for m in report.summary if m not in ("bicubic", "rl")]
    bases = ["bicubic", "rl", *(m for m in trained if not m.startswith("cvdm"))]
    for col in ("PSNR dB", "SSIM", "NRMSE"):
        quality.add_column(col, justify="right", no_wrap=True)
    for b in bases:
        quality.add_column(f"beats {'RL' if b == 'rl' else b}", justify="right", no_wrap=True)
    for method, s in report.summary.items():
        wins = report.wins.get(method, {})
        beats = [
            f"{wins[b]['psnr_win_fraction']:.0%} / {wins[b]['ssim_win_fraction']:.0%}"
            if b in wins
            else "–"
            for b in bases
        ]
        mean = s["mean"]
        quality.add_row(method, _f(mean["psnr"], 2), _f(mean["ssim"]), _f(mean["nrmse"], 4), *beats)
    quality.caption = "beats: share of images where cvdm has the higher PSNR / SSIM"

    unc = Table(title="uncertainty (std of the samples vs the error)", box=box.SIMPLE_HEAD)
    unc.add_column("method", no_wrap=True)
    for col in ("Spearman (calib.)", "cov. 50% (calib.)", "cov. 90% (calib.)", "AUSE"):
        unc.add_column(col, justify="right", no_wrap=True)
    for method, s in report.summary.items():
        if "calibrated" not in s:
            continue
        mean, cal = s["mean"], s["calibrated"]
        unc.add_row(
            method,
            f"{_f(mean['spearman'])} ({_f(mean.get('calibrated_spearman'))})",
            f"{_f(mean['coverage50'])} ({_f(cal['coverage50'])})",
            f"{_f(mean['coverage90'])} ({_f(cal['coverage90'])})",
            _f(mean["ause"], 4),
        )
    return [quality, unc] if unc.row_count else [quality]


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
