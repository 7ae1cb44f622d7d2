"""gs:// inputs and outputs of the pipeline through a real GCS emulator and the real google-cloud-storage client."""

from __future__ import annotations

import pytest
from kdrank_testing import make_labelled
from kfp.dsl import Dataset, Model

from components import storage
from components.checkpoint import read_info
from components.data import write_table
from components.kfp import data, plan, teacher
from components.kfp.data import dataset_paths
from pipelines.training import compile_pipeline


def test_data_and_model_round_trip_through_gcs(gcs_emulator, tmp_path, monkeypatch, tiny_teacher_dir):
    monkeypatch.setenv("KDRANK_CACHE", str(tmp_path / "cache"))  # gs:// models are copied here once
    root = f"gs://{gcs_emulator}/kfp-round-trip"
    write_table(make_labelled(n_queries=20, per_query=5), f"{root}/data/pairs.parquet")
    storage.upload_dir(tiny_teacher_dir, f"{root}/models/teacher-base")

    assert plan.plan.python_func(profile="test", num_shards=2, data_uri=f"{root}/data/pairs.parquet",
                                 teacher_base=f"{root}/models/teacher-base") == [0, 1]
    prepared = Dataset(name="data", uri=str(tmp_path / "data"), metadata={})
    data.prepare_data.python_func(data=prepared, profile="test", data_uri=f"{root}/data/pairs.parquet")
    assert prepared.metadata["source"] == f"{root}/data/pairs.parquet"
    assert set(dataset_paths(prepared.path)) == {"train", "val", "test", "catalogue"}

    trained = Model(name="teacher", uri=str(tmp_path / "teacher"), metadata={})
    teacher.train_teacher.python_func(data=prepared, teacher=trained, profile="test",
                                      teacher_base=f"{root}/models/teacher-base")
    storage.upload_dir(trained.path, f"{root}/models/teacher")
    with storage.local_dir(f"{root}/models/teacher") as copy:
        info = read_info(copy)
    assert info.role == "teacher" and info.training["config"]["base_model"] == f"{root}/models/teacher-base"
    assert sorted(storage.list_files(f"{root}/models/teacher")) == storage.list_files(trained.path)


def test_missing_gcs_inputs_fail_the_first_step(gcs_emulator):
    root = f"gs://{gcs_emulator}/kfp-missing"
    with pytest.raises(FileNotFoundError, match=f"data_uri: '{root}/nothing.parquet'"):
        plan.plan.python_func(profile="test", num_shards=1, data_uri=f"{root}/nothing.parquet")
    with pytest.raises(FileNotFoundError, match="student_base"):
        plan.plan.python_func(profile="test", num_shards=1, student_base=f"{root}/no-model")


def test_compiled_yaml_lands_on_gcs(gcs_emulator, tmp_path):
    uri = f"gs://{gcs_emulator}/kfp-compiled/distill.yaml"
    compile_pipeline(uri)
    local = compile_pipeline(str(tmp_path / "distill.yaml"))
    with open(local, "rb") as handle:
        assert storage.read_bytes(uri) == handle.read()
