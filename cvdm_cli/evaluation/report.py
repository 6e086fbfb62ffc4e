"""Tables, files and figures of an evaluation (``cvdm evaluate``).

:class:`EvaluationReport` holds the scores and renders them as CSV, JSON and markdown;
:func:`write_reports` writes those files atomically; :class:`FigureWriter` draws one PNG per
image (input | bicubic | RL | cvdm | truth | std | abs error) and a summary figure, with
matplotlib (the optional ``figures`` extra). The scoring itself is in
``cvdm_cli.evaluation.evaluate``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cvdm_cli.errors import OutputExistsError, OutputNotWritableError

CSV_COLUMNS = (
    "stem",
    "method",
    "psnr",
    "ssim",
    "nrmse",
    "spearman",
    "calibrated_spearman",
    "coverage50",
    "calibrated50",
    "coverage90",
    "calibrated90",
    "ause",
    "mean_std",
    "alpha",
    "beta",
    "data_range",
    "samples",
    "steps",
    "seconds",
)
SUMMARY_IMAGES = 6  # rows of the summary figure


@dataclass
class Panels:
    """Display images of one pair on the output grid, in target units (float32)."""

    stem: str
    images: dict[str, np.ndarray | None]  # COLUMNS -> image or None (method not run)
    title: str


COLUMNS = ("input", "bicubic", "RL", "cvdm", "truth", "std", "abs error")


# --- report ----------------------------------------------------------------------------


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


@dataclass
class EvaluationReport:
    """Everything :func:`evaluate` measured.

    rows: one dict per (image, method) with the keys of :data:`CSV_COLUMNS` (NaN where a
    metric does not apply, e.g. uncertainty for the baselines). summary: method -> {"n",
    "mean": {metric: value}, "median": {...}}. wins: cvdm method -> baseline -> {"n",
    "psnr_win_fraction", "ssim_win_fraction", "mean_psnr_gain", "mean_ssim_gain", "psnr_lost",
    "ssim_lost"} over the images both were run on (the lost lists name the images where cvdm
    is not better). fast_vs_reference: mean PSNR/SSIM of fast minus reference on
    the images the reference ran on (also at equal sample counts), or None.
    """

    settings: dict[str, Any]
    rows: list[dict[str, Any]]
    summary: dict[str, dict[str, Any]]
    wins: dict[str, dict[str, dict[str, Any]]]
    fast_vs_reference: dict[str, Any] | None
    rl_tuning: dict[str, Any] | None
    notices: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def methods(self) -> list[str]:
        return list(self.summary)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN -> null, inf -> "inf")."""
        images: dict[str, dict[str, Any]] = {}
        for row in self.rows:
            images.setdefault(row["stem"], {})[row["method"]] = {
                k: v for k, v in row.items() if k not in ("stem", "method")
            }
        return _nan_to_none(
            {
                "settings": self.settings,
                "summary": self.summary,
                "wins": self.wins,
                "fast_vs_reference": self.fast_vs_reference,
                "rl_tuning": self.rl_tuning,
                "images": images,
                "notices": self.notices,
            }
        )

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: _csv_value(row.get(k)) for k in CSV_COLUMNS})
        return buf.getvalue()

    def to_markdown(self) -> str:
        """Tables for docs: scores per method, wins over baselines, fast vs reference."""
        lines = [
            "| method | images | PSNR mean (median) | SSIM mean (median) | NRMSE | "
            "Spearman(std, err) (calib.) | cov. 50% (calib.) | cov. 90% (calib.) | AUSE "
            "| s / image |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for method, s in self.summary.items():
            mean, med = s["mean"], s["median"]
            cal = s.get("calibrated", {})
            lines.append(
                f"| {method} | {s['n']} | {_fmt(mean['psnr'], 2)} ({_fmt(med['psnr'], 2)}) "
                f"| {_fmt(mean['ssim'])} ({_fmt(med['ssim'])}) | {_fmt(mean['nrmse'], 4)} "
                f"| {_fmt(mean['spearman'])} ({_fmt(mean.get('calibrated_spearman'))}) "
                f"| {_fmt(mean['coverage50'])} ({_fmt(cal.get('coverage50'))}) "
                f"| {_fmt(mean['coverage90'])} ({_fmt(cal.get('coverage90'))}) "
                f"| {_fmt(mean['ause'], 4)} | {_fmt(mean['seconds'], 1)} |"
            )
        if self.wins:
            lines += [
                "",
                "| cvdm | vs | images | PSNR wins | SSIM wins | mean PSNR gain (dB) | "
                "mean SSIM gain |",
                "|---|---|---|---|---|---|---|",
            ]
            for method, per in self.wins.items():
                for base, w in per.items():
                    lines.append(
                        f"| {method} | {base} | {w['n']} | {w['psnr_win_fraction']:.0%} "
                        f"| {w['ssim_win_fraction']:.0%} | {_fmt(w['mean_psnr_gain'], 2)} "
                        f"| {_fmt(w['mean_ssim_gain'])} |"
                    )
            lost = []
            for base, w in self.wins.get("cvdm_fast", {}).items():
                for key, name in (("psnr_lost", "PSNR"), ("ssim_lost", "SSIM")):
                    if w.get(key):
                        lost.append(f"{name} vs {base}: {', '.join(w[key])}")
            if lost:
                lines += ["", "Images where cvdm_fast is not better: " + "; ".join(lost) + "."]
        if self.fast_vs_reference:
            f = self.fast_vs_reference
            lines += [
                "",
                f"Fast minus reference sampler on {f['n']} image(s): "
                f"{_fmt(f['psnr_difference'], 2)} dB PSNR, {_fmt(f['ssim_difference'])} SSIM "
                f"(fast {f['fast_samples']} samples vs reference {f['reference_samples']}); "
                f"at equal sample counts ({f['reference_samples']}): "
                f"{_fmt(f['psnr_difference_equal_samples'], 2)} dB, "
                f"{_fmt(f['ssim_difference_equal_samples'])} SSIM.",
            ]
        if self.rl_tuning:
            t = self.rl_tuning
            lines += [
                "",
                f"Richardson–Lucy: {t['best_iterations']} iterations, "
                f"{'tuned on ' + str(t['n_images']) + ' validation image(s) left out of the table' if t['n_images'] else 'given by the user'}"  # noqa: E501
                f"; PSF: {self.settings.get('psf_source', '?')}.",
            ]
        st = self.settings
        reference = (
            f"; reference: {st.get('reference_samples')} samples x "
            f"{st.get('reference_steps')} steps"
            if st.get("reference_samples")
            else ""
        )
        seeds = ""
        if st.get("sampler_seed") is not None and st.get("sampler_seed") != st.get("seed"):
            seeds = f" (split seed {st.get('seed')}, sampler seed {st.get('sampler_seed')})"
        tta = (
            " Sample k is drawn from flip/rotation k mod 8 of the input (TTA)."
            if st.get("tta")
            else ""
        )
        antithetic = (
            " Samples in antithetic pairs (2j + 1 with the negated noise of 2j)."
            if st.get("antithetic")
            else ""
        )
        plan = st.get("passes") or []
        passes = (
            f" Fast sampler in {len(plan)} passes of {'+'.join(map(str, plan))} steps, each"
            " restarting from the previous sample noised back to t_max."
            if len(plan) > 1
            else ""
        )
        power = st.get("grid_power")
        if power is not None:  # absent from older reports (uniform then)
            grid = "uniform in t" if power == 1 else f"t_i = t_max (1 - i/n)^{power:g}"
            passes += f" Fast time grid within a pass: {grid}."
        smoothing = st.get("variance_smoothing")
        pooled = (
            f" std: square root of the sample variance pooled over a Gaussian of sigma "
            f"{smoothing:g} output pixels."
            if smoothing
            else " std: per-pixel sample std."
            if smoothing is not None
            else ""
        )
        precision = (
            f" Denoiser in {st['precision']} autocast."
            if st.get("precision") not in (None, "fp32")
            else ""
        )
        lines += [
            "",
            f"Scores after the CSBDeep fair comparison (target percentiles 0.1/99.9, "
            f"least-squares scale and offset). cvdm: {st.get('samples')} fast samples x "
            f"{st.get('steps')} steps{reference}{seeds}.{tta}{antithetic}{passes}{pooled}"
            f"{precision} "
            "'calib.': "
            "what a "
            "calibrated sampler would reach with that many samples (Spearman: leave-one-out, "
            "each sample in turn as the truth).",
        ]
        return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> Any:
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return repr(value)
    return "" if value is None else value


# --- outputs ---------------------------------------------------------------------------


def prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OutputExistsError("exists and is not a folder", path=out, hint="choose --out DIR")
    if (out / "report.json").exists() and not overwrite:
        raise OutputExistsError(
            "already holds an evaluation report",
            path=out,
            hint="choose another --out folder, or pass --overwrite",
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputNotWritableError(
            f"cannot create the folder ({exc.strerror})", path=out
        ) from None


def _write_text(path: Path, text: str) -> None:
    """Write via a temporary name so that a partial file never has the final name."""
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_reports(report: EvaluationReport, out: Path) -> None:
    report.files.update(
        csv=str(out / "metrics.csv"), json=str(out / "report.json"), markdown=str(out / "report.md")
    )
    _write_text(out / "metrics.csv", report.to_csv())
    _write_text(out / "report.md", report.to_markdown())
    _write_text(out / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")


class FigureWriter:
    """PNG per image as soon as it is scored (memory stays flat), then the summary grid.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global state).
    Importing it raises ModuleNotFoundError when matplotlib is absent.
    """

    def __init__(self, out: Path) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.Figure, self.Canvas = Figure, FigureCanvasAgg
        self.out = out
        self.kept: list[Panels] = []
        self.files: dict[str, str] = {}

    def _figure(self, rows: int) -> tuple[Any, np.ndarray]:
        fig = self.Figure(figsize=(2.0 * len(COLUMNS), 2.1 * rows + 0.5), layout="constrained")
        self.Canvas(fig)
        return fig, np.atleast_2d(fig.subplots(rows, len(COLUMNS)))

    def add(self, panels: Panels) -> None:
        fig, axes = self._figure(1)
        _draw_row(axes[0], panels, titles=True)
        fig.suptitle(panels.title, fontsize=8)
        folder = self.out / "figures"
        folder.mkdir(exist_ok=True)
        path = folder / f"{panels.stem}.png"
        fig.savefig(path, dpi=100)
        self.files[f"figure:{panels.stem}"] = str(path)
        if len(self.kept) < SUMMARY_IMAGES:
            self.kept.append(panels)

    def finish(self, report: EvaluationReport) -> dict[str, str]:
        if self.kept:
            fig, axes = self._figure(len(self.kept))
            for i, p in enumerate(self.kept):
                _draw_row(axes[i], p, titles=i == 0)
                axes[i][0].set_ylabel(p.stem, fontsize=8)
            means = " · ".join(
                f"{m} {s['mean']['psnr']:.2f} dB / {s['mean']['ssim']:.3f}"
                for m, s in report.summary.items()
            )
            n = report.settings["n_scored"]
            fig.suptitle(f"mean PSNR / SSIM over {n} image(s): {means}", fontsize=8)
            path = self.out / "summary.png"
            fig.savefig(path, dpi=100)
            self.files["summary"] = str(path)
        return self.files


def _draw_row(axes: Sequence[Any], p: Panels, titles: bool) -> None:
    """One image's panels; std and abs error share one colour scale so they compare."""
    spread = [p.images[k] for k in ("std", "abs error") if p.images[k] is not None]
    emax = max((float(np.percentile(a, 99.5)) for a in spread), default=1.0)
    for ax, name in zip(axes, COLUMNS, strict=True):
        ax.set_xticks([])
        ax.set_yticks([])
        if titles:
            ax.set_title(name, fontsize=9)
        img = p.images[name]
        if img is None:
            ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        elif name in ("std", "abs error"):
            ax.imshow(img, cmap="magma", vmin=0.0, vmax=max(emax, 1e-12), interpolation="nearest")
        else:  # intensities in target units: the truth's 0.1-99.9 percentiles are 0 and 1
            ax.imshow(img, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
