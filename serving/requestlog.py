"""Request log: one row per scored (query, product) pair, written as JSONL or Parquet, local or gs://.

This is what the monitoring job reads as a window (monitoring/window.py): columns `request_id`,
`time` (ISO 8601, UTC), `query`, `product_text`, `product_id` (when known), `score` (raw student
score), `rank`, `model_name`, `model_version`, `latency_ms`. A sink is a directory or gs:// prefix
(each flush adds one part file, written atomically) or a local .jsonl file (appended to).
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from components import storage

log = logging.getLogger(__name__)

FORMATS = ("jsonl", "parquet")
COLUMNS = ["request_id", "time", "query", "product_text", "product_id", "score", "rank", "model_name",
           "model_version", "latency_ms"]


class RequestLogger:
    """Buffers scored requests and writes them to `sink` every `flush_rows` rows and on close()."""

    def __init__(self, sink: str, *, fmt: str | None = None, flush_rows: int = 1000):
        sink = str(sink)
        suffix = sink.rsplit(".", 1)[-1] if "." in sink.rsplit("/", 1)[-1] else ""
        if suffix in FORMATS:
            if suffix == "parquet" or storage.is_gcs(sink):
                raise ValueError(f"request log {sink}: a single-file sink must be a local .jsonl file; "
                                 "for Parquet or gs:// give a directory/prefix (one part file per flush)")
            fmt = fmt or suffix
        self.fmt = fmt or "jsonl"
        if self.fmt not in FORMATS:
            raise ValueError(f"request log format must be one of {FORMATS}, got {self.fmt!r}")
        self.sink = sink
        self.append_file = bool(suffix)
        self.flush_rows = flush_rows
        self._rows: list[dict] = []
        self._lock = threading.Lock()
        self.files: list[str] = []

    def log(self, query: str, products: Sequence[str], scores: Sequence[float], *, model_name: str,
            model_version: str, product_ids: Sequence[str] | None = None, latency_ms: float | None = None,
            request_id: str | None = None) -> str:
        """Record one scored request (products in the order sent, scores aligned); returns its request id."""
        if len(products) != len(scores):
            raise ValueError(f"{len(products)} products but {len(scores)} scores")
        request_id = request_id or uuid.uuid4().hex
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))
        ranks = {i: r for r, i in enumerate(order, start=1)}
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
            self.flush()
        return request_id

    def flush(self) -> str | None:
        """Write the buffered rows; returns the file written (None when nothing was buffered)."""
        with self._lock:
            rows, self._rows = self._rows, []
            if not rows:
                return None
            target = self.sink if self.append_file else self._part_name()
            if self.append_file:
                Path(target).parent.mkdir(parents=True, exist_ok=True)
                with open(target, "a", encoding="utf-8") as handle:
                    handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
            else:
                self._write_part(target, rows)
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
    frame = pd.concat([f.dropna(axis=1, how="all") for f in frames], ignore_index=True)
    return frame.reindex(columns=columns)
