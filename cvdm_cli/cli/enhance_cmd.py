"""``cvdm enhance`` and ``cvdm uncertainty``: files and folders in, 2x outputs out.

Both take their options from ``cvdm_cli.cli.options`` (defaults from
:data:`cvdm_cli.run.settings.DEFAULT_ENHANCE`), build one
:class:`~cvdm_cli.run.settings.EnhanceSettings` (validated there, once) and one
:class:`BatchRequest`, and hand them to :func:`_run`; the work is
:func:`cvdm_cli.run.batch.run_batch` (or the Dask layer). stdout carries only data
(``--json`` lines, the dry-run plan, uncertainty figures); progress bars, notes, errors
and the summary table go to stderr. torch is imported inside the command, never at import
time, so ``cvdm enhance --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.progress import TaskID
from rich.table import Table

from cvdm_cli import errors
from cvdm_cli.cli.common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    debug_enabled,
    run_guarded,
    stderr,
    stdout,
)
from cvdm_cli.cli.options import (
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
)
from cvdm_cli.cli.progress import progress_bar
from cvdm_cli.run.settings import DEFAULT_ENHANCE as D
from cvdm_cli.run.settings import EnhanceSettings

if TYPE_CHECKING:  # pragma: no cover
    from cvdm_cli.core.model import CVDM
    from cvdm_cli.hub.registry import ResolvedModel
    from cvdm_cli.run.batch import BatchResult, FileResult, Reporter
    from cvdm_cli.run.inputs import FileJob


def register(app: typer.Typer) -> None:
    """Mount ``cvdm enhance`` and ``cvdm uncertainty`` on the root app."""
    app.command("enhance")(enhance)
    app.command("uncertainty")(uncertainty)


@dataclass(frozen=True)
class BatchRequest:
    """What a batch command was asked for besides the per-plane settings.

    tile: ``--tile`` as given (None: the device's default, 0: whole planes); the settings
    get the tile actually used once the device is known. precision: ``--precision`` as
    given ("auto" is resolved on the device that runs the model).
    """

    mode: str  # "enhance" or "uncertainty"
    inputs: tuple[Path, ...]
    output: Path | None
    globs: tuple[str, ...] | None
    recursive: bool
    model: str | None
    device: str
    precision: str
    threads: int | None
    tile: int | None
    dry_run: bool
    quiet: bool
    json_out: bool
    cache_dir: Path | None
    workers: int | None = None
    gpus: str | None = None
    scheduler: str | None = None

    @property
    def distributed(self) -> bool:
        return self.workers is not None or self.gpus is not None or self.scheduler is not None


def enhance(
    inputs: InputsArg,
    output: OutputDirOpt = None,
    glob: GlobOpt = None,
    recursive: RecursiveOpt = False,
    model: ModelOpt = None,
    samples: SamplesOpt = D.samples,
    steps: StepsOpt = D.steps,
    sampler: SamplerOpt = SamplerChoice(D.sampler),
    tile: TileOpt = None,
    overlap: OverlapOpt = D.overlap,
    tiling: TilingOpt = TilingChoice(D.tiling),
    batch_size: BatchSizeOpt = D.batch_size,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = PrecisionChoice.auto,
    threads: ThreadsOpt = None,
    seed: SeedOpt = D.seed,
    tta: TtaOpt = D.tta,
    antithetic: AntitheticOpt = D.antithetic,
    passes: PassesOpt = D.passes,
    variance_smoothing: VarianceSmoothingOpt = D.variance_smoothing,
    axes: AxesOpt = D.axes,
    std: StdOpt = False,
    difficulty: Annotated[
        bool,
        typer.Option(
            "--difficulty",
            help="Also write the learned schedule map lambda(x) (_cvdm_difficulty.tif).",
        ),
    ] = D.difficulty,
    save_samples: Annotated[
        bool,
        typer.Option(
            "--save-samples",
            help="Also write every sample, as an extra axis (_cvdm_samples.tif).",
        ),
    ] = D.save_samples,
    replace_nan: ReplaceNanOpt = D.replace_nan,
    overwrite: OverwriteOpt = D.overwrite,
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

    def body() -> None:
        request = BatchRequest(
            "enhance", tuple(inputs), output, tuple(glob) if glob else None, recursive,
            model, device, precision.value, threads, tile, dry_run, quiet, json_out,
            cache_dir, workers, gpus, scheduler,
        )  # fmt: skip
        settings = EnhanceSettings(
            samples=samples, steps=steps, sampler=sampler.value, tile=None, overlap=overlap,
            tiling=tiling.value, batch_size=batch_size, seed=seed, tta=tta,
            antithetic=antithetic, passes=passes, variance_smoothing=variance_smoothing,
            axes=axes, replace_nan=replace_nan, write_mean=True,
            spread="std" if std else "var", difficulty=difficulty, save_samples=save_samples,
            overwrite=overwrite,
        )  # fmt: skip
        _run(request, settings)

    run_guarded(body)


def uncertainty(
    inputs: InputsArg,
    output: OutputDirOpt = None,
    glob: GlobOpt = None,
    recursive: RecursiveOpt = False,
    model: ModelOpt = None,
    samples: SamplesOpt = D.samples,
    steps: StepsOpt = D.steps,
    sampler: SamplerOpt = SamplerChoice(D.sampler),
    tile: TileOpt = None,
    overlap: OverlapOpt = D.overlap,
    tiling: TilingOpt = TilingChoice(D.tiling),
    batch_size: BatchSizeOpt = D.batch_size,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = PrecisionChoice.auto,
    threads: ThreadsOpt = None,
    seed: SeedOpt = D.seed,
    tta: TtaOpt = D.tta,
    antithetic: AntitheticOpt = D.antithetic,
    passes: PassesOpt = D.passes,
    variance_smoothing: VarianceSmoothingOpt = D.variance_smoothing,
    axes: AxesOpt = D.axes,
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
    ] = D.threshold,
    replace_nan: ReplaceNanOpt = D.replace_nan,
    overwrite: OverwriteOpt = D.overwrite,
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

    def body() -> None:
        request = BatchRequest(
            "uncertainty", tuple(inputs), output, tuple(glob) if glob else None, recursive,
            model, device, precision.value, threads, tile, dry_run, quiet, json_out,
            cache_dir, workers, gpus, scheduler,
        )  # fmt: skip
        settings = EnhanceSettings(
            samples=samples, steps=steps, sampler=sampler.value, tile=None, overlap=overlap,
            tiling=tiling.value, batch_size=batch_size, seed=seed, tta=tta,
            antithetic=antithetic, passes=passes, variance_smoothing=variance_smoothing,
            axes=axes, replace_nan=replace_nan, write_mean=False,
            spread="std" if std else "var", difficulty=difficulty, overwrite=overwrite,
            threshold=threshold,
        )  # fmt: skip
        _run(request, settings)

    run_guarded(body)


# --- the shared driver ------------------------------------------------------------------------


def resolve_model(spec: str | None, cache_dir: Path | None, quiet: bool) -> ResolvedModel:
    """--model -> a verified local file (download bar on stderr); notes an unpinned hf://."""
    from cvdm_cli.cli.models_cmd import download_progress
    from cvdm_cli.hub.registry import resolve_model as resolve

    with download_progress(spec or "default model") as callback:
        resolved = resolve(spec, cache_dir=cache_dir, progress=callback)
    pinned = resolved.pinned_spec
    if resolved.source == "hf" and pinned and pinned != spec and not quiet:
        stderr.print(
            f"note: {escape(resolved.name)} resolved to commit {resolved.revision}; pin it"
            f" with --model {escape(pinned)}"
        )
    return resolved


def resolve_tile(
    settings: EnhanceSettings, tile_option: int | None, net: CVDM, device: Any
) -> EnhanceSettings:
    """The settings with the tile this run uses: ``--tile`` as given (0: whole planes) or,
    without it, the device's default (:func:`cvdm_cli.core.devices.default_tile`); the
    same rule for ``cvdm enhance``, ``cvdm uncertainty`` and ``cvdm evaluate``."""
    from cvdm_cli.core.devices import default_tile
    from cvdm_cli.run.plane import check_tiling

    if tile_option is None:
        tile: int | None = default_tile(net, device, items=min(settings.samples, 8))
    else:
        tile = tile_option or None  # --tile 0: whole planes
    resolved = dataclasses.replace(settings, tile=tile)
    check_tiling(resolved, net)
    return resolved


def _jobs(request: BatchRequest) -> list[FileJob]:
    from cvdm_cli.run.inputs import DEFAULT_GLOBS, discover_inputs

    if not request.inputs:
        raise errors.ConfigError("no inputs given", hint="name TIFF files or folders")
    return discover_inputs(
        request.inputs,
        globs=request.globs or DEFAULT_GLOBS,
        recursive=request.recursive,
        output_dir=request.output,
    )


def _run(request: BatchRequest, settings: EnhanceSettings) -> None:
    from cvdm_cli.core.devices import pick_device, pick_precision, set_torch_threads
    from cvdm_cli.run.batch import run_batch
    from cvdm_cli.run.models import get_model
    from cvdm_cli.run.outputs import prepare_output_dir
    from cvdm_cli.run.settings import ModelRef

    set_torch_threads(request.threads)
    if request.distributed:
        if not request.dry_run:
            _run_cluster(request, settings)
            return
        if not (request.quiet or request.json_out):
            stderr.print("note: --dry-run plans on this machine; no Dask cluster is used")
    torch_device = pick_device(request.device)
    settings = dataclasses.replace(
        settings, precision=pick_precision(request.precision, torch_device)
    )
    jobs = _jobs(request)
    resolved = resolve_model(request.model, request.cache_dir, request.quiet or request.json_out)
    ref = ModelRef(
        path=str(resolved.path),
        device=str(torch_device),
        name=resolved.name,
        sha256=resolved.sha256 or "",
    )
    net = get_model(ref)
    settings = resolve_tile(settings, request.tile, net, torch_device)
    if request.output is not None and not request.dry_run:
        prepare_output_dir(request.output)

    reporter = _make_reporter(
        request.mode, quiet=request.quiet, json_out=request.json_out, dry_run=request.dry_run
    )
    with reporter:
        batch = run_batch(jobs, settings, ref, reporter=reporter, dry_run=request.dry_run)
    _finish(batch, mode=request.mode, quiet=request.quiet, json_out=request.json_out)


def _run_cluster(request: BatchRequest, settings: EnhanceSettings) -> None:
    """The batch on Dask workers (cvdm_cli.run.cluster): --workers, --gpus or --scheduler.

    The device, precision and --tile default are resolved on a worker (the client may be a
    login node without a GPU); the client reads only file headers and writes the outputs.
    """
    # importing cluster raises errors.MissingExtraError without the `cluster` extra (exit 2)
    from cvdm_cli.run import cluster
    from cvdm_cli.run.models import get_model
    from cvdm_cli.run.outputs import prepare_output_dir
    from cvdm_cli.run.plane import check_tiling
    from cvdm_cli.run.settings import ModelRef

    options = cluster.cluster_options(
        workers=request.workers,
        gpus=request.gpus,
        scheduler=request.scheduler,
        device=request.device,
    )
    assert options is not None
    jobs = _jobs(request)
    resolved = resolve_model(request.model, request.cache_dir, request.quiet or request.json_out)
    # a CPU copy for the geometry (scale, size divisor): bad --tile values fail before any
    # worker starts
    net = get_model(ModelRef(path=str(resolved.path), device="cpu"))
    if request.tile:
        check_tiling(dataclasses.replace(settings, tile=request.tile), net)
    if request.output is not None:
        prepare_output_dir(request.output)

    def say(message: str) -> None:  # stderr, so also with --json
        if not request.quiet:
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
            device=request.device,
            precision=request.precision,
            tile=request.tile,
            samples=settings.samples,
            notice=say,
        )
        # --tile 0: whole planes
        used = dataclasses.replace(settings, tile=setup.tile or None, precision=setup.precision)
        check_tiling(used, net)
        reporter = _make_reporter(
            request.mode,
            quiet=request.quiet,
            json_out=request.json_out,
            dry_run=False,
            distributed=True,
        )
        with reporter:
            batch = cluster.run_batch_distributed(
                jobs, used, ref, conn.client, reporter=reporter, cluster=conn.describe()
            )
    _finish(batch, mode=request.mode, quiet=request.quiet, json_out=request.json_out)


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
            self.progress = progress_bar(disable=quiet or dry_run)
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
