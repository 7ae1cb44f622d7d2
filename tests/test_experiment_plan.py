"""The plan of `kdrank experiment` (pipelines/experiment_plan.py): which runs a profile makes, and the errors
that name a profile setting that makes no plan. No data, no models: every test here only plans."""

from __future__ import annotations

import pytest
from kdrank_testing import patch_test_plan

from components import flow
from pipelines import experiment_plan
from pipelines.experiment_plan import distilled_run_name, plan


def test_a_distilled_teacher_entry_can_name_its_size(monkeypatch):
    patch_test_plan(monkeypatch, distil_teachers=["teacher-soft-lr1e-3", "teacher-soft-lr1e-3@0",
                                                  "teacher-soft-lr1e-3@0/seed14"])
    runs = {e.name: e for e in plan("test")}
    top, zero = runs["student-margin-2x-soft-lr1e-3"], runs["student-margin-0x-soft-lr1e-3"]
    assert (top.labels, top.augmented, zero.labels, zero.augmented) == ("teacher-soft-lr1e-3", 2.0,
                                                                        "teacher-soft-lr1e-3", 0.0)
    assert list(runs).index("student-margin-0x-soft-lr1e-3") > list(runs).index("teacher-soft-lr1e-3")
    # `/seedN`: the same run with another seed, named as the plan's other extra seeds are
    again = runs["student-margin-0x-soft-lr1e-3-seed14"]
    assert (again.labels, again.augmented, again.seed, again.settings) == ("teacher-soft-lr1e-3", 0.0, 14,
                                                                           {"seed": 14})
    assert (zero.seed, zero.settings) == (13, {})


@pytest.mark.parametrize(("spec", "message"), [
    ({"mixed_ensembles": {"mixed": ["teacher-soft", "teacher-soft-lr1e-4"]}},
     r"mixed ensemble 'mixed' names \['teacher-soft-lr1e-4'\], which are not soft teacher runs"),
    ({"mixed_ensembles": {"mixed": ["teacher-soft", "teacher-hard"]}}, r"names \['teacher-hard'\]"),
    ({"mixed_ensembles": {"mixed": ["teacher-soft"]}}, r"at least two distinct teacher runs"),
    ({"mixed_ensembles": {"mixed": ["teacher-soft", "teacher-soft"]}}, r"at least two distinct teacher runs"),
    ({"mixed_ensembles": {"lr1e-3": ["teacher-soft", "teacher-soft-seed14"]}},
     r"names \['student-margin-2x-ensemble-lr1e-3', 'teacher-ensemble-lr1e-3'\] twice"),
    ({"distil_teachers": ["teacher-hard"]}, r"distil_teachers names 'teacher-hard', which is not a soft teacher run"),
    # teacher-soft's bare entry, or a seed the profile plans already, is a run of the scaling curve
    ({"distil_teachers": ["teacher-soft"]}, r"names \['student-margin-2x'\] twice; .* \(a bare 'teacher-soft@M' is "
                                            r"the scaling curve's own student-margin-Mx\)"),
    ({"distil_teachers": ["teacher-soft@0/seed14"]}, r"names \['student-margin-0x-seed14'\] twice"),
    ({"distil_teachers": ["teacher-soft-lr1e-4"]}, r"distil_teachers names 'teacher-soft-lr1e-4'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@3"]}, r"entry 'teacher-soft-lr1e-3@3' names size '3', which is not"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@x"]}, r"names size 'x'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/14"]}, r"has the part '/14'; a seed is written '/seedN'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/seed"]}, r"has the part '/seed'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/human0"]},
     r"has the part '/human0'; .* '/humanP' with P from 1 to 99"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/human100"]}, r"has the part '/human100'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/human0.5"]}, r"has the part '/human0.5'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/seed14/seed15"]}, r"'teacher-soft-lr1e-3@0/seed14/seed15' names a "
                                                                   r"seed twice"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/human50/human20"]}, r"names a share of the human grades twice"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/steps0"]}, r"has the part '/steps0'; .* '/stepsN'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/steps"]}, r"has the part '/steps'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/steps9/steps10"]}, r"names a least number of steps twice"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/lr1"]}, r"has the part '/lr1'; .* '/lrX' with X a number between 0 "
                                                         r"and 1"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/lr0"]}, r"has the part '/lr0'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/lr"]}, r"has the part '/lr'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/lrinf"]}, r"has the part '/lrinf'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/lre-4"]}, r"has the part '/lre-4'"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/lr1e-4/lr2e-4"]}, r"names a learning rate twice"),
    ({"distil_teachers": ["teacher-soft-lr1e-3@0/human50", "teacher-soft-lr1e-3@0/human50"]},
     r"names \['student-margin-0x-soft-lr1e-3-human50'\] twice"),
    ({"distil_teachers": ["teacher-ensemble-mixed@1"]},
     r"'teacher-ensemble-mixed@1' distils the ensemble 'teacher-ensemble-mixed' at 1x; an ensemble distils at 0x "
     r"or at the largest size \(2x\)"),
    ({"distil_teachers": ["teacher-ensemble-mixed"]}, r"names \['student-margin-2x-ensemble-mixed'\] twice"),
])
def test_mixed_ensembles_and_distilled_teachers_must_name_soft_teacher_runs_of_the_plan(monkeypatch, spec, message):
    patch_test_plan(monkeypatch, **spec)
    with pytest.raises(ValueError, match=message):
        plan("test")


