"""Request log sinks (local JSONL file, Parquet parts, gs:// parts) and the monitoring job reading them."""

from __future__ import annotations

from pathlib import Path

import pytest

from components import storage
from monitoring.window import read_window, validate_window
from serving.requestlog import COLUMNS, RequestLogger, read_request_log

PRODUCTS = ["cordless drill", "Küchenarmatur – Edelstahl", "led bulb"]
SCORES = [0.5, 2.0, -1.0]


def _log_two_requests(logger: RequestLogger) -> list[str]:
    first = logger.log("drill", PRODUCTS, SCORES, model_name="kdrank_student", model_version="3",
                       product_ids=["p1", "p2", "p3"], latency_ms=12.5)
    second = logger.log("lampe ü", PRODUCTS[:1], [0.1], model_name="kdrank_student", model_version="3")
    return [first, second]


def _check(frame, request_ids):
    assert list(frame.columns) == COLUMNS  # the documented columns, in their order (docs/serving.md)
    assert len(frame) == 4 and list(frame["request_id"].unique()) == request_ids
    first = frame[frame["request_id"] == request_ids[0]].set_index("product_text")
    assert first.loc["Küchenarmatur – Edelstahl", "rank"] == 1 and first.loc["led bulb", "rank"] == 3
    assert first["score"].to_dict() == dict(zip(PRODUCTS, SCORES, strict=True))
    assert set(frame["model_version"].astype(str)) == {"3"} and first.loc["cordless drill", "product_id"] == "p1"


def test_local_jsonl_file_is_appended(tmp_path):
    sink = tmp_path / "logs" / "requests.jsonl"
    with RequestLogger(str(sink)) as logger:
        ids = _log_two_requests(logger)
    with RequestLogger(str(sink), flush_rows=1) as logger:  # flush after every request
        more = logger.log("q", ["p"], [1.0], model_name="m", model_version="1")
        assert len(sink.read_text().splitlines()) == 5
    frame = read_request_log(str(sink))
    _check(frame.iloc[:4], ids)
    assert frame.iloc[4]["request_id"] == more


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_directory_sink_writes_one_part_per_flush_and_monitoring_reads_it(tmp_path, fmt):
    sink = tmp_path / "window"
    logger = RequestLogger(str(sink), fmt=fmt, flush_rows=3)
    ids = _log_two_requests(logger)  # 3 rows -> flushed as the first part
    assert len(logger.files) == 1
    logger.close()
    assert len(logger.files) == 2 and all(f.endswith(f".{fmt}") for f in logger.files)
    assert not [p for p in Path(sink).iterdir() if p.name.startswith(".")]  # no temporary files left
    _check(read_request_log(str(sink)), ids)
    window = validate_window(read_window(str(sink)), path=str(sink), need_scores=True)
    assert len(window) == 4 and window["score"].dtype == float


def test_gcs_sink(gcs_emulator):
    uri = f"gs://{gcs_emulator}/serving/request-log"
    with RequestLogger(uri, fmt="parquet") as logger:
        ids = _log_two_requests(logger)
    assert [f.endswith(".parquet") for f in storage.list_files(uri)] == [True]
    _check(read_request_log(uri), ids)
    assert len(read_window(uri)) == 4


def test_bad_sinks_are_refused(tmp_path):
    with pytest.raises(ValueError, match="single-file sink"):
        RequestLogger(str(tmp_path / "log.parquet"))
    with pytest.raises(ValueError, match="single-file sink"):
        RequestLogger("gs://bucket/log.jsonl")
    with pytest.raises(ValueError, match="format"):
        RequestLogger(str(tmp_path), fmt="csv")
    with pytest.raises(ValueError, match="3 products but 2 scores"):
        RequestLogger(str(tmp_path)).log("q", PRODUCTS, [1.0, 2.0], model_name="m", model_version="1")


def test_only_a_jsonl_name_is_an_append_file(tmp_path):
    sink = tmp_path / "logs.v2"  # a dot in the last part does not make it a file
    with RequestLogger(str(sink), fmt="parquet") as logger:
        ids = _log_two_requests(logger)
    assert not logger.append_file and sink.is_dir() and logger.files[0].endswith(".parquet")
    _check(read_request_log(str(sink)), ids)
    with pytest.raises(ValueError, match="not 'parquet'"):
        RequestLogger(str(tmp_path / "requests.jsonl"), fmt="parquet")


def test_gcs_sink_with_a_dot_is_a_prefix_never_a_local_path(gcs_emulator, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = f"gs://{gcs_emulator}/serving/request.logs"
    with RequestLogger(uri) as logger:
        ids = _log_two_requests(logger)
    assert not logger.append_file and not any(tmp_path.iterdir())  # nothing under ./gs:
    assert [f.endswith(".jsonl") for f in storage.list_files(uri)] == [True]
    _check(read_request_log(uri), ids)


def test_failed_flush_keeps_the_rows_and_names_the_sink(tmp_path):
    from serving.requestlog import RequestLogError

    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the sink's parent directory should be")
    sink = blocker / "log"
    logger = RequestLogger(str(sink))
    ids = _log_two_requests(logger)
    with pytest.raises(RequestLogError, match=f"request log {sink}: could not write 4 rows"):
        logger.flush()
    with pytest.raises(OSError, match=str(sink)):  # and again: nothing was dropped
        logger.close()
    blocker.unlink()
    written = logger.flush()
    assert written and Path(written).parent == sink and logger.flush() is None
    _check(read_request_log(str(sink)), ids)


def test_a_failed_automatic_flush_does_not_fail_the_request(tmp_path, caplog):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory")
    logger = RequestLogger(str(blocker / "log"), flush_rows=3)
    ids = _log_two_requests(logger)  # the 3rd row triggers a flush that fails: warned, rows kept
    assert "could not write 3 rows" in caplog.text and not logger.files
    blocker.unlink()
    logger.close()
    _check(read_request_log(str(blocker / "log")), ids)


def test_product_ids_must_match_the_products(tmp_path):
    logger = RequestLogger(str(tmp_path))
    for ids in (["p1"], ["p1", "p2", "p3", "p4"]):
        with pytest.raises(ValueError, match=f"3 products but {len(ids)} product_ids"):
            logger.log("q", PRODUCTS, SCORES, model_name="m", model_version="1", product_ids=ids)
    assert logger.flush() is None


def test_ranks_follow_the_client_order_ties_and_nan_included(tmp_path):
    import numpy as np

    scores = np.array([1.0, np.nan, 2.0, 1.0, np.nan, -3.0], dtype=np.float32)
    products = [f"p{i}" for i in range(len(scores))]
    with RequestLogger(str(tmp_path / "requests.jsonl")) as logger:
        logger.log("q", products, scores, model_name="m", model_version="1")
    frame = read_request_log(str(tmp_path / "requests.jsonl"))
    client_order = np.argsort(-scores, kind="stable")  # serving/client.py: best first, ties in input order
    assert list(frame.sort_values("rank")["product_text"]) == [products[i] for i in client_order]
    assert sorted(frame["rank"]) == list(range(1, len(scores) + 1))
