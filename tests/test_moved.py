"""Old module paths keep working for one release (cvdm_cli/_moved.py)."""

from __future__ import annotations

import importlib
import subprocess
import sys
import warnings

import pytest

from cvdm_cli import _moved


def test_every_old_path_serves_its_public_names_from_the_new_modules():
    for old, targets in _moved.MOVED.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sys.modules.pop(old, None)
            alias = importlib.import_module(old)
        assert any(issubclass(w.category, DeprecationWarning) for w in caught), old
        for target in targets:
            module = importlib.import_module(target)  # every target exists
            public = getattr(module, "__all__", None) or [
                n for n in vars(module) if not n.startswith("_")
            ]
            for name in public:
                # the first target holding a name wins; a name may sit in several
                owner = next(
                    importlib.import_module(t)
                    for t in targets
                    if hasattr(importlib.import_module(t), name)
                )
                assert getattr(alias, name) is getattr(owner, name), (old, name)
        assert set(dir(alias)) >= set(getattr(importlib.import_module(targets[0]), "__all__", []))
        with pytest.raises(AttributeError, match="no attribute"):
            alias.no_such_name  # noqa: B018


def test_old_imports_in_a_fresh_process():
    code = (
        "import warnings; warnings.simplefilter('error', DeprecationWarning)\n"
        "try:\n    from cvdm_cli.pipeline import run_batch\nexcept DeprecationWarning:\n"
        "    print('warned')\n"
        "warnings.simplefilter('ignore')\n"
        "from cvdm_cli.pipeline import run_batch, EnhanceSettings, discover_inputs\n"
        "from cvdm_cli.sampler import reconstruct, FastSchedule, run_passes\n"
        "from cvdm_cli.run.batch import run_batch as new\n"
        "import cvdm_cli.tiled as tiled\n"
        "from cvdm_cli.sampling.plane import reconstruct_plane\n"
        "assert run_batch is new and tiled.reconstruct_plane is reconstruct_plane\n"
        "from cvdm_cli import hub\n"
        "from cvdm_cli.hub.hf import sha256_file\n"
        "assert hub.sha256_file is sha256_file\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["warned", "ok"], out.stderr


def test_new_package_paths_are_not_shadowed():
    """The finder serves only the old names: the subpackages import as packages."""
    for name in ("cvdm_cli.core", "cvdm_cli.sampling", "cvdm_cli.io", "cvdm_cli.hub",
                 "cvdm_cli.run", "cvdm_cli.training", "cvdm_cli.evaluation"):  # fmt: skip
        assert hasattr(importlib.import_module(name), "__path__"), name
