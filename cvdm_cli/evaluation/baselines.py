"""Classical baselines for super-resolution: bicubic upsampling and Richardson–Lucy.

numpy and scikit-image only (no torch).

- :func:`bicubic_upsample` reproduces ``torch.nn.functional.interpolate(x, scale_factor=s,
  mode="bicubic", align_corners=False)`` — the model's own condition (Keys cubic kernel with
  a = -0.75, source coordinate ``(i + 0.5) / s - 0.5``, neighbour indices clamped to the
  image, i.e. replicate borders). Being linear with weights that sum to 1, it commutes with
  the percentile normalisation, so upsampling raw pixels equals the model's condition mapped
  back to input units.
- :func:`richardson_lucy` deconvolves the *upsampled* input with
  ``skimage.restoration.richardson_lucy`` (clip off). RL needs non-negative data: the image
  is shifted so its minimum is 0 (removes most of the camera offset) and scaled to max 1,
  reflect-padded by the PSF size (so the zero padding of the convolution does not darken the
  borders), deconvolved, cropped and mapped back.
- PSFs: the widefield PSF on the upsampled grid comes from the simulation parameters
  (``cvdm_cli.training.simulation.widefield_psf_2d``), from a file the user gives, or —
  only when asked
  with ``psf_sigma_nm`` or when no simulation parameters exist — a Gaussian approximation of
  the in-focus widefield PSF, sigma = 0.21 * lambda_em / NA (Zhang et al., Appl. Opt. 2007).
  Optical PSFs (not user files) are convolved with the footprint of one input camera pixel
  (a box ``scale`` output pixels wide): the upsampled input was integrated over those pixels.
- :func:`tune_rl_iterations`: the number of RL iterations that maximises the mean PSNR
  (fair-comparison PSNR, ``cvdm_cli.core.metrics``) on validation images.
- Trained baselines (``cvdm evaluate --baseline KIND:PATH``): :func:`parse_trained_baselines`
  turns the specs into named :class:`TrainedBaseline` entries; the only kind is ``care``,
  a CARE U-Net from ``cvdm train-care`` (:mod:`cvdm_cli.core.care`, run by
  ``cvdm_cli.evaluation.evaluate``, which loads it through ``cvdm_cli.io.weights``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from cvdm_cli.core.metrics import fair_scores
from cvdm_cli.errors import ConfigError

__all__ = [
    "DEFAULT_RL_GRID",
    "TRAINED_KINDS",
    "RLTuning",
    "TrainedBaseline",
    "bicubic_upsample",
    "gaussian_psf",
    "normalize_psf",
    "parse_trained_baselines",
    "pixel_integrate",
    "psf_from_params",
    "richardson_lucy",
    "tune_rl_iterations",
    "widefield_sigma_nm",
]

DEFAULT_RL_GRID: tuple[int, ...] = (5, 10, 15, 20, 30, 40, 60)
CUBIC_A = -0.75  # PyTorch's (and OpenCV's) Keys kernel parameter


# --- bicubic ---------------------------------------------------------------------------


def _cubic_weights(t: NDArray[np.float64], a: float = CUBIC_A) -> NDArray[np.float64]:
    """Keys kernel weights of the 4 neighbours at offsets -1, 0, 1, 2 for fraction t: (n, 4)."""

    def near(x: NDArray) -> NDArray:  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x: NDArray) -> NDArray:  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=1)


def _upsample_axis(x: NDArray[np.float64], axis: int, scale: int) -> NDArray[np.float64]:
    n_in = x.shape[axis]
    out = np.arange(n_in * scale, dtype=np.float64)
    src = (out + 0.5) / scale - 0.5  # align_corners=False, no clamp for cubic (as torch)
    base = np.floor(src)
    w = _cubic_weights(src - base)  # (n_out, 4)
    idx = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :], 0, n_in - 1)
    shape = [1] * x.ndim
    shape[axis] = -1
    result = np.zeros((*x.shape[:axis], out.size, *x.shape[axis + 1 :]), dtype=np.float64)
    for k in range(4):
        result += np.take(x, idx[:, k], axis=axis) * w[:, k].reshape(shape)
    return result


def bicubic_upsample(image: ArrayLike, scale: int = 2) -> NDArray[np.float64]:
    """Bicubic upsampling of the last two axes by an integer factor, as torch does it.

    Args:
        image: (..., h, w) in any units.
        scale: integer factor >= 1.
    Returns:
        float64 (..., scale*h, scale*w), equal to ``F.interpolate(image, scale_factor=scale,
        mode="bicubic", align_corners=False)`` up to float rounding.
    """
    if int(scale) != scale or scale < 1:
        msg = f"scale must be a positive integer, got {scale}"
        raise ValueError(msg)
    x = np.asarray(image, dtype=np.float64)
    if x.ndim < 2:
        msg = f"bicubic_upsample needs at least 2 dimensions, got shape {x.shape}"
        raise ValueError(msg)
    if scale == 1:
        return x.copy()
    return _upsample_axis(_upsample_axis(x, x.ndim - 2, int(scale)), x.ndim - 1, int(scale))


# --- PSFs ------------------------------------------------------------------------------


def widefield_sigma_nm(na: float, emission_nm: float) -> float:
    """Gaussian sigma (nm) approximating the in-focus widefield PSF: 0.21 * lambda / NA."""
    if na <= 0 or emission_nm <= 0:
        msg = f"NA and emission wavelength must be positive, got NA={na}, {emission_nm} nm"
        raise ValueError(msg)
    return 0.21 * emission_nm / na


def normalize_psf(psf: ArrayLike) -> NDArray[np.float64]:
    """A 2D PSF made non-negative and scaled to sum 1 (a 3D stack gives its brightest plane)."""
    p = np.asarray(psf, dtype=np.float64)
    p = np.squeeze(p)
    if p.ndim == 3:  # (z, y, x): the in-focus plane is the one holding the peak
        p = p[int(np.unravel_index(np.argmax(p), p.shape)[0])]
    if p.ndim != 2:
        msg = f"a PSF must be a 2D image (or a 3D stack), got shape {np.shape(psf)}"
        raise ValueError(msg)
    p = np.clip(p - min(0.0, float(p.min())), 0.0, None)
    total = p.sum()
    if not total > 0 or not np.isfinite(total):
        msg = "the PSF has no positive, finite values"
        raise ValueError(msg)
    return p / total


def gaussian_psf(sigma_px: float, truncate: float = 4.0) -> NDArray[np.float64]:
    """Normalised 2D Gaussian, (2r+1, 2r+1) with r = ceil(truncate * sigma_px)."""
    if not sigma_px > 0:
        msg = f"sigma must be positive, got {sigma_px}"
        raise ValueError(msg)
    r = max(1, math.ceil(truncate * sigma_px))
    x = np.arange(-r, r + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / sigma_px) ** 2)
    return normalize_psf(np.outer(g, g))


def pixel_integrate(psf: ArrayLike, scale: int) -> NDArray[np.float64]:
    """Convolve a PSF on the output grid with one input pixel (a box ``scale`` pixels wide).

    An even width straddles pixel centres: its end pixels are half covered, e.g. the 1D
    footprint for scale 2 is (1/4, 1/2, 1/4).
    """
    from scipy.signal import convolve2d

    p = normalize_psf(psf)
    if scale <= 1:
        return p
    box = np.ones(scale + 1) if scale % 2 == 0 else np.ones(scale)
    if scale % 2 == 0:
        box[0] = box[-1] = 0.5
    box /= box.sum()
    return normalize_psf(convolve2d(p, np.outer(box, box), mode="full"))


def psf_from_params(
    params: Mapping[str, Any] | None,
    pixel_nm: float,
    *,
    scale: int,
    sigma_nm: float | None = None,
    simulation_psf: Callable[[Mapping[str, Any], float], ArrayLike] | None = None,
) -> tuple[NDArray[np.float64], str]:
    """The widefield PSF sampled at ``pixel_nm`` (the upsampled grid), and where it came from.

    Priority: ``sigma_nm`` (a Gaussian of that sigma, when the user asks for it), then
    ``simulation_psf(params, pixel_nm)`` (the simulator's PSF model), then the Gaussian
    approximation from ``params['na']`` and ``params['emission_nm']``. The optical PSF is
    then integrated over one input pixel (:func:`pixel_integrate`).

    Returns:
        (psf (k, k) summing to 1, a short description such as ``"gaussian sigma=93.1nm"``).
    """
    if not pixel_nm > 0:
        msg = f"pixel size must be positive, got {pixel_nm} nm"
        raise ValueError(msg)
    if sigma_nm is not None:
        psf, source = gaussian_psf(sigma_nm / pixel_nm), f"gaussian sigma={sigma_nm:.1f}nm (user)"
    elif params is not None and simulation_psf is not None:
        psf, source = normalize_psf(simulation_psf(params, pixel_nm)), "simulation"
    elif params is not None and "na" in params and "emission_nm" in params:
        s = widefield_sigma_nm(float(params["na"]), float(params["emission_nm"]))
        psf, source = gaussian_psf(s / pixel_nm), f"gaussian sigma={s:.1f}nm (0.21 lambda/NA)"
    else:
        msg = "no PSF: need simulation parameters (na, emission_nm), a PSF file or a sigma"
        raise ValueError(msg)
    return pixel_integrate(psf, scale), source


# --- Richardson–Lucy -------------------------------------------------------------------


def richardson_lucy(image: ArrayLike, psf: ArrayLike, num_iter: int) -> NDArray[np.float64]:
    """Richardson–Lucy deconvolution of a 2D image (any units; returns the same units).

    The image is shifted to minimum 0 and scaled to maximum 1 (RL needs non-negative data),
    reflect-padded by the PSF size, deconvolved with ``skimage.restoration.richardson_lucy``
    (``clip=False``), cropped, and mapped back with the inverse shift and scale.
    """
    from skimage.restoration import richardson_lucy as skimage_rl

    x = np.asarray(image, dtype=np.float64)
    p = normalize_psf(psf)
    if x.ndim != 2:
        msg = f"richardson_lucy needs a 2D image, got shape {x.shape}"
        raise ValueError(msg)
    if num_iter < 1:
        msg = f"num_iter must be >= 1, got {num_iter}"
        raise ValueError(msg)
    lo = float(x.min())
    span = float(x.max()) - lo
    if span == 0:
        return x.copy()
    u = (x - lo) / span
    pad = max(p.shape)
    mode = "reflect" if min(x.shape) > pad else "symmetric"
    padded = np.pad(u, pad, mode=mode)
    out = skimage_rl(padded, p, num_iter=int(num_iter), clip=False, filter_epsilon=1e-12)
    out = out[pad:-pad, pad:-pad]
    return out * span + lo


@dataclass(frozen=True)
class RLTuning:
    """Result of :func:`tune_rl_iterations`: the best count and mean PSNR per count."""

    best: int
    mean_psnr: dict[int, float]
    n_images: int
    stems: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_iterations": self.best,
            "mean_psnr_by_iterations": {str(k): v for k, v in self.mean_psnr.items()},
            "n_images": self.n_images,
            "stems": list(self.stems),
        }


def tune_rl_iterations(
    upsampled: Sequence[ArrayLike],
    targets: Sequence[ArrayLike],
    psfs: Sequence[ArrayLike],
    grid: Sequence[int] = DEFAULT_RL_GRID,
    *,
    stems: Sequence[str] = (),
    callback: Callable[[int, int], None] | None = None,
) -> RLTuning:
    """Pick the RL iteration count with the best mean fair PSNR on validation images.

    Args:
        upsampled: bicubic-upsampled inputs (H, W) each; targets: their truths (H, W);
        psfs: one PSF per image on the upsampled grid; grid: iteration counts to try.
        callback: called ``(done, total)`` after each (image, count) deconvolution.
    Ties go to the smaller count.
    """
    if not (len(upsampled) == len(targets) == len(psfs)) or not upsampled:
        msg = "tune_rl_iterations needs equally many (>= 1) images, targets and PSFs"
        raise ValueError(msg)
    counts = sorted({int(g) for g in grid})
    if not counts or counts[0] < 1:
        msg = f"the iteration grid must hold positive counts, got {list(grid)}"
        raise ValueError(msg)
    total, done = len(counts) * len(upsampled), 0
    scores: dict[int, list[float]] = {c: [] for c in counts}
    for x, y, p in zip(upsampled, targets, psfs, strict=True):
        for c in counts:
            scores[c].append(fair_scores(richardson_lucy(x, p, c), y).psnr)
            done += 1
            if callback is not None:
                callback(done, total)
    mean = {c: float(np.mean(v)) for c, v in scores.items()}
    best = max(counts, key=lambda c: (mean[c], -c))
    return RLTuning(best=best, mean_psnr=mean, n_images=len(upsampled), stems=tuple(stems))


# --- trained baselines -----------------------------------------------------------------

TRAINED_KINDS = ("care",)


@dataclass(frozen=True)
class TrainedBaseline:
    """One ``--baseline KIND:PATH``: ``name`` is its method name in every table ("care",
    then "care2", "care3", ... in the order given)."""

    kind: str
    path: Path
    name: str


def parse_trained_baselines(specs: Sequence[str | os.PathLike[str]]) -> list[TrainedBaseline]:
    """``["care:a.safetensors", "care:b.safetensors"]`` -> care (a), care2 (b).

    Raises ConfigError for a spec without ``KIND:``, an unknown kind or an empty path.
    """
    out: list[TrainedBaseline] = []
    counts: dict[str, int] = {}
    for spec in specs:
        text = os.fspath(spec)
        kind, sep, path = text.partition(":")
        if not sep or kind not in TRAINED_KINDS or not path:
            raise ConfigError(
                f"not a baseline spec: {text!r}",
                path="--baseline",
                hint="use care:PATH.safetensors (a network from cvdm train-care)",
            )
        counts[kind] = counts.get(kind, 0) + 1
        name = kind if counts[kind] == 1 else f"{kind}{counts[kind]}"
        out.append(TrainedBaseline(kind=kind, path=Path(path), name=name))
    return out
