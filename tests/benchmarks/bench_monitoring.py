r"""Monitoring-job benchmark: wall time for windows of 10k and 100k logged pairs, teacher labelling apart.

Windows are request logs (JSONL, as the rerank client writes them) of Home Depot queries with 10
candidate products each (read in place, never copied into the repository; synthetic pairs when absent),
with random student scores: the time does not depend on their values. Three measurements:
1. default job (`--sample-size`, 2,000 pairs by query): the real `monitor()` end to end with a tiny
   2-layer teacher, whose labelling time is reported as its own stage and left out of the job figure;
2. full window (every pair analysed): the same job on windows that already carry (placeholder) teacher
   labels, so it skips labelling: every other stage at 10k and 100k rows;
3. the labelling share: throughput of the real default teacher (SmolLM2-135M-Instruct, random 3-grade
   head: speed is what counts) on `--smollm-pairs` window pairs, extrapolated to the sample and windows.
Also the one-off cost of importing Evidently in a fresh process (paid once per job process).

    OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python \
        tests/benchmarks/bench_monitoring.py --output docs/bench/monitoring.md
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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "benchmarks"), str(ROOT / "tests" / "monitoring")]

from bench_labelling import real_teacher  # noqa: E402
from benchlib import HOMEDEPOT, machine  # noqa: E402
from kdrank_testing import save_tiny_student, save_tiny_teacher  # noqa: E402

from components import data, schema  # noqa: E402
from components.scoring import PairScorer  # noqa: E402
from monitoring.job import monitor  # noqa: E402
from monitoring.reference import build_reference_set  # noqa: E402

log = logging.getLogger("bench_monitoring")
PER_QUERY = 10  # candidates per logged rerank request


def source_pairs(seed: int) -> tuple[pd.DataFrame, str]:
    if Path(HOMEDEPOT).is_file():
        return data.read_pairs(HOMEDEPOT, "homedepot", on_invalid="drop"), f"Home Depot ({HOMEDEPOT})"
    import monitor_traffic

    return monitor_traffic.make_pairs(3000, 10, seed=seed), "synthetic pairs (Home Depot file absent)"


def window_pairs(source: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    """About n pairs (n // PER_QUERY requests): source queries, PER_QUERY random catalogue products each."""
    rng = np.random.default_rng(seed)
    queries = source[schema.QUERY].drop_duplicates().to_numpy()
    products = source[[schema.PRODUCT_ID, schema.PRODUCT_TEXT]].drop_duplicates(schema.PRODUCT_ID).to_numpy()
    n_queries = n // PER_QUERY
    picked = rng.choice(queries, size=n_queries, replace=n_queries > len(queries))
    if n_queries > len(queries):  # more requests than distinct queries: number them apart
        picked = np.array([f"{q} {i}" for i, q in enumerate(picked)], dtype=object)
    query = np.repeat(picked, PER_QUERY)
    product = products[rng.integers(0, len(products), len(query))]
    return pd.DataFrame({schema.QUERY: query, schema.PRODUCT_ID: product[:, 0].astype(str),
                         schema.PRODUCT_TEXT: product[:, 1]})


def request_log(frame: pd.DataFrame, seed: int, *, teacher_labels: bool) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    start = datetime(2025, 1, 1, tzinfo=UTC).timestamp()
    request = np.arange(len(frame)) // PER_QUERY
    log_rows = pd.DataFrame({
        "request_id": [f"req-{r}" for r in request],
        "time": [datetime.fromtimestamp(start + r, UTC).isoformat() for r in request],
        "query": frame[schema.QUERY].to_numpy(), "product_text": frame[schema.PRODUCT_TEXT].to_numpy(),
        "product_id": frame[schema.PRODUCT_ID].to_numpy(), "score": rng.normal(0.0, 1.0, len(frame)),
        "model_name": "kdrank_student", "model_version": "1",
    })
    if teacher_labels:  # placeholders: the job then skips labelling (as when re-checking a saved sample)
        probs = rng.dirichlet(np.ones(3), len(frame))
        log_rows[schema.TEACHER_PROBS] = list(probs)
        log_rows[schema.TEACHER_SCORE] = probs @ np.arange(3)
    return log_rows


def evidently_import_seconds() -> float:
    code = "import time; t = time.perf_counter(); import evidently.metrics; print(time.perf_counter() - t)"
    return float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout.strip())


