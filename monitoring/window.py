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
import math

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
REQUESTS = "requests"  # per (query, product): how often it was served in the window
QUERY_REQUESTS = "query_requests"  # per query (on each of its rows): how many requests asked it
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


def locate(frame: pd.DataFrame, position: int, path: str) -> tuple[str, int]:
    """(file, 1-based row in it) of the window's row `position`: the part file that holds it where the
    window was read from several (read_request_log's parts), else `path` itself."""
    from serving.requestlog import PARTS_ATTR

    start = 0
    for name, rows in frame.attrs.get(PARTS_ATTR) or []:
        if position < start + rows:
            return name, position - start + 1
        start += rows
    return path, position + 1


def validate_window(frame: pd.DataFrame, *, path: str, need_scores: bool) -> pd.DataFrame:
    """Check the columns and values the job relies on; return the window in kdrank's pair schema.

    Adds query_id and product_id, keeps the logged score (if any) as float. Raises DataError naming
    the file (the part file, in a folder of them), the first bad row in it (1-based: a JSONL file's line)
    and the column.
    """
    schema.require_columns(frame, REQUIRED_COLUMNS + ([SCORE] if need_scores else []), path=path)
    out = frame.reset_index(drop=True).copy()
    for column in REQUIRED_COLUMNS:
        bad = schema.blank_rows(out[column])
        if bad.any():
            file, row = locate(frame, int(np.flatnonzero(bad)[0]), path)
            raise DataError(f"{int(bad.sum())} row(s) of the window have an empty {column}", path=file, row=row,
                            column=column)
    if SCORE in out.columns:
        score = pd.to_numeric(out[SCORE], errors="coerce")
        bad = ~np.isfinite(score.to_numpy(dtype=np.float64))
        if bad.any():
            file, row = locate(frame, int(np.flatnonzero(bad)[0]), path)
            raise DataError(
                f"{int(bad.sum())} of the window's {len(out)} logged scores are NaN, infinite or not numbers "
                "(the serving path produced invalid scores; fix it or drop those rows before monitoring)",
                path=file, row=row, column=SCORE)
        out[SCORE] = score.astype(np.float64)
    out[schema.QUERY] = out[schema.QUERY].astype(str)
    out[schema.PRODUCT_TEXT] = out[schema.PRODUCT_TEXT].astype(str)
    out[schema.QUERY_ID] = out[schema.QUERY].map(schema.query_id)
    out[schema.PRODUCT_ID] = _product_key(out)
    if TIME in out.columns:
        out[TIME] = _parse_times(out[TIME], path=path)
    return out


def parse_times(values: pd.Series) -> pd.Series:
    """Logged times as UTC timestamps (NaT where missing or not ISO 8601).

    Strings (JSONL parts) and timestamps (Parquet parts) alike, each row on its own: with a guessed
    format pandas would read every row like the first and turn the others into NaT."""
    return pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")


def _parse_times(values: pd.Series, *, path: str) -> pd.Series:
    times = parse_times(values)
    bad = times.isna() & values.notna()
    if bad.any():
        log.warning("file %s, row %d, column '%s': %d logged time(s) are not ISO 8601 (e.g. %r); "
                    "those rows count as the oldest when deduplicating", path, int(np.flatnonzero(bad)[0]),
                    TIME, int(bad.sum()), values[bad].iloc[0])
    return times


def requests_per_query(frame: pd.DataFrame) -> pd.Series:
    """How many requests asked each query_id: its distinct request_id values; where the log has no
    request_id, its distinct times (the request logger stamps a request's rows with one time); with
    neither, the most often any one of its products was served (a request lists each product once)."""
    qid = frame[schema.QUERY_ID]
    for column in (REQUEST_ID, TIME):
        if column in frame.columns and frame[column].notna().any():
            counted = frame[column].groupby(qid, sort=False).nunique()
            break
    else:
        counted = frame.groupby([schema.QUERY_ID, schema.PRODUCT_ID], sort=False).size().groupby(level=0).max()
    # a query logged without ids (or times) on every row still counts as asked once
    return counted.clip(lower=1).astype(np.int64).rename(QUERY_REQUESTS)


def deduplicate(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (query, product), the latest logged (by parsed time; rows without one count as the
    oldest); `requests` counts how often the pair was served, `query_requests` how often its query."""
    if TIME in frame.columns:
        order = frame.assign(_time=parse_times(frame[TIME])).sort_values(
            "_time", kind="stable", na_position="first").drop(columns="_time")
    else:
        order = frame
    key = [schema.QUERY_ID, schema.PRODUCT_ID]
    counts = order.groupby(key, sort=False).size().rename(REQUESTS)
    latest = order.drop_duplicates(key, keep="last").drop(columns=[REQUESTS, QUERY_REQUESTS], errors="ignore")
    out = latest.join(counts, on=key).join(requests_per_query(frame), on=schema.QUERY_ID)
    return out.reset_index(drop=True)


def sample_by_query(frame: pd.DataFrame, size: int, *, seed: int, max_pairs_per_query: int) -> pd.DataFrame:
    """About `size` pairs sampled by query: whole queries drawn without replacement, in proportion to
    their traffic (`query_requests`) when the frame has it, else uniformly, each contributing at most
    `max_pairs_per_query` random pairs, so per-query rank correlations exist."""
    for name, value in (("sample size", size), ("max_pairs_per_query", max_pairs_per_query)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    rng = np.random.default_rng(seed)
    groups = frame.groupby(schema.QUERY_ID, sort=False).indices
    queries = pd.Index(list(groups))
    if QUERY_REQUESTS in frame.columns:
        weights = frame.groupby(schema.QUERY_ID, sort=False)[QUERY_REQUESTS].first().reindex(queries)
        weights = weights.to_numpy(dtype=np.float64)
    else:
        weights = np.ones(len(queries))
    # Efraimidis-Spirakis keys: sorting by u^(1/w) draws queries without replacement, weight w.
    keys = rng.random(len(queries)) ** (1.0 / weights)
    query_order = queries[np.argsort(-keys, kind="stable")]
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


def version_labels(values: pd.Series) -> pd.Series:
    """Logged model versions as text, the same for 1, 1.0 and '1' (a JSONL part with a missing version
    reads the others as floats); None where a row does not log one."""
    def text(value) -> str | None:
        if value is None or (isinstance(value, float) and not math.isfinite(value)):
            return None
        if isinstance(value, float) and value.is_integer():
            return str(int(value))
        return str(value).strip() or None

    return values.map(text).astype(object)


def model_versions(frame: pd.DataFrame) -> dict[str, int]:
    """Rows per 'name:version' served in the window, of the rows that log a version (empty when none do)."""
    if MODEL_VERSION not in frame.columns:
        return {}
    version = version_labels(frame[MODEL_VERSION])
    name = frame[MODEL_NAME].astype(str) if MODEL_NAME in frame.columns else pd.Series("", index=frame.index)
    label = (name + ":" + version.fillna(""))[version.notna()]
    return {str(k): int(v) for k, v in label.value_counts().items()}
