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
        where = "device" if prefer else "$KDRANK_DEVICE"
        try:
            device = torch.device(choice)
        except RuntimeError as err:
            raise ValueError(f"{where} '{choice}' is not a torch device (cpu, cuda, cuda:1, mps)") from err
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"{where} '{choice}' requested but CUDA is not available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


CPU_BF16 = "KDRANK_CPU_BF16"  # "1": bf16 autocast on the CPU too


def precision(device: torch.device) -> str:
    """How models run on `device`: "cuda-bf16" (bf16 autocast on a GPU with native bf16), "cpu-bf16" (on the
    CPU with KDRANK_CPU_BF16=1), else "fp32" (on a GPU without native bf16 too). `autocast` follows it;
    caches of model outputs put it in their keys."""
    if device.type == "cuda":
        return "cuda-bf16" if _native_cuda_bf16(device) else "fp32"
    if device.type == "cpu" and os.environ.get(CPU_BF16, "") == "1":
        _warn_without_bf16_instructions()
        return "cpu-bf16"
    return "fp32"


BF16_CAPABILITY = (8, 0)  # CUDA compute capability with bf16 tensor cores: A100, A10, L4, H100 and later


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    """The compute capability of CUDA `device`, or None where no GPU can be asked (none here)."""
    if not torch.cuda.is_available():
        return None
    return tuple(torch.cuda.get_device_capability(device))


_warned_cuda: set[str] = set()


def _native_cuda_bf16(device: torch.device) -> bool:
    """Whether bf16 autocast pays on CUDA `device`. A GPU before compute capability 8.0 (T4, V100) has no bf16
    tensor cores: torch emulates bf16 there, far slower than fp32 and no more exact, so it runs in fp32 (said
    once per GPU). Without a GPU to ask, the name a current GPU gets: "cuda-bf16"."""
    capability = cuda_capability(device)
    if capability is None or capability >= BF16_CAPABILITY:
        return True
    name = str(device)
    if name not in _warned_cuda:
        _warned_cuda.add(name)
        log.warning("%s (%s, compute capability %d.%d) has no native bf16 (needs %d.%d): models run there in fp32, "
                    "not bf16 autocast", name, torch.cuda.get_device_name(device), *capability, *BF16_CAPABILITY)
    return False


BF16_INSTRUCTIONS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of a CPU that computes in bf16


def _cpuinfo(key: str) -> str | None:
    """The value of the first /proc/cpuinfo line named `key` (Linux), or None where there is none."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    return None


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (Linux); empty where they cannot be read."""
    return frozenset((_cpuinfo("flags") or "").split())


_warned_bf16 = False


def _warn_without_bf16_instructions() -> None:
    """Say once per process that KDRANK_CPU_BF16=1 is slow on a CPU with no bf16 instructions (flags known).
    `precision` runs on every autocast, so /proc/cpuinfo is read only until this has been decided."""
    global _warned_bf16
    if _warned_bf16:
        return
    _warned_bf16 = True
    flags = cpu_flags()
    if not flags or any(f in flags for f in BF16_INSTRUCTIONS):
        return
    log.warning("%s=1 asks for bf16 on a CPU without bf16 instructions (no %s in /proc/cpuinfo): there it is "
                "emulated, and on a 2-core AMD EPYC without them scoring ran 5-9x and training about 20x "
                "slower than in fp32 (docs/results.md); unset %s unless bf16 results are the point",
                CPU_BF16, " or ".join(BF16_INSTRUCTIONS), CPU_BF16)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on a GPU with native bf16 (compute capability 8.0 or later; fp32 on older ones); on the
    CPU a no-op (fp32), unless KDRANK_CPU_BF16=1 asks for bf16 there too.

    fp32 is the CPU default: it is exact. bf16 pays where the CPU has bf16 instructions: with Intel AMX
    (`amx_bf16` in /proc/cpuinfo) bf16 autocast scored about 3x and trained about 1.5x as fast on 2 cores, with
    the same students; on an AMD EPYC with `avx512_bf16` and no AMX, 1.6-1.9x and 1.4-1.7x. On a CPU with
    neither it is emulated and far slower (scoring 5-9x, training about 20x slower than fp32 on a 2-core
    AMD EPYC), and `precision` warns (docs/results.md, "Performance figures")."""
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
    return _cpuinfo("model name") or platform.processor() or "unknown CPU"
