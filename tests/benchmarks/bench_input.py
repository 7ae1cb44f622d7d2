"""Input preparation per training batch: what the host spends before the model runs.

On a GPU the host prepares batch k+1 while the GPU runs batch k, so this time is hidden only while it
is shorter than the step. Compares, on real Home Depot pairs and the real tokenizers, the per-batch
preparation kdrank used before its token tables (student: tokenise the texts per batch; teacher:
`tokenizer.pad` over pre-tokenised rows) with `TokenTable.batch` (gather and pad with numpy).

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_input.py --output docs/bench/input.md
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from benchlib import HOMEDEPOT, machine, save_report

from components import data, models, pairs, schema
from components.batching import TokenTable, length_batches
from components.scoring import load_classifier


def per_batch_seconds(fn, batches, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        for idx in batches:
            fn(idx)
    return (time.perf_counter() - start) / (repeat * len(batches))


def measure(role: str, frame, batch_size: int, max_length: int, n_batches: int, repeat: int) -> dict:
    path = models.default_student_path() if role == pairs.STUDENT else models.default_teacher_path()
    tokenizer, _ = load_classifier(path, role=role)
    queries, products = frame[schema.QUERY].tolist(), frame[schema.PRODUCT_TEXT].tolist()
    start = time.perf_counter()
    table = TokenTable.encode(tokenizer, queries, products, role=role, max_length=max_length)
    encode_rate = len(table) / (time.perf_counter() - start)
    batches = length_batches(table.lengths, batch_size, np.random.default_rng(0))[:n_batches]
    if role == pairs.STUDENT:

        def before(idx):  # the texts of the batch through the tokenizer, every step
            pairs.encode_pairs(tokenizer, [queries[i] for i in idx], [products[i] for i in idx], role=role,
                               max_length=max_length)
    else:
        rows = [table.ids[table.offsets[i]:table.offsets[i + 1]] for i in range(len(table))]

        def before(idx):  # pre-tokenised rows padded by tokenizer.pad, every step
            chosen = [rows[i] for i in idx]
            tokenizer.pad({"input_ids": chosen, "attention_mask": [np.ones(len(r), np.int32) for r in chosen]},
                          padding=True, return_tensors="pt")

    return {"before": per_batch_seconds(before, batches, repeat),
            "after": per_batch_seconds(table.batch, batches, repeat), "encode_rate": encode_rate,
            "tokens": float(np.mean([table.lengths[b].mean() for b in batches]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=HOMEDEPOT)
    parser.add_argument("--pairs", type=int, default=20000, help="pairs tokenised into the table")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--output", default="docs/bench/input.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    host = machine()
    frame = data.read_pairs(args.data, "homedepot").sample(frac=1.0, random_state=0).head(args.pairs)
    # The full profile's shapes: the student sees 2 x 128 margin pairs per step at 64 tokens, the teacher
    # 64 pairs at 96 tokens.
    shapes = {pairs.STUDENT: (256, 64), pairs.TEACHER: (64, 96)}
    results = {role: measure(role, frame, size, length, args.batches, args.repeat)
               for role, (size, length) in shapes.items()}
    lines = [
        "## Input preparation per training batch (host side)",
        "",
        f"Machine: {host}. Data: {len(frame)} Home Depot pairs, real tokenizers (MiniLM-L6, SmolLM2-135M). "
        f"Command: `PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_input.py --pairs {args.pairs} "
        f"--batches {args.batches} --repeat {args.repeat}`",
        "",
        "| model | sequences / batch | max_length | mean tokens | before: ms / batch | token table: ms / batch "
        "| speed-up | tokenising into the table: pairs / s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for role, r in results.items():
        size, length = shapes[role]
        how = "texts tokenised per batch" if role == pairs.STUDENT else "`tokenizer.pad` per batch"
        lines.append(f"| {role} ({how}) | {size} | {length} | {r['tokens']:.1f} | {1000 * r['before']:.2f} "
                     f"| {1000 * r['after']:.2f} | {r['before'] / r['after']:.1f}x | {r['encode_rate']:,.0f} |")
    lines += ["", "One-off tokenising runs once per training set; the per-batch cost is paid every step.", ""]
    save_report(args.output, "\n".join(lines))


if __name__ == "__main__":
    main()
