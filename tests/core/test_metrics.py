"""cvdm_cli.core.metrics against values computed by hand on constructed images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cvdm_cli.core import metrics as M


def _ramp() -> np.ndarray:
    """100x100 image whose row i holds the value i (0..99)."""
    return np.repeat(np.arange(100, dtype=np.float64)[:, None], 100, axis=1)


def _checker(c: float) -> np.ndarray:
    """+c / -c alternating along columns: zero mean in every row, so uncorrelated with _ramp."""
    return c * np.where(np.arange(100) % 2 == 0, 1.0, -1.0)[None, :].repeat(100, axis=0)


# --- PSNR / RMSE -------------------------------------------------------------------------


def test_psnr_known_mse() -> None:
    t = np.zeros((10, 10))
    p = t + _checker(0.1)[:10, :10]  # MSE = 0.01 exactly
    assert M.rmse(p, t) == pytest.approx(0.1)
    assert M.psnr(p, t, data_range=1.0) == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    assert M.psnr(p, t, data_range=2.0) == pytest.approx(20.0 + 20.0 * math.log10(2.0))
    assert M.psnr(t, t, data_range=1.0) == math.inf
    with pytest.raises(ValueError, match="data_range"):
        M.psnr(p, t, data_range=0.0)
    with pytest.raises(ValueError, match="shapes differ"):
        M.rmse(p, t[:5])


def test_normalize_percentile_ramp() -> None:
    # percentiles 0.1 and 99.9 of 0..99 (each 100 times) are 0 and 99 -> t = y / 99
    t = M.normalize_percentile(_ramp())
    np.testing.assert_allclose(t, _ramp() / 99.0, rtol=1e-12)


def test_fit_scale_offset_recovers_affine_map() -> None:
    t = _ramp() / 99.0
    alpha, beta = M.fit_scale_offset(3.0 * t - 2.0, t)
    assert alpha == pytest.approx(1.0 / 3.0)
    assert beta == pytest.approx(2.0 / 3.0)
    # a constant prediction: the best fit is the mean of the target
    alpha, beta = M.fit_scale_offset(np.full_like(t, 5.0), t)
    assert alpha == 0.0
    assert beta == pytest.approx(t.mean())


def test_fair_scores_exact_affine_prediction_is_perfect() -> None:
    y = _ramp() * 10.0 + 100.0
    s = M.fair_scores(-4.0 * y + 7.0, y)  # any affine map of the truth, even a negative one
    assert s.psnr == math.inf or s.psnr > 150
    assert s.nrmse == pytest.approx(0.0, abs=1e-9)
    assert s.ssim == pytest.approx(1.0)
    assert s.data_range == pytest.approx(1.0)


def test_fair_scores_known_mse_gives_known_psnr() -> None:
    # target y (row ramp) -> t = y / 99, range R = 1; prediction 7 (t + d) + 5 with d = +-c
    # uncorrelated with t. The least-squares fit leaves MSE = var_t c^2 / (var_t + c^2)
    # (regression of t on t + d), whatever the affine map 7(.) + 5.
    y = _ramp()
    t = y / 99.0
    c = 0.05
    var_t = (100**2 - 1) / 12.0 / 99.0**2  # variance of i / 99, i uniform on 0..99
    mse = var_t * c**2 / (var_t + c**2)
    s = M.fair_scores(7.0 * (t + _checker(c)) + 5.0, y)
    assert s.alpha * 7.0 == pytest.approx(var_t / (var_t + c**2))
    assert s.nrmse == pytest.approx(math.sqrt(mse), rel=1e-9)
    assert s.psnr == pytest.approx(10.0 * math.log10(1.0 / mse), rel=1e-9)
    np.testing.assert_allclose(s.target, t, rtol=1e-12)
    assert 0.0 < s.ssim < 1.0
    assert set(s.metrics()) == {"psnr", "ssim", "nrmse", "alpha", "beta", "data_range"}


def test_fair_scores_rejects_constant_target() -> None:
    with pytest.raises(ValueError, match="constant"):
        M.fair_scores(np.random.default_rng(0).random((16, 16)), np.ones((16, 16)))


# --- Spearman ----------------------------------------------------------------------------


def test_spearman_perfect_order_and_reverse() -> None:
    err = np.random.default_rng(1).random((32, 32))
    assert M.spearman(2.0 * err**3 + 1.0, err) == pytest.approx(1.0)  # monotone -> 1
    assert M.spearman(-err, err) == pytest.approx(-1.0)
    assert math.isnan(M.spearman(np.ones_like(err), err))


# --- interval coverage ---------------------------------------------------------------------


def test_interval_bounds_and_calibrated_coverage() -> None:
    assert M.interval_bounds(8, 0.5) == (2, 7)
    assert M.interval_bounds(8, 0.9) == (1, 8)
    assert M.calibrated_coverage(8, 0.5) == pytest.approx(5 / 9)
    assert M.calibrated_coverage(8, 0.9) == pytest.approx(7 / 9)
    assert M.calibrated_coverage(99, 0.9) == pytest.approx(0.9)
    assert M.calibrated_coverage(99, 0.5) == pytest.approx(0.5)
    assert M.calibrated_coverage(2, 0.5) == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="at least 2"):
        M.interval_bounds(1, 0.5)


def test_interval_coverage_hand_counted() -> None:
    # every pixel's 8 samples are 1..8 (shuffled per pixel); truths 0.5, 1.5, ..., 8.5
    rng = np.random.default_rng(2)
    truth = np.tile(np.arange(9) + 0.5, (9, 1))  # (9, 9)
    samples = np.stack([rng.permutation(8) + 1.0 for _ in range(81)], axis=1).reshape(8, 9, 9)
    # 50%: [s_(2), s_(7)] = [2, 7] holds 2.5 .. 6.5 -> 5 of 9 values
    assert M.interval_coverage(samples, truth, 0.5) == pytest.approx(5 / 9)
    # 90%: [s_(1), s_(8)] = [1, 8] holds 1.5 .. 7.5 -> 7 of 9
    assert M.interval_coverage(samples, truth, 0.9) == pytest.approx(7 / 9)


def test_interval_coverage_of_a_calibrated_sampler_matches_expectation() -> None:
    # truth and samples drawn from the same per-pixel distribution: exchangeable
    rng = np.random.default_rng(3)
    loc = rng.normal(size=(200, 200))
    scale = rng.uniform(0.5, 2.0, size=(200, 200))
    samples = loc + scale * rng.normal(size=(8, 200, 200))
    truth = loc + scale * rng.normal(size=(200, 200))
    assert M.interval_coverage(samples, truth, 0.5) == pytest.approx(5 / 9, abs=0.01)
    assert M.interval_coverage(samples, truth, 0.9) == pytest.approx(7 / 9, abs=0.01)


# --- sparsification / AUSE -----------------------------------------------------------------


def test_ause_hand_computed_for_reversed_uncertainty() -> None:
    err = np.array([1.0, 2.0, 3.0, 4.0])
    std = np.array([4.0, 3.0, 2.0, 1.0])  # most confident where the error is largest
    f, curve, oracle = M.sparsification_curves(std, err, n_bins=4)
    norm = math.sqrt(30 / 4)  # RMSE of all four
    np.testing.assert_allclose(f, [0.0, 0.25, 0.5, 0.75])
    # oracle keeps {1,2,3,4}, {1,2,3}, {1,2}, {1}; by std it keeps {.}, {2,3,4}, {3,4}, {4}
    np.testing.assert_allclose(
        oracle, np.array([norm, math.sqrt(14 / 3), math.sqrt(5 / 2), 1.0]) / norm
    )
    np.testing.assert_allclose(
        curve, np.array([norm, math.sqrt(29 / 3), math.sqrt(25 / 2), 4.0]) / norm
    )
    gap = curve - oracle
    area = 0.25 * (gap[0] / 2 + gap[1] + gap[2] + gap[3] / 2)
    assert M.ause(std, err, n_bins=4) == pytest.approx(area)
    assert area > 0.3


def test_ause_zero_and_spearman_one_when_std_is_ordered_with_error() -> None:
    rng = np.random.default_rng(4)
    err = rng.permutation(np.linspace(0.01, 1.0, 64 * 64)).reshape(64, 64)
    truth = rng.normal(size=(64, 64))
    mean = truth + err
    # 4 samples around the mean whose std is proportional to the error
    offsets = np.array([-1.5, -0.5, 0.5, 1.5])[:, None, None]
    samples = mean + offsets * err
    u = M.uncertainty_scores(samples, mean, truth)
    assert u.spearman == pytest.approx(1.0)
    assert u.ause == pytest.approx(0.0, abs=1e-12)
    assert u.mean_std == pytest.approx(float(np.std(offsets, ddof=1) * err.mean()))
    # K=4: both levels use [s_(1), s_(4)] = [mean - 1.5 err, mean + 1.5 err] (i = 1, j = 4),
    # which holds truth = mean - err in every pixel; a calibrated sampler would cover 3/5
    assert M.interval_bounds(4, 0.5) == M.interval_bounds(4, 0.9) == (1, 4)
    assert u.coverage90 == 1.0
    assert u.calibrated90 == pytest.approx(3 / 5)
    assert u.coverage50 == 1.0


def test_calibrated_spearman_matches_a_calibrated_sampler() -> None:
    # samples and truth from the same per-pixel Gaussian: the sampler is calibrated, so the
    # measured Spearman (K samples) and the leave-one-out estimate (K - 1) agree
    rng = np.random.default_rng(11)
    sigma = np.exp(rng.uniform(np.log(0.05), np.log(2.0), size=(96, 96)))
    mu = rng.normal(size=(96, 96))
    draws = mu + sigma * rng.standard_normal((9, 96, 96))
    samples, truth = draws[:8], draws[8]
    measured = M.uncertainty_scores(samples, samples.mean(axis=0), truth)
    assert measured.calibrated_spearman > 0.3  # a wide spread of std orders the error
    assert measured.calibrated_spearman == pytest.approx(measured.spearman, abs=0.03)
    assert M.calibrated_spearman(samples) == measured.calibrated_spearman
    # one std everywhere: the std map carries no information, ceiling about 0
    flat = mu + 0.5 * rng.standard_normal((8, 96, 96))
    assert abs(M.calibrated_spearman(flat)) < 0.05
    # the truth plays no part: a biased mean lowers the measured value, not the ceiling
    biased = M.uncertainty_scores(samples, samples.mean(axis=0) + 3.0 * sigma.mean(), truth)
    assert biased.calibrated_spearman == measured.calibrated_spearman
    assert biased.spearman < measured.spearman - 0.1
    assert math.isnan(M.calibrated_spearman(samples[:2]))


def test_calibrated_spearman_by_hand_for_three_samples() -> None:
    # K = 3: leaving sample i out leaves two, whose std is |a - b| / sqrt(2) and whose mean
    # is (a + b) / 2; the error is |(a + b) / 2 - s_i|
    s = np.array([[0.0, 1.0, 0.0, 2.0], [1.0, 2.0, 3.0, 4.0], [2.0, 5.0, 4.0, 11.0]])
    from scipy.stats import spearmanr

    expected = []
    for i in range(3):
        a, b = np.delete(s, i, axis=0)
        expected.append(spearmanr(np.abs(a - b), np.abs((a + b) / 2 - s[i]))[0])
    assert not np.isnan(expected).any() and len(set(np.round(expected, 6))) > 1
    assert M.calibrated_spearman(s) == pytest.approx(np.mean(expected))


def test_sparsification_of_zero_error_is_flat_zero() -> None:
    f, curve, oracle = M.sparsification_curves(np.arange(200.0), np.zeros(200))
    assert f.shape == curve.shape == oracle.shape == (100,)
    assert not curve.any() and not oracle.any()
    with pytest.raises(ValueError, match="at least n_bins"):
        M.sparsification_curves(np.arange(10.0), np.arange(10.0))
