"""Teacher labels that outlive their teacher: kept in a results archive, used without the checkpoint.

A distilled student needs its teacher's labels of the augmented pairs, not the teacher. On a lent GPU
the teacher is the costly part (about 215 s to train, 120 s to label a 16x set of the full profile), and
its 270 MB checkpoint cannot come back through what a call returns, so every session trained it again.
The labels can come back: 3 probabilities per pair, about 6.6 MB for the 16x set.

- Every labelled set that `kdrank experiment run` makes gets a record, `labels.json`, beside its shard:
  which teacher run made it and that teacher's identity (`components.teacher.identity`: the digest of
  its training data's contents and its config), the multiple, and the pair set's row count and the
  digest of its (query id, product id) sequence.
- `kdrank experiment archive` keeps each archived teacher's label sets as that record and
  `probs.parquet`: the probabilities alone, one column per grade, in the pair set's row order (no ids,
  texts or grades), float32 where that holds them exactly (teacher scoring yields float32).
- `kdrank experiment restore` puts them under the runs folder's `data/archived-labels/`. A distillation
  run then uses them instead of its teacher when the teacher this profile would train has the recorded
  identity and the augmented set made here has the recorded pairs: the labelled set is written exactly
  as labelling would have written it, and no teacher is trained or loaded. If either differs, the run
  says which and falls back to the teacher.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from components import schema, storage

log = logging.getLogger(__name__)

RECORD = "labels.json"
PROBS = "probs.parquet"
ARCHIVED = "archived-labels"  # under a runs folder's data/: label sets restored from an archive
FIELDS = ("teacher", "identity", "multiple", "pairs", "pairs_digest", "base_pairs", "base_digest", "num_grades")


class LabelsMismatch(ValueError):
    """Archived labels that do not fit this runs folder (another teacher, another augmented set)."""


def pairs_digest(frame: pd.DataFrame) -> str:
    """sha256 of a pair table's (query id, product id) sequence, in row order."""
    digest = hashlib.sha256()
    for qid, pid in zip(frame[schema.QUERY_ID].astype(str), frame[schema.PRODUCT_ID].astype(str), strict=True):
        digest.update(f"{qid}\x1f{pid}\x1e".encode())
    return digest.hexdigest()


def _key_frame(uri: str | Path, *extra: str) -> pd.DataFrame:
    """The pair keys (and `extra` columns) of a Parquet file or folder of shards, in row order."""
    from components.label import input_files

    columns = [schema.QUERY_ID, schema.PRODUCT_ID, *extra]
    frames = []
    for path in input_files(str(uri)):
        with storage.open_binary(path) as file:  # on gs://, ranged reads of the key columns only
            names = pq.read_schema(file).names
            missing = [c for c in columns if c not in names]
            if missing:
                raise schema.DataError(f"missing column(s) {missing}; found {names}", path=path, column=missing[0])
            frames.append(pd.read_parquet(file, columns=columns))
    return pd.concat(frames, ignore_index=True)


def set_name(teacher: str, multiple: float) -> str:
    """The name of a teacher's label set in an archive, e.g. teacher-soft-16x."""
    return f"{teacher}-{multiple:g}x"


def probs_digest(probs: np.ndarray) -> str:
    """sha256 of a label set's probabilities as float64: which labels these are, where the record (teacher,
    its identity, the pairs) cannot tell two trainings of one teacher apart."""
    return hashlib.sha256(np.ascontiguousarray(probs, dtype=np.float64).tobytes()).hexdigest()


def same_stored_probs(one: str | Path, other: str | Path) -> bool:
    """Whether two stored label sets' probabilities files hold the same bytes."""
    def digest(folder) -> str:
        return hashlib.sha256(Path(folder, PROBS).read_bytes()).hexdigest()

    return Path(one, PROBS).is_file() and Path(other, PROBS).is_file() and digest(one) == digest(other)


