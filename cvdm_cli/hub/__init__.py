"""Models from the registry and the hub: the registry schema and resolution
(:mod:`cvdm_cli.hub.registry`) and the one module that imports huggingface_hub
(:mod:`cvdm_cli.hub.hf`), imported only when a hub model is pulled or checked.

``from cvdm_cli import hub; hub.fetch(...)`` (the old flat module) still works for one
release: unknown attributes are looked up in :mod:`cvdm_cli.hub.hf`.
"""

from __future__ import annotations

import importlib
from typing import Any


def __getattr__(name: str) -> Any:
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("cvdm_cli.hub.hf"), name)
