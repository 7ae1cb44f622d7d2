"""Merge what a GPU session brought back into a runs folder here, so `kdrank experiment report` sees it.

`gpu_run.sh` returns `experiment.tgz` (the GPU runs folder's results.jsonl, eval/RUN/ metrics and
per-pair test scores, models/RUN/kdrank.json) and `pipeline.tgz` (the `kdrank run` output, with the
evaluation report). This adds each new run of a bundle to `--runs`: its row to results.jsonl, its
eval/RUN/ folder, and its training record as eval/RUN/checkpoint.json (checkpoints stay on the GPU
machine, so no models/RUN folder is made: `kdrank experiment rescore` would take it for a model). The
pipeline's distilled student becomes the row `pipeline-student` (or `--pipeline-name`).

A run is merged only when it scored exactly the test pairs of `--runs` (same query and product ids),
so every paired comparison of the report stays valid; a run already in `--runs` is left as it is.

    PYTHONPATH=. python tests/benchmarks/gpu_merge.py --runs runs/results-full OUT/experiment.tgz OUT/pipeline.tgz
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

import pandas as pd

from components import schema
from pipelines.experiments import append_result, read_results

KEY = [schema.QUERY_ID, schema.PRODUCT_ID]


class MergeError(ValueError):
    pass


def test_pairs(runs: Path) -> set[tuple[str, str]]:
    path = runs / "data" / "test.parquet"
    if not path.is_file():
        raise MergeError(f"{path} is missing: --runs must be a runs folder with its data split "
                         "(run its baselines first)")
    frame = pd.read_parquet(path, columns=KEY).astype(str)
    return set(map(tuple, frame.to_numpy()))


def check_scores(scores: Path, wanted: set[tuple[str, str]], name: str) -> None:
    if not scores.is_file():
        raise MergeError(f"{name}: no per-pair scores at {scores}")
    frame = pd.read_parquet(scores, columns=KEY).astype(str)
    got = set(map(tuple, frame.to_numpy()))
    if got != wanted or len(frame) != len(wanted):
        raise MergeError(f"{name}: scored {len(frame)} test pairs ({len(got - wanted)} not in the runs folder's "
                         f"test split, {len(wanted - got)} of its {len(wanted)} missing); not merged")


def merge_experiment(root: Path, runs: Path, wanted: set) -> list[str]:
    """Rows of an unpacked experiment bundle that `runs` lacks, with their eval folders."""
    have = {row["run"] for row in read_results(runs)}
    new = []
    for row in read_results(root):
        if row["run"] in have:
            print(f"{row['run']}: already in {runs}; left as it is")
        else:
            new.append(row)
    for row in new:  # every new run is checked before any is written
        check_scores(root / "eval" / row["run"] / "scores.parquet", wanted, row["run"])
    merged = []
    for row in new:
        name = row["run"]
        target = runs / "eval" / name
        shutil.copytree(root / "eval" / name, target)
        record = root / "models" / name / "kdrank.json"
        if record.is_file():
            shutil.copy(record, target / "checkpoint.json")
        append_result(runs, row)
        merged.append(name)
    return merged


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def bundle_hardware(root: Path, given: str | None) -> str:
    """`given`, else the GPU named in the bundle's gpu.txt (nvidia-smi's name, memory.total lines)."""
    if given:
        return given
    lines = _text(root / "gpu.txt").splitlines()[1:]
    names = [line.split(",")[0].strip() for line in lines if line.strip()]
    if not names or any(not n.startswith("NVIDIA") for n in names):
        raise MergeError(f"the pipeline bundle names no GPU (its gpu.txt: {lines or 'missing'}); "
                         "give the machine with --hardware")
    return f"{len(names)}x {names[0]}"


def merge_pipeline(root: Path, runs: Path, wanted: set, name: str, hardware: str | None) -> list[str]:
    """The pipeline run's distilled student, as one row with its evaluation and training record."""
    if name in {row["run"] for row in read_results(runs)}:
        print(f"{name}: already in {runs}; left as it is")
        return []
    steps = sorted(root.glob("pipeline/pipeline-root/*/"))
    if not steps:
        raise MergeError(f"{root}: no pipeline-root/RUN folder in the bundle")
    step_root = steps[-1]
    report = step_root / "evaluate" / "report" / "student"
    if not (report / "metrics.json").is_file():
        raise MergeError(f"{name}: the pipeline did not reach its evaluation (no {report.relative_to(root)}); "
                         "nothing to merge")
    check_scores(report / "scores.parquet", wanted, name)
    output = json.loads((step_root / "train-student" / "executor_output.json").read_text())
    meta = output["artifacts"]["student"]["artifacts"][0]["metadata"]
    run_json = json.loads(_text(root / "pipeline" / "run.json") or "{}")
    took = _text(root / "pipeline-time.txt").strip()
    profile = match.group(1) if (match := re.search(r"--profile ([\w-]+)", took)) else "full"
    hardware = bundle_hardware(root, hardware)
    augment = json.loads((step_root / "augment-pairs" / "executor_output.json").read_text())
    made = augment["artifacts"]["pairs"]["artifacts"][0]["metadata"]
    metrics = json.loads((report / "metrics.json").read_text())
    target = runs / "eval" / name
    shutil.copytree(report, target)
    (target / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")
    row = {"run": name, "kind": "student", "description": "the pipeline's distilled student (kdrank run)",
           "labels": "teacher-soft", "augmented": round(made["new"] / made["labelled"], 2),
           "loss": meta.get("loss", "margin_mse"), "seed": 13,
           "profile": profile, "hardware": hardware,
           "command": f"bash tests/benchmarks/gpu_run.sh pipeline (kdrank run --profile {profile} --data "
                      ".gpu/a/data/train.csv --format homedepot --output /tmp/kdrank-gpu/pipeline)",
           "model": "MiniLM-L6 cross-encoder", "train_pairs": int(meta["train_rows"]),
           "train_seconds": round(float(meta["seconds"]), 1), "train_pairs_per_s": round(float(meta["pairs_per_s"]), 1),
           "settings": {"pipeline": run_json.get("pipeline", ""), "pipeline_time": took,
                        **{k: meta[k] for k in ("steps", "epochs_run") if k in meta}},
           "metrics": metrics}
    append_result(runs, row)
    return [name]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", required=True, help="runs folder to merge into (e.g. runs/results-full)")
    parser.add_argument("--pipeline-name", default="pipeline-student", help="row name of the pipeline's student")
    parser.add_argument("--hardware", help="the machine the pipeline ran on (default: the GPU its bundle names)")
    parser.add_argument("bundles", nargs="+", help="experiment.tgz and/or pipeline.tgz from gpu_run.sh")
    args = parser.parse_args(argv)
    runs = Path(args.runs)
    try:
        wanted = test_pairs(runs)
    except MergeError as err:
        print(f"gpu_merge: {err}", file=sys.stderr)
        return 2
    for bundle in args.bundles:
        try:
            merged = merge_bundle(bundle, runs, wanted, args.pipeline_name, args.hardware)
        except MergeError as err:
            print(f"gpu_merge: {bundle}: {err}", file=sys.stderr)
            return 2
        print(f"{bundle}: merged {', '.join(merged) or 'nothing new'}")
    return 0


def merge_bundle(bundle: str, runs: Path, wanted: set, pipeline_name: str, hardware: str | None) -> list[str]:
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(bundle) as tar:
        tar.extractall(tmp, filter="data")
        root = Path(tmp)
        if (root / "results.jsonl").is_file():
            return merge_experiment(root, runs, wanted)
        if (root / "pipeline").is_dir():
            return merge_pipeline(root, runs, wanted, pipeline_name, hardware)
    raise MergeError("neither an experiment bundle (results.jsonl) nor a pipeline bundle (pipeline/)")


if __name__ == "__main__":
    raise SystemExit(main())