def write_record(labelled_dir: str | Path, *, teacher: str, identity: str, multiple: float,
                 pairs_uri: str | Path, probs_sha256: str | None = None) -> dict:
    """Record, beside a finished labelled set, which teacher made it and of which pairs (and, for labels
    written from an archived set, `probs_sha256`: which probabilities)."""
    from components.augment import LABELLED

    pairs = _key_frame(pairs_uri, schema.SOURCE)
    labelled = _key_frame(labelled_dir, schema.TEACHER_PROBS)
    digest = pairs_digest(pairs)
    if len(labelled) != len(pairs) or pairs_digest(labelled) != digest:
        raise LabelsMismatch(f"{labelled_dir} does not hold the pairs of {pairs_uri} in their order "
                             f"({len(labelled)} rows for {len(pairs)} pairs)")
    # the training pairs lead every augmented set: a 0x run can take their labels from a larger set's
    base = int((pairs[schema.SOURCE] != LABELLED).to_numpy().argmax()) if (pairs[schema.SOURCE] != LABELLED).any() \
        else len(pairs)
    first = labelled[schema.TEACHER_PROBS].iloc[0] if len(labelled) else []
    record = {"teacher": teacher, "identity": identity, "multiple": float(multiple), "pairs": len(pairs),
              "pairs_digest": digest, "base_pairs": base, "base_digest": pairs_digest(pairs.iloc[:base]),
              "num_grades": len(first), **({"probs_sha256": probs_sha256} if probs_sha256 else {})}
    storage.write_text(storage.join(str(labelled_dir), RECORD), json.dumps(record, indent=2) + "\n")
    return record


def load_record(path: Path, fields: tuple[str, ...], error: type[ValueError]) -> dict | None:
    """A stored set's JSON record at `path`, or None when there is none; `error` when it lacks any of `fields`."""
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    if missing := [k for k in fields if k not in record]:
        raise error(f"{path} lacks {missing}")
    return record


def read_record(folder: str | Path) -> dict | None:
    """A label set's record, or None when the folder has none (made before records were kept)."""
    return load_record(Path(folder, RECORD), FIELDS, LabelsMismatch)


def labelled_probs(labelled_dir: str | Path, record: dict) -> np.ndarray:
    """(pairs, grades) teacher probabilities of a labelled folder, checked against its record and its scores."""
    frame = _key_frame(labelled_dir, schema.TEACHER_PROBS, schema.TEACHER_SCORE)
    if len(frame) != record["pairs"] or pairs_digest(frame) != record["pairs_digest"]:
        raise LabelsMismatch(f"{labelled_dir} no longer holds the pairs its {RECORD} names")
    probs = np.array(frame[schema.TEACHER_PROBS].tolist(), dtype=np.float64).reshape(len(frame), -1)
    scores = frame[schema.TEACHER_SCORE].to_numpy(dtype=np.float64)
    if not np.array_equal(probs @ np.arange(probs.shape[1], dtype=np.float64), scores):
        # every labelled chunk is at most 50,000 rows, and a row's product does not depend on the others
        raise LabelsMismatch(f"{labelled_dir}: teacher_score is not the expected grade of teacher_probs")
    return probs


def export_set(labelled_dir: str | Path, target: str | Path) -> dict:
    """Write a labelled set's record and probabilities (no pairs) into the folder `target`."""
    labelled_dir, target = Path(labelled_dir), Path(target)
    record = read_record(labelled_dir)
    if record is None:
        raise LabelsMismatch(f"{labelled_dir} has no {RECORD}")
    probs = labelled_probs(labelled_dir, record)
    narrow = probs.astype(np.float32)
    kept = narrow if np.array_equal(narrow.astype(np.float64), probs) else probs
    target.mkdir(parents=True, exist_ok=True)
    # byte-stream split + zstd: about 6.6 MB for the 702k pairs of a full 16x set, against 9.8 with the defaults
    pd.DataFrame({f"p{k}": kept[:, k] for k in range(kept.shape[1])}).to_parquet(
        target / PROBS, index=False, compression="zstd", use_byte_stream_split=True, use_dictionary=False)
    (target / RECORD).write_text(json.dumps({**record, "dtype": str(kept.dtype)}, indent=2) + "\n")
    return record


