"""Image-quality and uncertainty-quality metrics on plain arrays (numpy, scikit-image, scipy).

Fair comparison (CSBDeep / CARE, Weigert et al. 2018)
-----------------------------------------------------
Methods produce images in different intensity units, so before scoring:

1. the target is normalised by its own percentiles, ``t = (y - p0.1) / (p99.9 - p0.1)``
   (CSBDeep ``normalize(gt, 0.1, 99.9)``, no clipping);
2. the prediction is mapped by the least-squares scale and offset ``alpha * x + beta`` that
   minimises ``||alpha * x + beta - t||^2`` (CSBDeep ``normalize_minmse``):
   ``alpha = cov(x, t) / var(x)``, ``beta = mean(t) - alpha * mean(x)``.

Then on (``t``, fitted prediction):

- PSNR = 10 log10(R^2 / MSE) with ``R = max(t) - min(t)``, the data range of the normalised
  target (about 1, slightly more where pixels lie beyond the 99.9th percentile). The same
  ``R`` is passed to SSIM. Every method is scored against the same ``t`` and ``R``.
- SSIM: ``skimage.metrics.structural_similarity`` with its defaults (7x7 uniform window)
  and ``data_range=R``.
- NRMSE: root-mean-square error in the normalised target units (the target's 0.1-99.9
  percentile range is 1), as in the CARE paper; PSNR = 20 log10(R) - 20 log10(NRMSE).

Uncertainty quality (on the same fitted units: samples map by ``alpha * s + beta`` and the
standard deviation by ``|alpha| * std``)
---------------------------------------------------------------------------------------
- The std map scored is what ``cvdm enhance`` writes when ``smoothing`` is given: the
  square root of the sample variance pooled over a Gaussian of that many pixels
  (:mod:`cvdm_cli.core.variance`); ``smoothing=0`` scores the per-pixel sample std.
- Spearman rank correlation between per-pixel std and absolute error. Even a perfectly
  calibrated sampler does not reach 1: its error is a random draw with that std, and
  ``|N(0, s^2)|`` spreads widely at every ``s``. :func:`calibrated_spearman` estimates
  what a calibrated sampler with these std maps would score (leave-one-out: each sample in
  turn plays the truth, the other K - 1 the sampler), a ceiling to read the measured value
  against.
- Coverage of central sample intervals: fraction of pixels whose truth lies in
  ``[s_(i), s_(j)]``, order statistics of the K samples with ``j = K + 1 - i`` and
  ``i = max(1, round((K + 1) (1 - level) / 2))``. For a calibrated sampler the truth is
  exchangeable with the samples, so this interval covers it with probability exactly
  ``(j - i) / (K + 1)`` whatever the distribution: :func:`calibrated_coverage` reports that
  value next to the measured one (8 samples cannot give a 90% interval: at most 7/9).
- Sparsification error (Ilg et al. 2018; Poggi et al. 2020): remove the fraction ``f`` of
  pixels with the largest std, take the RMSE of the rest; the oracle removes pixels by
  their true error. Both curves are divided by the RMSE of all pixels (curve(0) = 1), at
  ``f = 0, 1/N, ..., (N-1)/N`` (N = 100 by default). AUSE is the trapezoidal area between
  them over ``f``; 0 means std orders pixels exactly as the error does. RMSE-based, as in
  Poggi et al.; ties in std are broken by pixel index (stable sort).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cvdm_cli.core.variance import pool_variance

__all__ = [
    "FairScores",
    "UncertaintyScores",
    "ause",
    "calibrated_coverage",
    "calibrated_spearman",
    "fair_scores",
    "fit_scale_offset",
    "interval_bounds",
    "interval_coverage",
    "normalize_percentile",
    "psnr",
    "rmse",
    "sparsification_curves",
    "spearman",
    "ssim",
    "uncertainty_scores",
]

TARGET_PMIN = 0.1
TARGET_PMAX = 99.9


def _f64(x: ArrayLike) -> NDArray[np.float64]:
    return np.asarray(x, dtype=np.float64)


def _same_shape(a: NDArray, b: NDArray, what: str) -> None:
    if a.shape != b.shape:
        msg = f"{what}: shapes differ, {a.shape} vs {b.shape}"
        raise ValueError(msg)


def normalize_percentile(
    x: ArrayLike, pmin: float = TARGET_PMIN, pmax: float = TARGET_PMAX, eps: float = 1e-20
) -> NDArray[np.float64]:
    """CSBDeep ``normalize``: ``(x - p_min) / (p_max - p_min + eps)``, no clipping.

    Args:
        x: image of any shape, any units.
        pmin, pmax: percentiles in [0, 100] of all pixels.
    Returns:
        float64 array of ``x``'s shape; ``p_min`` maps to 0 and ``p_max`` to 1.
    """
    x = _f64(x)
    lo, hi = np.percentile(x, [pmin, pmax])
    return (x - lo) / (hi - lo + eps)


def fit_scale_offset(pred: ArrayLike, target: ArrayLike) -> tuple[float, float]:
    """Least-squares ``(alpha, beta)`` minimising ``||alpha * pred + beta - target||^2``.

    CSBDeep ``normalize_minmse``: ``alpha = cov(pred, target) / (var(pred) + 1e-10)``,
    ``beta = mean(target) - alpha * mean(pred)``. A constant prediction gets ``alpha = 0``
    and ``beta = mean(target)`` (the best constant).
    """
    p, t = _f64(pred).ravel(), _f64(target).ravel()
    _same_shape(p, t, "fit_scale_offset")
    pc = p - p.mean()
    cov = float(np.dot(pc, t - t.mean())) / p.size
    var = float(np.dot(pc, pc)) / p.size
    alpha = cov / (var + 1e-10)
    beta = float(t.mean()) - alpha * float(p.mean())
    return alpha, beta


def rmse(pred: ArrayLike, target: ArrayLike) -> float:
    """Root-mean-square difference (same units as the inputs)."""
    p, t = _f64(pred), _f64(target)
    _same_shape(p, t, "rmse")
    return float(np.sqrt(np.mean((p - t) ** 2)))


def psnr(pred: ArrayLike, target: ArrayLike, data_range: float) -> float:
    """Peak signal-to-noise ratio in dB: ``10 log10(data_range^2 / MSE)`` (inf if MSE = 0)."""
    if not data_range > 0:
        msg = f"psnr: data_range must be positive, got {data_range}"
        raise ValueError(msg)
    err = rmse(pred, target)
    if err == 0.0:
        return float("inf")
    return float(20.0 * np.log10(data_range) - 20.0 * np.log10(err))


def ssim(pred: ArrayLike, target: ArrayLike, data_range: float) -> float:
    """Mean structural similarity of two 2D images (skimage defaults: 7x7 uniform window)."""
    from skimage.metrics import structural_similarity

    p, t = _f64(pred), _f64(target)
    _same_shape(p, t, "ssim")
    return float(structural_similarity(t, p, data_range=data_range))


@dataclass(frozen=True)
class FairScores:
    """Scores of one prediction after the CSBDeep fair-comparison mapping.

    ``target``: percentile-normalised truth (H, W); ``fitted``: ``alpha * pred + beta`` (H, W);
    ``data_range``: ``max(target) - min(target)``, used by PSNR and SSIM.
    """

    psnr: float
    ssim: float
    nrmse: float
    alpha: float
    beta: float
    data_range: float
    target: NDArray[np.float64]
    fitted: NDArray[np.float64]

    def metrics(self) -> dict[str, float]:
        """The scalar fields (for tables)."""
        d = asdict(self)
        return {k: float(d[k]) for k in ("psnr", "ssim", "nrmse", "alpha", "beta", "data_range")}


def fair_scores(
    pred: ArrayLike,
    target: ArrayLike,
    *,
    pmin: float = TARGET_PMIN,
    pmax: float = TARGET_PMAX,
) -> FairScores:
    """PSNR, SSIM and NRMSE of ``pred`` against ``target`` (2D, same shape, any units).

    The target is percentile-normalised and the prediction least-squares fitted to it
    (module docstring); the target's data range after normalisation is the PSNR/SSIM range.
    """
    p, y = _f64(pred), _f64(target)
    _same_shape(p, y, "fair_scores")
    t = normalize_percentile(y, pmin, pmax)
    alpha, beta = fit_scale_offset(p, t)
    fitted = alpha * p + beta
    data_range = float(t.max() - t.min())
    if data_range <= 0:
        msg = "fair_scores: the target is constant, so PSNR and SSIM are undefined"
        raise ValueError(msg)
    return FairScores(
        psnr=psnr(fitted, t, data_range),
        ssim=ssim(fitted, t, data_range),
        nrmse=rmse(fitted, t),
        alpha=alpha,
        beta=beta,
        data_range=data_range,
        target=t,
        fitted=fitted,
    )


# --- uncertainty quality ---------------------------------------------------------------


def spearman(uncertainty: ArrayLike, error: ArrayLike) -> float:
    """Spearman rank correlation of two equally shaped maps (NaN if either is constant)."""
    from scipy.stats import spearmanr

    u, e = _f64(uncertainty).ravel(), _f64(error).ravel()
    _same_shape(u, e, "spearman")
    if np.ptp(u) == 0 or np.ptp(e) == 0:
        return float("nan")
    return float(spearmanr(u, e)[0])


def calibrated_spearman(samples: ArrayLike, smoothing: float = 0.0) -> float:
    """Spearman(std, |error|) that a calibrated sampler with these samples would score.

    A calibrated sampler's truth is exchangeable with its samples, so sample k can play the
    truth: with the other K - 1 samples as the sampler, score Spearman(std_-k,
    |mean_-k - s_k|) (std with ddof=1), and average over k. Uses K - 1 samples per
    estimate, so it slightly understates the ceiling for K.

    Args:
        samples: (K, ..., H, W) sample images, K >= 3 (NaN below that, or where every
            leave-one-out std or error map is constant).
        smoothing: each leave-one-out variance is pooled over this Gaussian sigma (pixels)
            before its square root is taken, as :func:`uncertainty_scores` does.
    """
    s = _f64(samples)
    k = s.shape[0]
    if k < 3:
        return float("nan")
    scores = []
    for i in range(k):
        rest = np.delete(s, i, axis=0)
        rest_mean = rest.mean(axis=0)
        rest_std = np.sqrt(pool_variance(rest.var(axis=0, ddof=1), smoothing))
        rho = spearman(rest_std, np.abs(rest_mean - s[i]))
        if not np.isnan(rho):
            scores.append(rho)
    return float(np.mean(scores)) if scores else float("nan")


def interval_bounds(k: int, level: float) -> tuple[int, int]:
    """1-based order statistics ``(i, j)`` of K samples whose span is the central interval.

    ``i = max(1, round((K + 1) (1 - level) / 2))`` (halves round up), ``j = K + 1 - i``.
    """
    if k < 2:
        msg = f"interval coverage needs at least 2 samples, got {k}"
        raise ValueError(msg)
    if not 0 < level < 1:
        msg = f"level must be in (0, 1), got {level}"
        raise ValueError(msg)
    i = max(1, int(np.floor((k + 1) * (1.0 - level) / 2.0 + 0.5)))
    i = min(i, k // 2)  # keep i < j
    return i, k + 1 - i


def calibrated_coverage(k: int, level: float) -> float:
    """Coverage a perfectly calibrated sampler attains with :func:`interval_coverage`.

    The truth and K samples are exchangeable, so the truth's rank among the K + 1 values is
    uniform and ``P(s_(i) <= truth <= s_(j)) = (j - i) / (K + 1)``.
    """
    i, j = interval_bounds(k, level)
    return (j - i) / (k + 1)


def interval_coverage(samples: ArrayLike, truth: ArrayLike, level: float) -> float:
    """Fraction of pixels with ``s_(i) <= truth <= s_(j)`` (see :func:`interval_bounds`).

    Args:
        samples: (K, ...) sample images; truth: (...) in the same units.
    """
    s = _f64(samples)
    t = _f64(truth)
    _same_shape(s[0], t, "interval_coverage")
    i, j = interval_bounds(s.shape[0], level)
    ordered = np.sort(s, axis=0)
    lo, hi = ordered[i - 1], ordered[j - 1]
    return float(np.mean((lo <= t) & (t <= hi)))


def sparsification_curves(
    uncertainty: ArrayLike, error: ArrayLike, n_bins: int = 100
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Normalised RMSE sparsification curve and its oracle.

    Args:
        uncertainty: per-pixel std (any shape); error: per-pixel absolute error (same shape).
        n_bins: number of removal fractions ``f = 0, 1/n_bins, ..., (n_bins-1)/n_bins``.
    Returns:
        ``(fractions, curve, oracle)``, each (n_bins,): RMSE of the pixels kept after removing
        the ``floor(f * n)`` most uncertain (resp. most erroneous) ones, divided by the RMSE of
        all pixels. All zeros if the error is zero everywhere.
    """
    u, e = _f64(uncertainty).ravel(), _f64(error).ravel()
    _same_shape(u, e, "sparsification_curves")
    n = e.size
    if n < n_bins:
        msg = f"sparsification needs at least n_bins={n_bins} pixels, got {n}"
        raise ValueError(msg)
    fractions = np.arange(n_bins, dtype=np.float64) / n_bins
    kept = n - (np.arange(n_bins) * n) // n_bins  # pixels left at each fraction

    def curve(order: NDArray[np.intp]) -> NDArray[np.float64]:
        # order: pixels from least to most "uncertain"; keep a prefix of it
        csum = np.cumsum(e[order] ** 2)
        return np.sqrt(csum[kept - 1] / kept)

    by_std = curve(np.argsort(u, kind="stable"))
    oracle = curve(np.argsort(e, kind="stable"))
    total = by_std[0]
    if total == 0.0:
        zeros = np.zeros(n_bins)
        return fractions, zeros, zeros.copy()
    return fractions, by_std / total, oracle / total


