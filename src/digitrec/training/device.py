"""Where training runs and in what precision: the device, bfloat16 autocast, and the
one-line description of the machine that manifests and benchmarks record."""

from __future__ import annotations

import contextlib
import platform
from pathlib import Path

import torch

from digitrec.errors import InvalidRequest


def resolve_device(setting: str) -> torch.device:
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidRequest(f"device {setting!r} was asked for but CUDA is not available")
    return device


def autocast_dtype(device: torch.device, enabled: bool) -> torch.dtype | None:
    """bfloat16 autocast where the hardware does it natively, else full precision."""
    if not enabled:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    supported = getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
    return torch.bfloat16 if supported else None


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe_device(device: torch.device, dtype: torch.dtype | None) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{cpu_name()}, {torch.get_num_threads()} threads"
    precision = "bfloat16 autocast" if dtype is not None else "float32"
    return f"{device} ({name}; {precision})"


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager[object]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
