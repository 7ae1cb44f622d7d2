"""Reading a window of logged rerank requests and sampling it by query for teacher labelling.

A window is one JSONL or Parquet file, or a directory / gs:// prefix of them, written by the rerank
client's request log (serving/requestlog.py): one row per scored (query, product) pair with `request_id`,
`time`, `query`, `product_text`, optional `product_id`, `score` (raw student score), `model_name`
and `model_version`. Only query and product text are required; `score` is required unless the job
is given a student checkpoint to score the sample itself.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np
import pandas as pd

from components import schema, storage
from components.schema import DataError

log = logging.getLogger(__name__)

SCORE = "score"  # raw student score as served
REQUEST_ID = "request_id"
TIME = "time"
MODEL_NAME = "model_name"
MODEL_VERSION = "model_version"
REQUIRED_COLUMNS = [schema.QUERY, schema.PRODUCT_TEXT]
LOG_SUFFIXES = (".jsonl", ".parquet")


def read_window(uri: str) -> pd.DataFrame:
    """Every logged row under `uri` (a .jsonl/.parquet file, or a directory / prefix of them)."""
    from serving.requestlog import read_request_log  # the log's own reader, next to its writer

    uri = str(uri)
    if uri.endswith(LOG_SUFFIXES):
        if not storage.exists(uri):
            raise FileNotFoundError(f"no such window file: {uri}")
    elif not any(n.endswith(LOG_SUFFIXES) for n in _list(uri)):
        raise FileNotFoundError(f"no request-log files (*.jsonl, *.parquet) under {uri}")
    try:
        frame = read_request_log(uri)
    except ValueError as err:  # pandas: malformed JSON lines or Parquet
        raise DataError(f"unreadable request log: {err}", path=uri) from err
    if frame.empty:
        raise DataError("the window holds no logged requests (0 rows)", path=uri)
    log.info("read %d logged pairs from %s", len(frame), uri)
    return frame


def _list(uri: str) -> list[str]:
    try:
        return storage.list_files(uri)
    except FileNotFoundError:
        return []


def _product_key(frame: pd.DataFrame) -> pd.Series:
    """product_id where logged, else a hash of the product text (the same text is the same product)."""
    hashed = frame[schema.PRODUCT_TEXT].map(lambda t: "h:" + hashlib.sha1(str(t).encode()).hexdigest()[:16])
    if schema.PRODUCT_ID not in frame.columns:
        return hashed
    pid = frame[schema.PRODUCT_ID]
    missing = pid.isna() | (pid.astype(str).str.strip() == "")
    return pid.astype(str).where(~missing, hashed)


def validate_window(frame: pd.DataFrame, *, path: str, need_scores: bool) -> pd.DataFrame:
    """Check the columns and values the job relies on; return the window in kdrank's pair schema.

    Adds query_id and product_id, keeps the logged score (if any) as float. Raises DataError naming
    the file, the first bad row and the column.
    """
    schema.require_columns(frame, REQUIRED_COLUMNS + ([SCORE] if need_scores else []), path=path)
    out = frame.reset_index(drop=True).copy()
    for column in REQUIRED_COLUMNS:
        text = out[column].astype(str).str.strip()
        bad = out[column].isna() | (text == "")
        if bad.any():
            raise DataError(f"{int(bad.sum())} row(s) have an empty {column}", path=path,
                            row=int(np.flatnonzero(bad.to_numpy())[0]), column=column)
    if SCORE in out.columns:
        score = pd.to_numeric(out[SCORE], errors="coerce")
        bad = ~np.isfinite(score.to_numpy(dtype=np.float64))
        if bad.any():
            raise DataError(
                f"{int(bad.sum())} of {len(out)} logged scores are NaN, infinite or not numbers "
                "(the serving path produced invalid scores; fix it or drop those rows before monitoring)",
                path=path, row=int(np.flatnonzero(bad)[0]), column=SCORE)
        out[SCORE] = score.astype(np.float64)
    out[schema.QUERY] = out[schema.QUERY].astype(str)
    out[schema.PRODUCT_TEXT] = out[schema.PRODUCT_TEXT].astype(str)
    out[schema.QUERY_ID] = out[schema.QUERY].map(schema.query_id)
    out[schema.PRODUCT_ID] = _product_key(out)
    return out


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (query, product), the latest logged; `requests` counts how often it was served."""
    order = frame.sort_values(TIME, kind="stable") if TIME in frame.columns else frame
    key = [schema.QUERY_ID, schema.PRODUCT_ID]
    counts = order.groupby(key, sort=False).size().rename("requests")
    latest = order.drop_duplicates(key, keep="last").drop(columns=["requests"], errors="ignore")
    return latest.join(counts, on=key).reset_index(drop=True)


def sample_by_query(frame: pd.DataFrame, size: int, *, seed: int, max_pairs_per_query: int) -> pd.DataFrame:
    """About `size` pairs sampled by query: whole queries drawn in proportion to their traffic, each
    contributing at most `max_pairs_per_query` random pairs, so per-query rank correlations exist."""
    if size <= 0:
        raise ValueError(f"sample size must be positive, got {size}")
    rng = np.random.default_rng(seed)
    traffic = frame.groupby(schema.QUERY_ID, sort=False)["requests"].sum()
    # Efraimidis-Spirakis keys: sorting by u^(1/w) draws queries without replacement, weight w.
    keys = rng.random(len(traffic)) ** (1.0 / traffic.to_numpy(dtype=np.float64))
    query_order = traffic.index[np.argsort(-keys, kind="stable")]
    groups = frame.groupby(schema.QUERY_ID, sort=False).indices
    picked, total = [], 0
    for qid in query_order:
        rows = groups[qid]
        take = rng.permutation(rows)[:min(len(rows), max_pairs_per_query, size - total)]
        picked.append(take)
        total += len(take)
        if total >= size:
            break
    sample = frame.iloc[np.concatenate(picked)].reset_index(drop=True)
    log.info("sampled %d pairs from %d queries (window: %d pairs, %d queries)",
             len(sample), sample[schema.QUERY_ID].nunique(), len(frame), len(groups))
    return sample


def model_versions(frame: pd.DataFrame) -> dict[str, int]:
    """Rows per 'name:version' served in the window (empty when the log does not record it)."""
    if MODEL_VERSION not in frame.columns:
        return {}
    name = frame[MODEL_NAME].astype(str) if MODEL_NAME in frame.columns else pd.Series("", index=frame.index)
    label = name + ":" + frame[MODEL_VERSION].astype(str)
    return {str(k): int(v) for k, v in label.value_counts().items()}
