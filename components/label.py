"""Teacher labelling of unlabelled pairs in addressable, resumable shards (shard i of n).

A pair's shard depends only on its query id, so each shard holds whole queries and can be labelled
on its own machine. Input Parquet is streamed in chunks (memory stays flat as the set grows); each
shard is written whole under a temporary name and renamed, and a rerun skips finished shards. A shard
records which teacher labelled it (`LABEL_MARK` in its Parquet metadata: a digest of the teacher's
kdrank.json), so one that another teacher labelled is labelled again, not taken as finished.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from components import pairs, schema, storage
from components.checkpoint import META_FILE
from components.scoring import PairScorer

log = logging.getLogger(__name__)

SHARD_PATTERN = re.compile(r"^shard-(\d{5})-of-(\d{5})\.parquet$")
LABEL_COLUMNS = (schema.TEACHER_PROBS, schema.TEACHER_SCORE)
UNKNOWN_SOURCE = "unknown"
LABEL_MARK = b"kdrank_labels"  # Parquet metadata of a shard: {"teacher": teacher_mark(...)}


def shard_name(shard_index: int, num_shards: int) -> str:
    return f"shard-{shard_index:05d}-of-{num_shards:05d}.parquet"


def shard_of(query_ids: Sequence[str] | np.ndarray, num_shards: int) -> np.ndarray:
    """Shard index of each row, from a stable hash of its query id (the same on every machine and run)."""
    _check_num_shards(num_shards)
    ids = np.asarray(query_ids, dtype=object).astype(str)
    uniques, inverse = np.unique(ids, return_inverse=True)
    buckets = np.fromiter(
        (int.from_bytes(hashlib.blake2b(u.encode("utf-8"), digest_size=8).digest(), "big") % num_shards
         for u in uniques), dtype=np.int64, count=len(uniques))
    return buckets[inverse]


def label_shard(pairs_uri: str, teacher_dir: str, output_dir: str, shard_index: int, num_shards: int, *,
                batch_size: int = 64, chunk_rows: int = 50_000, device: str | None = None,
                progress: bool = True) -> str:
    """Label shard `shard_index` of `num_shards` and write `output_dir/shard-i-of-n.parquet`; skip if done."""
    _check_args(shard_index, num_shards, batch_size, chunk_rows)
    target = storage.join(output_dir, shard_name(shard_index, num_shards))
    _check_shard_count(output_dir, num_shards)
    mark = teacher_mark(teacher_dir)
    if _finished(target, mark):
        log.info("%s exists; skipping shard %d of %d", target, shard_index, num_shards)
        return target
    files = input_files(pairs_uri)
    scorer = load_teacher(teacher_dir, device)
    try:
        return _write_shard(scorer, files, target, shard_index, num_shards, batch_size=batch_size,
                            chunk_rows=chunk_rows, progress=progress, mark=mark)
    finally:
        scorer.close()


def label_pairs(pairs_uri: str, teacher_dir: str, output_dir: str, *, num_shards: int = 1,
                batch_size: int = 64, chunk_rows: int = 50_000, device: str | None = None,
                progress: bool = True) -> list[str]:
    """Label every unfinished shard of `pairs_uri` in turn, loading the teacher once; all shard paths."""
    _check_args(0, num_shards, batch_size, chunk_rows)
    _check_shard_count(output_dir, num_shards)
    targets = [storage.join(output_dir, shard_name(i, num_shards)) for i in range(num_shards)]
    mark = teacher_mark(teacher_dir)
    todo = [i for i, target in enumerate(targets) if not _finished(target, mark)]
    log.info("%d of %d shard(s) already labelled in %s", num_shards - len(todo), num_shards, output_dir)
    if not todo:
        return targets
    files = input_files(pairs_uri)
    scorer = load_teacher(teacher_dir, device)
    try:
        for i in todo:
            _write_shard(scorer, files, targets[i], i, num_shards, batch_size=batch_size,
                         chunk_rows=chunk_rows, progress=progress, mark=mark)
    finally:
        scorer.close()
    return targets


def write_labels(pairs_uri: str, probs: np.ndarray, output_dir: str) -> str:
    """Label `pairs_uri` with teacher probabilities made earlier (kept in an archive), without a teacher.

    `probs` holds one row per pair, in the pairs' order (files in name order); the output is the one
    shard `label_pairs(..., num_shards=1)` writes: the same columns and types, `teacher_score` the
    expected grade under `probs`, computed as the scorer computes it. Written whole or not at all.
    """
    files = input_files(pairs_uri)
    probs = np.asarray(probs, dtype=np.float64)
    input_schema, total = _footers(files)
    if probs.ndim != 2 or probs.shape[1] < 2 or len(probs) != total:
        raise ValueError(f"{pairs_uri} has {total} pairs; the probabilities given have shape {probs.shape}")
    out_schema = _output_schema(input_schema, files[0])
    columns = [c for c in input_schema.names if c not in LABEL_COLUMNS]
    target = storage.join(output_dir, shard_name(0, 1))
    grades = np.arange(probs.shape[1], dtype=np.float64)
    done = 0
    with storage.atomic_path(target) as tmp, pq.ParquetWriter(tmp, out_schema) as writer:
        for chunk in _chunks(files, 50_000, columns):
            part = probs[done:done + chunk.num_rows]
            if len(part) != chunk.num_rows:
                raise ValueError(f"{pairs_uri} has more pairs than the {len(probs)} probabilities given")
            writer.write_table(_labelled_table(chunk, part, part @ grades, out_schema))
            done += chunk.num_rows
        if done != len(probs):
            raise ValueError(f"{pairs_uri} has {done} pairs; {len(probs)} probabilities were given")
    return target


def teacher_mark(teacher_dir: str) -> str:
    """Which teacher labels: the sha256 of its checkpoint's kdrank.json (its data, recipe and base, and its
    training's own record, so a teacher trained again has another mark), read without loading the model."""
    meta = storage.join(teacher_dir, META_FILE)
    if not storage.exists(meta):
        raise FileNotFoundError(f"{teacher_dir} is not a kdrank checkpoint: {META_FILE} is missing")
    return hashlib.sha256(storage.read_bytes(meta)).hexdigest()


