"""The model of a :class:`~cvdm_cli.run.settings.ModelRef`, loaded once per process."""

from __future__ import annotations

import os
import threading

import torch

from cvdm_cli import errors
from cvdm_cli.core.model import CVDM
from cvdm_cli.io.weights import load_weights
from cvdm_cli.run.settings import ModelRef

_MODEL_CACHE: dict[tuple[str, int, int, str], CVDM] = {}
_MODEL_LOCK = threading.Lock()


def get_model(ref: ModelRef) -> CVDM:
    """The model of ``ref``, loaded once per process (keyed by file identity and device)."""
    real = os.path.realpath(ref.path)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise errors.UnknownModelError(
            "model file not found", path=ref.path, hint="check --model"
        ) from None
    key = (real, st.st_mtime_ns, st.st_size, ref.device)
    with _MODEL_LOCK:
        model = _MODEL_CACHE.get(key)
        if model is None:
            model = load_weights(real, device=torch.device(ref.device)).prepare_inference()
            _MODEL_CACHE.clear()  # one model per process: free the previous one
            _MODEL_CACHE[key] = model
    return model


def clear_model_cache() -> None:
    """Drop the model :func:`get_model` holds (a worker that goes on with other work)."""
    with _MODEL_LOCK:
        _MODEL_CACHE.clear()
