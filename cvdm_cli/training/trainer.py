"""Training a CVDM on paired low-res / high-res images.

Data (:mod:`cvdm_cli.training.data`, re-exported here): pairs of 2D images (LR (h, w), HR
(scale*h, scale*w)), each normalised on its own by percentiles (1, 99.8) -> [-1, 1] exactly
as at inference, cut into aligned random patches of the precomputed bicubic condition x and
the target y.

Optimisation: AdamW, linear warm-up then cosine decay to 10% of the peak learning rate,
gradient-norm clipping, an exponential moving average (EMA) of the weights used for
validation and export, bf16 autocast on CUDA.

Checkpoints are .safetensors (no pickle), written and read through
:func:`cvdm_cli.io.weights.write_tensors` / :func:`~cvdm_cli.io.weights.read_tensors`:
weights, EMA, AdamW moments, step, and the states of both random generators, so ``resume``
continues bit-exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cvdm_cli.core import metrics
from cvdm_cli.core.config import ModelConfig
from cvdm_cli.core.devices import AUTOCAST_DTYPES, pick_precision
from cvdm_cli.core.diffusion import LossTerms, cvdm_losses
from cvdm_cli.core.model import CVDM
from cvdm_cli.errors import InputNotFoundError, InvalidWeightsError
from cvdm_cli.io.weights import read_tensors, save_weights, write_tensors
from cvdm_cli.sampling.plane import reconstruct_plane
from cvdm_cli.sampling.settings import SamplerSettings
from cvdm_cli.training.data import (  # re-exported: their home is training/data.py
    Pair,
    PairedData,
    make_pair,
    pair_files,
    read_image,
)

__all__ = [
    "CHECKPOINT_FORMAT",
    "Pair",
    "PairedData",
    "TrainConfig",
    "TrainState",
    "checkpoint_configs",
    "checkpoint_path",
    "export_checkpoint",
    "export_weights",
    "learning_rate",
    "load_checkpoint",
    "make_pair",
    "new_state",
    "pair_files",
    "read_image",
    "resolve_precision",
    "save_checkpoint",
    "train",
    "train_step",
    "validate",
]

CHECKPOINT_FORMAT = "cvdm-train-1"
VAL_DATA_RANGE = 2.0  # validation PSNR is on normalised images, which span [-1, 1]


# --- configuration --------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Sizes are in low-res pixels unless stated."""

    steps: int = 10_000
    batch_size: int = 8
    patch: int = 64  # LR patch side; the HR patch is scale * patch
    lr: float = 2e-4
    weight_decay: float = 1e-4
    warmup: int = 200
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    val_every: int = 500
    val_images: int = 4  # held-out pairs scored per validation; 0 = all of them
    val_samples: int = 2
    val_steps: int = 10
    val_fraction: float = 0.1
    seed: int = 0
    precision: str = "auto"  # auto = bf16 on CUDA and native-bf16 CPUs, else fp32
    terminal_weight: float = 0.0  # extra loss weight on mean gamma(t_max) (0: the paper's)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up to cfg.lr, then cosine decay to 0.1 cfg.lr at cfg.steps."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


# --- EMA and checkpoints ------------------------------------------------------------


