"""`kdrank experiment`: the whole plan on a small Home Depot-format file with tiny models, resumable."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kdrank_testing import load_benchmark, make_labelled, patch_test_plan, write_homedepot_csv

from components import schema
from components.checkpoint import read_info
from components.data import read_table
from components.evaluate import evaluate_checkpoint
from components.label import label_pairs
from components.scoring import PairScorer
from components.teacher import TeacherConfig, train_teacher
from pipelines import cli, experiment_report, experiments
from pipelines.experiment_plan import plan
from pipelines.experiments import Runner
from pipelines.runs_folder import read_results


def test_every_planned_run_has_a_row_with_metrics_and_its_command(finished):
    runner, rows, root = finished
    names = [e.name for e in plan("test")]
    assert [r["run"] for r in rows] == names
    stored = {r["run"]: r for r in read_results(root / "runs")}
    assert set(stored) == set(names)
    for row in stored.values():
        m = row["metrics"]
        assert 0.0 <= m["ndcg@5"] <= 1.0 and 0.0 <= m["pairwise_accuracy"] <= 1.0
        assert m["n_pairs"] > 0
        assert row["command"].endswith(f"--only {row['run']}") and "--profile test" in row["command"]
        assert row["hardware"]
    assert stored["teacher-hard"]["settings"]["soft_targets"] is False
    assert stored["teacher-soft-lr1e-3"]["settings"]["learning_rate"] == 1e-3  # a teacher ablation
    assert stored["teacher-soft-lr1e-3"]["metrics"] != stored["teacher-soft"]["metrics"]
    models = root / "runs" / "models"
    assert read_info(models / "teacher-soft").training["config"]["soft_targets"] is True  # as it was trained
    assert read_info(models / "teacher-hard").training["config"]["soft_targets"] is False
    assert stored["student-pointwise-2x"]["settings"]["loss"] == "pointwise_mse"
    assert stored["student-human"]["settings"]["labels"] == "human"
    control = stored["student-human-margin"]  # the 0x run's loss without its teacher
    assert (control["labels"], control["loss"], control["settings"]["labels"]) == ("human", "margin_mse", "human")
    assert control["train_pairs"] == stored["student-margin-0x"]["train_pairs"]
    assert stored["student-human-margin-seed14"]["seed"] == 14
    assert stored["student-margin-2x-seed14"]["seed"] == 14
    assert stored["student-margin-2x-ensemble"]["labels"] == "teacher-ensemble"


def test_distillation_sets_are_nested_and_sized_by_multiple(finished):
    runner, rows, root = finished
    counts = json.loads((root / "runs" / "data" / "summary.json").read_text())["counts"]
    n = counts["train"]["pairs"]
    sizes = {r["run"]: r["train_pairs"] for r in rows}
    assert sizes["student-margin-0x"] == n
    assert sizes["student-margin-1x"] == 2 * n
    assert sizes["student-margin-2x"] == 3 * n
    one = pd.read_parquet(next((root / "runs" / "data").glob("distill-teacher-soft-1x-*.parquet")))
    two = pd.read_parquet(next((root / "runs" / "data").glob("distill-teacher-soft-2x-*.parquet")))
    key = [schema.QUERY_ID, schema.PRODUCT_ID]
    assert one[key].equals(two[key].iloc[: len(one)])
    assert two[schema.TEACHER_SCORE].notna().all()
    # the catalogue is every product in the file, even though the split keeps only some queries for training
    assert counts["catalogue"]["products"] == 30 * 6


def test_the_ensemble_is_composed_from_single_teachers_exactly_as_an_ensemble_checkpoint(finished, tmp_path):
    runner, rows, root = finished
    runs = root / "runs"
    by_run = {r["run"]: r for r in rows}
    assert by_run["teacher-ensemble"]["members"] == ["teacher-soft", "teacher-soft-seed14"]
    assert by_run["teacher-soft-seed14"]["settings"]["seed"] == 14 and by_run["teacher-ensemble"]["kind"] == "ensemble"
    assert not (runs / "models" / "teacher-ensemble").exists()  # no ensemble model: its members are the model
    # the ensemble checkpoint `ensemble_size=2` would train takes both members as they are (same data, recipe,
    # seeds), and labels the augmented set exactly as the composed labels do
    config = TeacherConfig(**{**runner.profile.teacher, "ensemble_size": 2})
    summary = train_teacher(runner.paths()["train"], runner.paths()["val"], str(tmp_path / "ensemble"), config,
                            reuse=[str(runs / "models" / "teacher-soft"), str(runs / "models" / "teacher-soft-seed14")])
    assert [m["reused_from"] for m in summary["members"]] == [str(runs / "models" / n)
                                                                for n in ("teacher-soft", "teacher-soft-seed14")]
    label_pairs(runner.augmented(), str(tmp_path / "ensemble"), str(tmp_path / "labels"), num_shards=1,
                batch_size=int(runner.profile.label["batch_size"]), progress=False)
    composed = next((runs / "data").glob("labelled-teacher-ensemble-2x-*"))
    pd.testing.assert_frame_equal(read_table(str(composed)), read_table(str(tmp_path / "labels")), check_exact=True)
    # its test row: the mean of the members' expected grades, the ensemble's expected grade up to rounding
    metrics = evaluate_checkpoint(str(tmp_path / "ensemble"), runner.paths()["test"],
                                  batch_size=int(runner.profile.evaluate["batch_size"]))
    for key in ("ndcg@5", "pairwise_accuracy", "spearman", "rmse"):
        assert by_run["teacher-ensemble"]["metrics"][key] == pytest.approx(metrics[key], abs=1e-6)


def test_an_ablation_recipe_makes_its_own_ensemble_whose_labels_are_its_members_mean(finished):
    runner, rows, root = finished
    data = root / "runs" / "data"
    by_run = {r["run"]: r for r in rows}
    members = ["teacher-soft-lr1e-3", "teacher-soft-lr1e-3-seed14"]
    assert by_run["teacher-ensemble-lr1e-3"]["members"] == members
    # the new member is the ablation's recipe with the next seed, not the reference recipe's seed-14 teacher
    assert by_run[members[1]]["settings"]["learning_rate"] == 1e-3 and by_run[members[1]]["settings"]["seed"] == 14
    assert by_run[members[1]]["metrics"] != by_run["teacher-soft-seed14"]["metrics"]
    student = by_run["student-margin-2x-ensemble-lr1e-3"]
    assert (student["labels"], student["augmented"]) == ("teacher-ensemble-lr1e-3", 2.0)
    assert student["metrics"] != by_run["student-margin-2x-ensemble"]["metrics"]
    # its labels: the mean of its own members' probabilities, pair by pair
    probs = [read_table(str(next(data.glob(f"labelled-{name}-2x-*")))) for name in members]
    composed = read_table(str(next(data.glob("labelled-teacher-ensemble-lr1e-3-2x-*"))))
    mean = np.mean([np.stack(p[schema.TEACHER_PROBS].to_list()).astype(np.float32) for p in probs], axis=0)
    assert mean.shape == (len(composed), 3)
    np.testing.assert_allclose(np.stack(composed[schema.TEACHER_PROBS].to_list()), mean, rtol=0, atol=1e-6)


def test_a_mixed_ensemble_averages_teachers_of_different_recipes_and_each_can_teach_its_own_student(finished):
    runner, rows, root = finished
    runs, data = root / "runs", root / "runs" / "data"
    by_run = {r["run"]: r for r in rows}
    members = ["teacher-soft", "teacher-soft-lr1e-3"]
    row = by_run["teacher-ensemble-mixed"]
    assert (row["kind"], row["members"]) == ("ensemble", members)
    assert [m.get("learning_rate") for m in row["settings"]["members"]] == [
        runner.profile.teacher.get("learning_rate"), 1e-3]
    # its row: the mean of its members' expected grades on the test pairs
    grades = [pd.read_parquet(runs / "eval" / m / "scores.parquet") for m in members]
    mean = pd.read_parquet(runs / "eval" / "teacher-ensemble-mixed" / "scores.parquet")
    np.testing.assert_allclose(mean["score"], (grades[0]["score"] + grades[1]["score"]) / 2, rtol=0, atol=1e-9)
    # its labels: the mean of the two recipes' probabilities, pair by pair
    probs = [np.stack(read_table(str(next(data.glob(f"labelled-{m}-2x-*"))))[schema.TEACHER_PROBS].to_list())
             for m in members]
    composed = read_table(str(next(data.glob("labelled-teacher-ensemble-mixed-2x-*"))))
    np.testing.assert_allclose(np.stack(composed[schema.TEACHER_PROBS].to_list()),
                               np.mean([p.astype(np.float32) for p in probs], axis=0), rtol=0, atol=1e-6)
    student = by_run["student-margin-2x-ensemble-mixed"]
    assert (student["labels"], student["augmented"], student["loss"]) == ("teacher-ensemble-mixed", 2.0, "margin_mse")
    # a member's own largest-size student learns that member's labels, not teacher-soft's
    own = by_run["student-margin-2x-soft-lr1e-3"]
    assert (own["labels"], own["augmented"], own["train_pairs"]) == ("teacher-soft-lr1e-3", 2.0,
                                                                      by_run["student-margin-2x"]["train_pairs"])
    taught = read_table(str(next(data.glob("distill-teacher-soft-lr1e-3-2x-*.parquet"))))
    labelled = read_table(str(next(data.glob("labelled-teacher-soft-lr1e-3-2x-*"))))
    np.testing.assert_array_equal(taught[schema.TEACHER_SCORE], labelled[schema.TEACHER_SCORE].iloc[:len(taught)])
    assert own["metrics"] != by_run["student-margin-2x"]["metrics"]


def test_a_distilled_teacher_entry_can_name_an_ensemble_at_0x(finished, tmp_path, monkeypatch, tiny_teacher_dir,
                                                               tiny_student_dir):
    """`teacher-ensemble-TAG@0`: a student of the mean of its members' labels of the training pairs, with no
    teacher trained again."""

    runner, rows, root = finished
    patch_test_plan(monkeypatch, distil_teachers=["teacher-ensemble-mixed@0", "teacher-ensemble-mixed@0/seed14"])
    planned = {e.name: e for e in plan("test")}
    zero, again = planned["student-margin-0x-ensemble-mixed"], planned["student-margin-0x-ensemble-mixed-seed14"]
    assert (zero.labels, zero.augmented, zero.own_pairs, zero.seed) == ("teacher-ensemble-mixed", 0.0, False, 13)
    assert (again.labels, again.augmented, again.seed) == ("teacher-ensemble-mixed", 0.0, 14)

    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    folder, models = runs / "data", ("teacher-soft", "teacher-soft-lr1e-3")
    trained = {m: (runs / "models" / m / "kdrank.json").stat().st_mtime_ns for m in models}
    Runner("test", str(root / "train.csv"), str(runs), fmt="homedepot", teacher_model=tiny_teacher_dir,
           student_model=tiny_student_dir).run(["student-margin-0x-ensemble-mixed"])
    assert {m: (runs / "models" / m / "kdrank.json").stat().st_mtime_ns for m in models} == trained
    row = {r["run"]: r for r in read_results(runs)}["student-margin-0x-ensemble-mixed"]
    n = len(pd.read_parquet(runner.paths()["train"]))
    assert (row["labels"], row["augmented"], row["train_pairs"]) == ("teacher-ensemble-mixed", 0.0, n)
    # the mean of the members' labels of the training pairs (each the same as its 2x set's first rows)
    members = []
    for name in models:
        own, = folder.glob(f"labelled-{name}-0x-*")
        members.append(np.stack(read_table(str(own))[schema.TEACHER_PROBS].to_list()).astype(np.float32))
        largest, = folder.glob(f"labelled-{name}-2x-*")
        first = np.stack(read_table(str(largest))[schema.TEACHER_PROBS].to_list())[:n]
        np.testing.assert_allclose(members[-1], first, rtol=0, atol=1e-5)
    composed, = folder.glob("labelled-teacher-ensemble-mixed-0x-*")
    probs = np.stack(read_table(str(composed))[schema.TEACHER_PROBS].to_list())
    np.testing.assert_allclose(probs, np.mean(members, axis=0), rtol=0, atol=1e-6)
    taught, = folder.glob("distill-teacher-ensemble-mixed-0x-*.parquet")
    np.testing.assert_array_equal(pd.read_parquet(taught)[schema.TEACHER_SCORE],
                                  read_table(str(composed))[schema.TEACHER_SCORE])


def test_a_distilled_teacher_entry_can_blend_the_human_grades_into_the_training_pairs_targets(
        finished, tmp_path, monkeypatch, tiny_teacher_dir, tiny_student_dir):
    """`/humanP`: the training pairs' targets are (1 - P%) x the teacher's expected grade + P% x the human grade;
    the student learns exactly those, and no teacher is trained again."""

    runner, rows, root = finished
    patch_test_plan(monkeypatch, distil_teachers=["teacher-soft-lr1e-3@0/lr3e-4/human25/steps40",
                                                  "teacher-ensemble-mixed@0/seed14/human50"])
    planned = {e.name: e for e in plan("test")}
    blend = planned["student-margin-0x-soft-lr1e-3-human25-steps40-lr3e-4"]
    mixed = planned["student-margin-0x-ensemble-mixed-human50-seed14"]
    assert (blend.labels, blend.augmented, blend.human_weight, blend.seed) == ("teacher-soft-lr1e-3", 0.0, 0.25, 13)
    assert blend.settings == {"min_steps": 40, "learning_rate": 3e-4} and "at least 40 steps" in blend.description
    assert "learning rate 3e-4" in blend.description
    assert (mixed.labels, mixed.human_weight, mixed.seed, mixed.settings) == ("teacher-ensemble-mixed", 0.5, 14,
                                                                              {"seed": 14})
    assert "25% human grades" in blend.description

    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    folder = runs / "data"
    trained = (runs / "models" / "teacher-soft-lr1e-3" / "kdrank.json").stat().st_mtime_ns
    again = Runner("test", str(root / "train.csv"), str(runs), fmt="homedepot", teacher_model=tiny_teacher_dir,
                   student_model=tiny_student_dir)
    again.run([blend.name])
    assert (runs / "models" / "teacher-soft-lr1e-3" / "kdrank.json").stat().st_mtime_ns == trained
    train = pd.read_parquet(runner.paths()["train"])
    blended, = folder.glob("distill-teacher-soft-lr1e-3-0x-*-human25.parquet")
    plain = blended.with_name(blended.name.replace("-human25", ""))
    teacher = pd.read_parquet(plain)[schema.TEACHER_SCORE].to_numpy()
    target = pd.read_parquet(blended)[schema.TEACHER_SCORE].to_numpy()
    np.testing.assert_allclose(target, 0.75 * teacher + 0.25 * train[schema.GRADE].to_numpy(), rtol=0, atol=1e-12)
    assert not np.allclose(target, teacher)
    meta = json.loads((runs / "models" / blend.name / "kdrank.json").read_text())
    assert meta["training"]["settings"]["train"] == str(blended)
    assert meta["training"]["settings"]["train_table"]["target_sum"] == pytest.approx(target.sum(), abs=1e-5)
    assert meta["training"]["summary"]["steps"] == 40  # `/steps40`: more than the test profile's one epoch
    assert meta["training"]["settings"]["config"]["learning_rate"] == 3e-4  # `/lr3e-4`
    row = {r["run"]: r for r in read_results(runs)}[blend.name]
    assert (row["labels"], row["human_weight"], row["train_pairs"]) == ("teacher-soft-lr1e-3", 0.25, len(train))
    assert "| teacher-soft-lr1e-3 + 25% human grades | 0x |" in experiment_report.results_table([row])

    # at an augmented size only the training pairs, which come first, take the grades
    two, = folder.glob("distill-teacher-soft-2x-*.parquet")
    mixed_two = pd.read_parquet(again.blended_set(str(two), 0.5))
    plain_two, n = pd.read_parquet(two), len(train)
    np.testing.assert_allclose(mixed_two[schema.TEACHER_SCORE].iloc[:n],
                               0.5 * plain_two[schema.TEACHER_SCORE].iloc[:n] + 0.5 * train[schema.GRADE], atol=1e-12)
    assert mixed_two[schema.TEACHER_SCORE].iloc[n:].equals(plain_two[schema.TEACHER_SCORE].iloc[n:])
    assert len(mixed_two) == len(plain_two) > n


def test_a_teacher_soft_entry_trains_the_curve_runs_recipe_from_its_labels_and_stays_off_the_curve(
        finished, tmp_path, monkeypatch, tiny_teacher_dir, tiny_student_dir):
    """`teacher-soft@2/lr3e-4`: the 2x curve run's very training set and settings, at learning rate 3e-4, with
    no teacher trained or labelling done again; the report's scaling curve keeps the plan's 2x run."""
    runner, rows, root = finished
    patch_test_plan(monkeypatch, distil_teachers=["teacher-soft@2/lr3e-4"])
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    teacher = (runs / "models" / "teacher-soft" / "kdrank.json").stat().st_mtime_ns
    made = sorted(p.name for p in (runs / "data").iterdir())
    again = Runner("test", str(root / "train.csv"), str(runs), fmt="homedepot", teacher_model=tiny_teacher_dir,
                   student_model=tiny_student_dir)
    again.run(["student-margin-2x-lr3e-4"])
    assert (runs / "models" / "teacher-soft" / "kdrank.json").stat().st_mtime_ns == teacher
    assert sorted(p.name for p in (runs / "data").iterdir()) == made  # nothing labelled or written again
    curve, variant = (json.loads((runs / "models" / name / "kdrank.json").read_text())["training"]["settings"]
                      for name in ("student-margin-2x", "student-margin-2x-lr3e-4"))
    assert Path(variant["train"]).name == Path(curve["train"]).name  # the same set, made in the copied folder
    assert variant["train_table"] == curve["train_table"]
    assert variant["config"] == {**curve["config"], "learning_rate": 3e-4}
    assert curve["config"]["learning_rate"] != 3e-4
    new = read_results(runs)
    row = {r["run"]: r for r in new}["student-margin-2x-lr3e-4"]
    assert (row["labels"], row["augmented"], row["loss"]) == ("teacher-soft", 2.0, "margin_mse")
    points, repeats = experiment_report.scaling_points(new)
    assert [r["run"] for r in points] == ["student-margin-0x", "student-margin-1x", "student-margin-2x"]
    assert "student-margin-2x-lr3e-4" not in [r["run"] for r in repeats]


def test_a_blend_refuses_a_set_that_does_not_start_with_the_training_pairs(finished, tmp_path):
    runner, rows, root = finished
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    again = Runner("test", str(root / "train.csv"), str(runs), fmt="homedepot")
    zero, = (runs / "data").glob("distill-teacher-soft-0x-*.parquet")
    shuffled = runs / "data" / "distill-shuffled.parquet"
    pd.read_parquet(zero).iloc[::-1].to_parquet(shuffled, index=False)
    with pytest.raises(RuntimeError, match=r"distill-shuffled.parquet does not start with exactly the training pairs"):
        again.blended_set(str(shuffled), 0.5)
    assert not list((runs / "data").glob("distill-shuffled-human*"))
    with pytest.raises(ValueError, match=r"between 0 and 1 \(exclusive\), got 1.0"):
        again.blended_set(str(zero), 1.0)


def test_the_born_again_control_distils_the_human_label_students_scores_of_its_pairs(finished):
    runner, rows, root = finished
    by_run = {r["run"]: r for r in rows}
    row = by_run["student-margin-0x-bornagain"]
    assert (row["labels"], row["loss"], row["augmented"]) == ("student-human", "margin_mse", 0.0)
    assert row["train_pairs"] == by_run["student-margin-0x"]["train_pairs"]
    again = by_run["student-margin-0x-bornagain-seed14"]  # another student seed, the same (seed 13) teacher
    assert again["seed"] == 14 and again["settings"]["seed"] == 14 and again["metrics"] != row["metrics"]
    data = root / "runs" / "data"
    sets = list(data.glob("distill-student-human-0x-*.parquet"))
    assert len(sets) == 1
    distilled = pd.read_parquet(sets[0])
    train = pd.read_parquet(runner.paths()["train"])
    key = [schema.QUERY_ID, schema.PRODUCT_ID]
    assert distilled[key].equals(train[key])
    # its targets: the human-label student's scores on the grade scale, as that checkpoint scores them anywhere
    scorer = PairScorer(str(root / "runs" / "models" / "student-human"))
    try:
        expected = scorer.to_grade(scorer.score(train[schema.QUERY].tolist(), train[schema.PRODUCT_TEXT].tolist(),
                                                progress=False).score)
    finally:
        scorer.close()
    assert np.allclose(distilled[schema.TEACHER_SCORE], expected, atol=1e-5)
    assert not np.allclose(distilled[schema.TEACHER_SCORE], train[schema.GRADE], atol=1e-3)  # not the grades
    # at 2x: the same training pairs and the teacher's 2x run's new pairs, in its order, with the student's grades
    two = by_run["student-margin-2x-bornagain"]
    assert (two["labels"], two["augmented"], two["seed"]) == ("student-human", 2.0, 13)
    assert two["train_pairs"] == by_run["student-margin-2x"]["train_pairs"] == 3 * len(train)
    mine = pd.read_parquet(next(data.glob("distill-student-human-2x-*.parquet")))
    llm = pd.read_parquet(next(data.glob("distill-teacher-soft-2x-*.parquet")))
    assert mine[key].equals(llm[key]) and mine[schema.SOURCE].equals(llm[schema.SOURCE])
    assert np.allclose(mine[schema.TEACHER_SCORE].iloc[:len(train)], expected, atol=1e-5)
    assert not np.allclose(mine[schema.TEACHER_SCORE], llm[schema.TEACHER_SCORE], atol=1e-3)
    assert mine[schema.TEACHER_SCORE].notna().all()
    assert not experiment_report.scaling_points([row, two])[0]  # neither is a point of the teacher's scaling curve
    # the same control from the other seed's human-label student: its own scores, the first seed's student
    other = by_run["student-margin-0x-bornagain-from-seed14"]
    assert (other["labels"], other["seed"]) == ("student-human-seed14", 13)
    theirs = pd.read_parquet(next(data.glob("distill-student-human-seed14-0x-*.parquet")))
    assert theirs[key].equals(train[key])
    assert not np.allclose(theirs[schema.TEACHER_SCORE], distilled[schema.TEACHER_SCORE], atol=1e-3)
    # a profile opts in: the full plan has all seven (its sizes with both seeds), the reduced plan (sized to
    # 2 hours) none
    assert [e.name for e in plan("full") if "bornagain" in e.name] == [
        "student-margin-0x-bornagain", "student-margin-2x-bornagain", "student-margin-4x-bornagain",
        "student-margin-0x-bornagain-seed14", "student-margin-2x-bornagain-seed14",
        "student-margin-4x-bornagain-seed14", "student-margin-0x-bornagain-from-seed14"]
    four = next(e for e in plan("full") if e.name == "student-margin-4x-bornagain-seed14")
    assert (four.labels, four.augmented, four.seed, four.loss) == ("student-human", 4.0, 14, "margin_mse")
    assert not [e.name for e in plan("reduced") if "bornagain" in e.name]


def test_rerun_skips_finished_runs(finished):
    runner, rows, root = finished
    model = root / "runs" / "models" / "teacher-soft" / "kdrank.json"
    before = model.stat().st_mtime_ns
    again = Runner("test", runner.data, str(root / "runs"), fmt="homedepot").run(["teacher-soft", "student-human"])
    assert model.stat().st_mtime_ns == before
    wanted = ("teacher-soft", "student-human")
    assert [r["metrics"] for r in again] == [r["metrics"] for r in rows if r["run"] in wanted]


def test_only_runs_one_experiment_and_what_it_needs(tmp_path, tiny_teacher_dir, tiny_student_dir):
    data = write_homedepot_csv(tmp_path / "train.csv", n_queries=20)
    runner = Runner("test", data, str(tmp_path / "runs"), fmt="homedepot", teacher_model=tiny_teacher_dir,
                    student_model=tiny_student_dir)
    runner.run(["student-margin-1x"])
    rows = read_results(tmp_path / "runs")
    assert sorted(r["run"] for r in rows) == ["student-margin-1x", "teacher-soft"]
    # each row's command names the models it was made with, so it makes the same row again
    for row in rows:
        assert f"--teacher-model {tiny_teacher_dir} --student-model {tiny_student_dir} " in row["command"]


def test_a_runs_folder_is_not_split_again_under_its_finished_rows(tmp_path, tiny_teacher_dir, tiny_student_dir,
                                                                   capsys):
    data = write_homedepot_csv(tmp_path / "train.csv", n_queries=20)
    Runner("test", data, str(tmp_path / "runs"), fmt="homedepot").run(["baseline-random"])
    test = tmp_path / "runs" / "data" / "test.parquet"
    stamp = test.stat().st_mtime_ns
    # the same bytes under another name split the same: the rows stand
    moved = shutil.copy(data, tmp_path / "moved.csv")
    Runner("test", str(moved), str(tmp_path / "runs"), fmt="homedepot").run(["baseline-bm25"])
    # other bytes under the same name would split again, under a row scored on the old split
    with open(data, "ab") as file:
        file.write(b"9999,100999,Extra product,extra query,2\n")
    with pytest.raises(ValueError, match=r"2 finished row\(s\) .* split again \(input_sha256 differ\): use a new"):
        Runner("test", data, str(tmp_path / "runs"), fmt="homedepot").run(["baseline-biencoder"])
    assert test.stat().st_mtime_ns == stamp
    assert cli.main(["experiment", "run", "--profile", "test", "--data", data, "--format", "homedepot",
                     "--output", str(tmp_path / "runs"), "--force"]) == 2
    assert "without --only it would redo every planned run" in capsys.readouterr().err


def test_a_bf16_cpu_run_says_so_in_its_hardware_and_its_command(tmp_path, tiny_teacher_dir, tiny_student_dir,
                                                                 monkeypatch):
    import torch

    from components import runtime

    if torch.cuda.is_available():
        pytest.skip("KDRANK_CPU_BF16 is about CPU-only runs")
    data = write_homedepot_csv(tmp_path / "train.csv", n_queries=12)
    monkeypatch.setenv(runtime.CPU_BF16, "1")
    row, = Runner("test", data, str(tmp_path / "bf16"), fmt="homedepot", teacher_model=tiny_teacher_dir,
                  student_model=tiny_student_dir).run(["student-human"])
    assert row["hardware"].endswith("cores (CPU only, bf16 autocast)")
    assert row["command"].startswith("KDRANK_CPU_BF16=1 kdrank experiment run --profile test ")
    monkeypatch.delenv(runtime.CPU_BF16)
    row, = Runner("test", data, str(tmp_path / "fp32"), fmt="homedepot", teacher_model=tiny_teacher_dir,
                  student_model=tiny_student_dir).run(["student-human"])
    assert row["hardware"].endswith("cores (CPU only)") and row["command"].startswith("kdrank experiment run ")


def test_prepare_makes_the_shared_inputs_and_the_runs_after_it_find_them_finished(tmp_path, tiny_teacher_dir,
                                                                                  tiny_student_dir, capsys):
    data = write_homedepot_csv(tmp_path / "train.csv", n_queries=20)
    out = tmp_path / "runs"
    assert cli.main(["experiment", "prepare", "--profile", "test", "--data", data, "--format", "homedepot",
                     "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    top = out / "data" / "augmented-2x.parquet"  # the test profile's largest multiple
    train = pd.read_parquet(out / "data" / "train.parquet")
    assert len(pd.read_parquet(top)) == 3 * len(train) and f"augmented  {3 * len(train):>9,} rows" in printed
    assert not (out / "models").exists() and not (out / "results.jsonl").exists()  # no teacher, no rows
    made = top.stat().st_mtime_ns
    runner = Runner("test", data, str(out), fmt="homedepot", teacher_model=tiny_teacher_dir,
                    student_model=tiny_student_dir)
    runner.run(["student-margin-1x"])
    assert top.stat().st_mtime_ns == made
    assert sorted(r["run"] for r in read_results(out)) == ["student-margin-1x", "teacher-soft"]


def test_a_0x_run_labels_the_training_pairs_alone(tmp_path, tiny_teacher_dir, tiny_student_dir):
    data = write_homedepot_csv(tmp_path / "train.csv", n_queries=20)
    runner = Runner("test", data, str(tmp_path / "runs"), fmt="homedepot", teacher_model=tiny_teacher_dir,
                    student_model=tiny_student_dir)
    runner.run(["student-margin-0x"])
    folder = tmp_path / "runs" / "data"
    assert not list(folder.glob("augmented-2x*")) and not list(folder.glob("labelled-*-2x-*"))
    zero = pd.read_parquet(next(folder.glob("distill-teacher-soft-0x-*.parquet")))
    train = pd.read_parquet(runner.paths()["train"])
    key = [schema.QUERY_ID, schema.PRODUCT_ID]
    assert zero[key].equals(train[key].astype({schema.PRODUCT_ID: str}))
    # the same labels as the training pairs get inside the largest set, which a later run labels
    runner.run(["student-margin-1x"])
    one = pd.read_parquet(next(folder.glob("distill-teacher-soft-1x-*.parquet")))
    assert one[key].iloc[: len(zero)].equals(zero[key])
    assert np.allclose(one[schema.TEACHER_SCORE].iloc[: len(zero)], zero[schema.TEACHER_SCORE], atol=1e-5)


def test_a_distilled_teacher_entry_below_the_largest_size_labels_its_own_pairs(tmp_path, tiny_teacher_dir,
                                                                               tiny_student_dir, monkeypatch):
    patch_test_plan(monkeypatch, distil_teachers=["teacher-soft-seed14", "teacher-soft-seed14@1",
                                                  "teacher-soft-seed14@0/seed15"])
    planned = {e.name: e for e in plan("test")}
    # a teacher's seed is "-teacherseedN" in its students' names; "-seedN" stays the student's own seed
    assert [n for n in planned if "teacherseed" in n] == [
        "student-margin-2x-soft-teacherseed14", "student-margin-1x-soft-teacherseed14",
        "student-margin-0x-soft-teacherseed14-seed15"]
    assert [planned[n].own_pairs for n in planned if "teacherseed" in n] == [False, True, False]
    assert not any(e.own_pairs for e in planned.values() if "teacherseed" not in e.name)  # the curve shares 2x

    data = write_homedepot_csv(tmp_path / "train.csv", n_queries=20)
    runner = Runner("test", data, str(tmp_path / "runs"), fmt="homedepot", teacher_model=tiny_teacher_dir,
                    student_model=tiny_student_dir)
    folder = tmp_path / "runs" / "data"
    key = [schema.QUERY_ID, schema.PRODUCT_ID]
    runner.run(["student-margin-0x-soft-teacherseed14-seed15", "student-margin-1x-soft-teacherseed14"])
    train = pd.read_parquet(runner.paths()["train"])
    top = pd.read_parquet(folder / "augmented-2x.parquet")
    assert not list(folder.glob("labelled-teacher-soft-seed14-2x-*"))  # the largest set is not labelled
    own, = folder.glob("labelled-teacher-soft-seed14-1x-*")
    labelled = read_table(str(own))
    assert len(labelled) == 2 * len(train) and labelled[key].equals(top[key].iloc[:2 * len(train)])
    # the training pairs keep the 0x run's labels; only the new pairs were labelled
    zero = read_table(str(next(folder.glob("labelled-teacher-soft-seed14-0x-*"))))
    np.testing.assert_array_equal(np.stack(labelled[schema.TEACHER_PROBS].iloc[:len(train)].to_list()),
                                  np.stack(zero[schema.TEACHER_PROBS].to_list()))
    assert len(read_table(str(next(folder.glob("new-labels-of-labelled-teacher-soft-seed14-1x-*"))))) == len(train)

    # archived, the 1x set holds the 0x run's labels too (no 0x set is kept beside it), and a new folder's 0x
    # run takes them from it, with no teacher
    from pipelines.archive import archive_runs, restore_runs

    archive, here = tmp_path / "archive", tmp_path / "here"
    archive_runs(tmp_path / "runs", archive)
    assert [p.name for p in (archive / "labels").iterdir() if "seed14" in p.name] == ["teacher-soft-seed14-1x"]
    (here / "data").mkdir(parents=True)
    for name in ("train.parquet", "val.parquet", "test.parquet", "catalogue.parquet", "summary.json"):
        (here / "data" / name).write_bytes((folder / name).read_bytes())
    restore_runs(archive, here)
    (here / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in read_results(here)
                                                if r["run"] != "student-margin-0x-soft-teacherseed14-seed15"))
    Runner("test", data, str(here), fmt="homedepot", teacher_model=tiny_teacher_dir,
           student_model=tiny_student_dir).run(["student-margin-0x-soft-teacherseed14-seed15"])
    assert not (here / "models" / "teacher-soft-seed14").exists()
    restored = read_table(str(next((here / "data").glob("labelled-teacher-soft-seed14-0x-*"))))
    np.testing.assert_allclose(restored[schema.TEACHER_SCORE], zero[schema.TEACHER_SCORE], atol=1e-6)
    first, = folder.glob("distill-teacher-soft-seed14-1x-*.parquet")
    assert pd.read_parquet(first)[key].equals(labelled[key])

    # once the largest set is labelled, the same run takes its first rows instead of labelling again
    runner.run(["student-margin-2x-soft-teacherseed14"])
    runner.run(["student-margin-1x-soft-teacherseed14"], force=True)
    assert len(list(folder.glob("labelled-teacher-soft-seed14-1x-*"))) == 1
    shared = read_table(str(next(folder.glob("labelled-teacher-soft-seed14-2x-*"))))
    again, = set(folder.glob("distill-teacher-soft-seed14-1x-*.parquet")) - {first}
    again = pd.read_parquet(again)
    assert again[key].equals(labelled[key])
    np.testing.assert_array_equal(again[schema.TEACHER_SCORE], shared[schema.TEACHER_SCORE].iloc[:len(again)])
    np.testing.assert_allclose(again[schema.TEACHER_SCORE], labelled[schema.TEACHER_SCORE], atol=1e-5)


def test_a_distilled_teacher_entry_reuses_its_largest_smaller_own_set(tmp_path, tiny_teacher_dir, tiny_student_dir,
                                                                       monkeypatch):
    """After TEACHER@0 and TEACHER@1, TEACHER@2 labels only the pairs after the 1x set's (not after the 0x set's)."""

    patch_test_plan(monkeypatch, multiples=[0, 1, 2, 3],
                    distil_teachers=["teacher-soft-seed14@0", "teacher-soft-seed14@1", "teacher-soft-seed14@2"])
    data = write_homedepot_csv(tmp_path / "train.csv", n_queries=20)
    runner = Runner("test", data, str(tmp_path / "runs"), fmt="homedepot", teacher_model=tiny_teacher_dir,
                    student_model=tiny_student_dir)
    runner.run(["student-margin-0x-soft-teacherseed14", "student-margin-1x-soft-teacherseed14",
                "student-margin-2x-soft-teacherseed14"])
    folder = tmp_path / "runs" / "data"
    n = len(pd.read_parquet(runner.paths()["train"]))
    assert not list(folder.glob("labelled-teacher-soft-seed14-3x-*"))  # the largest set is not labelled
    one, = folder.glob("labelled-teacher-soft-seed14-1x-*")
    two, = folder.glob("labelled-teacher-soft-seed14-2x-*")
    one, two = read_table(str(one)), read_table(str(two))
    top = pd.read_parquet(folder / "augmented-3x.parquet")
    key = [schema.QUERY_ID, schema.PRODUCT_ID]
    assert len(two) == 3 * n and two[key].equals(top[key].iloc[:3 * n])
    # the 2x set starts with the 1x set's labels bit for bit, and only its last n pairs were labelled
    np.testing.assert_array_equal(np.stack(two[schema.TEACHER_PROBS].iloc[:2 * n].to_list()),
                                  np.stack(one[schema.TEACHER_PROBS].to_list()))
    assert len(read_table(str(next(folder.glob("new-labels-of-labelled-teacher-soft-seed14-1x-*"))))) == n
    assert len(read_table(str(next(folder.glob("new-labels-of-labelled-teacher-soft-seed14-2x-*"))))) == n
    # relabelled from scratch, the reused rows agree to float rounding
    fresh = tmp_path / "fresh"
    from components.label import label_pairs
    label_pairs(str(folder / "augmented-3x-first-2x.parquet"), str(tmp_path / "runs" / "models" /
                                                                   "teacher-soft-seed14"), str(fresh), num_shards=1)
    np.testing.assert_allclose(read_table(str(fresh))[schema.TEACHER_SCORE], two[schema.TEACHER_SCORE], atol=1e-5)

    # archived, the 2x set stands for the 1x and 0x sets it starts with; restored, it gives back the 1x
    # student's labels bit for bit with no teacher
    from pipelines.archive import archive_runs, restore_runs
    archive_runs(tmp_path / "runs", tmp_path / "archive")
    assert [p.name for p in (tmp_path / "archive" / "labels").iterdir()] == ["teacher-soft-seed14-2x"]
    def split_only(name: str) -> Path:
        where = tmp_path / name / "data"
        where.mkdir(parents=True)
        for file in ("train.parquet", "val.parquet", "test.parquet", "catalogue.parquet", "summary.json"):
            shutil.copy(folder / file, where / file)
        return where

    def remade_without_teacher(where: Path, runs: tuple[tuple[str, str], ...]) -> None:
        runner = Runner("test", data, str(where.parent), fmt="homedepot", teacher_model=tiny_teacher_dir,
                        student_model=tiny_student_dir)
        for run, size in runs:
            row = runner.run([run], force=True)[0]
            original, = folder.glob(f"distill-teacher-soft-seed14-{size}-*.parquet")
            pd.testing.assert_frame_equal(pd.read_parquet(next(where.glob(f"distill-teacher-soft-seed14-{size}-*"))),
                                          pd.read_parquet(original))
            assert row["metrics"] == next(r for r in read_results(tmp_path / "runs") if r["run"] == run)["metrics"]
        assert not (where.parent / "models" / "teacher-soft-seed14").exists()

    here = split_only("here")
    restore_runs(tmp_path / "archive", here.parent)
    shutil.rmtree(here / "archived-pairs")  # as from an archive without the set's pairs: this machine's own set
    remade_without_teacher(here, (("student-margin-1x-soft-teacherseed14", "1x"),
                                  ("student-margin-0x-soft-teacherseed14", "0x")))

    # the 2x set's pairs go with it (the 3x set's first rows, by their digest), so a folder whose augmentation
    # gives other pairs (another machine's encoder) distils from it too: no augmenting, no teacher
    carried, = (tmp_path / "archive" / "pairs").iterdir()
    record = json.loads((carried / "pairs.json").read_text())
    assert carried.name.startswith("augmented-3x-first-2x-") and record["pairs"] == 3 * n
    assert record["first_rows_of"] == len(top)
    elsewhere = split_only("elsewhere")
    other = pd.concat([top.iloc[:n], top.iloc[n:].iloc[::-1]], ignore_index=True)  # same settings, other order
    other.attrs = top.attrs
    other.to_parquet(elsewhere / "augmented-3x.parquet", index=False)
    restore_runs(tmp_path / "archive", elsewhere.parent)
    remade_without_teacher(elsewhere, (("student-margin-2x-soft-teacherseed14", "2x"),
                                       ("student-margin-1x-soft-teacherseed14", "1x")))
    assert pd.read_parquet(elsewhere / "augmented-3x.parquet")[key].equals(other[key])  # left as it was


def test_report_writes_table_and_scaling_plot(finished, tmp_path):
    runner, rows, root = finished
    md, png = tmp_path / "results.md", tmp_path / "plots" / "scaling.png"
    assert cli.main(["experiment", "report", "--runs", str(root / "runs"), "--output", str(md),
                     "--plot", str(png)]) == 0
    text = md.read_text()
    for name in ("baseline-bm25", "teacher-soft", "student-margin-2x", "student-pointwise-2x"):
        assert f"| {name} |" in text
    assert "![scaling curve](plots/scaling.png)" in text and "pairwise 95% CI" in text
    assert "| run | pairwise acc. minus teacher-soft (95% CI) | pairwise acc. minus student-human (95% CI) |" in text
    paired = text.split("Paired differences")[1]
    assert "| teacher-soft |  | " in paired and " to " in paired.split("| student-margin-2x |")[1].split("\n")[0]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_report_draws_a_curve_per_named_teacher_and_refuses_one_without_a_curve(finished, tmp_path, capsys):
    runner, rows, root = finished
    runs = str(root / "runs")
    one, two = tmp_path / "one.png", tmp_path / "two.png"
    assert cli.main(["experiment", "report", "--runs", runs, "--output", str(tmp_path / "one.md"),
                     "--plot", str(one)]) == 0
    assert cli.main(["experiment", "report", "--runs", runs, "--output", str(tmp_path / "two.md"),
                     "--plot", str(two), "--curve", "teacher-soft,student-human"]) == 0  # with the born-again curve
    assert two.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and two.read_bytes() != one.read_bytes()
    assert "--curve teacher-soft,student-human -->" in (tmp_path / "two.md").read_text().splitlines()[0]
    capsys.readouterr()
    bad_md, bad_png = tmp_path / "bad.md", tmp_path / "bad.png"
    assert cli.main(["experiment", "report", "--runs", runs, "--output", str(bad_md), "--plot", str(bad_png),
                     "--curve", "teacher-soft,teacher-hard"]) == 2  # a teacher no student was distilled from
    err = capsys.readouterr().err
    assert "no margin-MSE student runs on the labels of teacher-hard to plot" in err
    assert "teachers with a curve in these rows: " in err and "student-human, " in err and "teacher-soft" in err
    assert cli.main(["experiment", "report", "--runs", runs, "--output", str(bad_md), "--curve", "teacher-soft"]) == 2
    assert "give --plot PNG too" in capsys.readouterr().err
    assert cli.main(["experiment", "report", "--runs", runs, "--output", str(bad_md), "--plot", str(bad_png),
                     "--curve", "teacher-soft", "--curve", "teacher-soft"]) == 2
    assert "distinct teachers at most (--curve), got ['teacher-soft', 'teacher-soft']" in capsys.readouterr().err
    assert not bad_md.exists() and not bad_png.exists()


def test_report_names_the_runs_that_resumed(finished):
    runner, rows, root = finished
    assert experiment_report.resumed_note(rows) == ""  # nothing in the finished plan was cut short
    cut = [{**rows[0], "run": "teacher-x", "resumed_at_batch": [85]},
           {**rows[1], "run": "student-y", "resumed_at_step": [3, 40]}]
    note = experiment_report.resumed_note([*rows, *cut])
    assert note.startswith("Training cut short and resumed")
    assert "teacher-x at batch 85; student-y at step 3, 40." in note


def test_report_pairs_against_the_named_references(finished, tmp_path, capsys):
    runner, rows, root = finished
    md = tmp_path / "results.md"
    assert cli.main(["experiment", "report", "--runs", str(root / "runs"), "--output", str(md),
                     "--reference", "baseline-bm25"]) == 0
    text = md.read_text()
    assert "| run | pairwise acc. minus baseline-bm25 (95% CI) |\n" in text and "minus teacher-soft" not in text
    assert text.startswith("<!-- generated by: kdrank experiment report --runs ")
    assert "--reference baseline-bm25 -->" in text
    assert cli.main(["experiment", "report", "--runs", str(root / "runs"), "--output", str(tmp_path / "x.md"),
                     "--reference", "baseline-bm25,no-such-run"]) == 2
    assert "--reference no-such-run: no per-pair test scores" in capsys.readouterr().err
    assert not (tmp_path / "x.md").exists()


def _bundle(runs: Path, path: Path) -> str:
    """A runs folder packed as gpu_run.sh packs it: rows, eval folders, data summary, training records."""
    import tarfile

    with tarfile.open(path, "w:gz") as tar:
        for item in ["results.jsonl", "eval", "data/summary.json", *(
                str(p.relative_to(runs)) for p in runs.glob("models/*/kdrank.json"))]:
            tar.add(runs / item, arcname=item)
    return str(path)


def test_gpu_merge_adds_runs_that_scored_the_same_test_pairs_only(finished, tmp_path, capsys):
    import shutil

    runner, rows, root = finished
    merge = load_benchmark("gpu_merge")
    bundle = _bundle(root / "runs", tmp_path / "experiment.tgz")
    here = tmp_path / "here"
    shutil.copytree(root / "runs" / "data", here / "data")
    assert merge.main(["--runs", str(here), bundle]) == 0
    assert [r["run"] for r in read_results(here)] == [r["run"] for r in rows]
    assert (here / "eval" / "student-human" / "scores.parquet").is_file()
    assert json.loads((here / "eval" / "teacher-soft" / "checkpoint.json").read_text())["role"] == "teacher"
    assert not (here / "models").exists()  # rescore would take a models/RUN folder for a checkpoint
    assert merge.main(["--runs", str(here), bundle]) == 0  # a second merge adds nothing
    assert len(read_results(here)) == len(rows)

    # A bundle whose runs scored other test pairs (another split) is refused whole.
    other = tmp_path / "other"
    shutil.copytree(root / "runs" / "data", other / "data")
    test = pd.read_parquet(other / "data" / "test.parquet")
    test.iloc[1:].to_parquet(other / "data" / "test.parquet")
    capsys.readouterr()
    assert merge.main(["--runs", str(other), bundle]) == 2
    err = capsys.readouterr().err
    assert "1 not in the runs folder's test split" in err and "not merged" in err
    assert not (other / "results.jsonl").exists() and not (other / "eval").exists()


def test_bad_requests_name_what_is_wrong(tmp_path, finished, capsys):
    runner, rows, root = finished
    with pytest.raises(ValueError, match="student-margin-3x"):
        runner.run(["student-margin-3x"])
    with pytest.raises(ValueError, match="profile 'demo' has no experiment plan"):
        plan("demo")
    assert cli.main(["experiment", "report", "--runs", str(tmp_path), "--output", str(tmp_path / "r.md")]) == 2
    assert "no results.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "r.md").exists()


def test_list_prints_the_plan(capsys):
    assert cli.main(["experiment", "list", "--profile", "reduced"]) == 0
    out = capsys.readouterr().out
    assert "student-margin-8x" in out and "teacher-hard" in out and "ensemble" not in out


def test_seed_spread_summarises_repeated_runs(finished):
    runner, rows, root = finished
    text = experiment_report.seed_spread(rows)
    assert "| student-human | 13, 14 |" in text and "| student-margin-0x | 13, 14 |" in text
    assert "student-margin-1x |" not in text  # not repeated in the test plan


def test_a_retrained_teacher_labels_into_a_new_folder(tmp_path, tiny_teacher_dir, tiny_student_dir):
    data = write_homedepot_csv(tmp_path / "train.csv", n_queries=16)
    runner = Runner("test", data, str(tmp_path / "runs"), fmt="homedepot", teacher_model=tiny_teacher_dir,
                    student_model=tiny_student_dir)
    runner.run(["student-margin-1x"])
    runner.profile = dataclasses.replace(runner.profile, teacher={**runner.profile.teacher, "epochs": 2.0})
    runner.run(["teacher-soft", "student-margin-1x"], force=True)
    labelled = sorted((tmp_path / "runs" / "data").glob("labelled-teacher-soft-2x-*"))
    sets = sorted((tmp_path / "runs" / "data").glob("distill-teacher-soft-1x-*.parquet"))
    assert len(labelled) == 2 and len(sets) == 2
    rows = {r["run"]: r for r in read_results(tmp_path / "runs")}
    assert rows["teacher-soft"]["settings"]["epochs"] == 2.0


def write_held_out_csv(path: Path) -> str:
    """The experiment file's pairs (so its training queries too) plus 12 queries it never had."""
    frame = pd.concat([make_labelled(n_queries=30, per_query=6, seed=3), make_labelled(n_queries=12, seed=99)],
                      ignore_index=True)
    out = pd.DataFrame({"id": range(1, len(frame) + 1), "product_uid": [200000 + i for i in range(len(frame))],
                        "product_title": frame[schema.PRODUCT_TEXT], "search_term": frame[schema.QUERY],
                        "relevance": (1.0 + frame[schema.GRADE]).round(2)})
    out.to_csv(path, index=False)
    return str(path)


