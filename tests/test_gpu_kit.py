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
