"""Teacher labels and student scores for monitored pairs, through the pipeline's own steps.

Teacher labels come from the labelling step (`components.label.label_pairs`), so monitoring sees
exactly what training saw; student scores and their grade-scale mapping from `PairScorer`.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

from components import data, pairs, schema
from components.checkpoint import apply_calibration
from components.schema import DataError

log = logging.getLogger(__name__)

KEY = [schema.QUERY_ID, schema.PRODUCT_ID]


def teacher_label(frame: pd.DataFrame, teacher_dir: str, *, batch_size: int = 64,
                  source: str = "logged") -> pd.DataFrame:
    """`frame` plus teacher_probs and teacher_score, labelled by the pipeline's labelling step."""
    from components.label import label_pairs  # the one labelling step, shared with training

    if frame.duplicated(KEY).any():
        raise ValueError("teacher_label needs one row per (query_id, product_id); deduplicate first")
    table = frame[schema.PAIR_COLUMNS].copy()
    table[schema.SOURCE] = frame[schema.SOURCE].fillna(source) if schema.SOURCE in frame.columns else source
    with tempfile.TemporaryDirectory(prefix="kdrank-monitor-") as tmp:
        pairs_uri = data.write_table(table, str(Path(tmp, "pairs.parquet")))
        shards = label_pairs(pairs_uri, teacher_dir, str(Path(tmp, "labels")), batch_size=batch_size)
        labels = pd.concat([data.read_table(s) for s in shards], ignore_index=True)
    labels = labels[[*KEY, schema.TEACHER_PROBS, schema.TEACHER_SCORE]].drop_duplicates(KEY)
    out = frame.drop(columns=[schema.TEACHER_PROBS, schema.TEACHER_SCORE], errors="ignore").merge(
        labels, on=KEY, how="left", validate="one_to_one")
    missing = out[schema.TEACHER_SCORE].isna()
    if missing.any():
        raise RuntimeError(f"the labelling step returned no teacher label for {int(missing.sum())} of "
                           f"{len(out)} pairs (teacher: {teacher_dir})")
    return out


def student_scores(frame: pd.DataFrame, student_dir: str, *, batch_size: int = 64) -> tuple[np.ndarray, dict]:
    """Raw student scores for `frame`'s pairs, and the student's calibration (raw -> grade scale)."""
    from components.scoring import PairScorer

    scorer = PairScorer(student_dir)
    try:
        if scorer.role != pairs.STUDENT:
            raise ValueError(f"{student_dir} is a {scorer.role} checkpoint, not a student")
        raw = scorer.score(frame[schema.QUERY].tolist(), frame[schema.PRODUCT_TEXT].tolist(),
                           batch_size=batch_size, desc="student scores").score
    finally:
        scorer.close()
    return raw, dict(scorer.info.calibration or {})


def student_calibration(student_dir: str) -> dict:
    """The raw -> grade-scale map stored in a student's kdrank.json (without loading the weights)."""
    from components import storage
    from components.checkpoint import META_FILE, read_info

    with tempfile.TemporaryDirectory(prefix="kdrank-") as tmp:
        if storage.is_gcs(student_dir):
            Path(tmp, META_FILE).write_bytes(storage.read_bytes(storage.join(student_dir, META_FILE)))
            info = read_info(tmp)
        else:
            info = read_info(student_dir)
    if info.role != pairs.STUDENT:
        raise ValueError(f"{student_dir} is a {info.role} checkpoint, not a student")
    return dict(info.calibration or {})


def to_grade_scale(raw: np.ndarray, calibration: dict | None) -> np.ndarray:
    """Raw student scores on the grade scale (components.checkpoint.apply_calibration), as a DataError."""
    try:
        return apply_calibration(raw, calibration)
    except ValueError as err:
        raise DataError(str(err)) from err
