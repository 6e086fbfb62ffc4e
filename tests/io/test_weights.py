import subprocess
import sys

import numpy as np
import pytest
import torch

from cvdm_cli import load_weights, reconstruct, save_weights
from cvdm_cli.errors import InvalidWeightsError, UnsafeWeightsFormatError
from cvdm_cli.io.weights import read_metadata


def test_roundtrip_bit_identical(tiny_model, tiny_weights):
    loaded = load_weights(tiny_weights)
    assert loaded.config == tiny_model.config
    assert loaded.info["note"] == "test fixture"
    lr = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    a = reconstruct(tiny_model, lr, samples=2, steps=3, generator=torch.Generator().manual_seed(1))
    b = reconstruct(loaded, lr, samples=2, steps=3, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.var, b.var)


def test_channels_last_inference_layout_keeps_values_and_saves(tmp_path, tiny_weights):
    """prepare_inference stores 4D weights NHWC (the samplers call it): same outputs to
    float rounding, idempotent, and a converted model saves and reloads bit for bit."""
    plain = load_weights(tiny_weights)
    with torch.no_grad():  # non-trivial weights, including the zero-initialised layers
        gen = torch.Generator().manual_seed(0)
        for p in plain.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    nhwc = load_weights(tiny_weights)
    nhwc.load_state_dict(plain.state_dict())
    assert nhwc.prepare_inference() is nhwc and not nhwc.training
    conv = nhwc.denoiser.inp.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert plain.denoiser.inp.weight.is_contiguous()
    before = {k: v.data_ptr() for k, v in nhwc.state_dict().items()}
    nhwc.prepare_inference()  # a no-op the second time
    assert {k: v.data_ptr() for k, v in nhwc.state_dict().items()} == before
    gen = torch.Generator().manual_seed(1)
    z, x = torch.randn(2, 1, 16, 16, generator=gen), torch.randn(2, 1, 16, 16, generator=gen)
    gamma = torch.rand(2, 1, 16, 16, generator=gen)
    with torch.inference_mode():
        a, b = plain.eps(z, x, gamma), nhwc.eps(z, x, gamma)
        lam_a, lam_b = plain.lam(x), nhwc.lam(x)
    assert a.abs().max() > 0.1  # not a trivially zero output
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lam_b, lam_a, rtol=1e-4, atol=1e-5)
    # the samplers convert inside inference mode; the model must stay trainable after it
    fresh = load_weights(tiny_weights)
    reconstruct(fresh, np.zeros((8, 8), np.float32), samples=2, steps=2)
    weight = fresh.denoiser.inp.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_inference() and weight.requires_grad
    fresh.train()
    (fresh.eps(z, x, gamma) * z).mean().backward()
    out_weight = fresh.denoiser.out.weight  # the zero-initialised last layer gets a gradient
    assert not out_weight.is_inference() and out_weight.grad.abs().sum() > 0
    saved = save_weights(nhwc, tmp_path / "nhwc.safetensors")
    again = load_weights(saved)
    for key, value in plain.state_dict().items():
        assert torch.equal(again.state_dict()[key], value), key


def test_metadata_is_self_describing(tiny_weights):
    meta = read_metadata(tiny_weights)
    assert meta["cvdm.scale"] == "2"
    assert '"kind": "percentile"' in meta["cvdm.norm"]
    assert '"name": "tiny"' in meta["cvdm.config"]


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt", ".h5", ".pkl"])
def test_pickle_formats_refused(tmp_path, tiny_model, suffix):
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"not even opened")
    with pytest.raises(UnsafeWeightsFormatError, match=r"only \.safetensors"):
        load_weights(path)
    with pytest.raises(UnsafeWeightsFormatError):
        save_weights(tiny_model, path)


def test_corrupt_and_foreign_files(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(InvalidWeightsError, match=r"bad\.safetensors"):
        load_weights(bad)
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(InvalidWeightsError, match="no cvdm model config"):
        load_weights(foreign)


def test_import_does_not_load_torch():
    code = (
        "import sys, cvdm_cli; assert 'torch' not in sys.modules; "
        "from cvdm_cli import ModelConfig; assert 'torch' not in sys.modules; "
        "from cvdm_cli import CVDM; assert 'torch' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_generic_tensor_files_roundtrip_atomically(tmp_path):
    """write_tensors / read_tensors: what weights and training checkpoints are made of."""
    from cvdm_cli.io.weights import read_tensors, write_tensors

    tensors = {"a/b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "c": torch.ones(1)}
    path = write_tensors(tmp_path / "t.safetensors", tensors, {"format": "x", "n": "2"})
    assert [p.name for p in tmp_path.iterdir()] == ["t.safetensors"]  # no partial file
    meta, loaded = read_tensors(path)
    assert meta == {"format": "x", "n": "2"}
    assert loaded.keys() == tensors.keys()
    assert all(torch.equal(loaded[k], v) for k, v in tensors.items())
    assert read_tensors(path, with_tensors=False) == (meta, {})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"garbage" * 4)
    with pytest.raises(InvalidWeightsError, match=r"not a readable thing \(.*\) — do this"):
        read_tensors(bad, what="a readable thing", hint="do this")


def test_format_checks_import_neither_torch_nor_safetensors():
    """The registry refuses pickle formats while reading weights.toml: that must stay cheap."""
    code = (
        "import sys\n"
        "from cvdm_cli.io.weights import check_weights_path, weights_format_problem\n"
        "assert weights_format_problem('m.pt') and check_weights_path('m.safetensors')\n"
        "print(sorted(m for m in ('torch', 'safetensors') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
