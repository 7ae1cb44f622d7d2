"""Input features and agreement columns shared by the reference set and every monitored window.

One definition for both sides, so a drift test compares like with like. Tokens are lower-cased
word characters (model-independent, so the features survive a tokenizer change).
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from components import schema

QUERY_TOKENS = "query_tokens"  # number of tokens in the query
PRODUCT_TOKENS = "product_tokens"  # number of tokens in the product text
QUERY_TOKEN_OVERLAP = "query_token_overlap"  # share of the query's distinct tokens found in the product text
NUMERIC_FEATURES = (QUERY_TOKENS, PRODUCT_TOKENS, QUERY_TOKEN_OVERLAP)

STUDENT_GRADE = "student_grade"  # student score mapped onto the grade scale
TEACHER_GRADE_LABEL = "teacher_grade_label"  # rounded teacher expected grade (an int class)
STUDENT_GRADE_LABEL = "student_grade_label"  # rounded student grade, clipped to 0..K-1
QUERY_SPEARMAN = "query_spearman"  # per-query rank correlation, on the query's first row only (else NaN)

_TOKEN = re.compile(r"\w+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(str(text).lower())


def add_input_features(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of `frame` with query_tokens, product_tokens and query_token_overlap."""
    out = frame.copy()
    query_tokens = [tokens(q) for q in out[schema.QUERY]]
    product_tokens = [tokens(p) for p in out[schema.PRODUCT_TEXT]]
    out[QUERY_TOKENS] = np.array([len(q) for q in query_tokens], dtype=np.int64)
    out[PRODUCT_TOKENS] = np.array([len(p) for p in product_tokens], dtype=np.int64)
    out[QUERY_TOKEN_OVERLAP] = np.array(
        [len(set(q) & set(p)) / len(set(q)) if q else 0.0
         for q, p in zip(query_tokens, product_tokens, strict=True)], dtype=np.float64)
    return out


def implied_grade(grade_scale_score: np.ndarray, num_grades: int) -> np.ndarray:
    """The grade a score implies: rounded and clipped to 0..K-1 (the same rule for teacher and student)."""
    rounded = np.rint(np.asarray(grade_scale_score, dtype=np.float64))
    return np.clip(rounded, 0, num_grades - 1).astype(np.int64)


def per_query_spearman(frame: pd.DataFrame, *, min_pairs: int) -> pd.Series:
    """Spearman(student, teacher) per query, placed on each query's first row (NaN on the others).

    The mean of the column is then the mean over queries, whatever their sizes. Queries with fewer
    than `min_pairs` pairs, or where either side is constant (no ranking to compare), stay NaN.
    """
    qid = frame[schema.QUERY_ID]
    ranks = pd.DataFrame({
        "student": frame.groupby(qid, sort=False)[STUDENT_GRADE].rank(),
        "teacher": frame.groupby(qid, sort=False)[schema.TEACHER_SCORE].rank(),
    })
    centred = ranks - ranks.groupby(qid, sort=False).transform("mean")
    by_query = pd.DataFrame({
        "cov": centred["student"] * centred["teacher"],
        "var_s": centred["student"] ** 2,
        "var_t": centred["teacher"] ** 2,
    }).groupby(qid, sort=False).sum()
    size = qid.value_counts()
    denom = np.sqrt(by_query["var_s"] * by_query["var_t"])
    ok = (denom > 1e-12) & (size.reindex(by_query.index) >= max(2, min_pairs))
    corr = (by_query["cov"] / denom.where(ok)).where(ok)
    first = ~qid.duplicated()
    out = pd.Series(np.nan, index=frame.index, dtype=np.float64)
    out[first] = qid[first].map(corr).to_numpy(dtype=np.float64)
    return out


def add_agreement_columns(frame: pd.DataFrame, num_grades: int, *, min_pairs_per_query: int) -> pd.DataFrame:
    """A copy with both implied grades and the per-query rank correlation (needs both grade-scale scores)."""
    out = frame.copy()
    out[TEACHER_GRADE_LABEL] = implied_grade(out[schema.TEACHER_SCORE].to_numpy(), num_grades)
    out[STUDENT_GRADE_LABEL] = implied_grade(out[STUDENT_GRADE].to_numpy(), num_grades)
    out[QUERY_SPEARMAN] = per_query_spearman(out, min_pairs=min_pairs_per_query)
    return out
