"""cvdm: super-resolution with per-pixel uncertainty for fluorescence microscopy.

Public API (imported lazily so that ``import cvdm_cli`` and ``cvdm --help`` do not pay for
torch)::

    from cvdm_cli import CVDM, ModelConfig, save_weights, load_weights, reconstruct, schedule_map
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from cvdm_cli._version import __version__

# public name -> module that defines it
_LAZY = {
    "ModelConfig": "cvdm_cli.config",
    "CVDM": "cvdm_cli.model",
    "save_weights": "cvdm_cli.weights",
    "load_weights": "cvdm_cli.weights",
    "reconstruct": "cvdm_cli.sampler",
    "schedule_map": "cvdm_cli.sampler",
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
    from cvdm_cli.config import ModelConfig
    from cvdm_cli.model import CVDM
    from cvdm_cli.sampler import reconstruct, schedule_map
    from cvdm_cli.weights import load_weights, save_weights


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'cvdm_cli' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