@torch.no_grad()
def ema_update(ema: CVDM, model: CVDM, decay: float, step: int) -> None:
    """EMA with the usual warm-up: d = min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1.0 + step) / (10.0 + step))
    # one fused launch per group of tensors instead of one per parameter (GPU launch cost)
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)


@dataclass
class TrainState:
    model: CVDM
    ema: CVDM
    optimizer: torch.optim.AdamW
    step: int
    rng: np.random.Generator  # patch sampling
    gen: torch.Generator  # t and eps
    history: list[dict[str, float]]
    seconds: float = 0.0  # training wall time over all runs (resumes included)


def save_checkpoint(path: Path, state: TrainState, cfg: TrainConfig) -> Path:
    """Everything needed for an exact resume, as one .safetensors file (atomic, fsynced).

    Tensors: ``model/<name>``, ``ema/<name>``, ``optim/<param index>/<name>`` (AdamW's
    moments and step) and ``rng/torch``; string metadata: format, step, both configs, the
    numpy generator state, the last 200 history records, seconds and ``model.info``.
    """
    tensors: dict[str, Tensor] = {}
    for k, v in state.model.state_dict().items():
        tensors[f"model/{k}"] = v.detach().cpu().contiguous()
    for k, v in state.ema.state_dict().items():
        tensors[f"ema/{k}"] = v.detach().cpu().contiguous()
    opt_state = state.optimizer.state_dict()
    for idx, st in opt_state["state"].items():
        for name, value in st.items():
            tensors[f"optim/{idx}/{name}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["rng/torch"] = state.gen.get_state()
    meta = {
        "format": CHECKPOINT_FORMAT,
        "step": str(state.step),
        "model_config": state.model.config.to_json(),
        "train_config": json.dumps(cfg.to_dict()),
        "numpy_rng": json.dumps(state.rng.bit_generator.state),
        "history": json.dumps(state.history[-200:]),
        "seconds": f"{state.seconds:.1f}",
        "info": json.dumps(state.model.info, default=str),
    }
    return write_tensors(path, tensors, meta)


def _read_checkpoint(path: Path, *, with_tensors: bool) -> tuple[dict[str, str], dict[str, Tensor]]:
    """(metadata, tensors) of a checkpoint written by :func:`save_checkpoint`, or a clear error."""
    hint = "pass the .ckpt.safetensors written by cvdm train"
    if not path.is_file():
        raise InputNotFoundError("checkpoint not found", path=path, hint=hint)
    meta, tensors = read_tensors(
        path, with_tensors=with_tensors, what="a readable checkpoint", hint=hint
    )
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise InvalidWeightsError("not a cvdm training checkpoint", path=path, hint=hint)
    return meta, tensors


def load_checkpoint(path: Path, cfg: TrainConfig, device: torch.device) -> TrainState:
    """Rebuild the training state saved by :func:`save_checkpoint`."""
    meta, tensors = _read_checkpoint(Path(path), with_tensors=True)
    config = ModelConfig.from_json(meta["model_config"])
    model, ema = CVDM(config), CVDM(config)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema/")})
    model.info = json.loads(meta.get("info", "{}"))
    model.to(device)
    ema.to(device)
    optimizer = make_optimizer(model, cfg)
    opt_state = optimizer.state_dict()
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, idx, name = key.split("/", 2)
            opt_state["state"].setdefault(int(idx), {})[name] = value.to(
                device if name != "step" else "cpu"
            )
    optimizer.load_state_dict(opt_state)
    rng = np.random.default_rng()
    rng.bit_generator.state = json.loads(meta["numpy_rng"])
    gen = torch.Generator()
    gen.set_state(tensors["rng/torch"])
    return TrainState(
        model=model,
        ema=ema,
        optimizer=optimizer,
        step=int(meta["step"]),
        rng=rng,
        gen=gen,
        history=json.loads(meta.get("history", "[]")),
        seconds=float(meta.get("seconds", "0")),
    )


def make_optimizer(model: CVDM, cfg: TrainConfig) -> torch.optim.AdamW:
    # fused kernels on CUDA: one launch per step instead of several per parameter
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(
        model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused
    )


def new_state(
    config: ModelConfig, cfg: TrainConfig, device: torch.device, init: CVDM | None = None
) -> TrainState:
    """Step 0 of a run: a fresh model of ``config`` (initialised from ``cfg.seed``), or a
    copy of ``init``'s weights for fine-tuning (its config wins; the EMA starts equal)."""
    torch.manual_seed(cfg.seed)  # parameter initialisation
    if init is None:
        model = CVDM(config).to(device)
    else:
        model = copy.deepcopy(init).to(device)
        model.info = {}  # a new run, a new record; the caller describes the start in ``info``
    model.train()
    ema = copy.deepcopy(model)
    return TrainState(
        model=model,
        ema=ema,
        optimizer=make_optimizer(model, cfg),
        step=0,
        rng=np.random.default_rng(cfg.seed),
        gen=torch.Generator().manual_seed(cfg.seed + 1),
        history=[],
    )


# --- validation -------------------------------------------------------------------------


@torch.no_grad()
def validate(model: CVDM, pairs: Sequence[Pair], cfg: TrainConfig) -> dict[str, float]:
    """Mean PSNR (normalised units, range 2) of the fast sampler vs bicubic on val pairs
    (the first ``cfg.val_images``, or all when it is 0).

    Sampled by the one driver ``cvdm enhance`` uses, with its defaults except the sample
    and step counts (``cfg.val_samples``, ``cfg.val_steps``) and whole planes (a validation
    image is small); pair i is plane i, so the draws are fixed by the pair list.
    """

    if not pairs:
        return {}
    settings = SamplerSettings(samples=cfg.val_samples, steps=cfg.val_steps, tile=None)
    scores, bicubic = [], []
    for i, pair in enumerate(pairs[: cfg.val_images] if cfg.val_images else pairs):
        rec = reconstruct_plane(model, pair.lowres[0].numpy(), settings, plane_index=i)
        target = pair.y.numpy()[0]
        scores.append(metrics.psnr(rec.mean, target, VAL_DATA_RANGE))
        bicubic.append(metrics.psnr(pair.x.numpy()[0], target, VAL_DATA_RANGE))
    return {
        "val_psnr": float(np.mean(scores)),
        "val_psnr_bicubic": float(np.mean(bicubic)),
        "val_images": float(len(scores)),
    }


# --- the loop ---------------------------------------------------------------------------

