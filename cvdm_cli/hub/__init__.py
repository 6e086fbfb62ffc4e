"""Models from the registry and the hub: the registry schema and resolution
(:mod:`cvdm_cli.hub.registry`), sha256 checks and verified-markers
(:mod:`cvdm_cli.hub.verify`), and the one module that imports huggingface_hub
(:mod:`cvdm_cli.hub.hf`), imported only when a hub model is pulled or checked.

``from cvdm_cli import hub; hub.fetch(...)`` (the old flat module) still works for one
release: unknown attributes are looked up in :mod:`cvdm_cli.hub.hf`.
"""

from __future__ import annotations

import importlib
from typing import Any

# ``from cvdm_cli.hub import verify`` asks for the attribute before importing the submodule:
# these names must not fall through to the hf lookup (that would import huggingface_hub).
_SUBMODULES = frozenset({"hf", "registry", "verify"})


def __getattr__(name: str) -> Any:
    if name.startswith("__") or name in _SUBMODULES:
        raise AttributeError(name)
    return getattr(importlib.import_module("cvdm_cli.hub.hf"), name)
