"""Dihedral views (cvdm_cli.sampling.views) and test-time augmentation in both samplers.

The TTA identity checked here: with ``tta``, sample k is the sample k of a plain run on
view k % 8 of the input (same seed), mapped back. The noise of a sample depends on its
index only, so the two runs draw the same noise.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import sample_plane

from cvdm_cli.sampling import views
from cvdm_cli.sampling.api import reconstruct

pytestmark = pytest.mark.usefixtures("one_thread")


def test_views_round_trip_and_are_distinct():
    a = np.arange(3 * 5, dtype=np.float32).reshape(3, 5)
    seen = set()
    for v in range(views.N_VIEWS):
        fa = views.forward(a, v)
        assert fa.shape == views.view_shape(a.shape, v)
        assert fa.shape == ((5, 3) if views.swaps_axes(v) else (3, 5))
        np.testing.assert_array_equal(views.inverse(fa, v), a)
        # torch and numpy agree, on a batch axis too
        ft = views.forward(torch.from_numpy(a)[None, None], v)
        np.testing.assert_array_equal(ft[0, 0].numpy(), fa)
        np.testing.assert_array_equal(views.inverse(ft, v)[0, 0].numpy(), a)
        seen.add(fa.tobytes() + bytes(fa.shape))
    assert len(seen) == 8  # the eight elements of D4 act differently on an asymmetric image
    assert views.forward(a, 1)[0, 0] == a[0, 4]  # one quarter turn counter-clockwise
    assert views.forward(a, 4)[0, 0] == a[0, 4]  # mirror left-right
    assert [views.view_of(k, True) for k in range(10)] == [0, 1, 2, 3, 4, 5, 6, 7, 0, 1]
    assert {views.view_of(k, False) for k in range(10)} == {0}
    with pytest.raises(ValueError, match=r"0\.\.7"):
        views.forward(a, 8)


@pytest.mark.parametrize("shape", [(8, 8), (8, 12)])
def test_reconstruct_tta_sample_k_is_view_k(tiny_model, shape):
    lr = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    common = dict(samples=8, steps=3, sampler="fast", return_samples=True, batch_size=3)
    tta = reconstruct(
        tiny_model, lr, generator=torch.Generator().manual_seed(5), tta=True, **common
    )
    out_shape = (2 * shape[0], 2 * shape[1])
    assert tta.samples.shape == (8, *out_shape) and tta.mean.shape == out_shape
    np.testing.assert_allclose(tta.mean, tta.samples.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(tta.var, tta.samples.var(axis=0, ddof=1), rtol=1e-4, atol=1e-6)
    for v in (0, 1, 4, 7):
        plain = reconstruct(
            tiny_model,
            views.forward(lr, v),
            generator=torch.Generator().manual_seed(5),
            tta=False,
            **common,
        )
        np.testing.assert_allclose(tta.samples[v], views.inverse(plain.samples[v], v), atol=1e-5)
    # not the plain run: samples 1..7 come from other views
    plain0 = reconstruct(
        tiny_model, lr, generator=torch.Generator().manual_seed(5), tta=False, **common
    )
    np.testing.assert_allclose(tta.samples[0], plain0.samples[0], atol=1e-5)
    assert not np.allclose(tta.samples[1:], plain0.samples[1:], atol=1e-3)


@pytest.mark.parametrize("tiling", ["sync", "independent"])
@pytest.mark.parametrize("shape,tile", [((24, 16), 16), ((12, 12), None)])
def test_reconstruct_plane_tta_sample_k_is_view_k(tiny_model, tiling, shape, tile):
    plane = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    common = dict(
        tile=tile, overlap=8 if tile else 0, tiling=tiling, samples=9, steps=2, seed=3,
        plane_index=1, return_samples=True, batch_size=4,
    )  # fmt: skip
    calls: list[int] = []
    tta = sample_plane(tiny_model, plane, tta=True, callback=lambda d, t: calls.append(t), **common)
    out_shape = (2 * shape[0], 2 * shape[1])
    assert tta.samples.shape == (9, *out_shape)
    assert tta.mean.shape == tta.var.shape == tta.difficulty.shape == out_shape
    np.testing.assert_allclose(tta.mean, tta.samples.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(tta.var, tta.samples.var(axis=0, ddof=1), rtol=1e-4, atol=1e-6)
    for k in (0, 3, 6, 8):  # view 0, 3 (axes swapped), 6, and 0 again
        v = k % 8
        plain = sample_plane(tiny_model, views.forward(plane, v), tta=False, **common)
        np.testing.assert_allclose(tta.samples[k], views.inverse(plain.samples[k], v), atol=1e-5)
        if v == 0:
            np.testing.assert_allclose(tta.difficulty, plain.difficulty, atol=1e-6)
    # the progress total counts every (sample, tile) pass, also when views differ in tiles
    n_steps = 2
    tiles = {
        v: 1 if tile is None else len(_plan(tiny_model, views.view_shape(shape, v), tile).tiles)
        for v in range(8)
    }
    assert calls[-1] == n_steps * sum(tiles[k % 8] for k in range(9))


def _plan(model, shape, tile):
    from cvdm_cli.sampling.plane import plan_for

    return plan_for(model, shape, tile, 8)


@pytest.mark.parametrize("sampler", ["fast", "reference"])
def test_reconstruct_tta_on_a_batch_of_non_square_images(tiny_model, sampler):
    lr = np.random.default_rng(3).standard_normal((2, 1, 8, 12)).astype(np.float32)
    rec = reconstruct(
        tiny_model, lr, samples=3, steps=2, sampler=sampler, return_samples=True, tta=True,
        generator=torch.Generator().manual_seed(1), batch_size=4,
    )  # fmt: skip
    assert rec.samples.shape == (3, 2, 1, 16, 24) and rec.mean.shape == (2, 1, 16, 24)
    np.testing.assert_allclose(rec.mean, rec.samples.mean(axis=0), atol=1e-5)
    np.testing.assert_allclose(rec.var, rec.samples.var(axis=0, ddof=1), rtol=1e-4, atol=1e-6)
    assert np.isfinite(rec.samples).all()
