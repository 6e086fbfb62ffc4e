"""cvdm_cli.core.tiling: exact coverage, margins, tapered weights, and tiled == untiled for a
linear model (torch bicubic x2, the same upsampler the CVDM condition uses)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from cvdm_cli import errors
from cvdm_cli.core.tiling import (
    plan_tiles,
    tile_seed,
    tile_weight,
    tile_weights,
    weight_sum,
)

torch = pytest.importorskip("torch")
F = torch.nn.functional


def bicubic(lr: np.ndarray, scale: int = 2) -> np.ndarray:
    """(h, w) -> (scale*h, scale*w), float64, like CVDM.condition."""
    t = torch.from_numpy(np.ascontiguousarray(lr, dtype=np.float64))[None, None]
    up = F.interpolate(t, scale_factor=scale, mode="bicubic", align_corners=False)
    return up[0, 0].numpy()


def stitch(plan, values) -> np.ndarray:
    """The tapered blend sum_t w_t v_t / sum_t w_t (what the sampling driver does in torch),
    from the plan's public weights, cropped to the real plane."""
    acc = np.zeros(plan.padded_out_shape)
    for t, w, v in zip(plan.tiles, tile_weights(plan), values, strict=True):
        acc[t.out_slices] += w * v
    return plan.crop_out(acc / weight_sum(plan))


def run_tiled(lr: np.ndarray, plan) -> np.ndarray:
    padded = plan.pad_lr(lr)
    values = []
    for t in plan:
        window = plan.cut_lr(padded, t)
        assert window.shape == plan.lr_window
        values.append(bicubic(window, plan.scale)[t.crop_slices])
    return stitch(plan, values)


CASES = [
    # (lr_shape, tile, overlap, multiple): sizes not divisible by the tile, planes smaller
    # than a tile in one or both dimensions, overlaps from 0 to half a tile
    ((37, 53), 32, 8, None),
    ((100, 70), 64, 16, None),
    ((64, 64), 64, 32, None),
    ((65, 129), 48, 16, None),
    ((33, 200), 64, 32, None),
    ((50, 50), 32, 0, None),
    ((10, 13), 64, 16, 2),  # smaller than a tile, padded to a multiple of 2: no padding
    ((9, 300), 64, 16, 2),  # smaller in Y only
]
# planes smaller than the tile that do get reflect padding (to the tile or a multiple)
PADDED = [
    ((10, 13), 64, 16, None),
    ((9, 300), 64, 16, 8),
    ((31, 17), 40, 8, 16),
    ((5, 5), 32, 8, None),  # padding larger than the plane: numpy reflects repeatedly
]


@pytest.mark.parametrize(("shape", "tile", "overlap", "multiple"), CASES)
def test_tiled_bicubic_equals_untiled(shape, tile, overlap, multiple):
    rng = np.random.default_rng(sum(shape))
    lr = rng.random(shape)
    plan = plan_tiles(shape, tile=tile, overlap=overlap, multiple=multiple)
    out = run_tiled(lr, plan)
    ref = bicubic(lr)
    assert out.shape == ref.shape == plan.out_shape
    np.testing.assert_allclose(out, ref, atol=1e-5, rtol=0)


def test_small_plane_padding_geometry():
    """Default: a dimension smaller than the tile is reflect-padded to the whole tile."""
    rng = np.random.default_rng(5)
    lr = rng.random((10, 13))
    plan = plan_tiles(lr.shape, tile=64, overlap=16)
    assert plan.tile_shape == (64, 64) and plan.grid == (1, 1)
    assert plan.lr_pad == ((11, 11), (9, 10))
    assert plan.padded_lr_shape == (32, 32) and plan.padded_out_shape == (64, 64)
    assert plan.out_crop == (22, 42, 18, 44)
    padded = plan.pad_lr(lr)
    np.testing.assert_array_equal(padded[11:21, 9:22], lr)
    np.testing.assert_array_equal(padded[11:21, 8], lr[:, 1])  # reflect, not edge
    np.testing.assert_array_equal(padded[10, 9:22], lr[1])
    small = plan_tiles(lr.shape, tile=64, overlap=16, multiple=8)
    assert small.tile_shape == (24, 32) and small.lr_pad == ((1, 1), (1, 2))


