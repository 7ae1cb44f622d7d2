"""Reading, validating and splitting labelled pairs from CSV, Parquet or JSONL, local or gs://.

Every source is mapped onto kdrank's schema (components/schema.py) by a `ColumnMapping`; presets
cover kdrank's own tables, the Home Depot Kaggle file and ESCI-style E/S/C/I labels. Bad input
raises `DataError` naming the file, row and column; outputs are written whole or not at all.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from components import schema, storage
from components.schema import DataError, GradeScale

log = logging.getLogger(__name__)

FORMATS = ("csv", "parquet", "jsonl", "homedepot", "esci")


@dataclass(frozen=True)
class ColumnMapping:
    """Where a source keeps each field, and how its grades map onto the 0-based scale."""

    query: str = schema.QUERY
    product_id: str = schema.PRODUCT_ID
    product_text: str = schema.PRODUCT_TEXT
    grade: str = schema.GRADE  # a mean rating on `scale`, or a label looked up in `grade_map`
    scale: GradeScale = field(default_factory=lambda: GradeScale(0.0, 2.0, 3))
    grade_map: dict[str, float] | None = None  # label -> rating on `scale`, e.g. ESCI E/S/C/I
    grade_dist: str | None = None  # optional column holding a per-grade rater distribution
    encoding: str = "utf-8"


HOMEDEPOT = ColumnMapping(
    query="search_term", product_id="product_uid", product_text="product_title", grade="relevance",
    scale=GradeScale(1.0, 3.0, 3), encoding="latin-1",
)
ESCI = ColumnMapping(
    query="query", product_id="product_id", product_text="product_title", grade="esci_label",
    scale=GradeScale(0.0, 3.0, 4), grade_map={"E": 3.0, "S": 2.0, "C": 1.0, "I": 0.0},
)
KDRANK = ColumnMapping(grade_dist=schema.GRADE_DIST)
HOMEDEPOT_COLUMNS = {HOMEDEPOT.query, HOMEDEPOT.product_text, HOMEDEPOT.grade}  # a CSV with these is one
PRESETS = {"homedepot": HOMEDEPOT, "esci": ESCI}


def infer_format(uri: str) -> str:
    name = str(uri).lower().rstrip("/").removesuffix(".gz")  # CSV and JSONL may come gzip-compressed
    for suffix, fmt in ((".csv", "csv"), (".parquet", "parquet"), (".jsonl", "jsonl"), (".json", "jsonl")):
        if name.endswith(suffix):
            return fmt
    if not Path(name).suffix:  # a directory of Parquet shards
        return "parquet"
    raise DataError(f"cannot tell the format from the name; pass one of {FORMATS}", path=str(uri))


def _decode(raw: bytes, encoding: str, path: str) -> str:
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start)  # 0-based line; the header is line 0
        raise DataError(
            f"bytes {raw[err.start:err.end]!r} at offset {err.start} are not valid {encoding} "
            f"(line {line + 1} of the file); a Home Depot file is latin-1: pass --format homedepot, and from "
            f"Python any other encoding with a ColumnMapping(encoding=...)",
            path=path, row=line,
        ) from err


def _is_homedepot_header(raw: bytes) -> bool:
    """Whether a CSV's first line names the Home Depot columns (read as latin-1, which decodes any byte)."""
    header = next(csv.reader([raw.split(b"\n", 1)[0].decode("latin-1").lstrip("\ufeff")]), [])
    return {name.strip() for name in header} >= HOMEDEPOT_COLUMNS


def _read_json_records(text: str, path: str) -> pd.DataFrame:
    """JSONL (one object per line) or a JSON array of objects; values stay as parsed (ids keep their digits)."""
    if text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except ValueError as err:
            raise DataError(f"unreadable JSON array: {err}", path=path) from err
        where = "item {}"
    else:
        records, where = [], "line {}"
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except ValueError as err:
                raise DataError(f"unreadable JSON: {err}", path=path, row=number) from err
    for position, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{where.format(position)} is a {type(record).__name__}, not an object with named fields",
                            path=path, row=position)
    # object columns: a null id beside whole-number ids would otherwise turn every id into a float ('100001.0')
    return pd.DataFrame(records, dtype=object) if records else pd.DataFrame()


