"""The monitoring job: a window of logged requests -> sample -> teacher labels -> Evidently report.

Writes `report.html`, `snapshot.json` (the whole Evidently snapshot; `kdrank monitor add` appends it
to a workspace later), `sample.parquet` (the labelled sample) and, last, `summary.json` (every test's
status) under the output directory, local or gs://, each file whole or not at all; appends the
snapshot to a local Evidently workspace when given one, after the report is written, so a workspace
that fails (WorkspaceError, bad input) never costs the report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from components import schema, storage
from components.schema import DataError
from monitoring import features, report, scores, window
from monitoring.config import Thresholds, load_thresholds
from monitoring.reference import ReferenceMeta, read_reference
from monitoring.workspace import WorkspaceError, add_to_workspace, check_workspace

log = logging.getLogger(__name__)

HTML_FILE = "report.html"
SNAPSHOT_FILE = "snapshot.json"
SAMPLE_FILE = "sample.parquet"
SUMMARY_FILE = "summary.json"
DEFAULT_SAMPLE_SIZE = 2000
DEFAULT_MAX_PAIRS_PER_QUERY = 10  # 2,000 pairs span >= 200 queries
DEFAULT_REFERENCE_SIZE = 5000


@dataclass
class MonitorResult:
    passed: bool
    summary: dict
    html_path: str
    json_path: str


@contextlib.contextmanager
def _timed(timings: dict, stage: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    timings[stage] = round(time.perf_counter() - start, 3)


def _served_by_reference(frame: pd.DataFrame, meta: ReferenceMeta) -> np.ndarray:
    """1.0 where a row was served by the reference's model version, 0.0 elsewhere, NaN where the row does
    not log its version."""
    if window.MODEL_VERSION not in frame.columns:
        return np.full(len(frame), np.nan)
    version = window.version_labels(frame[window.MODEL_VERSION])
    same = version == str(meta.model_version)
    if window.MODEL_NAME in frame.columns:
        same &= frame[window.MODEL_NAME].astype(str) == meta.model_name
    return np.where(version.isna().to_numpy(), np.nan, same.to_numpy(dtype=np.float64))


def _version_warnings(served_flags: np.ndarray, served: dict[str, int], meta: ReferenceMeta) -> list[str]:
    if np.isnan(served_flags).all():
        return [f"the window does not log model_version: cannot check it was served by {meta.model}, "
                "the model the reference set describes"]
    other = int((served_flags == 0).sum())
    if not other:
        return []
    names = sorted(k for k in served if k not in (meta.model, f":{meta.model_version}"))
    return [f"model version mismatch: {other} of {len(served_flags)} window rows were served by {names} but "
            f"the reference set describes {meta.model}; agreement uses that model's calibration and drift "
            "compares different models. Rebuild the reference set for the served version."]


def _has_teacher_labels(frame: pd.DataFrame, path: str) -> bool:
    """Whether the window already carries teacher labels (then they are used, not recomputed)."""
    if not {schema.TEACHER_PROBS, schema.TEACHER_SCORE} <= set(frame.columns):
        return False
    bad = ~np.isfinite(pd.to_numeric(frame[schema.TEACHER_SCORE], errors="coerce").to_numpy(dtype=np.float64))
    if bad.any():
        file, row = window.locate(frame, int(np.flatnonzero(bad)[0]), path)
        raise DataError(f"{int(bad.sum())} teacher scores are missing or not numbers", path=file, row=row,
                        column=schema.TEACHER_SCORE)
    lengths = frame[schema.TEACHER_PROBS].map(lambda v: np.size(v) if v is not None else 0).to_numpy()
    bad = (lengths != lengths[0]) | (lengths < 2)
    if bad.any():
        file, row = window.locate(frame, int(np.flatnonzero(bad)[0]), path)
        raise DataError(f"{int(bad.sum())} rows' teacher probabilities are missing or of another grade count than "
                        f"the first row's {lengths[0]}", path=file, row=row, column=schema.TEACHER_PROBS)
    return True


def _time_range(frame: pd.DataFrame) -> tuple[str | None, str | None, datetime | None]:
    if window.TIME not in frame.columns:
        return None, None, None
    times = window.parse_times(frame[window.TIME]).dropna()
    if times.empty:
        return None, None, None
    start, end = times.min(), times.max()
    return start.isoformat(), end.isoformat(), end.to_pydatetime()


def _check_sizes(**sizes: int) -> None:
    """Sample sizes must be whole numbers >= 1; the error names the option."""
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


def _reuse_sample_scores(frame: pd.DataFrame) -> pd.DataFrame:
    """A previous run's sample scored with a student checkpoint has student_score but no logged score:
    re-checking it reuses those raw scores rather than asking for the student again."""
    if window.SCORE not in frame.columns and schema.STUDENT_SCORE in frame.columns:
        return frame.assign(**{window.SCORE: frame[schema.STUDENT_SCORE]})
    return frame


def _reference_sample(reference: pd.DataFrame, size: int, *, seed: int) -> pd.DataFrame:
    """At most `size` reference pairs: whole queries drawn uniformly (each held-out query once, whatever
    its number of pairs), so the subsample keeps the reference's mix of broad and narrow queries."""
    if len(reference) <= size:
        return reference
    return window.sample_by_query(reference.drop(columns=[window.QUERY_REQUESTS], errors="ignore"), size,
                                  seed=seed, max_pairs_per_query=len(reference))


