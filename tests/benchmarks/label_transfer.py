"""Archived teacher labels for another machine's augmented pairs: align the two row sequences.

The archive keeps a teacher's labels as probabilities in the row order of the augmented set they were
made of, without ids (pipelines/teacher_labels.py). Only the machine that made that set can use them:
another machine's bi-encoder finds other neighbours near ties, so its set differs in a few rows and every
later row's position can shift. This script recovers, for another machine's set, which archived row
belongs to which of its rows, from the one thing both sides have: how relevant a pair looks.

Both sets list pairs in the same fill order (`components.augment.fill_order`: rank by rank, source by
source, queries in one seeded shuffle), so they agree row for row except where one set has a pair the
other lacks, after which the rows are offset until another such pair. `align` finds the offset path by
dynamic programming (Viterbi over offsets): at each archived row, the likelihood of its teacher grade
(p1 + 2 p2) given a proxy's grade of the candidate row (a student distilled from this teacher, which
needs no teacher to run), with a penalty per skipped row on either side. The training pairs that lead
both sets are the same rows on both machines: they fit the proxy-to-teacher curve and its spread, and
anchor the path at offset 0.

A pair that one machine put where the other put a near-tie neighbour (the same number of rows, another
product) cannot be seen this way: it takes the label of the pair at its place. `simulate` measures what
the whole method gets right on two sets whose ids are both known (this CPU's fp32 and bf16 sets), with a
pseudo-teacher as far from the proxy as the real teacher is.

Measured on the full profile (docs/results/full-experiments.md, "Moving archived labels onto this CPU's
pairs"): with the 0x student as the proxy, 75.6% of the augmented rows get their own pair's grade and 23.8%
another pair's, too many for a distillation row; no run was made from moved labels.

    PYTHONPATH=. python tests/benchmarks/label_transfer.py transfer --labels LABELS_DIR \
        --pairs runs/x/data/augmented-16x.parquet --proxy SCORED.parquet --output OUT
    PYTHONPATH=. python tests/benchmarks/label_transfer.py simulate --truth A.parquet --other B.parquet \
        --proxy-truth A_SCORED.parquet --proxy-other B_SCORED.parquet --reference LABELS_DIR --output R.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from benchlib import save_report

GRADE_COLUMN = "student_grade"  # what `kdrank score` writes for a student: its grade-scale score
BINS = 40


@dataclass
class AlignConfig:
    band: int = 256  # largest |offset| between the two sequences searched
    skip_penalty: float = 8.0  # log-odds cost of each row of either side left without a partner
    outlier: float = 0.02  # share of matched rows whose grade the proxy curve does not explain
    anchor: int = 0  # leading rows known to be the same on both sides (the training pairs)
    bins: int = BINS  # of the proxy-to-teacher curve, fitted on the anchor rows


@dataclass
class Curve:
    """The teacher's grade as a function of the proxy's: binned means (np.interp between bin centres)."""

    x: np.ndarray
    y: np.ndarray
    sigma: float
    spread: float  # the teacher grades' own standard deviation (the outlier density's width)

    @classmethod
    def fit(cls, proxy: np.ndarray, teacher: np.ndarray, bins: int = BINS) -> Curve:
        if len(proxy) < bins * 5:
            raise ValueError(f"{len(proxy)} anchor rows are too few to fit the proxy curve (need {bins * 5})")
        edges = np.quantile(proxy, np.linspace(0, 1, bins + 1))
        which = np.clip(np.searchsorted(edges, proxy, side="right") - 1, 0, bins - 1)
        counts = np.bincount(which, minlength=bins)
        keep = counts > 0
        x = (np.bincount(which, proxy, bins)[keep] / counts[keep])
        y = (np.bincount(which, teacher, bins)[keep] / counts[keep])
        curve = cls(x, y, 1.0, float(teacher.std()))
        curve.sigma = float(np.sqrt(np.mean((teacher - curve(proxy)) ** 2)))
        return curve

    def __call__(self, proxy: np.ndarray) -> np.ndarray:
        return np.interp(proxy, self.x, self.y)


def teacher_grade(probs: np.ndarray) -> np.ndarray:
    """Expected grade index (0 .. G-1) of each row's probabilities."""
    return probs @ np.arange(probs.shape[1], dtype=np.float64)