def read_raw(uri: str, fmt: str | None = None, encoding: str | None = "utf-8") -> pd.DataFrame:
    """A source table as read, before any mapping; text columns stay strings.

    `encoding=None` lets a CSV's header decide: latin-1 for the Home Depot columns, else utf-8.
    """
    fmt = fmt or infer_format(uri)
    if fmt in PRESETS:
        fmt = "csv" if fmt == "homedepot" else infer_format(uri)
    if fmt == "parquet":
        return read_table(uri)
    if fmt not in ("csv", "jsonl"):
        raise DataError(f"unknown format '{fmt}'; expected one of {FORMATS}", path=uri)
    raw = storage.read_bytes(uri)
    if str(uri).lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise DataError(f"not a readable gzip file: {err}", path=uri) from err
    if encoding is None:
        encoding = HOMEDEPOT.encoding if fmt == "csv" and _is_homedepot_header(raw) else "utf-8"
    text = _decode(raw, encoding, uri)
    if fmt == "jsonl":
        return _read_json_records(text, uri)
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (ValueError, pd.errors.ParserError) as err:
        raise DataError(f"unreadable {fmt}: {err}", path=uri) from err


def _parquet_shards(uri: str) -> list[str] | None:
    """Every *.parquet under a directory or gs:// prefix, in name order (None: `uri` is one file).

    Hidden names are left out, folders too: a writer's temporary folder is not a shard."""
    if storage.is_gcs(uri):
        if uri.endswith(".parquet"):
            return None
        names = [n for n in storage.list_files(uri)
                 if n.endswith(".parquet") and not any(part.startswith(".") for part in n.split("/"))]
        shards = [storage.join(uri, n) for n in names]
    else:
        path = Path(uri)
        if not path.is_dir():
            if not path.exists():
                raise FileNotFoundError(f"no such file: {uri}")
            return None
        shards = [str(p) for p in sorted(path.rglob("*.parquet"))
                  if not any(part.startswith(".") for part in p.relative_to(path).parts)]
    if not shards:
        raise FileNotFoundError(f"no Parquet files under {uri}")
    return shards


def read_table(uri: str) -> pd.DataFrame:
    """One Parquet file, or every *.parquet under a directory or gs:// prefix (shards, in name order)."""
    uri = str(uri)
    shards = _parquet_shards(uri)
    if shards is None:
        return pd.read_parquet(io.BytesIO(storage.read_bytes(uri)) if storage.is_gcs(uri) else uri)
    if storage.is_gcs(uri):
        return pd.concat([pd.read_parquet(io.BytesIO(storage.read_bytes(s))) for s in shards], ignore_index=True)
    return pd.concat([pd.read_parquet(s) for s in shards], ignore_index=True)


def source_digest(uri: str) -> str:
    """sha256 of a source's bytes: one file, or every Parquet shard of a directory or prefix with its name."""
    uri = str(uri)
    folder = not Path(uri.rstrip("/")).suffix if storage.is_gcs(uri) else Path(uri).is_dir()
    digest = hashlib.sha256()
    for shard in _parquet_shards(uri) if folder else [uri]:
        digest.update(shard.removeprefix(uri).encode() + b"\0")
        digest.update(storage.read_bytes(shard))
    return digest.hexdigest()


def write_table(frame: pd.DataFrame, uri: str) -> str:
    """Write a Parquet file whole (temporary name, then rename / single upload)."""
    with storage.atomic_path(uri) as tmp:
        frame.to_parquet(tmp, index=False)
    return str(uri)


def _row_label(position: int, fmt: str) -> int:
    """1-based data row; for CSV the file line is this + 1 (the header)."""
    return position + 1


