"""Training the CARE baseline (:mod:`cvdm_cli.core.care`) on the pairs cvdm trains on.

Data: :class:`cvdm_cli.training.data.PairedData`, the very patches ``cvdm train`` draws:
each LR and HR normalised on its own by percentiles (the CARE config's, default 1 / 99.8),
x = the bicubic upsampling of the whole normalised LR (cvdm's condition, which is CARE's
input), y = the normalised HR, random aligned patches with flips and quarter turns.

Optimisation, kept comparable to ``cvdm train``: AdamW (weight decay 1e-4), the same
learning-rate schedule (:func:`cvdm_cli.training.trainer.learning_rate`: linear warm-up,
then cosine decay to 10% of the peak), gradient-norm clipping at 1, float32. The loss is
the mean absolute error, CSBDeep's default ``train_loss`` for a (non-probabilistic) CARE
network: L1 keeps edges sharper than L2 and is less swayed by the few bright, noisy pixels
of sparse fluorescence. No EMA and no best-checkpoint selection: the final weights are
exported, as cvdm's are (cvdm exports its EMA).

Deterministic by ``seed`` on the CPU: the parameters are initialised from
``torch.manual_seed(seed)`` and the patches drawn from ``numpy.random.default_rng(seed)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cvdm_cli.core import metrics
from cvdm_cli.core.care import CareConfig, CareNet
from cvdm_cli.core.config import ModelConfig
from cvdm_cli.errors import ConfigError
from cvdm_cli.training.data import Pair, PairedData
from cvdm_cli.training.trainer import TrainConfig, learning_rate

__all__ = ["CareStepCallback", "care_data", "score_pairs", "train_care"]

CareStepCallback = Callable[[int, dict[str, float]], None]
VAL_DATA_RANGE = 2.0  # PSNR on normalised images, which span [-1, 1] (as cvdm's trainer)


def care_data(
    lr_dir: Path,
    hr_dir: Path,
    *,
    config: CareConfig,
    patch: int,
    val_fraction: float,
    seed: int = 0,
) -> PairedData:
    """The pairs of two folders, normalised with ``config``'s percentiles and scale, split
    as ``cvdm train`` splits them; refuses a held-out set (errors.DataError)."""
    data_config = ModelConfig(
        name="care-data", scale=config.scale, norm_low=config.norm_low, norm_high=config.norm_high
    )
    return PairedData.from_folders(
        lr_dir, hr_dir, config=data_config, patch=patch, val_fraction=val_fraction, seed=seed
    )


@torch.no_grad()
def score_pairs(net: CareNet, pairs: Sequence[Pair]) -> dict[str, float]:
    """Mean PSNR (normalised units, range 2) of CARE and of bicubic on whole pairs."""
    if not pairs:
        return {}
    net.eval()
    care, bic = [], []
    for pair in pairs:
        pred = net.predict(pair.lowres[None].to(net.device))[0].cpu()
        y = pair.y.numpy()[0]
        care.append(metrics.psnr(pred.numpy()[0], y, data_range=VAL_DATA_RANGE))
        bic.append(metrics.psnr(pair.x.numpy()[0], y, data_range=VAL_DATA_RANGE))
    return {"val_psnr": float(np.mean(care)), "val_psnr_bicubic": float(np.mean(bic))}


def train_care(
    data: PairedData,
    *,
    config: CareConfig | None = None,
    steps: int = 10_000,
    batch_size: int = 8,
    lr: float = 4e-4,
    warmup: int = 200,
    weight_decay: float = 1e-4,
    grad_clip: float = 1.0,
    seed: int = 0,
    device: torch.device | str = "cpu",
    callback: CareStepCallback | None = None,
) -> CareNet:
    """Train a CARE net of ``config`` (default: the "small" preset) for ``steps`` steps.

    ``data.batch`` gives (x, y): x the bicubic condition (CARE's input), y the target.
    ``callback(step, record)`` after every step with {"step", "loss", "lr"}. Returns the
    net in eval mode; ``net.info["training"]`` records the run and ``net.info["validation"]``
    the mean PSNR of CARE and of bicubic on ``data.val`` (empty when nothing is held out).
    """
    config = config or CareConfig.preset("small")
    if steps < 1 or batch_size < 1 or not lr > 0:
        raise ConfigError(
            f"need steps >= 1, batch size >= 1 and a positive learning rate, got {steps}, "
            f"{batch_size}, {lr}"
        )
    if data.scale != config.scale:
        raise ConfigError(f"the pairs are {data.scale}x but the CARE config is {config.scale}x")
    hp = data.patch * data.scale
    if hp % config.pad_multiple:
        raise ConfigError(
            f"the HR patch {hp} is not a multiple of {config.pad_multiple} (2**depth)",
            path="--patch",
            hint=f"use an LR patch that is a multiple of {max(1, config.pad_multiple // 2)}",
        )
    device = torch.device(device)
    torch.manual_seed(seed)
    net = CareNet(config).to(device)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    schedule = TrainConfig(steps=steps, lr=lr, warmup=min(warmup, steps // 10))
    rng = np.random.default_rng(seed)
    started = time.time()
    loss_value = float("nan")
    for step in range(steps):
        rate = learning_rate(step, schedule)
        for group in opt.param_groups:
            group["lr"] = rate
        x, y = data.batch(rng, batch_size)
        x, y = x.to(device), y.to(device)
        loss = F.l1_loss(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        loss_value = float(loss.detach())
        if callback is not None:
            callback(step + 1, {"step": step + 1, "loss": loss_value, "lr": rate})
    seconds = time.time() - started
    training: dict[str, Any] = {
        "steps": steps,
        "batch_size": batch_size,
        "patch_lr": data.patch,
        "lr": lr,
        "warmup": schedule.warmup,
        "weight_decay": weight_decay,
        "loss": "mae",
        "final_loss": loss_value,
        "seed": seed,
        "seconds": round(seconds, 1),
        "device": str(device),
        "parameters": net.n_parameters(),
    }
    net.info = {
        "training": training,
        "data": data.describe(),
        "validation": score_pairs(net, data.val),
    }
    return net.eval()
