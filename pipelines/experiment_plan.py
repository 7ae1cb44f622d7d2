"""The plan of `kdrank experiment`: which runs a profile makes, in which order, with which settings.

A profile's `experiments` settings (components/flow.py) give the plan: baselines (random, BM25, zero-shot
bi-encoder), the teacher with soft and with hard targets, a student on human labels (pointwise MSE, and margin
MSE as the control of the 0x run: the same loss without a teacher), margin-MSE students on teacher labels of
the training pairs plus 0x..Nx augmented pairs (the scaling curve), optionally born-again controls
(`born_again`: the same distillation from the human-label student's scores instead of the LLM's labels;
`true` for the 0x run's, or a list of sizes such as [0, 2]; every size with the first seed, and those of
`born_again_seed_multiples`, default [0], with the other seeds), pointwise MSE at the largest size, and
optionally a teacher ensemble with its own largest distillation run, extra seeds, and teacher ablations
(`teacher_ablations`: NAME -> teacher settings, run as `teacher-soft-NAME` and scored like the others).
The ensemble is composed from single teacher runs (teacher-soft and the next seeds), so its members can be
made, and their labels archived, in different sessions (see `Runner._ensemble` in pipelines/experiments.py).
`mixed_ensembles` composes one from teacher runs of different recipes (named), and `distil_teachers` gives a
teacher run or an ensemble a student of its own (`_distilled_from`: `TEACHER@M` for size M, and the parts
/seedN, /humanP, /stepsN and /lrX; for teacher-soft, the scaling curve's teacher, a variant of a curve run).

Nothing here trains or reads data: `plan` only names and configures the runs, and rejects a profile whose
settings do not make a plan, naming the setting.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from components.flow import PROFILES, get_profile

# The baselines components.evaluate scores (its BASELINES; a test keeps the two equal). Copied, not imported:
# evaluate pulls in pandas and scipy, about a second, and the plan is read by commands that need neither.
BASELINES = ("random", "bm25", "biencoder")
BORN_AGAIN = "bornagain"  # suffix of the run distilled from a student teacher instead of the LLM


def _whole(least: int, most: int):
    """A parser of an entry part's whole number N from least to most (None where the text is not one)."""
    return lambda text: int(text) if text.isdigit() and least <= int(text) <= most else None


def _learning_rate(text: str) -> float | None:
    """The learning rate an entry part `/lrX` names (X: digits, '.', 'e', '-'; between 0 and 1), else None."""
    if not text or not set(text) <= set("0123456789.e-") or not text[0].isdigit():
        return None
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 < value < 1 else None


# the parts a `distil_teachers` entry may end in, `/KINDX`: kind -> (parser of X, what it names); X is written
# into the run's name as it stands (`/lr2e-4` -> `-lr2e-4`)
ENTRY_PARTS = {"seed": (_whole(0, 2**31 - 1), "a seed"), "human": (_whole(1, 99), "a share of the human grades"),
               "steps": (_whole(1, 10**7), "a least number of steps"), "lr": (_learning_rate, "a learning rate")}


@dataclass(frozen=True)
class Experiment:
    name: str
    kind: str  # baseline | teacher | ensemble | student
    description: str
    labels: str = "human"  # human | teacher-soft | teacher-ensemble | student-human: what the model learned from
    augmented: float | None = None  # augmented multiple of a distilled student
    loss: str = ""
    seed: int = 13
    settings: dict = field(default_factory=dict)  # overrides of the step's config
    # a distillation run below the largest size whose teacher labels its own pairs only (a `TEACHER@M` entry)
    own_pairs: bool = False
    # a distillation run's share of the human grades in the training pairs' targets (a `/humanP` entry, P%):
    # (1 - w) x the teacher's expected grade + w x the human grade; augmented pairs keep the teacher's
    human_weight: float = 0.0


