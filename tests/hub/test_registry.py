"""weights.toml validation, model-spec resolution without network, verified-markers."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from cvdm_cli import errors
from cvdm_cli.hub import hf as hub
from cvdm_cli.hub import registry, verify

REPO = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SHA = "a" * 64


def _entry(name: str = "m1", **fields: object) -> str:
    base: dict[str, object] = {
        "description": "a model",
        "scale": 2,
        "structures": ["filaments"],
        "pixel_size_nm": [55, 110],
        "license": "BSD-3-Clause",
        "sha256": SHA,
        "package": "models/m1.safetensors",
    }
    base.update(fields)
    lines = [f'["{name}"]' if "/" in name else f"[{name}]"]
    for key, value in base.items():
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, str) and not value.startswith("{"):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, list):
            items = ", ".join(f'"{v}"' if isinstance(v, str) else str(v) for v in value)
            lines.append(f"{key} = [{items}]")
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


def _hub_table(**over: str) -> str:
    fields = {"repo_id": "owner/repo", "filename": "w/m.safetensors", "revision": COMMIT, **over}
    return "{ " + ", ".join(f'{k} = "{v}"' for k, v in fields.items()) + " }"


def _write_package_registry(tmp_path: Path, data: bytes, sha: str | None = None) -> Path:
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "m1.safetensors").write_bytes(data)
    digest = sha or hashlib.sha256(data).hexdigest()
    path = tmp_path / "weights.toml"
    path.write_text(_entry("m1", default=True, sha256=digest), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _private_hf_home(tmp_path, monkeypatch):
    """Markers go to $HF_HOME/cvdm: keep them in the test's folder."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))  # markers read it (hub.verify)
    monkeypatch.delenv(registry.REGISTRY_ENV, raising=False)


# --- parsing and validation -------------------------------------------------------------


def test_parse_package_and_hub_entries(tmp_path):
    text = _entry("small", default=True) + _entry(
        "big", package=None, hub=_hub_table(), structures=["vesicles", "reticulum"]
    )
    reg = registry.parse_registry(text, path=tmp_path / "w.toml", base_dir=tmp_path)
    assert reg.names == ["small", "big"]
    assert reg.default.name == "small"
    small, big = reg.get("small"), reg.get("big")
    assert small.kind == "package" and small.source.file == tmp_path / "models" / "m1.safetensors"
    assert big.kind == "hub" and big.source.revision == COMMIT
    assert big.source.spec == f"hf://owner/repo/w/m.safetensors@{COMMIT}"
    assert big.structures == ("vesicles", "reticulum")
    assert big.pixel_size_nm == (55.0, 110.0) and big.scale == 2
    assert big.to_dict()["repo_id"] == "owner/repo" and "package" not in big.to_dict()


def test_hub_source_as_subtable(tmp_path):
    text = _entry("m1", default=True, package=None) + textwrap.dedent(
        f"""\
        [m1.hub]
        repo_id = "owner/repo"
        filename = "m.safetensors"
        revision = "{COMMIT}"
        """
    )
    entry = registry.parse_registry(text).get("m1")
    assert entry.kind == "hub" and entry.source.filename == "m.safetensors"


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (_entry(default=True, license=None), "license", "missing"),
        (_entry(default=True, sha256=None), "sha256", "update-sha m1"),
        (_entry(default=True, sha256="abc123"), "sha256", "64 lowercase hex"),
        (_entry(default=True, sha256="A" * 64), "sha256", "64 lowercase hex"),
        (_entry(default=True, package=None, hub=_hub_table(revision="main")), "hub.revision",
         "branch or tag"),
        (_entry(default=True, package=None, hub=_hub_table(revision="v1.0")), "hub.revision",
         "branch or tag"),
        (_entry(default=True, package=None, hub=_hub_table(revision="0123456")), "hub.revision",
         "abbreviated"),
        (_entry(default=True, package=None, url="https://x.org/m.safetensors"), "url",
         "unknown source kind"),
        (_entry(default=True, package=None), "package/hub", "missing"),
        (_entry(default=True, hub=_hub_table()), "package/hub", "not both"),
        (_entry(default=True, package="models/m1.pt"), "package", "pickle"),
        (_entry(default=True, package="models/m1.onnx"), "package", "not a .safetensors"),
        (_entry(default=True, package=None, hub=_hub_table(filename="pytorch_model.bin")),
         "hub.filename", "pickle"),
        (_entry(default=True, package="../outside.safetensors"), "package", "relative path"),
        (_entry(default=True, package=None, hub=_hub_table(repo_id="noslash")), "hub.repo_id",
         "owner/name"),
        (_entry(default=True, sha265=SHA), "sha265", "unknown field"),
        (_entry(default=True, scale=0), "scale", "positive integer"),
        (_entry(default=True, pixel_size_nm=[110, 55]), "pixel_size_nm", "[min, max]"),
        (_entry(default=True, structures=[]), "structures", "non-empty"),
        (_entry(default="yes"), "default", "true or false"),
        (_entry("bad/name", default=True), "name", "letters"),
    ],
)  # fmt: skip
def test_validation_names_model_and_field(text, field, words):
    with pytest.raises(errors.RegistryError) as info:
        registry.parse_registry(text, path="w.toml")
    message = str(info.value)
    assert "w.toml" in message
    assert f"field {field!r}" in message
    assert words in message
    assert "'m1'" in message or "'bad/name'" in message