def normalize(raw: pd.DataFrame, mapping: ColumnMapping, *, path: str, fmt: str = "csv",
              on_invalid: str = "error") -> pd.DataFrame:
    """Map a source table onto the labelled-pairs schema, validating every row.

    `on_invalid='error'` raises on the first bad row; 'drop' drops bad rows and logs how many.
    """
    if on_invalid not in ("error", "drop"):
        raise ValueError(f"on_invalid must be 'error' or 'drop', got '{on_invalid}'")
    columns = [mapping.query, mapping.product_id, mapping.product_text, mapping.grade]
    if mapping.grade_dist and mapping.grade_dist in raw.columns:
        columns.append(mapping.grade_dist)
    schema.require_columns(raw, [c for c in columns if c != mapping.grade_dist], path=path)
    if raw.empty:
        raise DataError("no rows", path=path)

    problems: list[tuple[int, str, str]] = []  # (row position, column, message)
    query = raw[mapping.query].astype(str).map(lambda s: " ".join(s.split()))
    text = raw[mapping.product_text].astype(str).map(lambda s: " ".join(s.split()))
    pid = raw[mapping.product_id].astype(str).str.strip()
    for col, values in ((mapping.query, query), (mapping.product_text, text), (mapping.product_id, pid)):
        null = raw[col].isna().to_numpy()
        for pos in np.flatnonzero(null | (values.to_numpy() == "") | (values.to_numpy() == "nan") & null):
            problems.append((int(pos), col, "empty value"))
        if raw[col].dtype == object:  # JSON may hold a list or an object where a text belongs
            for pos in np.flatnonzero(raw[col].map(lambda v: isinstance(v, list | dict)).to_numpy()):
                problems.append((int(pos), col, f"a {type(raw[col].iat[pos]).__name__}, not a text value"))

    grade_raw = raw[mapping.grade]
    if mapping.grade_map is not None:
        rating = grade_raw.astype(str).str.strip().map(mapping.grade_map)
        for pos in np.flatnonzero(rating.isna().to_numpy()):
            problems.append((int(pos), mapping.grade,
                             f"unknown label {grade_raw.iloc[pos]!r}; expected one of {sorted(mapping.grade_map)}"))
    else:
        rating = pd.to_numeric(grade_raw, errors="coerce")
        for pos in np.flatnonzero(rating.isna().to_numpy()):
            problems.append((int(pos), mapping.grade, f"not a number: {grade_raw.iloc[pos]!r}"))
    rating = rating.astype(float)
    scale = mapping.scale
    out_of_range = (rating < scale.low - 1e-9) | (rating > scale.high + 1e-9)
    for pos in np.flatnonzero(out_of_range.to_numpy()):
        problems.append((int(pos), mapping.grade,
                         f"grade {rating.iloc[pos]} outside the scale [{scale.low}, {scale.high}]"))

    dist = None
    if mapping.grade_dist and mapping.grade_dist in raw.columns:
        dist, dist_problems = _parse_dists(raw[mapping.grade_dist], scale.num_grades, mapping.grade_dist)
        problems.extend(dist_problems)

    bad = sorted({pos for pos, _, _ in problems})
    if problems and on_invalid == "error":
        pos, col, message = min(problems)
        raise DataError(f"{message} ({len(bad)} bad row(s) in all)", path=path,
                        row=_row_label(pos, fmt), column=col)
    keep = np.ones(len(raw), dtype=bool)
    keep[bad] = False
    if bad:
        log.warning("%s: dropped %d of %d rows with invalid values", path, len(bad), len(raw))
    grade = np.asarray(scale.to_grade(rating.to_numpy()[keep]), dtype=np.float64)
    grade_dist = dist[keep] if dist is not None else schema.soft_targets_from_mean(grade, scale.num_grades)
    if dist is not None:
        grade = schema.expected_grade(grade_dist)
    frame = pd.DataFrame({
        schema.QUERY: query.to_numpy()[keep],
        schema.PRODUCT_ID: pid.to_numpy()[keep],
        schema.PRODUCT_TEXT: text.to_numpy()[keep],
        schema.GRADE: grade,
        schema.GRADE_DIST: list(grade_dist),
    })
    if frame.empty:
        raise DataError("no valid rows left after validation", path=path)
    frame.insert(0, schema.QUERY_ID, frame[schema.QUERY].map(schema.query_id))
    return _merge_duplicates(frame, path)


