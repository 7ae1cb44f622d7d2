"""Request log: one row per scored (query, product) pair, written as JSONL or Parquet, local or gs://.

This is what the monitoring job reads as a window (monitoring/window.py): columns `request_id`,
`time` (ISO 8601, UTC), `query`, `product_text`, `product_id` (when known), `score` (raw student
score), `rank`, `model_name`, `model_version`, `latency_ms`. A sink is a directory or gs:// prefix
(each flush adds one part file, written atomically) or a local .jsonl file (appended to). A failed
write keeps the rows buffered and raises `RequestLogError` naming the sink.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from components import storage

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "parquet")
COLUMNS = ["request_id", "time", "query", "product_text", "product_id", "score", "rank", "model_name",
           "model_version", "latency_ms"]


PARTS_ATTR = "kdrank_parts"  # read_request_log's frame.attrs: [file, rows] of each part, in row order


class RequestLogError(OSError):
    """The sink could not be written; the rows stay buffered for the next flush."""


def rank_order(scores: Sequence[float]) -> np.ndarray:
    """Indices best first: descending score, ties in input order, NaN last (what the client returns)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


class RequestLogger:
    """Buffers scored requests and writes them to `sink` every `flush_rows` rows and on close()."""

    def __init__(self, sink: str, *, fmt: str | None = None, flush_rows: int = 1000):
        sink = str(sink)
        # only a name ending in .jsonl is one file; anything else (logs.v2, gs://b/request.logs) is a
        # directory or prefix, so a gs:// sink is never mistaken for a local path
        name = sink.rstrip("/").rsplit("/", 1)[-1]
        suffix = name.rsplit(".", 1)[-1] if "." in name else ""
        if suffix in FORMATS:
            if suffix == "parquet" or storage.is_gcs(sink):
                raise ValueError(f"request log {sink}: a single-file sink must be a local .jsonl file; "
                                 "for Parquet or gs:// give a directory/prefix (one part file per flush)")
            if fmt not in (None, "jsonl"):
                raise ValueError(f"request log {sink}: a .jsonl file holds JSON lines, not {fmt!r}; "
                                 f"for {fmt} give a directory/prefix")
        self.fmt = fmt or "jsonl"
        if self.fmt not in FORMATS:
            raise ValueError(f"request log format must be one of {FORMATS}, got {self.fmt!r}")
        self.sink = sink
        self.append_file = suffix == "jsonl"
        self.flush_rows = flush_rows
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self.files: list[str] = []

    def log(self, query: str, products: Sequence[str], scores: Sequence[float], *, model_name: str,
            model_version: str, product_ids: Sequence[str] | None = None, latency_ms: float | None = None,
            request_id: str | None = None) -> str:
        """Record one scored request (products in the order sent, scores aligned); returns its request id.

        A flush this triggers that fails is logged as a warning, not raised: the rows stay buffered and
        the next flush() or close() writes them or raises.
        """
        if len(products) != len(scores):
            raise ValueError(f"{len(products)} products but {len(scores)} scores")
        if product_ids is not None and len(product_ids) != len(products):
            raise ValueError(f"{len(products)} products but {len(product_ids)} product_ids")
        request_id = request_id or uuid.uuid4().hex
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        ranks = {int(i): r for r, i in enumerate(rank_order(scores), start=1)}
        rows = [{
            "request_id": request_id, "time": now, "query": query, "product_text": text,
            "product_id": None if product_ids is None else str(product_ids[i]), "score": float(scores[i]),
            "rank": ranks[i], "model_name": model_name, "model_version": str(model_version),
            "latency_ms": None if latency_ms is None else round(float(latency_ms), 3),
        } for i, text in enumerate(products)]
        with self._lock:
            self._rows.extend(rows)
            full = len(self._rows) >= self.flush_rows
        if full:
            try:
                self.flush()
            except RequestLogError as err:  # the caller's request succeeded; close() or flush() will raise
                log.warning("%s; retrying at the next flush", err)
        return request_id

    def flush(self) -> str | None:
        """Write the buffered rows; returns the file written (None when nothing was buffered).

        Raises `RequestLogError` when the sink cannot be written; the rows stay buffered then.
        """
        with self._lock:
            rows = self._rows
            if not rows:
                return None
            target = self.sink if self.append_file else self._part_name()
            try:
                if self.append_file:
                    Path(target).parent.mkdir(parents=True, exist_ok=True)
                    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                    with open(target, "a", encoding="utf-8") as handle:
                        handle.write(text)
                else:
                    self._write_part(target, rows)
            except Exception as err:
                raise RequestLogError(f"request log {self.sink}: could not write {len(rows)} rows "
                                      f"({type(err).__name__}: {err}); they stay buffered") from err
            self._rows = []
            self.files.append(target)
        log.debug("request log: %d rows -> %s", len(rows), target)
        return target

    def _part_name(self) -> str:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        return storage.join(self.sink, f"requests-{stamp}-{uuid.uuid4().hex[:8]}.{self.fmt}")

    def _write_part(self, target: str, rows: list[dict]) -> None:
        with storage.atomic_path(target) as tmp:
            if self.fmt == "jsonl":
                Path(tmp).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                     encoding="utf-8")
            else:
                import pandas as pd

                pd.DataFrame(rows, columns=COLUMNS).to_parquet(tmp, index=False)

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> RequestLogger:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_request_log(uri: str):
    """Every logged row under `uri` (a .jsonl/.parquet file or a directory / gs:// prefix) as a DataFrame."""
    import pandas as pd

    uri = str(uri)
    files = [uri] if uri.endswith((".jsonl", ".parquet")) else [
        storage.join(uri, n) for n in storage.list_files(uri)
        if n.endswith((".jsonl", ".parquet")) and not n.rsplit("/", 1)[-1].startswith(".")]
    frames = []
    for name in files:
        with storage.local_file(name) as local:
            frames.append(pd.read_parquet(local) if name.endswith(".parquet")
                          else pd.read_json(local, lines=True, dtype=False))
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    columns = list(dict.fromkeys(c for f in frames for c in f.columns))
    # all-null columns (say, no product ids in one part) would decide dtypes in concat; leave them out
    frame = pd.concat([f.dropna(axis=1, how="all") for f in frames], ignore_index=True).reindex(columns=columns)
    frame.attrs[PARTS_ATTR] = [[name, len(f)] for name, f in zip(files, frames, strict=True)]
    return frame
