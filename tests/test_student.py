"""Student training: pair sampling, the one-pass margin loss, a short run that learns, variants, errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from kdrank_testing import WORDS, make_labelled

from components import data, pairs, schema, storage
from components.checkpoint import read_info
from components.losses import margin_mse_loss
from components.scoring import PairScorer, load_classifier
from components.student import (
    MIN_MARGIN,
    StudentConfig,
    batch_loss,
    pair_scores,
    sample_margin_pairs,
    train_student,
    training_rows,
)

MARKS = {"premium": 2.0, "standard": 1.0, "broken": 0.0}  # a signal a tiny model can learn in a few steps


def teacher_table(n_queries: int = 16, per_query: int = 6, seed: int = 0) -> pd.DataFrame:
    """A teacher-label table whose score depends on one marker word in the product text."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_queries):
        query = " ".join(rng.choice(WORDS, size=2))
        for p in range(per_query):
            mark = list(MARKS)[p % 3]
            score = float(np.clip(MARKS[mark] + rng.normal(0, 0.05), 0, 2))
            rows.append((query, f"p{q}-{p}", " ".join(rng.choice(WORDS, size=4)) + f" {mark}", score))
    frame = pd.DataFrame(rows, columns=[schema.QUERY, schema.PRODUCT_ID, schema.PRODUCT_TEXT,
                                        schema.TEACHER_SCORE])
    frame.insert(0, schema.QUERY_ID, frame[schema.QUERY].map(schema.query_id))
    frame[schema.SOURCE] = "labelled"
    probs = schema.soft_targets_from_mean(frame[schema.TEACHER_SCORE].to_numpy(), 3)
    frame[schema.TEACHER_PROBS] = list(probs)
    return frame[schema.TEACHER_LABEL_COLUMNS]


def margin_mse_all_pairs(scores: np.ndarray, frame: pd.DataFrame) -> float:
    """Margin MSE over every same-query pair of a table: a fixed yardstick for before/after training."""
    errors = []
    targets = frame[schema.TEACHER_SCORE].to_numpy()
    for rows in frame.groupby(schema.QUERY_ID).indices.values():
        i, j = np.triu_indices(len(rows), k=1)
        s, t = scores[rows], targets[rows]
        errors.append(((s[i] - s[j]) - (t[i] - t[j])) ** 2)
    return float(np.concatenate(errors).mean())


def raw_scores(model_dir: str, frame: pd.DataFrame) -> np.ndarray:
    scorer = PairScorer(model_dir)
    queries, products = frame[schema.QUERY].tolist(), frame[schema.PRODUCT_TEXT].tolist()
    return scorer.score(queries, products, progress=False).score


def test_pair_sampling_rule():
    groups = [np.arange(0, 5), np.arange(5, 9), np.array([9])]  # 5 products, 4 products, 1 product
    targets = np.arange(10, dtype=float)
    rng = np.random.default_rng(0)
    pairs_ = sample_margin_pairs(groups, targets, rng)
    assert len(pairs_) == 3 + 2  # ceil(5/2) + 4/2; the one-product query gives none
    query_of = np.repeat([0, 1, 2], [5, 4, 1])
    assert (query_of[pairs_[:, 0]] == query_of[pairs_[:, 1]]).all() and (pairs_[:, 0] != pairs_[:, 1]).all()
    assert set(pairs_.ravel()) == set(range(9))  # every product of a multi-product query is used
    more = sample_margin_pairs(groups, targets, rng, pairs_per_query=8)
    assert len(more) == 8 + 6  # 8 asked; the 4-product query has only 6 distinct pairs
    assert len({frozenset(p) for p in more.tolist()}) == len(more)
    assert len(sample_margin_pairs(groups, targets, rng, pairs_per_query=1)) == 2


