"""The reference set: held-out pairs scored by teacher and student when the model was trained.

A directory (local or gs://) holding `reference.parquet` (pairs, grades, teacher probabilities and
score, student raw and grade-scale score, input features) and `reference.json` (which student it
describes: model name and version as served, checkpoint, calibration, grade count). Every monitored
window is compared with it; a window served by another model version gets a warning.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from components import data, schema, storage
from components.schema import DataError
from monitoring import features, scores
from serving import layout

log = logging.getLogger(__name__)

TABLE_FILE = "reference.parquet"
META_FILE = "reference.json"
DEFAULT_MODEL_NAME = layout.DEFAULT_MODEL_NAME  # the Triton ensemble clients call (and log)
DEFAULT_MODEL_VERSION = "1"


@dataclass
class ReferenceMeta:
    model_name: str
    model_version: str
    num_grades: int
    rows: int
    calibration: dict = field(default_factory=dict)  # {"scale": a, "offset": b}: grade = a * raw + b
    student_dir: str = ""
    teacher_dir: str = ""
    test_uri: str = ""
    created: str = ""

    @property
    def model(self) -> str:
        return f"{self.model_name}:{self.model_version}"


def build_reference_set(test: str | pd.DataFrame, teacher_dir: str, student_dir: str, output_uri: str, *,
                        model_name: str = DEFAULT_MODEL_NAME, model_version: str = DEFAULT_MODEL_VERSION,
                        max_pairs: int | None = None, seed: int = 0, batch_size: int = 64,
                        teacher_uri: str | None = None, student_uri: str | None = None) -> str:
    """Score held-out pairs with teacher and student and write the reference set to `output_uri`.

    `test` is a labelled table (path, gs:// URI or DataFrame). Columns it already holds are reused:
    teacher_probs/teacher_score (labels from the pipeline), student_score (raw scores computed before).
    `model_name`/`model_version` are what the serving log will record for this student;
    `teacher_uri`/`student_uri` where monitoring finds the models later (default: the dirs given).
    """
    frame = test.copy() if isinstance(test, pd.DataFrame) else data.read_table(str(test))
    where = "test frame" if isinstance(test, pd.DataFrame) else str(test)
    schema.require_columns(frame, [schema.QUERY, schema.PRODUCT_ID, schema.PRODUCT_TEXT], path=where)
    if frame.empty:
        raise DataError("no held-out pairs to build a reference set from", path=where)
    if schema.QUERY_ID not in frame.columns:
        frame.insert(0, schema.QUERY_ID, frame[schema.QUERY].map(schema.query_id))
    frame = frame.drop_duplicates([schema.QUERY_ID, schema.PRODUCT_ID]).reset_index(drop=True)
    if max_pairs is not None and len(frame) > max_pairs:
        frame = frame.sample(n=max_pairs, random_state=seed).reset_index(drop=True)
    if schema.TEACHER_SCORE not in frame.columns:
        frame = scores.teacher_label(frame, teacher_dir, batch_size=batch_size, source="labelled")
    if schema.STUDENT_SCORE in frame.columns:
        calibration = scores.student_calibration(student_dir)
    else:
        raw, calibration = scores.student_scores(frame, student_dir, batch_size=batch_size)
        frame[schema.STUDENT_SCORE] = raw
    frame[features.STUDENT_GRADE] = scores.to_grade_scale(frame[schema.STUDENT_SCORE].to_numpy(), calibration)
    frame = features.add_input_features(frame)
    meta = ReferenceMeta(
        model_name=str(model_name), model_version=str(model_version),
        num_grades=len(frame[schema.TEACHER_PROBS].iloc[0]), rows=len(frame), calibration=calibration,
        student_dir=str(student_uri or student_dir), teacher_dir=str(teacher_uri or teacher_dir),
        test_uri="" if isinstance(test, pd.DataFrame) else str(test),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    with storage.atomic_dir(output_uri) as tmp:
        frame.to_parquet(os.path.join(tmp, TABLE_FILE), index=False)
        Path(tmp, META_FILE).write_text(json.dumps(dataclasses.asdict(meta), indent=2, sort_keys=True))
    log.info("reference set of %d pairs for %s written to %s", len(frame), meta.model, output_uri)
    return str(output_uri)


def served_model(manifest_uri: str) -> tuple[str, str]:
    """(model name, version) of a Triton export, from its manifest.json (what the request log records)."""
    uri = manifest_uri if manifest_uri.endswith(".json") else storage.join(manifest_uri, layout.MANIFEST)
    try:
        manifest = json.loads(storage.read_text(uri))
        return str(manifest["model_name"]), str(manifest["version"])
    except (json.JSONDecodeError, KeyError) as err:
        raise DataError(f"not a Triton export manifest (needs model_name and version): {err}",
                        path=uri) from err


REQUIRED_COLUMNS = [*schema.PAIR_COLUMNS, schema.TEACHER_PROBS, schema.TEACHER_SCORE, schema.STUDENT_SCORE,
                    features.STUDENT_GRADE, *features.NUMERIC_FEATURES]


def read_reference(uri: str) -> tuple[pd.DataFrame, ReferenceMeta]:
    """The reference table and what it describes; a clear error when `uri` is not a reference set."""
    meta_uri, table_uri = storage.join(uri, META_FILE), storage.join(uri, TABLE_FILE)
    if not storage.exists(meta_uri):
        raise FileNotFoundError(f"{uri} is not a reference set: {META_FILE} is missing "
                                "(build one with build_reference_set / the training pipeline)")
    try:
        raw = json.loads(storage.read_text(meta_uri))
        known = {f.name for f in dataclasses.fields(ReferenceMeta)}
        meta = ReferenceMeta(**{k: v for k, v in raw.items() if k in known})
    except (json.JSONDecodeError, TypeError) as err:
        raise DataError(f"unreadable reference metadata: {err}", path=meta_uri) from err
    if not storage.exists(table_uri):
        raise FileNotFoundError(f"{uri} is not a complete reference set: {TABLE_FILE} is missing ({table_uri})")
    try:
        frame = pd.read_parquet(io.BytesIO(storage.read_bytes(table_uri)))
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError: a corrupt or truncated file
        raise DataError(f"unreadable reference table (not a Parquet file, or truncated): {err}",
                        path=table_uri) from err
    schema.require_columns(frame, REQUIRED_COLUMNS, path=table_uri)
    if frame.empty:
        raise DataError("the reference set has no rows", path=table_uri)
    return frame, meta
