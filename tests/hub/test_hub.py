"""Downloads through huggingface_hub against a real HTTP hub on 127.0.0.1 (tests/fake_hub.py).

Two ways of pointing huggingface_hub at the fake hub:
* in-process tests (``hub_env``): huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_CACHE
  and HF_HUB_OFFLINE once, when it is imported, so the fixture sets the matching
  ``huggingface_hub.constants`` (what huggingface_hub's own test-suite does);
* subprocess tests: the real environment variables, set before huggingface_hub is imported,
  through the ``cvdm`` command line — exactly what a user does.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import huggingface_hub
import pytest
from fake_hub import FakeHub
from huggingface_hub import constants
from typer.testing import CliRunner

from cvdm_cli import errors
from cvdm_cli.cli.app import app
from cvdm_cli.hub import hf as hub
from cvdm_cli.hub import registry, verify

REPO = Path(__file__).resolve().parents[2]
REPO_ID = "lab/cvdm-test"
FILENAME = "weights/model.safetensors"
NAME = "test-hub-model"


@pytest.fixture
def fake_hub():
    server = FakeHub().start()
    yield server
    server.stop()


@pytest.fixture
def hub_env(fake_hub, tmp_path, monkeypatch):
    """huggingface_hub (already imported) pointed at the fake hub and a fresh HF_HOME."""
    home = tmp_path / "hf_home"
    endpoint = fake_hub.endpoint
    patches = {
        "ENDPOINT": endpoint,
        "HUGGINGFACE_CO_URL_TEMPLATE": endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_OFFLINE": False,
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "AGENT_HARNESSES_PATH": str(home / ".agent_harnesses.json"),
    }
    for key, value in patches.items():
        monkeypatch.setattr(constants, key, value)
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_ENDPOINT", endpoint)
    monkeypatch.delenv(registry.REGISTRY_ENV, raising=False)
    yield SimpleNamespace(hub=fake_hub, home=home, cache=home / "hub", tmp=tmp_path)
    huggingface_hub.close_session()


def _registry_file(tmp: Path, sha: str, commit: str, name: str = NAME) -> Path:
    """A weights.toml with one hub entry (and a packaged default model)."""
    (tmp / "models").mkdir(exist_ok=True)
    (tmp / "models" / "pkg.safetensors").write_bytes(b"packaged")
    packaged = hashlib.sha256(b"packaged").hexdigest()
    common = (
        'description = "test"\nscale = 2\nstructures = ["filaments"]\n'
        'pixel_size_nm = [55, 110]\nlicense = "BSD-3-Clause"\n'
    )
    text = (
        f'[pkg]\ndefault = true\n{common}sha256 = "{packaged}"\n'
        'package = "models/pkg.safetensors"\n\n'
        f'[{name}]\n{common}sha256 = "{sha}"\n'
        f'hub = {{ repo_id = "{REPO_ID}", filename = "{FILENAME}", revision = "{commit}" }}\n'
    )
    path = tmp / "weights.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _publish(env: SimpleNamespace, data: bytes, **kw: object) -> SimpleNamespace:
    commit = env.hub.add_file(REPO_ID, FILENAME, data, **kw)
    sha = hashlib.sha256(data).hexdigest()
    path = _registry_file(env.tmp, sha, commit)
    return SimpleNamespace(
        commit=commit, sha=sha, data=data, path=path, registry=registry.load_registry(path)
    )


@pytest.fixture
def published(hub_env):
    return _publish(hub_env, os.urandom(200_000))


def _snapshot(env: SimpleNamespace, commit: str) -> Path:
    return env.cache / "models--lab--cvdm-test" / "snapshots" / commit / FILENAME


# --- pull, cache, verify ----------------------------------------------------------------


def test_pull_and_load_tiny_model(hub_env, tiny_model, tiny_weights):
    import torch

    from cvdm_cli import load_weights

    model = tiny_model
    pub = _publish(hub_env, tiny_weights.read_bytes())

    seen: list[tuple[int, int | None]] = []
    resolved = registry.resolve_model(
        NAME, registry=pub.registry, progress=lambda done, total: seen.append((done, total))
    )
    assert resolved.source == "hub" and resolved.downloaded and resolved.verified
    assert resolved.revision == pub.commit and resolved.sha256 == pub.sha
    assert resolved.path == _snapshot(hub_env, pub.commit)
    assert seen[-1] == (len(pub.data), len(pub.data))
    assert hub_env.hub.downloads() == 1

    loaded = load_weights(resolved.path)
    assert loaded.config == model.config
    assert loaded.info.get("note") == "test fixture"
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_second_pull_makes_no_request_and_no_rehash(hub_env, published, monkeypatch):
    first = registry.resolve_model(NAME, registry=published.registry)
    assert first.downloaded and hub_env.hub.downloads() == 1
    hub_env.hub.clear_log()

    hashed: list[str] = []
    real = verify.sha256_file
    for module in (hub, verify):  # downloads hash in hf, cached files in verify
        monkeypatch.setattr(module, "sha256_file", lambda p: hashed.append(str(p)) or real(p))
    second = registry.resolve_model(NAME, registry=published.registry)
    assert not second.downloaded and second.verified and second.path == first.path
    assert hub_env.hub.count() == 0  # pinned and cached: not even a HEAD
    assert hashed == []  # the verified-marker stands in for the hash

    forced = registry.resolve_model(NAME, registry=published.registry, force=True)
    assert forced.downloaded and hub_env.hub.downloads() == 1 and forced.verified


@pytest.mark.parametrize("symlinks", [True, False])
def test_corrupted_download_is_refused_and_not_kept(hub_env, published, monkeypatch, symlinks):
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_SYMLINKS", not symlinks)
    hub_env.hub.set_corrupt(REPO_ID, FILENAME)
    with pytest.raises(errors.ChecksumMismatchError) as info:
        registry.resolve_model(NAME, registry=published.registry)
    bad = bytearray(published.data)
    bad[len(bad) // 2] ^= 0xFF
    message = str(info.value)
    assert published.sha in message
    assert hashlib.sha256(bytes(bad)).hexdigest() in message
    assert f"cvdm models pull {NAME} --force" in message
    snapshot = _snapshot(hub_env, published.commit)
    assert not snapshot.exists() and not snapshot.is_symlink()
    assert not any((hub_env.cache / "models--lab--cvdm-test" / "blobs").iterdir())

    hub_env.hub.set_corrupt(REPO_ID, FILENAME, False)  # the hub is fixed: a retry works
    assert registry.resolve_model(NAME, registry=published.registry).verified


def test_registry_hash_differs_from_hub_before_download(hub_env, published):
    other = registry.parse_registry(
        published.path.read_text().replace(published.sha, "b" * 64), base_dir=hub_env.tmp
    )
    with pytest.raises(errors.ChecksumMismatchError, match="nothing was downloaded"):
        registry.resolve_model(NAME, registry=other)
    assert hub_env.hub.downloads() == 0


def test_tampered_cache_is_caught_then_repaired_by_force(hub_env, published):
    path = registry.resolve_model(NAME, registry=published.registry).path
    blob = path.resolve()
    raw = bytearray(blob.read_bytes())
    raw[0] ^= 0xFF
    blob.write_bytes(bytes(raw))
    with pytest.raises(errors.ChecksumMismatchError, match=f"cvdm models pull {NAME} --force"):
        registry.resolve_model(NAME, registry=published.registry)
    repaired = registry.resolve_model(NAME, registry=published.registry, force=True)
    assert repaired.verified and hub.sha256_file(repaired.path) == published.sha


@pytest.mark.parametrize(
    "spec",
    [
        f"hf://{REPO_ID}/weights/absent.safetensors",
        "hf://nobody/nothing/model.safetensors",
        f"hf://{REPO_ID}/{FILENAME}@{'f' * 40}",
        f"hf://{REPO_ID}/{FILENAME}@no-such-branch",
    ],
)
def test_404_is_unknown_model_or_file(hub_env, published, spec):
    with pytest.raises(errors.UnknownModelError, match="unknown model / file"):
        registry.resolve_model(spec)


def test_server_down(hub_env, published):
    cached = registry.resolve_model(NAME, registry=published.registry)
    unpinned = f"hf://{REPO_ID}/{FILENAME}"
    registry.resolve_model(unpinned)
    hub_env.hub.stop()

    start = time.monotonic()
    with pytest.raises(errors.OfflineError) as info:
        registry.resolve_model(f"hf://{REPO_ID}/weights/other.safetensors")
    assert time.monotonic() - start < 5  # no retry loop with back-off
    message = str(info.value)
    assert "cannot be reached" in message and "other.safetensors" in message
    assert "cvdm models pull" in message and "copy" in message

    again = registry.resolve_model(NAME, registry=published.registry)
    assert again.path == cached.path and again.verified and not again.downloaded
    fallback = registry.resolve_model(unpinned)  # HEAD fails -> the cached main is used
    assert fallback.revision == published.commit and fallback.verified


def test_offline_mode_never_contacts_the_hub(hub_env, published, monkeypatch):
    with pytest.raises(errors.OfflineError, match="HF_HUB_OFFLINE") as info:
        registry.resolve_model(NAME, registry=published.registry, offline=True)
    assert NAME in str(info.value) and "copy" in str(info.value)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as if HF_HUB_OFFLINE=1 at import
    with pytest.raises(errors.OfflineError):
        registry.resolve_model(f"hf://{REPO_ID}/{FILENAME}")
    assert hub_env.hub.count() == 0

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    registry.resolve_model(NAME, registry=published.registry)
    registry.resolve_model(f"hf://{REPO_ID}/{FILENAME}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    hub_env.hub.clear_log()
    assert registry.resolve_model(NAME, registry=published.registry).verified
    assert registry.resolve_model(f"hf://{REPO_ID}/{FILENAME}").revision == published.commit
    assert hub_env.hub.count() == 0


def test_token_reaches_the_hub_as_bearer_but_not_the_cdn(hub_env, monkeypatch):
    commit = hub_env.hub.add_file("lab/private", "m.safetensors", b"secret", private_token="hf_x")
    spec = f"hf://lab/private/m.safetensors@{commit}"
    with pytest.raises(errors.UnknownModelError, match="HF_TOKEN"):
        registry.resolve_model(spec)
    monkeypatch.setenv("HF_TOKEN", "hf_x")  # huggingface_hub reads HF_TOKEN on each call
    hub_env.hub.clear_log()
    assert registry.resolve_model(spec).verified
    heads = [r for r in hub_env.hub.requests if r.method == "HEAD"]
    gets = [r for r in hub_env.hub.requests if r.origin == "cdn"]
    assert heads and all(r.authorization == "Bearer hf_x" for r in heads)
    assert len(gets) == 1 and gets[0].authorization is None


def test_unpinned_spec_resolves_and_follows_main(hub_env, published):
    spec = f"hf://{REPO_ID}/{FILENAME}"
    first = registry.resolve_model(spec)
    assert first.revision == published.commit and first.verified and first.source == "hf"
    assert first.pinned_spec == f"{spec}@{published.commit}"
    hub_env.hub.clear_log()
    assert not registry.resolve_model(spec).downloaded and hub_env.hub.downloads() == 0

    newer = hub_env.hub.add_file(REPO_ID, FILENAME, b"retrained weights")
    second = registry.resolve_model(spec)
    assert second.downloaded and second.revision == newer
    assert second.sha256 == hashlib.sha256(b"retrained weights").hexdigest()


def test_renamed_repo_redirect_is_followed(hub_env, published):
    hub_env.hub.renamed["lab/old-name"] = REPO_ID
    resolved = registry.resolve_model(f"hf://lab/old-name/{FILENAME}@{published.commit}")
    assert resolved.verified and hub.sha256_file(resolved.path) == published.sha


def test_non_lfs_file_is_hashed_but_only_verified_against_a_registry(hub_env):
    commit = hub_env.hub.add_file(REPO_ID, FILENAME, b"small git file", lfs=False)
    resolved = registry.resolve_model(f"hf://{REPO_ID}/{FILENAME}@{commit}")
    assert not resolved.verified  # the hub's etag is a git sha1: nothing to check against
    assert resolved.sha256 == hashlib.sha256(b"small git file").hexdigest()
    reg = registry.load_registry(_registry_file(hub_env.tmp, resolved.sha256, commit))
    assert registry.resolve_model(NAME, registry=reg).verified


# --- the command line (in-process) -------------------------------------------------------


def _cli(*args: str) -> SimpleNamespace:
    result = CliRunner().invoke(app, list(args))
    return SimpleNamespace(code=result.exit_code, out=result.stdout, err=result.stderr)


def test_cli_list_pull_path_verify(hub_env, published, monkeypatch):
    monkeypatch.setenv(registry.REGISTRY_ENV, str(published.path))
    before = {m["name"]: m for m in json.loads(_cli("models", "list", "--json").out)}
    assert before[NAME]["cached"] is False and before[NAME]["state"] == "not cached"
    assert before["pkg"]["default"] is True and before[NAME]["default"] is False

    pulled = _cli("models", "pull", NAME)
    assert pulled.code == 0, pulled.err
    assert "downloaded, sha256 verified" in pulled.err
    after = {m["name"]: m for m in json.loads(_cli("models", "list", "--json").out)}
    assert after[NAME]["cached"] and after[NAME]["verified"]
    assert after[NAME]["size"] == len(published.data)
    assert after[NAME]["revision"] == published.commit

    table = _cli("models", "list")
    assert table.code == 0 and NAME in table.out and "verified" in table.out

    path = _cli("models", "path", NAME)
    assert path.code == 0 and Path(path.out.strip()) == _snapshot(hub_env, published.commit)

    info = json.loads(_cli("models", "info", NAME, "--json").out)
    assert info["sha256"] == published.sha and info["repo_id"] == REPO_ID

    assert _cli("models", "verify").code == 0
    blob = Path(path.out.strip()).resolve()
    blob.write_bytes(b"x" + blob.read_bytes()[1:])
    verify = _cli("models", "verify", NAME)
    assert verify.code == 1 and "mismatch" in verify.out and published.sha in verify.err


def test_cli_errors_and_unpinned_note(hub_env, published, monkeypatch):
    monkeypatch.setenv(registry.REGISTRY_ENV, str(published.path))
    unknown = _cli("models", "pull", "nope")
    assert unknown.code == 2 and "unknown model" in unknown.err and NAME in unknown.err
    assert _cli("models", "pull").code == 2  # nothing named
    pickle = _cli("models", "path", "evil.ckpt")
    assert pickle.code == 2 and "pickle" in pickle.err

    both = _cli("models", "pull", "nope", NAME)  # a batch goes on after a failure
    assert both.code == 1 and both.err.startswith("error: nope: unknown model")
    assert f"{NAME}: downloaded" in both.err

    note = _cli("models", "pull", f"hf://{REPO_ID}/{FILENAME}")
    assert note.code == 0 and f"@{published.commit}" in note.err
    assert "already cached" in note.err  # the same blob as the registry entry

    assert _cli("models", "verify", "--cache-dir", str(hub_env.tmp / "empty")).code == 0
    assert _cli("models", "verify", NAME, "--cache-dir", str(hub_env.tmp / "empty")).code == 1


# --- the real environment variables (subprocesses) --------------------------------------


def _run_cvdm(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING", "CVDM_"))}
    return subprocess.run(
        [sys.executable, "-c", "from cvdm_cli.cli.app import main; main()", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_env_vars_endpoint_home_cache_and_token(hub_env, published):
    env = {
        "HF_ENDPOINT": hub_env.hub.endpoint,
        "HF_HOME": str(hub_env.tmp / "home2"),
        "HF_TOKEN": "hf_from_env",
        registry.REGISTRY_ENV: str(published.path),
    }
    hub_env.hub.clear_log()
    out = _run_cvdm(["models", "pull", NAME], env)
    assert out.returncode == 0, out.stderr
    cached = hub_env.tmp / "home2" / "hub" / "models--lab--cvdm-test" / "snapshots"
    assert hub.sha256_file(cached / published.commit / FILENAME) == published.sha
    heads = [r for r in hub_env.hub.requests if r.method == "HEAD"]
    assert heads and all(r.authorization == "Bearer hf_from_env" for r in heads)
    assert all(r.authorization is None for r in hub_env.hub.requests if r.origin == "cdn")

    out = _run_cvdm(["models", "path", NAME], {**env, "HF_HUB_CACHE": str(hub_env.tmp / "c3")})
    assert out.returncode == 0, out.stderr
    assert Path(out.stdout.strip()).is_relative_to(hub_env.tmp / "c3")


def test_env_hf_hub_offline(hub_env, published):
    env = {
        "HF_ENDPOINT": hub_env.hub.endpoint,
        "HF_HOME": str(hub_env.home),
        "HF_HUB_OFFLINE": "1",
        registry.REGISTRY_ENV: str(published.path),
    }
    hub_env.hub.clear_log()
    missing = _run_cvdm(["models", "path", NAME], env)
    assert missing.returncode == 2
    assert NAME in missing.stderr and "HF_HUB_OFFLINE" in missing.stderr
    assert f"cvdm models pull {NAME}" in missing.stderr and "Traceback" not in missing.stderr
    assert hub_env.hub.count() == 0

    registry.resolve_model(NAME, registry=published.registry)  # online, same HF_HOME
    hub_env.hub.clear_log()
    ok = _run_cvdm(["models", "path", NAME], env)
    assert ok.returncode == 0, ok.stderr
    assert Path(ok.stdout.strip()) == _snapshot(hub_env, published.commit)
    assert hub_env.hub.count() == 0


# --- a real, non-editable install --------------------------------------------------------


@pytest.mark.slow
def test_non_editable_install_finds_registry_and_packaged_model(tmp_path):
    """Build and install the package into a fresh venv; it must find weights.toml and the
    packaged default model inside its own site-packages (not in this checkout)."""
    model = registry.PACKAGE_DIR / "models" / "cvdm-small-v2.safetensors"
    if not model.is_file():
        pytest.skip(f"{model} not trained yet (the lead adds it, then runs update-sha)")
    src = tmp_path / "src"  # a copy: building in the checkout would write build/ into it
    shutil.copytree(
        REPO / "cvdm_cli", src / "cvdm_cli", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, src / name)
    venv = tmp_path / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
        check=True,
    )
    py = venv / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # the dependencies come from this environment's site-packages (appended after the
    # venv's own, so the installed cvdm_cli wins; .pth files there are not processed, so the
    # editable hook of this checkout stays off)
    parent_site = next(p for p in sys.path if p.endswith("site-packages") and Path(p).is_dir())
    Path(site, "_parent_env.pth").write_text(parent_site + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
         "--no-build-isolation", "--no-index", "--quiet", str(src)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr

    probe = (
        "import json, cvdm_cli, cvdm_cli.hub.registry as r\n"
        "m = r.resolve_model(None)\n"
        "print(json.dumps({'pkg': cvdm_cli.__file__, 'toml': str(r.PACKAGED_REGISTRY),"
        " 'name': m.name, 'path': str(m.path), 'verified': m.verified}))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CVDM_", "PYTHON"))}
    env.update(HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    out = subprocess.run(
        [str(py), "-I", "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert Path(got["pkg"]).is_relative_to(site), got
    assert Path(got["toml"]).is_file() and Path(got["toml"]).is_relative_to(site)
    assert got["name"] == "cvdm-small-v2" and got["verified"]
    assert Path(got["path"]).is_relative_to(site)

    listed = subprocess.run(
        [str(venv / "bin" / "cvdm"), "models", "list", "--json"], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stderr
    assert [m["name"] for m in json.loads(listed.stdout) if m["default"]] == ["cvdm-small-v2"]
