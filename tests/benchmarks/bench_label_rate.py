r"""Where teacher labelling loses its pace: one checkpoint scores several pair sets in one process.

On the 2-core Intel Xeon VM (bf16) the full-profile teachers scored the 11,721 test pairs at 59-66
pairs/s but labelled augmented sets at 33-48 pairs/s with the same scorer and batch size. This times,
in one process and one loaded scorer, `PairScorer.score` on the first --rows rows of each pairs file
given (the test pairs, training pairs, augmented pairs), then `label_pairs` (the labelling path:
streamed chunks, written shards) on the first --rows rows of the last file, so the pairs, the set size
and the code path can be told apart.

    KDRANK_CPU_BF16=1 PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_label_rate.py \
        --teacher runs/results-full/models/teacher-soft-verbaliser-seed15 --rows 11721 \
        runs/results-full/data/test.parquet runs/results-full/data/train.parquet \
        runs/results-full/data/new-pairs-of-labelled-teacher-soft-verbaliser-seed15-4x-8d9606470f.parquet
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
from benchlib import machine, save_report

from components import schema
from components.label import label_pairs
from components.runtime import precision
from components.scoring import PairScorer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+", help="Parquet pair files (query, product_text columns)")
    parser.add_argument("--teacher", required=True, help="a teacher checkpoint folder")
    parser.add_argument("--rows", type=int, default=11_721, help="rows taken from the start of each file")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--output", help="write the Markdown table here too")
    args = parser.parse_args(argv)

    frames = {f: pd.read_parquet(f).head(args.rows) for f in args.files}
    short = [f for f, frame in frames.items() if len(frame) < args.rows]
    if short:
        parser.error(f"fewer than --rows {args.rows} rows in {', '.join(short)}")
    scorer = PairScorer(args.teacher)
    lines = [f"Machine: {machine()}; {precision(scorer.device)}; teacher {args.teacher}, batch {args.batch_size}, "
             f"{args.rows:,} pairs each.", "", "| path | pairs | seconds | pairs/s |", "|---|---|---:|---:|"]
    try:
        for name, frame in frames.items():
            start = time.perf_counter()
            scorer.score(frame[schema.QUERY].astype(str).tolist(), frame[schema.PRODUCT_TEXT].astype(str).tolist(),
                         batch_size=args.batch_size, desc=f"scoring {Path(name).name}")
            took = time.perf_counter() - start
            lines.append(f"| `PairScorer.score` | {Path(name).name} | {took:.0f} | {len(frame) / took:.1f} |")
    finally:
        scorer.close()
    last = args.files[-1]
    with tempfile.TemporaryDirectory() as tmp:
        pairs = Path(tmp, "pairs.parquet")
        frames[last].to_parquet(pairs, index=False)
        start = time.perf_counter()  # includes loading the checkpoint, as a labelling run does
        label_pairs(str(pairs), args.teacher, str(Path(tmp, "labels")), num_shards=1, batch_size=args.batch_size)
        took = time.perf_counter() - start
    lines.append(f"| `label_pairs` (model load included) | {Path(last).name} | {took:.0f} | "
                 f"{len(frames[last]) / took:.1f} |")
    save_report(args.output, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
