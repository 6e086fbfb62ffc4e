"""Every command-line option, defined once: its flags, type and help text.

Commands use them as ``samples: SamplesOpt = DEFAULT_ENHANCE.samples``: the default comes
from the settings dataclass that holds it (:class:`cvdm_cli.run.settings.EnhanceSettings`,
:class:`cvdm_cli.sampling.settings.SamplerSettings`), and the bounds of sampling options
are checked there, once, when the command builds its settings (an error names the
option, exit 2). Where a command needs another short flag for the same option (``cvdm
evaluate`` uses ``-n`` for ``--limit``), the variant sits next to the original here.
Documented in docs/cli.md. typer only; no torch.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


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
    int, typer.Option("--samples", "-n", help="Samples per plane (mean and variance).")
]
StepsOpt = Annotated[int, typer.Option("--steps", help="Denoiser steps per sample (fast sampler).")]
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
    int, typer.Option("--overlap", help="Overlap of neighbouring tiles, output pixels.")
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

# --- variants for `cvdm evaluate` (where -n is --limit) ---------------------------------------

EvaluateSamplesOpt = Annotated[
    int, typer.Option("--samples", "-k", help="Samples per image (mean and variance).")
]
EvaluateSeedOpt = Annotated[
    int,
    typer.Option(
        "--seed",
        help="Validation split and sampler noise: every image is sampled as cvdm enhance "
        "--seed samples its file.",
    ),
]
