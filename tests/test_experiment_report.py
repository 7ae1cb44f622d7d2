"""The report of `kdrank experiment` (pipelines/experiment_report.py) on hand-made rows: what the seed spread
groups and which runs the scaling curve takes. The whole report on real runs is in test_experiments.py."""

from __future__ import annotations

from pipelines.experiment_report import scaling_points, seed_spread, segment_styles


def test_seed_spread_groups_a_run_with_its_own_seeds_only():
    def row(run, seed, accuracy):
        return {"run": run, "seed": seed, "metrics": {"ndcg@5": 0.8, "pairwise_accuracy": accuracy}}

    text = seed_spread([
        row("teacher-x", 13, 0.60), row("teacher-x-seed14", 14, 0.62), row("teacher-x-seed15", 15, 0.61),
        row("student-x", 13, 0.60), row("student-x-from-seed14", 13, 0.70),  # another teacher, the same seed
        row("student-x-teacherseed15", 13, 0.70), row("student-x-seed14", 14, 0.62)])
    assert text.splitlines()[2:] == ["| teacher-x | 13, 14, 15 | 0.800 (0.800-0.800) | 0.610 (0.600-0.620) |",
                                     "| student-x | 13, 14 | 0.800 (0.800-0.800) | 0.610 (0.600-0.620) |"]


def test_scaling_points_take_the_plans_run_per_size_and_the_pipelines_student_where_it_has_none():
    def row(run, augmented, labels="teacher-soft", loss="margin_mse", kind="student"):
        return {"run": run, "kind": kind, "labels": labels, "loss": loss, "augmented": augmented}

    rows = [row("teacher-soft", None, labels="human", loss="soft_ce", kind="teacher"),
            row("pipeline-student", 8.0), row("student-margin-0x", 0.0), row("student-margin-0x-seed14", 0.0),
            row("student-margin-16x-seed14", 16.0), row("student-pointwise-16x", 16.0, loss="pointwise_mse"),
            row("student-margin-16x-ensemble", 16.0, labels="teacher-ensemble"), row("pipeline-again", 0.0),
            {**row("student-margin-2x-human50", 2.0), "human_weight": 0.5},  # its targets are not the teacher's
            # a curve run's variants from `teacher-soft@M/...` entries: another recipe, neither points nor repeats
            row("student-margin-8x-lr2e-4", 8.0), row("student-margin-0x-lr2e-4-seed14", 0.0),
            row("student-margin-4x-steps900", 4.0)]
    curve, repeats = scaling_points(rows)
    assert [r["run"] for r in curve] == ["student-margin-0x", "pipeline-student"]
    assert [r["run"] for r in repeats] == ["student-margin-0x-seed14"]  # no 16x point for its repeat to join
    curve, _ = scaling_points([*rows, row("student-margin-8x", 8.0)])
    assert [r["run"] for r in curve] == ["student-margin-0x", "student-margin-8x"]


def test_scaling_points_of_another_teacher_take_its_plan_runs_and_leave_its_variants_off():
    def row(run, augmented, labels="teacher-soft-verbaliser-seed15", **extra):
        return {"run": run, "kind": "student", "labels": labels, "loss": "margin_mse", "augmented": augmented,
                **extra}

    stem = "soft-verbaliser-teacherseed15"
    rows = [row("student-margin-0x", 0.0, labels="teacher-soft"),  # the scaling curve's, another teacher
            *(row(f"student-margin-{m}x-{stem}", float(m)) for m in (8, 0, 2)),
            row(f"student-margin-2x-{stem}-seed14", 2.0), row(f"student-margin-4x-{stem}-seed14", 4.0),
            row(f"student-margin-0x-{stem}-steps1456", 0.0), row(f"student-margin-0x-{stem}-lr2e-4-seed14", 0.0),
            row(f"student-margin-0x-{stem}-human30", 0.0, human_weight=0.3),
            row("student-margin-0x-bornagain", 0.0, labels="student-human"),
            row("student-margin-0x-bornagain-seed14", 0.0, labels="student-human"),
            row("student-margin-0x-bornagain-from-seed14", 0.0, labels="student-human-seed14")]
    curve, repeats = scaling_points(rows, "teacher-soft-verbaliser-seed15")
    assert [r["run"] for r in curve] == [f"student-margin-{m}x-{stem}" for m in (0, 2, 8)]
    assert [r["run"] for r in repeats] == [f"student-margin-2x-{stem}-seed14"]  # no 4x point for the other
    assert [r["run"] for r in scaling_points(rows)[0]] == ["student-margin-0x"]
    curve, repeats = scaling_points(rows, "student-human")
    assert ([r["run"] for r in curve], [r["run"] for r in repeats]) == (["student-margin-0x-bornagain"],
                                                                        ["student-margin-0x-bornagain-seed14"])
    # "-from-seed14" names the teacher's seed, not the student's: the point of that teacher's own curve
    curve, repeats = scaling_points(rows, "student-human-seed14")
    assert ([r["run"] for r in curve], repeats) == (["student-margin-0x-bornagain-from-seed14"], [])
    assert scaling_points(rows, "teacher-nope") == ([], [])


def test_a_curve_is_dotted_across_sizes_it_has_no_point_at():
    assert segment_styles([0, 1, 2]) == ["-", "-"]
    assert segment_styles([0, 4]) == [":"]  # teacher-soft's 0x and 16x on an axis with 2x, 4x and 8x between
    assert segment_styles([0, 1, 3]) == ["-", ":"]
    assert segment_styles([2]) == []
