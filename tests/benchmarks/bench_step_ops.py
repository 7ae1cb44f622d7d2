"""How many device operations one training step of the teacher and of the student issues.

On the lent GPU the teacher's training steps kept the GPU busy about a fifth of the time (docs/results.md):
the host, launching kernels one by one, set the rate. This counts what it launches. It runs one
training step of each model (the packaged weights, a batch of 8 pairs of 64 tokens, the real losses)
under the PyTorch profiler and counts the leaf aten operations that run a kernel on a GPU (views,
allocations and host reads are left out), by phase: forward (fp32, and under bf16 autocast as
training on a GPU runs it), backward, gradient clipping, optimiser. The counts do not depend on the
batch size. Clipping and AdamW are counted per parameter here on the CPU; on a GPU they run as a few
multi-tensor kernels (foreach norm, fused AdamW), so there only forward and backward count.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_step_ops.py --output docs/bench/step-ops.md
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import machine, save_report  # noqa: E402

from components import losses, models, pairs  # noqa: E402
from components.scoring import load_classifier  # noqa: E402

# Leaf ops that launch no kernel on a GPU: views, allocations, metadata, and host reads (counted apart).
NO_KERNEL = {"aten::as_strided", "aten::view", "aten::empty", "aten::empty_strided", "aten::empty_like",
             "aten::detach", "aten::resolve_conj", "aten::resolve_neg", "aten::t", "aten::transpose",
             "aten::reshape", "aten::_reshape_alias", "aten::_unsafe_view", "aten::expand", "aten::unsqueeze",
             "aten::squeeze", "aten::slice", "aten::select", "aten::permute", "aten::alias", "aten::split",
             "aten::chunk", "aten::narrow", "aten::unflatten", "aten::lift_fresh", "aten::result_type",
             "aten::to", "aten::_local_scalar_dense"}
PHASES = ("forward", "backward", "clip", "optimiser")
BATCH = 8


def count_step(role: str, amp: bool) -> dict:
    base = models.default_teacher_path() if role == pairs.TEACHER else models.default_student_path()
    tokenizer, model = load_classifier(base, role=role, num_labels=3 if role == pairs.TEACHER else 1)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    words = "18 volt cordless drill kit with two batteries charger and a bag for the tools " * 4
    enc = pairs.encode_pairs(tokenizer, ["cordless drill"] * BATCH, [words] * BATCH, role=role, max_length=64,
                             padding="max_length")

    def step():
        with record_function("forward"):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits = model(**enc).logits
            logits = logits.float()
            if role == pairs.TEACHER:
                loss = losses.soft_target_cross_entropy(logits, torch.full((BATCH, 3), 1 / 3))
            else:  # margin MSE: the first half of the batch against the second
                score = logits.squeeze(-1)
                half = torch.zeros(BATCH // 2)
                loss = losses.margin_mse_loss(score[: BATCH // 2], score[BATCH // 2:], half, half)
        with record_function("backward"):
            loss.backward()
        with record_function("clip"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        with record_function("optimiser"):
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    step()  # the first step allocates the optimiser state
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    spans = {e.name: (e.time_range.start, e.time_range.end) for e in prof.events() if e.name in PHASES}
    kernels, host_reads = collections.Counter(), collections.Counter()
    for e in prof.events():
        if not e.name.startswith("aten::") or any(c.name.startswith("aten::") for c in e.cpu_children):
            continue
        phase = next((p for p, (a, b) in spans.items() if a <= e.time_range.start <= b), "other")
        if e.name == "aten::_local_scalar_dense":
            host_reads[phase] += 1
        elif e.name not in NO_KERNEL:
            kernels[phase] += 1
    return {"kernels": dict(kernels), "host_reads": dict(host_reads),
            "parameters": sum(1 for _ in model.parameters()), "layers": model.config.num_hidden_layers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="docs/bench/step-ops.md")
    args = parser.parse_args()
    torch.set_num_threads(2)
    lines = ["## Device operations per training step", "",
             f"`tests/benchmarks/bench_step_ops.py` on {machine()}: leaf aten operations that launch a kernel on a GPU",
             "(views, allocations and host reads left out), counted with the PyTorch profiler over one training step.",
             "Clipping and AdamW run per parameter on the CPU but as a few multi-tensor kernels on a GPU. A GPU's",
             "own count may differ somewhat (its attention kernels and autocast rules are not the CPU's); the",
             "count does not depend on the batch size. Batch of 8 pairs of 64 tokens, packaged weights, real",
             "losses.", "",
             "| model | layers | parameters | forward + backward, fp32 | forward, bf16 autocast | "
             "backward, bf16 autocast | clip + AdamW on the CPU | host reads in forward and backward |",
             "|---|---|---|---|---|---|---|---|"]
    for role, name in ((pairs.TEACHER, "teacher (SmolLM2-135M)"), (pairs.STUDENT, "student (MiniLM-L6)")):
        fp32, bf16 = count_step(role, amp=False), count_step(role, amp=True)
        k, reads = bf16["kernels"], bf16["host_reads"]
        plain = fp32["kernels"].get("forward", 0) + fp32["kernels"].get("backward", 0)
        lines.append(f"| {name} | {bf16['layers']} | {bf16['parameters']} | {plain:,} | "
                     f"{k.get('forward', 0):,} | {k.get('backward', 0):,} | "
                     f"{k.get('clip', 0) + k.get('optimiser', 0):,} | "
                     f"{reads.get('forward', 0) + reads.get('backward', 0)} |")
    save_report(args.output, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
