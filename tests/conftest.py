"""Shared fixtures: small, fast, offline."""

from __future__ import annotations

import os
import tempfile

import pytest

# Keep the tests away from the user's Hugging Face cache (and its verified markers):
# set before anything imports huggingface_hub, which reads these once at import.
_HF_HOME = tempfile.mkdtemp(prefix="cvdm-test-hf-")
os.environ["HF_HOME"] = _HF_HOME
os.environ["HF_HUB_CACHE"] = os.path.join(_HF_HOME, "hub")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def cvdm(*args):
    """Run the CLI in-process: SimpleNamespace(code, out, err); unexpected exceptions raise."""
    from types import SimpleNamespace

    from typer.testing import CliRunner

    from cvdm_cli.cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return SimpleNamespace(code=result.exit_code, out=result.stdout, err=result.stderr)


def json_lines(text: str) -> list[dict]:
    """Every line of ``text`` parsed as JSON (fails if any line is not)."""
    import json

    return [json.loads(line) for line in text.splitlines()]


def default_sigint() -> None:
    """Popen preexec_fn: SIGINT back to its default in the child. A test run started as a
    background job (``pytest &``) ignores SIGINT, children inherit that, and Python then
    installs no KeyboardInterrupt handler: the Ctrl-C tests would test nothing."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one CPU thread for a module: tiny convolutions are dominated by thread
    start-up, and far slower on a machine shared with another busy process."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def no_debug(monkeypatch):
    """CVDM_DEBUG unset, so errors print the one-line form the tests check."""
    monkeypatch.delenv("CVDM_DEBUG", raising=False)


@pytest.fixture(scope="session")
def tiny_model():
    """An untrained tiny CVDM (fixed init), on the CPU, in eval mode."""
    import torch

    from cvdm_cli import CVDM, ModelConfig

    torch.manual_seed(0)
    return CVDM(ModelConfig.preset("tiny")).eval()


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory, tiny_model):
    """The tiny model saved as .safetensors."""
    from cvdm_cli import save_weights

    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_weights(tiny_model, path, note="test fixture")
    return path


def sample_plane(model, plane, *, plane_index=0, callback=None, return_samples=False, **fields):
    """The one sampling driver with settings given as keywords, defaulting to a whole
    plane without TTA (the defaults these tests were written for)."""
    from cvdm_cli.sampling.plane import reconstruct_plane
    from cvdm_cli.sampling.settings import SamplerSettings

    settings = SamplerSettings(**{"tile": None, "tta": False, **fields})
    return reconstruct_plane(
        model, plane, settings, plane_index=plane_index, callback=callback,
        return_samples=return_samples,
    )  # fmt: skip
