"""cvdm_cli.core.normalize: percentile mapping, its inverse, constant planes, NaN/Inf policy."""

from __future__ import annotations

import numpy as np
import pytest

from cvdm_cli import errors
from cvdm_cli.core.normalize import (
    NormParams,
    denormalize,
    denormalize_std,
    denormalize_variance,
    percentile_normalize,
)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "uint32", "float32", "float64"])
def test_percentiles_map_to_minus_one_and_one(dtype):
    rng = np.random.default_rng(1)
    plane = (rng.random((64, 80)) * 200).astype(dtype)
    norm, params = percentile_normalize(plane, 1.0, 99.8)
    assert norm.dtype == np.float32 and norm.shape == plane.shape
    lo, hi = np.percentile(plane, [1.0, 99.8])
    assert (params.low, params.high) == pytest.approx((lo, hi))
    # the pixels at the percentiles land on -1 / +1; the rest is affine, not clipped
    np.testing.assert_allclose(np.percentile(norm, [1.0, 99.8]), [-1.0, 1.0], atol=1e-5)
    assert norm.min() <= -1.0 + 1e-6 and norm.max() >= 1.0 - 1e-6
    expect = 2 * (plane.astype(np.float64) - lo) / (hi - lo) - 1
    np.testing.assert_allclose(norm, expect, rtol=1e-6, atol=1e-6)


def test_round_trip_is_exact_including_large_uint32():
    rng = np.random.default_rng(2)
    plane = rng.integers(3_000_000_000, 4_000_000_000, size=(32, 32), dtype=np.uint32)
    norm, params = percentile_normalize(plane, 0.5, 99.5)
    back = denormalize(norm, params)
    # float32 output: relative error ~1e-7 of the range
    np.testing.assert_allclose(back, plane, rtol=1e-6)


def test_custom_percentiles_and_validation():
    plane = np.arange(101, dtype=np.float32)
    norm, params = percentile_normalize(plane, 10, 90)
    assert (params.low, params.high) == (10.0, 90.0)
    assert norm[10] == pytest.approx(-1) and norm[90] == pytest.approx(1) and norm[50] == 0
    assert norm[0] == pytest.approx(-1.25) and norm[100] == pytest.approx(1.25)  # not clipped
    for lo, hi in [(50, 50), (-1, 99), (1, 101), (90, 10)]:
        with pytest.raises(errors.ConfigError, match="percentiles"):
            percentile_normalize(plane, lo, hi)


def test_constant_plane_maps_to_zero_and_back():
    plane = np.full((16, 16), 437, np.uint16)
    norm, params = percentile_normalize(plane)
    assert np.all(norm == 0) and np.isfinite(norm).all()
    assert params.constant and params.low == params.high == 437
    np.testing.assert_array_equal(denormalize(norm, params), plane.astype(np.float32))
    np.testing.assert_array_equal(denormalize(norm + 0.5, params), np.full((16, 16), 437.0))
    assert np.all(denormalize_std(np.ones((2, 2)), params) == 0)


def test_nan_inf_raise_names_the_plane():
    plane = np.ones((8, 8), np.float32)
    plane[2, 3] = np.nan
    plane[4, 4] = np.inf
    with pytest.raises(errors.InvalidPixelsError, match=r"cell\.tif plane 3 \(Z=3\): 2 of 64"):
        percentile_normalize(plane, plane_label="cell.tif plane 3 (Z=3)")


def test_nan_inf_replace_uses_finite_median():
    rng = np.random.default_rng(3)
    plane = rng.random((20, 20)).astype(np.float32)
    plane[0, 0], plane[1, 1], plane[2, 2] = np.nan, np.inf, -np.inf
    finite = np.isfinite(plane)
    med = np.median(plane[finite])
    norm, params = percentile_normalize(plane, nan_policy="replace")
    assert np.isfinite(norm).all()
    back = denormalize(norm, params)
    np.testing.assert_allclose(back[~finite], med, rtol=1e-5)
    np.testing.assert_allclose(back[finite], plane[finite], rtol=1e-5, atol=1e-6)
    # nothing finite at all: replaced by 0, a constant plane
    allnan = np.full((4, 4), np.nan)
    norm, params = percentile_normalize(allnan, nan_policy="replace")
    assert np.all(norm == 0) and params == NormParams(0.0, 0.0)


def test_variance_and_std_scale_only():
    params = NormParams(100.0, 500.0)  # half range 200
    var = np.array([[0.25, 1.0]])
    np.testing.assert_allclose(denormalize_variance(var, params), [[0.25 * 200**2, 200**2]])
    np.testing.assert_allclose(denormalize_std(np.sqrt(var), params), [[100.0, 200.0]])
    # consistent with denormalising samples: var of mapped samples = scaled var
    rng = np.random.default_rng(4)
    samples = rng.standard_normal((1000, 3)).astype(np.float32)
    mapped = denormalize(samples, params)
    np.testing.assert_allclose(
        mapped.var(axis=0), denormalize_variance(samples.var(axis=0), params), rtol=1e-4
    )
    np.testing.assert_allclose(
        mapped.mean(axis=0), denormalize(samples.mean(axis=0), params), rtol=1e-5
    )
