"""`cvdm info`: versions, devices, cache folder and registry models, as text and JSON."""

from __future__ import annotations

import hashlib
import json
import shutil

import torch
from typer.testing import CliRunner

from cvdm_cli import __version__
from cvdm_cli.cli.app import app
from cvdm_cli.core.devices import cpu_has_native_bf16

HUB_REV = "0123456789abcdef0123456789abcdef01234567"


def run(*args: str):
    result = CliRunner().invoke(app, ["info", *args])
    return result.exit_code, result.stdout, result.stderr


def make_registry(tmp_path, tiny_weights):
    (tmp_path / "models").mkdir()
    shutil.copy(tiny_weights, tmp_path / "models" / "tiny.safetensors")
    sha = hashlib.sha256(tiny_weights.read_bytes()).hexdigest()
    common = (
        'scale = 2\nstructures = ["filaments"]\npixel_size_nm = [50, 100]\n'
        'license = "BSD-3-Clause"\n'
    )
    text = (
        f'[tiny-local]\ndescription = "test model in the package"\ndefault = true\n{common}'
        f'package = "models/tiny.safetensors"\nsha256 = "{sha}"\n\n'
        f'[tiny-hub]\ndescription = "test model on the hub"\n{common}'
        f'hub = {{ repo_id = "someone/tiny", filename = "tiny.safetensors", '
        f'revision = "{HUB_REV}" }}\nsha256 = "{"0" * 64}"\n'
    )
    path = tmp_path / "weights.toml"
    path.write_text(text)
    return path


def test_info_json_lists_versions_devices_cache_and_models(tmp_path, tiny_weights, monkeypatch):
    registry = make_registry(tmp_path, tiny_weights)
    monkeypatch.setenv("CVDM_REGISTRY", str(registry))
    code, out, _err = run("--json", "--cache-dir", str(tmp_path / "cache"))
    assert code == 0
    data = json.loads(out)
    assert data["cvdm"] == __version__
    assert data["torch"] == torch.__version__
    assert data["cuda"] == torch.version.cuda
    assert data["cuda_available"] == torch.cuda.is_available()
    assert data["devices"][0]["device"] == "cpu" and data["devices"][0]["cores"] >= 1
    n_cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    assert sum(d["device"].startswith("cuda") for d in data["devices"]) == n_cuda
    assert data["auto_precision"] in ("fp32", "bf16")
    native = data["devices"][0]["native_bf16"]
    assert native is cpu_has_native_bf16()
    if data["auto_device"] == "cpu":
        assert data["auto_precision"] == ("bf16" if native else "fp32")
    assert data["cache_dir"] == str(tmp_path / "cache")
    assert data["registry"] == str(registry) and data["registry_error"] is None
    models = {m["name"]: m for m in data["models"]}
    assert models["tiny-local"]["default"] is True
    assert models["tiny-local"]["present"] is True
    assert models["tiny-local"]["path"] == str(tmp_path / "models" / "tiny.safetensors")
    assert models["tiny-local"]["state"] in ("verified", "unverified")
    assert models["tiny-hub"] == {
        "name": "tiny-hub",
        "default": False,
        "source": "hub",
        "present": False,
        "verified": False,
        "state": "not cached",
        "path": None,
    }
    assert data["packages"]["tifffile"]


def test_info_text_and_a_broken_registry(tmp_path, tiny_weights, monkeypatch):
    registry = make_registry(tmp_path, tiny_weights)
    monkeypatch.setenv("CVDM_REGISTRY", str(registry))
    code, out, _err = run()
    assert code == 0
    assert f"cvdm             {__version__}" in out
    assert torch.__version__ in out and "device cpu" in out
    assert f"native bf16 {'yes' if cpu_has_native_bf16() else 'no'}" in out
    assert "* tiny-local" in out and "tiny-hub" in out and "not cached" in out

    registry.write_text("[broken]\ndescription = 1\n")
    code, out, _err = run("--json")
    data = json.loads(out)
    assert code == 0 and data["models"] == []
    assert "broken" in data["registry_error"]
    code, out, _err = run()
    assert code == 0 and "registry error:" in out
