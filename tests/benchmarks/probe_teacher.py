"""Teacher probe: how a teacher recipe's ranking quality grows epoch by epoch, on held-out queries.

With a random classification head, the reduced profile's teacher (1 epoch of 1,374 pairs, 86 steps)
ranked near chance. This probe asks what a recipe needs to learn there. It trains the teacher on the
reduced training pairs with `components.teacher.train_teacher` itself and, after every epoch,
scores a probe set: validation queries of the *full* split that the reduced subset never uses, so
the reduced test queries stay untouched. It also scores reference models on the same probe set
(BM25, the zero-shot bi-encoder, and any checkpoints given with --checkpoint).

The three probes of docs/results/reduced-probes.md (each about 30 minutes on 2 CPU cores; results in
docs/results/probes/):

    PYTHONPATH=. python tests/benchmarks/probe_teacher.py --epochs 4 --output runs/probe/teacher-e4.json \
        --checkpoint teacher-soft-1ep=runs/results-reduced/models/teacher-soft \
        --checkpoint student-human=runs/results-reduced/models/student-human
    PYTHONPATH=. python tests/benchmarks/probe_teacher.py --epochs 3 --learning-rate 5e-5 \
        --verbaliser Low,Medium,High --eval-initial --no-baselines --output runs/probe/teacher-verbaliser-e3.json
    PYTHONPATH=. python tests/benchmarks/probe_teacher.py --epochs 3 --learning-rate 5e-5 --no-baselines \
        --checkpoint-dir runs/probe/teacher-random-5e-5 --output runs/probe/teacher-random-5e-5-e3.json

--verbaliser starts the head from the LM's rows of one word per grade (`head_init='verbaliser'` of
`components.teacher`); --lora R trains LoRA adapters of rank R instead of every weight. It needs the
reduced and full data folders of `kdrank experiment run` (the defaults point at runs/).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import evaluate, models, pairs, schema
from components.batching import TokenTable
from components.runtime import autocast, cpu_model, pick_device
from components.scoring import PairScorer, load_classifier
from components.teacher import TeacherConfig, init_head_from_verbaliser, train_teacher

log = logging.getLogger("probe_teacher")


def probe_set(full_val: str, reduced_dir: str, n_queries: int, seed: int) -> pd.DataFrame:
    """`n_queries` validation queries of the full split that the reduced subset never uses."""
    frame = pd.read_parquet(full_val)
    used = set()
    for part in ("train", "val", "test"):
        used |= set(pd.read_parquet(Path(reduced_dir, f"{part}.parquet"))[schema.QUERY_ID])
    free = np.array(sorted(set(frame[schema.QUERY_ID]) - used))
    if len(free) < n_queries:
        raise ValueError(f"{full_val} has only {len(free)} validation queries outside {reduced_dir}")
    keep = set(np.random.default_rng(seed).choice(free, n_queries, replace=False))
    return frame[frame[schema.QUERY_ID].isin(keep)].reset_index(drop=True)


def expected_grades(model, table: TokenTable, device: torch.device, batch_size: int) -> np.ndarray:
    model.eval()
    order = np.argsort(table.lengths, kind="stable")
    out = np.empty(len(table), dtype=np.float64)
    with torch.inference_mode(), autocast(device):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            probs = model(**table.batch(idx, device)).logits.float().softmax(-1)
            out[idx] = (probs @ torch.arange(probs.shape[-1], dtype=torch.float32, device=device)).cpu().numpy()
    return out


def metrics_of(frame: pd.DataFrame, scores: np.ndarray) -> dict:
    scored = frame.assign(score=scores)
    m = evaluate.ranking_metrics(scored, "score")
    ci = evaluate.query_bootstrap(scored, "score", samples=500)
    return {"ndcg@5": round(m["ndcg@5"], 4), "pairwise_accuracy": round(m["pairwise_accuracy"], 4),
            "spearman": round(m["spearman"], 4), "pairwise_ci": ci.get("pairwise_accuracy")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reduced", default="runs/results-reduced/data", help="reduced profile's data folder")
    ap.add_argument("--full-val", default="runs/results-full/data/val.parquet")
    ap.add_argument("--probe-queries", type=int, default=160)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--learning-rate", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=96)
    ap.add_argument("--warmup-ratio", type=float, default=0.1)
    ap.add_argument("--hard", action="store_true", help="one-hot arg-max targets instead of soft")
    ap.add_argument("--lora", type=int, default=0, help="LoRA rank (0: train every weight)")
    ap.add_argument("--verbaliser", default="",
                    help="comma-separated words, one per grade (e.g. 'Not,Somewhat,Very'): start the "
                         "classification head from the LM's output rows of their first tokens")
    ap.add_argument("--eval-initial", action="store_true", help="score the probe set before training too")
    ap.add_argument("--seed", type=int, default=13)
    ap.add_argument("--max-train-pairs", type=int, default=None, help="train on a sample (dry runs)")
    ap.add_argument("--checkpoint-dir", default="runs/probe/teacher",
                    help="where the trained teacher is saved (train_teacher writes a checkpoint)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="NAME=DIR",
                    help="a kdrank checkpoint to score on the probe set too")
    ap.add_argument("--no-baselines", action="store_true")
    ap.add_argument("--output", required=True)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(max(1, os.cpu_count() or 1))

    probe = probe_set(args.full_val, args.reduced, args.probe_queries, seed=0)
    train = pd.read_parquet(Path(args.reduced, "train.parquet"))
    log.info("probe: %d pairs over %d queries; train: %d pairs", len(probe), probe[schema.QUERY_ID].nunique(),
             len(train))
    if args.max_train_pairs:  # train_teacher samples this many
        train = train.iloc[:min(len(train), args.max_train_pairs)]
    result = {"settings": vars(args), "probe_pairs": len(probe), "train_pairs": len(train),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores",
              "references": {}, "epochs": []}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)

    def save():
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(evaluate.json_safe(result), indent=2))
        tmp.replace(out)

    if not args.no_baselines:
        for kind in ("bm25", "biencoder"):
            result["references"][kind] = metrics_of(probe, evaluate.baseline_scores(probe, kind))
    for spec in args.checkpoint:
        name, _, path = spec.partition("=")
        scorer = PairScorer(path)
        raw = scorer.score(probe[schema.QUERY].tolist(), probe[schema.PRODUCT_TEXT].tolist(), batch_size=64,
                           desc=f"scoring {name}").score
        result["references"][name] = metrics_of(probe, raw)
        log.info("%s on the probe set: %s", name, result["references"][name])
    save()

    config = TeacherConfig(epochs=args.epochs, learning_rate=args.learning_rate, batch_size=args.batch_size,
                           max_length=args.max_length, warmup_ratio=args.warmup_ratio, soft_targets=not args.hard,
                           lora=bool(args.lora), lora_rank=args.lora or 16, seed=args.seed,
                           max_train_pairs=args.max_train_pairs,
                           **({"head_init": "verbaliser", "verbaliser": tuple(args.verbaliser.split(","))}
                              if args.verbaliser else {}))
    clock = {"start": time.perf_counter(), "scoring": 0.0}
    probe_table = None

    def score_probe(epoch, model, tokenizer, device) -> None:
        nonlocal probe_table
        started = time.perf_counter()
        if probe_table is None:
            probe_table = TokenTable.encode(tokenizer, probe[schema.QUERY].tolist(),
                                            probe[schema.PRODUCT_TEXT].tolist(), role=pairs.TEACHER,
                                            max_length=args.max_length)
        row = {"epoch": epoch, "steps": epoch * math.ceil(result["train_pairs"] / args.batch_size),
               "train_seconds": round(started - clock["start"] - clock["scoring"], 1),
               **metrics_of(probe, expected_grades(model, probe_table, device, 64))}
        result["epochs"].append(row)
        log.info("epoch %d: %s", epoch, row)
        save()
        clock["scoring"] += time.perf_counter() - started

    if args.eval_initial:  # the untrained recipe: the same head initialisation, no steps
        base = models.resolve_model(None, pairs.TEACHER)
        tokenizer, model = load_classifier(base, role=pairs.TEACHER, num_labels=3)
        if args.verbaliser:
            init_head_from_verbaliser(model, tokenizer, base, config.verbaliser)
        score_probe(0, model, tokenizer, pick_device())
        result["epochs"][0].pop("train_seconds")
        del model
        clock["start"], clock["scoring"] = time.perf_counter(), 0.0
    summary = train_teacher(str(Path(args.reduced, "train.parquet")), None, args.checkpoint_dir, config,
                            on_epoch_end=score_probe)
    result["train_loss_per_epoch"] = summary["train_loss_per_epoch"]
    save()
    print(json.dumps(evaluate.json_safe(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