def test_pair_sampling_skips_equal_targets():
    targets = np.array([1.0, 1.0, 1.0 + MIN_MARGIN / 10, 2.0])
    pairs_ = sample_margin_pairs([np.arange(4)], targets, np.random.default_rng(1), pairs_per_query=6)
    assert len(pairs_) == 3  # only the pairs with product 3 differ
    assert (np.abs(targets[pairs_[:, 0]] - targets[pairs_[:, 1]]) >= MIN_MARGIN).all()


def test_margin_loss_scores_both_halves_in_one_forward_pass(tiny_student_dir):
    tokenizer, model = load_classifier(tiny_student_dir, role=pairs.STUDENT)
    model.eval()
    calls = []
    model.register_forward_hook(lambda module, args, kwargs, out: calls.append(kwargs["input_ids"].shape),
                                with_kwargs=True)
    frame = pd.DataFrame({
        schema.QUERY_ID: ["q1", "q1", "q2", "q2", "q3", "q3"],
        schema.QUERY: ["cordless drill"] * 2 + ["paint brush"] * 2 + ["garden hose"] * 2,
        schema.PRODUCT_TEXT: ["red drill kit 18 volt", "white paint", "angled paint brush",
                              "lawn mower with a very long product title for padding", "hose", "garden hose 50 ft"],
        schema.TEACHER_SCORE: [2.0, 0.0, 2.0, 0.5, 1.0, 2.0]})
    rows = training_rows(frame, "teacher", tokenizer, max_length=32)
    targets = torch.tensor(rows.targets, dtype=torch.float32)
    items = np.array([[0, 1], [2, 3], [4, 5]])
    device = torch.device("cpu")
    with torch.no_grad():
        loss = batch_loss(model, rows, items, "margin_mse", device)
        assert len(calls) == 1 and calls[0][0] == 6  # one pass over the 2 x 3 sequences
        s_a = pair_scores(model, rows.tokens.batch(items[:, 0]), device)
        s_b = pair_scores(model, rows.tokens.batch(items[:, 1]), device)
    expected = margin_mse_loss(s_a, s_b, targets[items[:, 0]], targets[items[:, 1]])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    by_text = pairs.encode_pairs(tokenizer, frame[schema.QUERY].tolist(), frame[schema.PRODUCT_TEXT].tolist(),
                                 role=pairs.STUDENT, max_length=32)
    with torch.no_grad():  # the token table scores exactly as tokenising the texts in one batch does
        direct = model(**by_text).logits.squeeze(-1)
    assert torch.allclose(torch.cat([s_a, s_b])[[0, 3, 1, 4, 2, 5]], direct, atol=1e-5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_student_dir):
    """One short margin-MSE run on teacher labels with a teacher-labelled validation table."""
    root = tmp_path_factory.mktemp("student")
    train = data.write_table(teacher_table(seed=0), str(root / "teacher" / "part-00000.parquet"))
    val = data.write_table(teacher_table(n_queries=6, seed=1), str(root / "val.parquet"))
    config = StudentConfig(base_model=tiny_student_dir, epochs=4, batch_size=8, learning_rate=5e-3,
                           max_length=32)
    out = str(root / "out")
    summary = train_student(str(Path(train).parent), val, out, config)
    return {"train": str(Path(train).parent), "val": val, "out": out, "config": config, "summary": summary}


def test_short_training_run_lowers_margin_mse(trained, tiny_student_dir):
    frame = data.read_table(trained["train"])
    before = margin_mse_all_pairs(raw_scores(tiny_student_dir, frame), frame)
    after = margin_mse_all_pairs(raw_scores(trained["out"], frame), frame)
    assert after < 0.75 * before, (before, after)
    summary = trained["summary"]
    assert summary["steps"] == 4 * math.ceil(summary["items_per_epoch"] / 8)  # 4 epochs of 8-pair batches
    assert summary["pairs_per_s"] > 0 and summary["margin_pairs_per_s"] == pytest.approx(
        summary["pairs_per_s"] / 2)
    assert len(summary["losses"]) == 4 and summary["val_metrics"]["pairwise_accuracy"] > 0.8