def _parse_dists(column: pd.Series, k: int, name: str) -> tuple[np.ndarray, list]:
    out = np.zeros((len(column), k))
    problems = []
    for pos, value in enumerate(column.to_numpy()):
        try:
            vec = np.asarray(json.loads(value) if isinstance(value, str) else value, dtype=np.float64)
            if vec.shape != (k,) or not np.isfinite(vec).all() or (vec < 0).any() or vec.sum() <= 0:
                raise ValueError
            out[pos] = vec / vec.sum()
        except (ValueError, TypeError):
            problems.append((pos, name, f"not a distribution over {k} grades: {value!r}"))
    return out, problems


def _merge_duplicates(frame: pd.DataFrame, path: str) -> pd.DataFrame:
    """The same (query, product) rated twice becomes one row with the averaged distribution."""
    key = [schema.QUERY_ID, schema.PRODUCT_ID]
    dup = frame.duplicated(key, keep=False)
    if not dup.any():
        return frame.reset_index(drop=True)
    n_before = len(frame)
    agg = frame[dup].groupby(key, sort=False).agg({
        schema.QUERY: "first", schema.PRODUCT_TEXT: "first",
        schema.GRADE_DIST: lambda s: list(np.mean(np.stack(s.to_numpy()), axis=0)),
    }).reset_index()
    agg[schema.GRADE] = schema.expected_grade(schema.dist_matrix(agg))
    merged = pd.concat([frame[~dup], agg[frame.columns]], ignore_index=True)
    log.info("%s: merged %d duplicate (query, product) rows", path, n_before - len(merged))
    return merged


def read_pairs(uri: str, fmt: str | None = None, mapping: ColumnMapping | None = None, *,
               on_invalid: str = "error") -> pd.DataFrame:
    """Labelled pairs from any supported source, in kdrank's schema."""
    fmt = fmt or infer_format(uri)
    if fmt not in FORMATS:
        raise DataError(f"unknown format '{fmt}'; expected one of {FORMATS}", path=uri)
    mapping = mapping or PRESETS.get(fmt)
    raw = read_raw(uri, fmt, mapping.encoding if mapping else None)
    if mapping is None:
        mapping = HOMEDEPOT if set(raw.columns) >= HOMEDEPOT_COLUMNS else KDRANK
        if mapping is HOMEDEPOT:
            log.info("%s: recognised the Home Depot format", uri)
    return normalize(raw, mapping, path=uri, fmt=fmt, on_invalid=on_invalid)


def split_by_query(frame: pd.DataFrame, *, val_fraction: float = 0.1, test_fraction: float = 0.1,
                   seed: int = 13) -> dict[str, pd.DataFrame]:
    """Deterministic train/val/test split where no query appears in two splits.

    Each query id is hashed with the seed to a number in [0, 1); the split depends only on the query,
    the seed and the fractions, not on row order or on the other queries in the file.
    """
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise ValueError(f"bad split fractions: val={val_fraction}, test={test_fraction}")
    qids = frame[schema.QUERY_ID].unique()
    u = np.array([int(schema.query_id(f"{seed}:{q}"), 16) / 16**16 for q in qids])
    which = np.where(u < test_fraction, "test", np.where(u < test_fraction + val_fraction, "val", "train"))
    assignment = dict(zip(qids, which, strict=True))
    split = frame[schema.QUERY_ID].map(assignment)
    return {name: frame[split == name].reset_index(drop=True) for name in ("train", "val", "test")}


