"""Request-log windows (as serving's RequestLogger writes them), sampling by query, input features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from components import schema
from components.schema import DataError
from monitoring import features, window
from serving.requestlog import RequestLogger


def logged(tmp_path, fmt: str = "jsonl") -> str:
    """A window written by the real request logger: a directory of part files."""
    sink = tmp_path / "logs"
    with RequestLogger(str(sink), fmt=fmt, flush_rows=5) as logger:
        logger.log("cordless drill", ["drill 18v", "drill bit set", "hammer"], [2.0, 1.0, -1.0],
                   model_name="kdrank_student", model_version="3", product_ids=["a", "b", "c"])
        logger.log("red paint", ["red paint 1 gal", "blue paint"], [1.5, 0.1], model_name="kdrank_student",
                   model_version="3")
        logger.log("cordless drill", ["drill 18v"], [2.5], model_name="kdrank_student", model_version="3",
                   product_ids=["a"])
    return str(sink)


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_reads_what_the_request_logger_writes(tmp_path, fmt):
    frame = window.read_window(logged(tmp_path, fmt))
    assert len(frame) == 6
    valid = window.validate_window(frame, path="logs", need_scores=True)
    assert valid[schema.QUERY_ID].nunique() == 2
    # product_id where logged, a hash of the text where not; the same text is the same product
    assert set(valid.loc[valid[schema.QUERY] == "cordless drill", schema.PRODUCT_ID]) == {"a", "b", "c"}
    assert valid.loc[valid[schema.QUERY] == "red paint", schema.PRODUCT_ID].str.startswith("h:").all()
    assert window.model_versions(valid) == {"kdrank_student:3": 6}


def test_deduplicate_keeps_the_latest_and_counts_requests(tmp_path):
    valid = window.validate_window(window.read_window(logged(tmp_path)), path="logs", need_scores=True)
    unique = window.deduplicate(valid)
    assert len(unique) == 5
    drill = unique[(unique[schema.QUERY] == "cordless drill") & (unique[schema.PRODUCT_ID] == "a")].iloc[0]
    assert drill["score"] == 2.5 and drill["requests"] == 2


def test_missing_window_and_bad_rows_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no request-log files"):
        window.read_window(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no such window file"):
        window.read_window(str(tmp_path / "nowhere.jsonl"))
    frame = pd.DataFrame({"query": ["a", " ", "c"], "product_text": ["x", "y", "z"], "score": [1.0, 2.0, 3.0]})
    with pytest.raises(DataError, match=r"row 1, column 'query': 1 row\(s\) have an empty query"):
        window.validate_window(frame, path="w.jsonl", need_scores=True)
    frame = pd.DataFrame({"query": ["a", "b"], "product_text": ["x", "y"], "score": [1.0, float("inf")]})
    with pytest.raises(DataError, match="row 1, column 'score'"):
        window.validate_window(frame, path="w.jsonl", need_scores=True)
    frame = pd.DataFrame({"query": ["a"], "product_text": ["x"], "score": ["high"]})
    with pytest.raises(DataError, match="not numbers"):
        window.validate_window(frame, path="w.jsonl", need_scores=True)


def many_queries(n_queries: int = 60, per_query: int = 30) -> pd.DataFrame:
    rows = [(f"query {q}", f"product {q}-{p}") for q in range(n_queries) for p in range(per_query)]
    frame = pd.DataFrame(rows, columns=[schema.QUERY, schema.PRODUCT_TEXT])
    frame["score"] = np.arange(len(frame), dtype=float)
    return window.deduplicate(window.validate_window(frame, path="w", need_scores=True))


def test_sample_by_query_keeps_queries_whole_up_to_the_cap():
    frame = many_queries()
    sample = window.sample_by_query(frame, 200, seed=0, max_pairs_per_query=10)
    per_query = sample.groupby(schema.QUERY_ID).size()
    assert len(sample) == 200 and per_query.max() == 10 and len(per_query) == 20
    assert not sample.duplicated([schema.QUERY_ID, schema.PRODUCT_ID]).any()
    again = window.sample_by_query(frame, 200, seed=0, max_pairs_per_query=10)
    other = window.sample_by_query(frame, 200, seed=1, max_pairs_per_query=10)
    assert again.equals(sample) and not other.equals(sample)


def test_sample_by_query_follows_traffic():
    frame = many_queries()
    busy = frame[schema.QUERY] == "query 0"
    frame.loc[busy, "requests"] = 500  # served 500 times as often as any other query
    samples = [set(window.sample_by_query(frame, 50, seed=s, max_pairs_per_query=10)[schema.QUERY])
               for s in range(20)]  # 5 of 60 queries each time
    assert sum("query 0" in s for s in samples) >= 19
    assert sum("query 7" in s for s in samples) <= 6


def test_input_features_by_hand():
    frame = pd.DataFrame({schema.QUERY: ["Cordless Drill", "red paint", ""],
                          schema.PRODUCT_TEXT: ["DeWalt cordless drill kit, 18V", "blue paint brush", "lamp"]})
    out = features.add_input_features(frame)
    assert out[features.QUERY_TOKENS].tolist() == [2, 2, 0]
    assert out[features.PRODUCT_TOKENS].tolist() == [5, 3, 1]
    assert out[features.QUERY_TOKEN_OVERLAP].tolist() == [1.0, 0.5, 0.0]


def test_per_query_spearman_matches_scipy_and_sits_on_one_row_per_query():
    rng = np.random.default_rng(0)
    qid = rng.integers(0, 40, 400).astype(str)
    frame = pd.DataFrame({schema.QUERY_ID: qid, features.STUDENT_GRADE: np.round(rng.normal(size=400), 1),
                          schema.TEACHER_SCORE: rng.normal(size=400)})
    frame.loc[frame[schema.QUERY_ID] == "3", features.STUDENT_GRADE] = 1.0  # constant: no ranking
    column = features.per_query_spearman(frame, min_pairs=3)
    for query, group in frame.groupby(schema.QUERY_ID):
        values = column[group.index].dropna()
        if query == "3" or len(group) < 3:
            assert values.empty
            continue
        expected = stats.spearmanr(group[features.STUDENT_GRADE], group[schema.TEACHER_SCORE]).statistic
        assert len(values) == 1 and values.index[0] == group.index[0]
        assert values.iloc[0] == pytest.approx(expected, abs=1e-12)


def test_implied_grade_rounds_and_clips():
    assert features.implied_grade(np.array([-0.4, 0.49, 0.51, 1.7, 2.6]), 3).tolist() == [0, 0, 1, 2, 2]
