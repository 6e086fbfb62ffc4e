"""devices: what --precision auto picks on the CPU, and the native-bf16 probe."""

from __future__ import annotations

import pytest
import torch

from cvdm_cli.core import devices
from cvdm_cli.errors import ConfigError
from cvdm_cli.training.trainer import resolve_precision

CPU = torch.device("cpu")


@pytest.mark.parametrize(("native", "expected"), [(True, "bf16"), (False, "fp32")])
def test_auto_precision_on_the_cpu_follows_native_bf16(monkeypatch, native, expected):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert devices.pick_precision("auto", CPU) == expected
    assert devices.pick_precision(" AUTO ", CPU) == expected
    # The trainer's --precision auto makes the same choice.
    assert resolve_precision("auto", CPU) == (torch.bfloat16 if native else None)


@pytest.mark.parametrize("native", [True, False])
def test_explicit_precisions_are_kept_whatever_the_cpu(monkeypatch, native):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    assert devices.pick_precision("fp32", CPU) == "fp32"
    assert devices.pick_precision("bf16", CPU) == "bf16"
    assert resolve_precision("fp32", CPU) is None
    with pytest.raises(ConfigError, match="fp16 is not supported on the CPU"):
        devices.pick_precision("fp16", CPU)
    with pytest.raises(ConfigError, match="unknown precision"):
        devices.pick_precision("fp8", CPU)


def test_native_bf16_probe_reads_the_cpu_flags(monkeypatch):
    for amx, avx in ((True, False), (False, True), (False, False)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx: v, raising=False)
        assert devices.cpu_has_native_bf16() is (amx or avx)


def test_native_bf16_probe_failing_or_missing_means_no(monkeypatch):
    def broken() -> bool:
        raise RuntimeError("cpuinfo unavailable")

    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", broken, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert devices.cpu_has_native_bf16() is False
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported", raising=False)
    assert devices.cpu_has_native_bf16() is False
    assert devices.pick_precision("auto", CPU) == "fp32"