def align(teacher: np.ndarray, proxy: np.ndarray, config: AlignConfig | None = None) -> tuple[np.ndarray, dict]:
    """For each row i of the labelled sequence (its teacher grades), the row of the other sequence (its
    proxy grades) it is, or -1; strictly increasing where matched. Also a summary of the path.

    Viterbi over the last consumed row c of the other side, kept as the offset d = c - i within the band.
    Row i either matches row c' > c (skipping c' - c - 1 rows there, each at skip_penalty) or is left
    unmatched (skip_penalty; c stays).
    """
    config = config or AlignConfig()
    n, m, band = len(teacher), len(proxy), config.band
    if n == 0 or m == 0:
        raise ValueError("nothing to align: a side has no rows")
    if config.anchor < 1 or config.anchor > min(n, m):
        raise ValueError(f"anchor must be 1..{min(n, m)} shared leading rows, got {config.anchor}")
    curve = Curve.fit(proxy[:config.anchor], teacher[:config.anchor], config.bins)
    expected = curve(proxy)
    log_norm = -np.log(curve.sigma * np.sqrt(2 * np.pi))
    log_out = np.log(config.outlier) - np.log(4 * curve.spread)  # a flat density over +-2 spreads
    log_in = np.log1p(-config.outlier)
    miss = -config.skip_penalty + log_out  # an unmatched labelled row: only the flat density explains it

    width = 2 * band + 1
    offsets = np.arange(-band, band + 1)
    lin = config.skip_penalty * np.arange(width)
    score = np.full(width, -np.inf)
    score[band] = 0.0  # before row 0 (i = -1) the last consumed other row is -1: offset 0
    back = np.empty((n, width), dtype=np.int16)  # previous offset index; width + k marks "row unmatched"
    for i in range(n):
        c = i + offsets
        inside = (c >= 0) & (c < m)
        resid = teacher[i] - expected[np.clip(c, 0, m - 1)]
        emit = np.logaddexp(log_in + log_norm - 0.5 * (resid / curve.sigma) ** 2, log_out)
        emit[~inside] = -np.inf
        # match: after row i - 1 the last consumed row was (i - 1) + d'; this row takes i + d, which must
        # come later (d >= d'), skipping d - d' rows of the other side.
        shifted = score + lin
        best = np.maximum.accumulate(shifted)
        arg = np.maximum.accumulate(np.where(shifted == best, np.arange(width), 0))
        match = best - lin + emit
        # unmatched: c stays, so the offset falls by one: from d + 1.
        stay = np.full(width, -np.inf)
        stay[:-1] = score[1:] + miss
        use_stay = stay > match
        back[i] = np.where(use_stay, width + np.arange(width) + 1, arg)
        score = np.where(use_stay, stay, match)
        if i < config.anchor:  # the shared rows are the same rows: force offset 0
            keep = score[band]
            score[:] = -np.inf
            score[band] = keep
    pairs = np.full(n, -1, dtype=np.int64)
    k = int(np.argmax(score))
    final = float(score[k])
    for i in range(n - 1, -1, -1):
        b = int(back[i, k])
        if b >= width:
            k = b - width
        else:
            pairs[i] = i + offsets[k]
            k = b
    matched = pairs >= 0
    used = np.zeros(m, dtype=bool)
    used[pairs[matched]] = True
    offset = np.where(matched, pairs - np.arange(n), 0)
    summary = {"labelled_rows": n, "other_rows": m, "matched": int(matched.sum()),
               "labelled_unmatched": int((~matched).sum()), "other_unmatched": int((~used).sum()),
               "largest_offset": int(np.abs(offset).max()), "band": band, "path_log_likelihood": final,
               "curve_sigma": curve.sigma, "config": asdict(config),
               "at_band_edge": bool(np.abs(offset).max() >= band - 1)}
    return pairs, summary


