"""Antithetic pairs: sample 2j + 1 draws the negated noise of sample 2j, in the same view.

With an untrained model the denoiser's output layer is zero, so eps_hat = 0 and every
sample is x plus a residual that is an odd function of its noise: the two samples of an
antithetic pair then have exactly opposite residuals, and their mean is the condition x.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import cvdm, sample_plane

from cvdm_cli import reconstruct
from cvdm_cli.sampling.noise import NoiseSource, noise_mate, sample_view


def test_mates_and_views():
    assert [noise_mate(k, True) for k in range(4)] == [(0, 1.0), (0, -1.0), (2, 1.0), (2, -1.0)]
    assert [noise_mate(k, False) for k in range(3)] == [(0, 1.0), (1, 1.0), (2, 1.0)]
    assert [sample_view(k, True, True) for k in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [sample_view(k, True, False) for k in range(8)] == list(range(8))
    assert {sample_view(k, False, True) for k in range(8)} == {0}
    noise = NoiseSource([5, 5, 6], [1.0, -1.0, 1.0])
    for _ in range(3):  # every draw of the stream, not only the first
        a, b, c = noise.draw([0, 1, 2], (1, 4, 4), torch.device("cpu"))
        assert torch.equal(a, -b) and not torch.equal(a, c)


@pytest.mark.parametrize("tta", [False, True])
def test_pair_residuals_cancel_in_reconstruct(tiny_model, tta):
    lr = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    kw = dict(samples=4, steps=4, tta=tta, return_samples=True)
    anti = reconstruct(tiny_model, lr, generator=torch.Generator().manual_seed(0),
                       antithetic=True, **kw)  # fmt: skip
    indep = reconstruct(tiny_model, lr, generator=torch.Generator().manual_seed(0), **kw)
    x = anti.samples.mean(0)  # both pairs cancel: the mean is the condition
    for j in (0, 2):
        np.testing.assert_allclose(anti.samples[j] + anti.samples[j + 1], 2 * x, atol=1e-5)
    assert np.abs(indep.samples[0] + indep.samples[1] - 2 * x).max() > 0.1
    assert anti.var.max() > 0  # the samples themselves still differ


@pytest.mark.parametrize("tiling", ["sync", "independent"])
def test_pair_residuals_cancel_in_tiles(tiny_model, tiling):
    lr = np.random.default_rng(1).normal(size=(24, 20)).astype(np.float32)
    kw = dict(samples=4, steps=3, tile=16, overlap=8, tiling=tiling, tta=True,
              return_samples=True)  # fmt: skip
    rec = sample_plane(tiny_model, lr, antithetic=True, **kw)
    s = rec.samples
    np.testing.assert_allclose(s[0] + s[1], s[2] + s[3], atol=1e-5)
    np.testing.assert_allclose(rec.mean, (s[0] + s[1]) / 2, atol=1e-5)
    plain = sample_plane(tiny_model, lr, **kw).samples
    assert np.abs(plain[0] + plain[1] - plain[2] - plain[3]).max() > 0.1
    # the first sample of a pair is the independent run's sample 0 (same seed and view)
    np.testing.assert_array_equal(s[0], plain[0])


def test_cli_flag_reaches_the_outputs(tmp_path, tiny_weights):
    import tifffile

    img = tmp_path / "in.tif"
    tifffile.imwrite(img, np.random.default_rng(2).random((16, 16)).astype(np.float32) * 100)
    base = ["enhance", img, "--model", tiny_weights, "--samples", 2, "--steps", 2, "--quiet"]
    ran = cvdm(*base, "-o", tmp_path / "a", "--antithetic", "--std")
    assert ran.code == 0, ran.err
    mean = tifffile.imread(tmp_path / "a" / "in_cvdm.tif")
    plain = cvdm(*base, "-o", tmp_path / "p")
    assert plain.code == 0, plain.err
    assert not np.array_equal(mean, tifffile.imread(tmp_path / "p" / "in_cvdm.tif"))