def test_an_ensemble_recipe_must_be_a_teacher_ablation(monkeypatch):
    patch_test_plan(monkeypatch, ensemble_recipes=["lr1e-3", "batch512"])
    with pytest.raises(ValueError, match=r"ensemble_recipes \['batch512'\] are not teacher_ablations \(\['lr1e-3'\]\)"):
        plan("test")


@pytest.mark.parametrize("value", [[0, 3], "2", [None]])
def test_born_again_sizes_must_be_the_profiles_multiples(monkeypatch, value):
    patch_test_plan(monkeypatch, born_again=value)
    with pytest.raises(ValueError, match=r"profile 'test': born_again is true or a list of the profile's multiples"):
        plan("test")


@pytest.mark.parametrize("value, runs", [
    (None, ["student-margin-0x-bornagain-seed14"]),  # the default: the 0x control with every seed
    ([], []),
    ([2], ["student-margin-2x-bornagain-seed14"]),
    ([0, 2], ["student-margin-0x-bornagain-seed14", "student-margin-2x-bornagain-seed14"]),
])
def test_born_again_seed_multiples_choose_the_sizes_repeated_with_other_seeds(monkeypatch, value, runs):
    patch_test_plan(monkeypatch, **({} if value is None else {"born_again_seed_multiples": value}))
    names = [e.name for e in plan("test") if "bornagain" in e.name]
    assert names == ["student-margin-0x-bornagain", "student-margin-2x-bornagain", *runs,
                     "student-margin-0x-bornagain-from-seed14"]


@pytest.mark.parametrize("value", [[1], [4], "2", [None]])
def test_born_again_seed_multiples_must_be_born_again_sizes(monkeypatch, value):
    patch_test_plan(monkeypatch, born_again_seed_multiples=value)
    with pytest.raises(ValueError, match=r"profile 'test': born_again_seed_multiples is a list of its born_again "
                                         r"sizes \['0', '2'\]"):
        plan("test")


def test_a_bad_teacher_ablation_is_named(monkeypatch):
    patch_test_plan(monkeypatch, teacher_ablations={"a b": {"epochs": 2}})
    with pytest.raises(ValueError, match="teacher_ablations needs NAME .* got 'a b'"):
        plan("test")


