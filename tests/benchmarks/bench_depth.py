"""Retrieval depth benchmark: what `components.augment.first_depth` saves on the full profile's split.

Augmentation retrieves the top k bi-encoder and BM25 products per training query and doubles k while
the candidates are short of the request. The candidates at a depth do not depend on the depths before
it, so `first_depth` starts at the first depth whose upper bound on candidates can fill the request.
This times one search (BM25 top-k, bi-encoder top-k, fill order) at each depth over the whole catalogue
and counts, for each multiple, the searches the doubling loop made before and makes now. Both counts
are exact: a depth whose bound is short of the request cannot fill it.

The bi-encoder search uses seeded unit vectors for queries and products (its cost does not depend on
their values; encoding the 46k titles takes 45 minutes on 2 cores), so its candidates, and the fill
order's count, are not the real ones; BM25 is real.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_depth.py --output docs/bench/augment-depth.md
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time

import numpy as np
from benchlib import HOMEDEPOT, machine, save_report

from components import augment, data, schema
from components.flow import get_profile


def searches(n_new: int, n_queries: int, n_docs: int, n_fixed: int, start: list[int],
             counts: dict[int, int]) -> list[int]:
    """The depths a doubling loop from `start` searches, given the candidates each depth yields."""
    depth, seen = list(start), []
    while True:
        seen.append(depth[1])
        if depth[1] not in counts:
            raise SystemExit(f"--depths lacks {depth[1]}, which a {n_new:,}-pair request searches")
        if counts[depth[1]] >= n_new or augment.exhausted(depth, n_docs):
            return seen
        depth = augment.deeper(depth, n_docs)


def run(args: argparse.Namespace) -> str:
    start_machine = machine()
    profile = get_profile("full")
    with tempfile.TemporaryDirectory(prefix="kdrank-bench-depth-") as tmp:
        paths = data.prepare_data(args.data, tmp, data.PrepareConfig(fmt="homedepot", **profile.prepare))
        train, catalogue = data.read_table(paths["train"]), data.read_table(paths["catalogue"])
    config = augment.AugmentConfig(**{**profile.augment, "biencoder_k": args.start, "bm25_k": args.start})
    queries = train.drop_duplicates(schema.QUERY_ID)
    texts, n_docs, n_queries = list(catalogue[schema.PRODUCT_TEXT]), len(catalogue), len(queries)
    rng = np.random.default_rng(0)

    def unit(n: int) -> np.ndarray:
        vectors = rng.normal(size=(n, 384)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    query_emb, doc_emb = unit(n_queries), unit(n_docs)
    started = time.perf_counter()
    bm25 = augment.BM25Index(texts)
    index_seconds = time.perf_counter() - started
    row_of = {pid: i for i, pid in enumerate(catalogue[schema.PRODUCT_ID])}
    q_of = {qid: i for i, qid in enumerate(queries[schema.QUERY_ID])}
    known = {(q_of[q], row_of[p]) for q, p in zip(train[schema.QUERY_ID], train[schema.PRODUCT_ID], strict=True)}
    randoms = augment.random_negatives(list(queries[schema.QUERY_ID]), n_docs, config.random_per_query, config.seed)
    n_fixed = sum(len(r) for r in randoms)
    times, counts = {}, {}
    for depth in args.depths:
        t0 = time.perf_counter()
        bm = bm25.topk(list(queries[schema.QUERY]), depth)
        t1 = time.perf_counter()
        bi = list(augment.biencoder_topk(query_emb, doc_emb, depth))
        t2 = time.perf_counter()
        order = augment.fill_order({augment.BIENCODER: bi, augment.BM25: bm, augment.RANDOM: randoms},
                                   np.full(n_queries, -1), known, config.seed)
        t3 = time.perf_counter()
        times[depth] = (t1 - t0, t2 - t1, t3 - t2)
        counts[depth] = len(order)
        logging.info("depth %d: %d candidates, %.1f s", depth, len(order), t3 - t0)

    start = [config.biencoder_k, config.bm25_k]
    lines = [
        "## Retrieval depth: searches skipped by `first_depth`",
        "",
        f"Machine: {start_machine}.",
        "",
        f"Command: `PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_depth.py {' '.join(sys.argv[1:])}`",
        "",
        f"Input: the `full` profile's training split ({len(train):,} labelled pairs, {n_queries:,} queries) "
        f"against the whole catalogue of {n_docs:,} products; starting depths bi-encoder {start[0]}, BM25 "
        f"{start[1]}, {config.random_per_query} random per query. BM25 index: {index_seconds:.1f} s. "
        "Bi-encoder search on seeded unit vectors (same cost as real ones; its candidates are not real).",
        "",
        "| depth | BM25 search | bi-encoder search | fill order | one search | candidates (BM25 real, bi-encoder not) "
        "| upper bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for depth in args.depths:
        bm, bi, fill = times[depth]
        lines.append(f"| {depth} | {bm:.1f} s | {bi:.1f} s | {fill:.1f} s | {bm + bi + fill:.1f} s "
                     f"| {counts[depth]:,} | {n_queries * 2 * depth + n_fixed:,} |")
    lines += ["", "| multiple | new pairs | depths searched before | now | search time before | now | saved |",
              "|---|---|---|---|---|---|---|"]
    for multiple in args.multiples:
        n_new = round(multiple * len(train))
        before = searches(n_new, n_queries, n_docs, n_fixed, start, counts)
        first = augment.first_depth(start, n_new, n_queries, n_docs, n_fixed)
        now = searches(n_new, n_queries, n_docs, n_fixed, first, counts)
        cost = {d: sum(times[d]) for d in times}
        t_before, t_now = sum(cost[d] for d in before), sum(cost[d] for d in now)
        lines.append(f"| {multiple:g}x | {n_new:,} | {', '.join(map(str, before))} | {', '.join(map(str, now))} "
                     f"| {t_before:.1f} s | {t_now:.1f} s | {t_before - t_now:.1f} s |")
    lines += ["", "The depths searched are those of the real data only where the bound decides them; where it "
              "does not, the candidates counted here (with stand-in bi-encoder vectors) decide when the loop "
              "stops, as the real candidates would. The pairs made are the same before and after "
              "(`tests/test_augment.py`).", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=HOMEDEPOT)
    parser.add_argument("--start", type=int, default=augment.AugmentConfig().bm25_k,
                        help="starting depth of both retrievers (default: the profile's, %(default)s)")
    parser.add_argument("--depths", type=int, nargs="+", default=[20, 40, 80, 160])
    parser.add_argument("--multiples", type=float, nargs="+", default=[2, 4, 8, 16])
    parser.add_argument("--output", default="docs/bench/augment-depth.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    save_report(args.output, run(args))


if __name__ == "__main__":
    main()
