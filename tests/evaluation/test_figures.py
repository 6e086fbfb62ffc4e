"""Evaluation figures: one PNG per image and a summary, written atomically."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from cvdm_cli.evaluation.figures import COLUMNS, FigureWriter, Panels


def test_figure_writer_draws_each_image_and_the_summary(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.default_rng(0)
    images = {name: rng.random((16, 16)).astype(np.float32) for name in COLUMNS}
    images["RL"] = None  # a method that was not run shows "not run"
    writer = FigureWriter(tmp_path)
    for stem in ("a", "b"):
        writer.add(Panels(stem=stem, images=images, title=f"{stem}: test"))
    report = SimpleNamespace(
        summary={"cvdm_fast": {"mean": {"psnr": 30.0, "ssim": 0.9}}}, settings={"n_scored": 2}
    )
    files = writer.finish(report)
    assert files == {
        "figure:a": str(tmp_path / "figures" / "a.png"),
        "figure:b": str(tmp_path / "figures" / "b.png"),
        "summary": str(tmp_path / "summary.png"),
    }
    for path in files.values():
        with open(path, "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.rglob(".*"))  # no partial file left


def test_report_keeps_the_figure_names_importable():
    from cvdm_cli.evaluation import figures, report

    assert report.FigureWriter is figures.FigureWriter and report.Panels is figures.Panels
