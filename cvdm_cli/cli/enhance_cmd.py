"""``cvdm enhance`` and ``cvdm uncertainty``: files and folders in, 2x outputs out.

Both share one set of option definitions (``cvdm_cli.cli.common``) and one driver
(:func:`_run`); the work is :func:`cvdm_cli.run.run_batch`. stdout carries only data
(``--json`` lines, the dry-run plan, uncertainty figures); progress bars, notes, errors
and the summary table go to stderr. torch is imported inside the command, never at import
time, so ``cvdm enhance --help`` stays fast.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from cvdm_cli import errors
from cvdm_cli.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    AntitheticOpt,
    AxesOpt,
    BatchSizeOpt,
    CacheDirOpt,
    DeviceOpt,
    DryRunOpt,
    GlobOpt,
    GpusOpt,
    InputsArg,
    JsonOpt,
    ModelOpt,
    OutputDirOpt,
    OverlapOpt,
    OverwriteOpt,
    PassesOpt,
    PrecisionChoice,
    PrecisionOpt,
    QuietOpt,
    RecursiveOpt,
    ReplaceNanOpt,
    SamplerChoice,
    SamplerOpt,
    SamplesOpt,
    SchedulerOpt,
    SeedOpt,
    StdOpt,
    StepsOpt,
    ThreadsOpt,
    TileOpt,
    TilingChoice,
    TilingOpt,
    TtaOpt,
    VarianceSmoothingOpt,
    WorkersOpt,
    apply_threads,
    debug_enabled,
    run_guarded,
    stderr,
    stdout,
)
from cvdm_cli.core.variance import DEFAULT_VARIANCE_SMOOTHING
from cvdm_cli.sampling.views import TTA_DEFAULT

if TYPE_CHECKING:  # pragma: no cover
    from cvdm_cli.run.batch import BatchResult, FileResult, Reporter
    from cvdm_cli.run.inputs import FileJob


def register(app: typer.Typer) -> None:
    """Mount ``cvdm enhance`` and ``cvdm uncertainty`` on the root app."""
    app.command("enhance")(enhance)
    app.command("uncertainty")(uncertainty)


def enhance(
    inputs: InputsArg,
    output: OutputDirOpt = None,
    glob: GlobOpt = None,
    recursive: RecursiveOpt = False,
    model: ModelOpt = None,
    samples: SamplesOpt = 8,
    steps: StepsOpt = 20,
    sampler: SamplerOpt = SamplerChoice.fast,
    tile: TileOpt = None,
    overlap: OverlapOpt = 32,
    tiling: TilingOpt = TilingChoice.sync,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = PrecisionChoice.auto,
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    tta: TtaOpt = TTA_DEFAULT,
    antithetic: AntitheticOpt = False,
    passes: PassesOpt = None,
    variance_smoothing: VarianceSmoothingOpt = DEFAULT_VARIANCE_SMOOTHING,
    axes: AxesOpt = None,
    std: StdOpt = False,
    difficulty: Annotated[
        bool,
        typer.Option(
            "--difficulty",
            help="Also write the learned schedule map lambda(x) (_cvdm_difficulty.tif).",
        ),
    ] = False,
    save_samples: Annotated[
        bool,
        typer.Option(
            "--save-samples",
            help="Also write every sample, as an extra axis (_cvdm_samples.tif).",
        ),
    ] = False,
    replace_nan: ReplaceNanOpt = False,
    overwrite: OverwriteOpt = False,
    dry_run: DryRunOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    cache_dir: CacheDirOpt = None,
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    scheduler: SchedulerOpt = None,
) -> None:
    """Super-resolve TIFFs 2x and write a per-pixel uncertainty map beside each.

    <stem>_cvdm.tif (mean of the samples) and <stem>_cvdm_var.tif (their per-pixel
    variance), axes kept, pixel size halved."""
    options = dict(locals())
    run_guarded(lambda: _run("enhance", threshold=None, **options))


def uncertainty(
    inputs: InputsArg,
    output: OutputDirOpt = None,
    glob: GlobOpt = None,
    recursive: RecursiveOpt = False,
    model: ModelOpt = None,
    samples: SamplesOpt = 8,
    steps: StepsOpt = 20,
    sampler: SamplerOpt = SamplerChoice.fast,
    tile: TileOpt = None,
    overlap: OverlapOpt = 32,
    tiling: TilingOpt = TilingChoice.sync,
    batch_size: BatchSizeOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = PrecisionChoice.auto,
    threads: ThreadsOpt = None,
    seed: SeedOpt = 0,
    tta: TtaOpt = TTA_DEFAULT,
    antithetic: AntitheticOpt = False,
    passes: PassesOpt = None,
    variance_smoothing: VarianceSmoothingOpt = DEFAULT_VARIANCE_SMOOTHING,
    axes: AxesOpt = None,
    std: StdOpt = False,
    difficulty: Annotated[
        bool,
        typer.Option(
            "--difficulty/--no-difficulty",
            help="Write the learned schedule map lambda(x) (_cvdm_difficulty.tif).",
        ),
    ] = True,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold",
            help="Report the fraction of pixels whose std (input intensity units) is above this.",
            show_default=False,
        ),
    ] = None,
    replace_nan: ReplaceNanOpt = False,
    overwrite: OverwriteOpt = False,
    dry_run: DryRunOpt = False,
    quiet: QuietOpt = False,
    json_out: JsonOpt = False,
    cache_dir: CacheDirOpt = None,
    workers: WorkersOpt = None,
    gpus: GpusOpt = None,
    scheduler: SchedulerOpt = None,
) -> None:
    """Where can a reconstruction not be trusted? Uncertainty maps only, no image.

    Writes <stem>_cvdm_var.tif (or _cvdm_std.tif) and <stem>_cvdm_difficulty.tif, and
    prints per file the mean and 99th-percentile std in input intensity units."""
    options = dict(locals())
    run_guarded(lambda: _run("uncertainty", save_samples=False, **options))


# --- the shared driver ------------------------------------------------------------------------


def _resolve_model(spec: str | None, cache_dir: Path | None, quiet: bool) -> Any:
    """--model -> a verified local file (download bar on stderr); notes an unpinned hf://."""
    from cvdm_cli.cli.models_cmd import _download_progress
    from cvdm_cli.hub.registry import resolve_model

    with _download_progress(spec or "default model") as callback:
        resolved = resolve_model(spec, cache_dir=cache_dir, progress=callback)
    pinned = resolved.pinned_spec
    if resolved.source == "hf" and pinned and pinned != spec and not quiet:
        stderr.print(
            f"note: {escape(resolved.name)} resolved to commit {resolved.revision}; pin it"
            f" with --model {escape(pinned)}"
        )
    return resolved


