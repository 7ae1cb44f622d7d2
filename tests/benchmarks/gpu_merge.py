"""Merge what a GPU session brought back into a runs folder here, so `kdrank experiment report` sees it.

`gpu_run.sh` returns `experiment.tgz` (the GPU runs folder's results.jsonl, eval/RUN/ metrics and
per-pair test scores, models/RUN/kdrank.json) and `pipeline.tgz` (the `kdrank run` output, with the
evaluation report). This adds each new run of a bundle to `--runs`: its row to results.jsonl, its
eval/RUN/ folder, and its training record as eval/RUN/checkpoint.json (checkpoints stay on the GPU
machine, so no models/RUN folder is made: `kdrank experiment rescore` would take it for a model). The
pipeline's distilled student becomes the row `pipeline-student` (or `--pipeline-name`); when the run
overrode the teacher's settings, its teacher becomes the row `pipeline-teacher` beside it.

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
from pipelines.runs_folder import append_result, read_results

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


def run_overrides(run_json: dict) -> dict:
    """{step: settings} that a `kdrank run --set ...` changed, from its run.json (older ones record none)."""
    arguments = run_json.get("arguments", {})
    return {key.removesuffix("_settings"): value for key, value in arguments.items()
            if key.endswith("_settings") and value}


def merge_pipeline(root: Path, runs: Path, wanted: set, name: str, hardware: str | None) -> list[str]:
    """The pipeline run's distilled student, as one row with its evaluation and training record.

    A run with the profile's teacher settings was taught by the plan's `teacher-soft`, so its row names
    those labels. A run whose teacher settings were overridden (`--set teacher.X=...`) was not: its own
    teacher becomes a row too (NAME with 'student' read as 'teacher', else NAME-teacher), and the
    student's labels name that row.
    """
    have = {row["run"] for row in read_results(runs)}
    if name in have:
        print(f"{name}: already in {runs}; left as it is")
        return []
    steps = sorted(root.glob("pipeline/pipeline-root/*/"))
    if not steps:
        raise MergeError(f"{root}: no pipeline-root/RUN folder in the bundle")
    run_json = json.loads(_text(root / "pipeline" / "run.json") or "{}")

    def step(artifact: str, folder: str) -> Path:
        """The step folder that made `artifact`: a step served from KFP's cache keeps the folder of the
        run that made it (run.json says which); without run.json, the latest run's."""
        parts = Path(run_json.get("artifacts", {}).get(artifact) or "").parts
        if "pipeline-root" in parts:
            return root.joinpath("pipeline", *parts[parts.index("pipeline-root"):-1])
        return steps[-1] / folder
    overrides = run_overrides(run_json)
    teacher_row = (name.replace("student", "teacher") if "student" in name else f"{name}-teacher") \
        if overrides.get("teacher") else None
    if teacher_row in have:
        raise MergeError(f"{teacher_row} is in {runs} already, but {name} is not: merge with another "
                         "--pipeline-name")
    reports = {name: step("report", "evaluate") / "report" / "student"}
    if teacher_row:
        reports[teacher_row] = step("report", "evaluate") / "report" / "teacher"
    for run, report in reports.items():  # both checked before anything is written
        if not (report / "metrics.json").is_file():
            raise MergeError(f"{run}: the pipeline did not reach its evaluation (no {report.relative_to(root)}); "
                             "nothing to merge")
        check_scores(report / "scores.parquet", wanted, run)
    took = _text(root / "pipeline-time.txt").strip()
    profile = match.group(1) if (match := re.search(r"--profile ([\w-]+)", took)) else "full"
    hardware = bundle_hardware(root, hardware)
    sets = "".join(f" --set {step}.{key}={value}" for step, settings in overrides.items()
                   for key, value in settings.items())
    command = (f"bash tests/benchmarks/gpu_run.sh pipeline (kdrank run --profile {profile} --data "
               f".gpu/a/data/train.csv --format homedepot --output /tmp/kdrank-gpu/pipeline{sets})")
    common = {"seed": 13, "profile": profile, "hardware": hardware, "command": command}
    settings = {"pipeline": run_json.get("pipeline", ""), "pipeline_time": took, "overrides": overrides}
    rows = []
    if teacher_row:
        output = json.loads((step("teacher", "train-teacher") / "executor_output.json").read_text())
        meta = output["artifacts"]["teacher"]["artifacts"][0]["metadata"]
        rows.append((teacher_row, meta, {
            "run": teacher_row, "kind": "teacher", "description": "the pipeline's teacher (kdrank run --set)",
            "labels": "human", "augmented": None, "loss": "soft_ce", **common,
            "model": "SmolLM2-135M-Instruct teacher", "train_pairs": int(meta["train_pairs"]),
            "train_seconds": round(float(meta["train_seconds"]), 1),
            "train_pairs_per_s": round(float(meta["pairs_per_second"]), 1), "settings": settings}))
    output = json.loads((step("student", "train-student") / "executor_output.json").read_text())
    meta = output["artifacts"]["student"]["artifacts"][0]["metadata"]
    augment = json.loads((step("pairs", "augment-pairs") / "executor_output.json").read_text())
    made = augment["artifacts"]["pairs"]["artifacts"][0]["metadata"]
    rows.append((name, meta, {
        "run": name, "kind": "student", "description": "the pipeline's distilled student (kdrank run)",
        "labels": teacher_row or "teacher-soft", "augmented": round(made["new"] / made["labelled"], 2),
        "loss": meta.get("loss", "margin_mse"), **common,
        "model": "MiniLM-L6 cross-encoder", "train_pairs": int(meta["train_rows"]),
        "train_seconds": round(float(meta["seconds"]), 1), "train_pairs_per_s": round(float(meta["pairs_per_s"]), 1),
        "settings": {**settings, **{k: meta[k] for k in ("steps", "epochs_run") if k in meta}}}))
    for run, meta, row in rows:
        target = runs / "eval" / run
        shutil.copytree(reports[run], target)
        (target / "checkpoint.json").write_text(json.dumps(meta, indent=2) + "\n")
        append_result(runs, {**row, "metrics": json.loads((reports[run] / "metrics.json").read_text())})
    return [run for run, _, _ in rows]


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
