"""Seam-free tiling of one plane: pure numpy geometry and tapered blending (no torch).

All tile sizes and overlaps are in OUTPUT pixels; ``scale`` is output/input sampling
(2 for cvdm). Geometry of one plane of ``lr_shape = (h, w)`` input pixels:

* the output plane is ``out_shape = (scale*h, scale*w)``;
* a dimension smaller than the tile is reflect-padded (in input pixels, split evenly
  before/after) up to the tile, or only up to a multiple of ``multiple`` output pixels
  when given; that is the only padding. The padded grids are ``padded_lr_shape`` and
  ``padded_out_shape``; the real output sits at ``out_crop`` inside the padded grid;
* tiles of ``tile_shape`` cover the padded output grid exactly; starts are spread evenly,
  snapped to multiples of ``scale``, so neighbours overlap by at least ``overlap`` and the
  last tile ends at the border (edge tiles shift inward; no padding on large planes);
* each tile reads an input window ``lr`` that reaches ``margin_lr`` input pixels past the
  tile wherever the plane allows (windows are shifted inward at borders, so every window
  of a plane has the same size and tiles batch); ``crop`` is where the tile's ``out``
  region lies inside the ``scale``-times upsampled window;
* blending: each tile is weighted by a raised-cosine window that tapers only over the
  overlap with a neighbour (never toward the plane border), and the weighted sums are
  divided by the summed weights. Where exactly two tiles overlap the two ramps are
  sin^2/cos^2 of the same angle, so they already sum to 1.

For MultiDiffusion (``sync`` mode) a sampler keeps one latent of ``padded_out_shape``, cuts
``latent[..., t.out_slices]`` per tile, and after each step writes back
``sum_t w_t * pred_t / weight_sum(plan)`` with ``w_t = tile_weight(plan, t)``; the final
image is ``plan.crop_out(latent)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from cvdm_cli import errors

# --tile default on a CPU or MPS, output pixels: CPU time, not memory, is the limit there
# (smaller tiles add overlap work, larger ones gain nothing); core.devices.default_tile
CPU_TILE = 256

__all__ = [
    "Tile",
    "TilePlan",
    "plan_tiles",
    "tile_seed",
    "tile_weight",
    "tile_weights",
    "weight_sum",
]

Box = tuple[int, int, int, int]  # (y0, y1, x0, x1), half-open


def _slices(box: Box) -> tuple[slice, slice]:
    return slice(box[0], box[1]), slice(box[2], box[3])


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TilePlan`.

    Attributes:
        index: (row, col) in the tile grid.
        out: (y0, y1, x0, x1) on the padded output grid (size = the plan's tile_shape).
        lr: (y0, y1, x0, x1) input window on the padded input plane, margin included.
        crop: (y0, y1, x0, x1) of ``out`` inside the upsampled window
            (shape ``scale * window``), i.e. ``upsample(lr_plane[lr])[crop]`` covers ``out``.
        key: deterministic integer from the tile's position (``y0 << 32 | x0``), for seeding.
        overlaps: (top, bottom, left, right) overlap with neighbours, output pixels (0 at
            the plane border); the window tapers over exactly these.
    """

    index: tuple[int, int]
    out: Box
    lr: Box
    crop: Box
    key: int
    overlaps: tuple[int, int, int, int]

    @property
    def shape(self) -> tuple[int, int]:
        """(tile_h, tile_w) in output pixels."""
        return self.out[1] - self.out[0], self.out[3] - self.out[2]

    @property
    def out_slices(self) -> tuple[slice, slice]:
        return _slices(self.out)

    @property
    def lr_slices(self) -> tuple[slice, slice]:
        return _slices(self.lr)

    @property
    def crop_slices(self) -> tuple[slice, slice]:
        return _slices(self.crop)


