"""The compiled pipeline YAML executed end to end with kfp.local (SubprocessRunner, this environment).

One module-scoped run: it first fails in the student step (a broken student model), then reruns with
a good one; the rerun must reuse every finished step (the labelling shards above all) from the cache.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from kdrank_testing import load_benchmark

from components import schema
from components.checkpoint import read_info
from pipelines.local import PIPELINE_FILE, PROJECT_ROOT, ROOT_DIR, STATE_DIR, SUMMARY_FILE, report, run_local

pytestmark = pytest.mark.slow


def shard_files(root: Path) -> dict[str, float]:
    """Every labelling shard file under the pipeline root, with its modification time."""
    return {str(p): p.stat().st_mtime for p in root.rglob("*.parquet") if "label-shard" in str(p)}


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, tiny_teacher_dir, tiny_student_dir):
    output = tmp_path_factory.mktemp("local-run")
    broken = tmp_path_factory.mktemp("broken-student")
    (broken / "config.json").write_text("{}")  # passes the existence check, fails to load
    settings = {"profile": "test", "teacher_model": tiny_teacher_dir, "num_shards": 2,
                "overrides": {"augment": {"encoder": tiny_student_dir}}, "quiet": True}
    with pytest.raises(RuntimeError, match="train-student"):
        run_local(str(output), student_model=str(broken), **settings)
    before = shard_files(output / ROOT_DIR)
    result = run_local(str(output), student_model=tiny_student_dir, **settings)
    return output, result, before


def test_every_artifact_exists(local_run, tiny_student_dir):
    output, result, _ = local_run
    artifacts = result["artifacts"]
    assert Path(result["pipeline"]) == output / PIPELINE_FILE
    assert {Path(artifacts["data"], name).is_file() for name in ("train.parquet", "test.parquet")} == {True}
    assert read_info(artifacts["teacher"]).role == "teacher"
    assert read_info(artifacts["student"]).role == "student"
    assert Path(artifacts["pairs"], "pairs.parquet").is_file()
    assert len(artifacts["labels"]) == 2
    labelled = pd.concat(pd.read_parquet(p) for shard in artifacts["labels"] for p in Path(shard).rglob("*.parquet"))
    assert set(schema.TEACHER_LABEL_COLUMNS) <= set(labelled.columns)
    assert Path(artifacts["report"], "student", "metrics.json").is_file()
    assert "| student |" in Path(artifacts["table"]).read_text()
    assert json.loads(Path(artifacts["repository"], "manifest.json").read_text())["version"] == 1
    assert Path(artifacts["reference"], "reference.parquet").is_file()
    # stable names a person types next: runs/latest/student, runs/latest/labels/shard-0
    assert (output / "student").resolve() == Path(artifacts["student"]).resolve()
    assert (output / "labels" / "shard-1").resolve() == Path(artifacts["labels"][1]).resolve()
    summary = json.loads((output / SUMMARY_FILE).read_text())
    assert summary["artifacts"] == json.loads(json.dumps(artifacts))
    assert summary["arguments"]["profile"] == "test" and summary["arguments"]["num_shards"] == 2
    assert summary["arguments"]["augment_settings"] == {"encoder": tiny_student_dir}
    assert summary["arguments"]["teacher_settings"] == {}


def test_the_report_says_where_everything_landed(local_run):
    output, result, _ = local_run
    text = report(result)
    for name in ("data", "teacher", "pairs", "labels/shard-0", "labels/shard-1", "student", "repository",
                 "reference"):
        assert f"  {name} " in text, name
    assert str(output) in text and result["table"].strip() in text


def test_metrics_are_finite(local_run):
    _, result, _ = local_run
    for model in ("teacher", "student"):
        for key in ("ndcg@5", "ndcg@10", "pairwise_accuracy", "spearman", "rmse"):
            assert math.isfinite(result["metrics"][model][key]), (model, key)
        assert result["metrics"][model]["n_pairs"] > 0
    assert "| teacher |" in result["table"]


def test_rerun_after_a_failure_reuses_the_finished_shards(local_run):
    output, result, before = local_run
    assert len(before) == 2, "the failed run should have finished both labelling shards"
    assert shard_files(output / ROOT_DIR) == before  # not relabelled, not rewritten
    used = {str(p) for shard in result["artifacts"]["labels"] for p in Path(shard).rglob("*.parquet")}
    assert used == set(before)


def test_a_repeated_run_is_served_from_the_cache(local_run, tiny_teacher_dir, tiny_student_dir):
    output, first, _ = local_run
    again = run_local(str(output), profile="test", teacher_model=tiny_teacher_dir, student_model=tiny_student_dir,
                      num_shards=2, overrides={"augment": {"encoder": tiny_student_dir}}, quiet=True)
    assert again["artifacts"] == first["artifacts"]
    assert again["metrics"] == first["metrics"]


def test_missing_inputs_fail_before_anything_runs(tmp_path):
    with pytest.raises(FileNotFoundError, match="data_uri: '/nonexistent/pairs.parquet'"):
        run_local(str(tmp_path / "run"), profile="test", data_uri="/nonexistent/pairs.parquet", quiet=True)
    with pytest.raises(ValueError, match="unknown profile"):
        run_local(str(tmp_path / "run"), profile="nope", quiet=True)
    with pytest.raises(ValueError, match="num_shards"):
        run_local(str(tmp_path / "run"), profile="test", num_shards=-3, quiet=True)
    assert not (tmp_path / "run" / ROOT_DIR).exists()


def test_gpu_merge_takes_the_pipelines_rows_and_names_an_overridden_teacher(local_run, tmp_path, capsys):
    """A pipeline bundle as gpu_run.sh packs it, from this real run: the student becomes a row on
    teacher-soft labels; a run with --set teacher.* brings its own teacher row, and the student names it."""
    import shutil
    import tarfile

    output, result, _ = local_run

    def bundle(name: str, teacher_settings: dict) -> str:
        staged = tmp_path / name
        # what gpu_run.sh packs: every run folder's step outputs and evaluation files, no checkpoints (the
        # rerun's root lacks the steps it took from the failed run's cache)
        for path in (output / ROOT_DIR).rglob("*"):
            relative = path.relative_to(output)
            if path.is_file() and (path.name == "executor_output.json" or "evaluate" in relative.parts):
                (staged / "pipeline" / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(path, staged / "pipeline" / relative)
        summary = json.loads((output / SUMMARY_FILE).read_text())
        summary["arguments"]["teacher_settings"] = teacher_settings
        (staged / "pipeline" / SUMMARY_FILE).write_text(json.dumps(summary))
        (staged / "pipeline-time.txt").write_text("kdrank run --profile test: exit 0 after 99 s\n")
        (staged / "gpu.txt").write_text("name, memory.total [MiB]\nNVIDIA H200, 143771 MiB\n")
        with tarfile.open(tmp_path / f"{name}.tgz", "w:gz") as tar:
            for item in ("pipeline", "pipeline-time.txt", "gpu.txt"):
                tar.add(staged / item, arcname=item)
        return str(tmp_path / f"{name}.tgz")

    def runs_folder(name: str, drop: int = 0) -> Path:
        runs = tmp_path / name
        (runs / "data").mkdir(parents=True)
        test = pd.read_parquet(Path(result["artifacts"]["data"], "test.parquet"))
        test.iloc[drop:].to_parquet(runs / "data" / "test.parquet")
        return runs

    merge = load_benchmark("gpu_merge")
    plain, runs = bundle("plain", {}), runs_folder("runs")
    assert merge.main(["--runs", str(runs), plain]) == 0
    (row,) = [json.loads(line) for line in (runs / "results.jsonl").read_text().splitlines()]
    assert (row["run"], row["labels"], row["hardware"]) == ("pipeline-student", "teacher-soft", "1x NVIDIA H200")
    assert row["metrics"] == result["metrics"]["student"]
    assert set(row["settings"]["overrides"]) == {"augment"} and "--set augment.encoder=" in row["command"]

    fast = bundle("fast", {"batch_size": 16, "learning_rate": 1e-4})
    runs = runs_folder("runs-fast")
    assert merge.main(["--runs", str(runs), fast]) == 0
    rows = {r["run"]: r for r in map(json.loads, (runs / "results.jsonl").read_text().splitlines())}
    assert rows["pipeline-student"]["labels"] == "pipeline-teacher"
    assert rows["pipeline-teacher"]["kind"] == "teacher"
    assert rows["pipeline-teacher"]["metrics"] == result["metrics"]["teacher"]
    assert "--set teacher.batch_size=16 --set teacher.learning_rate=0.0001" in rows["pipeline-teacher"]["command"]

    short = runs_folder("runs-short", drop=1)  # a split without one of the scored pairs: nothing is written
    assert merge.main(["--runs", str(short), fast]) == 2
    assert "not merged" in capsys.readouterr().err
    assert not (short / "results.jsonl").exists() and not (short / "eval").exists()


def test_the_steps_keep_their_training_state_in_one_folder_of_the_output(tmp_path, monkeypatch):
    """kfp.local gives each run new artifact paths: the state root the steps inherit is what stays the same."""

    from components.kfp.common import STATE_ROOT
    from pipelines.local import _step_environment

    monkeypatch.delenv(STATE_ROOT, raising=False)
    with _step_environment(tmp_path / "state"):
        assert os.environ[STATE_ROOT] == str(tmp_path / "state")
    assert STATE_ROOT not in os.environ
    monkeypatch.setenv(STATE_ROOT, "elsewhere")
    with _step_environment(tmp_path / "state"):
        assert os.environ[STATE_ROOT] == str(tmp_path / "state")
    assert os.environ[STATE_ROOT] == "elsewhere"


def test_ctrl_c_lets_the_training_step_save_before_the_run_stops(tmp_path, tiny_teacher_dir, tiny_student_dir):
    """A terminal's Ctrl-C reaches `kdrank run` and its step alike. The run waits while the teacher step
    saves its state where the next run looks for it, then ends with 130 (before, it ended at once and took
    the step down with it, keeping only the last timed save)."""
    output, log = tmp_path / "run", tmp_path / "run.log"
    command = [sys.executable, "-m", "pipelines.cli", "run", "--output", str(output), "--profile", "test",
               "--teacher-model", tiny_teacher_dir, "--student-model", tiny_student_dir,
               "--set", f"augment.encoder={tiny_student_dir}", "--set", "teacher.epochs=500"]
    env = {**os.environ, "KDRANK_STATE_EVERY": "0.5", "HF_HUB_OFFLINE": "1"}
    with log.open("w") as sink:  # a session of its own: its process group is what a terminal signals
        run = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT,
                               start_new_session=True)
    state = output / ROOT_DIR / STATE_DIR / "teacher" / "state.pt"
    try:
        deadline = time.monotonic() + 600
        while not state.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)  # the first timed save: the teacher is inside its training loop
        assert state.exists(), log.read_text()[-3000:]
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(timeout=120) == 130, log.read_text()[-3000:]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    text = log.read_text()
    assert text.rstrip().splitlines()[-1].startswith("kdrank run: stopped by SIGINT: finished steps are cached")
    stop = re.search(r"stopped by SIGINT at batch (\d+) of (\d+); the state is saved", text)
    assert stop and torch.load(state)["done"] == int(stop[1]) < int(stop[2])
    assert text.count("training teacher on") == 1  # no retry of the step began
