r"""Teacher-labelling benchmark: throughput against a naive baseline, and peak memory as the set grows.

(a) pairs/s of the real default teacher (SmolLM2-135M-Instruct with a randomly initialised 3-grade head)
    on Home Depot pairs (read in place, never copied into the repository; synthetic pairs when absent):
    the labelling path (exact token-length sort, dynamic padding) vs the naive baseline (same model and
    batch size, input order, padding to max_length), on the same pairs in the same run.
(b) peak RSS of `label_pairs` on N and 10N pairs, each in a fresh subprocess.
Writes a Markdown fragment for docs/benchmarks.md.

    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_labelling.py \
        --output docs/bench/labelling.md

OMP_WAIT_POLICY=PASSIVE stops OpenMP threads spinning while they wait, which on cores shared with other
work made every forward pass many times slower (both paths alike).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from benchlib import HOMEDEPOT, machine

from components import data, models, pairs, schema
from components.checkpoint import CheckpointInfo, write_info
from components.label import label_pairs
from components.scoring import PairScorer, load_classifier

log = logging.getLogger("bench_labelling")


def source_pairs(path: str, seed: int) -> tuple[pd.DataFrame, str]:
    """Labelled Home Depot pairs when the file is there, else synthetic pairs of similar length."""
    if Path(path).is_file():
        return data.read_pairs(path, "homedepot", on_invalid="drop"), f"Home Depot ({path})"
    from components.synthetic import SyntheticConfig, generate_labelled

    return generate_labelled(SyntheticConfig(seed=seed)), "synthetic default data (Home Depot file absent)"


def unlabelled_pairs(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """n (query, product) pairs drawn from the source's queries and products: realistic text lengths."""
    rng = np.random.default_rng(seed)
    queries = frame[[schema.QUERY_ID, schema.QUERY]].drop_duplicates(schema.QUERY_ID).to_numpy()
    products = data.catalogue_of(frame).to_numpy()
    qi, pi = rng.integers(0, len(queries), n), rng.integers(0, len(products), n)
    return pd.DataFrame({schema.QUERY_ID: queries[qi, 0], schema.QUERY: queries[qi, 1],
                         schema.PRODUCT_ID: products[pi, 0], schema.PRODUCT_TEXT: products[pi, 1],
                         schema.SOURCE: "random"})


def real_teacher(directory: str, max_length: int) -> str:
    """The packaged SmolLM2-135M as a kdrank teacher with a random 3-grade head (speed is what counts)."""
    base = models.default_teacher_path()
    torch.manual_seed(0)
    tokenizer, model = load_classifier(base, role=pairs.TEACHER, num_labels=3)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_info(directory, CheckpointInfo(role=pairs.TEACHER, num_grades=3, max_length=max_length,
                                         base_model=models.TEACHER_NAME))
    return directory


def throughput(teacher: str, frame: pd.DataFrame, batch_size: int) -> dict:
    scorer = PairScorer(teacher, device="cpu")
    tokenizer = scorer.members[0][0]
    queries, products = frame[schema.QUERY].tolist(), frame[schema.PRODUCT_TEXT].tolist()
    ids = pairs.encode_pairs(tokenizer, queries, products, role=pairs.TEACHER, max_length=scorer.max_length,
                             padding=False, return_tensors=None)["input_ids"]
    lengths = np.array([len(x) for x in ids])
    scorer.score(queries[:batch_size], products[:batch_size], batch_size=batch_size, progress=False)  # warm-up
    result = {"pairs": len(frame), "batch_size": batch_size, "max_length": scorer.max_length,
              "tokens_mean": float(lengths.mean()), "tokens_max": int(lengths.max())}
    probs = {}
    for mode in ("optimised", "naive"):
        start = time.perf_counter()
        out = scorer.score(queries, products, batch_size=batch_size, naive=mode == "naive", desc=mode)
        seconds = time.perf_counter() - start
        probs[mode] = out.probs
        result[mode] = {"seconds": round(seconds, 2), "pairs_per_second": round(len(frame) / seconds, 2)}
        log.info("%s: %.2f pairs/s", mode, len(frame) / seconds)
    result["speedup"] = round(result["optimised"]["pairs_per_second"] / result["naive"]["pairs_per_second"], 2)
    result["max_prob_difference"] = float(np.abs(probs["optimised"] - probs["naive"]).max())
    return result


