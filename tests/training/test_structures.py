"""Ground-truth generators: mass conservation, determinism, sparsity, depth extent."""

from __future__ import annotations

import numpy as np
import pytest

from cvdm_cli import errors
from cvdm_cli.training.structures import STRUCTURES, Grid, generate, splat

Z = (-300.0, -200.0, -100.0, 0.0, 100.0, 200.0, 300.0)
GRID = Grid(ny=200, nx=200, pixel_nm=16.0, z_nm=Z)


def test_splat_conserves_weight_and_centroid():
    rng = np.random.default_rng(0)
    n = 500
    z = rng.uniform(-250, 250, n)
    y, x = rng.uniform(10, 190, n), rng.uniform(10, 190, n)
    w = rng.uniform(0.5, 2.0, n)
    d = splat(GRID, z, y, x, w)
    assert d.shape == GRID.shape
    assert np.isclose(d.sum(), w.sum())
    zz, yy, xx = np.meshgrid(np.array(Z), np.arange(200), np.arange(200), indexing="ij")
    assert np.isclose((d * yy).sum() / d.sum(), (w * y).sum() / w.sum())
    assert np.isclose((d * xx).sum() / d.sum(), (w * x).sum() / w.sum())
    assert np.isclose((d * zz).sum() / d.sum(), (w * z).sum() / w.sum())
    # a point between two fine pixels is shared equally
    one = splat(GRID, np.array([0.0]), np.array([50.5]), np.array([60.0]), np.array([1.0]))
    assert one[3, 50, 60] == pytest.approx(0.5) and one[3, 51, 60] == pytest.approx(0.5)


@pytest.mark.parametrize("kind", STRUCTURES)
def test_generators_are_deterministic_sparse_and_three_dimensional(kind):
    a = generate(kind, GRID, np.random.default_rng(1))
    b = generate(kind, GRID, np.random.default_rng(1))
    c = generate(kind, GRID, np.random.default_rng(2))
    assert a.dtype == np.float32 and a.shape == GRID.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= 0 and a.sum() > 0
    proj = a.sum(axis=0)
    # thin structures: most of the field is empty (sheets in reticulum allowed)
    assert (proj > 0).mean() < 0.6
    # the sample is a slab: mass spread over several planes, not a 2D image
    per_plane = a.sum(axis=(1, 2)) / a.sum()
    assert (per_plane > 0.02).sum() >= 3


def test_filaments_are_thin_lines():
    d = generate("filaments", GRID, np.random.default_rng(3)).sum(axis=0)
    # a line of unit density per pixel: the bright pixels are a small, connected-ish set
    occupied = d > 0.05
    assert occupied.mean() < 0.25
    # line-like: each occupied pixel has few occupied neighbours (not a filled blob)
    nb = sum(np.roll(np.roll(occupied, dy, 0), dx, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert np.median(nb[occupied]) <= 6


def test_lines_are_straight_and_range_from_sparse_to_dense():
    """Each line of ``lines`` is straight: its fine-grid points fit a line to a fraction of
    a pixel; and over seeds the field runs from a few lines to a dense mesh."""
    from cvdm_cli.training.structures import lines

    one = Grid(ny=200, nx=200, pixel_nm=16.0, z_nm=Z)
    coverage = []
    for seed in range(8):
        proj = lines(one, np.random.default_rng(seed)).sum(axis=0)
        coverage.append(float((proj > 0).mean()))
    assert max(coverage) > 3 * min(coverage)  # sparse and dense fields both drawn
    # one line alone (density so low that one is drawn): its pixels are collinear
    rng = np.random.default_rng(5)
    proj = lines(Grid(ny=300, nx=300, pixel_nm=16.0, z_nm=Z), rng, density=1e-6).sum(axis=0)
    yy, xx = np.nonzero(proj > 0)
    pts = np.stack([yy, xx], 1).astype(float)
    pts -= pts.mean(axis=0)
    sv = np.linalg.svd(pts, compute_uv=False)
    assert sv[1] / np.sqrt(len(pts)) < 0.6  # rms distance from the line < 0.6 px
    assert sv[0] / np.sqrt(len(pts)) > 20  # and it is long


def test_unknown_structure_is_a_config_error():
    with pytest.raises(errors.ConfigError, match="beads"):
        generate("beads", GRID, np.random.default_rng(0))


def test_mixtures_by_name_and_by_plus(monkeypatch):
    from cvdm_cli.training.structures import parse_structure

    small = Grid(ny=96, nx=96, pixel_nm=16.0, z_nm=Z)
    for seed in range(4):  # "mixed" is exactly the three kinds joined by "+"
        a = generate("mixed", small, np.random.default_rng(seed))
        b = generate("filaments+vesicles+reticulum", small, np.random.default_rng(seed))
        assert np.array_equal(a, b)
    assert parse_structure("broad") == ("filaments", "vesicles", "reticulum", "lines")
    assert parse_structure("vesicles+lines") == ("vesicles", "lines")
    assert parse_structure("lines") == ("lines",)
    # each kind of a mixture is present in about 60 % of fields, at least one in every field
    import cvdm_cli.training.structures as structures

    calls: list[str] = []
    fake = {
        k: (lambda g, r, density=1.0, k=k: calls.append(k) or np.zeros(g.shape))
        for k in structures.KINDS
    }
    monkeypatch.setattr(structures, "_GENERATORS", fake)
    for s in range(300):
        n_before = len(calls)
        generate("broad", small, np.random.default_rng(s))
        assert len(calls) > n_before
    share = {k: calls.count(k) / 300 for k in structures.KINDS}
    assert all(0.5 < v < 0.72 for v in share.values()), share
    for bad in ("", "lines+lines", "lines+beads", "mixed+lines"):
        with pytest.raises(errors.ConfigError, match="structure"):
            parse_structure(bad)
    assert "broad" in STRUCTURES
