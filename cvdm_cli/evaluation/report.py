"""Tables and files of an evaluation (``cvdm evaluate``).

:class:`EvaluationReport` holds the scores and renders them as CSV, JSON and markdown;
:func:`write_reports` writes those files atomically. The figures (one PNG per image and a
summary, with matplotlib) are drawn by :mod:`cvdm_cli.evaluation.figures`, whose
:class:`FigureWriter` and :class:`Panels` are re-exported here. The scoring itself is in
``cvdm_cli.evaluation.evaluate``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cvdm_cli.errors import OutputExistsError, OutputNotWritableError
from cvdm_cli.evaluation.figures import FigureWriter, Panels  # re-exported (evaluate.py)
from cvdm_cli.io.atomic import write_text_atomic

__all__ = [
    "CSV_COLUMNS",
    "EvaluationReport",
    "FigureWriter",
    "Panels",
    "prepare_out",
    "write_reports",
]

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
    "mean": {metric: value}, "median": {...}}. wins: cvdm method -> baseline (bicubic, rl
    and the trained ones: care, care2, ... described in ``settings["baselines"]``) -> {"n",
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
        for b in st.get("baselines") or []:  # trained baselines (cvdm evaluate --baseline)
            lines += ["", _trained_line(b)]
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


def _trained_line(b: dict[str, Any]) -> str:
    """One sentence on a trained baseline of the tables (its file, size and training)."""
    t = b.get("training") or {}
    trained = (
        f"; trained {t['steps']} steps, batch {t.get('batch_size', '?')}, LR patch "
        f"{t.get('patch_lr', '?')}, {str(t.get('loss', '?')).upper()} loss"
        if "steps" in t
        else ""
    )
    pct = b.get("input_percentiles") or []
    norm = f"percentiles {pct[0]:g} / {pct[1]:g}" if len(pct) == 2 else "percentiles"
    kind = "CARE U-Net" if b.get("kind") == "care" else str(b.get("kind"))
    return (
        f"{b.get('name')}: {kind} '{b.get('preset')}' ({b.get('parameters')} parameters"
        f"{trained}) from {b.get('source')}; input: the LR normalised to its {norm} and "
        "upsampled bicubically (cvdm's condition), output mapped back with the LR's map."
    )


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


def write_reports(report: EvaluationReport, out: Path) -> None:
    """Write ``metrics.csv``, ``report.md`` and ``report.json`` into ``out``, each atomically
    (a partial file never has the final name)."""
    report.files.update(
        csv=str(out / "metrics.csv"), json=str(out / "report.json"), markdown=str(out / "report.md")
    )
    write_text_atomic(out / "metrics.csv", report.to_csv())
    write_text_atomic(out / "report.md", report.to_markdown())
    write_text_atomic(out / "report.json", json.dumps(report.to_dict(), indent=2) + "\n")