def test_the_full_plan_ends_in_the_cpu_sessions_runs_each_with_the_settings_it_names():
    full = {e.name: e for e in plan("full")}
    assert list(full)[-45:] == [
        "teacher-soft-batch256-seed14", "teacher-soft-batch256-seed15", "teacher-ensemble-batch256",
        "student-margin-16x-ensemble-batch256", "teacher-soft-verbaliser-seed14", "teacher-soft-verbaliser-seed15",
        "teacher-ensemble-verbaliser", "student-margin-16x-ensemble-verbaliser", "teacher-ensemble-mixed256",
        "student-margin-16x-ensemble-mixed256", "teacher-ensemble-mixed3", "student-margin-16x-ensemble-mixed3",
        "student-margin-16x-soft-batch256", "student-margin-16x-soft-batch256-verbaliser",
        "student-margin-16x-soft-batch256-epochs3", "student-margin-16x-soft-verbaliser",
        "student-margin-0x-soft-verbaliser", "student-margin-0x-soft-verbaliser-seed14",
        "student-margin-0x-soft-verbaliser-teacherseed15", "student-margin-2x-soft-verbaliser-teacherseed15",
        "student-margin-0x-soft-verbaliser-teacherseed15-seed14",
        "student-margin-2x-soft-verbaliser-teacherseed15-seed14", "student-margin-4x-soft-verbaliser-teacherseed15",
        "student-margin-4x-soft-verbaliser-teacherseed15-seed14", "student-margin-8x-soft-verbaliser-teacherseed15",
        "student-margin-8x-soft-verbaliser-teacherseed15-seed14", "student-margin-0x-ensemble-mixed3",
        "student-margin-0x-ensemble-mixed3-seed14", "student-margin-0x-ensemble-mixed3-human50",
        "student-margin-0x-ensemble-mixed3-human50-seed14", "student-margin-0x-ensemble-mixed3-steps814",
        "student-margin-0x-soft-verbaliser-teacherseed15-steps1456",
        "student-margin-0x-soft-verbaliser-teacherseed15-steps1456-seed14",
        "student-margin-0x-soft-verbaliser-teacherseed15-steps480",
        "student-margin-0x-soft-verbaliser-teacherseed15-steps480-seed14",
        "student-margin-0x-soft-verbaliser-teacherseed15-human30",
        "student-margin-0x-soft-verbaliser-teacherseed15-human30-seed14",
        "student-margin-0x-soft-verbaliser-teacherseed15-human10",
        "student-margin-0x-soft-verbaliser-teacherseed15-human10-seed14",
        "student-margin-0x-soft-verbaliser-teacherseed15-lr2e-4",
        "student-margin-0x-soft-verbaliser-teacherseed15-lr5e-5",
        "student-margin-0x-soft-verbaliser-teacherseed15-lr2e-4-seed14",
        "student-margin-0x-soft-verbaliser-teacherseed15-lr5e-5-seed14",
        "student-margin-0x-soft-verbaliser-teacherseed15-lr4e-4",
        "student-margin-0x-soft-verbaliser-teacherseed15-lr4e-4-seed14"]
    base = full["student-margin-0x-soft-verbaliser-teacherseed15-seed14"]
    # the learning-rate runs: the 0x run's labels and settings, the rate doubled and halved around the profile's
    assert flow.get_profile("full").student["learning_rate"] == 1e-4
    for rate, value in (("2e-4", 2e-4), ("5e-5", 5e-5), ("4e-4", 4e-4)):
        run = full[f"student-margin-0x-soft-verbaliser-teacherseed15-lr{rate}-seed14"]
        assert run.settings == {**base.settings, "learning_rate": value} and (run.labels, run.augmented) == (
            base.labels, base.augmented)
    assert full["student-margin-0x-ensemble-mixed3-human50-seed14"].human_weight == 0.5
    assert full["student-margin-0x-soft-verbaliser-teacherseed15-human30-seed14"].human_weight == 0.3
    assert full["student-margin-0x-ensemble-mixed3-steps814"].settings == {"min_steps": 814}
    assert full["student-margin-0x-soft-verbaliser-teacherseed15-steps1456-seed14"].settings == {
        "min_steps": 1456, "seed": 14}
    # the 0x recipe again under its own name (480 is the profile's min_steps): the same settings as the 0x run's
    again = full["student-margin-0x-soft-verbaliser-teacherseed15-steps480-seed14"]
    assert again.settings == {**base.settings, "min_steps": 480} and (again.labels, again.augmented) == (
        base.labels, base.augmented)
    assert flow.get_profile("full").student["min_steps"] == 480
    assert full["teacher-ensemble-mixed3"].settings["members"] == [
        "teacher-soft", "teacher-soft-verbaliser", "teacher-soft-verbaliser-seed15"]
    two = full["student-margin-2x-soft-verbaliser-teacherseed15"]
    assert (two.labels, two.augmented, two.own_pairs) == ("teacher-soft-verbaliser-seed15", 2.0, True)
    assert (full["student-margin-0x-soft-verbaliser"].labels, full["student-margin-0x-soft-verbaliser"].augmented) \
        == ("teacher-soft-verbaliser", 0.0)
    # the mixed ensemble's members: three batch-256 recipes, each a planned teacher run of its own
    members = full["teacher-ensemble-mixed256"].settings["members"]
    assert [full[m].settings for m in members] == [
        {"batch_size": 256, "learning_rate": 1e-4},
        {"batch_size": 256, "learning_rate": 1e-4, "head_init": "verbaliser"},
        {"batch_size": 256, "learning_rate": 1e-4, "epochs": 3.0}]
    assert full["student-margin-16x-soft-batch256-epochs3"].labels == "teacher-soft-batch256-epochs3"
    # the verbaliser recipe's ensemble: its members are the CPU-trained teacher-soft-verbaliser and two more seeds
    assert full["teacher-ensemble-verbaliser"].settings["members"] == [
        "teacher-soft-verbaliser", "teacher-soft-verbaliser-seed14", "teacher-soft-verbaliser-seed15"]
    assert full["teacher-soft-verbaliser-seed14"].settings == {"head_init": "verbaliser", "seed": 14}
    ablation = next(e for e in plan("full") if e.name == "teacher-soft-verbaliser")
    assert ablation.settings == {"head_init": "verbaliser"} and "head_init=verbaliser" in ablation.description


