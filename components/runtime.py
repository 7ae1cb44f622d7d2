"""The one place that chooses where models run: GPU when present, CPU otherwise."""

from __future__ import annotations

import contextlib
import logging
import os
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def pick_device(prefer: str | None = None) -> torch.device:
    """`prefer` ('cpu', 'cuda', 'cuda:1') wins; else KDRANK_DEVICE; else CUDA when available."""
    choice = prefer or os.environ.get("KDRANK_DEVICE")
    if choice:
        device = torch.device(choice)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device '{choice}' requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


CPU_BF16 = "KDRANK_CPU_BF16"  # "1": bf16 autocast on the CPU too


def precision(device: torch.device) -> str:
    """How models run on `device`: "cuda-bf16" (bf16 autocast on CUDA), "cpu-bf16" (on the CPU with
    KDRANK_CPU_BF16=1), else "fp32". `autocast` follows it; caches of model outputs put it in their keys."""
    if device.type == "cuda":
        return "cuda-bf16"
    if device.type == "cpu" and os.environ.get(CPU_BF16, "") == "1":
        return "cpu-bf16"
    return "fp32"


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; on the CPU a no-op (fp32), unless KDRANK_CPU_BF16=1 asks for bf16 there too.

    fp32 is the CPU default: it is exact. bf16 pays where the CPU has bf16 instructions: with Intel AMX
    (`amx_bf16` in /proc/cpuinfo) bf16 autocast scored about 3x and trained about 1.5x as fast on 2 cores, with
    the same students; on an AMD EPYC with `avx512_bf16` and no AMX, 1.6-1.9x and 1.4-1.7x (docs/results.md,
    "CPU: Intel Xeon VM with AMX" and "CPU: AMD EPYC VM with bf16 instructions"). A CPU with neither was not
    measured."""
    if precision(device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def adamw(params, device: torch.device, **kwargs) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step on CUDA (the default foreach form launches several per
    parameter group); the same update either way."""
    return torch.optim.AdamW(params, fused=device.type == "cuda", **kwargs)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), for figures that name their machine."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"