def plan(profile_name: str) -> list[Experiment]:
    """Every experiment of a profile, in the order they run (each one's needs come before it)."""
    profile = get_profile(profile_name)
    spec = profile.experiments
    if not spec:
        raise ValueError(f"profile '{profile_name}' has no experiment plan; use one of "
                         f"{sorted(n for n, p in PROFILES.items() if p.experiments)}")
    multiples = sorted(float(m) for m in spec["multiples"])
    top = multiples[-1]
    seeds = [int(s) for s in spec.get("seeds", [13])]
    repeat = [float(m) for m in spec.get("seed_multiples", [0, top])]  # sizes repeated with the extra seeds
    born_again = _born_again_sizes(profile_name, spec.get("born_again", False), multiples)
    born_again_repeat = _born_again_repeat(profile_name, spec.get("born_again_seed_multiples"), born_again)
    runs = [Experiment(f"baseline-{kind}", "baseline", f"{kind} baseline") for kind in BASELINES]
    runs += [Experiment("teacher-soft", "teacher", "teacher, soft targets", loss="soft_ce"),
             Experiment("teacher-hard", "teacher", "teacher, hard targets (arg-max grade)", loss="hard_ce",
                        settings={"soft_targets": False})]
    for tag, overrides in spec.get("teacher_ablations", {}).items():  # other teacher recipes, scored only
        if not tag or not all(c.isalnum() or c == "-" for c in tag) or not isinstance(overrides, dict):
            raise ValueError(f"profile '{profile_name}': teacher_ablations needs NAME (letters, digits, '-') -> "
                             f"a dict of teacher settings, got {tag!r} -> {overrides!r}")
        what = ", ".join(f"{k}={v}" for k, v in overrides.items())
        runs.append(Experiment(f"teacher-soft-{tag}", "teacher", f"teacher, soft targets, {what}", loss="soft_ce",
                               settings=dict(overrides)))
    for seed in seeds:
        tag = "" if seed == seeds[0] else f"-seed{seed}"
        runs.append(Experiment(f"student-human{tag}", "student", "student on human labels", loss="pointwise_mse",
                               seed=seed, settings={"labels": "human", "loss": "pointwise_mse", "seed": seed}))
        # the control of the 0x run: its loss on the human grades, no teacher (every seed, as the 0x run)
        runs.append(Experiment(f"student-human-margin{tag}", "student", "margin MSE on human labels (no teacher)",
                               loss="margin_mse", seed=seed,
                               settings={"labels": "human", "loss": "margin_mse", "seed": seed}))
        chosen = multiples if not tag else [m for m in multiples if m in repeat]
        runs += [Experiment(f"student-margin-{fmt_multiple(m)}x{tag}", "student",
                            f"margin MSE, {fmt_multiple(m)}x augmented", labels="teacher-soft", augmented=m,
                            loss="margin_mse", seed=seed, settings={"seed": seed}) for m in chosen]
        for size in born_again:
            if not tag or size in born_again_repeat:
                # the born-again control: the same distillation from a teacher of the student's own size and
                # architecture (the first seed's human-label student), so what the LLM adds shows; at an
                # augmented size its scores of the new pairs are the labels. Every size with the first seed,
                # the sizes of `born_again_seed_multiples` (default 0x) with the other seeds too.
                runs.append(_born_again("student-human", tag, seed, size))
        if not tag or top in repeat:
            runs.append(Experiment(f"student-pointwise-{fmt_multiple(top)}x{tag}", "student",
                                   f"pointwise MSE on teacher scores, {fmt_multiple(top)}x augmented",
                                   labels="teacher-soft", augmented=top, loss="pointwise_mse", seed=seed,
                                   settings={"loss": "pointwise_mse", "seed": seed}))
    if 0.0 in born_again and len(seeds) > 1:
        # the same control from the other seed's human-label student (another teacher of the same recipe and
        # accuracy within a seed's spread): does the born-again student's level follow its teacher's?
        runs.append(_born_again(f"student-human-seed{seeds[1]}", "", seeds[0]))
    if (size := int(spec.get("ensemble_size", 1))) > 1:
        # The ensemble is composed from single teachers, each its own run: teacher-soft and the same recipe
        # with the next seeds (exactly the members `ensemble_size` would train). Each member is trained, scored
        # and its labels archived on its own, so members made in different GPU sessions still combine.
        # `ensemble_recipes` adds the same ensemble of a teacher ablation's recipe (its run is the first member).
        ablations = spec.get("teacher_ablations", {})
        recipes = [""] + list(spec.get("ensemble_recipes", []))
        if unknown := [r for r in recipes[1:] if r not in ablations]:
            raise ValueError(f"profile '{profile_name}': ensemble_recipes {unknown} are not teacher_ablations "
                             f"({sorted(ablations)}); an ensemble's recipe is one of its teacher ablations")
        base = int(profile.teacher.get("seed", 13))
        for recipe in recipes:
            runs += _ensemble_runs(recipe, ablations.get(recipe, {}), size, base, top)
    for tag, members in spec.get("mixed_ensembles", {}).items():
        runs += _mixed_ensemble(profile_name, tag, members, runs, top)
    for teacher in spec.get("distil_teachers", []):
        runs.append(_distilled_from(profile_name, teacher, runs, multiples))
    if repeated := sorted({r.name for r in runs if [x.name for x in runs].count(r.name) > 1}):
        raise ValueError(f"profile '{profile_name}': the plan names {repeated} twice; rename a teacher ablation "
                         "or a mixed ensemble, or drop the distil_teachers entry that repeats a planned run (a bare "
                         "'teacher-soft@M' is the scaling curve's own student-margin-Mx)")
    return runs