def labelled_by(shard_uri: str) -> str | None:
    """The teacher mark a shard was labelled with, or None for a shard from before shards recorded one.
    Reads the shard's footer only (on gs:// too)."""
    raw = (_footers([shard_uri])[0].metadata or {}).get(LABEL_MARK)
    return json.loads(raw)["teacher"] if raw else None


def _finished(target: str, mark: str) -> bool:
    """Whether shard `target` is done: it exists and this teacher (`mark`) labelled it. A shard of another
    teacher, or one that cannot be read, is labelled again (replaced whole); an unmarked one is kept."""
    if not storage.exists(target):
        return False
    try:
        found = labelled_by(target)
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        log.warning("%s cannot be read (%s); labelling it again", target, err)
        return False
    if found is not None and found != mark:
        log.warning("%s was labelled by another teacher (mark %s, this one %s); labelling it again",
                    target, found[:12], mark[:12])
        return False
    return True


def load_teacher(teacher_dir: str, device: str | None = None) -> PairScorer:
    scorer = PairScorer(teacher_dir, device=device)
    if scorer.role != pairs.TEACHER:
        scorer.close()
        raise ValueError(f"{teacher_dir} is a {scorer.role} checkpoint; labelling needs a teacher")
    return scorer


def input_files(pairs_uri: str) -> list[str]:
    """The Parquet file, or every visible *.parquet under a directory / gs:// prefix, in name order."""
    uri = str(pairs_uri)
    if uri.endswith(".parquet"):
        if not storage.exists(uri):
            raise FileNotFoundError(f"no such pairs file: {uri}")
        return [uri]
    if not storage.is_gcs(uri) and not Path(uri).is_dir():
        raise FileNotFoundError(f"no such pairs file or directory: {uri} (expected Parquet)")
    names = [n for n in storage.list_files(uri)
             if n.endswith(".parquet") and not any(part.startswith(".") for part in Path(n).parts)]
    if not names:
        raise FileNotFoundError(f"no Parquet files under {uri}")
    return [storage.join(uri, n) for n in names]


def _check_num_shards(num_shards: int) -> None:
    if not isinstance(num_shards, int | np.integer) or num_shards < 1:
        raise ValueError(f"num_shards must be an integer >= 1, got {num_shards!r}")


def _check_args(shard_index: int, num_shards: int, batch_size: int, chunk_rows: int) -> None:
    _check_num_shards(num_shards)
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index {shard_index} is out of range for {num_shards} shard(s) "
                         f"(expected 0..{num_shards - 1})")
    if batch_size < 1 or chunk_rows < 1:
        raise ValueError(f"batch_size and chunk_rows must be >= 1, got {batch_size} and {chunk_rows}")


def _check_shard_count(output_dir: str, num_shards: int) -> None:
    """Refuse to mix shards cut for another shard count in one directory (readers would double-count)."""
    if not storage.is_gcs(output_dir) and not Path(output_dir).is_dir():
        return
    counts = {int(m.group(2)) for n in storage.list_files(output_dir) if (m := SHARD_PATTERN.match(n))}
    other = counts - {num_shards}
    if other:
        raise ValueError(f"{output_dir} already holds shards cut for {sorted(other)} shard(s), not "
                         f"{num_shards}; use a new output directory or the same shard count")


