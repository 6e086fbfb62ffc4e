"""cvdm: super-resolution with per-pixel uncertainty for fluorescence microscopy.

Public API (imported lazily so that ``import cvdm_cli`` and ``cvdm --help`` do not pay for
torch)::

    from cvdm_cli import CVDM, ModelConfig, save_weights, load_weights, reconstruct, schedule_map
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cvdm_cli import _moved
from cvdm_cli._version import __version__

_moved.install()  # old module paths (cvdm_cli.sampler, ...) keep working for one release

# public name -> module that defines it
_LAZY = {
    "ModelConfig": "cvdm_cli.core.config",
    "CVDM": "cvdm_cli.core.model",
    "save_weights": "cvdm_cli.io.weights",
    "load_weights": "cvdm_cli.io.weights",
    "reconstruct": "cvdm_cli.sampling.api",
    "schedule_map": "cvdm_cli.sampling.api",
}

__all__ = [
    "CVDM",
    "ModelConfig",
    "__version__",
    "load_weights",
    "reconstruct",
    "save_weights",
    "schedule_map",
]

if TYPE_CHECKING:  # pragma: no cover
    from cvdm_cli.core.config import ModelConfig
    from cvdm_cli.core.model import CVDM
    from cvdm_cli.io.weights import load_weights, save_weights
    from cvdm_cli.sampling.api import reconstruct, schedule_map


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cvdm_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
