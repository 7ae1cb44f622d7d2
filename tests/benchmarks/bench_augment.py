"""Augmentation benchmark on the Home Depot catalogue: encoding (cold vs warm cache) apart from retrieval.

Reads the Home Depot file in place (never copied into the repository); the training split's queries are
the query pool and the products of the whole file the catalogue. Two measurements:
1. end to end: the real `augment_pairs`, cold (empty embedding cache) then warm (same cache, new output),
   on a seeded sample of `--products` catalogue products (0 = all; encoding all ~46k titles on a 2-core
   CPU takes far longer than this benchmark should);
2. search at full size: BM25 and bi-encoder top-k plus the fill order over ALL products, with the real
   query embeddings and placeholder unit vectors for the products (search cost does not depend on them).
Full-catalogue cold time = measured parts + catalogue encoding extrapolated at the measured rate.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_augment.py --output docs/bench/augment.md
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import HOMEDEPOT, machine

from components import augment, data, schema

log = logging.getLogger("bench_augment")


def timed_run(train_uri: str, catalogue_uri: str, output: str, config: augment.AugmentConfig) -> dict:
    """augment_pairs plus the process CPU seconds it used (wall time alone misleads on shared cores)."""
    cpu = time.process_time()
    summary = augment.augment_pairs(train_uri, catalogue_uri, output, config)
    return {**summary, "cpu_seconds": round(time.process_time() - cpu, 1)}


def full_size_search(train, catalogue, config: augment.AugmentConfig, n_new: int) -> dict:
    """Seconds for BM25 (index + search), bi-encoder search and the fill order over the whole catalogue."""
    texts = list(catalogue[schema.PRODUCT_TEXT])
    queries = list(train.drop_duplicates(schema.QUERY_ID)[schema.QUERY])
    encoder = augment.Encoder(augment.default_encoder_path(), batch_size=config.batch_size)
    query_emb, hit = augment.cached_embeddings(encoder, queries, config.cache_dir, "queries")
    if not hit:
        raise RuntimeError("the query embeddings should be cached by the end-to-end runs")
    rng = np.random.default_rng(0)
    placeholder = rng.normal(size=(len(texts), query_emb.shape[1])).astype(np.float32)
    placeholder /= np.linalg.norm(placeholder, axis=1, keepdims=True)
    times = {}
    start = time.perf_counter()
    bm25 = augment.BM25Index(texts)
    times["bm25_index"] = time.perf_counter() - start
    start = time.perf_counter()
    lists = {augment.BM25: bm25.topk(queries, config.bm25_k)}
    times["bm25_search"] = time.perf_counter() - start
    start = time.perf_counter()
    lists[augment.BIENCODER] = list(augment.biencoder_topk(query_emb, placeholder, config.biencoder_k))
    times["biencoder_search"] = time.perf_counter() - start
    qids = list(train.drop_duplicates(schema.QUERY_ID)[schema.QUERY_ID])
    lists[augment.RANDOM] = augment.random_negatives(qids, len(texts), config.random_per_query, config.seed)
    row_of = {pid: i for i, pid in enumerate(catalogue[schema.PRODUCT_ID])}
    q_of = {qid: i for i, qid in enumerate(qids)}
    known = {(q_of[q], row_of[p]) for q, p in zip(train[schema.QUERY_ID], train[schema.PRODUCT_ID], strict=True)}
    start = time.perf_counter()
    order = augment.fill_order(lists, np.full(len(queries), -1), known, config.seed)
    times["fill_order"] = time.perf_counter() - start
    times["candidates"] = len(order)
    times["enough"] = len(order) >= n_new
    return times


def run(args: argparse.Namespace) -> str:
    start_machine = machine()
    frame = data.read_pairs(args.data, "homedepot")
    train = data.split_by_query(frame)["train"]
    full = data.catalogue_of(frame)
    sample = full
    if args.products and args.products < len(full):
        sample = full.sample(args.products, random_state=0).sort_values(schema.PRODUCT_ID)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="kdrank-bench-augment-"))
    train_uri, catalogue_uri = str(workdir / "train.parquet"), str(workdir / "catalogue.parquet")
    data.write_table(train, train_uri)
    data.write_table(sample, catalogue_uri)
    config = augment.AugmentConfig(multiple=args.multiple, batch_size=args.batch_size,
                                   cache_dir=str(workdir / "cache"))
    log.info("%d training pairs, %d queries, %d of %d products", len(train),
             train[schema.QUERY_ID].nunique(), len(sample), len(full))
    cold = timed_run(train_uri, catalogue_uri, str(workdir / "cold.parquet"), config)
    warm = timed_run(train_uri, catalogue_uri, str(workdir / "warm.parquet"), config)
    if cold["embedding_cache"] != "miss" or warm["embedding_cache"] != "hit":
        raise RuntimeError(f"expected a cold then a warm cache, got {cold['embedding_cache']}, "
                           f"{warm['embedding_cache']}")
    search = full_size_search(train, full, config, cold["requested_new"]) if len(sample) < len(full) else None
    return report(args, start_machine, train, len(sample), len(full), config, cold, warm, search)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def report(args, start_machine: str, train, n_products: int, full_products: int, config, cold: dict,
           warm: dict, search: dict | None) -> str:
    """The Markdown fragment: measured cold and warm runs, full-size search, and the extrapolation."""
    rate = n_products / cold["catalogue_encode_seconds"]
    what = (f"a seeded sample of {n_products:,} of the {full_products:,} catalogue products" if search
            else f"the whole catalogue of {full_products:,} products")
    lines = [
        "## Augmentation time (Home Depot catalogue)",
        "",
        f"Machine: {start_machine}.",
        "",
        "Command: `PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_augment.py "
        f"{' '.join(sys.argv[1:])}`",
        "",
        f"Input: Home Depot training split ({len(train):,} labelled pairs, "
        f"{train[schema.QUERY_ID].nunique():,} queries) against {what}; multiple {args.multiple:g} "
        f"(bi-encoder k {config.biencoder_k}, BM25 k {config.bm25_k}, {config.random_per_query} random per "
        f"query), packaged MiniLM-L6 encoder, batch {args.batch_size}. Seconds are wall time.",
        "",
        "| run | cache (catalogue / queries) | load + encode | of which catalogue | of which queries "
        "| retrieval + fill | total | CPU s | new pairs |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in (("cold", cold), ("warm", warm)):
        lines.append(f"| {name} | {s['embedding_cache']} / {s['query_embedding_cache']} "
                     f"| {s['encode_seconds']:.1f} | {s['catalogue_encode_seconds']:.1f} "
                     f"| {s['query_encode_seconds']:.1f} | {s['retrieval_seconds']:.1f} | {s['seconds']:.1f} "
                     f"| {s['cpu_seconds']:.1f} | {s['new']:,} |")
    sources = ", ".join(f"{k} {v:,}" for k, v in warm["by_source"].items())
    lines += [
        "",
        f"Rows by source: {sources}; search depth used: bi-encoder {warm['depth'][0]}, BM25 {warm['depth'][1]}. "
        f"Catalogue encoding rate (cold): {rate:.1f} titles/s.",
        "",
        f"The cold run got {cold['cpu_seconds'] / cold['seconds']:.2f} cores on average (CPU s / wall s) on "
        "these shared cores; with both cores free, wall time would approach CPU s / 2, up to "
        f"{2 * cold['seconds'] / cold['cpu_seconds']:.1f}x less.",
    ]
    if search:
        searched = search["bm25_index"] + search["bm25_search"] + search["biencoder_search"] + search["fill_order"]
        encode_all = full_products / rate
        load = warm["encode_seconds"] - warm["catalogue_encode_seconds"] - warm["query_encode_seconds"]
        lines += [
            "",
            f"Search over all {full_products:,} products, measured (bi-encoder search on placeholder product "
            f"vectors, real query vectors): BM25 index {search['bm25_index']:.1f} s, BM25 search "
            f"{search['bm25_search']:.1f} s, bi-encoder search {search['biencoder_search']:.1f} s, fill order "
            f"{search['fill_order']:.1f} s ({search['candidates']:,} candidates; enough for multiple "
            f"{args.multiple:g} at the first depth: {search['enough']}).",
            "",
            f"Whole catalogue, estimated: catalogue encoding {_duration(encode_all)} cold (extrapolated at "
            f"{rate:.1f} titles/s, not measured), none warm; query encoding "
            f"{_duration(cold['query_encode_seconds'])} cold, none warm (measured); search + fill "
            f"{_duration(searched)} (measured). Cold total about "
            f"{_duration(load + encode_all + cold['query_encode_seconds'] + searched)}, warm about "
            f"{_duration(load + searched)}, plus writing the output.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=HOMEDEPOT)
    parser.add_argument("--multiple", type=float, default=4.0)
    parser.add_argument("--products", type=int, default=3000, help="catalogue sample size; 0 = all products")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workdir", help="inputs, outputs and the embedding cache (default: a temp dir)")
    parser.add_argument("--output", help="Markdown file to write (default: print)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    text = run(args)
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