def _run(
    mode: str,
    *,
    inputs: list[Path],
    output: Path | None,
    glob: list[str] | None,
    recursive: bool,
    model: str | None,
    samples: int,
    steps: int,
    sampler: SamplerChoice,
    tile: int | None,
    overlap: int,
    tiling: TilingChoice,
    batch_size: int | None,
    device: str,
    precision: PrecisionChoice,
    threads: int | None,
    seed: int,
    tta: bool,
    antithetic: bool,
    passes: str | None,
    variance_smoothing: float,
    axes: str | None,
    std: bool,
    difficulty: bool,
    save_samples: bool,
    threshold: float | None,
    replace_nan: bool,
    overwrite: bool,
    dry_run: bool,
    quiet: bool,
    json_out: bool,
    cache_dir: Path | None,
    workers: int | None = None,
    gpus: str | None = None,
    scheduler: str | None = None,
) -> None:
    from cvdm_cli.core.devices import default_tile, pick_device, pick_precision
    from cvdm_cli.run.batch import run_batch
    from cvdm_cli.run.inputs import DEFAULT_GLOBS, discover_inputs, prepare_output_dir
    from cvdm_cli.run.models import get_model
    from cvdm_cli.run.plane import check_tiling
    from cvdm_cli.run.settings import EnhanceSettings, ModelRef

    if not inputs:
        raise errors.ConfigError("no inputs given", hint="name TIFF files or folders")
    apply_threads(threads)

    def make_settings(tile_used: int | None, precision_used: str) -> EnhanceSettings:
        return EnhanceSettings(
            samples=samples,
            steps=steps,
            sampler=sampler.value,
            tile=tile_used,
            overlap=overlap,
            tiling=tiling.value,
            batch_size=batch_size,
            precision=precision_used,
            seed=seed,
            tta=tta,
            antithetic=antithetic,
            passes=passes,
            variance_smoothing=variance_smoothing,
            axes=axes,
            replace_nan=replace_nan,
            write_mean=mode == "enhance",
            spread="std" if std else "var",
            difficulty=difficulty,
            save_samples=save_samples,
            overwrite=overwrite,
            threshold=threshold,
        )

    if workers is not None or gpus is not None or scheduler is not None:
        if not dry_run:
            _run_cluster(
                mode,
                make_settings,
                inputs=inputs,
                output=output,
                glob=glob,
                recursive=recursive,
                model=model,
                cache_dir=cache_dir,
                device=device,
                precision=precision,
                tile=tile,
                samples=samples,
                quiet=quiet,
                json_out=json_out,
                workers=workers,
                gpus=gpus,
                scheduler=scheduler,
            )
            return
        if not (quiet or json_out):
            stderr.print("note: --dry-run plans on this machine; no Dask cluster is used")
    torch_device = pick_device(device)
    precision_used = pick_precision(precision.value, torch_device)
    jobs = discover_inputs(
        inputs,
        globs=tuple(glob) if glob else DEFAULT_GLOBS,
        recursive=recursive,
        output_dir=output,
    )
    resolved = _resolve_model(model, cache_dir, quiet or json_out)
    ref = ModelRef(
        path=str(resolved.path),
        device=str(torch_device),
        name=resolved.name,
        sha256=resolved.sha256 or "",
    )
    net = get_model(ref)
    if tile is None:
        tile_used: int | None = default_tile(net, torch_device, items=min(samples, 8))
    else:
        tile_used = tile or None  # --tile 0: whole planes
    settings = make_settings(tile_used, precision_used)
    settings.validate()
    check_tiling(settings, net)
    if output is not None and not dry_run:
        prepare_output_dir(output)

    reporter = _make_reporter(mode, quiet=quiet, json_out=json_out, dry_run=dry_run)
    with reporter:
        batch = run_batch(jobs, settings, ref, reporter=reporter, dry_run=dry_run)
    _finish(batch, mode=mode, quiet=quiet, json_out=json_out)


