"""The Evidently drift report: one metric per check, each with the explicit test condition from thresholds.

Checks, each a stable key in the JSON summary:
- `rows`: the sample is large enough to judge;
- `agreement.*`: student vs teacher on today's window (MAE, RMSE on the grade scale, mean per-query
  Spearman, share of equal implied grades);
- `prediction_drift`: student grade-scale scores now vs the reference; `teacher_drift`: the same for
  the teacher's scores (how relevant today's candidates are);
- `input_drift.*`: query/product length and overlap, retrieval source when both sides carry it,
  and query/product text (a domain classifier on a sample);
- `model_version`: share of the window served by the model version the reference describes.
Evidently is imported lazily: the engine must import without it.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from components import schema
from monitoring import features
from monitoring.config import DriftCheck, Thresholds

log = logging.getLogger(__name__)

SERVED_BY_REFERENCE_MODEL = "served_by_reference_model"  # 1.0 when the row's model version is the reference's
TEXT_COLUMNS = (schema.QUERY, schema.PRODUCT_TEXT)
TEXT_KEYS = {schema.QUERY: "query_text", schema.PRODUCT_TEXT: "product_text"}
FAILING = ("FAIL", "ERROR")


@dataclass
class Check:
    """One test of the report: the Evidently metric it runs and the condition it applies."""

    key: str
    metric: Any
    condition: str  # lt, lte, gt, gte
    threshold: float
    critical: bool
    what: str


def _test(condition: str, threshold: float, critical: bool):
    from evidently import tests

    return getattr(tests, condition)(threshold, is_critical=critical)


def _drift(key: str, column: str, check: DriftCheck, what: str) -> Check:
    """A drift test: a distance must stay below the threshold, a p-value at or above it."""
    from evidently.metrics import ValueDrift

    condition = "gte" if check.is_p_value else "lt"
    metric = ValueDrift(column=column, method=check.method, threshold=check.threshold,
                        tests=[_test(condition, check.threshold, check.critical)])
    return Check(key, metric, condition, check.threshold, check.critical, what)


def build_checks(thresholds: Thresholds, *, with_source: bool, with_text: bool) -> list[Check]:
    from evidently.metrics import MAE, RMSE, Accuracy, MeanValue, RowCount

    t, a = thresholds, thresholds.agreement
    checks = [
        Check("rows", RowCount(tests=[_test("gte", t.min_rows, True)]), "gte", t.min_rows, True,
              "sampled pairs in the window"),
        Check("agreement.mae", MAE(mean_tests=[_test("lte", a.mae_max, True)], std_tests=[]), "lte",
              a.mae_max, True, "mean absolute difference of student and teacher scores on the grade scale"),
        Check("agreement.rmse", RMSE(tests=[_test("lte", a.rmse_max, True)]), "lte", a.rmse_max, True,
              "root mean squared difference of student and teacher scores on the grade scale"),
        Check("agreement.rank_correlation",
              MeanValue(column=features.QUERY_SPEARMAN, tests=[_test("gte", a.rank_correlation_min, True)]),
              "gte", a.rank_correlation_min, True, "mean over queries of Spearman(student, teacher)"),
        Check("agreement.grade", Accuracy(tests=[_test("gte", a.grade_agreement_min, True)]), "gte",
              a.grade_agreement_min, True, "share of pairs where student and teacher imply the same grade"),
        _drift("prediction_drift", features.STUDENT_GRADE, t.prediction_drift,
               "student grade-scale scores vs the reference"),
        _drift("teacher_drift", schema.TEACHER_SCORE, t.teacher_drift, "teacher scores vs the reference"),
    ]
    checks += [_drift(f"input_drift.{c}", c, t.input_drift, f"{c} vs the reference")
               for c in features.NUMERIC_FEATURES]
    if with_source:
        checks.append(_drift("input_drift.source", schema.SOURCE, t.source_drift,
                             "retrieval source vs the reference"))
    if with_text:
        checks += [_drift(f"input_drift.{TEXT_KEYS[c]}", c, t.text_drift,
                          f"{c} text vs the reference (domain classifier)") for c in TEXT_COLUMNS]
    mv = t.model_version
    checks.append(Check(
        "model_version",
        MeanValue(column=SERVED_BY_REFERENCE_MODEL, tests=[_test("gte", mv.min_share, mv.critical)]),
        "gte", mv.min_share, mv.critical, "share of window rows served by the reference's model version"))
    return checks


def data_definition(*, with_source: bool, with_text: bool):
    from evidently import DataDefinition, MulticlassClassification, Regression

    return DataDefinition(
        numerical_columns=[features.STUDENT_GRADE, schema.TEACHER_SCORE, *features.NUMERIC_FEATURES,
                           features.QUERY_SPEARMAN, SERVED_BY_REFERENCE_MODEL],
        categorical_columns=[features.TEACHER_GRADE_LABEL, features.STUDENT_GRADE_LABEL]
        + ([schema.SOURCE] if with_source else []),
        text_columns=list(TEXT_COLUMNS) if with_text else [],
        regression=[Regression(target=schema.TEACHER_SCORE, prediction=features.STUDENT_GRADE)],
        classification=[MulticlassClassification(target=features.TEACHER_GRADE_LABEL,
                                                  prediction_labels=features.STUDENT_GRADE_LABEL)],
    )


def report_frame(frame: pd.DataFrame, *, with_source: bool, with_text: bool, text_rows: int,
                 seed: int) -> pd.DataFrame:
    """The columns the report reads. Each text column keeps `text_rows` random distinct values (NaN
    elsewhere, which the drift test skips): the classifier is the slowest check, and a query repeated
    on each of its pairs would let it tell the sides apart by memorising queries rather than by drift."""
    columns = [features.STUDENT_GRADE, schema.TEACHER_SCORE, *features.NUMERIC_FEATURES,
               features.QUERY_SPEARMAN, SERVED_BY_REFERENCE_MODEL, features.TEACHER_GRADE_LABEL,
               features.STUDENT_GRADE_LABEL]
    columns += [schema.SOURCE] if with_source else []
    out = frame[columns].reset_index(drop=True).copy()
    if with_text:
        rng = np.random.default_rng(seed)
        for column in TEXT_COLUMNS:
            candidates = np.flatnonzero(~frame[column].duplicated().to_numpy())
            rows = np.zeros(len(frame), dtype=bool)
            rows[rng.permutation(candidates)[:text_rows]] = True
            out[column] = frame[column].to_numpy(dtype=object)
            out.loc[~rows, column] = None
    return out


def run_report(current: pd.DataFrame, reference: pd.DataFrame, thresholds: Thresholds, *, with_source: bool,
               seed: int = 0, timestamp: datetime | None = None, name: str | None = None,
               metadata: dict | None = None, tags: list[str] | None = None):
    """Run the report on prepared frames (features and agreement columns present); (snapshot, checks)."""
    from evidently import Dataset, Report

    with_text = thresholds.text_drift.enabled
    checks = build_checks(thresholds, with_source=with_source, with_text=with_text)
    definition = data_definition(with_source=with_source, with_text=with_text)
    frames = [report_frame(f, with_source=with_source, with_text=with_text,
                           text_rows=thresholds.text_drift.sample_size, seed=seed + i)
              for i, f in enumerate((current, reference))]
    datasets = [Dataset.from_pandas(f, data_definition=definition) for f in frames]
    report = Report([c.metric for c in checks], metadata=metadata or {}, tags=tags or [])
    with warnings.catch_warnings():
        # sklearn warnings from inside Evidently's widgets (R^2 on tiny slices, the text classifier's
        # iteration cap, labels absent from a small window): noise to a reader of the monitoring log.
        from sklearn.exceptions import ConvergenceWarning, UndefinedMetricWarning

        for category in (ConvergenceWarning, UndefinedMetricWarning):
            warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("ignore", message="A single label was found")
        snapshot = report.run(datasets[0], datasets[1], timestamp=timestamp, name=name)
    return snapshot, checks


def _value(result) -> float | None:
    if result is None:
        return None
    value = result.mean.value if hasattr(result, "mean") else getattr(result, "value", None)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def summarise(snapshot, checks: list[Check]) -> dict:
    """Every check's status, value, reference value and threshold, and whether the run passed."""
    from evidently.core.report import ReferenceMetricNotFound

    by_id = {c.metric.get_fingerprint(): c for c in checks}
    results = {c.key: None for c in checks}
    for result in snapshot.tests_results:
        check = by_id.get(result.metric_config.metric_id)
        if check is not None:
            results[check.key] = result
    tests = []
    for check in checks:
        fingerprint = check.metric.get_fingerprint()
        try:
            reference_value = _value(snapshot.context.get_reference_metric_result(fingerprint))
        except (ReferenceMetricNotFound, KeyError):  # a metric without a reference side (e.g. drift)
            reference_value = None
        result = results[check.key]
        tests.append({
            "key": check.key,
            "status": result.status.value if result is not None else "ERROR",
            "critical": check.critical,
            "value": _value(snapshot.metric_results.get(fingerprint)),
            "reference_value": reference_value,
            "condition": check.condition,
            "threshold": check.threshold,
            "what": check.what,
            "description": result.description if result is not None else "the test did not run",
        })
    counts: dict[str, int] = {}
    for test in tests:
        counts[test["status"]] = counts.get(test["status"], 0) + 1
    failed = [t["key"] for t in tests if t["status"] in FAILING]
    return {"passed": not failed, "failed": failed, "status_counts": counts, "tests": tests}