def _soft_teachers(runs: list[Experiment]) -> list[str]:
    return [r.name for r in runs if r.kind == "teacher" and r.settings.get("soft_targets", True)]


def _mixed_ensemble(profile_name: str, tag: str, members, runs: list[Experiment], top: float) -> list[Experiment]:
    """An ensemble of soft teachers of different recipes (planned teacher runs, named), composed like the
    seed ensembles (`Runner._ensemble`): `teacher-ensemble-TAG` and its distillation run at the largest size.

    Averaging models of one recipe gains little on this data (docs/results/ensemble-probe-full.md); members that
    differ in recipe are each a stronger-teacher candidate of their own, and a more varied ensemble."""
    known = _soft_teachers(runs)
    names = list(members) if isinstance(members, list | tuple) else []
    if not tag or not all(c.isalnum() or c == "-" for c in tag) or len(names) < 2 or len(set(names)) != len(names):
        raise ValueError(f"profile '{profile_name}': mixed_ensembles needs NAME (letters, digits, '-') -> a list of "
                         f"at least two distinct teacher runs, got {tag!r} -> {members!r}")
    if unknown := [m for m in names if m not in known]:
        raise ValueError(f"profile '{profile_name}': mixed ensemble '{tag}' names {unknown}, which are not soft "
                         f"teacher runs of the plan ({known})")
    return [Experiment(f"teacher-ensemble-{tag}", "ensemble",
                       f"ensemble of {len(names)} soft teachers of mixed recipes (mean probability): "
                       f"{', '.join(names)}", loss="soft_ce", settings={"members": names}),
            Experiment(f"student-margin-{fmt_multiple(top)}x-ensemble-{tag}", "student",
                       f"margin MSE on the {tag} ensemble's labels, {fmt_multiple(top)}x augmented",
                       labels=f"teacher-ensemble-{tag}", augmented=top, loss="margin_mse")]


