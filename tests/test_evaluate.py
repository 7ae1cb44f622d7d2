"""Evaluation metrics on hand-computed toy cases, checkpoint evaluation outputs, and the baselines."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kdrank_testing import load_benchmark, make_labelled

from components import data, schema
from components.evaluate import (
    METRIC_KEYS,
    baseline_scores,
    evaluate_baseline,
    evaluate_checkpoint,
    evaluate_mean,
    fit_linear_calibration,
    metrics_table,
    ranking_metrics,
)

HOMEDEPOT_CSV = (
    "id,product_uid,product_title,search_term,relevance\n"
    "1,100001,DeWalt 20-Volt Cordless Drill Kit,cordless drill,3\n"
    "2,100002,Milwaukee Drill Bit Set,cordless drill,2.33\n"
    "3,100003,Behr Premium Plus White Interior Paint,cordless drill,1\n"
    "4,100004,Purdy Angled Paint Brush,paint brush,3\n"
    "5,100005,Wooster Paint Roller Cover,paint brush,2\n"
    "6,100001,DeWalt 20-Volt Cordless Drill Kit,paint brush,1.33\n"
)


def table(rows: list[tuple[str, float, float]]) -> pd.DataFrame:
    """(query id, grade, score) rows as a scored table."""
    return pd.DataFrame(rows, columns=[schema.QUERY_ID, schema.GRADE, "score"])


def dcg(gains):
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def test_ndcg_counts_tied_scores_at_their_expected_value():
    # grades (2, 1, 0) -> gains (3, 1, 0); the first two tie, so each position holds gain (3+1)/2
    frame = table([("q", 2.0, 1.0), ("q", 1.0, 1.0), ("q", 0.0, 0.0)])
    expected = dcg([2.0, 2.0, 0.0]) / dcg([3.0, 1.0, 0.0])
    metrics = ranking_metrics(frame, "score")
    assert metrics["ndcg@5"] == pytest.approx(expected)
    assert metrics["ndcg@10"] == pytest.approx(expected)
    # input order must not matter for tied scores
    reversed_input = frame.iloc[::-1].reset_index(drop=True)
    assert ranking_metrics(reversed_input, "score")["ndcg@5"] == pytest.approx(expected)


def test_ndcg_cuts_at_k_and_uses_exponential_gain():
    grades = [0.0, 0.0, 0.0, 0.0, 0.0, 2.0]  # the only relevant product ranked 6th of 6
    frame = table([("q", g, -i) for i, g in enumerate(grades)])
    metrics = ranking_metrics(frame, "score")
    assert metrics["ndcg@5"] == pytest.approx(0.0)
    assert metrics["ndcg@10"] == pytest.approx((3 / math.log2(7)) / 3)


def test_queries_with_one_distinct_grade_are_left_out_of_ndcg():
    good = [("a", 2.0, 2.0), ("a", 0.0, 1.0)]
    flat = [("b", 1.0, 0.0), ("b", 1.0, 5.0)]  # nothing to rank: must not pull NDCG down or up
    metrics = ranking_metrics(table(good + flat), "score")
    assert metrics["ndcg@5"] == pytest.approx(1.0)
    assert metrics["n_queries"] == 2 and metrics["n_pairs"] == 4
    assert math.isnan(ranking_metrics(table(flat), "score")["ndcg@5"])


def test_pairwise_accuracy_counts_ties_half_and_skips_close_grades():
    # A-B differ by 1/3 grade (skipped); A-C, A-D, B-C, B-D right; C-D tied in score -> 4.5 / 5
    frame = table([("q", 2.0, 3.0), ("q", 5 / 3, 3.0), ("q", 1.0, 1.0), ("q", 0.0, 1.0)])
    assert ranking_metrics(frame, "score")["pairwise_accuracy"] == pytest.approx(0.9)
    # pairs never cross queries: each query alone is perfectly ordered
    two = table([("x", 2.0, 0.0), ("x", 0.0, -1.0), ("y", 1.0, 10.0), ("y", 0.0, 9.0)])
    assert ranking_metrics(two, "score")["pairwise_accuracy"] == pytest.approx(1.0)


def test_spearman_and_rmse():
    frame = table([("q", 0.0, 0.1), ("q", 1.0, 0.5), ("q", 2.0, 3.0), ("r", 1.5, 2.0)])
    assert ranking_metrics(frame, "score")["spearman"] == pytest.approx(1.0)
    frame["score"] = -frame["score"]
    assert ranking_metrics(frame, "score")["spearman"] == pytest.approx(-1.0)
    frame["mapped"] = frame[schema.GRADE] + np.array([0.5, -0.5, 0.5, -0.5])
    assert ranking_metrics(frame, "score", mapped_col="mapped")["rmse"] == pytest.approx(0.5)


def test_metrics_keys_and_errors():
    metrics = ranking_metrics(table([("q", 0.0, 0.0), ("q", 2.0, 1.0)]), "score")
    assert tuple(metrics) == METRIC_KEYS
    with pytest.raises(schema.DataError, match="score"):
        ranking_metrics(table([("q", 0.0, 0.0)]).drop(columns="score"), "score")
    with pytest.raises(ValueError, match="non-finite"):
        ranking_metrics(table([("q", 0.0, float("nan")), ("q", 1.0, 0.0)]), "score")


def test_metrics_table_is_markdown_with_one_row_per_model():
    results = {"teacher": {"ndcg@5": 0.91234, "ndcg@10": 0.9, "pairwise_accuracy": 0.8, "spearman": 0.5,
                           "rmse": 0.4, "n_queries": 12, "n_pairs": 72},
               "random": {"ndcg@5": 0.5, "ndcg@10": 0.6, "pairwise_accuracy": 0.5, "spearman": 0.0,
                          "rmse": float("nan"), "n_queries": 12, "n_pairs": 72}}
    lines = metrics_table(results).strip().splitlines()
    assert lines[0].startswith("| model | NDCG@5 | NDCG@10")
    assert lines[2] == "| teacher | 0.9123 | 0.9000 | 0.8000 | 0.5000 | 0.4000 | 12 | 72 |"
    assert lines[3].startswith("| random |") and "n/a" in lines[3]


def test_fit_linear_calibration_recovers_a_linear_map():
    raw = np.array([-1.0, 0.0, 1.0, 3.0])
    assert fit_linear_calibration(raw, 0.5 * raw + 1.0) == pytest.approx({"scale": 0.5, "offset": 1.0})
    assert fit_linear_calibration(np.ones(3), np.array([0.0, 1.0, 2.0])) == {"scale": 0.0, "offset": 1.0}


def test_evaluate_student_writes_metrics_and_applies_calibration(tmp_path, tiny_student_dir, tiny_labelled):
    test_path = data.write_table(tiny_labelled, str(tmp_path / "test.parquet"))
    out = tmp_path / "eval"
    metrics = evaluate_checkpoint(tiny_student_dir, test_path, str(out), name="tiny student")
    assert tuple(metrics) == METRIC_KEYS
    assert metrics["n_queries"] == tiny_labelled[schema.QUERY_ID].nunique()
    assert metrics["n_pairs"] == len(tiny_labelled)
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    assert "| tiny student |" in (out / "metrics.md").read_text()
    scores = pd.read_parquet(out / "scores.parquet")
    # the tiny student's stored calibration is grade = 1.0 * raw + 1.0
    assert scores["score_grade"].to_numpy() == pytest.approx(scores["score"].to_numpy() + 1.0)
    rmse = np.sqrt(np.mean((scores["score_grade"] - scores[schema.GRADE]) ** 2))
    assert metrics["rmse"] == pytest.approx(rmse)
    assert not list(tmp_path.glob(".eval*")), "temporary output left behind"


def test_evaluate_teacher_on_homedepot_csv(tmp_path, tiny_teacher_dir):
    path = tmp_path / "train.csv"
    path.write_bytes(HOMEDEPOT_CSV.encode("latin-1"))
    metrics = evaluate_checkpoint(tiny_teacher_dir, str(path), str(tmp_path / "eval"), fmt="homedepot")
    assert metrics["n_queries"] == 2 and metrics["n_pairs"] == 6
    assert 0.0 <= metrics["ndcg@5"] <= 1.0 and 0.0 <= metrics["pairwise_accuracy"] <= 1.0
    scores = pd.read_parquet(tmp_path / "eval" / "scores.parquet")
    # a teacher's score is its expected grade: already on the grade scale, no calibration
    assert scores["score_grade"].to_numpy() == pytest.approx(scores["score"].to_numpy())
    assert ((scores["score"] >= 0) & (scores["score"] <= 2)).all()
    assert sorted(scores[schema.GRADE].round(2)) == [0.0, 0.33, 1.0, 1.33, 2.0, 2.0]  # 1..3 mapped to 0..2


def test_baselines_rank_sensibly():
    frame = data.normalize(pd.read_csv(io.StringIO(HOMEDEPOT_CSV), dtype=str), data.HOMEDEPOT,
                           path="inline")
    rand = baseline_scores(frame, "random", seed=3)
    assert rand == pytest.approx(baseline_scores(frame, "random", seed=3))
    assert not np.allclose(rand, baseline_scores(frame, "random", seed=4))
    for kind in ("bm25", "biencoder"):
        scores = baseline_scores(frame, kind)
        drill = frame[schema.QUERY] == "cordless drill"
        by_product = dict(zip(frame[drill][schema.PRODUCT_ID], scores[drill.to_numpy()], strict=True))
        assert by_product["100001"] > by_product["100003"], kind  # the drill kit beats the paint
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_scores(frame, "oracle")


def test_evaluate_baseline_writes_null_rmse(tmp_path, tiny_labelled):
    test_path = data.write_table(tiny_labelled, str(tmp_path / "test.parquet"))
    metrics = evaluate_baseline("bm25", test_path, str(tmp_path / "bm25"))
    assert math.isnan(metrics["rmse"])
    assert json.loads(Path(tmp_path / "bm25" / "metrics.json").read_text())["rmse"] is None


def test_evaluate_mean_scores_the_mean_of_several_models_and_refuses_other_pairs(tmp_path, tiny_labelled):
    test_path = data.write_table(tiny_labelled, str(tmp_path / "test.parquet"))
    parts = []
    for i, kind in enumerate(("bm25", "random")):  # two "models" whose scores the files hold, in another order
        evaluate_baseline(kind, test_path, str(tmp_path / kind))
        scores = pd.read_parquet(tmp_path / kind / "scores.parquet").assign(score_grade=float(i))
        scores.sample(frac=1.0, random_state=i).to_parquet(tmp_path / f"{kind}.parquet")
        parts.append(str(tmp_path / f"{kind}.parquet"))
    metrics = evaluate_mean(parts, test_path, str(tmp_path / "mean"), name="mean")
    mean = pd.read_parquet(tmp_path / "mean" / "scores.parquet")
    expected = (pd.read_parquet(tmp_path / "bm25" / "scores.parquet")["score"]
                + pd.read_parquet(tmp_path / "random" / "scores.parquet")["score"]) / 2
    np.testing.assert_allclose(mean["score"], expected, rtol=0, atol=1e-12)
    assert (mean["score_grade"] == 0.5).all()
    assert metrics == ranking_metrics(mean, "score", mapped_col="score_grade")
    pd.read_parquet(parts[1]).iloc[1:].to_parquet(parts[1])
    with pytest.raises(ValueError, match="random.parquet scored other pairs than the"):
        evaluate_mean(parts, test_path, str(tmp_path / "bad"), name="bad")
    assert not (tmp_path / "bad").exists()


def test_query_bootstrap_intervals_cover_the_metric_and_shrink_with_more_queries():
    from components.evaluate import query_bootstrap

    small, large = make_labelled(n_queries=20, seed=1), make_labelled(n_queries=200, seed=1)
    for frame in (small, large):
        frame["perfect"] = frame[schema.GRADE]
        frame["noise"] = np.random.default_rng(0).normal(size=len(frame))
    assert query_bootstrap(small, "perfect")["pairwise_accuracy"] == [1.0, 1.0]
    narrow = query_bootstrap(large, "noise")["pairwise_accuracy"]
    wide = query_bootstrap(small, "noise")["pairwise_accuracy"]
    point = ranking_metrics(large, "noise")["pairwise_accuracy"]
    assert narrow[0] <= point <= narrow[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    with pytest.raises(schema.DataError):
        query_bootstrap(large.drop(columns=[schema.GRADE]), "noise")


def test_paired_bootstrap_separates_a_small_consistent_gain_that_unpaired_intervals_cannot():
    from components.evaluate import paired_bootstrap, query_bootstrap

    frame = make_labelled(n_queries=150, seed=4)
    noise = np.random.default_rng(1).normal(size=len(frame))
    base = frame.assign(score=noise)
    # the same scores, but ten queries ranked perfectly: a small gain on shared, noisy ground
    better_rows = frame[schema.QUERY_ID].isin(sorted(frame[schema.QUERY_ID].unique())[:10])
    better = frame.assign(score=np.where(better_rows, frame[schema.GRADE] * 10, noise))
    diff = paired_bootstrap(better, base, "score")
    gain = ranking_metrics(better, "score")["pairwise_accuracy"] - ranking_metrics(base, "score")["pairwise_accuracy"]
    assert diff["pairwise_accuracy"] == pytest.approx(gain) and gain > 0
    low, high = diff["pairwise_accuracy_ci"]
    assert 0 < low <= gain <= high and diff["pairwise_accuracy_p_better"] > 0.975
    a, b = query_bootstrap(better, "score")["pairwise_accuracy"], query_bootstrap(base, "score")["pairwise_accuracy"]
    assert a[0] < b[1]  # the unpaired intervals overlap
    same = paired_bootstrap(base, base.sample(frac=1.0, random_state=0), "score")
    assert same["pairwise_accuracy"] == 0 and same["pairwise_accuracy_ci"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="same \\(query, product\\) pairs"):
        paired_bootstrap(base, base.iloc[1:], "score")
    with pytest.raises(ValueError, match="same grades"):
        paired_bootstrap(base, base.assign(**{schema.GRADE: base[schema.GRADE] + 1}), "score")


def test_agreement_script_counts_the_pairs_pairwise_accuracy_counts():
    agreement = load_benchmark("agreement")
    rng = np.random.default_rng(5)
    base = pd.DataFrame({schema.QUERY_ID: np.repeat(["a", "b", "c"], 5), schema.PRODUCT_ID: [str(i) for i in range(15)],
                         schema.GRADE: rng.choice([0.0, 0.33, 0.67, 1.0, 1.33, 2.0], 15)})
    teacher = base.assign(score=rng.normal(size=15))
    student = base.assign(score=np.where(rng.random(15) < 0.5, teacher["score"], rng.normal(size=15)))
    rows = {r["run"]: r for r in agreement.agreement({"teacher": teacher, "student": student}, "teacher")}
    from components.evaluate import _pairwise_counts

    ordered = sum(_pairwise_counts(np.zeros(5), base[schema.GRADE].to_numpy()[i:i + 5], 0.5)[1] for i in (0, 5, 10))
    for name, frame in (("teacher", teacher), ("student", student)):
        assert rows[name]["pairs"] == ordered > 0
        assert rows[name]["accuracy"] == pytest.approx(ranking_metrics(frame, "score")["pairwise_accuracy"])
    assert rows["teacher"]["right_where_reference_wrong"] == 0 and rows["teacher"]["same_order_as_reference"] == 1
    assert rows["student"]["same_order_as_reference"] < 1
    with pytest.raises(ValueError, match="student scored other test pairs"):
        agreement.agreement({"teacher": teacher, "student": student.iloc[::-1]}, "teacher")


def test_ensemble_probe_scores_the_mean_of_grade_scale_scores_against_its_best_member(tmp_path):
    probe = load_benchmark("ensemble_probe")
    rng = np.random.default_rng(8)
    base = pd.DataFrame({schema.QUERY_ID: np.repeat(["a", "b", "c", "d"], 6),
                         schema.PRODUCT_ID: [str(i) for i in range(24)],
                         schema.GRADE: rng.choice([0.0, 0.67, 1.0, 1.33, 2.0], 24)})
    good = base[schema.GRADE].to_numpy() + rng.normal(scale=0.3, size=24)  # a model that ranks well, on the grade scale
    for run, grade_scale in (("good", good), ("noisy", rng.normal(size=24)), ("baseline", None)):
        folder = tmp_path / "eval" / run
        folder.mkdir(parents=True)
        raw = rng.normal(size=24)  # a student's raw score: another scale, which the probe must not average
        base.assign(score=raw, score_grade=np.nan if grade_scale is None else grade_scale).to_parquet(
            folder / "scores.parquet")
    frames = {run: probe.read_grade_scores(tmp_path, run) for run in ("good", "noisy")}
    row = probe.probe(frames, {"pair": ["noisy", "good"]})[0]
    expected = ranking_metrics(base.assign(s=(good + frames["noisy"]["score"].to_numpy()) / 2), "s")
    assert row["pairwise"] == pytest.approx(expected["pairwise_accuracy"])
    assert row["best"] == "good" and row["best_pairwise"] == pytest.approx(
        ranking_metrics(base.assign(s=good), "s")["pairwise_accuracy"])
    assert row["minus_best"] == pytest.approx(row["pairwise"] - row["best_pairwise"])
    assert "| pair | noisy (" in probe.table([row])
    with pytest.raises(ValueError, match="no scores on the grade scale"):
        probe.read_grade_scores(tmp_path, "baseline")
    with pytest.raises(FileNotFoundError, match="absent has no stored test scores"):
        probe.read_grade_scores(tmp_path, "absent")
    with pytest.raises(ValueError, match="noisy scored other test pairs"):
        probe.probe({"good": frames["good"], "noisy": frames["noisy"].iloc[::-1]}, {"pair": ["good", "noisy"]})
    for text in ("pair=good", "pair=good+good", "good+noisy", "=good+noisy"):
        with pytest.raises(ValueError, match="an ensemble is NAME=RUN"):
            probe.parse_ensemble(text)
    assert probe.parse_ensemble("pair=good+noisy") == ("pair", ["good", "noisy"])