def _run_cluster(
    mode: str,
    make_settings: Callable[[int | None, str], Any],
    *,
    inputs: list[Path],
    output: Path | None,
    glob: list[str] | None,
    recursive: bool,
    model: str | None,
    cache_dir: Path | None,
    device: str,
    precision: PrecisionChoice,
    tile: int | None,
    samples: int,
    quiet: bool,
    json_out: bool,
    workers: int | None,
    gpus: str | None,
    scheduler: str | None,
) -> None:
    """The batch on Dask workers (cvdm_cli.run.cluster): --workers, --gpus or --scheduler.

    The device, precision and --tile default are resolved on a worker (the client may be a
    login node without a GPU); the client reads only file headers and writes the outputs.
    """
    # importing cluster raises errors.MissingExtraError without the `cluster` extra (exit 2)
    from cvdm_cli.run import cluster
    from cvdm_cli.run.inputs import DEFAULT_GLOBS, discover_inputs, prepare_output_dir
    from cvdm_cli.run.models import get_model
    from cvdm_cli.run.plane import check_tiling
    from cvdm_cli.run.settings import ModelRef

    options = cluster.cluster_options(
        workers=workers, gpus=gpus, scheduler=scheduler, device=device
    )
    assert options is not None
    jobs = discover_inputs(
        inputs,
        globs=tuple(glob) if glob else DEFAULT_GLOBS,
        recursive=recursive,
        output_dir=output,
    )
    resolved = _resolve_model(model, cache_dir, quiet or json_out)
    # a CPU copy for the geometry (scale, size divisor): bad --tile values fail before any
    # worker starts
    net = get_model(ModelRef(path=str(resolved.path), device="cpu"))
    if tile:
        check_tiling(make_settings(tile, "fp32"), net)
    if output is not None:
        prepare_output_dir(output)

    def say(message: str) -> None:  # stderr, so also with --json
        if not quiet:
            stderr.print(f"[dim]{escape(message)}[/]")

    with cluster.terminate_as_interrupt(), cluster.connect(options) as conn:
        link = conn.dashboard_link or "-"
        if link != "-" and not conn.dashboard_has_graphs:
            link += " (its graphs need: pip install bokeh)"
        if conn.cluster is not None:
            say(f"started a local Dask cluster ({options.describe()}); dashboard: {link}")
        else:
            say(f"connected to {options.scheduler}; dashboard: {link}")
        ref, setup = cluster.prepare_workers(
            conn.client,
            str(resolved.path),
            name=resolved.name,
            sha256=resolved.sha256 or "",
            device=device,
            precision=precision.value,
            tile=tile,
            samples=samples,
            notice=say,
        )
        settings = make_settings(setup.tile or None, setup.precision)  # --tile 0: whole planes
        settings.validate()
        check_tiling(settings, net)
        reporter = _make_reporter(
            mode, quiet=quiet, json_out=json_out, dry_run=False, distributed=True
        )
        with reporter:
            batch = cluster.run_batch_distributed(
                jobs, settings, ref, conn.client, reporter=reporter, cluster=conn.describe()
            )
    _finish(batch, mode=mode, quiet=quiet, json_out=json_out)


