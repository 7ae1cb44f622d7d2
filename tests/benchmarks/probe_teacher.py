"""Teacher probe: how a teacher recipe's ranking quality grows epoch by epoch, on held-out queries.

With a random classification head, the reduced profile's teacher (1 epoch of 1,374 pairs, 86 steps)
ranked near chance. This probe asks what a recipe needs to learn there. It trains the teacher on the
reduced training pairs with the same loop pieces as `components.teacher` and, after every epoch,
scores a probe set: validation queries of the *full* split that the reduced subset never uses, so
the reduced test queries stay untouched. It also scores reference models on the same probe set
(BM25, the zero-shot bi-encoder, and any checkpoints given with --checkpoint).

The two probes of docs/results.md (each about 30 minutes on 2 CPU cores; results in docs/results/probes/):

    PYTHONPATH=. python tests/benchmarks/probe_teacher.py --epochs 4 --output runs/probe/teacher-e4.json \
        --checkpoint teacher-soft-1ep=runs/results-reduced/models/teacher-soft \
        --checkpoint student-human=runs/results-reduced/models/student-human
    PYTHONPATH=. python tests/benchmarks/probe_teacher.py --epochs 3 --learning-rate 5e-5 \
        --verbaliser Low,Medium,High --eval-initial --no-baselines --output runs/probe/teacher-verbaliser-e3.json

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
from tqdm.auto import tqdm

from components import evaluate, models, pairs, schema
from components.batching import TokenTable, length_batches, to_device
from components.losses import soft_target_cross_entropy
from components.runtime import adamw, autocast, cpu_model, pick_device, seed_everything
from components.scoring import PairScorer, load_classifier
from components.teacher import init_head_from_verbaliser, targets_of

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

    seed_everything(args.seed)
    device = pick_device()
    base = models.resolve_model(None, pairs.TEACHER)
    tokenizer, model = load_classifier(base, role=pairs.TEACHER, num_labels=3)
    if args.verbaliser:
        result["verbaliser_tokens"] = init_head_from_verbaliser(model, tokenizer, base, args.verbaliser.split(","))
    if args.lora:
        from components.teacher import _with_lora
        model = _with_lora(model, args.lora)
    model.to(device)
    table = TokenTable.encode(tokenizer, train[schema.QUERY].tolist(), train[schema.PRODUCT_TEXT].tolist(),
                              role=pairs.TEACHER, max_length=args.max_length)
    probe_table = TokenTable.encode(tokenizer, probe[schema.QUERY].tolist(), probe[schema.PRODUCT_TEXT].tolist(),
                                    role=pairs.TEACHER, max_length=args.max_length)
    targets = torch.tensor(targets_of(train, not args.hard), dtype=torch.float32)
    rng = np.random.default_rng(args.seed)
    per_epoch = math.ceil(len(train) / args.batch_size)
    total = per_epoch * args.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = adamw(params, device, lr=args.learning_rate, weight_decay=0.01)
    from transformers import get_linear_schedule_with_warmup
    scheduler = get_linear_schedule_with_warmup(optimizer, int(args.warmup_ratio * total), total)
    train_seconds = 0.0
    if args.eval_initial:
        row = {"epoch": 0, "steps": 0, **metrics_of(probe, expected_grades(model, probe_table, device, 64))}
        result["epochs"].append(row)
        log.info("before training: %s", row)
        save()
    for epoch in range(1, args.epochs + 1):
        model.train()
        losses = []
        start = time.perf_counter()
        for idx in tqdm(length_batches(table.lengths, args.batch_size, rng), desc=f"epoch {epoch}", unit="batch"):
            with autocast(device):
                logits = model(**table.batch(idx, device)).logits
            loss = soft_target_cross_entropy(logits.float(), to_device(targets[idx], device))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
        train_seconds += time.perf_counter() - start
        row = {"epoch": epoch, "steps": epoch * per_epoch, "train_loss": round(float(np.mean(losses)), 4),
               "train_seconds": round(train_seconds, 1),
               **metrics_of(probe, expected_grades(model, probe_table, device, 64))}
        result["epochs"].append(row)
        log.info("epoch %d: %s", epoch, row)
        save()
    print(json.dumps(evaluate.json_safe(result), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