def test_rescore_scores_every_run_on_held_out_queries_only(finished, tmp_path):
    runner, rows, root = finished
    runs = root / "runs"
    held_out = write_held_out_csv(tmp_path / "held-out.csv")
    assert cli.main(["experiment", "rescore", "--runs", str(runs), "--test", held_out, "--format", "homedepot",
                     "--name", "wide"]) == 0
    out = runs / "rescored" / "wide"
    info = json.loads((out / "test.json").read_text())
    test = pd.read_parquet(out / "test.parquet")
    trained_on = experiments.training_queries(runs)
    assert info["dropped_training_queries"] > 0 and not set(test[schema.QUERY_ID]) & trained_on
    assert info["queries"] == test[schema.QUERY_ID].nunique() > 12  # new queries and the old test split's
    rescored = {r["run"]: r for r in read_results(out)}
    assert list(rescored) == [r["run"] for r in rows]
    for name, row in rescored.items():
        assert row["metrics"]["n_pairs"] == info["pairs"] == len(test)
        assert row["test_set"]["name"] == "wide" and row["command"].endswith(f"--only {name}")
        assert row["trained_by"] == next(r["command"] for r in rows if r["run"] == name)
        assert (out / "eval" / name / "scores.parquet").exists()
    assert rescored["teacher-soft"]["metrics"] != next(r for r in rows if r["run"] == "teacher-soft")["metrics"]

    scores = out / "eval" / "teacher-soft" / "scores.parquet"
    before = scores.stat().st_mtime_ns
    again = experiments.rescore(str(runs), held_out, "wide", fmt="homedepot", only=["teacher-soft"])
    assert scores.stat().st_mtime_ns == before and again[0] == rescored["teacher-soft"]

    md = tmp_path / "wide.md"
    assert cli.main(["experiment", "report", "--runs", str(runs), "--test-set", "wide", "--output", str(md)]) == 0
    text = md.read_text()
    assert "scored on test set `wide`" in text and "| student-margin-2x |" in text and "--test-set wide" in text


