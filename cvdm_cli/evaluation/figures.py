"""The figures of an evaluation (``cvdm evaluate``): the only module that imports matplotlib.

One PNG per scored image, ``<out>/figures/<stem>.png``, with the panels input | bicubic |
RL | cvdm | truth | std | abs error (:data:`COLUMNS`), and ``<out>/summary.png`` stacking
the first :data:`SUMMARY_IMAGES` of them under the mean PSNR / SSIM of each method.
Intensities are shown in the fair-comparison target units (the truth's 0.1-99.9
percentiles map to 0 and 1); std and abs error share one colour scale per image so that
they compare.

matplotlib is the optional ``figures`` extra: it is imported when a :class:`FigureWriter`
is made (ModuleNotFoundError without it), so importing this module costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cvdm_cli.io.atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    from cvdm_cli.evaluation.report import EvaluationReport

__all__ = ["COLUMNS", "SUMMARY_IMAGES", "FigureWriter", "Panels"]

COLUMNS = ("input", "bicubic", "RL", "cvdm", "truth", "std", "abs error")
SUMMARY_IMAGES = 6  # rows of the summary figure


@dataclass
class Panels:
    """Display images of one pair on the output grid, in target units (float32 (H, W))."""

    stem: str
    images: dict[str, np.ndarray | None]  # COLUMNS -> image or None (method not run)
    title: str


class FigureWriter:
    """PNG per image as soon as it is scored (memory stays flat), then the summary grid.

    Uses matplotlib's object API with the Agg canvas (no pyplot, no global state).
    Making one raises ModuleNotFoundError when matplotlib is absent. PNGs are written
    atomically (:func:`cvdm_cli.io.atomic.atomic_path`), 100 dpi.
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
        _save_png(fig, path)
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
            _save_png(fig, path)
            self.files["summary"] = str(path)
        return self.files


def _save_png(fig: Any, path: Path) -> None:
    # the temporary name has no .png suffix: the format is given
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")


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
