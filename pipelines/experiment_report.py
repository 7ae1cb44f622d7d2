"""`kdrank experiment report`: a runs folder's rows as a Markdown table, paired differences, seed spread and
the scaling-curve PNG (the margin-MSE students against augmented size, the teacher and the human-label student
as lines)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from components import storage
from components.flow import PROFILES
from pipelines.experiment_plan import distilled_run_name, fmt_multiple, plan
from pipelines.runs_folder import RESULTS, read_results, rescore_dir

METRICS = (("ndcg@5", "NDCG@5"), ("ndcg@10", "NDCG@10"), ("pairwise_accuracy", "pairwise acc."),
           ("spearman", "Spearman"), ("rmse", "RMSE"))


def results_table(rows: list[dict]) -> str:
    head = ["run", "model", "labels", "augmented", "loss", *(label for _, label in METRICS),
            "pairwise 95% CI", "train pairs", "train time", "test scoring pairs/s", "hardware"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        m = r["metrics"]
        labels = r["labels"] if r["kind"] != "baseline" else "none"
        if r.get("human_weight"):
            labels += f" + {r['human_weight']:.0%} human grades"
        cells = [r["run"], r["model"], labels,
                 "" if r["augmented"] is None else f"{fmt_multiple(r['augmented'])}x", r["loss"] or "",
                 *(fmt_metric(m.get(key)) for key, _ in METRICS), _interval(r.get("ci", {}).get("pairwise_accuracy")),
                 f"{r['train_pairs']:,}" if r["train_pairs"] else "",
                 f"{r['train_seconds']:.0f} s" if r["train_seconds"] else "",
                 f"{r['eval_pairs_per_s']:,.0f}" if r.get("eval_pairs_per_s") else "", r["hardware"]]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def seed_spread(rows: list[dict]) -> str:
    """Mean and range of NDCG@5 and pairwise accuracy over the seeds of each repeated run ('' if none)."""
    groups: dict[str, list[dict]] = {}
    for r in rows:  # only the row's own seed is stripped: "-from-seed14" or a teacher's seed keeps its group apart
        groups.setdefault(r["run"].removesuffix(f"-seed{r['seed']}"), []).append(r)
    lines = []
    for base, members in groups.items():
        if len(members) < 2:
            continue
        cells = [base, ", ".join(str(m["seed"]) for m in members)]
        for key in ("ndcg@5", "pairwise_accuracy"):
            values = [m["metrics"][key] for m in members]
            cells.append(f"{sum(values) / len(values):.3f} ({min(values):.3f}-{max(values):.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n".join(["| run | seeds | NDCG@5 | pairwise acc. |", "|---|---|---|---|", *lines])


def resumed_note(rows: list[dict]) -> str:
    """Which runs' training was cut short and resumed (components.resume), and where ('' if none).

    A reader of the table should know: the model is the one an uninterrupted run makes (the resume is
    bit-identical), and its train time is the sum of the parts, without the lost work since the last save.
    """
    cut = []
    for r in rows:
        for key, unit in (("resumed_at_batch", "batch"), ("resumed_at_step", "step")):
            if r.get(key):
                cut.append(f"{r['run']} at {unit} {', '.join(str(n) for n in r[key])}")
    if not cut:
        return ""
    return ("Training cut short and resumed from its saved state (the same model; train time is the sum of "
            "the parts): " + "; ".join(cut) + ".")


def _interval(bounds) -> str:
    return f"{bounds[0]:.3f}-{bounds[1]:.3f}" if bounds else ""


def stored_scores(rows: list[dict], eval_dir: str | Path) -> dict:
    """Each run's stored per-pair test scores (eval_dir/RUN/scores.parquet), read once, for those that have them."""
    import pandas as pd

    paths = {r["run"]: Path(eval_dir, r["run"], "scores.parquet") for r in rows}
    return {run: pd.read_parquet(path) for run, path in paths.items() if path.exists()}


def with_intervals(rows: list[dict], scores: dict) -> list[dict]:
    """Rows with `ci`: query-bootstrap 95% intervals from each run's stored test scores (when present)."""
    from components.evaluate import SCORE, query_bootstrap

    return [{**r, "ci": query_bootstrap(scores[r["run"]], SCORE) if r["run"] in scores else {}} for r in rows]


