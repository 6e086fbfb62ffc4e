"""Choosing the torch device and numeric precision from user options."""

from __future__ import annotations

import torch

from cvdm_cli.errors import ConfigError, DeviceError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# torch.autocast dtype of each resolved precision (None: float32, no autocast)
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


def pick_device(spec: str = "auto") -> torch.device:
    """'auto' (CUDA, then MPS, then CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'."""
    spec = spec.strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(spec)
    except RuntimeError:
        raise ConfigError(
            f"unknown device {spec!r}", path="--device", hint="use auto, cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(
                "CUDA was requested but no CUDA device is available",
                path="--device",
                hint="use --device cpu (or auto)",
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(
                f"there is no {spec} (found {torch.cuda.device_count()} GPUs)",
                path="--device",
                hint="use cuda:0 .. cuda:N-1",
            )
    elif device.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise DeviceError(
                "MPS was requested but is not available",
                path="--device",
                hint="use --device cpu (or auto)",
            )
    elif device.type != "cpu":
        raise ConfigError(
            f"unsupported device {spec!r}",
            path="--device",
            hint="use auto, cpu, cuda, cuda:N or mps",
        )
    return device


def cpu_has_native_bf16() -> bool:
    """True when this CPU multiplies bf16 in hardware (Intel AMX tiles or AVX512-BF16).

    There oneDNN runs bf16 convolutions faster than fp32 (docs/performance.md); on other
    CPUs bf16 is emulated and slower, so ``auto`` keeps fp32 there. The checks are private
    torch helpers, so any failure reads as "no".
    """
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    try:
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    except Exception:  # a missing or failing probe means "not native"
        return False


def pick_precision(spec: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on CUDA devices that support it and on CPUs with native bf16
    (``cpu_has_native_bf16``), else 'fp32'."""
    spec = spec.strip().lower()
    if spec not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {spec!r}", path="--precision", hint="use auto, fp32, bf16 or fp16"
        )
    if spec == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        if device.type == "cpu" and cpu_has_native_bf16():
            return "bf16"
        return "fp32"
    if spec == "fp16" and device.type == "cpu":
        raise ConfigError(
            "fp16 is not supported on the CPU",
            path="--precision",
            hint="use fp32 or bf16 on the CPU",
        )
    return spec