def run_job(window: str, reference: str, output: str, teacher: str, **sizes) -> dict:
    start = time.perf_counter()
    result = monitor(window, reference, output, teacher_dir=teacher, **sizes)
    total = time.perf_counter() - start
    stages = result.summary["timings_s"]
    labelling = stages.get("teacher_labelling", 0.0)
    return {"total_s": round(total, 2), "labelling_s": labelling,
            "job_without_labelling_s": round(total - labelling, 2), "sample_rows": result.summary["sample"]["rows"],
            "stages_s": stages, "status_counts": result.summary["status_counts"]}


def smollm_throughput(frame: pd.DataFrame, work: Path, batch_size: int) -> dict:
    """Load time and steady-state pairs/s of the real default teacher, scored as the labelling step does."""
    teacher = real_teacher(str(work / "smollm-teacher"), max_length=128)
    start = time.perf_counter()
    scorer = PairScorer(teacher, device="cpu")
    load = time.perf_counter() - start
    queries, products = frame[schema.QUERY].tolist(), frame[schema.PRODUCT_TEXT].tolist()
    scorer.score(queries[:batch_size], products[:batch_size], batch_size=batch_size, progress=False)  # warm-up
    start = time.perf_counter()
    scorer.score(queries, products, batch_size=batch_size, progress=False)
    seconds = time.perf_counter() - start
    scorer.close()
    return {"pairs": len(frame), "batch_size": batch_size, "load_s": round(load, 1), "seconds": round(seconds, 2),
            "pairs_per_second": round(len(frame) / seconds, 2)}


def labelling_seconds(smollm: dict, pairs: int) -> float:
    return smollm["load_s"] + pairs / smollm["pairs_per_second"]


def markdown(result: dict, command: str) -> str:
    rows = []
    for size, runs in result["windows"].items():
        sample, full = runs["sample"], runs["full"]
        smollm = result["smollm"]
        rows.append(f"| {int(size):,} | {sample['job_without_labelling_s']:.1f} | {sample['labelling_s']:.1f} "
                    f"({sample['sample_rows']:,} pairs) | {labelling_seconds(smollm, sample['sample_rows']):.0f} | "
                    f"{full['job_without_labelling_s']:.1f} | {labelling_seconds(smollm, int(size)) / 60:.0f} |")
    stages = "\n".join(f"| {size:,} {mode} | " + " | ".join(f"{runs[mode]['stages_s'].get(s, 0):.1f}" for s in STAGES)
                       + " |" for size, runs in ((int(k), v) for k, v in result["windows"].items())
                       for mode in ("sample", "full"))
    smollm, first = result["smollm"], next(iter(result["windows"].values()))["sample"]
    default_run = labelling_seconds(smollm, first["sample_rows"]) / 60
    return f"""## Monitoring job (`kdrank monitor`)

Machine: {result['machine']}. Measured {result['date']}.

Windows: JSONL request logs of {result['source']} queries, {PER_QUERY} random catalogue products per query, \
random student scores. Reference set: {result['reference_rows']:,} held-out pairs.

{HEADER}
{chr(10).join(rows)}

- **Default job**: `monitor()` as shipped (`--sample-size {result['sample_size']}`, sampled by query): read and \
validate the whole window, deduplicate, sample, label the sample (a 2-layer test teacher here; its time is \
its own column), build the Evidently report (agreement, prediction, teacher, input and text drift), write \
HTML, JSON and the snapshot. The window size only affects reading and sampling.
- **Full window**: every pair analysed; these windows carry placeholder teacher labels, so the job skips \
labelling (the path a saved `sample.parquet` takes when re-checked).
- **Labelling share**: the real default teacher (SmolLM2-135M-Instruct, random 3-grade head: the speed is \
the same) scored {smollm['pairs']} window pairs at {smollm['pairs_per_second']:.1f} pairs/s (batch \
{smollm['batch_size']}, after a warm-up batch; loading took {smollm['load_s']:.1f} s). Extrapolated = load + \
pairs / rate. So a default run with the real teacher on this CPU takes about {default_run:.0f} min, nearly all \
of it labelling: give the monitoring step a GPU, or lower `--sample-size`, where that matters.
- Importing Evidently costs {result['evidently_import_s']:.1f} s once per process (not in the figures above).

Stage times (s), from `summary.json`'s `timings_s`:

| run | {' | '.join(STAGES)} |
|---|{'---|' * len(STAGES)}
{stages}

Reproduce:

    {command}
"""