def test_no_default_and_two_defaults():
    with pytest.raises(errors.RegistryError, match="no model has `default = true`"):
        registry.parse_registry(_entry("a") + _entry("b"))
    with pytest.raises(errors.RegistryError, match=r"'a', 'b': field 'default' is true on 2"):
        registry.parse_registry(_entry("a", default=True) + _entry("b", default=True))


def test_bad_toml_and_missing_file(tmp_path):
    with pytest.raises(errors.RegistryError, match="not valid TOML"):
        registry.parse_registry("[a\nx = 1")
    with pytest.raises(errors.RegistryError, match="registry not found"):
        registry.load_registry(tmp_path / "nope.toml")


def test_unknown_name_lists_known_names():
    reg = registry.parse_registry(_entry("alpha", default=True) + _entry("beta"))
    with pytest.raises(errors.UnknownModelError) as info:
        registry.resolve_model("gamma", registry=reg)
    assert "gamma" in str(info.value) and "alpha, beta" in str(info.value)


def test_registry_env_var_selects_another_file(tmp_path, monkeypatch):
    path = _write_package_registry(tmp_path, b"weights")
    monkeypatch.setenv(registry.REGISTRY_ENV, str(path))
    assert registry.default_registry_path() == path
    assert registry.load_registry().names == ["m1"]


# --- resolution without network ---------------------------------------------------------


def test_default_package_model_is_verified_and_marked(tmp_path, monkeypatch):
    data = os.urandom(50_000)
    reg = registry.load_registry(_write_package_registry(tmp_path, data))
    resolved = registry.resolve_model(None, registry=reg)
    assert resolved.source == "package" and resolved.verified
    assert resolved.path == tmp_path / "models" / "m1.safetensors"
    assert resolved.sha256 == hashlib.sha256(data).hexdigest()
    assert registry.model_status(reg.default).state == "verified"

    # the marker saves the re-hash on the next run ...
    calls: list[Path] = []
    real = verify.sha256_file
    monkeypatch.setattr(verify, "sha256_file", lambda p: calls.append(Path(p)) or real(p))
    registry.resolve_model("m1", registry=reg)
    assert calls == []
    # ... until the file changes (same size, content flipped): then the hash catches it.
    target = resolved.path
    changed = bytearray(data)
    changed[0] ^= 0xFF
    target.write_bytes(bytes(changed))
    assert registry.model_status(reg.default).state == "unverified"
    with pytest.raises(errors.ChecksumMismatchError) as info:
        registry.resolve_model("m1", registry=reg)
    assert len(calls) == 1
    message = str(info.value)
    assert hashlib.sha256(data).hexdigest() in message
    assert hashlib.sha256(bytes(changed)).hexdigest() in message
    assert registry.model_status(reg.default).state == "mismatch"


def test_marker_is_invalidated_by_mtime_and_inode(tmp_path):
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"abc")
    sha = hashlib.sha256(b"abc").hexdigest()
    assert hub.write_marker(f, sha)
    assert hub.marker_sha256(f) == sha
    os.utime(f, ns=(1_000_000_000, 1_000_000_000))
    assert hub.marker_sha256(f) is None
    hub.write_marker(f, sha)
    f2 = tmp_path / "y.safetensors"
    f2.write_bytes(b"abc")
    os.replace(f2, f)  # same name and content, new inode
    assert hub.marker_sha256(f) is None


def test_read_only_marker_dir_only_means_rehashing(tmp_path, monkeypatch):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    monkeypatch.setenv("HF_HOME", str(blocker))
    f = tmp_path / "x.safetensors"
    f.write_bytes(b"abc")
    assert hub.write_marker(f, "0" * 64) is False
    hub.check_sha256(f, hashlib.sha256(b"abc").hexdigest(), label="x")


