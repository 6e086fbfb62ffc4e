"""Per-plane percentile normalisation (CSBDeep's default), and its inverse. numpy only.

    x_norm = 2 * (x - p_low) / (p_high - p_low) - 1          (p_low -> -1, p_high -> +1)
    x      = (x_norm + 1) / 2 * (p_high - p_low) + p_low     (denormalize)

Values outside the percentiles map outside [-1, 1]; nothing is clipped, so the inverse is
exact. Variances of normalised outputs scale by ((p_high - p_low) / 2)**2 and standard
deviations by (p_high - p_low) / 2 (no offset).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from cvdm_cli import errors

__all__ = [
    "NormParams",
    "denormalize",
    "denormalize_std",
    "denormalize_variance",
    "percentile_normalize",
]


@dataclass(frozen=True)
class NormParams:
    """The two percentile values of one plane, in the input's intensity units."""

    low: float
    high: float

    @property
    def half_range(self) -> float:
        """(high - low) / 2: one normalised unit in input units (0 for a constant plane)."""
        return (self.high - self.low) / 2.0

    @property
    def center(self) -> float:
        """(high + low) / 2: the input value that maps to 0."""
        return (self.high + self.low) / 2.0

    @property
    def constant(self) -> bool:
        """True when the plane had no spread between the percentiles (mapped to 0)."""
        return not self.high > self.low


def _check_percentiles(low: float, high: float) -> None:
    if not (0.0 <= low < high <= 100.0):
        raise errors.ConfigError(
            f"percentiles must satisfy 0 <= low < high <= 100, got low={low}, high={high}",
            hint="e.g. --norm-low 1 --norm-high 99.8",
        )


def percentile_normalize(
    plane: np.ndarray,
    low: float = 1.0,
    high: float = 99.8,
    *,
    nan_policy: Literal["raise", "replace"] = "raise",
    plane_label: str = "",
) -> tuple[np.ndarray, NormParams]:
    """Map percentile ``low`` of ``plane`` to -1 and ``high`` to +1 (float32, not clipped).

    Args:
        plane: any-shape real array (usually one (Y, X) plane), any numeric dtype.
        low, high: percentiles in [0, 100].
        nan_policy: "raise" -> errors.InvalidPixelsError naming ``plane_label`` if the plane
            holds NaN or +-Inf; "replace" -> such pixels take the median of the finite
            pixels (0 if there are none) before normalising.
        plane_label: how the plane is named in errors (e.g. "file.tif plane 3 (Z=3)").

    Returns:
        (normalised float32 array of the same shape, NormParams). A constant plane
        (p_high == p_low) maps to 0 and keeps p_low, so ``denormalize`` returns the constant.
    """
    _check_percentiles(low, high)
    if nan_policy not in ("raise", "replace"):
        msg = f"nan_policy must be 'raise' or 'replace', got {nan_policy!r}"
        raise ValueError(msg)
    arr = np.asarray(plane)
    if arr.dtype.kind not in "uifb":
        msg = f"cannot normalise pixels of type {arr.dtype}"
        raise TypeError(msg)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.size == 0:
        msg = "cannot normalise an empty plane"
        raise ValueError(msg)
    if arr.dtype.kind == "f":
        finite = np.isfinite(arr)
        n_bad = int(arr.size - np.count_nonzero(finite))
        if n_bad:
            if nan_policy == "raise":
                raise errors.InvalidPixelsError(
                    f"{n_bad} of {arr.size} pixels are NaN or Inf in this plane",
                    path=plane_label or None,
                    hint="fix the input, or pass --replace-nan to use the plane's median",
                )
            fill = float(np.median(arr[finite])) if n_bad < arr.size else 0.0
            arr = np.where(finite, arr, fill)
    # percentiles and the affine map in float64 (uint32 values exceed float32's mantissa)
    p_low, p_high = (float(v) for v in np.percentile(arr, [low, high]))
    params = NormParams(p_low, p_high)
    if params.constant:
        return np.zeros(arr.shape, dtype=np.float32), NormParams(p_low, p_low)
    out = (arr.astype(np.float64) - p_low) * (2.0 / (p_high - p_low)) - 1.0
    return out.astype(np.float32), params


def _affine32(arr: np.ndarray, scale: float, offset: float) -> np.ndarray:
    # float32 in place on a fresh copy: planes are large and the result is float32 anyway
    out = np.array(arr, dtype=np.float32, copy=True)
    out *= np.float32(scale)
    if offset:
        out += np.float32(offset)
    return out


def denormalize(arr: np.ndarray, params: NormParams) -> np.ndarray:
    """Inverse of :func:`percentile_normalize`: back to input intensity units (float32).

    x = x_norm * (high - low) / 2 + (high + low) / 2, the same map as (x_norm + 1)/2 * range
    + low; a constant plane (high == low) gives back the constant.
    """
    return _affine32(arr, params.half_range, params.center)


def denormalize_std(std: np.ndarray, params: NormParams) -> np.ndarray:
    """A standard deviation in normalised units -> input units (scale (high - low) / 2)."""
    return _affine32(std, abs(params.half_range), 0.0)


def denormalize_variance(var: np.ndarray, params: NormParams) -> np.ndarray:
    """A variance in normalised units -> input units squared (scale ((high - low) / 2)**2)."""
    return _affine32(var, params.half_range**2, 0.0)
