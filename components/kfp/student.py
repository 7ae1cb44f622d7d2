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
    import tempfile

    from components.kfp.common import resolve_profile, scalar_metadata, start_step, state_location
    from components.kfp.data import dataset_paths
    from components.kfp.student import gather_shards
    from components.student import StudentConfig
    from components.student import train_student as train

    start_step("student")
    profile_ = resolve_profile(profile, student_base=student_base, overrides={"student": settings})
    config = StudentConfig(**profile_.student)
    with tempfile.TemporaryDirectory(prefix="kdrank-shards-") as tmp:
        train_uri = gather_shards([shard.path for shard in labels], tmp)
        summary = train(train_uri, dataset_paths(data.path)["val"], student.path, config,
                        state_dir=state_location(student))
    student.metadata.update({"role": "student", "base_model": student_base or "default",
                             "shards": len(labels), **scalar_metadata(summary)})
