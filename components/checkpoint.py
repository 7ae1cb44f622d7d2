"""Checkpoint metadata: every kdrank model directory is a Hugging Face directory plus kdrank.json.

kdrank.json records whether the model is a teacher or a student, its grade count, the max input
length, how it was trained and (students) the linear map from raw score to the grade scale. A
teacher ensemble is a directory whose kdrank.json lists member sub-directories.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components import pairs, storage

META_FILE = "kdrank.json"


@dataclass
class CheckpointInfo:
    role: str  # pairs.TEACHER or pairs.STUDENT
    num_grades: int
    max_length: int
    base_model: str = ""
    members: list[str] = field(default_factory=list)  # ensemble members (teacher only)
    calibration: dict | None = None  # {"scale": a, "offset": b}: grade = a * raw + b (student)
    training: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.role not in (pairs.TEACHER, pairs.STUDENT):
            raise ValueError(f"role must be '{pairs.TEACHER}' or '{pairs.STUDENT}', got '{self.role}'")
        if self.num_grades < 2:
            raise ValueError(f"num_grades must be >= 2, got {self.num_grades}")


def write_info(directory: str | Path, info: CheckpointInfo) -> None:
    """Write kdrank.json whole into a local directory or a gs:// prefix."""
    storage.write_text(storage.join(directory, META_FILE),
                       json.dumps(dataclasses.asdict(info), indent=2, sort_keys=True))


def read_info(directory: str | Path) -> CheckpointInfo:
    path = Path(directory, META_FILE)
    if not path.is_file():
        raise FileNotFoundError(
            f"{directory} is not a kdrank checkpoint: {META_FILE} is missing "
            "(train one with `kdrank run` or the teacher/student steps)"
        )
    try:
        raw = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(CheckpointInfo)}
        return CheckpointInfo(**{k: v for k, v in raw.items() if k in known})
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: unreadable checkpoint metadata: {err}") from err


def apply_calibration(raw, calibration: dict | None) -> np.ndarray:
    """Raw student scores on the grade scale: grade = scale * raw + offset (identity without calibration)."""
    raw = np.asarray(raw, dtype=np.float64)
    if not calibration:
        return raw
    try:
        return float(calibration["scale"]) * raw + float(calibration["offset"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"unusable student calibration {calibration!r}: expected {{'scale': a, 'offset': b}}") from err