def test_rescore_samples_queries_and_refuses_mixed_settings(finished, tmp_path):
    runner, rows, root = finished
    runs = root / "runs"
    held_out = write_held_out_csv(tmp_path / "held-out.csv")
    rows5 = experiments.rescore(str(runs), held_out, "five", fmt="homedepot", max_queries=5, seed=1,
                                only=["baseline-bm25"])
    assert rows5[0]["metrics"]["n_queries"] <= 5
    assert pd.read_parquet(runs / "rescored" / "five" / "test.parquet")[schema.QUERY_ID].nunique() == 5
    with pytest.raises(ValueError, match="use another --name"):
        experiments.rescore(str(runs), held_out, "five", fmt="homedepot", max_queries=6, seed=1)
    with pytest.raises(ValueError, match="no result row"):
        experiments.rescore(str(runs), held_out, "five", fmt="homedepot", max_queries=5, seed=1,
                            only=["student-margin-9x"])
    with pytest.raises(ValueError, match="must be letters"):
        experiments.rescore(str(runs), held_out, "../x", fmt="homedepot")


def _val_record(path: Path, losses: list[float]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"training": {"summary": {"val_loss_per_epoch": losses}}}))


def test_step_6_students_are_the_ensembles_and_its_best_member_on_validation_loss(tmp_path):
    pick = experiments.stronger_teacher_students
    _val_record(tmp_path / "models" / "teacher-soft" / "kdrank.json", [0.95, 0.90])
    _val_record(tmp_path / "eval" / "teacher-soft-lr1e-3" / "checkpoint.json", [0.80, 0.85])  # an archived record
    names, why = pick(tmp_path, "test", "teacher-ensemble-mixed")
    assert names == ["student-margin-2x-ensemble-mixed", "student-margin-2x-soft-lr1e-3"]  # the last epoch counts
    assert "teacher-soft: validation loss 0.9000" in why and "lowest validation loss: teacher-soft-lr1e-3" in why
    _val_record(tmp_path / "models" / "teacher-soft" / "kdrank.json", [0.70])
    assert pick(tmp_path, "test", "teacher-ensemble-mixed")[0] == ["student-margin-2x-ensemble-mixed",
                                                                   "student-margin-2x"]
    # a member with no record, or with no student of its own in the plan, is passed over and named
    _val_record(tmp_path / "models" / "teacher-soft-seed14" / "kdrank.json", [0.10])
    names, why = pick(tmp_path, "test", "teacher-ensemble")
    assert names == ["student-margin-2x-ensemble", "student-margin-2x"]
    assert "teacher-soft-seed14: validation loss 0.1000, no student of its own planned" in why
    names, why = pick(tmp_path, "test", "teacher-ensemble-lr1e-3")
    assert names == ["student-margin-2x-ensemble-lr1e-3", "student-margin-2x-soft-lr1e-3"]
    assert "teacher-soft-lr1e-3-seed14: no validation loss" in why
    names, why = pick(tmp_path / "none", "test", "teacher-ensemble-mixed")  # no member trained here: its own only
    assert names == ["student-margin-2x-ensemble-mixed"] and "lowest" not in why
    with pytest.raises(ValueError, match=r"teacher-soft is not an ensemble of the test plan: \['teacher-ensemble'"):
        pick(tmp_path, "test", "teacher-soft")


