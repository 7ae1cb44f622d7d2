"""The GPU kit's carries: gpu_stage.py cuts what a call cannot hold whole, gpu_run.sh joins it back there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from kdrank_testing import load_benchmark

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20


@pytest.fixture(scope="module")
def stage():
    return load_benchmark("gpu_stage")


def test_part_count_keeps_every_group_within_a_call(stage):
    assert stage.part_count(40 * MIB, 5 * MIB, 60 * MIB) == 1  # fits whole beside the rest
    # MiniLM (43.3 MiB) beside 3 MiB of data and wheels, when a call has room for 37 MiB: two parts
    n = stage.part_count(int(43.3 * MIB), 3 * MIB, 37 * MIB)
    assert n == 2 and -(-int(43.3 * MIB) // n) + 3 * MIB <= 37 * MIB
    assert stage.part_count(98 * MIB, 0, 37 * MIB) == 3
    with pytest.raises(SystemExit, match="must travel with the first part"):
        stage.part_count(10 * MIB, 40 * MIB, 37 * MIB)
    assert stage.room(2 * MIB, limit=64 * MIB) == 61 * MIB
    with pytest.raises(SystemExit, match="too little room"):
        stage.room(60 * MIB, limit=64 * MIB)


def run_setup(tree: Path, work: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(tree / "out"), "KDRANK_WORK": str(work), "KDRANK_SKIP_WHEELS": "1",
           "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "tests" / "benchmarks" / "gpu_run.sh"), "setup"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=300)


def test_gpu_run_joins_minilm_and_the_teacher_once_every_part_has_arrived(stage, tmp_path, tiny_student_dir):
    from transformers import AutoModel

    staged = tmp_path / "staged" / ".gpu"
    a = staged / "a"
    (a / "minilm").mkdir(parents=True)
    model = AutoModel.from_pretrained(tiny_student_dir)
    model.save_pretrained(a / "minilm")
    for name in os.listdir(tiny_student_dir):
        if name.startswith("tokenizer") or name.endswith("vocab.txt"):
            (a / "minilm" / name).write_bytes(Path(tiny_student_dir, name).read_bytes())
    weights = (a / "minilm" / "model.safetensors").read_bytes()
    (a / "minilm" / "model.safetensors").unlink()
    stage.write_parts(weights, "minilm.safetensors", [a, staged / "a2"])
    gguf = os.urandom(3000)
    stage.write_parts(gguf, "teacher.gguf", [staged / "b", staged / "c", staged / "d"])
    assert sorted(p.name for p in (staged / "d").iterdir()) == ["teacher.gguf.part3of3"]

    # the machine as calls arrive: first .gpu/a alone, then .gpu/a2 and .gpu/b, then the rest
    tree, work = tmp_path / "machine", tmp_path / "work"
    (tree / ".gpu").mkdir(parents=True)
    (staged / "a").rename(tree / ".gpu" / "a")
    first = run_setup(tree, work)
    assert first.returncode == 0, first.stderr
    assert "minilm.safetensors: waiting for more of its 2 parts" in first.stdout
    assert not (work / "minilm").exists() and not list(work.glob("*.gguf"))

    for group in ("a2", "b"):
        (staged / group).rename(tree / ".gpu" / group)
    second = run_setup(tree, work)
    assert second.returncode == 0, second.stderr
    assert "teacher.gguf: waiting for more of its 3 parts" in second.stdout
    joined = AutoModel.from_pretrained(work / "minilm")
    assert all((joined.state_dict()[k] == v).all() for k, v in model.state_dict().items())

    for group in ("c", "d"):
        (staged / group).rename(tree / ".gpu" / group)
    assert run_setup(tree, work).returncode == 0
    assert next(work.glob("*.gguf")).read_bytes() == gguf


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for `python -m pipelines.cli experiment prepare|run ...`: logs when each command starts and ends
echo "start $4" >> "$FAKE_LOG"
if [ "$4" = prepare ]; then
    sleep "${FAKE_PREPARE_SECONDS:-0}"
    # a prepare can be held (up to 30 s) until a line is in the log, so that the order shows the overlap
    if [ -n "${FAKE_PREPARE_UNTIL:-}" ]; then
        for _ in $(seq 300); do grep -qx "$FAKE_PREPARE_UNTIL" "$FAKE_LOG" && break; sleep 0.1; done
    fi
fi
# a run waits (up to 10 s) until a background prepare has started, so that the order shows the overlap
for _ in $(seq 100); do grep -q "start prepare" "$FAKE_LOG" && break; sleep 0.1; done
echo "end $4" >> "$FAKE_LOG"
exit "${FAKE_EXIT:-0}"
"""


def run_steps(tmp_path: Path, *steps: str, **env: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    fake, log, work = tmp_path / "python", tmp_path / "calls.log", tmp_path / "work"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    for folder in ("eval", "data", "models"):
        (work / "results-full" / folder).mkdir(parents=True, exist_ok=True)
    log.write_text("")
    environ = {**os.environ, "OUT": str(tmp_path / "out"), "KDRANK_WORK": str(work), "KDRANK_SKIP_WHEELS": "1",
               "PYTHON": str(fake), "FAKE_LOG": str(log), "PATH": "/usr/bin:/bin", **env}
    done = subprocess.run(["bash", str(ROOT / "tests" / "benchmarks" / "gpu_run.sh"), *steps], cwd=tmp_path,
                          env=environ, capture_output=True, text=True, timeout=60)
    return done, log.read_text().split("\n")[:-1]


def test_a_background_prepare_overlaps_the_runs_after_it_and_wait_waits_for_it(tmp_path):
    done, calls = run_steps(tmp_path, "prepare-bg", "runs=teacher-soft", "wait", "runs=student-margin-16x",
                            FAKE_PREPARE_UNTIL="end run")  # the prepare outlasts the teacher's run
    assert done.returncode == 0, done.stderr
    # the teacher ran while the set was being made; the distillation run only after it was finished
    assert sorted(calls[:2]) == ["start prepare", "start run"] and calls[2:] == [
        "end run", "end prepare", "start run", "end run"]
    assert "background prepare: exit 0" in done.stdout

    # the script's end waits for a prepare no step waited for, and reports its failure
    done, calls = run_steps(tmp_path, "prepare-bg", FAKE_EXIT="3")
    assert done.returncode == 0, done.stderr
    assert calls == ["start prepare", "end prepare"]
    assert "experiment prepare: exit 3" in done.stdout


def test_the_deadline_stops_runs_steps_and_leaves_the_steps_after_them(tmp_path):
    done, calls = run_steps(tmp_path, "runs=teacher-soft", "setup", KDRANK_DEADLINE="0")
    assert done.returncode == 0, done.stderr
    assert calls == []
    assert "runs=teacher-soft: not started, KDRANK_DEADLINE (0) s reached" in done.stdout
    assert "set-up done" in done.stdout

    # and a prepare, in the foreground or the background, is cut at the deadline as well
    done, calls = run_steps(tmp_path, "prepare", "prepare-bg", "wait", "setup", KDRANK_DEADLINE="0")
    assert done.returncode == 0, done.stderr
    assert calls == []
    assert done.stdout.count("prepare: not started, KDRANK_DEADLINE (0) s reached") == 2
    assert "set-up done" in done.stdout
    done, calls = run_steps(tmp_path, "prepare", KDRANK_DEADLINE="6", FAKE_PREPARE_SECONDS="30")
    assert calls == ["start prepare"]  # killed at the deadline, long before its own 30 s
    assert "experiment prepare: exit 124" in done.stdout
