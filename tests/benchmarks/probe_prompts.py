"""Prompt probe: does any prompt make the untrained teacher rank relevance, before fine-tuning?

Step 6 of the results plan asks for "a better prompt". A prompt can only help a fine-tuned classifier
through what the LM already reads from it, and the verbaliser head (`head_init='verbaliser'` of
`components.teacher`) reads exactly that: its logits are the LM's next-token logits of one word per
grade. So this probe scores validation pairs of the full split with the verbaliser head and no
training, once per prompt, and reports the ranking each one gives. A prompt that ranks above chance
here is a better start for fine-tuning; if none does, the prompt's effect can only be measured by
fine-tuning with it at full size (on a GPU).

Prompts: `plain` is kdrank's teacher prompt (`components.pairs.teacher_text`); `answer` adds the answer
words and an "Answer:" cue; `relevance` asks for one of the words directly; `chat` wraps the question in
the model's chat template (the instruction-tuned model's own format) and reads the words as the
assistant's first token, so without a leading space. Validation queries only: the test split stays
untouched. About 3-5 minutes per prompt for 150 queries on 2 CPU cores:

    PYTHONPATH=. python tests/benchmarks/probe_prompts.py --queries 150 \
        --output docs/results/probes/prompts-zero-shot.json
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import evaluate, models, pairs, schema
from components.runtime import autocast, cpu_model, pick_device
from components.scoring import load_classifier
from components.teacher import init_head_from_verbaliser

log = logging.getLogger("probe_prompts")
WORDS = ("Low", "Medium", "High")
QUESTION = "How relevant is the product to the query?"


def prompts(tokenizer) -> dict[str, tuple]:
    """name -> (text of a query and a product, whether the grade words follow a space)."""
    chat_turn = f"Search query: {{q}}\nProduct: {{p}}\n{QUESTION} Answer with one word: Low, Medium or High."

    def chat(q: str, p: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": chat_turn.format(q=q, p=p)}],
                                             tokenize=False, add_generation_prompt=True)

    return {
        "plain": (pairs.teacher_text, True),
        "answer": (lambda q, p: pairs.teacher_text(q, p) + " Answer with Low, Medium or High.\nAnswer:", True),
        "relevance": (lambda q, p: f"Search query: {q}\nProduct: {p}\nRelevance of the product to the query "
                                   "(Low, Medium or High):", True),
        "chat": (chat, False),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--val", default="runs/results-full/data/val.parquet",
                        help="validation pairs of the full split (written by `kdrank experiment run --profile full`)")
    parser.add_argument("--queries", type=int, default=150, help="validation queries to score")
    parser.add_argument("--prompts", default="plain,answer,relevance,chat")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=13)
    parser.add_argument("--output", required=True, help="JSON file for the results")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    frame = pd.read_parquet(args.val)
    ids = np.array(sorted(frame[schema.QUERY_ID].unique()))
    keep = set(np.random.default_rng(args.seed).choice(ids, min(args.queries, len(ids)), replace=False))
    frame = frame[frame[schema.QUERY_ID].isin(keep)].reset_index(drop=True)
    device = pick_device()
    base = models.default_teacher_path()
    tokenizer, model = load_classifier(base, role=pairs.TEACHER, num_labels=len(WORDS))
    model.to(device).eval()
    variants = prompts(tokenizer)
    unknown = [n for n in args.prompts.split(",") if n not in variants]
    if unknown:
        raise ValueError(f"unknown prompt(s) {unknown}; choose from {sorted(variants)}")

    results = {"val": args.val, "queries": int(frame[schema.QUERY_ID].nunique()), "pairs": len(frame),
               "model": str(base), "hardware": f"{cpu_model()} ({device})", "prompts": {}}
    log.info("%d validation pairs over %d queries", len(frame), results["queries"])
    for name in args.prompts.split(","):
        make, spaced = variants[name]
        tokens = init_head_from_verbaliser(model, tokenizer, base, WORDS, leading_space=spaced)
        texts = [make(pairs.clean_text(q), pairs.clean_text(p))
                 for q, p in zip(frame[schema.QUERY], frame[schema.PRODUCT_TEXT], strict=True)]
        start, logits = time.perf_counter(), []
        with torch.inference_mode(), autocast(device):
            for i in range(0, len(texts), args.batch_size):
                batch = tokenizer(texts[i:i + args.batch_size], padding=True, return_tensors="pt").to(device)
                logits.append(model(**batch).logits.float().cpu())
        probs = torch.cat(logits).softmax(-1).numpy()
        scored = frame.assign(score=probs @ np.arange(len(WORDS)))
        metrics = evaluate.ranking_metrics(scored, "score")
        interval = evaluate.query_bootstrap(scored, "score")
        results["prompts"][name] = {
            "example": texts[0], "grade_tokens": tokens, "pairwise_accuracy": metrics["pairwise_accuracy"],
            "pairwise_ci95": interval["pairwise_accuracy"], "ndcg@5": metrics["ndcg@5"],
            "mean_probs": probs.mean(axis=0).round(4).tolist(), "seconds": round(time.perf_counter() - start, 1)}
        log.info("%s: pairwise %.3f (%s), NDCG@5 %.3f, mean probabilities %s", name, metrics["pairwise_accuracy"],
                 interval["pairwise_accuracy"], metrics["ndcg@5"], results["prompts"][name]["mean_probs"])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(evaluate.json_safe(results), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