def _make_reporter(
    mode: str, *, quiet: bool, json_out: bool, dry_run: bool, distributed: bool = False
) -> Reporter:
    """distributed: planes of several files complete in any order, so the planes bar
    counts all planes of the batch (growing as files are opened) and there is no
    per-plane sampling bar."""
    from cvdm_cli.run.batch import Reporter

    class RichReporter(Reporter):
        """Progress bars and per-file lines on stderr; JSON lines / figures on stdout."""

        def __init__(self) -> None:
            self.progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=stderr,
                transient=True,
                redirect_stdout=False,  # stdout is for data (--json) only
                redirect_stderr=False,
                disable=quiet or dry_run or not stderr.is_terminal,
            )
            self.files: TaskID | None = None
            self.planes: TaskID | None = None
            self.steps: TaskID | None = None

        def __enter__(self) -> RichReporter:
            self.progress.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self.progress.__exit__(None, None, None)

        def batch_started(self, jobs: Any) -> None:
            self.files = self.progress.add_task("files", total=len(jobs))
            self.planes = self.progress.add_task("planes", total=0 if distributed else None)
            if not distributed:
                self.steps = self.progress.add_task("sampling", total=None)

        def file_started(self, job: FileJob, n_planes: int) -> None:
            if self.planes is not None and distributed:
                total = self.progress.tasks[self.planes].total or 0
                self.progress.update(self.planes, total=total + n_planes)
            elif self.planes is not None:
                name = escape(job.input.name)
                self.progress.reset(self.planes, total=n_planes, description=f"planes {name}")

        def plane_started(self, job: FileJob, index: int, label: str) -> None:
            if self.steps is not None:
                self.progress.reset(self.steps, total=None, description=f"plane {index}")

        def sampling(self, done: int, total: int) -> None:
            if self.steps is not None:
                self.progress.update(self.steps, completed=done, total=total)

        def plane_done(self, job: FileJob, index: int) -> None:
            if self.planes is not None:
                self.progress.advance(self.planes)

        def notice(self, message: str) -> None:
            if not quiet:
                stderr.print(f"[yellow]note:[/] {escape(message)}")

        def file_done(self, result: FileResult) -> None:
            if self.files is not None:
                self.progress.advance(self.files)
            if json_out:
                _emit(result.to_dict())
            _report_file(result, mode=mode, quiet=quiet, json_out=json_out, dry_run=dry_run)

    return RichReporter()