@dataclass(frozen=True)
class TilePlan:
    """Tiles of one plane (see the module docstring for the geometry).

    Attributes:
        lr_shape: (h, w) of the input plane.
        scale: output / input sampling.
        tile_shape: (tile_h, tile_w) in output pixels (smaller than the requested tile
            only where ``multiple`` allowed a smaller pad).
        overlap: minimum overlap requested, output pixels.
        margin_lr: context margin, input pixels.
        lr_pad: ((top, bottom), (left, right)) reflect padding, input pixels.
        pad_mode: numpy pad mode for :meth:`pad_lr` ("reflect" by default).
        tiles: row-major tuple of :class:`Tile`; ``grid`` = (rows, cols).
        lr_window: (h, w) of every tile's input window.
    """

    lr_shape: tuple[int, int]
    scale: int
    tile_shape: tuple[int, int]
    overlap: int
    margin_lr: int
    lr_pad: tuple[tuple[int, int], tuple[int, int]]
    pad_mode: str
    tiles: tuple[Tile, ...]
    grid: tuple[int, int]
    lr_window: tuple[int, int]
    _index: dict[tuple[int, int], int] = field(default_factory=dict, repr=False, compare=False)
    _cache: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    @property
    def out_shape(self) -> tuple[int, int]:
        """The real (unpadded) output plane: (scale*h, scale*w)."""
        return self.scale * self.lr_shape[0], self.scale * self.lr_shape[1]

    @property
    def padded_lr_shape(self) -> tuple[int, int]:
        (t, b), (left, r) = self.lr_pad
        return self.lr_shape[0] + t + b, self.lr_shape[1] + left + r

    @property
    def padded_out_shape(self) -> tuple[int, int]:
        """The grid the tiles (and a shared sync-mode latent) live on."""
        h, w = self.padded_lr_shape
        return self.scale * h, self.scale * w

    @property
    def out_crop(self) -> Box:
        """(y0, y1, x0, x1) of the real output plane inside ``padded_out_shape``."""
        s = self.scale
        top, left = self.lr_pad[0][0], self.lr_pad[1][0]
        oh, ow = self.out_shape
        return s * top, s * top + oh, s * left, s * left + ow

    @property
    def padded(self) -> bool:
        return any(p for pair in self.lr_pad for p in pair)

    def pad_lr(self, plane: np.ndarray) -> np.ndarray:
        """(..., h, w) input plane -> (..., *padded_lr_shape) (a view-free copy if padded)."""
        arr = np.asarray(plane)
        if arr.shape[-2:] != self.lr_shape:
            msg = f"plane shape {arr.shape[-2:]} != planned {self.lr_shape}"
            raise ValueError(msg)
        if not self.padded:
            return arr
        pad = [(0, 0)] * (arr.ndim - 2) + [self.lr_pad[0], self.lr_pad[1]]
        return np.pad(arr, pad, mode=self.pad_mode)

    def crop_out(self, arr: np.ndarray) -> np.ndarray:
        """(..., *padded_out_shape) -> (..., *out_shape)."""
        y0, y1, x0, x1 = self.out_crop
        return arr[..., y0:y1, x0:x1]

    def cut_lr(self, padded_lr: np.ndarray, tile: Tile) -> np.ndarray:
        """The input window of ``tile`` from a padded plane (..., *padded_lr_shape)."""
        return padded_lr[(..., *tile.lr_slices)]

    def tile_at(self, row: int, col: int) -> Tile:
        return self.tiles[self._index[(row, col)]]

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def __len__(self) -> int:
        return len(self.tiles)


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, (int, np.integer)):
        return int(v), int(v)
    a, b = v
    return int(a), int(b)


