"""Student step: train the cross-encoder on the teacher-label shards with margin MSE (a GPU step)."""

import os
from pathlib import Path
from typing import List  # noqa: UP035 (KFP reads the annotation of the embedded source)

from kfp.dsl import Dataset, Input, Model, Output

from components.kfp.common import kdrank_component


def gather_shards(shard_dirs: list[str], folder: str) -> str:
    """One folder of links to every shard's Parquet files (the engine reads a folder as one table)."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    count = 0
    for index, shard in enumerate(shard_dirs):
        files = sorted(Path(shard).rglob("*.parquet")) if Path(shard).is_dir() else [Path(shard)]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"labelling shard {index} ({shard}) holds no Parquet file")
        for file in files:
            if file.name.startswith("."):
                continue
            os.symlink(file.resolve(), Path(folder, f"shard-{index:05d}-{file.name}"))
            count += 1
    if not count:
        raise FileNotFoundError(f"no labelled shards among {len(shard_dirs)} inputs")
    return folder


def shards_folder(artifact) -> str:
    """A local folder for `gather_shards`, at the same path on every attempt of one step.

    The student's resume identity holds the path it trains on, so a retried pod (same output artifact,
    fresh temporary directory), or the next `kdrank run` after one cut short (same state location, other
    artifact), would otherwise never find its saved state and train from the start. Keyed on where the
    step keeps its state (`common.state_location`), which is what both have in common with the first try.
    """
    import hashlib
    import tempfile

    from components.kfp.common import state_location

    key = state_location(artifact).rstrip("/")
    digest = hashlib.sha256(key.encode("utf-8")).hexdigest()[:16]
    return str(Path(tempfile.gettempdir(), f"kdrank-shards-{digest}"))


@kdrank_component
def train_student(
    data: Input[Dataset],
    labels: Input[List[Dataset]],  # noqa: UP006
    student: Output[Model],
    profile: str = "demo",
    student_base: str = "",
    settings: dict = {},  # noqa: B006 (KFP needs a literal default for an optional dict parameter)
):
    """Distil the teacher into the cross-encoder (base: path or gs:// URI; empty = packaged MiniLM-L6)."""
    import shutil

    from components.kfp.common import exit_on_stop, resolve_profile, scalar_metadata, start_step, state_location
    from components.kfp.data import dataset_paths
    from components.kfp.student import gather_shards, shards_folder
    from components.student import StudentConfig
    from components.student import train_student as train

    start_step("student")
    profile_ = resolve_profile(profile, student_base=student_base, overrides={"student": settings})
    config = StudentConfig(**profile_.student)
    # the shards' links go to a folder at a stable path: it is part of what a retry's resume matches on
    folder = shards_folder(student)
    shutil.rmtree(folder, ignore_errors=True)  # links an earlier attempt left (they are made again)
    try:
        with exit_on_stop():
            train_uri = gather_shards([shard.path for shard in labels], folder)
            summary = train(train_uri, dataset_paths(data.path)["val"], student.path, config,
                            state_dir=state_location(student))
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # links only: the shards themselves stay
    student.metadata.update({"role": "student", "base_model": student_base or "default",
                             "shards": len(labels), **scalar_metadata(summary)})