@pytest.mark.parametrize(("shape", "tile", "overlap", "multiple"), PADDED)
def test_padded_small_planes(shape, tile, overlap, multiple):
    rng = np.random.default_rng(sum(shape))
    lr = rng.random(shape)
    plan = plan_tiles(shape, tile=tile, overlap=overlap, multiple=multiple)
    assert plan.padded
    out = run_tiled(lr, plan)
    # exactly the model on the padded plane, cropped
    padded = plan.pad_lr(lr)
    np.testing.assert_allclose(out, plan.crop_out(bicubic(padded)), atol=1e-6)
    # reflected content differs from bicubic's own border clamp only near the border
    ref = bicubic(lr)
    np.testing.assert_allclose(out[3:-3, 3:-3], ref[3:-3, 3:-3], atol=1e-5)
    # edge padding reproduces that clamp: tiled == untiled everywhere, so the geometry
    # (padding, crop, windows, blending) is exact and only the pad content differs
    edge = plan_tiles(shape, tile=tile, overlap=overlap, multiple=multiple, pad_mode="edge")
    np.testing.assert_allclose(run_tiled(lr, edge), ref, atol=1e-5)


@pytest.mark.parametrize(("shape", "tile", "overlap", "multiple"), CASES + PADDED)
def test_geometry_invariants(shape, tile, overlap, multiple):
    plan = plan_tiles(shape, tile=tile, overlap=overlap, multiple=multiple, margin_lr=4)
    s = plan.scale
    hp, wp = plan.padded_out_shape
    th, tw = plan.tile_shape
    cover = np.zeros((hp, wp), int)
    keys = set()
    for t in plan:
        y0, y1, x0, x1 = t.out
        assert t.shape == (th, tw)
        assert 0 <= y0 < y1 <= hp and 0 <= x0 < x1 <= wp
        assert all(v % s == 0 for v in t.out)
        # the input window holds the tile, with >= margin of context where the plane allows
        ly0, ly1, lx0, lx1 = t.lr
        assert ly0 >= 0 and ly1 <= plan.padded_lr_shape[0]
        assert lx0 >= 0 and lx1 <= plan.padded_lr_shape[1]
        assert ly0 <= y0 // s - min(4, y0 // s) and ly1 >= min(y1 // s + 4, hp // s)
        assert lx0 <= x0 // s - min(4, x0 // s) and lx1 >= min(x1 // s + 4, wp // s)
        # crop locates out inside the upsampled window
        cy0, cy1, cx0, cx1 = t.crop
        assert (cy0 + s * ly0, cy1 + s * ly0, cx0 + s * lx0, cx1 + s * lx0) == t.out
        cover[t.out_slices] += 1
        keys.add(t.key)
    assert cover.min() >= 1  # tiles cover the padded grid exactly (nothing outside it)
    assert len(keys) == len(plan)
    # neighbours overlap by at least the requested overlap (when there is more than one)
    rows, cols = plan.grid
    for r, c in itertools.product(range(rows), range(cols)):
        t = plan.tile_at(r, c)
        if c + 1 < cols:
            assert t.out[3] - plan.tile_at(r, c + 1).out[2] >= overlap
        if r + 1 < rows:
            assert t.out[1] - plan.tile_at(r + 1, c).out[0] >= overlap
    # padding only where the plane is smaller than the tile
    for d in range(2):
        if s * shape[d] >= tile:
            assert plan.lr_pad[d] == (0, 0)
            assert plan.tile_shape[d] == tile


def test_edge_tiles_shift_inward_without_padding():
    plan = plan_tiles((100, 100), tile=64, overlap=16)  # 200 px: 4 tiles per axis
    starts = sorted({t.out[0] for t in plan})
    assert starts[0] == 0 and starts[-1] + 64 == 200
    assert not plan.padded and plan.padded_out_shape == (200, 200) == plan.out_shape
    # windows at the border shift inward to keep one size (so tiles batch)
    first, last = plan.tile_at(0, 0), plan.tile_at(3, 3)
    assert first.lr[:2] == (0, 40) and first.crop[:2] == (0, 64)
    assert last.lr[1] == 100 and last.crop[1] == 80