def _starts(length: int, tile: int, overlap: int, scale: int) -> list[int]:
    """Tile starts covering [0, length) with tiles of ``tile`` (all multiples of scale).

    n = ceil((L - o) / (t - o)) tiles; start_i = scale * floor(i (L - t) / (scale (n - 1))),
    so consecutive starts differ by at most t - o (an overlap of at least o) and the
    last tile ends at L.
    """
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    return [(i * (length - tile)) // (scale * (n - 1)) * scale for i in range(n)]


def plan_tiles(
    lr_shape: tuple[int, int],
    *,
    tile: int | tuple[int, int],
    overlap: int,
    scale: int = 2,
    margin_lr: int = 4,
    multiple: int | None = None,
    pad_mode: str = "reflect",
) -> TilePlan:
    """Plan the tiles of an input plane of ``lr_shape`` (sizes in output pixels).

    Args:
        lr_shape: (h, w) of the input plane.
        tile: tile size (or (tile_h, tile_w)) in output pixels, a multiple of ``scale``.
        overlap: minimum overlap between neighbouring tiles, output pixels, a multiple of
            ``scale`` and smaller than the tile.
        scale: output / input sampling.
        margin_lr: input pixels of context around each tile's window (bicubic needs 2).
        multiple: when a dimension is smaller than the tile, pad it only up to a multiple
            of this many output pixels (e.g. the network's size divisor) instead of the
            whole tile; None pads to the whole tile.
        pad_mode: numpy pad mode for the padding ("reflect"; "edge" matches a bicubic
            upsampler's own border handling exactly).

    Raises:
        errors.ConfigError: a size that is not a multiple of ``scale``, or overlap >= tile.
    """
    h, w = (int(v) for v in lr_shape)
    s = int(scale)
    th_req, tw_req = _pair(tile)
    if s < 1:
        raise errors.ConfigError(f"scale must be >= 1, got {scale}")
    if h < 1 or w < 1:
        msg = f"empty plane {lr_shape}"
        raise ValueError(msg)
    for name, v in (("tile", th_req), ("tile", tw_req), ("overlap", overlap)):
        if v % s:
            raise errors.ConfigError(
                f"{name} {v} is not a multiple of the scale factor {s}",
                hint=f"use a {name} divisible by {s}",
            )
    if not 0 <= overlap < min(th_req, tw_req):
        raise errors.ConfigError(
            f"overlap {overlap} must be >= 0 and smaller than the tile {min(th_req, tw_req)}",
            hint="use e.g. --tile 256 --overlap 32",
        )
    if margin_lr < 0:
        msg = f"margin_lr must be >= 0, got {margin_lr}"
        raise ValueError(msg)
    step = s if multiple is None else math.lcm(int(multiple), s)

    dims = []
    for n_lr, t_req in ((h, th_req), (w, tw_req)):
        n_out = s * n_lr
        if n_out >= t_req:
            t, pad = t_req, (0, 0)
        else:  # the only padding: a plane smaller than one tile
            t = t_req if multiple is None else min(t_req, -(-n_out // step) * step)
            need = (t - n_out) // s
            pad = (need // 2, need - need // 2)
        padded_lr = n_lr + pad[0] + pad[1]
        starts = _starts(s * padded_lr, t, overlap, s)
        win = min(t // s + 2 * margin_lr, padded_lr)
        spans = []
        for k, y0 in enumerate(starts):
            ly0 = y0 // s
            wy0 = min(max(ly0 - margin_lr, 0), padded_lr - win)
            c0 = s * (ly0 - wy0)
            before = starts[k - 1] + t - y0 if k > 0 else 0
            after = y0 + t - starts[k + 1] if k + 1 < len(starts) else 0
            spans.append(((y0, y0 + t), (wy0, wy0 + win), (c0, c0 + t), (before, after)))
        dims.append((t, pad, spans, win))

    (th, pad_y, rows, win_y), (tw, pad_x, cols, win_x) = dims
    tiles = []
    index = {}
    for r, (oy, ly, cy, ovy) in enumerate(rows):
        for c, (ox, lx, cx, ovx) in enumerate(cols):
            index[(r, c)] = len(tiles)
            tiles.append(
                Tile(
                    index=(r, c),
                    out=(oy[0], oy[1], ox[0], ox[1]),
                    lr=(ly[0], ly[1], lx[0], lx[1]),
                    crop=(cy[0], cy[1], cx[0], cx[1]),
                    key=(oy[0] << 32) | ox[0],
                    overlaps=(ovy[0], ovy[1], ovx[0], ovx[1]),
                )
            )
    return TilePlan(
        lr_shape=(h, w),
        scale=s,
        tile_shape=(th, tw),
        overlap=int(overlap),
        margin_lr=int(margin_lr),
        lr_pad=(pad_y, pad_x),
        pad_mode=pad_mode,
        tiles=tuple(tiles),
        grid=(len(rows), len(cols)),
        lr_window=(win_y, win_x),
        _index=index,
    )


@lru_cache(maxsize=256)
def _ramp(length: int, before: int, after: int) -> np.ndarray:
    """1D raised-cosine window: sin^2 ramp over ``before`` pixels, cos^2 over ``after``.

    The ramp is sampled at pixel centres ((k + 0.5) / n), so it is > 0 everywhere and two
    complementary ramps over the same n pixels sum to exactly 1.
    """
    w = np.ones(length, dtype=np.float64)
    if before:
        k = np.arange(before)
        w[:before] *= np.sin(0.5 * np.pi * (k + 0.5) / before) ** 2
    if after:
        k = np.arange(after)
        w[length - after :] *= np.cos(0.5 * np.pi * (k + 0.5) / after) ** 2
    w.setflags(write=False)
    return w


@lru_cache(maxsize=64)
def _window(shape: tuple[int, int], overlaps: tuple[int, int, int, int]) -> np.ndarray:
    th, tw = shape
    top, bottom, left, right = overlaps
    wy = _ramp(th, min(top, th), min(bottom, th))
    wx = _ramp(tw, min(left, tw), min(right, tw))
    w = np.outer(wy, wx).astype(np.float32)
    w.setflags(write=False)
    return w


def tile_weight(plan: TilePlan, tile: Tile) -> np.ndarray:
    """(tile_h, tile_w) float32 blending weight of ``tile``: 1 inside, tapering to near 0
    only across overlaps with neighbours (so border pixels keep weight 1). A fresh array."""
    return _window(tile.shape, tile.overlaps).copy()


def tile_weights(plan: TilePlan) -> np.ndarray:
    """(n_tiles, tile_h, tile_w) float32: :func:`tile_weight` of every tile, in plan order
    (ready for ``torch.from_numpy`` in batched blending)."""
    return np.stack([tile_weight(plan, t) for t in plan.tiles])


def _weight_sum(plan: TilePlan) -> np.ndarray:
    cached = plan._cache.get("weight_sum")
    if cached is None:
        acc = np.zeros(plan.padded_out_shape, dtype=np.float64)
        for t in plan.tiles:
            acc[t.out_slices] += _window(t.shape, t.overlaps)
        cached = acc.astype(np.float32)
        cached.setflags(write=False)
        plan._cache["weight_sum"] = cached
    return cached


def weight_sum(plan: TilePlan) -> np.ndarray:
    """(*padded_out_shape) float32: the summed weights (the blend's denominator, > 0)."""
    return _weight_sum(plan).copy()


def tile_seed(seed: int, plane_index: int, tile: Tile) -> int:
    """A 63-bit seed from (seed, plane index, tile position), independent of tile order,
    batch size and device count (for ``torch.Generator().manual_seed``)."""
    y0, x0 = tile.out[0], tile.out[2]
    ss = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(seed) >> 32, plane_index, y0, x0])
    return int(ss.generate_state(1, dtype=np.uint64)[0] & np.uint64(2**63 - 1))
