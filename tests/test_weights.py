import subprocess
import sys

import numpy as np
import pytest
import torch

from cvdm_cli import load_weights, reconstruct, save_weights
from cvdm_cli.errors import InvalidWeightsError, UnsafeWeightsFormatError
from cvdm_cli.weights import read_metadata


def test_roundtrip_bit_identical(tiny_model, tiny_weights):
    loaded = load_weights(tiny_weights)
    assert loaded.config == tiny_model.config
    assert loaded.info["note"] == "test fixture"
    lr = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    a = reconstruct(tiny_model, lr, samples=2, steps=3, generator=torch.Generator().manual_seed(1))
    b = reconstruct(loaded, lr, samples=2, steps=3, generator=torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.var, b.var)


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
