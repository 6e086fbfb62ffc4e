"""``cvdm evaluate``: score cvdm against bicubic and Richardson–Lucy on paired TIFFs.

For every pair (``lr/<stem>.tif``, ``hr/<stem>.tif``, HR exactly ``scale`` x LR):

- bicubic: the LR upsampled exactly as the model's condition (``baselines.bicubic_upsample``);
- rl: Richardson–Lucy on the bicubic image with the widefield PSF (``baselines``), its
  iteration count tuned on a validation split (``val_fraction`` of the pairs, drawn with
  ``seed``), which is then left out of every score; ``limit`` counts the remaining (test)
  pairs. For simulated pairs the PSF is the simulator's own model of that pair (NA,
  indices, depth, wavelength and defocus: the strongest RL a PSF can give);
- cvdm_fast: ``samples`` samples of the fast sampler (``steps`` steps); cvdm_reference: the
  paper's sampler (T - 1 steps) with ``reference_samples`` samples (it costs (T-1)/steps
  times more per sample, so fewer), optionally on the first ``reference_limit`` images only;
  cvdm_fast_k<K>: the mean of the first K fast samples, K = ``reference_samples``, so that
  fast and reference are also compared at equal sample counts;
- care (care2, ...): a trained CARE U-Net given as ``extra_baselines=["care:FILE"]``
  (``cvdm evaluate --baseline care:FILE``, from ``cvdm train-care``): the LR plane as cvdm
  reads it, normalised with the file's percentiles (1 / 99.8 by default), upsampled as the
  condition, predicted and mapped back to input units with the LR's percentiles
  (:func:`cvdm_cli.core.care.care_enhance_plane`), then scored like bicubic and RL.

The LR is normalised for the model with the model's own percentiles (1, 99.8 by default)
to [-1, 1] and the outputs mapped back to input units. Every method is then scored against
the HR with the CSBDeep fair comparison (percentile-normalised target, least-squares scale
and offset of the prediction; see ``cvdm_cli.core.metrics``). cvdm samples go through the same
affine map as their mean, so the std and the interval coverage are in the target's units.

Cost: the fast sampler makes ``samples x steps`` denoiser passes per image, the reference
``reference_samples x (T - 1)``. Measured for the ``small`` preset on a shared 2-core CPU
(128 -> 256 px): ~0.9 s per pass, i.e. ~2.5 min per image for 8 x 20 fast and ~6 min
for 2 x 199 reference passes.

Writes (when ``out_dir`` is given): ``metrics.csv`` (one row per image and method; ``steps``
holds the RL iterations for rl),
``report.json`` (settings, per image, mean/median per method, fraction of images where each
cvdm variant beats each baseline (bicubic, rl, care, ...) in PSNR and SSIM, fast vs
reference, RL tuning, the trained baselines in ``settings["baselines"]``),
``report.md`` (:meth:`EvaluationReport.to_markdown`), and with matplotlib (extra
``figures``) ``figures/<stem>.png`` and ``summary.png``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cvdm_cli.core import metrics
from cvdm_cli.core.care import CareNet, care_enhance_plane
from cvdm_cli.core.model import CVDM
from cvdm_cli.core.variance import (
    DEFAULT_VARIANCE_SMOOTHING,
    pool_variance,
)
from cvdm_cli.errors import (
    ConfigError,
    DataError,
    InputNotFoundError,
    MissingExtraError,
)
from cvdm_cli.evaluation import baselines
from cvdm_cli.evaluation.figures import FigureWriter, Panels
from cvdm_cli.evaluation.report import CSV_COLUMNS, EvaluationReport, prepare_out, write_reports
from cvdm_cli.io.pairs import PARAMS_FILE, ImagePair, find_pairs, read_plane
from cvdm_cli.io.tiff import open_tiff
from cvdm_cli.io.weights import load_care, load_weights
from cvdm_cli.run.inputs import FileJob
from cvdm_cli.run.outputs import FileOutputs, prepare_output_dir
from cvdm_cli.run.plane import PlaneOutput, enhance_plane
from cvdm_cli.run.settings import DEFAULT_ENHANCE, EnhanceSettings, ModelRef
from cvdm_cli.sampling.schedules import FAST_GRID_POWER, count_steps
from cvdm_cli.training.simulation import SIMULATOR_NAME as OUR_SIMULATOR

__all__ = [
    "CSV_COLUMNS",
    "EvaluationReport",
    "ImagePair",
    "ProgressEvent",
    "evaluate",
    "find_pairs",
    "load_params",
    "read_plane",
    "score_samples",
]


BICUBIC, RL, FAST, REFERENCE = "bicubic", "rl", "cvdm_fast", "cvdm_reference"
BASELINES = (BICUBIC, RL)  # always run (RL when there is a PSF); trained ones: "care", ...

SUMMARY_KEYS = (
    "psnr",
    "ssim",
    "nrmse",
    "spearman",
    "calibrated_spearman",
    "coverage50",
    "coverage90",
    "ause",
    "mean_std",
    "seconds",
)


@dataclass(frozen=True)
class ProgressEvent:
    """Progress of :func:`evaluate`: ``task`` is "tune-rl" or "evaluate".

    ``done``/``total``: deconvolutions for "tune-rl"; images (fractional within an image)
    for "evaluate". ``detail``: the image and method being worked on.
    """

    task: str
    done: float
    total: float
    detail: str = ""


ProgressFn = Callable[[ProgressEvent], None]


# --- inputs ----------------------------------------------------------------------------


def load_params(*folders: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """Per-stem simulation parameters from the first ``params.json`` found in ``folders``.

    Format: ``{"pairs": {"<stem>": {"na": .., "emission_nm": .., "lr_pixel_nm": .., ...}}}``.
    Returns {} when there is no such file.
    """
    for folder in folders:
        path = Path(folder) / PARAMS_FILE
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            pairs = data["pairs"]
            if not isinstance(pairs, dict) or not all(isinstance(v, dict) for v in pairs.values()):
                raise TypeError("'pairs' must map stems to objects")
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(
                f"malformed parameter file ({exc})",
                path=path,
                hint='expected {"pairs": {"<stem>": {"na": ..., "emission_nm": ...}}}',
            ) from None
        return pairs
    return {}


def _pixel_nm(path: Path) -> float | None:
    """The x pixel size of a TIFF in nm from its metadata (header only), or None."""
    with open_tiff(path) as tif:
        if tif.pixel_size is None or tif.unit not in _NM_PER_UNIT:
            return None
        return float(tif.pixel_size[1]) * _NM_PER_UNIT[tif.unit]


_NM_PER_UNIT = {"nm": 1.0, "µm": 1e3, "mm": 1e6}


# --- evaluation ------------------------------------------------------------------------


def _load_model(model_or_path: CVDM | str | os.PathLike[str], device: str) -> CVDM:
    if isinstance(model_or_path, CVDM):
        return model_or_path
    return load_weights(model_or_path, device=device)


def _split(
    pairs: Sequence[ImagePair], val_fraction: float, seed: int, tune: bool
) -> tuple[list[ImagePair], list[ImagePair]]:
    """(validation, test) pairs; test sorted by stem."""
    if not tune:
        return [], list(pairs)
    if len(pairs) < 2:
        raise DataError(
            "tuning Richardson–Lucy needs at least 2 pairs (one held out for validation)",
            hint="add pairs, or give the iteration count (--rl-iterations)",
        )
    if not 0 < val_fraction < 1:
        raise ConfigError(f"val_fraction must be in (0, 1), got {val_fraction}")
    n_val = min(len(pairs) - 1, max(1, round(val_fraction * len(pairs))))
    order = np.random.default_rng(seed).permutation(len(pairs))
    val = sorted((pairs[i] for i in order[:n_val]), key=lambda p: p.stem)
    test = sorted((pairs[i] for i in order[n_val:]), key=lambda p: p.stem)
    return val, test


class _PSFs:
    """PSF per stem on the upsampled grid: a file, a Gaussian of a given sigma, or the
    simulator's PSF model from ``params.json`` (Gaussian 0.21 lambda/NA without microsim or
    for pairs of the toy simulator). ``sources`` collects what was used, ``notices`` why."""

    def __init__(
        self,
        params: Mapping[str, Mapping[str, Any]],
        scale: int,
        psf_file: Path | None,
        sigma_nm: float | None,
    ) -> None:
        self.params, self.scale, self.sigma_nm = params, scale, sigma_nm
        self.fixed: np.ndarray | None = None
        self.sources: set[str] = set()
        self.notices: list[str] = []
        if psf_file is not None:
            if not psf_file.is_file():
                raise InputNotFoundError("PSF file not found", path=psf_file)
            self.fixed = baselines.normalize_psf(_read_psf(psf_file))
            self.sources.add(f"file {psf_file.name} (used as given, on the output grid)")
        if sigma_nm is not None and not sigma_nm > 0:
            raise ConfigError(f"the PSF sigma must be positive, got {sigma_nm} nm")

    def _pixel(self, stem: str, lr_path: Path) -> float | None:
        pixel = _output_pixel_nm(self.params.get(stem), self.scale)
        if pixel is None:  # params.json has none: the LR file's calibration
            file_pixel = _pixel_nm(lr_path)
            pixel = None if file_pixel is None else file_pixel / self.scale
        return pixel

    def available(self, stem: str, lr_path: Path) -> bool:
        """Whether a PSF can be made for this pair (cheap: no PSF is computed)."""
        if self.fixed is not None:
            return True
        p = self.params.get(stem) or {}
        described = self.sigma_nm is not None or ("na" in p and "emission_nm" in p)
        return described and self._pixel(stem, lr_path) is not None

    def get(self, stem: str, lr_path: Path) -> np.ndarray:
        """The PSF for a pair for which :meth:`available` is true."""
        if self.fixed is not None:
            return self.fixed
        p = self.params.get(stem)
        pixel = self._pixel(stem, lr_path)
        if pixel is None:  # pragma: no cover - guarded by available()
            raise DataError("no pixel size for the PSF", path=lr_path)
        # our simulator's own PSF model only for its pairs (the toy's and other generators'
        # pairs, e.g. a held-out set, get the Gaussian approximation from NA and wavelength)
        ours = p is not None and p.get("simulator", OUR_SIMULATOR) == OUR_SIMULATOR
        sim = None if self.sigma_nm is not None or not ours else _simulation_psf()
        try:
            psf, source = baselines.psf_from_params(
                p, pixel, scale=self.scale, sigma_nm=self.sigma_nm, simulation_psf=sim
            )
        except MissingExtraError:  # no microsim: the Gaussian approximation, said aloud
            if not self.notices:
                self.notices.append(
                    "microsim is not installed: Richardson–Lucy uses the Gaussian approximation"
                    " of the widefield PSF (pip install 'cvdm-cli[simulate]' for the exact one)"
                )
            psf, source = baselines.psf_from_params(p, pixel, scale=self.scale)
        self.sources.add(source.split(" sigma=")[0] if self.sigma_nm is None else source)
        return psf

    @property
    def source(self) -> str:
        where = "" if self.fixed is not None or self.sigma_nm else f" from {PARAMS_FILE}"
        extra = "" if self.fixed is not None else ", integrated over the input pixel"
        return "; ".join(sorted(self.sources)) + where + extra


def _read_psf(path: Path) -> np.ndarray:
    """All planes of a PSF TIFF, (Z, Y, X) or (Y, X), float64."""
    with open_tiff(path) as tif:
        planes = [np.asarray(p, dtype=np.float64) for p in tif.iter_planes()]
    return np.stack(planes) if len(planes) > 1 else planes[0]


def _simulation_psf() -> Callable[[Mapping[str, Any], float], np.ndarray] | None:
    """``widefield_psf_2d`` of :mod:`cvdm_cli.training.simulation` on a params.json entry."""
    try:
        from cvdm_cli.training import simulation
    except ImportError:  # pragma: no cover - the module ships with the package
        return None

    def psf(entry: Mapping[str, Any], pixel_nm: float) -> np.ndarray:
        # the pair's own optics, defocus included: the strongest RL a PSF can give
        params = simulation.SimulationParams.from_dict(entry)
        return simulation.widefield_psf_2d(params, pixel_nm, defocus_nm=params.defocus_nm)

    return psf


def _output_pixel_nm(p: Mapping[str, Any] | None, scale: int) -> float | None:
    if not p:
        return None
    if "lr_pixel_nm" in p:
        return float(p["lr_pixel_nm"]) / scale
    if "hr_pixel_nm" in p:
        return float(p["hr_pixel_nm"])
    return None


def _row(stem: str, method: str, fair: metrics.FairScores, **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {k: math.nan for k in CSV_COLUMNS}
    row.update(stem=stem, method=method, **fair.metrics(), **extra)
    return row


def _summaries(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        mean, med = {}, {}
        for k in SUMMARY_KEYS:
            vals = np.array([r[k] for r in rs], dtype=np.float64)
            vals = vals[~np.isnan(vals)]
            mean[k] = float(vals.mean()) if vals.size else math.nan
            med[k] = float(np.median(vals)) if vals.size else math.nan
        entry: dict[str, Any] = {"n": len(rs), "mean": mean, "median": med}
        if not math.isnan(rs[0]["calibrated50"]):
            entry["calibrated"] = {
                "coverage50": rs[0]["calibrated50"],
                "coverage90": rs[0]["calibrated90"],
            }
        out[m] = entry
    return out


def _by(rows: list[dict[str, Any]], method: str) -> dict[str, dict[str, Any]]:
    return {r["stem"]: r for r in rows if r["method"] == method}


def _wins(rows: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in (m for m in methods if m.startswith("cvdm")):
        mine = _by(rows, m)
        # every method that is not cvdm is a baseline: bicubic, rl, care, care2, ...
        for base in (b for b in methods if not b.startswith("cvdm")):
            theirs = _by(rows, base)
            stems = [s for s in mine if s in theirs]
            if not stems:
                continue
            dp = np.array([mine[s]["psnr"] - theirs[s]["psnr"] for s in stems])
            ds = np.array([mine[s]["ssim"] - theirs[s]["ssim"] for s in stems])
            out.setdefault(m, {})[base] = {
                "n": len(stems),
                "psnr_win_fraction": float(np.mean(dp > 0)),
                "ssim_win_fraction": float(np.mean(ds > 0)),
                "mean_psnr_gain": float(dp.mean()),
                "mean_ssim_gain": float(ds.mean()),
                # the images to look at: where cvdm does not beat the baseline (ties lose)
                "psnr_lost": [s for s, d in zip(stems, dp, strict=True) if not d > 0],
                "ssim_lost": [s for s, d in zip(stems, ds, strict=True) if not d > 0],
            }
    return out


def _fast_vs_reference(
    rows: list[dict[str, Any]], samples: int, reference_samples: int
) -> dict[str, Any] | None:
    ref = _by(rows, REFERENCE)
    if not ref:
        return None
    fast = _by(rows, FAST)
    equal = _by(rows, f"{FAST}_k{reference_samples}") if reference_samples < samples else fast
    stems = [s for s in ref if s in fast and s in equal]

    def diff(a: dict[str, dict[str, Any]], key: str) -> float:
        return float(np.mean([a[s][key] - ref[s][key] for s in stems]))

    return {
        "n": len(stems),
        "fast_samples": samples,
        "reference_samples": reference_samples,
        "psnr_difference": diff(fast, "psnr"),
        "ssim_difference": diff(fast, "ssim"),
        "psnr_difference_equal_samples": diff(equal, "psnr"),
        "ssim_difference_equal_samples": diff(equal, "ssim"),
    }


@dataclass(frozen=True)
class _Run:
    """Settings of the per-image work, fixed for one evaluation.

    fast / reference: the settings ``cvdm enhance`` would run with (one EnhanceSettings
    each, samples kept for scoring); every image is sampled as plane 0 of its file with
    seed ``fast.seed``, as ``cvdm enhance --seed`` samples each file. model_ref names the
    model in the provenance of saved predictions; save_dir: where they go (None: nowhere);
    trained: the CARE baselines, each with its method name.
    """

    model: CVDM
    scale: int
    samplers: tuple[str, ...]
    fast: EnhanceSettings
    reference: EnhanceSettings
    rl_iterations: int | None
    model_ref: ModelRef
    save_dir: Path | None = None
    trained: tuple[tuple[str, CareNet], ...] = ()  # (method name, net) per --baseline

    @property
    def samples(self) -> int:
        return self.fast.samples

    @property
    def reference_samples(self) -> int:
        return self.reference.samples

    @property
    def steps(self) -> int:
        return count_steps("fast", self.fast.steps, self.model.config.timesteps)

    @property
    def reference_steps(self) -> int:
        return count_steps("reference", self.fast.steps, self.model.config.timesteps)

    @property
    def variance_smoothing(self) -> float:
        return self.fast.variance_smoothing

    def calls(self, with_reference: bool) -> int:
        """Denoiser passes (image-samples x steps) for one image."""
        fast = self.samples * self.steps if "fast" in self.samplers else 0
        ref = self.reference_samples * self.reference_steps if with_reference else 0
        return fast + ref


class _Progress:
    """Turns per-image sampler callbacks into one "evaluate" progress in images."""

    def __init__(self, fn: ProgressFn | None, n_images: int) -> None:
        self.fn, self.n = fn, n_images
        self.index, self.calls, self.done = 0, 1, 0

    def start(self, index: int, calls: int) -> None:
        self.index, self.calls, self.done = index, max(calls, 1), 0

    def emit(self, detail: str, extra: int = 0) -> None:
        if self.fn is not None:
            frac = min(1.0, (self.done + extra) / self.calls)
            self.fn(ProgressEvent("evaluate", self.index + frac, self.n, detail))


def _sample(
    run: _Run, pair: ImagePair, lr: np.ndarray, settings: EnhanceSettings,
    on_progress: Callable[[int, int], None],
) -> tuple[np.ndarray, PlaneOutput, float]:  # fmt: skip
    """cvdm samples (K, H, W) in input units (float64), the plane's outputs as ``cvdm
    enhance`` computes them (input units), and the seconds they took.

    ``lr`` is the raw plane as ``cvdm enhance`` reads it (the file's dtype), so the
    normalisation, the draws and the outputs are those of ``cvdm enhance`` on that file.
    """
    t0 = time.perf_counter()
    out = enhance_plane(
        run.model, lr, 0, settings, label=f"{pair.lr} plane 0", progress=on_progress
    )
    seconds = time.perf_counter() - t0
    if out.samples is None:  # pragma: no cover - save_samples is set for scoring
        raise RuntimeError("the plane was sampled without its samples")
    return out.samples.astype(np.float64), out, seconds


def _save_prediction(run: _Run, pair: ImagePair, out: PlaneOutput) -> None:
    """Write ``<stem>_cvdm.tif`` and ``<stem>_cvdm_var.tif`` of ``pair.lr`` into
    ``run.save_dir`` exactly as ``cvdm enhance`` writes them (same writer, provenance)."""
    assert run.save_dir is not None
    settings = dataclasses.replace(run.fast, save_samples=False)
    job = FileJob(input=pair.lr, out_dir=run.save_dir)
    with (
        open_tiff(pair.lr) as inp,
        FileOutputs(job, inp, settings, run.scale, run.model_ref) as files,
    ):
        files.write(dataclasses.replace(out, index=0))
        files.commit()


def score_samples(
    stem: str,
    method: str,
    s: np.ndarray,
    hr: np.ndarray,
    *,
    variance_smoothing: float = DEFAULT_VARIANCE_SMOOTHING,
    **extra: Any,
) -> tuple[dict[str, Any], metrics.FairScores, np.ndarray | None]:
    """Row for the sample mean (fair scores; uncertainty scores when K >= 2), and the std.

    The samples go through the same least-squares map as their mean, so std and intervals
    are in the target's units. The std is the square root of the sample variance pooled
    over ``variance_smoothing`` output pixels, as ``cvdm enhance`` writes it.
    """
    fair = metrics.fair_scores(s.mean(axis=0), hr)
    row = _row(stem, method, fair, samples=s.shape[0], **extra)
    if s.shape[0] < 2:
        return row, fair, None
    fitted = fair.alpha * s + fair.beta
    scores = metrics.uncertainty_scores(
        fitted, fair.fitted, fair.target, smoothing=variance_smoothing
    )
    row.update(scores.metrics())
    std = np.sqrt(pool_variance(fitted.var(axis=0, ddof=1), variance_smoothing))
    return row, fair, std


def _score_pair(
    run: _Run,
    pair: ImagePair,
    lr_raw: np.ndarray,
    hr: np.ndarray,
    psf: np.ndarray | None,
    *,
    with_reference: bool,
    progress: _Progress,
) -> tuple[list[dict[str, Any]], Panels]:
    """All methods on one pair: rows of scores and the figure panels.

    lr_raw: the LR plane in the file's dtype (cvdm samples it as ``cvdm enhance`` does);
    the baselines and the figure work on it as float64. hr: float64, ``scale`` x the LR.
    """
    stem = pair.stem
    lr = np.asarray(lr_raw, dtype=np.float64)
    progress.emit(f"{stem}: baselines")
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    bic = baselines.bicubic_upsample(lr, run.scale)
    fair_bic = metrics.fair_scores(bic, hr)
    rows.append(_row(stem, BICUBIC, fair_bic, seconds=time.perf_counter() - t0))
    fair_rl = None
    if psf is not None and run.rl_iterations is not None:
        t0 = time.perf_counter()
        rl = baselines.richardson_lucy(bic, psf, run.rl_iterations)
        fair_rl = metrics.fair_scores(rl, hr)
        rows.append(
            _row(stem, RL, fair_rl, steps=run.rl_iterations, seconds=time.perf_counter() - t0)
        )
    for name, net in run.trained:  # the raw plane cvdm sees, normalised by the net's rule
        t0 = time.perf_counter()
        pred = care_enhance_plane(
            net, lr_raw, nan_policy="replace" if run.fast.replace_nan else "raise",
            label=f"{pair.lr} plane 0",
        )  # fmt: skip
        fair_care = metrics.fair_scores(pred.astype(np.float64), hr)
        rows.append(_row(stem, name, fair_care, seconds=time.perf_counter() - t0))

    fair_cvdm, std_cvdm = None, None
    for sampler in run.samplers:
        if sampler == "reference" and not with_reference:
            continue
        method = FAST if sampler == "fast" else REFERENCE
        n_steps = run.steps if sampler == "fast" else run.reference_steps

        settings = run.fast if sampler == "fast" else run.reference
        share = settings.samples * n_steps  # this sampler's part of the image's passes

        def on_progress(
            done: int, total: int, detail: str = f"{stem}: {method}", share: int = share
        ) -> None:
            progress.emit(detail, extra=round(share * done / max(total, 1)))

        s, out, seconds = _sample(run, pair, lr_raw, settings, on_progress)
        if sampler == "fast" and run.save_dir is not None:
            _save_prediction(run, pair, out)
        progress.done += share
        row, fair, std = score_samples(
            stem, method, s, hr, variance_smoothing=run.variance_smoothing,
            steps=n_steps, seconds=seconds,
        )  # fmt: skip
        rows.append(row)
        if sampler == "fast":
            fair_cvdm, std_cvdm = fair, std
            k = run.reference_samples
            if "reference" in run.samplers and k < run.samples:  # fast at equal sample count
                sub, _, _ = score_samples(
                    stem, f"{FAST}_k{k}", s[:k], hr, variance_smoothing=run.variance_smoothing,
                    steps=n_steps, seconds=seconds * k / run.samples,
                )  # fmt: skip
                rows.append(sub)

    lo, hi = np.percentile(lr, [0.1, 99.9])
    images = {
        "input": (lr - lo) / max(hi - lo, 1e-12),
        "bicubic": fair_bic.fitted,
        "RL": None if fair_rl is None else fair_rl.fitted,
        "cvdm": None if fair_cvdm is None else fair_cvdm.fitted,
        "truth": fair_bic.target,
        "std": std_cvdm,
        "abs error": None if fair_cvdm is None else np.abs(fair_cvdm.fitted - fair_cvdm.target),
    }
    shown = (BICUBIC, RL, *(name for name, _ in run.trained), FAST)
    title = f"{stem}: " + " · ".join(
        f"{r['method']} {r['psnr']:.2f} dB, SSIM {r['ssim']:.3f}" for r in rows
        if r["method"] in shown
    )  # fmt: skip
    panels = Panels(
        stem, {k: None if v is None else v.astype(np.float32) for k, v in images.items()}, title
    )
    return rows, panels


def evaluate(
    model_path_or_model: CVDM | str | os.PathLike[str],
    lr_dir: str | os.PathLike[str],
    hr_dir: str | os.PathLike[str],
    *,
    samples: int = DEFAULT_ENHANCE.samples,
    steps: int = DEFAULT_ENHANCE.steps,
    samplers: Sequence[str] = ("fast", "reference"),
    reference_samples: int = 2,
    reference_limit: int | None = None,
    limit: int | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    figures: bool = True,
    val_fraction: float = 0.25,
    rl_iterations: int | None = None,
    rl_grid: Sequence[int] = baselines.DEFAULT_RL_GRID,
    psf: str | os.PathLike[str] | None = None,
    psf_sigma_nm: float | None = None,
    seed: int = 0,
    sampler_seed: int | None = None,
    tta: bool = DEFAULT_ENHANCE.tta,
    antithetic: bool = DEFAULT_ENHANCE.antithetic,
    passes: int | str | Sequence[int] | None = DEFAULT_ENHANCE.passes,
    variance_smoothing: float = DEFAULT_ENHANCE.variance_smoothing,
    tile: int | None = DEFAULT_ENHANCE.tile,
    overlap: int = DEFAULT_ENHANCE.overlap,
    tiling: str = DEFAULT_ENHANCE.tiling,
    batch_size: int | None = DEFAULT_ENHANCE.batch_size,
    device: str = "cpu",
    precision: str = DEFAULT_ENHANCE.precision,
    save_predictions: str | os.PathLike[str] | None = None,
    model_name: str = "",
    model_sha256: str = "",
    model_source: str = "",
    extra_baselines: Sequence[str | os.PathLike[str]] = (),
    progress: ProgressFn | None = None,
) -> EvaluationReport:
    """Score cvdm, bicubic and Richardson–Lucy on the pairs of ``lr_dir`` and ``hr_dir``.

    Args:
        model_path_or_model: a CVDM or a .safetensors path (resolve registry names first).
        samples, steps: fast-sampler samples per image and steps per sample.
        samplers: any of "fast", "reference" (the reference always takes T - 1 steps).
        reference_samples: samples per image of the reference sampler.
        reference_limit: run the reference sampler on the first N scored images only.
        limit: score only the first N test images (by stem), after the validation split.
        out_dir: folder for metrics.csv, report.json, report.md and figures (None: nothing
            is written). Refuses a folder that already holds a report unless ``overwrite``.
        figures: draw PNGs when matplotlib is installed (else a notice in the report).
        val_fraction: share of pairs held out to tune the RL iteration count over
            ``rl_grid``; ignored when ``rl_iterations`` is given (then every pair is scored).
        psf: a PSF TIFF sampled at the output pixel size (2D, or a 3D stack whose brightest
            plane is used); psf_sigma_nm: a Gaussian PSF of this sigma instead. Default: the
            simulator's PSF from ``params.json`` next to lr/ and hr/; with no PSF at all,
            RL is skipped with a notice.
        seed: validation split and sampler noise: every image is sampled as plane 0 of
            its file with this seed, as ``cvdm enhance --seed`` samples each file.
        sampler_seed: sampler noise only, so that the same split and baselines can be
            rescored with other draws; default ``seed``.
        antithetic: draw the samples in antithetic pairs, as ``cvdm enhance --antithetic``
            (:func:`cvdm_cli.sampling.noise.noise_mate`).
        passes: split the fast sampler's steps into passes that restart from t_max, as
            ``cvdm enhance --passes`` (a count or the steps per pass; None: passes of 2 steps).
        tta: draw sample k from view k % 8 of the input (flips and quarter turns,
            :mod:`cvdm_cli.sampling.views`), as ``cvdm enhance`` does by default.
        variance_smoothing: Gaussian sigma (output pixels) over which the sample variance
            is pooled before its std is scored and drawn, as ``cvdm enhance`` writes it
            (:mod:`cvdm_cli.core.variance`); 0 scores the per-pixel sample std.
        samples, steps, tta, antithetic, passes, variance_smoothing, tile, overlap, tiling,
            batch_size, precision: the fields of the
            :class:`~cvdm_cli.run.settings.EnhanceSettings` cvdm runs with, defaults from
            there (the ``cvdm enhance`` defaults; the CLI gives the device's tile default).
        save_predictions: a folder for each scored image's ``<stem>_cvdm.tif`` and
            ``<stem>_cvdm_var.tif``, byte for byte what ``cvdm enhance`` writes for that LR
            file with the same model, seed and settings (``model_name``/``model_sha256``
            are recorded in their provenance; ``overwrite`` replaces existing ones).
        model_source: how the report names the model file (when a loaded model is given).
        extra_baselines: trained baselines as ``"care:PATH"`` specs (``cvdm evaluate
            --baseline``): CARE nets from ``cvdm train-care``, scored as methods "care",
            "care2", ... (:func:`cvdm_cli.evaluation.baselines.parse_trained_baselines`),
            on ``device``; their scale must be the model's.
        device: where a model loaded from a path goes ("cpu", "cuda", ...).
        precision: the denoiser's autocast, "fp32", "bf16" or "fp16" (resolved already:
            :func:`cvdm_cli.core.devices.pick_precision`); schedule and updates stay float32.
        progress: called with :class:`ProgressEvent` ("tune-rl", then "evaluate").
    Raises:
        DataError (unpaired files, HR not exactly scale x LR, bad params.json),
        InputNotFoundError, ConfigError, OutputExistsError.
    """
    samplers = tuple(samplers)
    unknown = [s for s in samplers if s not in ("fast", "reference")]
    if unknown or not samplers:
        raise ConfigError(f"unknown sampler(s) {unknown}", hint="use 'fast' and/or 'reference'")
    if reference_samples < 1:
        raise ConfigError(
            f"must be >= 1, got {reference_samples}", path="--reference-samples", hint="e.g. 2"
        )
    if (limit is not None and limit < 1) or (rl_iterations is not None and rl_iterations < 1):
        raise ConfigError("limit and rl_iterations must be >= 1")
    if passes is not None and not isinstance(passes, str):
        passes = ",".join(str(n) for n in passes) if isinstance(passes, Sequence) else str(passes)
    # what `cvdm enhance` would run with (validated here, once); samples kept for scoring
    fast_settings = EnhanceSettings(
        samples=samples, steps=steps, tile=tile, overlap=overlap, tiling=tiling,
        batch_size=batch_size, precision=precision,
        seed=seed if sampler_seed is None else sampler_seed,
        tta=tta, antithetic=antithetic, passes=passes, variance_smoothing=variance_smoothing,
        save_samples=True, overwrite=overwrite,
    )  # fmt: skip
    reference_settings = dataclasses.replace(
        fast_settings, sampler="reference", samples=reference_samples, passes=None
    )
    fast_plan = fast_settings.pass_plan
    trained_specs = baselines.parse_trained_baselines(extra_baselines)  # before any file
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        prepare_out(out, overwrite)

    model = _load_model(model_path_or_model, device)
    scale = int(model.config.scale)
    trained = _load_trained(trained_specs, device, scale)
    pairs = find_pairs(lr_dir, hr_dir)
    params = load_params(Path(lr_dir).parent, Path(hr_dir).parent)
    psfs = _PSFs(params, scale, Path(psf) if psf is not None else None, psf_sigma_nm)
    notices: list[str] = []

    def load(pair: ImagePair) -> tuple[np.ndarray, np.ndarray]:
        """(LR in the file's dtype, as cvdm enhance reads it; HR as float64)."""
        lr, hr = read_plane(pair.lr, dtype=None), read_plane(pair.hr)
        if hr.shape != (scale * lr.shape[0], scale * lr.shape[1]):
            raise DataError(
                f"HR is {hr.shape[0]}x{hr.shape[1]} but must be exactly {scale}x the LR "
                f"({lr.shape[0]}x{lr.shape[1]})",
                path=pair.hr,
                hint=f"the model's scale factor is {scale}; check the pairing of lr/ and hr/",
            )
        return lr, hr

    # --- Richardson–Lucy: PSFs, then the iteration count on the validation split ------
    missing = [p.stem for p in pairs if not psfs.available(p.stem, p.lr)]
    tune = not missing and rl_iterations is None
    val, test = _split(pairs, val_fraction, seed, tune=tune)
    tuning: baselines.RLTuning | None = None
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        notices.append(
            f"Richardson–Lucy skipped: no PSF for {missing[0]}{more} (give --psf FILE.tif, "
            f"--psf-sigma-nm, or a {PARAMS_FILE} with na, emission_nm and lr_pixel_nm)"
        )
    elif tune:
        data = [load(p) for p in val]

        def tune_cb(done: int, total: int) -> None:
            if progress is not None:
                progress(ProgressEvent("tune-rl", done, total, "Richardson–Lucy iterations"))

        tuning = baselines.tune_rl_iterations(
            [baselines.bicubic_upsample(lr.astype(np.float64), scale) for lr, _ in data],
            [hr for _, hr in data],
            [psfs.get(p.stem, p.lr) for p in val],
            rl_grid,
            stems=[p.stem for p in val],
            callback=tune_cb,
        )
    if limit is not None:
        test = test[:limit]
    n_ref = 0
    if "reference" in samplers:
        n_ref = len(test) if reference_limit is None else max(0, min(reference_limit, len(test)))

    save_dir = None
    if save_predictions is not None:
        save_dir = prepare_output_dir(save_predictions)
    run = _Run(
        model=model,
        scale=scale,
        samplers=samplers,
        fast=fast_settings,
        reference=reference_settings,
        rl_iterations=None if missing else (tuning.best if tuning else rl_iterations),
        model_ref=ModelRef(
            path=str(model_path_or_model) if not hasattr(model_path_or_model, "config") else "",
            device=str(model.device),
            name=model_name or _model_name(model_source or model_path_or_model),
            sha256=model_sha256,
        ),
        save_dir=save_dir,
        trained=tuple((spec.name, net) for spec, net in trained),
    )

    # --- score every test image ----------------------------------------------------------
    writer = None
    if out is not None and figures:
        try:
            writer = FigureWriter(out)
        except ModuleNotFoundError as exc:
            if exc.name is None or not exc.name.startswith("matplotlib"):
                raise
            notices.append(
                "figures skipped: matplotlib is not installed (pip install 'cvdm-cli[figures]')"
            )
    rows: list[dict[str, Any]] = []
    track = _Progress(progress, len(test))
    t_start = time.perf_counter()
    for index, pair in enumerate(test):
        lr, hr = load(pair)
        with_ref = index < n_ref
        track.start(index, run.calls(with_ref))
        pair_rows, panels = _score_pair(
            run, pair, lr, hr, None if missing else psfs.get(pair.stem, pair.lr),
            with_reference=with_ref, progress=track,
        )  # fmt: skip
        rows.extend(pair_rows)
        if writer is not None:
            writer.add(panels)
        track.start(index + 1, 1)
        track.emit(f"{pair.stem}: done")

    settings: dict[str, Any] = {
        "lr_dir": str(lr_dir),
        "hr_dir": str(hr_dir),
        "model": _model_description(model_source or model_path_or_model, model),
        "scale": scale,
        "samplers": list(samplers),
        "samples": samples if "fast" in samplers else None,
        "steps": run.steps if "fast" in samplers else None,
        "reference_samples": reference_samples if n_ref else None,
        "reference_steps": run.reference_steps if n_ref else None,
        "reference_images": n_ref,
        "n_pairs": len(pairs),
        "n_validation": len(val),
        "n_scored": len(test),
        "validation_stems": [p.stem for p in val],
        "rl_iterations": run.rl_iterations,
        "psf_source": None if missing else psfs.source,
        "seed": seed,
        "sampler_seed": run.fast.seed,
        # every image is plane 0 of its file, sampled with sampler_seed: cvdm enhance's draws
        "seeding": "as cvdm enhance --seed sampler_seed on each LR file",
        "tta": tta,
        "antithetic": antithetic,
        "passes": list(fast_plan) if "fast" in samplers else None,
        "grid_power": FAST_GRID_POWER if "fast" in samplers else None,
        "tile": run.fast.tile,
        "overlap": run.fast.overlap,
        "tiling": run.fast.tiling,
        "predictions": None if save_dir is None else str(save_dir),
        "variance_smoothing": variance_smoothing,
        "device": str(model.device),
        "precision": precision,
        "input_percentiles": [model.config.norm_low, model.config.norm_high],
        "baselines": [_trained_description(spec, net) for spec, net in trained],
        "target_percentiles": [metrics.TARGET_PMIN, metrics.TARGET_PMAX],
        "seconds_total": time.perf_counter() - t_start,
    }
    report = EvaluationReport(
        settings=settings,
        rows=rows,
        summary=_summaries(rows),
        wins=_wins(rows),
        fast_vs_reference=_fast_vs_reference(rows, samples, reference_samples)
        if "fast" in samplers
        else None,
        rl_tuning=tuning.to_dict() if tuning is not None else None,
        notices=notices + psfs.notices,
    )
    if writer is not None:
        report.files.update(writer.finish(report))
    if out is not None:
        write_reports(report, out)
    return report


def _load_trained(
    specs: Sequence[baselines.TrainedBaseline], device: str, scale: int
) -> list[tuple[baselines.TrainedBaseline, CareNet]]:
    """Each ``--baseline`` loaded (only CARE so far), refusing another scale than cvdm's."""
    out = []
    for spec in specs:
        net = load_care(spec.path, device=device)
        if net.config.scale != scale:
            raise ConfigError(
                f"the CARE network is {net.config.scale}x but the model is {scale}x",
                path=spec.path,
                hint="train the baseline on the same pairs as the model (cvdm train-care)",
            )
        out.append((spec, net))
    return out


def _trained_description(spec: baselines.TrainedBaseline, net: CareNet) -> dict[str, Any]:
    """What the report says about a trained baseline: file, network size, its training."""
    training = net.info.get("training")
    keep = ("steps", "batch_size", "patch_lr", "lr", "loss", "seconds")
    return {
        "name": spec.name,
        "kind": spec.kind,
        "source": str(spec.path),
        "preset": net.config.name,
        "parameters": net.n_parameters(),
        "input_percentiles": [net.config.norm_low, net.config.norm_high],
        "training": {k: training[k] for k in keep if k in training}
        if isinstance(training, dict)
        else {},
    }


def _model_name(spec: Any) -> str:
    """How saved predictions name an in-memory model or a file (its stem), as enhance does."""
    return "in-memory model" if hasattr(spec, "config") else Path(spec).stem


def _model_description(spec: Any, model: CVDM) -> dict[str, Any]:
    info = {k: v for k, v in model.info.items() if isinstance(v, str | int | float | bool)}
    return {
        "source": "in-memory model" if hasattr(spec, "config") else str(spec),
        "preset": model.config.name,
        "timesteps": model.config.timesteps,
        "info": info,
    }