@pytest.mark.parametrize(("shape", "tile", "overlap", "multiple"), CASES + PADDED)
def test_weights_normalise_to_one(shape, tile, overlap, multiple):
    plan = plan_tiles(shape, tile=tile, overlap=overlap, multiple=multiple)
    wsum = weight_sum(plan)
    assert wsum.shape == plan.padded_out_shape
    assert wsum.min() > 0.5  # no pixel relies on a near-zero weight
    # normalised weights sum to 1 everywhere
    total = np.zeros(plan.padded_out_shape)
    for t in plan:
        total[t.out_slices] += tile_weight(plan, t) / wsum[t.out_slices]
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    # stitching a constant gives the constant (no seams, no border darkening)
    blended = stitch(plan, [np.full(t.shape, 7.0) for t in plan])
    np.testing.assert_allclose(blended, 7.0, rtol=1e-6)


def test_raised_cosine_window_shape():
    plan = plan_tiles((80, 80), tile=64, overlap=16)  # 160 px: starts 0, 48, 96
    assert plan.grid == (3, 3)
    assert [t.out[2] for t in plan if t.index[0] == 0] == [0, 48, 96]
    left, mid = plan.tile_at(0, 0), plan.tile_at(0, 1)
    assert left.overlaps == (0, 16, 0, 16)
    assert mid.overlaps == (0, 16, 16, 16)
    assert plan.tile_at(1, 1).overlaps == (16, 16, 16, 16)
    assert plan.tile_at(2, 2).overlaps == (16, 0, 16, 0)
    wl, wm = tile_weight(plan, left), tile_weight(plan, mid)
    assert wl.dtype == np.float32 and wl.shape == (64, 64)
    # no taper toward the real border: weight 1 up to the overlap
    np.testing.assert_array_equal(wl[:48, :48], 1.0)
    # tapers to near zero across the overlap, smoothly (sin^2/cos^2 at pixel centres)
    k = np.arange(16)
    np.testing.assert_allclose(wl[0, 48:], np.cos(np.pi / 2 * (k + 0.5) / 16) ** 2, rtol=1e-6)
    np.testing.assert_allclose(wm[0, :16], np.sin(np.pi / 2 * (k + 0.5) / 16) ** 2, rtol=1e-6)
    assert 0 < wl[0, -1] < 0.01 and 0 < wm[0, 0] < 0.01
    # the two ramps over one overlap sum to 1: a partition of unity before normalising
    np.testing.assert_allclose(wl[0, 48:] + wm[0, :16], 1.0, atol=1e-6)
    np.testing.assert_allclose(weight_sum(plan), 1.0, atol=1e-6)
    stacked = tile_weights(plan)
    assert stacked.shape == (9, 64, 64)
    np.testing.assert_array_equal(stacked[1], wm)


def test_tile_seed_is_deterministic_and_position_based():
    a = plan_tiles((100, 100), tile=64, overlap=16)
    b = plan_tiles((100, 100), tile=64, overlap=16)
    seeds = [tile_seed(7, 3, t) for t in a]
    assert seeds == [tile_seed(7, 3, t) for t in reversed(b.tiles)][::-1]
    assert len(set(seeds)) == len(seeds)
    assert tile_seed(7, 4, a.tiles[0]) != seeds[0] and tile_seed(8, 3, a.tiles[0]) != seeds[0]
    assert all(0 <= s < 2**63 for s in seeds)
    torch.Generator().manual_seed(seeds[0])  # accepted by torch


def test_invalid_plans():
    with pytest.raises(errors.ConfigError, match="multiple of the scale"):
        plan_tiles((50, 50), tile=63, overlap=16)
    with pytest.raises(errors.ConfigError, match="multiple of the scale"):
        plan_tiles((50, 50), tile=64, overlap=15)
    with pytest.raises(errors.ConfigError, match="smaller than the tile"):
        plan_tiles((50, 50), tile=64, overlap=64)
    plan = plan_tiles((50, 50), tile=64, overlap=16)
    with pytest.raises(ValueError, match="plane shape"):
        plan.pad_lr(np.zeros((49, 50)))


def test_scale_three():
    rng = np.random.default_rng(9)
    lr = rng.random((40, 29))
    plan = plan_tiles(lr.shape, tile=48, overlap=12, scale=3)
    padded = plan.pad_lr(lr)
    values = [bicubic(plan.cut_lr(padded, t), 3)[t.crop_slices] for t in plan]
    np.testing.assert_allclose(stitch(plan, values), bicubic(lr, 3), atol=1e-5)
