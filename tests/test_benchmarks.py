"""Every benchmark and study script parses its command line: `--help` prints usage, exits 0.

The product benchmarks (benchmarks/*.py) and the one-off studies (research/studies/*.py)
are run by hand (README, docs, research/log.md); this keeps a broken import, option or help
string (argparse formats help with %) from surfacing only when someone needs the figures.
The studies' own sampler (research/studies/sampler_passes.py, ``draw_samples``: the fast
sampler with an explicit time grid) is run once on an untrained model.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = sorted((ROOT / "benchmarks").glob("*.py"))
STUDIES = sorted((ROOT / "research" / "studies").glob("*.py"))
SCRIPTS = BENCHMARKS + STUDIES


def test_there_are_benchmarks_and_studies():
    assert len(BENCHMARKS) >= 5
    assert len(STUDIES) >= 8


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_help_exits_zero(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(script), run_name="__main__")
    assert done.value.code in (0, None)
    assert "usage:" in capsys.readouterr().out


def test_study_sampler_takes_its_grid(tiny_model, one_thread):
    import numpy as np

    study = runpy.run_path(str(ROOT / "research" / "studies" / "sampler_passes.py"))
    draw = study["draw_samples"]
    x = np.random.default_rng(0).standard_normal((8, 12)).astype(np.float32)
    kw = {"samples": 3, "steps": 4, "passes": "2,2", "seed": 5}
    a, b = draw(tiny_model, x, power=1.0, **kw), draw(tiny_model, x, power=1.0, **kw)
    assert a.shape == (3, 16, 24) and np.isfinite(a).all()
    assert np.array_equal(a, b)  # seeded from (seed, sample) only
    assert not np.allclose(a, draw(tiny_model, x, power=2.0, **kw))  # the grid is used
