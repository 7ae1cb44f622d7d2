"""Shared fixtures: tiny randomly initialised teacher and student checkpoints, small labelled data.

The student uses the packaged MiniLM tokenizer with a tiny BertConfig; the teacher a byte-level BPE
tokenizer trained here in code (no pad token, as real decoder LLMs ship) with a tiny LlamaConfig.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Idle OpenMP threads sleep instead of spinning: tests run beside servers and step subprocesses.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# Keep converted weights and embedding caches inside the checkout (git-ignored), not in $HOME.
os.environ.setdefault("KDRANK_CACHE", str(Path(__file__).resolve().parents[1] / ".kdrank-cache"))

import pandas as pd
import pytest
import torch
from kdrank_testing import (
    free_port,
    make_labelled,
    save_tiny_student,
    save_tiny_teacher,
    split_only,
    write_homedepot_csv,
)

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory) -> str:
    return save_tiny_student(tmp_path_factory.mktemp("tiny-student"))


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory) -> str:
    return save_tiny_teacher(tmp_path_factory.mktemp("tiny-teacher"))


@pytest.fixture
def tiny_labelled() -> pd.DataFrame:
    return make_labelled()


@pytest.fixture(scope="session")
def gcs_emulator():
    """A real GCS emulator (gcp-storage-emulator) in this process on 127.0.0.1, with a bucket.

    Yields the bucket name; the real google-cloud-storage client reaches it via STORAGE_EMULATOR_HOST.
    """
    from gcp_storage_emulator.server import create_server

    from components import storage

    port = free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="kdrank-test")
    server.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    storage.gcs_client.cache_clear()
    try:
        yield "kdrank-test"
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous
        storage.gcs_client.cache_clear()


@pytest.fixture(scope="session")
def finished(tmp_path_factory, tiny_teacher_dir, tiny_student_dir):
    """The `test` profile's whole experiment plan, run once: (runner, rows, root with train.csv and runs/)."""
    from pipelines.experiments import Runner

    root = tmp_path_factory.mktemp("experiments")
    data = write_homedepot_csv(root / "train.csv")
    runner = Runner("test", data, str(root / "runs"), fmt="homedepot", teacher_model=tiny_teacher_dir,
                    student_model=tiny_student_dir)
    rows = runner.run()
    return runner, rows, root


@pytest.fixture
def archived(finished, tmp_path):
    """(archive of the finished test plan, a fresh runs folder holding its split with the archive restored into it)."""
    from pipelines.archive import archive_runs, restore_runs

    _, _, root = finished
    archive = tmp_path / "archive"
    archive_runs(root / "runs", archive)
    here = split_only(root, tmp_path / "here")
    restore_runs(archive, here)
    return archive, here
