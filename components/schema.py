"""The one schema of kdrank's pair tables, and the checks every reader and writer shares.

Grades are stored on a 0-based scale (0 = irrelevant ... K-1 = perfect) so that gains, soft targets
and RMSE mean the same thing for every source; readers map their native scale onto it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

QUERY = "query"
QUERY_ID = "query_id"
PRODUCT_ID = "product_id"
PRODUCT_TEXT = "product_text"
GRADE = "grade"  # mean rating on the 0-based scale, float
GRADE_DIST = "grade_dist"  # per-grade rater distribution, list of K floats summing to 1
SOURCE = "source"  # where an unlabelled pair came from: labelled, bm25, biencoder, random, title
TEACHER_PROBS = "teacher_probs"  # list of K floats
TEACHER_SCORE = "teacher_score"  # expected grade under teacher_probs
STUDENT_SCORE = "student_score"

PAIR_COLUMNS = [QUERY_ID, QUERY, PRODUCT_ID, PRODUCT_TEXT]
LABELLED_COLUMNS = [*PAIR_COLUMNS, GRADE, GRADE_DIST]
UNLABELLED_COLUMNS = [*PAIR_COLUMNS, SOURCE]
TEACHER_LABEL_COLUMNS = [*UNLABELLED_COLUMNS, TEACHER_PROBS, TEACHER_SCORE]


class DataError(ValueError):
    """Bad input data; the message names the file, the row and the column."""

    def __init__(self, message: str, *, path: str | None = None, row: int | None = None,
                 column: str | None = None):
        where = ", ".join(
            part for part in (
                f"file {path}" if path else None,
                f"row {row}" if row is not None else None,
                f"column '{column}'" if column else None,
            ) if part
        )
        super().__init__(f"{where}: {message}" if where else message)
        self.path, self.row, self.column = path, row, column


@dataclass(frozen=True)
class GradeScale:
    """Native rating scale of a source, mapped linearly onto grades 0..num_grades-1."""

    low: float = 1.0
    high: float = 3.0
    num_grades: int = 3

    def to_grade(self, rating: np.ndarray | float) -> np.ndarray | float:
        return (np.asarray(rating, dtype=np.float64) - self.low) * (self.num_grades - 1) / (self.high - self.low)

    def to_rating(self, grade: np.ndarray | float) -> np.ndarray | float:
        return np.asarray(grade, dtype=np.float64) * (self.high - self.low) / (self.num_grades - 1) + self.low


def query_id(query: str) -> str:
    """Stable id of a query: the same text (case and spacing aside) gives the same id everywhere."""
    normal = " ".join(query.lower().split())
    return hashlib.sha1(normal.encode("utf-8")).hexdigest()[:16]


def soft_targets_from_mean(grade: np.ndarray, num_grades: int) -> np.ndarray:
    """Two-point soft target for a mean grade r between k and k+1: p(k) = k+1-r, p(k+1) = r-k."""
    grade = np.clip(np.asarray(grade, dtype=np.float64), 0, num_grades - 1)
    low = np.minimum(np.floor(grade).astype(np.int64), num_grades - 2)
    frac = grade - low
    out = np.zeros((len(grade), num_grades), dtype=np.float64)
    rows = np.arange(len(grade))
    out[rows, low] = 1.0 - frac
    out[rows, low + 1] += frac
    return out


def expected_grade(probs: np.ndarray) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    return probs @ np.arange(probs.shape[1], dtype=np.float64)


def dist_matrix(frame: pd.DataFrame, column: str = GRADE_DIST) -> np.ndarray:
    """A list-valued column as an (n, K) float matrix."""
    return np.stack([np.asarray(v, dtype=np.float64) for v in frame[column].to_numpy()]) if len(frame) else (
        np.zeros((0, 0))
    )


def num_grades_of(frame: pd.DataFrame) -> int:
    """K of a labelled (or teacher-labelled) table, read from its distribution column."""
    column = GRADE_DIST if GRADE_DIST in frame.columns else TEACHER_PROBS
    if not len(frame):
        raise DataError("empty table: cannot tell the number of grades")
    return len(frame[column].iloc[0])


def require_columns(frame: pd.DataFrame, columns: list[str], *, path: str | None = None) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(
            f"missing column(s) {missing}; found {list(frame.columns)}", path=path, column=missing[0]
        )


def blank_rows(values: pd.Series) -> np.ndarray:
    """Where a text column holds no text: null, empty or only spaces."""
    return (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()


def require_texts(frame: pd.DataFrame, columns: list[str], *, path: str | None = None) -> None:
    """DataError naming the first row (1-based) and column without text, and how many rows lack it."""
    for column in columns:
        blank = blank_rows(frame[column])
        if blank.any():
            raise DataError(f"{int(blank.sum())} row(s) have an empty {column}", path=path,
                            row=int(np.flatnonzero(blank)[0]) + 1, column=column)
