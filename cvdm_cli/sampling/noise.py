"""Noise for the samplers: one generator per item, so noise never depends on batching.

Antithetic pairs (:func:`noise_mate`) and test-time-augmentation views (:func:`sample_view`)
are decided here too, per sample index, so every driver draws them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from cvdm_cli.sampling import views


class NoiseSource:
    """One CPU generator per item (image-sample), so noise does not depend on batching.

    ``seeds``: one int per item. ``draw(items, shape)`` returns (len(items), *shape) float32
    noise, each row the next draw of that item's generator.
    """

    def __init__(self, seeds: Sequence[int], signs: Sequence[float] | None = None) -> None:
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
        self.signs = list(signs) if signs is not None else [1.0] * len(self.generators)

    def draw(self, items: Sequence[int], shape: tuple[int, ...], device: torch.device) -> Tensor:
        rows = [self.signs[i] * torch.randn(shape, generator=self.generators[i]) for i in items]
        return torch.stack(rows).to(device)


def noise_mate(sample: int, antithetic: bool) -> tuple[int, float]:
    """(the sample whose noise stream ``sample`` draws, its sign).

    Antithetic pairs: sample 2j + 1 replays sample 2j's noise negated (initial and
    ancestral noise), so the pair's sampling errors partly cancel in the mean (docs/
    sampling.md); an odd last sample stays independent. Otherwise every sample its own.
    """
    if antithetic and sample % 2:
        return sample - 1, -1.0
    return sample, 1.0


def sample_view(sample: int, tta: bool, antithetic: bool) -> int:
    """The view sample ``sample`` is drawn from: k % 8 with TTA; with antithetic pairs the
    two mates share view (k // 2) % 8, so their opposite noises stay aligned."""
    return views.view_of(sample // 2 if antithetic else sample, tta)


def item_seeds(generator: torch.Generator | None, count: int) -> list[int]:
    """``count`` 63-bit seeds drawn from ``generator`` (a fresh random one if None)."""
    if generator is None:
        generator = torch.Generator().manual_seed(int(torch.seed()) % (2**63))
    return torch.randint(0, 2**62, (count,), generator=generator).tolist()


def draw_seed(seed: int, plane_index: int, key: int, sample: int) -> int:
    """The seed of one noise stream: a hash of (seed, plane index, key, sample), so a
    draw does not depend on batching, tile order or the number of devices. key: -1 (as
    uint32) for a whole-plane latent (sync tiling), a tile's key for a tile."""
    ss = np.random.SeedSequence(
        [
            int(seed) & 0xFFFFFFFF,
            int(seed) >> 32,
            int(plane_index),
            int(key) & 0xFFFFFFFF,
            int(key) >> 32,
            int(sample),
            0x5A,
        ]
    )
    return int(ss.generate_state(1, dtype=np.uint64)[0] & np.uint64(2**63 - 1))


def plane_noise(
    seed: int, plane_index: int, draws: Sequence[tuple[int, int]], *, antithetic: bool
) -> NoiseSource:
    """Noise streams for (key, sample) draws of one plane; an antithetic mate replays its
    partner's stream negated (:func:`noise_mate`)."""
    mates = [(key, *noise_mate(k, antithetic)) for key, k in draws]
    return NoiseSource(
        [draw_seed(seed, plane_index, key, m) for key, m, _ in mates],
        [sign for _, _, sign in mates],
    )
