"""What every command shares: the stderr console, the error table, exit codes, debug mode.

Errors: the library raises :class:`cvdm_cli.errors.CvdmError` subclasses; commands let them
propagate to :func:`run_guarded` (or call :func:`report_error` for per-file failures in a
batch), which prints one red line ``error: <path>: <what> — <what to do>`` and maps the
class to an exit code from :data:`EXIT_CODES`. Tracebacks only with ``--debug`` or
``CVDM_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from cvdm_cli import errors

# Exit codes (documented in docs/cli.md).
EXIT_OK = 0  # everything done or skipped
EXIT_FAILED = 1  # some files failed (batch went on)
EXIT_USAGE = 2  # usage or configuration error before any work
EXIT_INTERRUPTED = 130  # Ctrl-C

# Error class -> exit code when the error stops a command before/without batch work.
# The first matching entry wins (subclasses before their bases).
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (errors.ConfigError, EXIT_USAGE),
    (errors.RegistryError, EXIT_USAGE),
    (errors.UnknownModelError, EXIT_USAGE),
    (errors.UnsafeWeightsFormatError, EXIT_USAGE),
    (errors.MissingExtraError, EXIT_USAGE),
    (errors.DeviceError, EXIT_USAGE),
    (errors.OfflineError, EXIT_USAGE),
    (errors.ChecksumMismatchError, EXIT_USAGE),
    (errors.InputNotFoundError, EXIT_USAGE),
    (errors.OutputExistsError, EXIT_USAGE),
    # `cvdm enhance -o DIR` with DIR not creatable/writable, before any file is processed
    # (during a batch the same error fails one file instead)
    (errors.OutputNotWritableError, EXIT_USAGE),
    (errors.CvdmError, EXIT_FAILED),
)

stderr = Console(stderr=True, highlight=False, soft_wrap=True)
stdout = Console(highlight=False, soft_wrap=True)

T = TypeVar("T")


def debug_enabled() -> bool:
    """True when tracebacks should be shown (``--debug`` sets CVDM_DEBUG=1)."""
    return os.environ.get("CVDM_DEBUG", "") not in ("", "0", "false", "no")


def exit_code_for(exc: BaseException) -> int:
    """The exit code for an error that ends a command."""
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return EXIT_FAILED


def error_line(exc: BaseException) -> str:
    """One line describing ``exc`` for a user (no traceback)."""
    if isinstance(exc, errors.CvdmError):
        return exc.one_line()
    if isinstance(exc, MemoryError):
        return "out of memory — use a smaller --tile or --batch-size"
    if isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror}"
    return f"unexpected {type(exc).__name__}: {exc} — rerun with --debug and report it"


def report_error(exc: BaseException) -> None:
    """Print ``error: ...`` in red on stderr (and the traceback in debug mode)."""
    if debug_enabled():
        stderr.print_exception(show_locals=False)
    stderr.print(f"[bold red]error:[/] {escape(error_line(exc))}")


def run_guarded(func: Callable[[], T]) -> T:
    """Run a command body; map expected errors and Ctrl-C to a message and exit code."""
    try:
        return func()
    except KeyboardInterrupt:
        stderr.print("[yellow]interrupted[/]")
        raise SystemExit(EXIT_INTERRUPTED) from None
    except errors.CvdmError as exc:
        report_error(exc)
        raise SystemExit(exit_code_for(exc)) from None
    except (OSError, MemoryError) as exc:
        report_error(exc)
        raise SystemExit(EXIT_FAILED) from None


def set_debug(debug: bool) -> None:
    """``--debug``: export CVDM_DEBUG so that subprocesses and helpers see it too."""
    if debug:
        os.environ["CVDM_DEBUG"] = "1"


def apply_threads(threads: int | None) -> None:
    """--threads: cap torch's CPU threads in this process and in Dask workers it starts
    (they read CVDM_TORCH_THREADS). For nodes shared with other jobs: oversubscribed
    cores slow small convolutions down far more than proportionally."""
    if threads is None:
        return
    import torch

    torch.set_num_threads(threads)
    os.environ["CVDM_TORCH_THREADS"] = str(threads)


def is_tty() -> bool:
    return sys.stderr.isatty()


# --- options shared by `cvdm enhance` and `cvdm uncertainty` (one definition each) ----------
# Used as ``samples: SamplesOpt = 8``; the default lives in the command signature, the help
# text here. Documented in docs/cli.md.


class SamplerChoice(str, Enum):
    fast = "fast"
    reference = "reference"


class TilingChoice(str, Enum):
    sync = "sync"
    independent = "independent"


class PrecisionChoice(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


InputsArg = Annotated[
    list[Path],
    typer.Argument(help="TIFF files and/or folders (folders: see --glob and --recursive)."),
]
OutputDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--output",
        "-o",
        help="Folder for the outputs (created if needed), keeping the folder layout of the "
        "inputs. Default: next to each input.",
    ),
]
GlobOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--glob",
        "-g",
        help="File pattern for folders, case-insensitive; repeat for several. "
        "Default: *.tif and *.tiff.",
    ),
]
RecursiveOpt = Annotated[
    bool, typer.Option("--recursive", "-r", help="Also search the sub-folders of folders.")
]
ModelOpt = Annotated[
    str | None,
    typer.Option(
        "--model",
        "-m",
        help="Registry name (see `cvdm models list`), .safetensors path, or "
        "hf://owner/repo/file.safetensors\\[@revision]. Default: the registry's default model.",
    ),
]
SamplesOpt = Annotated[
    int, typer.Option("--samples", "-n", min=1, help="Samples per plane (mean and variance).")
]
StepsOpt = Annotated[
    int, typer.Option("--steps", min=1, help="Denoiser steps per sample (fast sampler).")
]
SamplerOpt = Annotated[
    SamplerChoice,
    typer.Option(
        "--sampler",
        case_sensitive=False,
        help="fast (--steps calls) or reference (the paper's T-1 = 199 calls).",
    ),
]
TileOpt = Annotated[
    int | None,
    typer.Option(
        "--tile",
        min=0,
        help="Tile size in output pixels (a multiple of the model's size divisor). "
        "Default: from the device's free memory (256 on a CPU). 0: whole planes.",
        show_default=False,
    ),
]
OverlapOpt = Annotated[
    int, typer.Option("--overlap", min=0, help="Overlap of neighbouring tiles, output pixels.")
]
TilingOpt = Annotated[
    TilingChoice,
    typer.Option(
        "--tiling",
        case_sensitive=False,
        help="sync: tiles share one latent per sample (no seams); independent: each tile "
        "samples on its own (faster to reason about, seams possible).",
    ),
]
BatchSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--batch-size",
        min=1,
        help="Tile-samples per denoiser call. Default: from the device.",
        show_default=False,
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads",
        min=1,
        help="CPU threads for torch (default: torch's choice, usually all cores).",
        show_default=False,
    ),
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps.")
]
PrecisionOpt = Annotated[
    PrecisionChoice,
    typer.Option(
        "--precision",
        case_sensitive=False,
        help="auto = bf16 on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16), else fp32.",
    ),
]
TtaOpt = Annotated[
    bool,
    typer.Option(
        "--tta/--no-tta",
        help="Draw sample k from flip/rotation k % 8 of the input and map it back (test-time "
        "augmentation: the same number of denoiser calls; see docs/sampling.md).",
    ),
]
AntitheticOpt = Annotated[
    bool,
    typer.Option(
        "--antithetic/--no-antithetic",
        help="Draw samples in antithetic pairs: sample 2j+1 uses the negated noise of sample "
        "2j, in the same view (a closer mean for the same denoiser calls; docs/sampling.md).",
    ),
]
PassesOpt = Annotated[
    str | None,
    typer.Option(
        "--passes",
        help="Split the fast sampler's --steps into passes, each restarting from the last "
        "one's sample noised back to t = 1: a count (3) or the steps of each pass (2,2,16), "
        "adding up to --steps; the same denoiser calls. Default: passes of 2 steps (10 for "
        "20 steps); 1 is the paper's single pass (docs/sampling.md).",
        show_default=False,
    ),
]
VarianceSmoothingOpt = Annotated[
    float,
    typer.Option(
        "--variance-smoothing",
        min=0.0,
        help="Gaussian sigma, in output pixels, over which the per-pixel sample variance is "
        "pooled (about one resolution element; 0 = per pixel; docs/sampling.md).",
    ),
]
SeedOpt = Annotated[
    int, typer.Option("--seed", help="Random seed: same seed and settings -> same output.")
]
AxesOpt = Annotated[
    str | None,
    typer.Option(
        "--axes",
        help="Override the file's axes, one letter per dimension, e.g. TZCYX, ZYX, YX.",
        show_default=False,
    ),
]
StdOpt = Annotated[
    bool,
    typer.Option(
        "--std", help="Write the standard deviation (_cvdm_std.tif) instead of the variance."
    ),
]
ReplaceNanOpt = Annotated[
    bool,
    typer.Option(
        "--replace-nan", help="Replace NaN/Inf pixels by the plane's median instead of failing."
    ),
]
OverwriteOpt = Annotated[
    bool,
    typer.Option(
        "--overwrite",
        help="Redo inputs whose outputs exist (default: skip them, so a rerun resumes).",
    ),
]
DryRunOpt = Annotated[
    bool,
    typer.Option(
        "--dry-run",
        help="List inputs, shapes, planes, tiles and an estimated time; write nothing.",
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="Print only errors.")]
JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="One JSON object per file on stdout, then a summary object; nothing else.",
    ),
]
CacheDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--cache-dir",
        help="Hub cache folder (default: $HF_HUB_CACHE, else $HF_HOME/hub, else "
        "~/.cache/huggingface/hub).",
        file_okay=False,
    ),
]

# --- scale-out options (shared by `cvdm enhance` and `cvdm uncertainty`; docs/cluster.md) ---
# Any of them routes the batch to cvdm_cli.run.cluster (Dask, the optional `cluster` extra);
# without them nothing of Dask is imported.

WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        min=1,
        help="Run on a local Dask cluster of N worker processes (one thread each). "
        'Needs the cluster extra: pip install "cvdm-cli[cluster]".',
        show_default=False,
    ),
]
GpusOpt = Annotated[
    str | None,
    typer.Option(
        "--gpus",
        help="One Dask worker per GPU, each pinned to its device: all, or indices such as "
        "0,1. Needs the cluster extra.",
        show_default=False,
    ),
]
SchedulerOpt = Annotated[
    str | None,
    typer.Option(
        "--scheduler",
        help="Run on an existing Dask scheduler: tcp://host:8786 or a scheduler file "
        "(e.g. from dask-jobqueue on SLURM). Workers must see the inputs, outputs and "
        "model on shared storage. Needs the cluster extra.",
        show_default=False,
    ),
]