@pytest.mark.parametrize("signame, code", [("SIGTERM", 143), ("SIGINT", 130)])
def test_a_run_stopped_by_sigterm_or_ctrl_c_exits_128_plus_it_and_the_same_command_resumes_it(
        tmp_path, tiny_teacher_dir, tiny_student_dir, monkeypatch, capsys, signame, code):
    import os
    import signal

    import components.teacher as teacher_module

    data = write_homedepot_csv(tmp_path / "train.csv", n_queries=12)
    command = ["experiment", "run", "--profile", "test", "--data", data, "--format", "homedepot", "--output",
               str(tmp_path / "runs"), "--only", "teacher-hard", "--teacher-model", tiny_teacher_dir,
               "--student-model", tiny_student_dir]
    real, calls = teacher_module.soft_target_cross_entropy, []

    def preempted(*args, **kwargs):  # the pod's SIGTERM, or a Ctrl-C, arrives during the third training batch
        calls.append(__import__("torch").is_grad_enabled())
        if calls.count(True) == 3 and calls[-1]:
            os.kill(os.getpid(), getattr(signal, signame))
        return real(*args, **kwargs)

    monkeypatch.setenv("KDRANK_STATE_EVERY", "0")
    monkeypatch.setattr(teacher_module, "soft_target_cross_entropy", preempted)
    assert cli.main(command) == code
    assert f"stopped by {signame} at batch 3 of" in capsys.readouterr().err
    assert read_results(tmp_path / "runs") == []
    monkeypatch.setattr(teacher_module, "soft_target_cross_entropy", real)
    assert cli.main(command) == 0
    row, = read_results(tmp_path / "runs")
    assert row["run"] == "teacher-hard" and row["resumed_at_batch"] == [3] and row["metrics"]["n_pairs"] > 0
    assert not (tmp_path / "runs" / "models" / "teacher-hard.state").exists()
    assert cli.main(["experiment", "report", "--runs", str(tmp_path / "runs"), "--output", str(tmp_path / "r.md")]) == 0
    assert "resumed from its saved state (the same model; train time is the sum of the parts): teacher-hard at " \
           "batch 3." in (tmp_path / "r.md").read_text()


