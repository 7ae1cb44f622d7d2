"""Teacher vs student throughput at the same batch size and sequence length, on CPU or GPU.

Measures, for the default teacher (SmolLM2-135M) and student (MiniLM-L6):
- scoring (labelling/serving) pairs/s: every batch padded to exactly `--seq-len` tokens, so both models
  see the same tensor shapes and the ratio is the serving-cost ratio that justifies distillation;
- training pairs/s: the teacher's soft-target classification step and the student's margin-MSE step
  (both products of a margin pair in one forward pass; a margin pair counts as two pairs);
- on a GPU, the student's scoring rate as a share of what the card's bf16 dense peak allows for its
  FLOPs per pair (the efficiency ratio), with the FLOP count spelled out; on a CPU, both models' rates as a
  share of what one large matrix multiply reaches there in the same precision.

On a CPU the precision is fp32, or bf16 autocast with KDRANK_CPU_BF16=1 (worth it with bf16 instructions:
Intel AMX, or AMD's avx512_bf16); the section's title says which.

Real Home Depot text is used when ../shared/data/homedepot/train.csv is there (else --data).

    python tests/benchmarks/bench_throughput.py --output docs/bench/throughput-cpu.md
    KDRANK_CPU_BF16=1 python tests/benchmarks/bench_throughput.py --output docs/bench/throughput-cpu-xeon-bf16.md
"""

from __future__ import annotations

import argparse
import time

import torch
from benchlib import HOMEDEPOT, machine, save_report

from components import losses, models, pairs
from components.runtime import adamw, autocast, pick_device, precision
from components.scoring import load_classifier

# Dense bf16 tensor-core peaks (no sparsity), from NVIDIA's data sheets.
BF16_PEAK_TFLOPS = {"H100 SXM": 989.4, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H200": 989.4, "A100": 312.0,
                    "L4": 121.0}


def peak_tflops(name: str) -> float | None:
    for key, value in sorted(BF16_PEAK_TFLOPS.items(), key=lambda kv: -len(kv[0])):
        parts = key.split()
        if all(part in name for part in parts):
            return value
    if "H100" in name:  # an "NVIDIA H100 80GB HBM3" is the SXM part
        return BF16_PEAK_TFLOPS["H100 SXM"]
    return None


def flops_per_pair(model, seq_len: int) -> float:
    """Forward FLOPs of one sequence: 2 x non-embedding weights x tokens, plus attention's QK^T and AV."""
    cfg = model.config
    embed = sum(p.numel() for n, p in model.named_parameters() if "embed" in n)
    dense = sum(p.numel() for p in model.parameters()) - embed
    attention = 4 * cfg.num_hidden_layers * seq_len * seq_len * cfg.hidden_size
    return 2.0 * dense * seq_len + attention


def sample_pairs(path: str, n: int, seed: int) -> tuple[list[str], list[str]]:
    import pandas as pd

    frame = pd.read_csv(path, encoding="latin-1", usecols=["search_term", "product_title"])
    frame = frame.sample(n=min(n, len(frame)), random_state=seed, replace=len(frame) < n)
    return frame["search_term"].astype(str).tolist(), frame["product_title"].astype(str).tolist()


def fixed_batches(tokenizer, role: str, queries, products, batch: int, seq_len: int, device):
    """Batches padded (and truncated) to exactly seq_len tokens."""
    out = []
    for start in range(0, len(queries), batch):
        enc = pairs.encode_pairs(tokenizer, queries[start:start + batch], products[start:start + batch], role=role,
                                 max_length=seq_len, padding="max_length")
        if len(enc["input_ids"]) == batch:
            out.append(enc.to(device))
    return out


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_scoring(model, batches, device, seconds: float) -> tuple[float, int]:
    model.eval()
    done, start = 0, None
    with torch.inference_mode(), autocast(device):
        for i in range(10**9):
            if i == 2:  # two warm-up batches
                sync(device)
                start, done = time.perf_counter(), 0
            batch = batches[i % len(batches)]
            model(**batch).logits.float().cpu()
            done += len(batch["input_ids"])
            if start is not None and time.perf_counter() - start > seconds:
                break
    sync(device)
    return done / (time.perf_counter() - start), done


def time_training(model, batches, device, seconds: float, step) -> tuple[float, int]:
    model.train()
    optimizer = adamw(model.parameters(), device, lr=1e-5)  # fused on CUDA, as in training
    done, start = 0, None
    for i in range(10**9):
        if i == 2:
            sync(device)
            start, done = time.perf_counter(), 0
        done += step(model, batches[i % len(batches)])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if start is not None and time.perf_counter() - start > seconds:
            break
    sync(device)
    return done / (time.perf_counter() - start), done


def teacher_step(device, num_grades: int):
    def step(model, batch) -> int:
        n = len(batch["input_ids"])
        targets = torch.softmax(torch.randn(n, num_grades, device=device), dim=-1)
        with autocast(device):
            logits = model(**batch).logits
        losses.soft_target_cross_entropy(logits.float(), targets).backward()
        return n
    return step