def check_stored(folder: str | Path) -> dict:
    """A stored label set's record, after checking that its probabilities fit it."""
    record = read_record(folder)
    if record is None:
        raise LabelsMismatch(f"{folder} is not a stored label set: {RECORD} is missing")
    columns, rows = footer(Path(folder, PROBS))
    if list(columns) != [f"p{k}" for k in range(record["num_grades"])] or rows != record["pairs"]:
        raise LabelsMismatch(f"{folder}: {PROBS} has {rows} rows and columns {list(columns)}; its {RECORD} "
                             f"names {record['pairs']} pairs and {record['num_grades']} grades")
    return record


def footer(path: str | Path) -> tuple[list[str], int]:
    """(column names, row count) of a stored Parquet file, from its footer alone."""
    stored = pq.ParquetFile(path)
    return list(stored.schema_arrow.names), stored.metadata.num_rows


def copy_files(source: str | Path, target: str | Path, names: tuple[str, ...] = (RECORD, PROBS)) -> None:
    """Copy a stored set's files (by default a label set's record and probabilities) from the folder
    `source` to the folder `target`, written whole or not at all."""
    with storage.atomic_dir(str(target)) as tmp:
        for name in names:
            shutil.copy(Path(source, name), Path(tmp, name))


def copy_set(source: str | Path, target: str | Path) -> None:
    """Copy a stored label set (record and probabilities) to `target`, written whole or not at all."""
    copy_files(source, target)


def find_archived(data_dir: str | Path, teacher: str, multiple: float) -> Path | None:
    """The restored label set of `teacher` at `multiple` under a runs folder's data/, if there is one."""
    folder = Path(data_dir, ARCHIVED, set_name(teacher, multiple))
    return folder if (folder / RECORD).is_file() else None


def smallest_archived(data_dir: str | Path, teacher: str) -> Path | None:
    """The restored label set of `teacher` with the fewest pairs, of any multiple, if there is one: what a 0x
    run takes its training pairs' labels from when the archive kept no 0x set (a larger set leads with them)."""
    found = [(record["multiple"], folder) for folder in sorted(Path(data_dir, ARCHIVED).glob("*"))
             if (record := read_record(folder)) is not None and record["teacher"] == teacher]
    return min(found, key=lambda pair: pair[0])[1] if found else None


def larger_archived(data_dir: str | Path, teacher: str, multiple: float) -> list[tuple[float, Path]]:
    """(multiple, folder) of the restored label sets of `teacher` above `multiple`, smallest first: what a run
    at `multiple` takes its pairs' labels from when the archive kept no set of its own size (a larger set
    leads with them)."""
    found = [(record["multiple"], folder) for folder in sorted(Path(data_dir, ARCHIVED).glob("*"))
             if (record := read_record(folder)) is not None and record["teacher"] == teacher
             and record["multiple"] > multiple]
    return sorted(found, key=lambda pair: pair[0])


def set_probs(folder: str | Path, record: dict) -> np.ndarray:
    """(pairs, grades) probabilities of a label set in either form: stored (an archive's `probs.parquet`) or
    labelled (a runs folder's shards, checked against the record)."""
    stored = Path(folder, PROBS)
    if stored.is_file():
        return pd.read_parquet(stored).to_numpy(dtype=np.float64)
    return labelled_probs(folder, record)


