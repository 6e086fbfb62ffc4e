"""LR/HR image pairs on disk: two folders of single-plane TIFFs matched by file stem.

``lr/<stem>.tif`` pairs with ``hr/<stem>.tif`` (``.tif`` or ``.tiff``, any case; hidden
files and sub-folders are ignored). Training (``cvdm train``) and evaluation
(``cvdm evaluate``) read their pairs through :func:`find_pairs` and :func:`read_plane`;
each command keeps its own wording of the errors (``purpose``), the rules are the same.

The rules, in the order they are checked:

1. each folder must exist;
2. the LR folder must hold at least one TIFF;
3. every stem must be in both folders (the error names the unpaired ones);
4. a stem found twice in one folder (``a.tif`` and ``a.tiff``) keeps the first name in
   sorted order (``a.tif``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cvdm_cli.errors import DataError, InputNotFoundError
from cvdm_cli.io.tiff import read_single_plane

__all__ = [
    "PARAMS_FILE",
    "TIFF_SUFFIXES",
    "ImagePair",
    "Purpose",
    "find_pairs",
    "read_plane",
    "refuse_heldout",
    "tiff_files",
]

TIFF_SUFFIXES = (".tif", ".tiff")
PARAMS_FILE = "params.json"  # per-pair parameters next to lr/ and hr/ (cvdm simulate, cvdm heldout)

Purpose = Literal["evaluation", "training"]


@dataclass(frozen=True)
class ImagePair:
    """One LR/HR pair of TIFF files with the same stem."""

    stem: str
    lr: Path
    hr: Path


def tiff_files(folder: Path, *, purpose: Purpose = "evaluation") -> dict[str, Path]:
    """stem -> path of the visible TIFF files directly in ``folder``, sorted by name.

    Raises InputNotFoundError (evaluation: a usage error) or DataError (training) when
    ``folder`` is not a folder.
    """
    if not folder.is_dir():
        if purpose == "training":
            raise DataError("folder not found", path=folder, hint="pass an existing folder")
        raise InputNotFoundError("folder not found", path=folder, hint="check the path")
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES and not p.name.startswith("."):
            found.setdefault(p.stem, p)
    return found


def find_pairs(
    lr_dir: str | os.PathLike[str],
    hr_dir: str | os.PathLike[str],
    *,
    purpose: Purpose = "evaluation",
) -> list[ImagePair]:
    """Pairs of ``lr_dir/<stem>.tif`` and ``hr_dir/<stem>.tif``, sorted by stem.

    Raises DataError when the LR folder has no TIFFs or a stem is in one folder only (see
    the module docstring for the rules), with ``purpose``'s wording.
    """
    lr_dir, hr_dir = Path(lr_dir), Path(hr_dir)
    lr, hr = tiff_files(lr_dir, purpose=purpose), tiff_files(hr_dir, purpose=purpose)
    if not lr:
        if purpose == "training":
            raise DataError("no .tif/.tiff files found", path=lr_dir, hint="check --lr / --hr")
        raise DataError("no .tif files", path=lr_dir, hint="point --lr at the low-res TIFFs")
    only_lr, only_hr = sorted(set(lr) - set(hr)), sorted(set(hr) - set(lr))
    if only_lr or only_hr:
        raise _unpaired(lr, hr, only_lr, only_hr, lr_dir, hr_dir, purpose)
    return [ImagePair(stem, lr[stem], hr[stem]) for stem in sorted(lr)]


def _unpaired(
    lr: dict[str, Path],
    hr: dict[str, Path],
    only_lr: list[str],
    only_hr: list[str],
    lr_dir: Path,
    hr_dir: Path,
    purpose: Purpose,
) -> DataError:
    if purpose == "training":  # counts both sides, names the first unpaired file
        first = lr[only_lr[0]] if only_lr else hr[only_hr[0]]
        return DataError(
            f"unpaired files: {len(only_lr)} in --lr without a match in --hr, "
            f"{len(only_hr)} in --hr without a match in --lr",
            path=first,
            hint="LR and HR files must have the same names",
        )
    side, folder, stems = ("HR", hr_dir, only_lr) if only_lr else ("LR", lr_dir, only_hr)
    shown = ", ".join(stems[:5]) + (", ..." if len(stems) > 5 else "")
    return DataError(
        f"{len(stems)} image(s) without a {side} partner: {shown}",
        path=folder,
        hint="LR and HR files must share file names (stems)",
    )


def read_plane(
    path: str | os.PathLike[str], dtype: Any = np.float64, *, purpose: Purpose = "evaluation"
) -> np.ndarray:
    """The single YX plane of a pair's TIFF as ``dtype`` (default float64; None keeps the
    file's dtype), shape (H, W), in the file's intensity units.

    Raises DataError (several planes: "... {purpose} pairs are 2D images") or
    InvalidPixelsError (NaN or Inf), naming the file, besides the errors of
    :func:`cvdm_cli.io.tiff.open_tiff`.
    """
    return read_single_plane(path, dtype=dtype, purpose=f"{purpose} pairs")


def refuse_heldout(folders: Sequence[str | os.PathLike[str]]) -> None:
    """Raise DataError when a ``params.json`` in one of ``folders`` (or its parent) marks
    a held-out set: training and model selection must never see one."""
    for folder in folders:
        for where in (Path(folder), Path(folder).parent):
            path = where / PARAMS_FILE
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue  # not ours to judge: the pairing reports unreadable data
            if isinstance(data, dict) and data.get("heldout") is True:
                name = (data.get("generator") or {}).get("name", "a held-out generator")
                raise DataError(
                    f"is a held-out test set ({name}); models are never trained on it",
                    path=folder,
                    hint="train on cvdm simulate data (or your own pairs); use this set "
                    "with cvdm evaluate only",
                )
