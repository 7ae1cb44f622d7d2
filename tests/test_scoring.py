"""components.scoring: score_file's output formats and input checks, PairScorer's argument checks."""

from __future__ import annotations

import gzip
import io
import json

import numpy as np
import pandas as pd
import pytest

from components import data, schema, scoring
from components.scoring import PairScorer, score_file

PAIRS = pd.DataFrame({schema.QUERY: ["drill", "lamp", "saw"],
                      schema.PRODUCT_TEXT: ["cordless drill 18 v", "led bulb", "circular saw blade"]})


@pytest.fixture
def pairs_csv(tmp_path) -> str:
    path = tmp_path / "pairs.csv"
    PAIRS.to_csv(path, index=False)
    return str(path)


@pytest.fixture
def no_scoring(monkeypatch):
    """Fails the test if score_file gets as far as loading a model."""
    def refuse(*args, **kwargs):
        raise AssertionError("score_file loaded the model before checking its input and output")

    monkeypatch.setattr(scoring, "PairScorer", refuse)


@pytest.mark.parametrize("name", ["scores.txt", "scores.parquet.gz"])
def test_unknown_output_format_is_refused_before_scoring(pairs_csv, tmp_path, no_scoring, name):
    with pytest.raises(schema.DataError, match="scores"):
        score_file("unused-model", pairs_csv, str(tmp_path / name))
    assert not (tmp_path / name).exists()


@pytest.mark.parametrize("name", ["scored.csv.gz", "scored.jsonl.gz"])
def test_gz_output_is_gzip_compressed(tiny_student_dir, pairs_csv, tmp_path, name):
    out = str(tmp_path / name)
    score_file(tiny_student_dir, pairs_csv, out, device="cpu", batch_size=2)
    with open(out, "rb") as handle:
        text = gzip.decompress(handle.read()).decode("utf-8")  # not gzip: BadGzipFile
    assert "student_score" in text
    frame = data.read_raw(out)
    assert list(frame[schema.QUERY]) == list(PAIRS[schema.QUERY]) and len(frame["student_score"]) == 3
    expected = PairScorer(tiny_student_dir, device="cpu").score(PAIRS[schema.QUERY], PAIRS[schema.PRODUCT_TEXT],
                                                                progress=False).score
    np.testing.assert_allclose(frame["student_score"].astype(float), expected, rtol=1e-6, atol=1e-6)


def test_teacher_probs_in_csv_are_json_lists(tiny_teacher_dir, pairs_csv, tmp_path):
    out = tmp_path / "scored.csv"
    score_file(tiny_teacher_dir, pairs_csv, str(out), device="cpu")
    frame = pd.read_csv(out)
    probs = np.array([json.loads(cell) for cell in frame[schema.TEACHER_PROBS]])
    assert probs.shape == (3, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(probs @ np.arange(3), frame[schema.TEACHER_SCORE], atol=1e-9)


@pytest.mark.parametrize(("fmt", "column", "row"), [("csv", schema.PRODUCT_TEXT, 2), ("jsonl", schema.QUERY, 3)])
def test_empty_query_or_product_text_is_a_data_error_naming_row_and_column(tmp_path, no_scoring, fmt, column,
                                                                           row):
    frame = PAIRS.copy()
    frame[column] = frame[column].astype(object)
    frame.loc[row - 1, column] = "  " if fmt == "csv" else None
    path = tmp_path / f"pairs.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_json(path, orient="records", lines=True)
    with pytest.raises(schema.DataError, match=f"row {row}, column '{column}': empty {column}") as err:
        score_file("unused-model", str(path), str(tmp_path / "out.csv"))
    assert (err.value.row, err.value.column) == (row, column)


def test_pair_scorer_checks_its_arguments(tiny_student_dir):
    scorer = PairScorer(tiny_student_dir, device="cpu")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        scorer.score(["q"], ["p"], batch_size=0, progress=False)
    with pytest.raises(ValueError, match="2 queries but 1 products"):
        scorer.score(["q", "r"], ["p"], progress=False)
    for bad, message in ((0, "must be >= 1"), (600, "at most 512 tokens")):
        with pytest.raises(ValueError, match=f"max_length.*{message}"):
            PairScorer(tiny_student_dir, device="cpu", max_length=bad)


def test_token_limit_ignores_an_unset_tokenizer_limit():
    config = type("Config", (), {"max_position_embeddings": 256})()
    model = type("Model", (), {"config": config})()
    unset = type("Tokenizer", (), {"model_max_length": int(1e30)})()
    assert scoring.token_limit(unset, model)[0] == 256
    assert scoring.token_limit(type("Tokenizer", (), {"model_max_length": 128})(), model)[0] == 128


def test_jsonl_output_round_trips(tiny_teacher_dir, pairs_csv, tmp_path):
    out = tmp_path / "scored.jsonl"
    score_file(tiny_teacher_dir, pairs_csv, str(out), device="cpu")
    frame = pd.read_json(io.StringIO(out.read_text()), lines=True)
    assert [len(p) for p in frame[schema.TEACHER_PROBS]] == [3, 3, 3]
