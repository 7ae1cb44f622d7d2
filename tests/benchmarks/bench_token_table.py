"""Building the student's token table for an augmented training set: pair by pair against distinct texts.

An augmented set repeats each query dozens of times and many products too. `TokenTable.encode` now
tokenises each distinct text once and joins the pieces as the tokenizer joins a pair; this measures
both ways on a set shaped like the full profile's 8x one (the Home Depot pairs, each query also paired
with MULTIPLE random catalogue products), checks that the two tables are identical, and reports the
rates with the tokenizer single-threaded and free to use every core.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_token_table.py --output docs/bench/token-table.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from benchlib import HOMEDEPOT, machine, save_report


def build(parallel: bool, data: str, multiple: int, max_length: int) -> dict:
    """One measurement in a fresh process: TOKENIZERS_PARALLELISM is read once, when tokenizers starts."""
    code = f"""
import json, time, numpy as np
from components import batching, data, models, pairs, schema
from components.batching import TokenTable
from components.scoring import load_classifier
frame = data.read_pairs({data!r}, "homedepot")
rng = np.random.default_rng(0)
catalogue = frame[schema.PRODUCT_TEXT].drop_duplicates().to_numpy()
queries = frame[schema.QUERY].tolist() * ({multiple} + 1)
extra = catalogue[rng.integers(len(catalogue), size=len(frame) * {multiple})]
products = frame[schema.PRODUCT_TEXT].tolist() + list(extra)
tokenizer, _ = load_classifier(models.default_student_path(), role=pairs.STUDENT)
start = time.perf_counter()
new = TokenTable.encode(tokenizer, queries, products, role=pairs.STUDENT, max_length={max_length})
pieces = time.perf_counter() - start
batching._student_pieces = lambda *args: None  # the pair-by-pair path it replaced
start = time.perf_counter()
old = TokenTable.encode(tokenizer, queries, products, role=pairs.STUDENT, max_length={max_length})
by_pair = time.perf_counter() - start
same = bool(np.array_equal(old.ids, new.ids) and np.array_equal(old.offsets, new.offsets)
            and np.array_equal(old.token_types, new.token_types))
print(json.dumps({{"pairs": len(queries), "queries": len(set(queries)), "products": len(set(products)),
                  "by_pair": by_pair, "pieces": pieces, "identical": same}}))
"""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "true" if parallel else "false", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=HOMEDEPOT)
    parser.add_argument("--multiple", type=int, default=8, help="random catalogue products per labelled pair")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--output", default="docs/bench/token-table.md")
    args = parser.parse_args()
    host = machine()
    rows = {parallel: build(parallel, args.data, args.multiple, args.max_length) for parallel in (False, True)}
    first = rows[False]
    lines = [
        "## Student token table for an augmented set: pair by pair vs distinct texts",
        "",
        f"Machine: {host}. Data: the {first['pairs'] // (args.multiple + 1):,} Home Depot pairs, each query also "
        f"paired with {args.multiple} random catalogue products: {first['pairs']:,} pairs over "
        f"{first['queries']:,} distinct queries and {first['products']:,} distinct products, MiniLM-L6's "
        f"tokenizer, max_length {args.max_length}. Command: `PYTHONPATH=. .venv/bin/python "
        f"tests/benchmarks/bench_token_table.py --multiple {args.multiple}`",
        "",
        "| tokenizer threads | pair by pair: s | distinct texts: s | speed-up | pairs / s (distinct texts) "
        "| tables identical |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for parallel, r in rows.items():
        threads = "every core (TOKENIZERS_PARALLELISM=true)" if parallel else "one (TOKENIZERS_PARALLELISM=false)"
        lines.append(f"| {threads} "
                     f"| {r['by_pair']:.1f} | {r['pieces']:.1f} | {r['by_pair'] / r['pieces']:.1f}x "
                     f"| {r['pairs'] / r['pieces']:,.0f} | {'yes' if r['identical'] else '**no**'} |")
    lines.append("")
    if not all(r["identical"] for r in rows.values()):
        print("\n".join(lines))
        raise SystemExit("the two tables differ")
    save_report(args.output, "\n".join(lines))


if __name__ == "__main__":
    main()
