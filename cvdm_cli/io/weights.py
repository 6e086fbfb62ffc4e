"""Saving and loading CVDM weights: safetensors only, self-describing metadata.

A weights file holds the state dict (float32) and, in its string metadata:
    "cvdm.format"   format version ("1")
    "cvdm.config"   ModelConfig as JSON (so the file alone rebuilds the model)
    "cvdm.norm"     normalisation rule as JSON: {"kind": "percentile", "low": .., "high": ..}
    "cvdm.scale"    the super-resolution factor
    "cvdm.info"     free-form JSON from ``save_weights(..., **info)`` (training data, steps,
                    validation metrics, ...); loaded back into ``model.info``
Nothing is ever unpickled: paths in pickle-based formats are refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from cvdm_cli.core.config import ModelConfig
from cvdm_cli.core.model import CVDM
from cvdm_cli.errors import InputNotFoundError, InvalidWeightsError, UnsafeWeightsFormatError

FORMAT_VERSION = "1"
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".h5", ".hdf5", ".pkl", ".pickle", ".bin", ".keras")


def check_weights_path(path: str | os.PathLike[str]) -> Path:
    """Refuse anything that is not a .safetensors path (before opening it)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in PICKLE_SUFFIXES:
        raise UnsafeWeightsFormatError(
            f"refusing to load a {suffix} file: only .safetensors weights are accepted "
            "(pickle-based formats can run arbitrary code)",
            path=p,
            hint="convert the weights to .safetensors, or use a model from `cvdm models list`",
        )
    if suffix != ".safetensors":
        raise UnsafeWeightsFormatError(
            "only .safetensors weights are accepted",
            path=p,
            hint="pass a .safetensors file or a registry model name",
        )
    return p


def weights_metadata(model: CVDM, info: dict[str, Any]) -> dict[str, str]:
    cfg = model.config
    return {
        "cvdm.format": FORMAT_VERSION,
        "cvdm.config": cfg.to_json(),
        "cvdm.norm": json.dumps({"kind": "percentile", "low": cfg.norm_low, "high": cfg.norm_high}),
        "cvdm.scale": str(cfg.scale),
        "cvdm.info": json.dumps(info, sort_keys=True, default=str),
    }


def save_weights(model: CVDM, path: str | os.PathLike[str], **info: Any) -> Path:
    """Write ``model`` to ``path`` (.safetensors) atomically; ``info`` goes to metadata."""
    p = check_weights_path(path)
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    merged = {**model.info, **info}
    tmp = p.with_name(f".{p.name}.partial-{os.getpid()}")
    try:
        save_file(state, str(tmp), metadata=weights_metadata(model, merged))
        os.replace(tmp, p)
    finally:
        if tmp.exists():
            tmp.unlink()
    return p


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a .safetensors file (no tensors loaded)."""
    from safetensors import safe_open

    p = check_weights_path(path)
    if not p.is_file():
        raise InputNotFoundError(
            "weights file not found", path=p, hint="check the path, or use a registry model name"
        )
    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except (SafetensorError, OSError, ValueError) as exc:
        raise InvalidWeightsError(
            f"not a readable .safetensors file ({exc})",
            path=p,
            hint="re-download or re-export the weights",
        ) from None


def load_weights(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> CVDM:
    """Rebuild a CVDM from a weights file alone; ``model.info`` gets the free-form info."""
    p = check_weights_path(path)
    meta = read_metadata(p)
    if "cvdm.config" not in meta:
        raise InvalidWeightsError(
            "the file has no cvdm model config in its metadata",
            path=p,
            hint="save weights with cvdm_cli.save_weights / cvdm train",
        )
    try:
        config = ModelConfig.from_json(meta["cvdm.config"])
        info = json.loads(meta.get("cvdm.info", "{}"))
        state = load_file(str(p), device="cpu")
    except (SafetensorError, ValueError, TypeError) as exc:
        raise InvalidWeightsError(
            f"corrupt weights file ({exc})", path=p, hint="re-download or re-export the weights"
        ) from None
    model = CVDM(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InvalidWeightsError(
            f"weights do not match the model config (missing {len(missing)}, "
            f"unexpected {len(unexpected)} tensors)",
            path=p,
            hint="the file was written by an incompatible cvdm version",
        )
    model.info = info
    return model.to(device).eval()
