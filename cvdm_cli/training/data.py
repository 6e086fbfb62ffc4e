"""Training data: LR/HR pairs, normalised once, cut into aligned random patches.

A pair is two 2D images, LR (h, w) and HR (scale*h, scale*w), each normalised on its own by
percentiles (``config.norm_low``, ``config.norm_high``, default 1 and 99.8) to [-1, 1],
exactly as at inference. The condition x (bicubic upsampling of the whole normalised LR
image to the HR grid) is computed once per image, so the random patches of x and y are
cut from the same place and match whole-image inference (no patch-border effects of the
upsampling).

Pairs come from two folders matched by file stem (:func:`cvdm_cli.io.pairs.find_pairs`,
with the training wording of its errors) or are built in memory with :func:`make_pair`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cvdm_cli.core.config import ModelConfig
from cvdm_cli.core.normalize import percentile_normalize
from cvdm_cli.errors import DataError
from cvdm_cli.io.pairs import find_pairs, read_plane, refuse_heldout

__all__ = ["Pair", "PairedData", "make_pair", "pair_files", "read_image"]


def read_image(path: Path) -> np.ndarray:
    """The single YX plane of a training TIFF as float32 (H, W), in the file's units."""
    return read_plane(path, np.float32, purpose="training")


def pair_files(lr_dir: Path, hr_dir: Path) -> list[tuple[Path, Path]]:
    """(LR, HR) paths matched by stem: :func:`cvdm_cli.io.pairs.find_pairs` as tuples.

    Kept for one release (``cvdm_cli.trainer.pair_files``); new code calls ``find_pairs``.
    """
    return [(p.lr, p.hr) for p in find_pairs(lr_dir, hr_dir, purpose="training")]


@dataclass
class Pair:
    """One normalised pair on the output grid: x (1,H,W) condition, y (1,H,W) target."""

    name: str
    lowres: Tensor  # (1, h, w) normalised LR
    x: Tensor
    y: Tensor


class PairedData:
    """All pairs in memory (normalised), split into train and validation.

    The split is a permutation of ``seed``: ``max(1, round(val_fraction * n))`` pairs held
    out (none when ``val_fraction`` is 0), the rest trained on.
    """

    def __init__(
        self, pairs: Sequence[Pair], *, val_fraction: float, patch: int, scale: int, seed: int = 0
    ) -> None:
        if len(pairs) < 2:
            raise DataError(
                f"need at least 2 image pairs, found {len(pairs)}",
                hint="add more pairs or simulate them with `cvdm simulate`",
            )
        order = np.random.default_rng(seed).permutation(len(pairs))
        n_val = max(1, round(val_fraction * len(pairs))) if val_fraction > 0 else 0
        self.val = [pairs[i] for i in order[:n_val]]
        self.train = [pairs[i] for i in order[n_val:]]
        self.patch, self.scale = patch, scale

    @classmethod
    def from_folders(
        cls,
        lr_dir: Path,
        hr_dir: Path,
        *,
        config: ModelConfig,
        patch: int,
        val_fraction: float,
        seed: int = 0,
    ) -> PairedData:
        """Read every pair of ``lr_dir`` / ``hr_dir`` (matched by stem) into memory.

        Refuses a held-out test set (errors.DataError): no model trains on one.
        """
        refuse_heldout([lr_dir, hr_dir])
        pairs = []
        for found in find_pairs(lr_dir, hr_dir, purpose="training"):
            lr, hr = read_image(found.lr), read_image(found.hr)
            pairs.append(
                make_pair(found.lr.stem, lr, hr, config=config, patch=patch, lr_path=found.lr)
            )
        return cls(pairs, val_fraction=val_fraction, patch=patch, scale=config.scale, seed=seed)

    def batch(self, rng: np.random.Generator, size: int) -> tuple[Tensor, Tensor]:
        """Random aligned patches with random flips / 90-degree rotations: (B,1,P,P) x 2."""
        hp = self.patch * self.scale
        xs, ys = [], []
        for _ in range(size):
            pair = self.train[int(rng.integers(len(self.train)))]
            h, w = pair.y.shape[-2:]
            # Patch corners on the LR grid, so x and y patches stay aligned with the LR pixels.
            i = int(rng.integers(0, (h - hp) // self.scale + 1)) * self.scale
            j = int(rng.integers(0, (w - hp) // self.scale + 1)) * self.scale
            x = pair.x[:, i : i + hp, j : j + hp]
            y = pair.y[:, i : i + hp, j : j + hp]
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
            x, y = torch.rot90(x, k, (1, 2)), torch.rot90(y, k, (1, 2))
            if flip:
                x, y = x.flip(-1), y.flip(-1)
            xs.append(x)
            ys.append(y)
        return torch.stack(xs), torch.stack(ys)

    def describe(self) -> dict[str, Any]:
        return {"train_pairs": len(self.train), "val_pairs": len(self.val), "patch_lr": self.patch}


def make_pair(
    name: str,
    lr: np.ndarray,
    hr: np.ndarray,
    *,
    config: ModelConfig,
    patch: int,
    lr_path: Path | None = None,
) -> Pair:
    """Check shapes, normalise both images, and precompute the condition x.

    lr: (h, w), hr: (scale*h, scale*w), any intensity units; ``patch`` is the LR patch side
    the images must at least have.
    """
    s = config.scale
    if hr.shape != (lr.shape[0] * s, lr.shape[1] * s):
        raise DataError(
            f"HR shape {hr.shape} is not exactly {s}x the LR shape {lr.shape}",
            path=lr_path or name,
            hint=f"HR images must be {s}x the LR size in Y and X",
        )
    if min(lr.shape) < patch:
        raise DataError(
            f"image {lr.shape} is smaller than the training patch {patch}",
            path=lr_path or name,
            hint="use a smaller --patch or larger images",
        )
    lr_n, _ = percentile_normalize(lr, config.norm_low, config.norm_high, plane_label=name)
    hr_n, _ = percentile_normalize(hr, config.norm_low, config.norm_high, plane_label=name)
    lowres = torch.from_numpy(np.ascontiguousarray(lr_n))[None]
    x = F.interpolate(lowres[None], scale_factor=float(s), mode="bicubic", align_corners=False)[0]
    y = torch.from_numpy(np.ascontiguousarray(hr_n))[None]
    return Pair(name=name, lowres=lowres, x=x, y=y)
