"""The Evidently report layer on scored frames: test directions, overrides, optional checks, edge cases."""

from __future__ import annotations

import monitor_traffic as traffic
import numpy as np
import pytest

from components import schema
from monitoring import features, report
from monitoring.config import load_thresholds


def run(current, reference, overrides=(), with_source=False, text=False) -> dict:
    """Report and summary; text drift (the slowest check) only when a test is about it."""
    overrides = [*overrides, *([] if text else ["text_drift.enabled=false"])]
    snapshot, checks = report.run_report(current, reference, load_thresholds(None, overrides),
                                         with_source=with_source)
    return report.summarise(snapshot, checks)


def statuses(summary: dict) -> dict[str, str]:
    return {t["key"]: t["status"] for t in summary["tests"]}


@pytest.fixture(scope="module")
def frames():
    return traffic.scored_frame(300, 4, seed=1), traffic.scored_frame(200, 4, seed=2)


def test_agreeing_frames_pass_and_a_stricter_threshold_fails(frames):
    reference, current = frames
    assert run(current, reference)["passed"]
    strict = run(current, reference, ["agreement.mae_max=0.01", "agreement.grade_agreement_min=0.99"])
    assert sorted(strict["failed"]) == ["agreement.grade", "agreement.mae"]
    mae = next(t for t in strict["tests"] if t["key"] == "agreement.mae")
    assert mae["threshold"] == 0.01 and 0.05 < mae["value"] < 0.12 and mae["condition"] == "lte"


def test_p_value_methods_test_in_the_other_direction(frames):
    reference, current = frames
    shifted = current.assign(**{features.STUDENT_GRADE: current[features.STUDENT_GRADE] + 0.4})
    options = ["prediction_drift.method=ks", "prediction_drift.threshold=0.05"]
    same, moved = run(current, reference, options), run(shifted, reference, options)
    drift = {s: next(t for t in r["tests"] if t["key"] == "prediction_drift") for s, r in (("same", same),
                                                                                           ("moved", moved))}
    assert drift["same"]["condition"] == "gte" and drift["same"]["status"] == "SUCCESS"
    assert drift["same"]["value"] > 0.05 and drift["moved"]["value"] < 1e-6
    assert drift["moved"]["status"] == "FAIL"


def test_source_drift_only_when_both_sides_log_a_source(frames):
    reference, current = frames
    assert "input_drift.source" not in statuses(run(current, reference))
    reference = reference.assign(**{schema.SOURCE: np.where(np.arange(len(reference)) % 2, "bm25", "biencoder")})
    same = current.assign(**{schema.SOURCE: np.where(np.arange(len(current)) % 2, "bm25", "biencoder")})
    moved = current.assign(**{schema.SOURCE: "random"})
    assert statuses(run(same, reference, with_source=True))["input_drift.source"] == "SUCCESS"
    assert statuses(run(moved, reference, with_source=True))["input_drift.source"] == "FAIL"


def test_text_drift_runs_on_distinct_texts_and_can_be_switched_off(frames):
    reference, current = frames
    assert not any(k.endswith("_text") for k in statuses(run(current, reference)))
    garden = traffic.scored_frame(200, 4, seed=2, vocab=traffic.GARDEN)
    same, moved = run(current, reference, text=True), run(garden, reference, text=True)
    assert statuses(same)["input_drift.query_text"] == "SUCCESS"
    assert statuses(moved)["input_drift.product_text"] == "WARNING"  # another category; a warning by default


@pytest.mark.parametrize("k", [50, 5_000])  # fewer than each column's distinct texts, and more than all rows
def test_report_frame_keeps_k_distinct_texts_per_text_column(frames, k):
    reference, _ = frames
    kept = report.report_frame(reference, with_source=False, with_text=True, text_rows=k, seed=0)
    assert len(kept) == len(reference)
    for column in report.TEXT_COLUMNS:
        values = kept[column].dropna()
        assert not values.duplicated().any(), column
        assert len(values) == min(k, reference[column].nunique()), column
        assert (values.to_numpy() == reference[column].to_numpy()[values.index]).all(), column  # on their own rows
    without = report.report_frame(reference, with_source=False, with_text=False, text_rows=k, seed=0)
    assert not set(report.TEXT_COLUMNS) & set(without.columns)


def test_no_rankable_query_fails_rank_correlation_instead_of_crashing(frames):
    reference, _ = frames
    singles = traffic.scored_frame(200, 4, seed=3).drop_duplicates(schema.QUERY_ID)  # one pair per query
    singles = features.add_agreement_columns(singles, 3, min_pairs_per_query=3)
    summary = run(singles, reference)
    rank = next(t for t in summary["tests"] if t["key"] == "agreement.rank_correlation")
    assert rank["value"] is None and rank["status"] in ("FAIL", "ERROR")
    assert "agreement.rank_correlation" in summary["failed"]