def test_a_teacher_soft_entry_is_a_variant_of_a_scaling_curve_run_named_as_it(monkeypatch):
    """`teacher-soft@M/...`: the curve's run at M from the same labels, with the parts' changes, named
    student-margin-Mx plus the parts (no teacher stem), so that a GPU session can add, say, the 16x run at
    another learning rate from the archived teacher-soft labels."""
    patch_test_plan(monkeypatch, distil_teachers=["teacher-soft@2/lr3e-4", "teacher-soft@1/seed14",
                                                  "teacher-soft@0/steps9/seed14"])
    runs = {e.name: e for e in plan("test")}
    curve = runs["student-margin-2x"]
    rate, seed, steps = (runs["student-margin-2x-lr3e-4"], runs["student-margin-1x-seed14"],
                         runs["student-margin-0x-steps9-seed14"])
    assert (rate.labels, rate.augmented, rate.loss, rate.own_pairs, rate.seed) == (
        curve.labels, curve.augmented, curve.loss, curve.own_pairs, curve.seed)
    assert rate.settings == {**curve.settings, "learning_rate": 3e-4}
    assert "learning rate 3e-4" in rate.description and rate.description.startswith(curve.description)
    # another seed of a curve run the profile repeats only at other sizes: as its planned repeats are made
    assert (seed.labels, seed.augmented, seed.seed, seed.settings, seed.own_pairs) == ("teacher-soft", 1.0, 14,
                                                                                       {"seed": 14}, False)
    assert steps.settings == {"min_steps": 9, "seed": 14} and steps.labels == "teacher-soft"
    assert list(runs).index("student-margin-2x-lr3e-4") > list(runs).index("teacher-soft")


@pytest.mark.parametrize("profile", ["test", "reduced", "full"])
def test_distilled_run_name_is_the_name_the_plan_gives_each_teachers_margin_run(profile):
    # the report finds a teacher's scaling curve by these names, so they must be the plan's, for every teacher
    named = 0
    for e in plan(profile):
        plain = not (e.human_weight or {"min_steps", "learning_rate"} & set(e.settings))
        if e.kind == "student" and e.loss == "margin_mse" and e.augmented is not None and plain:
            seed = f"-seed{e.seed}" if e.name.endswith(f"-seed{e.seed}") and "-from-seed" not in e.name else ""
            assert distilled_run_name(e.labels, e.augmented) + seed == e.name
            named += 1
    assert named >= 3
    assert (distilled_run_name("teacher-soft-verbaliser-seed15", 2.0)
            == "student-margin-2x-soft-verbaliser-teacherseed15")
    assert distilled_run_name("student-human-seed14", 0.0) == "student-margin-0x-bornagain-from-seed14"


def test_the_plan_makes_a_run_for_each_baseline_evaluate_scores():
    from components import evaluate

    assert experiment_plan.BASELINES == evaluate.BASELINES
    baselines = [run.name for run in plan("test") if run.kind == "baseline"]
    assert baselines == [f"baseline-{kind}" for kind in evaluate.BASELINES]