def _distilled_from(profile_name: str, entry: str, runs: list[Experiment], multiples: list[float]) -> Experiment:
    """A distillation run again from a soft teacher of the plan (a teacher ablation or a seed), at the
    largest size, or at size M for an entry `TEACHER@M` (one of the profile's multiples), with the student's
    default seed, or seed N for an entry ending in `/seedN`: e.g. `student-margin-16x-soft-batch256` from
    `teacher-soft-batch256`, `student-margin-0x-soft-verbaliser` from `teacher-soft-verbaliser@0` and its second
    seed `student-margin-0x-soft-verbaliser-seed14` from `teacher-soft-verbaliser@0/seed14`: what a stronger
    candidate teacher gives its student. A teacher seed reads "-teacherseedN" in the student's name
    (`student-margin-2x-soft-verbaliser-teacherseed15` from `teacher-soft-verbaliser-seed15@2`). An entry's
    size between 0 and the largest labels its own pairs only, unless the largest set's labels are there
    (`Runner.teacher_labelled`): that is how a CPU, which cannot label 16x, makes the 2x point. A composed
    ensemble (`teacher-ensemble-TAG`) may be named too, at 0x or the largest size: `teacher-ensemble-mixed3@0`
    gives `student-margin-0x-ensemble-mixed3`, from the mean of its members' labels of the training pairs.
    An entry part `/humanP` (P from 1 to 99) blends the human grades into the training pairs' targets, P% of
    each (`Runner.blended_set`, the usual mix of distillation and ground-truth targets):
    `teacher-ensemble-mixed3@0/human50/seed14` gives `student-margin-0x-ensemble-mixed3-human50-seed14`. A part
    `/stepsN` trains the student for at least N steps (its `min_steps`), e.g. a 0x student for as many steps
    as a larger set's one epoch takes: is a larger set's gain its pairs, or its steps? The parts may come in
    any order, each at most once. A part `/lrX` sets the student's learning rate to X (e.g. `/lr2e-4`): is
    the profile's rate the student's best? The run's name takes them as -humanP, -stepsN, -lrX, -seedN.
    `teacher-soft`, the scaling curve's own teacher, may be named too, for a variant of a curve run: its
    students take the curve's names, so `teacher-soft@16/lr2e-4` gives `student-margin-16x-lr2e-4` (the 16x
    run at another learning rate, from the same labels) and `teacher-soft@8/seed14` the 8x run's second seed,
    `student-margin-8x-seed14`, where the profile does not plan it already."""
    body, *parts = str(entry).split("/")
    teacher, at, size = body.partition("@")
    options: dict[str, tuple[str, int | float]] = {}  # kind -> (X as written, its value)
    for part in parts:
        kind = next((k for k in ENTRY_PARTS if part.startswith(k)
                     and ENTRY_PARTS[k][0](part[len(k):]) is not None), None)
        if kind is None:
            raise ValueError(f"profile '{profile_name}': distil_teachers entry '{entry}' has the part '/{part}'; "
                             "a seed is written '/seedN' (e.g. 'teacher-soft-verbaliser@0/seed14'), a share of the "
                             "human grades '/humanP' with P from 1 to 99 (e.g. 'teacher-soft-verbaliser@0/human50'), "
                             "the student's least number of steps '/stepsN' (e.g. '@0/steps814') and its learning "
                             "rate '/lrX' with X a number between 0 and 1 written with digits, '.', 'e' and '-' "
                             "(e.g. '@0/lr2e-4')")
        if kind in options:
            raise ValueError(f"profile '{profile_name}': distil_teachers entry '{entry}' names "
                             f"{ENTRY_PARTS[kind][1]} twice")
        text = part[len(kind):]
        options[kind] = (text, ENTRY_PARTS[kind][0](text))
    try:
        multiple = float(size) if at else max(multiples)
    except ValueError:
        multiple = None
    if multiple not in multiples:
        raise ValueError(f"profile '{profile_name}': distil_teachers entry '{entry}' names size '{size}', which is "
                         f"not one of the profile's multiples {[fmt_multiple(m) for m in multiples]}")
    known = _soft_teachers(runs)
    ensembles = [r.name for r in runs if r.kind == "ensemble"]
    if teacher not in known + ensembles:
        raise ValueError(f"profile '{profile_name}': distil_teachers names '{teacher}', which is not a soft teacher "
                         f"run of the plan or an ensemble: {known + ensembles}")
    if teacher in ensembles and 0 < multiple < max(multiples):
        # an ensemble's labels are composed from its members' labels of the same set (Runner._ensemble_labelled),
        # and a member labels a size between only as the largest set's first rows: all of it, for every member
        raise ValueError(f"profile '{profile_name}': distil_teachers entry '{entry}' distils the ensemble "
                         f"'{teacher}' at {fmt_multiple(multiple)}x; an ensemble distils at 0x or at the largest size "
                         f"({fmt_multiple(max(multiples))}x), whose labels its members make")
    if teacher == "teacher-soft":
        # the scaling curve's teacher: the entry is a variant of the curve's own run at that size (the same
        # labels, seed and settings but for the parts), named as it: `teacher-soft@16/lr2e-4` makes
        # `student-margin-16x-lr2e-4`, and a bare `teacher-soft@M` is `student-margin-Mx` itself
        run = next(r for r in runs if r.name == f"student-margin-{fmt_multiple(multiple)}x")
    else:
        run = Experiment(distilled_run_name(teacher, multiple), "student",
                         f"margin MSE on {teacher}'s labels, {fmt_multiple(multiple)}x augmented", labels=teacher,
                         augmented=multiple, loss="margin_mse", own_pairs=bool(at) and 0 < multiple < max(multiples))
    if "human" in options:
        share = options["human"][1]
        run = replace(run, name=f"{run.name}-human{share}", human_weight=share / 100,
                      description=f"{run.description}, {share}% human grades in the training pairs' targets")
    if "steps" in options:
        steps = options["steps"][1]
        run = replace(run, name=f"{run.name}-steps{steps}", settings={**run.settings, "min_steps": steps},
                      description=f"{run.description}, at least {steps} steps")
    if "lr" in options:
        rate, value = options["lr"]
        run = replace(run, name=f"{run.name}-lr{rate}", settings={**run.settings, "learning_rate": value},
                      description=f"{run.description}, learning rate {rate}")
    if "seed" not in options:
        return run
    seed = options["seed"][1]
    return replace(run, name=f"{run.name}-seed{seed}", description=f"{run.description}, seed {seed}", seed=seed,
                   settings={**run.settings, "seed": seed})