def _emit(obj: dict[str, Any]) -> None:
    """One JSON line on stdout. If the reader went away (``| head -1``), the batch goes on
    and further lines are dropped, rather than failing a file on a broken pipe."""
    try:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _report_file(
    result: FileResult, *, mode: str, quiet: bool, json_out: bool, dry_run: bool
) -> None:
    name = escape(result.input)
    if result.status == "failed":
        if debug_enabled() and result.traceback:
            stderr.print(escape(result.traceback))
        stderr.print(f"[bold red]error:[/] {escape(result.error or 'failed')}")
        return
    if quiet:
        if mode == "uncertainty" and not json_out and result.status == "done":
            stdout.print(_uncertainty_line(result))
        return
    if dry_run:
        if not json_out:
            shape = "x".join(str(n) for n in result.shape or [])
            what = "skip (outputs exist)" if result.status == "skipped" else "process"
            stdout.print(
                f"{name}: {shape} {result.axes}, {result.planes} plane(s), "
                f"{result.tiles} tile(s)/plane, ~{_fmt(result.estimated_seconds)} s: {what}"
            )
        return
    if result.status == "skipped":
        stderr.print(f"[dim]skipped[/] {name}: {escape(result.reason or '')}")
    elif result.status == "interrupted":
        stderr.print(
            f"[yellow]interrupted[/] {name} after {result.planes_done}/{result.planes} "
            "planes: its partial outputs were deleted"
        )
    elif result.status == "done":
        outs = ", ".join(escape(Path(p).name) for p in result.outputs.values())
        stderr.print(f"[green]done[/] {name} -> {outs} ({result.seconds:.1f} s)")
        if mode == "uncertainty" and not json_out:
            stdout.print(_uncertainty_line(result))


def _uncertainty_line(result: FileResult) -> str:
    u = result.uncertainty or {}
    line = (
        f"{escape(result.input)}: std mean {_fmt(u.get('std_mean'))}, "
        f"99th percentile {_fmt(u.get('std_p99'))} (input intensity units)"
    )
    if u.get("fraction_above") is not None:
        line += f"; {100 * u['fraction_above']:.2f}% of pixels above {_fmt(u.get('threshold'))}"
    return line


def _finish(batch: BatchResult, *, mode: str, quiet: bool, json_out: bool) -> None:
    summary = batch.to_dict()
    if json_out:
        _emit(summary)
    if not quiet:
        _print_summary(batch)
    if batch.interrupted:
        stderr.print(
            f"[yellow]interrupted[/]: {batch.count('done')} file(s) completed; no partial "
            "output was kept. Rerun the same command to resume (finished files are skipped)."
        )
        raise typer.Exit(EXIT_INTERRUPTED)
    raise typer.Exit(EXIT_FAILED if batch.failed else EXIT_OK)


def _print_summary(batch: BatchResult) -> None:
    table = Table(title=None, box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    if batch.dry_run:
        table.add_row("would process", str(batch.count("planned")))
        table.add_row("would skip", str(batch.count("skipped")))
        est = _estimate(batch)
        table.add_row("estimated time", f"~{est:.1f} s (from one timed denoiser call)")
    else:
        table.add_row("done", str(batch.count("done")))
        table.add_row("skipped", str(batch.count("skipped")))
    table.add_row("failed", str(len(batch.failed)))
    for failed in batch.failed:
        table.add_row(
            "", f"[red]{escape(Path(failed.input).name)}[/]: {escape(failed.error or '')}"
        )
    if not batch.dry_run:
        table.add_row("total time", f"{batch.seconds:.1f} s")
        rate = batch.megapixels_per_second
        table.add_row(
            "throughput",
            f"{batch.input_megapixels:.3g} input Mpx, "
            + ("-" if rate is None else f"{rate:.3g} Mpx/s"),
        )
    table.add_row("device", f"{batch.device} ({batch.precision})")
    table.add_row("model", escape(batch.model))
    if getattr(batch, "cluster", ""):  # cvdm_cli.run.cluster.ClusterBatchResult
        table.add_row("cluster", escape(batch.cluster))
        for w in getattr(batch, "workers", []):
            rate = w.megapixels_per_second
            table.add_row(
                "",
                f"{escape(w.name)} ({escape(w.host)}): {w.planes} plane(s), {w.tasks} task(s), "
                + ("-" if rate is None else f"{rate:.3g} Mpx/s"),
            )
    stderr.print(table)


def _estimate(batch: BatchResult) -> float:
    return sum(f.estimated_seconds or 0.0 for f in batch.files if f.status == "planned")
