"""What every benchmark script shares: where the real data lies, the machine line, writing a report."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from components.runtime import cpu_model

ROOT = Path(__file__).resolve().parents[2]
# The Home Depot sample lies beside the checkout (../shared/data/homedepot) and is never copied into it.
HOMEDEPOT = str(Path(os.environ.get("KDRANK_HOMEDEPOT", ROOT.parent / "shared" / "data" / "homedepot" / "train.csv")))


def machine() -> str:
    """CPU model, cores, torch threads and load: printed with every figure, since they decide it."""
    cpu = cpu_model()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return (f"{cpu}, {os.cpu_count()} cores visible{gpu}, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, load average {load:.1f} at start")


def save_report(path: str, text: str) -> None:
    """Write a benchmark's Markdown section and echo it."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)
    print(text)