def _prepare(frame: pd.DataFrame, num_grades: int, thresholds: Thresholds) -> pd.DataFrame:
    out = features.add_input_features(frame)
    return features.add_agreement_columns(out, num_grades,
                                          min_pairs_per_query=thresholds.agreement.min_pairs_per_query)


def _write_report(output_uri: str, snapshot, sample: pd.DataFrame) -> str:
    """The sample, the HTML report and the snapshot; returns the report's URI."""
    html_uri = storage.join(output_uri, HTML_FILE)
    with storage.atomic_path(storage.join(output_uri, SAMPLE_FILE)) as tmp:
        sample.to_parquet(tmp, index=False)
    with storage.atomic_path(html_uri) as tmp:
        snapshot.save_html(tmp)
    storage.write_text(storage.join(output_uri, SNAPSHOT_FILE), snapshot.dumps())  # loadable: `monitor add`
    return html_uri


def _write_summary(output_uri: str, summary: dict) -> str:
    summary_uri = storage.join(output_uri, SUMMARY_FILE)
    storage.write_text(summary_uri, json.dumps(summary, indent=2, sort_keys=True, default=str))
    return summary_uri


def _check_output_outside_window(output_uri: str, window_uri: str) -> None:
    """A window folder is read with every log file under it: a report written inside it would be read back
    as traffic by the next run (its sample.parquet), so the output goes elsewhere."""
    out, win = str(output_uri).rstrip("/"), str(window_uri).rstrip("/")
    if not win.endswith(window.LOG_SUFFIXES) and (out == win or out.startswith(win + "/")):
        raise ValueError(f"output {output_uri} is inside the window folder {window_uri}, whose every .jsonl and "
                         ".parquet file is read as traffic (this run's sample.parquet would be, next time): "
                         "write the report elsewhere")