def test_a_row_names_a_gpu_that_runs_in_fp32(monkeypatch):
    """A GPU without native bf16 runs in fp32 (components.runtime); its rows say so, a bf16 GPU's as before."""
    import torch

    from components import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(runtime, "_warned_cuda", set())
    monkeypatch.setattr(runtime, "cuda_capability", lambda device: (7, 5))
    assert experiments.hardware() == "1x Tesla T4 (fp32)"
    monkeypatch.setattr(runtime, "cuda_capability", lambda device: (9, 0))
    assert experiments.hardware() == "1x Tesla T4"


def test_a_second_ctrl_c_stops_training_at_once(tmp_path):
    """The first Ctrl-C asks for a save at the end of the step; a second one does not wait for it."""
    import os
    import signal

    from components.resume import Resumer

    resumer = Resumer(str(tmp_path / "state"), "identity", every=0)
    previous = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), resumer.watch():
        os.kill(os.getpid(), signal.SIGINT)
        assert resumer.stop_requested and resumer.stop_signal == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)  # what `kdrank run` passes on of the same Ctrl-C: the same request
        assert resumer.stop_signal == signal.SIGINT
        os.kill(os.getpid(), signal.SIGINT)
        raise AssertionError("a second Ctrl-C must interrupt at once")
    assert signal.getsignal(signal.SIGINT) is previous
    assert not (tmp_path / "state").exists()