# ---------------------------------------------------------------- reading the two sides


def read_proxy(path: str | Path, pairs: pd.DataFrame) -> np.ndarray:
    """The proxy's grades of `pairs` (a scored copy of them, or of their first rows), checked row by row."""
    from components import schema

    scored = pd.read_parquet(path, columns=[schema.QUERY_ID, schema.PRODUCT_ID, GRADE_COLUMN])
    if len(scored) > len(pairs):
        raise ValueError(f"{path}: {len(scored)} scored rows for {len(pairs)} pairs")
    head = pairs.iloc[:len(scored)]
    for column in (schema.QUERY_ID, schema.PRODUCT_ID):
        if not np.array_equal(scored[column].astype(str).to_numpy(), head[column].astype(str).to_numpy()):
            bad = int(np.argmax(scored[column].astype(str).to_numpy() != head[column].astype(str).to_numpy()))
            raise ValueError(f"{path}: row {bad} scores another pair than row {bad} of the pairs ({column} differs)")
    return scored[GRADE_COLUMN].to_numpy(dtype=np.float64)


def read_labels(folder: str | Path) -> tuple[dict, np.ndarray]:
    """(record, probabilities) of an archived label set, checked."""
    from pipelines import teacher_labels

    record = teacher_labels.check_stored(folder)
    return record, pd.read_parquet(Path(folder, teacher_labels.PROBS)).to_numpy(dtype=np.float64)


# ---------------------------------------------------------------- transfer


def transfer(labels_dir: str | Path, pairs_uri: str | Path, proxy_uri: str | Path, train_uri: str,
             catalogue_uri: str, output: str | Path, config: AlignConfig | None = None) -> dict:
    """Write `output`/labels/NAME and `output`/pairs/augmented-Mx (an archive's layout): the archived labels
    moved onto this machine's augmented set, with the rows that found no archived label dropped."""
    from components import schema
    from components.augment import ATTRS_KEY
    from pipelines import pair_sets, teacher_labels

    record, probs = read_labels(labels_dir)
    pairs = pd.read_parquet(pairs_uri)
    made = json.loads(pairs.attrs.get(ATTRS_KEY, "{}"))
    if len(pairs) != record["pairs"]:
        raise ValueError(f"{pairs_uri} has {len(pairs)} pairs; the label set {labels_dir} is of {record['pairs']}")
    base = record["base_pairs"]
    if teacher_labels.pairs_digest(pairs.iloc[:base]) != record["base_digest"]:
        raise ValueError(f"{pairs_uri} does not start with the {base} training pairs the labels start with")
    proxy = read_proxy(proxy_uri, pairs)
    if len(proxy) != len(pairs):
        raise ValueError(f"{proxy_uri} scores {len(proxy)} of the {len(pairs)} pairs; transfer needs them all")
    config = config or AlignConfig()
    config.anchor = base
    match, summary = align(teacher_grade(probs), proxy, config)
    found = match >= 0
    kept = pairs.iloc[match[found]].reset_index(drop=True)
    kept_probs = probs[found]
    name = teacher_labels.set_name(record["teacher"], record["multiple"])
    dropped = np.ones(len(pairs), dtype=bool)
    dropped[match[found]] = False
    by_source = pairs[schema.SOURCE][dropped].value_counts()
    transferred = {**summary, "from_pairs_digest": record["pairs_digest"], "to_pairs": len(pairs),
                   "to_pairs_digest": teacher_labels.pairs_digest(pairs), "proxy": Path(proxy_uri).name,
                   "dropped_by_source": {str(k): int(v) for k, v in by_source.items()}}
    output = Path(output)
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp, "augmented.parquet")
        summary_made = {**made.get("summary", {}), "transferred_labels": name}
        kept.attrs[ATTRS_KEY] = json.dumps({"settings": made.get("settings"), "summary": summary_made})
        kept.to_parquet(subset, index=False)
        stage = Path(tmp, "out")
        pair_record = pair_sets.export_set(subset, train_uri, catalogue_uri, stage / "pairs" /
                                           pair_sets.set_name(record["multiple"]))
        label_dir = stage / "labels" / name
        label_dir.mkdir(parents=True)
        narrow = kept_probs.astype(np.float32)
        pd.DataFrame({f"p{k}": narrow[:, k] for k in range(narrow.shape[1])}).to_parquet(
            label_dir / teacher_labels.PROBS, index=False, compression="zstd", use_byte_stream_split=True,
            use_dictionary=False)
        new_record = {**record, "pairs": len(kept), "pairs_digest": pair_record["pairs_digest"],
                      "dtype": "float32", "transferred": transferred}
        (label_dir / teacher_labels.RECORD).write_text(json.dumps(new_record, indent=2) + "\n")
        teacher_labels.check_stored(label_dir)
        for part in ("pairs", "labels"):
            for folder in (stage / part).iterdir():
                target = output / part / folder.name
                if target.exists():
                    raise FileExistsError(f"{target} exists; transfer writes new sets only")
        for part in ("pairs", "labels"):
            for folder in (stage / part).iterdir():
                (output / part).mkdir(parents=True, exist_ok=True)
                shutil.move(str(folder), output / part / folder.name)
    return transferred