def _ensemble_runs(recipe: str, overrides: dict, size: int, base: int, top: float) -> list[Experiment]:
    """An ensemble of `size` soft teachers of one recipe ('' for the profile's own, else a teacher ablation's),
    seeds base, base+1, ...: its new members, its composed row and its distillation run at the largest size."""
    suffix, named = (f"-{recipe}", f"{recipe} ") if recipe else ("", "")
    what = "".join(f", {k}={v}" for k, v in overrides.items())
    members, runs = [f"teacher-soft{suffix}"], []
    for seed in range(base + 1, base + size):
        members.append(f"teacher-soft{suffix}-seed{seed}")
        runs.append(Experiment(members[-1], "teacher", f"teacher, soft targets{what}, seed {seed} (ensemble member)",
                               loss="soft_ce", seed=seed, settings={**overrides, "seed": seed}))
    return runs + [Experiment(f"teacher-ensemble{suffix}", "ensemble",
                              f"ensemble of {size} soft teachers (mean probability): {', '.join(members)}",
                              loss="soft_ce", seed=base, settings={"members": members}),
                   Experiment(f"student-margin-{fmt_multiple(top)}x-ensemble{suffix}", "student",
                              f"margin MSE on the {named}ensemble's labels, {fmt_multiple(top)}x augmented",
                              labels=f"teacher-ensemble{suffix}", augmented=top, loss="margin_mse")]


def _born_again_sizes(profile_name: str, value, multiples: list[float]) -> list[float]:
    """The sizes of a profile's born-again controls: `born_again: true` is the 0x one, a list names sizes."""
    if value is True:
        return [0.0] if 0.0 in multiples else []
    if not value:
        return []
    return _sizes_among(value, multiples, f"profile '{profile_name}': born_again is true or a list of the "
                                          "profile's multiples")


def _born_again_repeat(profile_name: str, value, sizes: list[float]) -> list[float]:
    """The born-again sizes repeated with a profile's extra seeds (`born_again_seed_multiples`), each one of
    its `born_again` sizes; by default the 0x one, where there is one."""
    if value is None:
        return [m for m in sizes if m == 0.0]
    return _sizes_among(value, sizes, f"profile '{profile_name}': born_again_seed_multiples is a list of its "
                                      "born_again sizes")


def _sizes_among(value, allowed: list[float], what: str) -> list[float]:
    """`value` as sorted distinct multiples, each one of `allowed`; else a ValueError that says `what` it must be."""
    try:
        sizes = [float(m) for m in value] if isinstance(value, list | tuple) else None
    except (TypeError, ValueError):
        sizes = None
    if sizes is None or any(m not in allowed for m in sizes):
        raise ValueError(f"{what} {[fmt_multiple(m) for m in allowed]}, got {value!r}")
    return sorted(set(sizes))


def _born_again(teacher: str, tag: str, seed: int, multiple: float = 0.0) -> Experiment:
    """The run's recipe at `multiple`, margin MSE on a human-label student's scores of its pairs (no LLM);
    `tag` is the student's own seed's suffix ('-seed14'), empty for the first seed."""
    return Experiment(f"{distilled_run_name(teacher, multiple)}{tag}", "student",
                      f"margin MSE on {teacher}'s scores, {fmt_multiple(multiple)}x (born-again control)",
                      labels=teacher, augmented=multiple, loss="margin_mse", seed=seed, settings={"seed": seed})


def distilled_run_name(teacher: str, multiple: float) -> str:
    """The plan's name of the margin-MSE run on `teacher`'s labels at `multiple` (the student's first seed, no
    entry parts): `student-margin-Mx` from teacher-soft (the scaling curve), `student-margin-Mx-bornagain` from
    student-human and `...-bornagain-from-seedN` from student-human-seedN (the born-again controls), and
    `student-margin-Mx-STEM` from any other teacher or ensemble, STEM its name without "teacher-" and its seed
    written "-teacherseedN", so that "-seedN" stays the student's own
    (`student-margin-2x-soft-verbaliser-teacherseed15` from teacher-soft-verbaliser-seed15)."""
    base = f"student-margin-{fmt_multiple(multiple)}x"
    if teacher == "teacher-soft":
        return base
    if teacher == "student-human" or teacher.startswith("student-human-seed"):
        return f"{base}-{BORN_AGAIN}" + teacher.removeprefix("student-human").replace("-seed", "-from-seed")
    return f"{base}-" + re.sub(r"-seed(\d+)$", r"-teacherseed\1", teacher.removeprefix("teacher-"))


def fmt_multiple(multiple: float) -> str:
    """An augmented multiple as run names and tables write it: 0, 2, 0.5 (no trailing zeros)."""
    return f"{multiple:g}"