PAIRED_REFERENCES = ("teacher-soft", "student-human")


def paired_table(rows: list[dict], scores: dict, references=PAIRED_REFERENCES) -> str:
    """Each run's pairwise-accuracy difference from the reference runs, with paired 95% intervals.

    Paired over the same resampled test queries (`components.evaluate.paired_bootstrap`): the question
    "is the student ahead of its teacher" needs this, as two unpaired intervals overlap far more. '' when
    no reference has stored scores; `scores` is `stored_scores` of the rows.
    """
    from components.evaluate import SCORE, paired_bootstrap

    refs = [name for name in references if name in scores]
    if not refs:
        return ""
    head = ["run", *(f"pairwise acc. minus {name} (95% CI)" for name in refs)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if r["run"] not in scores:
            continue
        cells = [r["run"]]
        for name in refs:
            if name == r["run"]:
                cells.append("")
                continue
            try:
                d = paired_bootstrap(scores[r["run"]], scores[name], SCORE)
            except ValueError as err:
                raise ValueError(f"{r['run']} against {name}: {err}") from err
            low, high = d["pairwise_accuracy_ci"]
            cells.append(f"{d['pairwise_accuracy']:+.3f} ({low:+.3f} to {high:+.3f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fmt_metric(value) -> str:
    """A metric to three decimals, n/a where there is none."""
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.3f}"


# a run's own seed, as its name ends: "-seed14", not the teacher's "-from-seed14" of a born-again control
OWN_SEED = re.compile(r"(?<!-from)-seed\d+$")


def scaling_points(rows: list[dict], teacher: str = "teacher-soft") -> tuple[list[dict], list[dict]]:
    """(one margin-MSE student on `teacher`'s labels per augmented size, their other-seed repeats).

    A size's point is the plan's run there (`student-margin-Nx` from teacher-soft, the scaling curve;
    `experiment_plan.distilled_run_name` for another teacher) where there is one, else another margin-MSE run
    on the same labels at that size (the pipeline's distilled student, say, merged by gpu_merge.py).
    Repeats are the plan run's `-seedN` runs (or another run's `...-seedN`) at sizes the curve has.
    Not on the curve: students whose targets mix in the human grades (`human_weight`), and a curve run's
    variants from a `distil_teachers` entry (`student-margin-16x-lr2e-4`, `-steps1456`: another recipe).
    """
    def eligible(r: dict) -> bool:
        return (r.get("kind") == "student" and r.get("loss") == "margin_mse" and r.get("labels") == teacher
                and r.get("augmented") is not None and not r.get("human_weight"))

    def curve_name(r: dict) -> str:  # the plan's name of the curve run at r's size
        return distilled_run_name(teacher, r["augmented"])

    def planned(r: dict) -> bool:
        return r["run"] == curve_name(r)

    def variant(r: dict) -> bool:
        return r["run"].startswith("student-margin-") and OWN_SEED.sub("", r["run"]) != curve_name(r)

    candidates = [r for r in rows if eligible(r) and not variant(r)]
    points: dict[float, dict] = {}
    for r in candidates:
        if not OWN_SEED.search(r["run"]):
            held = points.get(r["augmented"])
            if held is None or (planned(r) and not planned(held)):
                points[r["augmented"]] = r
    curve = [points[m] for m in sorted(points)]
    repeats = [r for r in candidates if OWN_SEED.search(r["run"]) and r["augmented"] in points]
    return curve, repeats


# the curves' colours; each teacher's line takes its curve's, but a single curve keeps the plot's red teacher
CURVE_COLOURS = ("tab:blue", "tab:orange", "tab:purple", "tab:brown", "tab:olive", "tab:cyan")


def segment_styles(slots: list[int]) -> list[str]:
    """The line joining each point of a curve to the next, given the points' places on the size axis: solid
    between neighbouring sizes, dotted across sizes the curve has no point at (another curve's), so that no
    stretch of line reads as a measurement where there is none."""
    return ["-" if b - a == 1 else ":" for a, b in zip(slots, slots[1:], strict=False)]


def scaling_plot(rows: list[dict], path: str, title: str, teachers: list[str] | None = None) -> str:
    """NDCG@5 and pairwise accuracy of the margin-MSE students against augmented size, one curve per teacher
    (default: teacher-soft's, the scaling curve), each teacher's own row a dashed line in its curve's colour,
    and the human-label student and BM25 as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    teachers = list(teachers or ["teacher-soft"])
    if len(teachers) > len(CURVE_COLOURS) or len(set(teachers)) != len(teachers):
        raise ValueError(f"the plot draws the curves of {len(CURVE_COLOURS)} distinct teachers at most (--curve), "
                         f"got {teachers}")
    by_run = {r["run"]: r for r in rows}
    curves = {t: scaling_points(rows, t) for t in teachers}
    if empty := [t for t, (curve, _) in curves.items() if not curve]:
        having = sorted({r["labels"] for r in rows if r.get("kind") == "student" and r.get("loss") == "margin_mse"
                         and r.get("augmented") is not None and scaling_points(rows, r["labels"])[0]})
        raise ValueError(f"no margin-MSE student runs on the labels of {', '.join(empty)} to plot (teachers with "
                         f"a curve in these rows: {', '.join(having) or 'none'})")
    sizes = sorted({r["augmented"] for curve, _ in curves.values() for r in curve})
    at = {m: x for x, m in enumerate(sizes)}  # evenly spaced sizes: 0x, 2x, 4x, ... read better than a log axis
    one = len(teachers) == 1
    order: dict[str, tuple[int, int]] = {}  # legend entry -> (its curve, its place there); references after
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2 if one else 4.8))
    for ax, (key, label) in zip(axes, (("ndcg@5", "NDCG@5"), ("pairwise_accuracy", "pairwise accuracy")),
                                strict=True):
        for i, ((teacher, (curve, repeats)), colour) in enumerate(zip(curves.items(), CURVE_COLOURS, strict=False)):
            named = "student, margin MSE" if one else f"margin MSE from {teacher}"
            dx = 0.07 * (i - (len(curves) - 1) / 2)  # curves side by side at a shared size, so both bars show
            slots = [at[r["augmented"]] for r in curve]
            xs = [slot + dx for slot in slots]
            ys = [r["metrics"][key] for r in curve]
            bounds = [r.get("ci", {}).get(key) for r in curve]
            if all(bounds):  # query-bootstrap 95% intervals
                yerr = [[y - b[0] for y, b in zip(ys, bounds, strict=True)],
                        [b[1] - y for y, b in zip(ys, bounds, strict=True)]]
                name = f"{named} (95% CI)"
                ax.errorbar(xs, ys, yerr=yerr, fmt="o", capsize=4, color=colour, label=name)
            else:
                name = named
                ax.plot(xs, ys, "o", color=colour, label=name)
            order[name] = (i, 0)
            for k, style in enumerate(segment_styles(slots), start=1):
                ax.plot(xs[k - 1:k + 1], ys[k - 1:k + 1], color=colour, linestyle=style)
            if repeats:
                name = "same run, other seed" if one else f"{named}, other seed"
                ax.plot([at[r["augmented"]] + dx for r in repeats], [r["metrics"][key] for r in repeats], "o",
                        mfc="none", color=colour, label=name)
                order[name] = (i, 1)
            if teacher in by_run and teacher != "student-human":  # a born-again curve's teacher is a line below
                name = "teacher (soft targets)" if one and teacher == "teacher-soft" else f"teacher: {teacher}"
                ax.axhline(by_run[teacher]["metrics"][key], linestyle="--", color="tab:red" if one else colour,
                           label=name)
                order[name] = (i, 2)
        refs = (("student-human", "student on human labels" + (" (the born-again curve's teacher)"
                                                               if "student-human" in teachers else ""), "tab:green"),
                ("baseline-bm25", "BM25", "tab:gray"))
        for run, name, color in refs:
            if run in by_run:
                ax.axhline(by_run[run]["metrics"][key], linestyle="--", color=color, label=name)
        # a point that is not the plan's run names that run under its size (the pipeline's student, say)
        others = {r["augmented"]: r["run"] for curve, _ in curves.values() for r in curve
                  if not r["run"].startswith("student-margin-")}
        ax.set_xticks(list(range(len(sizes))),
                      [f"{fmt_multiple(m)}x" + (f"\n({others[m]})" if m in others else "") for m in sizes])
        ax.set_xlabel("augmented pairs (multiple of the labelled training pairs)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if not one:  # each curve's entries together (matplotlib lists error bars after lines), references last
        handles, labels = zip(*sorted(zip(handles, labels, strict=True),
                                      key=lambda entry: order.get(entry[1], (len(teachers), 0))), strict=True)
    fig.legend(handles, labels, loc="lower center", ncol=4 if one else 3, fontsize=8)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07 if one else 0.16, 1, 1))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with storage.atomic_path(path) as tmp:  # whole or not at all
        fig.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)
    return path


def write_report(runs_dir: str, output: str, plot: str | None = None, test_set: str | None = None,
                 references: list[str] | None = None, curves: list[str] | None = None) -> str:
    """The results table (and scaling plot) of a runs folder, or of its rows rescored on test set NAME.

    Paired differences are taken against `references` (default: teacher-soft and student-human, where
    they have per-pair scores); a named reference without per-pair scores is an error. The plot draws the
    scaling curve of each teacher in `curves` (default: teacher-soft's); a teacher without one is an error,
    raised before anything is written.
    """
    if curves and not plot:
        raise ValueError("--curve draws curves on the scaling plot; give --plot PNG too")
    source = rescore_dir(runs_dir, test_set) if test_set else Path(runs_dir)
    rows = read_results(source)
    if not rows:
        hint = f"`kdrank experiment rescore --name {test_set}`" if test_set else "`kdrank experiment run`"
        raise FileNotFoundError(f"no {RESULTS} in {source}: run {hint} first")
    profile = rows[0]["profile"]
    order = {e.name: i for i, e in enumerate(plan(profile))} if profile in PROFILES else {}
    rows = sorted(rows, key=lambda r: order.get(r["run"], len(order)))  # plan order, whatever order they ran in
    scores = stored_scores(rows, source / "eval")
    missing = [name for name in references or [] if name not in scores]
    if missing:
        raise ValueError(f"--reference {', '.join(missing)}: no per-pair test scores in {source / 'eval'} "
                         f"(runs with scores: {', '.join(sorted(scores)) or 'none'})")
    rows = with_intervals(rows, scores)
    generated = (f"kdrank experiment report --runs {runs_dir}" + (f" --test-set {test_set}" if test_set else "")
                 + (f" --reference {','.join(references)}" if references else "")
                 + (f" --curve {','.join(curves)}" if curves else ""))
    if test_set:
        info = json.loads((source / "test.json").read_text())
        summary = (f"Profile `{profile}` models, scored on test set `{test_set}`: {info['pairs']:,} pairs over "
                   f"{info['queries']:,} queries of {info['source']} ({info['dropped_training_queries']} "
                   f"queries that the runs trained on dropped). Training data: {_data_counts(runs_dir)}.")
    else:
        summary = f"Profile `{profile}`, data summary: {_data_counts(runs_dir)}."
    parts = [f"<!-- generated by: {generated} -->", summary, "", results_table(rows), ""]
    if resumed := resumed_note(rows):
        parts += [resumed, ""]
    if paired := paired_table(rows, scores, references or PAIRED_REFERENCES):
        parts += ["Paired differences (the same test queries resampled for both runs; an interval that excludes 0 "
                  "is a difference this test set can see):", "", paired, ""]
    if spread := seed_spread(rows):
        parts += ["Seed spread (runs repeated with other seeds; mean and min-max):", "", spread, ""]
    if plot:
        where = f"test set {test_set}" if test_set else "test queries"
        scaling_plot(rows, plot, f"kdrank {profile} profile: distilled student vs augmented size ({where})",
                     curves)
        parts += [f"![scaling curve]({os.path.relpath(plot, Path(output).parent)})", ""]
    parts += ["Commands:", "", "```", *(r["command"] for r in rows), "```", ""]
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    storage.write_text(output, "\n".join(parts))  # written whole (a temporary name, then renamed)
    return output


def _data_counts(runs_dir: str) -> str:
    path = Path(runs_dir, "data", "summary.json")
    if not path.exists():
        return "unknown"
    counts = json.loads(path.read_text())["counts"]
    return ", ".join(f"{k} {', '.join(f'{n:,} {what}' for what, n in v.items())}" for k, v in counts.items())
