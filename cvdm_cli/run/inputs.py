"""Discovering inputs: files and folders -> one :class:`FileJob` per input file."""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cvdm_cli import errors
from cvdm_cli.run.outputs import OUTPUT_SUFFIXES
from cvdm_cli.run.settings import EnhanceSettings

DEFAULT_GLOBS = ("*.tif", "*.tiff")


# --- discovering inputs -----------------------------------------------------------------------


def input_stem(path: Path) -> str:
    """``cell.tif`` -> ``cell``; ``cell.ome.tiff`` -> ``cell``."""
    name = path.name
    lower = name.lower()
    for ext in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if lower.endswith(ext):
            return name[: -len(ext)]
    return path.stem


def is_cvdm_output(path: Path) -> bool:
    """True for files this tool writes (``*_cvdm*.tif``) and their hidden partial files."""
    if path.name.startswith("."):
        return True
    stem = input_stem(path)
    return any(stem.endswith(suffix) for suffix in OUTPUT_SUFFIXES.values())


@dataclass(frozen=True)
class FileJob:
    """One input file and the folder its outputs go to."""

    input: Path
    out_dir: Path

    @property
    def stem(self) -> str:
        return input_stem(self.input)

    def output_path(self, kind: str) -> Path:
        return self.out_dir / f"{self.stem}{OUTPUT_SUFFIXES[kind]}.tif"

    def outputs(self, settings: EnhanceSettings) -> dict[str, Path]:
        return {kind: self.output_path(kind) for kind in settings.output_kinds()}


def _matches(name: str, globs: Sequence[str]) -> bool:
    lower = name.lower()  # case-insensitive: CELL.TIF is a TIFF too
    return any(fnmatch.fnmatchcase(lower, g.lower()) for g in globs)


def _is_within(path: Path, folder: Path | None) -> bool:
    if folder is None:
        return False
    try:
        path.resolve().relative_to(folder)
    except ValueError:
        return False
    return True


def _walk(folder: Path, globs: Sequence[str], recursive: bool, skip: Path | None) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs if not d.startswith(".") and not _is_within(here / d, skip)
        )
        for name in sorted(files, key=lambda n: (n.lower(), n)):
            path = here / name
            if _matches(name, globs) and not is_cvdm_output(path):
                found.append(path)
        if not recursive:
            break
    return found


def discover_inputs(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    globs: Sequence[str] = DEFAULT_GLOBS,
    recursive: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
) -> list[FileJob]:
    """Files and folders -> one :class:`FileJob` per input file, in a stable order.

    A file is taken as given (whatever its name); a folder contributes the files matching
    ``globs`` (case-insensitive; its sub-folders too when ``recursive``), leaving out hidden
    files, this tool's own outputs (``*_cvdm*.tif``) and anything inside ``output_dir``.
    Outputs go next to each input, or under ``output_dir`` keeping the layout relative to
    the folder given (a file given directly goes straight into ``output_dir``).

    Raises errors.InputNotFoundError (a path that does not exist), errors.ConfigError (no
    file found at all, or two inputs that would write the same output file).
    """
    out_root = Path(output_dir).expanduser() if output_dir is not None else None
    skip = out_root.resolve() if out_root is not None else None
    jobs: list[FileJob] = []
    seen: set[Path] = set()
    empty: list[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.exists():
            raise errors.InputNotFoundError(
                "no such file or folder", path=path, hint="check the path and its spelling"
            )
        if path.is_dir():
            files = _walk(path, globs, recursive, skip)
            if not files:
                empty.append(str(path))
            pairs = [(f, f.parent.relative_to(path)) for f in files]
        else:
            pairs = [(path, Path())]
        for file, rel in pairs:
            key = file.resolve()
            if key in seen:
                continue
            seen.add(key)
            out_dir = file.parent if out_root is None else out_root / rel
            jobs.append(FileJob(input=file, out_dir=out_dir))
    if not jobs:
        pattern = " or ".join(globs)
        raise errors.ConfigError(
            f"no input files found (looked for {pattern})",
            path=", ".join(empty) if empty else None,
            hint="pass --recursive for sub-folders, or --glob for other names",
        )
    _check_collisions(jobs)
    return jobs


def _check_collisions(jobs: Sequence[FileJob]) -> None:
    targets: dict[Path, Path] = {}
    for job in jobs:
        for kind in OUTPUT_SUFFIXES:
            target = job.output_path(kind).resolve()
            other = targets.get(target)
            if other is not None and other != job.input:
                raise errors.ConfigError(
                    f"inputs {other} and {job.input} would both write {target.name}",
                    path=target.parent,
                    hint="process them separately, or drop -o so outputs stay next to inputs",
                )
            targets[target] = job.input
    inputs = {job.input.resolve(): job.input for job in jobs}
    for job in jobs:
        for kind in OUTPUT_SUFFIXES:
            target = job.output_path(kind).resolve()
            if target in inputs:
                raise errors.ConfigError(
                    f"output {target.name} of {job.input} is itself an input",
                    path=inputs[target],
                    hint="rename that input (names ending in _cvdm are cvdm outputs)",
                )
