"""Old module paths, kept importable for one release (0.x -> the next).

The modules of cvdm_cli moved into subpackages that show the layers (docs/architecture.md).
``import cvdm_cli.sampler`` and ``from cvdm_cli.pipeline import run_batch`` still work: a
finder installed by ``cvdm_cli/__init__.py`` serves each old name as an alias module that
forwards attribute lookups to the new modules (with a DeprecationWarning on import). New
code imports the new paths; this table is the only place that knows the old ones.

Only the standard library is imported here.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

# old module -> the new modules that hold its public names (searched in this order)
MOVED: dict[str, tuple[str, ...]] = {
    "cvdm_cli.config": ("cvdm_cli.core.config",),
    "cvdm_cli.model": ("cvdm_cli.core.model",),
    "cvdm_cli.diffusion": ("cvdm_cli.core.diffusion",),
    "cvdm_cli.normalize": ("cvdm_cli.core.normalize",),
    "cvdm_cli.variance": ("cvdm_cli.core.variance",),
    "cvdm_cli.devices": ("cvdm_cli.core.devices",),
    "cvdm_cli.tiling": ("cvdm_cli.core.tiling",),
    "cvdm_cli.metrics": ("cvdm_cli.core.metrics",),
    "cvdm_cli.views": ("cvdm_cli.sampling.views",),
    "cvdm_cli.passes": ("cvdm_cli.sampling.passes",),
    "cvdm_cli.sampler": (
        "cvdm_cli.sampling.api",
        "cvdm_cli.sampling.schedules",
        "cvdm_cli.sampling.steps",
        "cvdm_cli.sampling.noise",
        "cvdm_cli.core.devices",
    ),
    "cvdm_cli.tiled": ("cvdm_cli.sampling.plane",),
    "cvdm_cli.tiff": ("cvdm_cli.io.tiff",),
    "cvdm_cli.weights": ("cvdm_cli.io.weights",),
    "cvdm_cli.registry": ("cvdm_cli.hub.registry",),
    "cvdm_cli.pipeline": (
        "cvdm_cli.run.batch",
        "cvdm_cli.run.settings",
        "cvdm_cli.run.inputs",
        "cvdm_cli.run.outputs",
        "cvdm_cli.run.plane",
        "cvdm_cli.core.devices",
    ),
    "cvdm_cli.cluster": ("cvdm_cli.run.cluster",),
    "cvdm_cli.structures": ("cvdm_cli.training.structures",),
    "cvdm_cli.simulation": ("cvdm_cli.training.simulation",),
    "cvdm_cli.trainer": ("cvdm_cli.training.trainer", "cvdm_cli.training.data"),
    "cvdm_cli.evaluate": ("cvdm_cli.evaluation.evaluate", "cvdm_cli.io.pairs"),
    "cvdm_cli.evaluate_report": ("cvdm_cli.evaluation.report", "cvdm_cli.evaluation.figures"),
    "cvdm_cli.baselines": ("cvdm_cli.evaluation.baselines",),
}


class _AliasModule(types.ModuleType):
    """A module whose attributes are looked up in ``targets`` (imported on first use)."""

    def __init__(self, name: str, targets: Sequence[str]) -> None:
        super().__init__(name, f"Moved: see {', '.join(targets)}.")
        self.__dict__["_targets"] = tuple(targets)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for target in self.__dict__["_targets"]:
            module = importlib.import_module(target)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")

    def __dir__(self) -> list[str]:
        names: set[str] = set()
        for target in self.__dict__["_targets"]:
            names.update(n for n in dir(importlib.import_module(target)) if not n.startswith("_"))
        return sorted(names)


class _MovedFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the old names of :data:`MOVED` (and nothing else)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        warnings.warn(
            f"{spec.name} moved to {MOVED[spec.name][0]}; the old path works for one release",
            DeprecationWarning,
            stacklevel=3,
        )
        return _AliasModule(spec.name, MOVED[spec.name])

    def exec_module(self, module: types.ModuleType) -> None:
        return None


def install() -> None:
    """Put the finder first on ``sys.meta_path`` (once), so the old paths resolve to aliases
    before the import system looks for files that are no longer there."""
    if not any(isinstance(f, _MovedFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedFinder())