def catalogue_of(frame: pd.DataFrame) -> pd.DataFrame:
    """Distinct products (id, text) of a pairs table: the catalogue augmentation draws from."""
    return (frame[[schema.PRODUCT_ID, schema.PRODUCT_TEXT]].drop_duplicates(schema.PRODUCT_ID)
            .sort_values(schema.PRODUCT_ID).reset_index(drop=True))


@dataclass
class PrepareConfig:
    fmt: str | None = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 13
    on_invalid: str = "error"
    max_queries: int | None = None  # keep a deterministic subset of queries (reduced profiles)


def _prepared_paths(output_dir: str) -> dict[str, str]:
    return {name: storage.join(output_dir, f"{name}.parquet") for name in ("train", "val", "test", "catalogue")}


def _prepare_settings(input_uri: str, config: PrepareConfig) -> dict:
    return {"input": str(input_uri), "input_sha256": source_digest(input_uri), **asdict(config)}


def prepared_differs(input_uri: str, output_dir: str, config: PrepareConfig | None = None) -> list[str]:
    """What `prepare_data(input_uri, output_dir, config)` would prepare anew for: the settings that differ
    from the split in `output_dir` (["no summary"] or ["missing tables"] where it has none); [] when the
    split there is the one it would make. The same input bytes under another name match; a summary from
    before the input's sha256 was kept matches on the rest of its settings, its input's name included."""
    return _differs(output_dir, _prepare_settings(input_uri, config or PrepareConfig()))


def _differs(output_dir: str, settings: dict) -> list[str]:
    """`prepared_differs` for settings already made (the input's sha256 read once)."""
    summary_path = storage.join(output_dir, "summary.json")
    if not storage.exists(summary_path):
        return ["no summary"]
    done = json.loads(storage.read_text(summary_path)).get("settings", {})
    settings = dict(settings)
    if "input_sha256" not in done:
        settings.pop("input_sha256")
    elif done["input_sha256"] == settings["input_sha256"]:
        settings["input"] = done.get("input")  # the same bytes at another path split the same
    differ = sorted(k for k in {*done, *settings} if done.get(k) != settings.get(k))
    if not differ and not all(storage.exists(p) for p in _prepared_paths(output_dir).values()):
        return ["missing tables"]
    return differ


def prepare_data(input_uri: str, output_dir: str, config: PrepareConfig | None = None) -> dict[str, str]:
    """Read, validate and split a labelled source; write train/val/test/catalogue Parquet + summary.

    Returns the paths. A rerun with the same input (its bytes, not only its name) and config finds the
    summary and does nothing. The summary is written last and removed before anything else is rewritten,
    so a run stopped half-way leaves no summary, and the next run prepares everything again.
    """
    config = config or PrepareConfig()
    paths = _prepared_paths(output_dir)
    summary_path = storage.join(output_dir, "summary.json")
    settings = _prepare_settings(input_uri, config)
    if not _differs(output_dir, settings):
        log.info("data already prepared in %s", output_dir)
        return paths
    frame = read_pairs(input_uri, config.fmt, on_invalid=config.on_invalid)
    if storage.exists(summary_path):  # the tables below are replaced one by one: no summary until all are
        storage.remove(summary_path)
    catalogue = catalogue_of(frame)  # every product in the source, also when only some queries are kept
    if config.max_queries:
        keep = sorted(frame[schema.QUERY_ID].unique(), key=lambda q: schema.query_id(f"sub:{q}"))
        frame = frame[frame[schema.QUERY_ID].isin(set(keep[: config.max_queries]))].reset_index(drop=True)
    splits = split_by_query(frame, val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                            seed=config.seed)
    for name, part in splits.items():
        write_table(part, paths[name])
    write_table(catalogue, paths["catalogue"])
    counts = {name: {"pairs": len(p), "queries": int(p[schema.QUERY_ID].nunique())} for name, p in splits.items()}
    counts["catalogue"] = {"products": len(catalogue)}
    storage.write_text(summary_path, json.dumps({"settings": settings, "counts": counts,
                                                 "num_grades": schema.num_grades_of(frame)}, indent=2))
    log.info("prepared %s: %s", input_uri, counts)
    return paths