def leads(small: tuple[str | Path, dict], large: tuple[str | Path, dict]) -> bool:
    """Whether the label set `small` (folder, record) is the first rows of the labelled set `large` (a runs
    folder's, which holds its pairs), pairs and probabilities alike, bit for bit: then `large` alone can
    give `small` back (`use_archived` with `leading`)."""
    (small_dir, s), (large_dir, g) = small, large
    if Path(large_dir, PROBS).is_file() or (s["teacher"], s["identity"]) != (g["teacher"], g["identity"]) \
            or not 0 < s["pairs"] < g["pairs"]:
        return False
    if pairs_digest(_key_frame(large_dir).iloc[:s["pairs"]]) != s["pairs_digest"]:
        return False
    return bool(np.array_equal(set_probs(small_dir, s), set_probs(large_dir, g)[:s["pairs"]]))


def _starts(leading: str, record: dict, digest: str, rows: int) -> bool:
    """Whether `leading` holds the pairs a set's `record` names and its first `rows` have `digest`."""
    whole = _key_frame(leading)
    return len(whole) == record["pairs"] and pairs_digest(whole) == record["pairs_digest"] \
        and pairs_digest(whole.iloc[:rows]) == digest


def use_archived(stored: str | Path, pairs_uri: str, identity: str, data_dir: str | Path,
                 multiple: float, leading: str | None = None) -> tuple[str, str]:
    """(labelled folder, tag): the pairs of `pairs_uri` (the `multiple`x set) labelled with a stored set's
    probabilities: the set's own pairs, or for a 0x set the training pairs that lead it, or with `leading`
    (the pairs the stored set was made of, of which `pairs_uri` holds the first rows) those first rows.

    Raises LabelsMismatch, naming what differs, when the teacher `identity` or the pairs are not the
    ones the set was made for. The folder is written as `label_pairs` writes one, with the record beside.
    """
    from components.label import write_labels

    record = check_stored(stored)
    name = set_name(record["teacher"], record["multiple"])
    if record["identity"] != identity:
        raise LabelsMismatch(f"the archived labels {name} were made by a {record['teacher']} trained on other "
                             "data or with other settings than this profile's")
    pairs = _key_frame(pairs_uri)
    digest = pairs_digest(pairs)
    if len(pairs) == record["pairs"] and digest == record["pairs_digest"]:
        rows = record["pairs"]
    elif multiple == 0 and len(pairs) == record["base_pairs"] and digest == record["base_digest"]:
        rows = record["base_pairs"]  # a 0x set: the training pairs, labelled as the larger set labelled them
    elif leading is not None and len(pairs) < record["pairs"] and _starts(leading, record, digest, len(pairs)):
        rows = len(pairs)  # a smaller set's pairs, the first rows of the larger set's, labelled as it labelled them
    else:
        raise LabelsMismatch(f"the archived labels {name} are of another augmented set ({record['pairs']} pairs, "
                             f"digest {record['pairs_digest'][:12]}) than {pairs_uri} ({len(pairs)} pairs, "
                             f"digest {digest[:12]}): augmentation here gave other pairs "
                             "(another encoder, device or setting)")
    tag = hashlib.sha256(f"{identity}:{digest}".encode()).hexdigest()[:10]
    target = Path(data_dir, f"labelled-{record['teacher']}-{multiple:g}x-{tag}")
    existing = read_record(target)
    probs = set_probs(stored, record)[:rows]
    wanted = probs_digest(probs)
    # labels written here from an archived set earlier are kept only if they are these probabilities: a teacher
    # trained again (same identity, other weights) is archived with other labels of the same pairs
    if not existing or (existing["identity"], existing["pairs_digest"]) != (identity, digest) \
            or existing.get("probs_sha256", wanted) != wanted:
        write_labels(pairs_uri, probs, str(target))
        write_record(target, teacher=record["teacher"], identity=identity, multiple=multiple, pairs_uri=pairs_uri,
                     probs_sha256=wanted)
        log.info("labels of %d pairs from the archived set %s: no teacher needed", rows, name)
    return str(target), tag