StepCallback = Callable[[int, dict[str, float]], None]


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a --precision option (None = fp32); 'auto' as in enhance."""
    return AUTOCAST_DTYPES[pick_precision(precision, device)]


def train_step(
    state: TrainState,
    x: Tensor,
    y: Tensor,
    cfg: TrainConfig,
    autocast: torch.dtype | None,
) -> dict[str, float]:
    """One optimisation step on a batch (condition x, target y: (B,1,H,W) on the model's
    device): learning rate for ``state.step``, loss, clipped gradients, AdamW, EMA.
    Returns the step's record (loss terms, learning rate, gradient norm)."""
    model, opt = state.model, state.optimizer
    for group in opt.param_groups:
        group["lr"] = learning_rate(state.step, cfg)
    terms: LossTerms = cvdm_losses(
        model, x, y, generator=state.gen, autocast_dtype=autocast,
        terminal_weight=cfg.terminal_weight,
    )  # fmt: skip
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    ema_update(state.ema, model, cfg.ema_decay, state.step)
    state.step += 1
    losses, (grad_norm_value,) = terms.as_floats(grad_norm)
    return {
        "step": state.step,
        **losses,
        "lr": opt.param_groups[0]["lr"],
        "grad_norm": grad_norm_value,
    }


def train(
    data: PairedData,
    *,
    model_config: ModelConfig,
    cfg: TrainConfig,
    out: Path,
    device: torch.device | str = "cpu",
    resume: Path | None = None,
    init: CVDM | None = None,
    info: dict[str, Any] | None = None,
    callback: StepCallback | None = None,
    stop_after: int | None = None,
) -> TrainState:
    """Train until ``cfg.steps``; write checkpoints and the final EMA weights to ``out``.

    Checkpoint: ``<out stem>.ckpt.safetensors`` next to ``out``, every
    ``cfg.checkpoint_every`` steps and at the end. ``stop_after``: stop (with a
    checkpoint) after this many steps of this call, for tests and time-boxed runs.
    ``callback(step, record)`` after every step with the loss terms and learning rate.
    ``init``: start from these weights (fine-tuning) instead of a fresh ``model_config``
    model; ignored with ``resume`` (the checkpoint holds the weights).
    """
    device = torch.device(device)
    out = Path(out)
    ckpt_path = checkpoint_path(out)
    if resume:
        state = load_checkpoint(resume, cfg, device)
    else:
        state = new_state(model_config, cfg, device, init=init)
    state.model.info.update(info or {})
    autocast = resolve_precision(cfg.precision, device)
    model, ema = state.model, state.ema
    model.train()
    started, steps_this_call, base_seconds = time.time(), 0, state.seconds
    while state.step < cfg.steps:
        x, y = data.batch(state.rng, cfg.batch_size)
        record = train_step(state, x.to(device), y.to(device), cfg, autocast)
        steps_this_call += 1
        if cfg.val_every and state.step % cfg.val_every == 0:
            record.update(validate(ema, data.val, cfg))
            model.train()
        if state.step % 50 == 0 or "val_psnr" in record:
            state.history.append(record)
        if callback is not None:
            callback(state.step, record)
        if state.step % cfg.checkpoint_every == 0:
            state.seconds = base_seconds + time.time() - started
            save_checkpoint(ckpt_path, state, cfg)
        if stop_after is not None and steps_this_call >= stop_after:
            break
    state.seconds = base_seconds + time.time() - started
    save_checkpoint(ckpt_path, state, cfg)
    final_val = validate(ema, data.val, cfg) if state.step >= cfg.steps else {}
    export_weights(state, cfg, out, data=data.describe(), validation=final_val, device=str(device))
    return state


def export_weights(
    state: TrainState,
    cfg: TrainConfig,
    out: Path,
    *,
    data: dict[str, Any],
    validation: dict[str, float],
    device: str,
) -> Path:
    """Write the EMA weights with a self-describing training record in the metadata."""
    ema = state.ema
    ema.info = {
        **state.model.info,
        "training": {
            **data,
            "steps": state.step,
            "train_config": cfg.to_dict(),
            "seconds": round(state.seconds, 1),
            "device": device,
        },
        "validation": validation,
    }
    return save_weights(ema, out)


def checkpoint_configs(ckpt: Path) -> tuple[ModelConfig, TrainConfig]:
    """The model and training configurations a checkpoint was written with."""
    meta, _ = _read_checkpoint(Path(ckpt), with_tensors=False)
    return ModelConfig.from_json(meta["model_config"]), TrainConfig(
        **json.loads(meta["train_config"])
    )


def export_checkpoint(ckpt: Path, out: Path, *, data: PairedData | None = None) -> Path:
    """Export the EMA weights of a checkpoint (e.g. a run stopped early) to ``out``.

    With ``data``, the held-out pairs are scored first and recorded in the metadata.
    """
    _, cfg = checkpoint_configs(ckpt)
    state = load_checkpoint(ckpt, cfg, torch.device("cpu"))
    validation = validate(state.ema, data.val, cfg) if data is not None else {}
    described = data.describe() if data is not None else {}
    return export_weights(state, cfg, out, data=described, validation=validation, device="cpu")


def checkpoint_path(out: Path) -> Path:
    out = Path(out)
    return out.with_name(out.name.removesuffix(".safetensors") + ".ckpt.safetensors")