def test_checkpoint_is_a_hf_directory_with_calibration(trained):
    out = trained["out"]
    files = {p.name for p in Path(out).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "kdrank.json"} <= files
    info = read_info(out)
    assert info.role == pairs.STUDENT and info.num_grades == 3 and info.max_length == 32
    assert info.training["settings"]["config"]["loss"] == "margin_mse"
    assert trained["summary"]["calibration_set"] == "val:teacher_score"
    val = data.read_table(trained["val"])
    raw = raw_scores(out, val)
    scale, offset = np.polyfit(raw, val[schema.TEACHER_SCORE].to_numpy(), 1)
    assert info.calibration == pytest.approx({"scale": scale, "offset": offset}, rel=1e-3, abs=1e-4)
    mapped = PairScorer(out).to_grade(raw)
    assert mapped == pytest.approx(scale * raw + offset, rel=1e-3, abs=1e-4)
    # calibrated scores sit on the grade scale: much closer than raw margin-trained scores
    target = val[schema.TEACHER_SCORE].to_numpy()
    assert np.sqrt(np.mean((mapped - target) ** 2)) < 0.5


def test_rerun_with_same_settings_skips(trained):
    meta = Path(trained["out"], "kdrank.json")
    stamp = meta.stat().st_mtime_ns
    again = train_student(trained["train"], trained["val"], trained["out"], trained["config"])
    assert again["skipped"] is True and again["steps"] == trained["summary"]["steps"]
    assert meta.stat().st_mtime_ns == stamp


def test_pointwise_mse_on_teacher_labels(tmp_path, tiny_student_dir):
    train = data.write_table(teacher_table(n_queries=6), str(tmp_path / "t.parquet"))
    config = StudentConfig(base_model=tiny_student_dir, loss="pointwise_mse", batch_size=4, max_steps=3,
                           max_length=32, calibration_rows=20)
    summary = train_student(train, None, str(tmp_path / "out"), config)
    assert summary["steps"] == 3 and summary["margin_pairs_per_s"] is None
    assert summary["calibration_set"] == "train:teacher_score"
    # calibration rows are whole queries (6 rows each) up to the cap of 20
    assert summary["val_metrics"]["n_pairs"] == 18 and summary["val_metrics"]["n_queries"] == 3
    info = json.loads(Path(tmp_path / "out" / "kdrank.json").read_text())
    assert info["training"]["settings"]["config"]["loss"] == "pointwise_mse"


def test_human_labels_train_on_grades(tmp_path, tiny_student_dir):
    train = data.write_table(make_labelled(8, 5, seed=1), str(tmp_path / "train.parquet"))
    val = data.write_table(make_labelled(4, 5, seed=2), str(tmp_path / "val.parquet"))
    config = StudentConfig(base_model=tiny_student_dir, labels="human", batch_size=4, max_steps=2,
                           max_length=32)
    summary = train_student(train, val, str(tmp_path / "out"), config)
    assert summary["labels"] == "human" and summary["calibration_set"] == "val:grade"
    assert summary["val_metrics"]["n_queries"] == 4
    # a different config is a different student: no skip
    again = train_student(train, val, str(tmp_path / "out"), StudentConfig(
        base_model=tiny_student_dir, labels="human", batch_size=4, max_steps=1, max_length=32))
    assert "skipped" not in again and again["steps"] == 1


def test_min_steps_trains_a_small_table_for_more_epochs(tmp_path, tiny_student_dir):
    train = data.write_table(make_labelled(4, 4, seed=1), str(tmp_path / "train.parquet"))  # 16 rows
    config = StudentConfig(base_model=tiny_student_dir, labels="human", loss="pointwise_mse", batch_size=4,
                           epochs=1, min_steps=5, max_length=32, calibration_rows=16)
    summary = train_student(train, None, str(tmp_path / "out"), config)
    # one epoch is 2 steps of 8 rows; min_steps asks for 5, so 3 epochs are drawn
    assert summary["steps"] == 5 and summary["epochs_run"] == 2.5 and len(summary["losses"]) == 3
    with pytest.raises(ValueError, match="min_steps must be None or >= 1"):
        StudentConfig(min_steps=0)