def monitor(window_uri: str, reference_uri: str, output_uri: str, *, teacher_dir: str | None = None,
            student_dir: str | None = None, thresholds: str | Path | dict | Thresholds | None = None,
            overrides: list[str] | None = None, sample_size: int = DEFAULT_SAMPLE_SIZE,
            max_pairs_per_query: int = DEFAULT_MAX_PAIRS_PER_QUERY,
            reference_size: int = DEFAULT_REFERENCE_SIZE,
            seed: int = 0, batch_size: int = 64, workspace: str | None = None) -> MonitorResult:
    """Check a window of served traffic against the teacher and the reference set; see the module doc.

    Logged scores are used when present (`student_dir` then only supplies the calibration); without a
    `score` column the sample is scored with `student_dir`. The sample is labelled by `teacher_dir`
    (default: the teacher that labelled the reference set) unless the window already carries teacher
    labels, as a previous run's sample.parquet does (re-checking it, e.g. with new thresholds, is then
    cheap). Bad input raises DataError/FileNotFoundError with a clear message.
    """
    timings: dict[str, float] = {}
    with _timed(timings, "read"):
        _check_sizes(sample_size=sample_size, max_pairs_per_query=max_pairs_per_query,
                     reference_size=reference_size)
        limits = load_thresholds(thresholds, overrides)
        if workspace:
            check_workspace(workspace)  # before the slow part, which a bad path would otherwise waste
        _check_output_outside_window(output_uri, window_uri)
        reference, meta = read_reference(reference_uri)
        raw_window = _reuse_sample_scores(window.read_window(window_uri))
        logged = window.validate_window(raw_window, path=window_uri, need_scores=student_dir is None)
        carries_labels = _has_teacher_labels(raw_window, window_uri)  # checked here, where rows have their places
    served = window.model_versions(logged)
    warnings = _version_warnings(_served_by_reference(logged, meta), served, meta)
    for message in warnings:
        log.warning("%s", message)

    with _timed(timings, "sample"):
        unique = window.deduplicate(logged)
        if len(unique) <= sample_size:
            sample = unique.sample(frac=1.0, random_state=seed).reset_index(drop=True)
        else:
            sample = window.sample_by_query(unique, sample_size, seed=seed,
                                            max_pairs_per_query=max_pairs_per_query)
        reference = _reference_sample(reference, reference_size, seed=seed)

    with _timed(timings, "student_scoring"):
        if window.SCORE in sample.columns:
            raw, scores_from = sample[window.SCORE].to_numpy(dtype=np.float64), "logged"
            calibration = scores.student_calibration(student_dir) if student_dir else meta.calibration
        else:
            raw, calibration = scores.student_scores(sample, student_dir, batch_size=batch_size)
            scores_from = "student"
        sample[schema.STUDENT_SCORE] = raw
        sample[features.STUDENT_GRADE] = scores.to_grade_scale(raw, calibration)

    with _timed(timings, "teacher_labelling"):
        if carries_labels:  # e.g. a previous run's sample.parquet, re-checked
            labelled, labels_from = sample, "window"
        else:
            teacher_dir = teacher_dir or meta.teacher_dir
            if not teacher_dir:
                raise ValueError(f"no teacher given and the reference set {reference_uri} records none")
            labelled, labels_from = scores.teacher_label(sample, teacher_dir, batch_size=batch_size), teacher_dir
    num_grades = len(labelled[schema.TEACHER_PROBS].iloc[0])
    if num_grades != meta.num_grades:
        raise DataError(f"the teacher has {num_grades} grades but the reference set {meta.num_grades}: "
                        "they come from different setups", path=reference_uri)

    with _timed(timings, "features"):
        labelled[report.SERVED_BY_REFERENCE_MODEL] = _served_by_reference(labelled, meta)
        current = _prepare(labelled, num_grades, limits)
        baseline = _prepare(reference.assign(**{report.SERVED_BY_REFERENCE_MODEL: 1.0}), num_grades, limits)
    with_source = schema.SOURCE in current.columns and schema.SOURCE in baseline.columns
    start, end, end_time = _time_range(logged)
    run_name = f"window {start} .. {end}" if start else f"window {window_uri}"
    with _timed(timings, "report"):
        snapshot, checks = report.run_report(
            current, baseline, limits, with_source=with_source, seed=seed, timestamp=end_time, name=run_name,
            metadata={"window": str(window_uri), "reference": str(reference_uri), "model": meta.model,
                      "warnings": " | ".join(warnings) or "none"},  # the UI's metadata values are strings
            tags=["kdrank", meta.model] + (["version-mismatch"] if warnings else []))
        outcome = report.summarise(snapshot, checks)

    summary = {
        **outcome,
        "warnings": warnings,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "window": {"uri": str(window_uri), "rows": len(logged), "unique_pairs": len(unique),
                   "queries": int(unique[schema.QUERY_ID].nunique()), "start": start, "end": end,
                   "served_by": served},
        "sample": {"rows": len(current), "queries": int(current[schema.QUERY_ID].nunique()), "seed": seed,
                   "student_scores": scores_from, "teacher_labels": str(labels_from)},
        "reference": {"uri": str(reference_uri), "rows": len(baseline), "model": meta.model,
                      "num_grades": meta.num_grades},
        "thresholds": limits.to_dict(),
        "outputs": {name: storage.join(output_uri, name)
                    for name in (HTML_FILE, SNAPSHOT_FILE, SAMPLE_FILE, SUMMARY_FILE)},
        "timings_s": timings,
    }
    # The report first: a workspace that fails now must not lose it. summary.json stays last.
    with _timed(timings, "write"):
        html_uri = _write_report(output_uri, snapshot, current)
    workspace_error = None
    if workspace:
        with _timed(timings, "workspace"):
            try:
                summary["workspace"] = add_to_workspace(snapshot, workspace)
            except WorkspaceError as err:
                workspace_error = err
                summary["workspace"] = {"dir": str(workspace), "error": str(err)}
    summary_uri = _write_summary(output_uri, summary)
    outcome_text = "PASSED" if summary["passed"] else "FAILED"
    log.info("monitoring %s: %s (%s)", window_uri, outcome_text,
             ", ".join(f"{k}={v}" for k, v in sorted(summary["status_counts"].items())))
    if workspace_error is not None:
        raise WorkspaceError(f"{workspace_error}; the run ({outcome_text}) is in {summary_uri} and "
                             f"{html_uri} (add it later with `kdrank monitor add`)") from workspace_error
    return MonitorResult(passed=summary["passed"], summary=summary, html_path=html_uri, json_path=summary_uri)


def format_summary(summary: dict) -> str:
    """A plain-text table of the tests, for the terminal."""
    lines = [f"{'test':34} {'status':8} {'value':>9} {'reference':>9}  condition"]
    for test in summary["tests"]:
        value = "n/a" if test["value"] is None else f"{test['value']:.4f}"
        ref = "" if test["reference_value"] is None else f"{test['reference_value']:.4f}"
        note = "" if test["critical"] else " (warning only)"
        lines.append(f"{test['key']:34} {test['status']:8} {value:>9} {ref:>9}  "
                     f"{test['condition']} {test['threshold']:g}{note}")
    lines += [f"WARNING: {w}" for w in summary.get("warnings", [])]
    lines.append(f"{'PASSED' if summary['passed'] else 'FAILED'}: "
                 + ", ".join(f"{k} {v}" for k, v in sorted(summary["status_counts"].items())))
    return os.linesep.join(lines)
