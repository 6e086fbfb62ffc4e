"""Pooling the sample variance (cvdm_cli.core.variance): identities, units, axes, and that it
estimates a known variance map better than the per-pixel sample variance."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cvdm_cli.core.variance import DEFAULT_VARIANCE_SMOOTHING, pool_variance


def test_zero_sigma_is_the_identity_and_a_constant_map_stays_constant() -> None:
    rng = np.random.default_rng(0)
    var = rng.gamma(2.0, size=(17, 23)).astype(np.float32)
    np.testing.assert_array_equal(pool_variance(var, 0.0), var)
    flat = np.full((17, 23), 2.5, np.float32)
    pooled = pool_variance(flat, DEFAULT_VARIANCE_SMOOTHING)
    assert pooled.dtype == np.float32 and pooled.shape == flat.shape
    np.testing.assert_allclose(pooled, 2.5, rtol=1e-6)  # unit-sum kernel, mirrored edges


def test_pools_only_over_the_last_two_axes() -> None:
    batch = np.stack([np.full((1, 12, 12), 1.0), np.full((1, 12, 12), 9.0)])  # (2, 1, H, W)
    batch[1, 0, 6, 6] = 90.0  # a single hot pixel spreads within its own image only
    pooled = pool_variance(batch, 1.0)
    assert pooled.shape == batch.shape
    np.testing.assert_allclose(pooled[0], 1.0)
    assert pooled[1, 0, 6, 6] < 90.0 and pooled[1, 0, 6, 7] > 9.0
    # the hot pixel's excess is redistributed, not lost (far from the edges)
    assert pooled[1].sum() == pytest.approx(batch[1].sum(), rel=1e-9)


def test_pooled_variance_is_closer_to_the_truth_than_the_per_pixel_one() -> None:
    # 8 Gaussian samples per pixel whose true variance is 1 on the left, 4 on the right
    rng = np.random.default_rng(1)
    truth = np.ones((64, 64))
    truth[:, 32:] = 4.0
    samples = rng.normal(size=(8, 64, 64)) * np.sqrt(truth)
    raw = samples.var(axis=0, ddof=1)
    pooled = pool_variance(raw, 1.5)
    away = np.abs(np.arange(64) - 31.5) > 6  # columns away from the step
    err_raw = np.abs(raw - truth)[:, away].mean()
    err_pooled = np.abs(pooled - truth)[:, away].mean()
    # chi-square with 7 degrees of freedom scatters s^2 by sqrt(2/7) = 53 %; a Gaussian of
    # sigma 1.5 averages about 4 pi sigma^2 = 28 independent pixels
    assert err_raw == pytest.approx(np.sqrt(2 / 7) * 2.5 * np.sqrt(2 / np.pi), rel=0.1)
    assert err_pooled < err_raw / 3
    # the level of each half is kept (unbiased away from the step)
    assert pooled[:, :20].mean() == pytest.approx(1.0, rel=0.05)
    assert pooled[:, 44:].mean() == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("sigma", [-0.5, math.nan, math.inf])
def test_bad_sigma_is_refused(sigma: float) -> None:
    with pytest.raises(ValueError, match="variance smoothing"):
        pool_variance(np.ones((4, 4)), sigma)


def test_integer_input_becomes_float() -> None:
    out = pool_variance(np.ones((5, 5), dtype=np.int64), 1.0)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, 1.0)
