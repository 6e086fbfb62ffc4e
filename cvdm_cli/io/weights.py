"""Saving and loading CVDM weights: safetensors only, self-describing metadata.

The only module that imports safetensors. A weights file holds the state dict (float32)
and, in its string metadata:
    "cvdm.format"   format version ("1")
    "cvdm.config"   ModelConfig as JSON (so the file alone rebuilds the model)
    "cvdm.norm"     normalisation rule as JSON: {"kind": "percentile", "low": .., "high": ..}
    "cvdm.scale"    the super-resolution factor
    "cvdm.info"     free-form JSON from ``save_weights(..., **info)`` (training data, steps,
                    validation metrics, ...); loaded back into ``model.info``
A CARE baseline file (:func:`save_care` / :func:`load_care`) has the same format, norm,
scale and info keys, plus
    "cvdm.kind"     "care" (CVDM files have no kind, or "cvdm")
    "cvdm.care"     CareConfig as JSON
and no "cvdm.config"; each loader refuses the other kind of file with one clear error.
Training checkpoints (:mod:`cvdm_cli.training.trainer`) go through the same generic
:func:`write_tensors` / :func:`read_tensors`.

Nothing is ever unpickled: :func:`weights_format_problem` is the one rule that refuses
pickle-based formats (and anything else that is not ``.safetensors``), for local paths,
registry entries and ``hf://`` specs alike.

torch and safetensors are imported inside the functions that need them, so that the
format checks cost nothing to import (the registry uses them while reading weights.toml).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from cvdm_cli.errors import (
    ConfigError,
    InputNotFoundError,
    InvalidWeightsError,
    UnsafeWeightsFormatError,
)
from cvdm_cli.io.atomic import atomic_path

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import Tensor

    from cvdm_cli.core.care import CareNet
    from cvdm_cli.core.model import CVDM

FORMAT_VERSION = "1"
WEIGHTS_SUFFIX = ".safetensors"
# Formats that unpickle (run code) on load: refused everywhere, whatever the source.
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".h5", ".hdf5", ".pkl", ".pickle", ".bin", ".keras")

READ_HINT = "re-download or re-export the weights"
KIND_KEY = "cvdm.kind"
CVDM_KIND, CARE_KIND = "cvdm", "care"  # CARE_KIND is cvdm_cli.core.care.CARE_KIND


# --- the format rule ------------------------------------------------------------------


def weights_suffix(name: str | os.PathLike[str]) -> str:
    """The lower-case suffix of a file name or path ("" when it has none); hub file names
    and local paths alike ('/' separates folders in both)."""
    return PurePosixPath(os.fspath(name)).suffix.lower()


def weights_format_problem(name: str | os.PathLike[str]) -> str | None:
    """Why a weights file called ``name`` is refused, or None for a ``.safetensors`` name.

    Decided on the name alone, before any file is opened: pickle-based formats (see
    :data:`PICKLE_SUFFIXES`) can run code when loaded.
    """
    suffix = weights_suffix(name)
    if suffix == WEIGHTS_SUFFIX:
        return None
    if suffix in PICKLE_SUFFIXES:
        return (
            f"refusing {suffix}: a pickle-based format, which can run code when loaded; "
            "only .safetensors weights are accepted"
        )
    return (
        f"not a .safetensors file ({suffix or 'no suffix'}); only .safetensors weights are accepted"
    )


def refuse_unsafe_format(
    name: str | os.PathLike[str], *, path: str | os.PathLike[str] | None = None
) -> None:
    """Raise :class:`UnsafeWeightsFormatError` (about ``path``, default ``name``) unless
    ``name`` is a ``.safetensors`` name."""
    problem = weights_format_problem(name)
    if problem is None:
        return
    pickled = weights_suffix(name) in PICKLE_SUFFIXES
    raise UnsafeWeightsFormatError(
        problem,
        path=name if path is None else path,
        hint="convert the weights to .safetensors, or use a model from `cvdm models list`"
        if pickled
        else "pass a .safetensors file or a registry model name",
    )


def check_weights_path(path: str | os.PathLike[str]) -> Path:
    """Refuse anything that is not a .safetensors path (before opening it)."""
    p = Path(path)
    refuse_unsafe_format(p)
    return p


# --- generic tensor files -----------------------------------------------------------------


def write_tensors(
    path: str | os.PathLike[str],
    tensors: Mapping[str, Tensor],
    metadata: Mapping[str, str],
    *,
    fsync: bool = True,
) -> Path:
    """Write contiguous CPU ``tensors`` and string ``metadata`` as one .safetensors file,
    atomically (:func:`cvdm_cli.io.atomic.atomic_path`). Returns ``path``.

    OSError (read-only folder, disk full) propagates after the temporary file is removed.
    """
    from safetensors.torch import save_file

    p = Path(path)
    with atomic_path(p, fsync=fsync) as tmp:
        save_file(dict(tensors), str(tmp), metadata=dict(metadata))
    return p


def read_tensors(
    path: str | os.PathLike[str],
    *,
    with_tensors: bool = True,
    what: str = "a readable .safetensors file",
    hint: str = READ_HINT,
) -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, tensors) of a .safetensors file; tensors on the CPU, {} unless
    ``with_tensors``. The caller checks that the file exists first (with its own message).

    Raises :class:`InvalidWeightsError` ``"not {what} (<reason>)"`` with ``hint`` for a file
    safetensors cannot read.
    """
    from safetensors import safe_open

    p = Path(path)
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()} if with_tensors else {}  # noqa: SIM118
    except Exception as exc:  # SafetensorError, OSError, ValueError, ...: all a bad file
        raise InvalidWeightsError(f"not {what} ({exc})", path=p, hint=hint) from None
    return meta, tensors