def test_bad_configs_and_inputs_fail_clearly(tmp_path, tiny_student_dir):
    with pytest.raises(ValueError, match="loss must be one of"):
        StudentConfig(loss="listwise")
    with pytest.raises(ValueError, match="labels must be one of"):
        StudentConfig(labels="llm")
    with pytest.raises(ValueError, match="epochs must be > 0"):
        StudentConfig(epochs=0)
    labelled = data.write_table(make_labelled(3, 3), str(tmp_path / "labelled.parquet"))
    with pytest.raises(schema.DataError, match="teacher_score") as err:
        train_student(labelled, None, str(tmp_path / "out"), StudentConfig(base_model=tiny_student_dir))
    assert "labelled.parquet" in str(err.value) and "labels='human'" in str(err.value)
    single = data.write_table(teacher_table(n_queries=3, per_query=1), str(tmp_path / "single.parquet"))
    with pytest.raises(schema.DataError, match="no same-query pairs"):
        train_student(single, None, str(tmp_path / "out"), StudentConfig(base_model=tiny_student_dir))
    assert not (tmp_path / "out").exists()
    blank = teacher_table(n_queries=3)
    blank.loc[4, schema.PRODUCT_TEXT] = None
    blank = data.write_table(blank, str(tmp_path / "blank.parquet"))
    with pytest.raises(schema.DataError, match=r"blank.parquet, row 5, column 'product_text': 1 row\(s\) have"):
        train_student(blank, None, str(tmp_path / "out"), StudentConfig(base_model=tiny_student_dir))
    good = data.write_table(teacher_table(n_queries=3), str(tmp_path / "good.parquet"))
    with pytest.raises(ValueError, match="student max_length 100000 is more than .* supports"):
        train_student(good, None, str(tmp_path / "out"), StudentConfig(base_model=tiny_student_dir,
                                                                         max_length=100_000))
    assert not (tmp_path / "out").exists()


def test_a_changed_table_under_the_same_name_and_counts_is_trained_again(tmp_path, tiny_student_dir):
    path = str(tmp_path / "t.parquet")
    frame = teacher_table(n_queries=4)
    data.write_table(frame, path)
    config = StudentConfig(base_model=tiny_student_dir, batch_size=4, max_steps=1, max_length=32)
    train_student(path, None, str(tmp_path / "out"), config)
    # the same rows, counts and target sum, but the texts swapped between two products of one query
    swapped = frame.copy()
    swapped.loc[[0, 1], schema.PRODUCT_TEXT] = frame.loc[[1, 0], schema.PRODUCT_TEXT].to_numpy()
    data.write_table(swapped, path)
    again = train_student(path, None, str(tmp_path / "out"), config)
    assert "skipped" not in again


def test_gcs_input_and_output(gcs_emulator, tiny_student_dir):
    from components import storage

    root = f"gs://{gcs_emulator}/student-test"
    data.write_table(teacher_table(n_queries=4, seed=0), f"{root}/labels/part-00000.parquet")
    data.write_table(teacher_table(n_queries=4, seed=1), f"{root}/labels/part-00001.parquet")
    config = StudentConfig(base_model=tiny_student_dir, batch_size=4, max_steps=2, max_length=32)
    summary = train_student(f"{root}/labels", None, f"{root}/model", config)
    assert summary["train_rows"] == 48 and summary["train_queries"] == 8
    assert {"config.json", "model.safetensors", "kdrank.json"} <= set(storage.list_files(f"{root}/model"))
    assert train_student(f"{root}/labels", None, f"{root}/model", config)["skipped"] is True

    from components.evaluate import evaluate_checkpoint

    test_uri = data.write_table(make_labelled(3, 4), f"{root}/test.parquet")
    metrics = evaluate_checkpoint(f"{root}/model", test_uri, f"{root}/eval")
    assert json.loads(storage.read_text(f"{root}/eval/metrics.json"))["n_pairs"] == metrics["n_pairs"] == 12