# ---------------------------------------------------------------- what the method gets right


def simulate(truth_uri: str | Path, other_uri: str | Path, proxy_truth_uri: str | Path, proxy_other_uri: str | Path,
             labels_dir: str | Path, rows: int | None = None, seed: int = 0,
             config: AlignConfig | None = None) -> dict:
    """Align two augmented sets whose pairs are both known, as `transfer` aligns an archived set to this
    machine's: the `truth` set plays the archive's machine, with a pseudo-teacher grade per row (the
    proxy's curve at its proxy grade, plus residuals drawn from the real teacher's residuals on the
    training pairs, so that it is as far from the proxy as the teacher is); the `other` set plays this
    machine. Counts how many of the other set's rows get the grade of their own pair."""
    from components import schema

    record, probs = read_labels(labels_dir)
    base = record["base_pairs"]
    truth = pd.read_parquet(truth_uri, columns=[schema.QUERY_ID, schema.PRODUCT_ID, schema.SOURCE])
    other = pd.read_parquet(other_uri, columns=[schema.QUERY_ID, schema.PRODUCT_ID, schema.SOURCE])
    p_truth, p_other = read_proxy(proxy_truth_uri, truth), read_proxy(proxy_other_uri, other)
    n = min(len(p_truth), len(p_other)) if rows is None else rows
    if n > min(len(p_truth), len(p_other)) or n <= base:
        raise ValueError(f"rows must be above the {base} training pairs and within both proxies' "
                         f"{min(len(p_truth), len(p_other))} scored rows, got {n}")
    key_t = truth[schema.QUERY_ID].astype(str) + "\x1f" + truth[schema.PRODUCT_ID].astype(str)
    key_o = other[schema.QUERY_ID].astype(str) + "\x1f" + other[schema.PRODUCT_ID].astype(str)
    if not np.array_equal(key_t.iloc[:base].to_numpy(), key_o.iloc[:base].to_numpy()):
        raise ValueError("the two sets do not start with the same training pairs")
    teacher = teacher_grade(probs[:base])
    config = config or AlignConfig()
    curve = Curve.fit(p_other[:base], teacher, config.bins)
    residuals = teacher - curve(p_other[:base])
    rng = np.random.default_rng(seed)
    pseudo = curve(p_truth[:n]) + rng.choice(residuals, n)
    pseudo[:base] = teacher
    config.anchor = base
    match, summary = align(pseudo, p_other[:n], config)
    kt, ko = key_t.iloc[:n].to_numpy(), key_o.iloc[:n].to_numpy()
    rows_in = np.flatnonzero(match >= 0)
    new = rows_in >= base
    right = kt[rows_in[new]] == ko[match[rows_in[new]]]
    return {"rows": int(n), "new_rows": int(n - base), "seed": seed, "residual_sd": float(residuals.std()),
            # the other set's new rows whose pair the truth's rows hold at all, and at the same row
            "shared_new_pairs": int(np.isin(ko[base:], kt[base:]).sum()),
            "same_row_new_pairs": int((kt[base:] == ko[base:]).sum()),
            "matched_new": int(new.sum()), "matched_right": int(right.sum()), "matched_wrong": int((~right).sum()),
            "align": summary}


