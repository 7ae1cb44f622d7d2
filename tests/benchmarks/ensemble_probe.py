"""What averaging finished models buys on the test pairs: a cheap forecast for a teacher ensemble.

A teacher ensemble (issue step 6) costs a GPU session three teacher trainings and three labellings of the
largest augmented set. Before spending them, the stored per-pair test scores of runs already made say how
much averaging models of this data gains over its members. Each ensemble here is the mean of its members'
scores on the grade scale (`score_grade`: a teacher's expected grade, a student's validation-calibrated
score), the way `teacher-ensemble` averages its members' probabilities. For each: its pairwise accuracy and
NDCG@5, its best member's and the members' mean, and its paired difference from the best member with a
95% interval over resampled test queries (`components.evaluate.paired_bootstrap`).

Reads `eval/RUN/scores.parquet` of a runs folder (after `kdrank experiment restore`); every run must have
scored the same pairs. An ensemble is `NAME=RUN+RUN[+RUN...]`.

    PYTHONPATH=. python tests/benchmarks/ensemble_probe.py --runs runs/results-full \
        --output docs/results/ensemble-probe-full.md \
        students-13+14=student-human+student-human-seed14 llm+student=teacher-soft+student-human
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from benchlib import save_report

from components import schema
from components.evaluate import SCORE, SCORE_GRADE, paired_bootstrap, ranking_metrics

KEY = [schema.QUERY_ID, schema.PRODUCT_ID]


def parse_ensemble(text: str) -> tuple[str, list[str]]:
    """'NAME=RUN+RUN' -> (NAME, [RUN, RUN]); at least two distinct members."""
    name, sep, members = text.partition("=")
    runs = [m for m in members.split("+") if m]
    if not sep or not name or len(runs) < 2 or len(set(runs)) != len(runs):
        raise ValueError(f"an ensemble is NAME=RUN+RUN[+RUN...] with distinct runs, got '{text}'")
    return name, runs


def read_scores(runs_dir: str | Path, run: str) -> pd.DataFrame:
    """A run's test scores on the grade scale, as the column `score` (what the metrics rank by)."""
    path = Path(runs_dir, "eval", run, "scores.parquet")
    if not path.is_file():
        raise FileNotFoundError(f"{run} has no stored test scores at {path}")
    frame = pd.read_parquet(path)
    schema.require_columns(frame, [*KEY, schema.GRADE, SCORE_GRADE])
    if frame[SCORE_GRADE].isna().any():
        raise ValueError(f"{run} has no scores on the grade scale in {path} (a baseline?); "
                         "an ensemble averages grade-scale scores")
    return frame[[*KEY, schema.GRADE]].assign(**{SCORE: frame[SCORE_GRADE].to_numpy(np.float64)})


def probe(frames: dict[str, pd.DataFrame], ensembles: dict[str, list[str]], seed: int = 0) -> list[dict]:
    """One row per ensemble: its metrics, its best member's and the members' mean, paired difference."""
    first = next(iter(frames.values()))
    for run, frame in frames.items():
        if not frame[KEY].astype(str).equals(first[KEY].astype(str)):
            raise ValueError(f"{run} scored other test pairs than the rest (or in another order)")
    metrics = {run: ranking_metrics(frame, SCORE) for run, frame in frames.items()}
    rows = []
    for name, members in ensembles.items():
        mean = np.mean([frames[m][SCORE].to_numpy() for m in members], axis=0)
        frame = first[[*KEY, schema.GRADE]].assign(**{SCORE: mean})
        got = ranking_metrics(frame, SCORE)
        best = max(members, key=lambda m: metrics[m]["pairwise_accuracy"])
        diff = paired_bootstrap(frame, frames[best], SCORE, seed=seed)
        rows.append({"ensemble": name, "members": members,
                     "member_pairwise": [metrics[m]["pairwise_accuracy"] for m in members],
                     "pairwise": got["pairwise_accuracy"], "ndcg5": got["ndcg@5"], "best": best,
                     "best_pairwise": metrics[best]["pairwise_accuracy"],
                     "mean_pairwise": float(np.mean([metrics[m]["pairwise_accuracy"] for m in members])),
                     "minus_best": diff["pairwise_accuracy"], "minus_best_ci": diff["pairwise_accuracy_ci"]})
    return rows


def table(rows: list[dict]) -> str:
    head = ["ensemble", "members (pairwise acc.)", "pairwise acc.", "NDCG@5", "members' mean",
            "minus best member (95% CI)"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        members = ", ".join(f"{m} ({p:.3f})" for m, p in zip(r["members"], r["member_pairwise"], strict=True))
        low, high = r["minus_best_ci"]
        lines.append(f"| {r['ensemble']} | {members} | {r['pairwise']:.3f} | {r['ndcg5']:.3f} | "
                     f"{r['mean_pairwise']:.3f} | {r['minus_best']:+.3f} ({low:+.3f} to {high:+.3f}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True, help="runs folder with eval/RUN/scores.parquet")
    parser.add_argument("--output", help="markdown file to write (default: print)")
    parser.add_argument("ensembles", nargs="+", help="NAME=RUN+RUN[+RUN...]")
    args = parser.parse_args(argv)
    ensembles = dict(parse_ensemble(text) for text in args.ensembles)
    runs = list(dict.fromkeys(m for members in ensembles.values() for m in members))
    frames = {run: read_scores(args.runs, run) for run in runs}
    rows = probe(frames, ensembles)
    text = (f"<!-- generated by: tests/benchmarks/ensemble_probe.py --runs {args.runs} "
            f"{' '.join(args.ensembles)} -->\n"
            f"Test pairs: {len(next(iter(frames.values()))):,}. Each ensemble is the mean of its members' "
            f"grade-scale scores; the difference is paired, over 1,000 resamples of the test queries.\n\n"
            f"{table(rows)}\n")
    if args.output:
        save_report(args.output, text)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