HEADER = ("| window (pairs) | default job, without labelling (s) | tiny-teacher labelling (s) "
          "| SmolLM2 labelling of that sample (s, extrapolated) | full window, without labelling (s) "
          "| SmolLM2 labelling of the full window (min, extrapolated) |\n|---|---|---|---|---|---|")
STAGES = ("read", "sample", "student_scoring", "teacher_labelling", "features", "report", "write")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--sample-size", type=int, default=2000)
    parser.add_argument("--reference-pairs", type=int, default=5000)
    parser.add_argument("--smollm-pairs", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", help="Markdown fragment to write (docs/bench/monitoring.md)")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    command = "OMP_WAIT_POLICY=PASSIVE HF_HUB_OFFLINE=1 PYTHONPATH=. .venv/bin/python " \
              "tests/benchmarks/bench_monitoring.py " + " ".join(sys.argv[1:])
    result = {"machine": machine(), "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
              "sample_size": args.sample_size, "evidently_import_s": round(evidently_import_seconds(), 1)}
    import evidently.metrics  # noqa: F401  (warm: the timings below exclude the import)

    source, result["source"] = source_pairs(args.seed)
    with tempfile.TemporaryDirectory(prefix="bench-monitoring-") as tmp:
        work = Path(tmp)
        teacher, student = save_tiny_teacher(work / "teacher"), save_tiny_student(work / "student")
        held_out = source.sample(n=min(args.reference_pairs, len(source)), random_state=args.seed)
        held_out = held_out.assign(student_score=np.random.default_rng(args.seed).normal(0, 1, len(held_out)))
        start = time.perf_counter()
        reference = build_reference_set(held_out, teacher, student, str(work / "reference"))
        result["reference_rows"], result["reference_build_s"] = len(held_out), round(time.perf_counter() - start, 1)
        result["windows"] = {}
        for size in args.sizes:
            pairs = window_pairs(source, size, args.seed + size)
            runs = {}
            for mode in ("sample", "full"):
                path = work / f"window-{size}-{mode}.jsonl"
                request_log(pairs, args.seed, teacher_labels=mode == "full").to_json(path, orient="records",
                                                                                       lines=True)
                sizes = {"sample_size": args.sample_size} if mode == "sample" else \
                    {"sample_size": size, "max_pairs_per_query": size}
                runs[mode] = run_job(str(path), reference, str(work / f"out-{size}-{mode}"), teacher, **sizes)
                log.info("%d pairs, %s: %s", size, mode, runs[mode])
            result["windows"][str(size)] = runs
        result["smollm"] = smollm_throughput(window_pairs(source, args.smollm_pairs, args.seed), work,
                                             args.batch_size)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    if args.output:
        Path(args.output).write_text(markdown(result, command))


if __name__ == "__main__":
    main()
