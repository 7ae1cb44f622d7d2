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
    with pytest.raises(DataError, match=r"w.jsonl, row 2, column .query.: 1 row\(s\) of the window have an empty"):
        window.validate_window(frame, path="w.jsonl", need_scores=True)
    frame = pd.DataFrame({"query": ["a", "b"], "product_text": ["x", "y"], "score": [1.0, float("inf")]})
    with pytest.raises(DataError, match="w.jsonl, row 2, column 'score'"):
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
    frame.loc[busy, window.QUERY_REQUESTS] = 500  # asked 500 times as often as any other query
    samples = [set(window.sample_by_query(frame, 50, seed=s, max_pairs_per_query=10)[schema.QUERY])
               for s in range(20)]  # 5 of 60 queries each time
    assert sum("query 0" in s for s in samples) >= 19
    assert sum("query 7" in s for s in samples) <= 6


def broad_and_narrow(with_request_id: bool = True, with_time: bool = True) -> pd.DataFrame:
    """Query a: 10 requests of 50 products each; query b: 100 requests of 2 products each."""
    rows = []
    for query, requests, products in (("broad query a", 10, 50), ("narrow query b", 100, 2)):
        for r in range(requests):
            rows += [{"request_id": f"{query}-{r}", "time": f"2025-01-01T00:00:00.{r:03d}+00:00", "query": query,
                      "product_text": f"{query} product {p}", "score": 0.0} for p in range(products)]
    frame = pd.DataFrame(rows)
    frame = frame if with_request_id else frame.drop(columns=["request_id"])
    return frame if with_time else frame.drop(columns=["time"])


@pytest.mark.parametrize("request_id, time", [(True, True), (False, True), (False, False)])
def test_queries_are_weighted_by_requests_not_by_logged_rows(request_id, time):
    """The broad query logs 500 rows in 10 requests, the narrow one 200 rows in 100 requests: traffic is
    requests, so the narrow query is drawn first about 100 times in 110 (by rows it would be 200 in 700)."""
    valid = window.validate_window(broad_and_narrow(request_id, time), path="w", need_scores=True)
    unique = window.deduplicate(valid)
    asked = unique.groupby(schema.QUERY)[window.QUERY_REQUESTS].first().to_dict()
    assert asked == {"broad query a": 10, "narrow query b": 100}
    first = [window.sample_by_query(unique, 1, seed=s, max_pairs_per_query=10)[schema.QUERY].iloc[0]
             for s in range(400)]
    assert 0.03 < np.mean([q == "broad query a" for q in first]) < 0.16


def test_deduplicate_orders_by_real_time_across_offsets_and_part_types(tmp_path):
    """10:00+02:00 is before 09:00+00:00; a Parquet part with timestamps and a JSONL part with strings mix."""
    rows = [{"time": "2025-01-01T10:00:00+02:00", "query": "drill", "product_text": "drill 18v", "score": 1.0},
            {"time": "2025-01-01T09:00:00+00:00", "query": "drill", "product_text": "drill 18v", "score": 2.0}]
    jsonl = tmp_path / "jsonl"
    jsonl.mkdir()
    pd.DataFrame(rows).to_json(jsonl / "a.jsonl", orient="records", lines=True)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    first = pd.DataFrame(rows[:1]).assign(time=lambda f: pd.to_datetime(f["time"], utc=True))
    first.to_parquet(mixed / "a.parquet", index=False)
    pd.DataFrame(rows[1:]).to_json(mixed / "b.jsonl", orient="records", lines=True)
    for sink in (jsonl, mixed):
        valid = window.validate_window(window.read_window(str(sink)), path=str(sink), need_scores=True)
        unique = window.deduplicate(valid)
        assert unique["score"].tolist() == [2.0] and unique["requests"].tolist() == [2]
        assert str(unique[window.TIME].iloc[0]) == "2025-01-01 09:00:00+00:00"


def test_times_in_mixed_iso_formats_are_each_parsed():
    times = pd.Series(["2025-01-01T00:00:00+00:00", "2025-01-01T00:00:05.250+00:00", "2025-01-01T01:00:00Z",
                       "not a time", None])
    parsed = window.parse_times(times)
    assert parsed.iloc[:3].tolist() == [pd.Timestamp("2025-01-01T00:00:00Z"),
                                        pd.Timestamp("2025-01-01T00:00:05.250Z"),
                                        pd.Timestamp("2025-01-01T01:00:00Z")]
    assert parsed.iloc[3:].isna().all()


@pytest.mark.parametrize("size, per_query, message", [(10, 0, "max_pairs_per_query must be >= 1, got 0"),
                                                      (10, -1, "max_pairs_per_query must be >= 1, got -1"),
                                                      (0, 10, "sample size must be >= 1, got 0")])
def test_sample_by_query_rejects_sizes_below_one(size, per_query, message):
    with pytest.raises(ValueError, match=message):
        window.sample_by_query(many_queries(), size, seed=0, max_pairs_per_query=per_query)


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


def test_a_bad_row_in_a_folder_window_is_named_by_its_part_file_and_line(tmp_path):
    folder = tmp_path / "window"
    folder.mkdir()
    good = pd.DataFrame({"query": ["a"] * 5, "product_text": list("vwxyz"), "score": [1.0] * 5})
    good.to_json(folder / "requests-a.jsonl", orient="records", lines=True)
    bad = good.assign(score=[1.0, 2.0, 3.0, float("nan"), 5.0])
    bad.to_json(folder / "requests-b.jsonl", orient="records", lines=True)
    with pytest.raises(DataError, match=r"requests-b.jsonl, row 4, column 'score': 1 of the window's 10"):
        window.validate_window(window.read_window(str(folder)), path=str(folder), need_scores=True)
