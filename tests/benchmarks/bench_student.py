"""Student benchmark: training throughput of the real MiniLM-L6 cross-encoder, and its scoring throughput.

Uses Home Depot queries and titles in place (never copied into the repository) with synthetic teacher
scores (the human grade plus noise), so sequence lengths are realistic. Writes a Markdown fragment.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_student.py --output docs/bench/student.md
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import numpy as np
import torch
from benchlib import HOMEDEPOT, machine, save_report

from components import data, models, pairs, schema
from components.losses import margin_mse_loss
from components.scoring import PairScorer, load_classifier
from components.student import StudentConfig, batch_loss, epoch_batches, pair_scores, train_student, training_rows

log = logging.getLogger("bench_student")


def teacher_labels(frame, seed: int):
    """Home Depot pairs with a synthetic teacher: the human grade plus N(0, 0.15), as probabilities."""
    rng = np.random.default_rng(seed)
    score = np.clip(frame[schema.GRADE].to_numpy() + rng.normal(0, 0.15, len(frame)), 0, 2)
    out = frame[schema.PAIR_COLUMNS].copy()
    out[schema.SOURCE] = "labelled"
    probs = schema.soft_targets_from_mean(score, 3)
    out[schema.TEACHER_PROBS] = list(probs)
    out[schema.TEACHER_SCORE] = schema.expected_grade(probs)
    return out


def one_vs_two_passes(train_uri: str, steps: int, batch_size: int, max_length: int) -> dict:
    """(wall, CPU) seconds per training step: both halves in one forward pass vs two passes (the
    sentence-transformers way), same batches, same step (backward + AdamW)."""
    frame = data.read_table(train_uri)
    config = StudentConfig(batch_size=batch_size, max_length=max_length)
    device = torch.device("cpu")
    result = {}
    for mode in ("one pass", "two passes"):
        torch.manual_seed(0)
        tokenizer, model = load_classifier(models.default_student_path(), role=pairs.STUDENT, num_labels=1)
        rows = training_rows(frame, "teacher", tokenizer, max_length)
        targets = torch.tensor(rows.targets, dtype=torch.float32)
        batches, items = epoch_batches(rows, config, 0)
        model.train()
        optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
        start, cpu = time.perf_counter(), time.process_time()
        for batch in batches[:steps]:
            if mode == "one pass":
                loss = batch_loss(model, rows, items[batch], "margin_mse", device)
            else:
                a, b = items[batch, 0], items[batch, 1]
                s_a = pair_scores(model, rows.tokens.batch(a), device)
                s_b = pair_scores(model, rows.tokens.batch(b), device)
                loss = margin_mse_loss(s_a, s_b, targets[a], targets[b])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        result[mode] = ((time.perf_counter() - start) / steps, (time.process_time() - cpu) / steps)
        log.info("%s: %.3f s/step wall, %.3f CPU-s/step", mode, *result[mode])
    return result


def scoring(model_dir: str, frame, n: int, batch_size: int) -> dict:
    sample = frame.sample(n=min(n, len(frame)), random_state=0)
    scorer = PairScorer(model_dir)
    out = {}
    queries, products = sample[schema.QUERY].tolist(), sample[schema.PRODUCT_TEXT].tolist()
    for naive in (False, True):
        start, cpu = time.perf_counter(), time.process_time()
        scorer.score(queries, products, batch_size=batch_size, naive=naive, progress=False)
        name = "naive (pad to max_length, input order)" if naive else "length-sorted, dynamic padding"
        out[name] = (len(sample) / (time.perf_counter() - start), len(sample) / (time.process_time() - cpu))
    return out


def command(args) -> str:
    flags = [f"--steps {args.steps}", f"--pointwise-steps {args.pointwise_steps}",
             f"--batch-size {args.batch_size}", f"--compare-steps {args.compare_steps}",
             f"--score-pairs {args.score_pairs}", f"--threads {args.threads}"]
    return "PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_student.py " + " ".join(flags)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=HOMEDEPOT)
    parser.add_argument("--steps", type=int, default=8, help="margin-MSE training steps to time")
    parser.add_argument("--pointwise-steps", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32, help="product pairs per step (2x sequences)")
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--compare-steps", type=int, default=4, help="steps per mode, one vs two passes")
    parser.add_argument("--score-pairs", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default: on a shared CPU, threads spin-wait on each other")
    parser.add_argument("--output", default="docs/bench/student.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    host = machine()
    labelled = data.read_pairs(args.data, "homedepot")
    splits = data.split_by_query(labelled, val_fraction=0.005, test_fraction=0.0, seed=13)
    with tempfile.TemporaryDirectory(prefix="bench-student-") as tmp:
        train_uri = data.write_table(teacher_labels(splits["train"], 0), f"{tmp}/labels.parquet")
        val_uri = data.write_table(splits["val"], f"{tmp}/val.parquet")
        summaries = {}
        for loss, steps in (("margin_mse", args.steps), ("pointwise_mse", args.pointwise_steps)):
            config = StudentConfig(loss=loss, batch_size=args.batch_size, max_length=args.max_length,
                                   max_steps=steps, device="cpu")
            summaries[loss] = train_student(train_uri, val_uri, f"{tmp}/{loss}", config)
        passes = one_vs_two_passes(train_uri, args.compare_steps, args.batch_size, args.max_length)
        score = scoring(f"{tmp}/margin_mse", splits["val"], args.score_pairs, 64)
    write_report(args, host, labelled, splits, summaries, passes, score)


def write_report(args, host, labelled, splits, summaries, passes, score) -> None:
    words = labelled[schema.QUERY].str.split().str.len() + labelled[schema.PRODUCT_TEXT].str.split().str.len()
    lines = [
        "## Student (MiniLM-L6 cross-encoder) training and scoring throughput",
        "",
        f"Machine: {host}.",
        "",
        f"Data: Home Depot ({len(labelled)} pairs, {labelled[schema.QUERY_ID].nunique()} queries, median "
        f"{int(np.median(words))} words per query + title), read in place; synthetic teacher scores = "
        f"grade + N(0, 0.15). Training table: {len(splits['train'])} pairs. Model: packaged all-MiniLM-L6-v2 "
        f"+ a one-score head, max_length {args.max_length}, fp32 on CPU.",
        "",
        f"Command: `{command(args)}`",
        "",
        f"The 2 cores are shared with other work, so wall-clock rates depend on the load; CPU-seconds "
        f"(process time) with {args.threads} torch thread(s) are the reproducible figure (a dedicated core "
        "delivers about one CPU-second per second).",
        "",
        "| training (`train_student`, timed loop) | steps | sequences / step | s / step | CPU-s / step "
        "| (query, product) pairs / s | product pairs / s | pairs / CPU-s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for loss, s in summaries.items():
        per_step = 2 * args.batch_size
        margin = f"{s['margin_pairs_per_s']:.1f}" if s["margin_pairs_per_s"] else "-"
        lines.append(f"| {loss} | {s['steps']} | {per_step} | {s['seconds'] / s['steps']:.2f} "
                     f"| {s['cpu_seconds'] / s['steps']:.2f} | {s['pairs_per_s']:.1f} | {margin} "
                     f"| {per_step * s['steps'] / s['cpu_seconds']:.1f} |")
    (one, one_cpu), (two, two_cpu) = passes["one pass"], passes["two passes"]
    lines += [
        "",
        f"Margin MSE step ({args.batch_size} pairs, backward + AdamW, same batches, {args.compare_steps} steps "
        "each):",
        "",
        "| forward passes per step | s / step | CPU-s / step |",
        "|---|---:|---:|",
        f"| one (a and b concatenated, kdrank) | {one:.2f} | {one_cpu:.2f} |",
        f"| two (a, then b: sentence-transformers' MarginMSELoss) | {two:.2f} | {two_cpu:.2f} |",
        "",
        f"| student scoring (`PairScorer`, batch 64, inference mode, {args.score_pairs} pairs) | pairs / s "
        "| pairs / CPU-s |",
        "|---|---:|---:|",
        *[f"| {mode} | {rate:.1f} | {cpu_rate:.1f} |" for mode, (rate, cpu_rate) in score.items()],
        "",
    ]
    text = "\n".join(lines)
    save_report(args.output, text)


if __name__ == "__main__":
    main()