# --- CVDM weights -------------------------------------------------------------------------


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
    import torch

    p = check_weights_path(path)
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()
    }
    merged = {**model.info, **info}
    return write_tensors(p, state, weights_metadata(model, merged))


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """The string metadata of a .safetensors file (no tensors loaded)."""
    p = check_weights_path(path)
    if not p.is_file():
        raise InputNotFoundError(
            "weights file not found", path=p, hint="check the path, or use a registry model name"
        )
    meta, _ = read_tensors(p, with_tensors=False)
    return meta


def load_weights(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> CVDM:
    """Rebuild a CVDM from a weights file alone; ``model.info`` gets the free-form info."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from cvdm_cli.core.config import ModelConfig
    from cvdm_cli.core.model import CVDM

    p = check_weights_path(path)
    meta = read_metadata(p)
    kind = file_kind(meta)
    if kind == CARE_KIND:
        raise InvalidWeightsError(
            "holds a CARE baseline network, not a CVDM model",
            path=p,
            hint=f"use it as `cvdm evaluate --baseline care:{p}`; pass a CVDM model here",
        )
    if kind != CVDM_KIND:
        raise InvalidWeightsError(
            f"holds a network of unknown kind {kind!r}, not a CVDM model",
            path=p,
            hint="pass weights written by cvdm train / cvdm_cli.save_weights",
        )
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
        raise InvalidWeightsError(f"corrupt weights file ({exc})", path=p, hint=READ_HINT) from None
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


def file_kind(meta: Mapping[str, str]) -> str:
    """What a weights file holds, from its metadata: "cvdm" (no kind key) or "care"."""
    return meta.get(KIND_KEY, CVDM_KIND)


# --- CARE baseline weights ------------------------------------------------------------------


def save_care(net: CareNet, path: str | os.PathLike[str], **info: Any) -> Path:
    """Write a CARE net to ``path`` (.safetensors) atomically: its state dict (float32),
    ``cvdm.kind`` = "care", its config, normalisation percentiles, scale and ``info``."""
    import torch

    p = check_weights_path(path)
    cfg = net.config
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()
    }
    meta = {
        "cvdm.format": FORMAT_VERSION,
        KIND_KEY: CARE_KIND,
        "cvdm.care": cfg.to_json(),
        "cvdm.norm": json.dumps({"kind": "percentile", "low": cfg.norm_low, "high": cfg.norm_high}),
        "cvdm.scale": str(cfg.scale),
        "cvdm.info": json.dumps({**net.info, **info}, sort_keys=True, default=str),
    }
    return write_tensors(p, state, meta)


def load_care(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> CareNet:
    """Rebuild a CARE net from a file written by :func:`save_care` (in eval mode on
    ``device``; ``net.info`` gets the free-form info). Refuses CVDM files and others."""
    from cvdm_cli.core.care import CareConfig, CareNet

    p = check_weights_path(path)
    meta = read_metadata(p)
    kind = file_kind(meta)
    if kind != CARE_KIND:
        what = "a CVDM model" if kind == CVDM_KIND else f"a network of kind {kind!r}"
        raise InvalidWeightsError(
            f"holds {what}, not a CARE baseline network",
            path=p,
            hint="train a CARE baseline with `cvdm train-care`; a CVDM model goes to --model",
        )
    try:
        config = CareConfig.from_json(meta["cvdm.care"])
        info = json.loads(meta.get("cvdm.info", "{}"))
        _, state = read_tensors(p)
    except (KeyError, ValueError, TypeError, ConfigError) as exc:
        raise InvalidWeightsError(
            f"corrupt CARE weights file ({exc!r})", path=p, hint="re-train or re-export it"
        ) from None
    net = CareNet(config)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise InvalidWeightsError(
            f"weights do not match the CARE config (missing {len(missing)}, "
            f"unexpected {len(unexpected)} tensors)",
            path=p,
            hint="the file was written by an incompatible cvdm version",
        )
    net.info = info
    return net.to(device).eval()
