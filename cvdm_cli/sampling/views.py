"""The eight views of an image under the dihedral group D4 (test-time augmentation).

View v (0..7) rotates by (v mod 4) quarter turns (counter-clockwise, ``torch.rot90`` /
``np.rot90``) and then, for v >= 4, mirrors left-right. ``inverse(forward(a, v), v) == a``
exactly (pure index permutations, no interpolation).

Why: the training pairs are augmented with the same flips and quarter turns and the
simulated optics are isotropic, so the model should give the same posterior for every view
of an input, but a network is only approximately equivariant. With ``tta`` the sampler
draws sample k from view ``k % 8`` and maps it back: the K samples then come from the
eight views' posteriors (a free ensemble of 8: the same number of denoiser passes), so
their mean averages out the orientation-dependent part of the network's error, and their
spread includes the disagreement between views (model error) next to the sampling spread.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import numpy as np

if TYPE_CHECKING:  # torch is imported where a tensor is transformed: CLI start-up stays light
    from torch import Tensor

N_VIEWS = 8
TTA_DEFAULT = True  # enhance, uncertainty and evaluate draw sample k from view k % 8

ArrayT = TypeVar("ArrayT", np.ndarray, "Tensor")


def view_of(sample: int, tta: bool) -> int:
    """The view sample ``sample`` is drawn from: ``sample % 8`` with tta, else 0."""
    return sample % N_VIEWS if tta else 0


def swaps_axes(view: int) -> bool:
    """Whether view ``view`` exchanges the last two axes (odd number of quarter turns)."""
    return view % 2 == 1


def view_shape(shape: tuple[int, int], view: int) -> tuple[int, int]:
    """(H, W) of an image of ``shape`` seen in view ``view``."""
    return (shape[1], shape[0]) if swaps_axes(view) else (shape[0], shape[1])


def forward(a: ArrayT, view: int) -> ArrayT:
    """``a`` (..., H, W) seen in view ``view``: (..., H, W) or (..., W, H)."""
    _check(view)
    if not isinstance(a, np.ndarray):
        import torch

        out = torch.rot90(a, view % 4, dims=(-2, -1))
        return torch.flip(out, dims=(-1,)) if view >= 4 else out
    out = np.rot90(a, view % 4, axes=(-2, -1))
    return np.ascontiguousarray(out[..., ::-1] if view >= 4 else out)


def inverse(a: ArrayT, view: int) -> ArrayT:
    """Undo :func:`forward`: an image in view ``view`` back in the original orientation."""
    _check(view)
    if not isinstance(a, np.ndarray):
        import torch

        out = torch.flip(a, dims=(-1,)) if view >= 4 else a
        return torch.rot90(out, -(view % 4), dims=(-2, -1))
    out = a[..., ::-1] if view >= 4 else a
    return np.ascontiguousarray(np.rot90(out, -(view % 4), axes=(-2, -1)))


def _check(view: int) -> None:
    if not 0 <= view < N_VIEWS:
        raise ValueError(f"view must be in 0..7, got {view}")


__all__ = ["N_VIEWS", "TTA_DEFAULT", "forward", "inverse", "swaps_axes", "view_of", "view_shape"]