def student_step(device):
    def step(model, batch) -> int:  # rows 2i and 2i+1 form a margin pair: one forward pass over both
        n = len(batch["input_ids"])
        with autocast(device):
            scores = model(**batch).logits.float().view(-1)
        zeros = torch.zeros(n // 2, device=device)
        losses.margin_mse_loss(scores[0::2], scores[1::2], zeros, zeros).backward()
        return n
    return step


def _gflops(flops_per_s: float) -> str:
    """GFLOP/s to print: whole numbers, but two significant digits below 10 (an emulated bf16 multiply on a
    CPU without bf16 instructions reaches a fraction of one)."""
    value = flops_per_s / 1e9
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def matmul_ceiling(device, seconds: float, n: int = 2048) -> float:
    """FLOP/s of one large square matrix multiply under the same autocast: what this machine's matrix units
    give when nothing else is in the way, the CPU's stand-in for a data-sheet peak."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    done, start = 0, None
    with torch.inference_mode(), autocast(device):
        for i in range(10**9):
            if i == 2:
                sync(device)
                start, done = time.perf_counter(), 0
            (a @ b).sum().item()
            done += 1
            if start is not None and time.perf_counter() - start > seconds:
                break
    return 2.0 * n**3 * done / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=HOMEDEPOT)
    parser.add_argument("--device", help="cpu or cuda (default: GPU when present)")
    parser.add_argument("--batch", type=int, default=None, help="scoring batch (default: 512 GPU, 64 CPU)")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch (default: 64 GPU, 16 CPU)")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per pair for both models")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--teacher-model", help="teacher directory (default: packaged SmolLM2-135M)")
    parser.add_argument("--student-model", help="student directory (default: packaged MiniLM-L6)")
    parser.add_argument("--output", help="write the Markdown section here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (512 if gpu else 64)
    train_batch = args.train_batch or (64 if gpu else 16)
    seconds = args.seconds or (10.0 if gpu else 25.0)
    queries, products = sample_pairs(args.data, batch * 8, seed=13)
    header = machine()

    rows, details = [], {}
    for role, path in ((pairs.TEACHER, args.teacher_model), (pairs.STUDENT, args.student_model)):
        base = models.resolve_model(path, role)
        num_labels = 3 if role == pairs.TEACHER else 1
        tokenizer, model = load_classifier(base, role=role, num_labels=num_labels)
        model.to(device)
        score_batches = fixed_batches(tokenizer, role, queries, products, batch, args.seq_len, device)
        scoring, _ = time_scoring(model, score_batches, device, seconds)
        train_batches = fixed_batches(tokenizer, role, queries, products, train_batch, args.seq_len, device)
        step = teacher_step(device, num_labels) if role == pairs.TEACHER else student_step(device)
        training, _ = time_training(model, train_batches, device, seconds, step)
        params = sum(p.numel() for p in model.parameters())
        details[role] = {"flops": flops_per_pair(model, args.seq_len), "scoring": scoring}
        rows.append(f"| {role} ({models.TEACHER_NAME if role == pairs.TEACHER else 'MiniLM-L6'}) | "
                    f"{params / 1e6:.1f} M | {details[role]['flops'] / 1e9:.2f} | {scoring:,.1f} | {training:,.1f} |")
        print(rows[-1], flush=True)
        del model

    speedup = details[pairs.STUDENT]["scoring"] / details[pairs.TEACHER]["scoring"]
    mode = "fp32" if precision(device) == "fp32" else "bf16 autocast"
    achieved = {role: details[role]["scoring"] * details[role]["flops"] for role in details}
    lines = [
        f"## Teacher vs student throughput ({'GPU' if gpu else 'CPU'}, {mode})", "",
        f"Machine: {header}.", "",
        f"Both models see the same shapes: scoring batches of {batch} and training batches of {train_batch} pairs, "
        f"every pair padded to exactly {args.seq_len} tokens, {mode}; {seconds:.0f} s timed per figure after "
        "two warm-up batches. Training: the teacher's soft-target step; the student's margin-MSE step with both "
        "products of a margin pair in one forward pass (each margin pair counts as two pairs).", "",
        "| model | parameters | GFLOPs per pair (forward) | scoring pairs/s | training pairs/s |",
        "|---|---|---|---|---|", *rows, "",
        f"Student scoring is **{speedup:.1f}x** the teacher's at the same batch size and sequence length.",
    ]
    if gpu:
        name = torch.cuda.get_device_name()
        peak = peak_tflops(name)
        if peak:
            lines += ["", f"Efficiency: the student's scoring runs at {achieved[pairs.STUDENT] / 1e12:.1f} TFLOP/s, "
                      f"{100 * achieved[pairs.STUDENT] / (peak * 1e12):.1f}% of the {name} bf16 dense peak "
                      f"({peak:.0f} TFLOP/s)."]
    else:
        ceiling = matmul_ceiling(device, min(seconds, 10.0))
        lines += ["", f"Scoring runs at {_gflops(achieved[pairs.TEACHER])} GFLOP/s (teacher) and "
                  f"{_gflops(achieved[pairs.STUDENT])} GFLOP/s (student), counting the forward FLOPs above: "
                  f"{100 * achieved[pairs.TEACHER] / ceiling:.0f}% and {100 * achieved[pairs.STUDENT] / ceiling:.0f}% "
                  f"of the {_gflops(ceiling)} GFLOP/s that one 2048 x 2048 x 2048 matrix multiply reaches here "
                  f"in the same precision (a CPU has no data-sheet peak to hold it against)."]
    lines.append("")
    text = "\n".join(lines)
    if args.output:
        save_report(args.output, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
