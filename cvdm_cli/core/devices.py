"""Device, thread and memory policy: the one place that decides where and how big.

- which device (``pick_device``) and which precision (``pick_precision``, autocast dtypes);
- how many CPU threads torch uses (``set_torch_threads``, --threads; Dask workers read
  CVDM_TORCH_THREADS);
- how much work goes into one denoiser call (``auto_batch_size``) and the --tile default
  from the free device memory (``default_tile``).
"""

from __future__ import annotations

import os
import platform
from typing import Any

import torch

from cvdm_cli.core.model import CVDM
from cvdm_cli.core.tiling import CPU_TILE
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


def autocast_context(device: torch.device, precision: str):
    """torch.autocast for 'bf16'/'fp16', a no-op context for 'fp32'."""
    if precision not in AUTOCAST_DTYPES:
        raise ConfigError(f"unknown precision {precision!r}", hint="use fp32, bf16 or fp16")
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def auto_batch_size(pixels_per_item: int, device: torch.device) -> int:
    """Items per denoiser call: ~one 256x256 tile on a CPU (larger batches run slower per
    item there: measured 10.7 s vs 19.6 s for a 256x256 plane, batch 1 vs ~8 tiles), and
    ~8 Mpx on an accelerator."""
    budget = 2**16 if device.type == "cpu" else 2**23
    return max(1, budget // max(1, pixels_per_item))


# --- the tile default -------------------------------------------------------------------------


def activation_bytes_per_pixel(model: CVDM) -> float:
    """Rough peak bytes per output pixel of one denoiser item (inference, float32).

    The U-Net keeps (num_res_blocks + 1) skip tensors per level (width channels*mult at
    1/4^level of the pixels) plus ~6 working tensors of the widest full-resolution level.
    Self-attention goes through torch's scaled_dot_product_attention (memory-efficient
    kernels on CUDA), so it is not counted.
    """
    cfg = model.config
    skips = sum(
        (cfg.num_res_blocks + 1) * cfg.channels * m / 4**level
        for level, m in enumerate(cfg.channel_mults)
    )
    working = 6 * cfg.channels * cfg.channel_mults[0]
    return 4.0 * (skips + working)


def default_tile(
    model: CVDM, device: torch.device | str, *, items: int = 8, free_bytes: int | None = None
) -> int:
    """The --tile default, in output pixels: the one place this rule lives.

    CPU and MPS: 256 (CPU time, not memory, is the limit: smaller tiles add overlap work,
    larger ones gain nothing). CUDA: the largest of 1024, 768, 512, 384, 256 for which
    ``items`` tile-samples (one batch) fit in half of the free device memory
    (``torch.cuda.mem_get_info``) after the weights: tile^2 * items *
    :func:`activation_bytes_per_pixel` <= 0.5 * (free - 4 * parameters); else 128. The
    result is a multiple of the network's size divisor. Out-of-memory at run time still
    halves the batch, then the tile (see :func:`process_plane`).
    """
    device = torch.device(device)
    mult = model.pad_multiple
    if device.type != "cuda":
        return round_tile(CPU_TILE, mult)
    if free_bytes is None:
        free_bytes, _total = torch.cuda.mem_get_info(device)
    weights = 4 * sum(p.numel() for p in model.parameters())
    budget = 0.5 * (free_bytes - weights)
    per_px = activation_bytes_per_pixel(model) * max(1, items)
    for tile in (1024, 768, 512, 384, 256):
        if tile * tile * per_px <= budget:
            return round_tile(tile, mult)
    return round_tile(128, mult)


def round_tile(tile: int, mult: int) -> int:
    return max(mult, tile // mult * mult)


def set_torch_threads(threads: int | None) -> None:
    """--threads: cap torch's CPU threads in this process and in Dask workers it starts
    (they read CVDM_TORCH_THREADS). For nodes shared with other jobs: oversubscribed
    cores slow small convolutions down far more than proportionally. None: torch's choice."""
    if threads is None:
        return
    torch.set_num_threads(threads)
    os.environ["CVDM_TORCH_THREADS"] = str(threads)


def worker_threads(processes_on_host: int) -> int:
    """Torch threads for one of ``processes_on_host`` worker processes sharing this host's
    cores (its CPU affinity), capped by CVDM_TORCH_THREADS when set (``--threads``)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    threads = max(1, cores // max(1, processes_on_host))
    cap = os.environ.get("CVDM_TORCH_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        threads = min(threads, int(cap))
    return threads


def cuda_device_count() -> int:
    """Visible CUDA devices (0 without CUDA)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a host or device out-of-memory error (the message is all a CPU or MPS
    allocator gives)."""
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def free_device_memory(device: torch.device | None = None) -> None:
    """Return cached blocks of ``device`` to the driver (None: CUDA, if it was used)."""
    kind = "cuda" if device is None else device.type
    if kind == "cuda" and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    elif kind == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (so a timing measures it); no-op off CUDA."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def list_devices() -> list[dict[str, Any]]:
    """Every device torch can use here, as JSON-ready dicts (``cvdm info``)."""
    found: list[dict[str, Any]] = [
        {
            "device": "cpu",
            "name": platform.processor() or platform.machine(),
            "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            # AMX / AVX512-BF16: where --precision auto picks bf16 on the CPU
            "native_bf16": cpu_has_native_bf16(),
        }
    ]
    for i in range(cuda_device_count()):
        props = torch.cuda.get_device_properties(i)
        entry: dict[str, Any] = {
            "device": f"cuda:{i}",
            "name": props.name,
            "memory_gb": round(props.total_memory / 1e9, 2),
            "compute_capability": f"{props.major}.{props.minor}",
        }
        try:
            free, _total = torch.cuda.mem_get_info(i)
            entry["free_gb"] = round(free / 1e9, 2)
        except RuntimeError:  # pragma: no cover - a device in use elsewhere
            pass
        found.append(entry)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append({"device": "mps", "name": "Apple Metal"})
    return found


def torch_build() -> dict[str, Any]:
    """torch's version and what it was built with (``cvdm info``)."""
    return {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
    }