@pytest.mark.parametrize("loss, how", [("margin_mse", "sigterm"), ("pointwise_mse", "crash")])
def test_training_cut_short_resumes_to_the_same_student(tmp_path, tiny_student_dir, monkeypatch, loss, how):
    # SIGTERM (sent to this process as Kubernetes sends it to a pod it preempts) saves after the step it came in
    # and stops; a crash loses the steps after the last timed save (every step here). Either way the same call
    # again goes on from the saved step, dropout included, to the student an uninterrupted run makes.
    import os
    import signal
    import socket

    import components.student as student_module
    from components.resume import TrainingInterrupted, state_dir

    monkeypatch.setenv("KDRANK_STATE_EVERY", "0" if how == "sigterm" else "1e-9")
    path = data.write_table(teacher_table(n_queries=8), str(tmp_path / "teacher.parquet"))
    config = StudentConfig(base_model=tiny_student_dir, loss=loss, labels="teacher", epochs=3, batch_size=8,
                           max_length=32, learning_rate=5e-4)
    whole = train_student(path, None, str(tmp_path / "whole"), config)
    stop_at = whole["steps"] // 2 + 1  # mid-run; with a few steps an epoch, inside the second epoch

    real, calls = student_module.batch_loss, []

    def cut(*args, **kwargs):
        calls.append(1)
        if len(calls) == stop_at:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise RuntimeError("the node went away")
        return real(*args, **kwargs)

    out = str(tmp_path / "cut")
    monkeypatch.setattr(student_module, "batch_loss", cut)
    with pytest.raises(TrainingInterrupted if how == "sigterm" else RuntimeError, match="SIGTERM|went away"):
        train_student(path, None, out, config)
    monkeypatch.setattr(student_module, "batch_loss", real)
    assert not Path(out).exists() and (Path(state_dir(out)) / "state.pt").is_file()
    dead = next(pid for pid in range(4_000_000, 4_100_000) if not storage._alive(pid))
    torn = Path(state_dir(out), f".state.pt.{socket.gethostname()}-{dead}.x1y2.tmp")  # a save killed midway
    torn.write_bytes(b"part of a state")

    resumed = train_student(path, None, out, config)
    assert resumed["resumed_at_step"] == [stop_at if how == "sigterm" else stop_at - 1]
    np.testing.assert_array_equal(raw_scores(out, teacher_table(n_queries=8)),
                                  raw_scores(str(tmp_path / "whole"), teacher_table(n_queries=8)))
    for key in ("steps", "losses", "loss_curve", "calibration", "val_metrics"):
        assert resumed[key] == whole[key], key
    assert not Path(state_dir(out)).exists()


def test_another_base_model_behind_the_same_setting_is_trained_again(tmp_path, tiny_student_dir, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    path = data.write_table(teacher_table(n_queries=4), str(tmp_path / "t.parquet"))
    config = StudentConfig(batch_size=4, max_steps=1, max_length=32)  # base_model "": the default
    monkeypatch.setenv("KDRANK_STUDENT_BASE", tiny_student_dir)
    train_student(path, None, str(tmp_path / "out"), config)
    assert train_student(path, None, str(tmp_path / "out"), config)["skipped"] is True
    other = tmp_path / "other-base"  # the same layout and config, other weights
    model = AutoModelForSequenceClassification.from_pretrained(tiny_student_dir, num_labels=1)
    with torch.no_grad():
        next(model.parameters()).add_(0.01)
    model.save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if Path(tiny_student_dir, name).exists():
            (other / name).write_bytes(Path(tiny_student_dir, name).read_bytes())
    monkeypatch.setenv("KDRANK_STUDENT_BASE", str(other))
    assert "skipped" not in train_student(path, None, str(tmp_path / "out"), config)