def test_missing_packaged_file(tmp_path):
    path = tmp_path / "weights.toml"
    path.write_text(_entry("m1", default=True), encoding="utf-8")
    with pytest.raises(errors.WeightsError, match="packaged weights of model 'm1' are missing"):
        registry.resolve_model(None, registry=registry.load_registry(path))
    assert registry.model_status(registry.load_registry(path).default).state == "missing"


def test_local_paths(tmp_path):
    f = tmp_path / "mine.safetensors"
    f.write_bytes(b"tensor bytes")
    resolved = registry.resolve_model(str(f))
    assert resolved.source == "local" and resolved.path == f and resolved.name == "mine"
    assert resolved.sha256 == hashlib.sha256(b"tensor bytes").hexdigest()
    assert not resolved.verified
    assert not hub.marker_dir().exists()  # local files leave nothing behind in HF_HOME
    with pytest.raises(errors.UnknownModelError, match=r"no such \.safetensors file"):
        registry.resolve_model(str(tmp_path / "absent.safetensors"))


@pytest.mark.parametrize(
    "spec",
    ["model.pt", "x/model.pth", "old.ckpt", "keras.h5", "w.pkl", "pytorch_model.bin",
     "hf://owner/repo/pytorch_model.bin", "hf://owner/repo/sub/model.ckpt@main"],
)  # fmt: skip
def test_pickle_formats_refused_before_any_io(spec, tmp_path):
    with pytest.raises(errors.UnsafeWeightsFormatError, match="pickle"):
        registry.resolve_model(spec, registry=registry.parse_registry(_entry(default=True)))


def test_existing_pickle_file_is_refused_too(tmp_path):
    f = tmp_path / "weights.pt"
    f.write_bytes(b"\x80\x04K\x01.")  # a real pickle: never opened
    with pytest.raises(errors.UnsafeWeightsFormatError):
        registry.resolve_model(str(f))


def test_hf_spec_parsing():
    f = registry.parse_hf_spec("hf://owner/repo/path/to/file.safetensors@" + COMMIT)
    assert (f.repo_id, f.filename, f.revision, f.pinned) == (
        "owner/repo",
        "path/to/file.safetensors",
        COMMIT,
        True,
    )
    f = registry.parse_hf_spec("hf://owner/repo/file.safetensors")
    assert f.revision is None and not f.pinned and f.spec == "hf://owner/repo/file.safetensors"
    assert registry.parse_hf_spec("hf://o/r/f.safetensors@v1.0").revision == "v1.0"
    for bad in ("hf://owner/file.safetensors", "hf://owner//x.safetensors", "hf://"):
        with pytest.raises(errors.ConfigError, match="malformed hf://"):
            registry.parse_hf_spec(bad)
    with pytest.raises(errors.UnsafeWeightsFormatError, match=r"not a \.safetensors"):
        registry.parse_hf_spec("hf://owner/repo/model.onnx")


# --- maintainer command -----------------------------------------------------------------


def test_update_sha_writes_through_symlink_and_keeps_comments(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "models").mkdir(parents=True)
    data = b"new weights"
    (pkg / "models" / "m1.safetensors").write_bytes(data)
    real = pkg / "weights.toml"
    text = "# keep me\n" + _entry("m1", default=True, sha256=None) + "\n" + _entry("m2")
    real.write_text(text.replace("[m2]", "# second\n[m2]"), encoding="utf-8")
    link = tmp_path / "weights.toml"
    link.symlink_to(real)

    assert registry.main(["--registry", str(link), "update-sha", "m1"]) == 0
    assert link.is_symlink()
    written = real.read_text(encoding="utf-8")
    assert written.startswith("# keep me\n") and "# second\n[m2]" in written
    reg = registry.load_registry(link)
    assert reg.get("m1").sha256 == hashlib.sha256(data).hexdigest()
    assert reg.get("m2").sha256 == SHA  # the other table is untouched
    registry.resolve_model("m1", registry=reg)  # and the result verifies

    # an existing sha256 line is replaced in place
    (pkg / "models" / "m1.safetensors").write_bytes(b"retrained")
    assert registry.main(["--registry", str(link), "update-sha", "m1"]) == 0
    assert registry.load_registry(link).get("m1").sha256 == hashlib.sha256(b"retrained").hexdigest()
    assert real.read_text(encoding="utf-8").count("sha256 =") == 2


def test_update_sha_for_hub_entry_needs_file(tmp_path, capsys):
    path = tmp_path / "weights.toml"
    path.write_text(_entry("m1", default=True, package=None, hub=_hub_table()), encoding="utf-8")
    assert registry.main(["--registry", str(path), "update-sha", "m1"]) == 1
    assert "--file" in capsys.readouterr().err
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"hub weights")
    assert registry.main(["--registry", str(path), "update-sha", "m1", "--file", str(f)]) == 0
    expected = hashlib.sha256(b"hub weights").hexdigest()
    assert registry.load_registry(path).get("m1").sha256 == expected