def _output_schema(input_schema: pa.Schema, path: str) -> pa.Schema:
    """Teacher-label columns first (schema order), then any extra input columns, kept as they are."""
    missing = [c for c in schema.PAIR_COLUMNS if c not in input_schema.names]
    if missing:
        raise schema.DataError(f"missing column(s) {missing}; found {input_schema.names}", path=path,
                               column=missing[0])
    fields = [input_schema.field(c) for c in schema.PAIR_COLUMNS]
    fields.append(input_schema.field(schema.SOURCE) if schema.SOURCE in input_schema.names
                  else pa.field(schema.SOURCE, pa.string()))
    fields += [pa.field(schema.TEACHER_PROBS, pa.list_(pa.float64())),
               pa.field(schema.TEACHER_SCORE, pa.float64())]
    taken = {f.name for f in fields}
    fields += [f for f in input_schema if f.name not in taken]
    return pa.schema(fields)


def _chunks(files: list[str], chunk_rows: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    """Record batches of at most `chunk_rows` rows, file by file (gs:// files are staged on local disk)."""
    for uri in files:
        with storage.local_file(uri) as path:
            parquet = pq.ParquetFile(path)
            missing = [c for c in columns if c not in parquet.schema_arrow.names]
            if missing:
                raise schema.DataError(f"missing column(s) {missing} that the first file has", path=uri,
                                       column=missing[0])
            yield from parquet.iter_batches(batch_size=chunk_rows, columns=columns)


def _footers(files: list[str]) -> tuple[pa.Schema, int]:
    """The first file's schema and the rows of all `files`, from their Parquet footers alone (ranged reads on
    gs://), each read once."""
    first, total = None, 0
    for uri in files:
        with storage.open_binary(uri) as file:
            parquet = pq.ParquetFile(file)
            first = parquet.schema_arrow if first is None else first
            total += parquet.metadata.num_rows
    return first, total


def _write_shard(scorer: PairScorer, files: list[str], target: str, shard_index: int, num_shards: int, *,
                 batch_size: int, chunk_rows: int, progress: bool, mark: str) -> str:
    input_schema, total = _footers(files)
    out_schema = _output_schema(input_schema, files[0]).with_metadata({LABEL_MARK: json.dumps({"teacher": mark})})
    columns = [c for c in input_schema.names if c not in LABEL_COLUMNS]  # old labels are replaced
    labelled, start = 0, time.perf_counter()
    bar = tqdm(total=total, desc=f"labelling shard {shard_index + 1}/{num_shards}",
               unit="row", disable=not progress)
    with storage.atomic_path(target) as tmp, pq.ParquetWriter(tmp, out_schema) as writer:
        for chunk in _chunks(files, chunk_rows, columns):
            bar.update(chunk.num_rows)
            ids = chunk.column(schema.QUERY_ID).to_numpy(zero_copy_only=False)
            mine = shard_of(ids, num_shards) == shard_index
            if not mine.any():
                continue
            rows = chunk.filter(pa.array(mine))
            scores = scorer.score(rows.column(schema.QUERY).to_pylist(),
                                  rows.column(schema.PRODUCT_TEXT).to_pylist(),
                                  batch_size=batch_size, progress=progress, desc="teacher")
            writer.write_table(_labelled_table(rows, scores.probs, scores.score, out_schema))
            labelled += rows.num_rows
    bar.close()
    seconds = time.perf_counter() - start
    log.info("labelled %d pairs into %s in %.1fs (%.1f pairs/s)", labelled, target, seconds,
             labelled / max(seconds, 1e-9))
    return target


def _labelled_table(rows: pa.RecordBatch, probs: np.ndarray, score: np.ndarray,
                    out_schema: pa.Schema) -> pa.Table:
    n, k = probs.shape
    columns = {name: rows.column(name) for name in rows.schema.names}
    if schema.SOURCE not in columns:
        columns[schema.SOURCE] = pa.array([UNKNOWN_SOURCE] * n, pa.string())
    offsets = pa.array(np.arange(0, n * k + 1, k, dtype=np.int32))
    values = pa.array(probs.reshape(-1), pa.float64())
    columns[schema.TEACHER_PROBS] = pa.ListArray.from_arrays(offsets, values)
    columns[schema.TEACHER_SCORE] = pa.array(score, pa.float64())
    return pa.Table.from_arrays([columns[name] for name in out_schema.names], schema=out_schema)