def memory_mib(field: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process in MiB.

    Not ru_maxrss: Linux carries that over from the parent across fork and exec, so a child spawned by a
    process holding the big teacher would report the parent's size.
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def memory_child(pairs_uri: str, teacher: str, output_dir: str, batch_size: int) -> None:
    """Run in a fresh process: label everything, print peak RSS (MiB) as JSON on the last line."""
    before = memory_mib("VmRSS")
    start = time.perf_counter()
    label_pairs(pairs_uri, teacher, output_dir, num_shards=1, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    print(json.dumps({"peak_rss_mib": round(memory_mib("VmHWM"), 1), "rss_after_imports_mib": round(before, 1),
                      "seconds": round(seconds, 1)}))


def small_teacher(directory: str, max_length: int) -> str:
    """A 2-layer, hidden-32 Llama classifier with the real SmolLM2 tokenizer: realistic token counts, fast."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(models.default_teacher_path())
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=3,
                         pad_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    write_info(directory, CheckpointInfo(role=pairs.TEACHER, num_grades=3, max_length=max_length,
                                         base_model="small random Llama, SmolLM2 tokenizer"))
    return directory


def peak_memory(frame: pd.DataFrame, sizes: list[int], teacher: str, workdir: Path, batch_size: int,
                seed: int) -> list[dict]:
    rows = []
    for n in sizes:
        uri = data.write_table(unlabelled_pairs(frame, n, seed), str(workdir / f"pairs-{n}.parquet"))
        cmd = [sys.executable, __file__, "--child-memory", uri, teacher, str(workdir / f"labels-{n}"),
               "--batch-size", str(batch_size)]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        rows.append({"pairs": n, **result, "pairs_per_second": round(n / result["seconds"], 1)})
        log.info("memory %d pairs: %s", n, rows[-1])
    return rows


def markdown(machine_line: str, source: str, tp: dict, mem: list[dict], mem_teacher: str, command: str,
             total_seconds: float) -> str:
    ratio = mem[-1]["peak_rss_mib"] / mem[0]["peak_rss_mib"]
    lines = [
        "## Teacher labelling", "",
        f"Machine: {machine_line}.", "",
        f"Command (total {total_seconds / 60:.1f} min):", "", "```", command, "```", "",
        "### Throughput: labelling path vs naive baseline", "",
        f"Real default teacher (SmolLM2-135M-Instruct converted from the packaged GGUF, random 3-grade head, "
        f"fp32 on CPU) on {tp['pairs']} {source} pairs, batch size {tp['batch_size']}, max length "
        f"{tp['max_length']} tokens; prompts average {tp['tokens_mean']:.1f} tokens (longest {tp['tokens_max']}). "
        "Both runs use the same model and pairs in the same process.", "",
        "| path | what it does | seconds | pairs/s |", "|---|---|---:|---:|",
        f"| optimised (`PairScorer.score`, what `label_shard` uses) | tokenise once, sort by token length, "
        f"pad per batch, `inference_mode` | {tp['optimised']['seconds']} | {tp['optimised']['pairs_per_second']} |",
        f"| naive (`PairScorer.score(naive=True)`) | input order, pad every batch to max length | "
        f"{tp['naive']['seconds']} | {tp['naive']['pairs_per_second']} |", "",
        f"Speed-up: **{tp['speedup']}x** (target: at least 2x). Largest difference between the two paths' "
        f"probabilities: {tp['max_prob_difference']:.1e} (same labels, only the padding differs).", "",
        "### Peak memory: 10x more pairs", "",
        f"`label_pairs` on {mem[0]['pairs']:,} and {mem[-1]['pairs']:,} unlabelled pairs (queries and "
        f"titles of the same source, one Parquet file each, written like the augmentation step writes them), "
        f"each in a fresh subprocess; peak = VmHWM from /proc/self/status (the process's own high-water mark; "
        f"it includes loading the teacher). Teacher: {mem_teacher}.", "",
        "| pairs | RSS after imports (MiB) | peak RSS (MiB) | seconds | pairs/s |", "|---:|---:|---:|---:|---:|",
        *[f"| {r['pairs']:,} | {r['rss_after_imports_mib']} | {r['peak_rss_mib']} | {r['seconds']} | "
          f"{r['pairs_per_second']} |" for r in mem], "",
        f"Peak ratio {mem[-1]['pairs']:,} / {mem[0]['pairs']:,} pairs: **{ratio:.2f}x** (limit 1.5x). Input is "
        "read in chunks of 50,000 rows (the 20k run holds one 20k chunk, the 200k run 50k at a time) and each "
        "chunk is written to the shard before the next is read; pairs are tokenised 2,048 at a time and kept "
        "as int32 ids, so memory is bounded by the chunk size, not the set size.", "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=HOMEDEPOT, help="Home Depot train.csv (synthetic data if absent)")
    parser.add_argument("--pairs", type=int, default=128, help="pairs for the throughput comparison")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-length", type=int, default=128, help="teacher max length (naive pads to it)")
    parser.add_argument("--memory-sizes", type=int, nargs=2, default=[20_000, 200_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--memory-teacher", choices=["small", "default"], default="small",
                        help="teacher for the memory runs: small random Llama (fast) or the real SmolLM2")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="write the Markdown fragment here")
    parser.add_argument("--child-memory", nargs=3, metavar=("PAIRS", "TEACHER", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child_memory:
        memory_child(*args.child_memory, batch_size=args.batch_size)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    start = time.perf_counter()
    machine_line = machine()
    frame, source = source_pairs(args.data, args.seed)
    with tempfile.TemporaryDirectory(prefix="kdrank-bench-") as tmp:
        workdir = Path(tmp)
        teacher = None
        tp = {}
        if not args.skip_throughput or args.memory_teacher == "default":
            teacher = real_teacher(str(workdir / "teacher"), args.max_length)
        if not args.skip_throughput:
            sample = frame.sample(n=min(args.pairs, len(frame)), random_state=args.seed)
            tp = throughput(teacher, sample, args.batch_size)
            print(json.dumps({"throughput": tp}, indent=2))
        if args.memory_teacher == "small":
            mem_teacher_dir = small_teacher(str(workdir / "small-teacher"), args.max_length)
            mem_teacher = ("a small random Llama classifier (hidden size 32, 2 layers) with the real SmolLM2 "
                           "tokenizer, so token counts are the real ones; the real teacher would need hours for "
                           "200k pairs on 2 shared cores, and its weights are a constant in both runs, so the "
                           "ratio measures what grows with the set")
        else:
            mem_teacher_dir, mem_teacher = teacher, "the real SmolLM2-135M teacher"
        mem = peak_memory(frame, list(args.memory_sizes), mem_teacher_dir, workdir, 64, args.seed)
        print(json.dumps({"memory": mem}, indent=2))
    total = time.perf_counter() - start
    if args.output and tp:
        env = " ".join(f"{k}={os.environ[k]}" for k in ("OMP_WAIT_POLICY", "HF_HUB_OFFLINE") if k in os.environ)
        command = f"{env} PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_labelling.py " + " ".join(
            argv if argv is not None else sys.argv[1:])
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(markdown(machine_line, source, tp, mem, mem_teacher, command, total))
        log.info("wrote %s", args.output)


if __name__ == "__main__":
    main()