# ---------------------------------------------------------------- the runs made from moved labels


def compare(run: pd.DataFrame, reference: pd.DataFrame, label: str) -> dict:
    """One reference row: its pairwise accuracy and NDCG@5, and the run minus it, paired over test queries."""
    from components import schema
    from components.evaluate import SCORE, paired_bootstrap, ranking_metrics

    key = [schema.QUERY_ID, schema.PRODUCT_ID]
    if not run[key].astype(str).equals(reference[key].astype(str)):
        raise ValueError(f"{label}: the two runs scored other test pairs (or in another order)")
    metrics = ranking_metrics(reference, SCORE)
    diff = paired_bootstrap(run, reference, SCORE)
    return {"reference": label, "pairwise": metrics["pairwise_accuracy"], "ndcg5": metrics["ndcg@5"],
            "minus": diff["pairwise_accuracy"], "minus_ci": diff["pairwise_accuracy_ci"], "ndcg_minus": diff["ndcg@5"]}


def report(runs_dir: str | Path, references_dir: str | Path, runs: list[str], references: list[str],
           simulation: dict | None) -> str:
    """Markdown: how the labels were moved (from the label set's record), what the simulation got right,
    and each run beside the reference runs, paired."""
    from benchlib import machine, read_grade_scores

    from components.evaluate import SCORE, ranking_metrics
    from pipelines import teacher_labels

    stored = sorted(Path(runs_dir, "data", teacher_labels.ARCHIVED).glob("*"))
    record = teacher_labels.read_record(stored[0]) if stored else None
    if record is None or "transferred" not in record:
        raise ValueError(f"{runs_dir}/data/{teacher_labels.ARCHIVED} holds no label set written by `transfer`")
    moved = record["transferred"]
    new = moved["to_pairs"] - record["base_pairs"]
    lines = ["<!-- generated by tests/benchmarks/label_transfer.py report; do not edit by hand -->", "",
             f"Label set: {teacher_labels.set_name(record['teacher'], record['multiple'])}, made on another "
             f"machine for pairs {moved['from_pairs_digest'][:12]}, moved onto this machine's set "
             f"{moved['to_pairs_digest'][:12]} ({moved['to_pairs']:,} pairs, {new:,} of them augmented).", "",
             "| moved | rows |", "|---|---:|",
             f"| training pairs (the same rows on both machines) | {record['base_pairs']:,} |",
             f"| augmented rows given an archived label | {moved['matched'] - record['base_pairs']:,} "
             f"({(moved['matched'] - record['base_pairs']) / new:.2%}) |",
             *(f"| augmented rows dropped, no archived label fits ({source}) | {count:,} |"
               for source, count in sorted(moved["dropped_by_source"].items())),
             f"| largest row offset between the two sets | {moved['largest_offset']} |", ""]
    if simulation:
        def share(count: int) -> str:
            return f"{count:,} ({count / simulation['new_rows']:.2%})"

        lines += [f"Simulation (two sets of this machine whose pairs are both known, {simulation['new_rows']:,} "
                  "augmented rows each, a pseudo-teacher as far from the proxy as the teacher is):", "",
                  "| | rows |", "|---|---:|",
                  "| the other set's augmented rows whose pair the first set holds at all | "
                  f"{share(simulation['shared_new_pairs'])} |",
                  f"| ... at the same row (the rows taken in order, unaligned) | "
                  f"{share(simulation['same_row_new_pairs'])} |",
                  f"| aligned: given the grade of their own pair | {share(simulation['matched_right'])} |",
                  f"| aligned: given another pair's grade | {share(simulation['matched_wrong'])} |",
                  f"| aligned: dropped | {share(simulation['align']['other_unmatched'])} |", ""]
    lines += ["| run | pairwise acc. / NDCG@5 | reference | its pairwise acc. / NDCG@5 | "
              "pairwise acc., run minus reference (95% CI) | NDCG@5, run minus reference |",
              "|---|---:|---|---:|---:|---:|"]
    for run in runs:
        mine = read_grade_scores(runs_dir, run)
        metrics = ranking_metrics(mine, SCORE)
        for name in references:
            r = compare(mine, read_grade_scores(references_dir, name), name)
            low, high = r["minus_ci"]
            lines.append(f"| {run} | {metrics['pairwise_accuracy']:.3f} / {metrics['ndcg@5']:.3f} | {name} | "
                         f"{r['pairwise']:.3f} / {r['ndcg5']:.3f} | {r['minus']:+.3f} ({low:+.3f} to {high:+.3f}) | "
                         f"{r['ndcg_minus']:+.3f} |")
    lines += ["", f"Machine: {machine()}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("transfer", "simulate"):
        cmd = sub.add_parser(name)
        cmd.add_argument("--labels", required=True, help="an archived label set (labels.json, probs.parquet)")
        cmd.add_argument("--band", type=int, default=AlignConfig.band)
        cmd.add_argument("--skip-penalty", type=float, default=AlignConfig.skip_penalty)
        cmd.add_argument("--output", required=True)
    t = sub.choices["transfer"]
    t.add_argument("--pairs", required=True, help="this machine's augmented set of the labels' multiple")
    t.add_argument("--proxy", required=True, help="a student's `kdrank score` output for those pairs")
    t.add_argument("--data", required=True, help="the runs folder's data/ (train.parquet, catalogue.parquet)")
    s = sub.choices["simulate"]
    s.add_argument("--truth", required=True)
    s.add_argument("--other", required=True)
    s.add_argument("--proxy-truth", required=True)
    s.add_argument("--proxy-other", required=True)
    s.add_argument("--rows", type=int)
    s.add_argument("--seed", type=int, default=0)
    r = sub.add_parser("report")
    r.add_argument("--runs", required=True, help="the runs folder distilled from the moved labels")
    r.add_argument("--references", required=True, help="the runs folder of the runs to compare with")
    r.add_argument("--against", required=True, help="comma-separated reference runs")
    r.add_argument("--simulation", help="the JSON `simulate` wrote")
    r.add_argument("--output", help="Markdown file (default: print)")
    r.add_argument("run", nargs="+")
    args = parser.parse_args(argv)
    if args.command == "report":
        simulation = json.loads(Path(args.simulation).read_text()) if args.simulation else None
        save_report(args.output, report(args.runs, args.references, args.run, args.against.split(","), simulation))
        return 0
    config = AlignConfig(band=args.band, skip_penalty=args.skip_penalty)
    if args.command == "transfer":
        out = transfer(args.labels, args.pairs, args.proxy, str(Path(args.data, "train.parquet")),
                       str(Path(args.data, "catalogue.parquet")), args.output, config)
    else:
        out = simulate(args.truth, args.other, args.proxy_truth, args.proxy_other, args.labels, args.rows,
                       args.seed, config)
        Path(args.output).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
