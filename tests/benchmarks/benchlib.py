"""What every benchmark script shares: where the real data lies, the machine line, writing a report."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import schema
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


def save_report(path: str | None, text: str) -> None:
    """Write a benchmark's Markdown section (unless `path` is None) and echo it."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    print(text)


def read_grade_scores(runs_dir: str | Path, run: str) -> pd.DataFrame:
    """A run's stored test scores (`eval/RUN/scores.parquet`) on the grade scale, as the column `score`:
    a teacher's expected grade, a student's validation-calibrated score. Baselines have none (refused)."""
    from components.evaluate import SCORE, SCORE_GRADE  # scipy: only for the scripts that read scores

    path = Path(runs_dir, "eval", run, "scores.parquet")
    if not path.is_file():
        raise FileNotFoundError(f"{run} has no stored test scores at {path}")
    frame = pd.read_parquet(path)
    keys = [schema.QUERY_ID, schema.PRODUCT_ID]
    schema.require_columns(frame, [*keys, schema.GRADE, SCORE_GRADE], path=str(path))
    if frame[SCORE_GRADE].isna().any():
        raise ValueError(f"{run} has no scores on the grade scale in {path} (a baseline?)")
    return frame[[*keys, schema.GRADE]].assign(**{SCORE: frame[SCORE_GRADE].to_numpy(np.float64)})