# --- the shipped registry ---------------------------------------------------------------


def test_top_level_weights_toml_is_the_packaged_file():
    top = REPO / "weights.toml"
    assert top.is_symlink(), "weights.toml must be a symlink to cvdm_cli/weights.toml"
    assert top.resolve() == registry.PACKAGED_REGISTRY


def test_shipped_registry_and_default_model():
    entry_file = registry.PACKAGE_DIR / "models" / "cvdm-small-v2.safetensors"
    if not entry_file.is_file():
        pytest.skip(f"{entry_file} not trained yet (the lead adds it, then runs update-sha)")
    reg = registry.load_registry()
    default = reg.default
    assert default.name == "cvdm-small-v2" and default.kind == "package"
    assert default.scale == 2 and default.license == "BSD-3-Clause"
    assert default.structures == ("filaments", "vesicles", "reticulum")
    assert default.pixel_size_nm == (55.0, 110.0)
    resolved = registry.resolve_model(None, registry=reg)
    assert resolved.verified and resolved.path == entry_file
    # every model shipped in the package (the earlier default too) matches its sha256
    shipped = [e.name for e in reg if e.kind == "package"]
    assert set(shipped) == {"cvdm-small-v1", "cvdm-small-v2"}
    for name in shipped:
        assert registry.resolve_model(name, registry=reg).verified, name


def test_maintainer_check_command_runs_as_module(tmp_path):
    path = _write_package_registry(tmp_path, b"w")
    out = subprocess.run(
        [sys.executable, "-m", "cvdm_cli.hub.registry", "--registry", str(path), "check"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "m1 (default): package"


def test_update_sha_with_hub_subtable_goes_into_the_main_table(tmp_path):
    path = tmp_path / "weights.toml"
    path.write_text(
        _entry("m1", default=True, package=None, sha256=None)
        + f'[m1.hub]\nrepo_id = "owner/repo"\nfilename = "m.safetensors"\nrevision = "{COMMIT}"\n',
        encoding="utf-8",
    )
    f = tmp_path / "m.safetensors"
    f.write_bytes(b"w")
    assert registry.main(["--registry", str(path), "update-sha", "m1", "--file", str(f)]) == 0
    entry = registry.load_registry(path).get("m1")
    assert entry.sha256 == hashlib.sha256(b"w").hexdigest() and entry.kind == "hub"


def test_resolving_a_packaged_model_imports_neither_huggingface_hub_nor_torch(tmp_path):
    """The default (packaged) model is found and checksummed with the standard library only:
    huggingface_hub is for hub downloads, torch and safetensors for loading."""
    code = (
        "import sys\n"
        "from cvdm_cli.hub.registry import resolve_model\n"
        "r = resolve_model(None)\n"
        "print(r.source, r.verified, sorted(m for m in ('huggingface_hub', 'torch', 'safetensors')"
        " if m in sys.modules))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != registry.REGISTRY_ENV}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["package", "True", "[]"]
    assert list((tmp_path / "hf_home" / "cvdm" / "verified").glob("*.json"))  # marked


@pytest.mark.parametrize("name", ["model.pt", "weights.ckpt", "pytorch_model.bin", "m.onnx", "m"])
def test_one_format_rule_for_registry_entries_specs_and_weights_files(name, tmp_path):
    """Registry entries, hf:// specs, local paths and load_weights refuse a non-.safetensors
    name with the words of the one rule (cvdm_cli.io.weights.weights_format_problem)."""
    from cvdm_cli.io.weights import check_weights_path, weights_format_problem

    problem = weights_format_problem(name)
    assert problem is not None and ("pickle" in problem) == (name != "m.onnx" and name != "m")
    with pytest.raises(errors.RegistryError) as entry:
        registry.parse_registry(_entry(default=True, package=f"models/{name}"))
    assert problem in str(entry.value)
    for spec in (f"hf://owner/repo/{name}", str(tmp_path / name)):
        with pytest.raises(errors.UnsafeWeightsFormatError) as refused:
            registry.resolve_model(spec, registry=registry.parse_registry(_entry(default=True)))
        assert problem in str(refused.value)
    with pytest.raises(errors.UnsafeWeightsFormatError) as local:
        check_weights_path(tmp_path / name)
    assert problem in str(local.value)
    assert weights_format_problem("Model.SafeTensors") is None