def ause(uncertainty: ArrayLike, error: ArrayLike, n_bins: int = 100) -> float:
    """Area under the sparsification error: trapezoid of ``curve - oracle`` over ``f``."""
    f, c, o = sparsification_curves(uncertainty, error, n_bins)
    gap = c - o
    return float(np.sum(0.5 * (gap[1:] + gap[:-1]) * np.diff(f)))


@dataclass(frozen=True)
class UncertaintyScores:
    """How well a per-pixel std tracks the error (all in fitted target units)."""

    spearman: float
    calibrated_spearman: float  # what a calibrated sampler with these std maps would score
    coverage50: float
    coverage90: float
    calibrated50: float  # what a calibrated sampler with the same K would cover
    calibrated90: float
    ause: float
    mean_std: float

    def metrics(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}


def uncertainty_scores(
    samples: ArrayLike,
    mean: ArrayLike,
    truth: ArrayLike,
    n_bins: int = 100,
    smoothing: float = 0.0,
) -> UncertaintyScores:
    """Spearman(std, |mean - truth|) and its calibrated value, 50%/90% coverage and AUSE.

    Args:
        samples: (K, H, W) samples, K >= 2; mean: (H, W) the estimate being scored;
        truth: (H, W). All three in the same units (e.g. after the fair-comparison fit).
        std is the per-pixel sample standard deviation (ddof=1), or with ``smoothing`` > 0
        the square root of the sample variance pooled over a Gaussian of that sigma in
        pixels (:func:`cvdm_cli.core.variance.pool_variance`, what ``cvdm enhance`` writes);
        the coverages use the samples themselves. AUSE uses ``min(n_bins, pixels)``
        fractions.
    """
    s = _f64(samples)
    m, t = _f64(mean), _f64(truth)
    _same_shape(s[0], t, "uncertainty_scores")
    _same_shape(m, t, "uncertainty_scores")
    k = s.shape[0]
    std = np.sqrt(pool_variance(s.var(axis=0, ddof=1), smoothing))
    err = np.abs(m - t)
    return UncertaintyScores(
        spearman=spearman(std, err),
        calibrated_spearman=calibrated_spearman(s, smoothing),
        coverage50=interval_coverage(s, t, 0.5),
        coverage90=interval_coverage(s, t, 0.9),
        calibrated50=calibrated_coverage(k, 0.5),
        calibrated90=calibrated_coverage(k, 0.9),
        ause=ause(std, err, min(n_bins, err.size)),
        mean_std=float(std.mean()),
    )
