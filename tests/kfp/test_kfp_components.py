"""Each Kubeflow component through `component.python_func`, on real small artifacts in a temporary folder.

The steps run in pipeline order on the `test` profile with tiny models, each test checking one step's
output; module-scoped fixtures chain them so every step runs once.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest
from kfp.dsl import Dataset, Markdown, Metrics, Model

from components import schema
from components.checkpoint import read_info
from components.kfp import augment, common, data, evaluate, export, label, plan, student, teacher
from components.kfp.data import dataset_paths

PROFILE = "test"


def artifact(kind, folder: Path, name: str):
    return kind(name=name, uri=str(folder / name), metadata={})


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("kfp-components")


@pytest.fixture(scope="module")
def tiny_encoder(tiny_student_dir) -> dict:
    """Augmentation settings: the tiny student's BERT doubles as the encoder, so no real model loads here."""
    return {"encoder": tiny_student_dir}


@pytest.fixture(scope="module")
def prepared(work) -> Dataset:
    out = artifact(Dataset, work, "data")
    data.prepare_data.python_func(data=out, profile=PROFILE)
    return out


@pytest.fixture(scope="module")
def teacher_model(work, prepared, tiny_teacher_dir) -> Model:
    out = artifact(Model, work, "teacher")
    teacher.train_teacher.python_func(data=prepared, teacher=out, profile=PROFILE, teacher_base=tiny_teacher_dir)
    return out


@pytest.fixture(scope="module")
def pairs(work, prepared, tiny_encoder) -> Dataset:
    out = artifact(Dataset, work, "pairs")
    augment.augment_pairs.python_func(data=prepared, pairs=out, profile=PROFILE, settings=tiny_encoder)
    return out


@pytest.fixture(scope="module")
def shards(work, pairs, teacher_model) -> list[Dataset]:
    outs = []
    for index in range(2):
        out = artifact(Dataset, work, f"labels-{index}")
        label.label_shard.python_func(pairs=pairs, teacher=teacher_model, labels=out, shard_index=index,
                                      num_shards=2, profile=PROFILE)
        outs.append(out)
    return outs


@pytest.fixture(scope="module")
def student_model(work, prepared, shards, tiny_student_dir) -> Model:
    out = artifact(Model, work, "student")
    student.train_student.python_func(data=prepared, labels=shards, student=out, profile=PROFILE,
                                      student_base=tiny_student_dir)
    return out


def test_plan_returns_shard_indices():
    assert plan.plan.python_func(profile=PROFILE, num_shards=3) == [0, 1, 2]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"num_shards": -1}, ValueError, "num_shards must be between 1 and"),
    ({"num_shards": 0}, ValueError, "num_shards must be between 1 and"),
    ({"profile": "huge"}, ValueError, "unknown profile 'huge'"),
    ({"data_uri": "/nonexistent/pairs.csv"}, FileNotFoundError, "data_uri: '/nonexistent/pairs.csv'"),
    ({"teacher_base": "/nonexistent/teacher"}, FileNotFoundError, "teacher_base"),
    ({"data_format": "xlsx"}, ValueError, "data_format must be one of"),
    ({"teacher_settings": {"epochz": 1}}, ValueError, "step 'teacher'.*epochz"),
    ({"label_settings": {"batch_sise": 8}}, ValueError, r"step 'label': unknown setting\(s\) \['batch_sise'\]"),
    ({"augment_settings": {"multiple": -1}}, ValueError, "step .augment.*multiple"),
    ({"student_settings": {"loss": "hinge"}}, ValueError, "StudentConfig.loss"),
    ({"evaluate_settings": {"name": "x"}}, ValueError, r"step 'evaluate': unknown setting\(s\) \['name'\]"),
    # label and evaluate settings are checked for type and range too, not only by name (they failed after training)
    ({"label_settings": {"batch_size": "abc"}}, ValueError, "step 'label': setting 'batch_size' must be int, got 'a"),
    ({"label_settings": {"batch_size": 0}}, ValueError, "step 'label': setting 'batch_size' must be >= 1, got 0"),
    ({"label_settings": {"chunk_rows": -5}}, ValueError, "step 'label': setting 'chunk_rows' must be >= 1"),
    ({"label_settings": {"device": "tpu"}}, ValueError, "step 'label': setting 'device' must be one of"),
    ({"label_settings": {"device": "cuda:x"}}, ValueError, "step 'label': setting 'device' must be one of"),
    ({"label_settings": {"progress": "maybe"}}, ValueError, "step 'label': setting 'progress' must be bool"),
    ({"label_settings": {"num_shards": "abc"}}, ValueError, "step 'label': setting 'num_shards'"),
    ({"evaluate_settings": {"batch_size": "abc"}}, ValueError,
     "step 'evaluate': setting 'batch_size' must be int, got 'abc'"),
    ({"evaluate_settings": {"batch_size": -1}}, ValueError, "step 'evaluate': setting 'batch_size' must be >= 1"),
    ({"evaluate_settings": {"fmt": "xlsx"}}, ValueError, "step 'evaluate': setting 'fmt' must be one of"),
    # the data step gives the run's data_format as fmt: a prepare.fmt setting crashed it ("multiple values")
    ({"prepare_settings": {"fmt": "csv"}}, ValueError, "step 'prepare': setting 'fmt'.*--format"),
])
def test_plan_rejects_bad_parameters_clearly(kwargs, error, message):
    params = {"profile": PROFILE, "num_shards": 2, **kwargs}
    with pytest.raises(error, match=message):
        plan.plan.python_func(**params)


def test_plan_takes_good_label_and_evaluate_settings():
    settings = {"label_settings": {"batch_size": 8, "chunk_rows": 100, "device": "cuda:1", "progress": False},
                "evaluate_settings": {"batch_size": 16, "fmt": "parquet"}}
    assert plan.plan.python_func(profile=PROFILE, num_shards=2, **settings) == [0, 1]


def test_unknown_override_steps_are_refused():
    with pytest.raises(ValueError, match=r"unknown step\(s\) \['teachr'\]"):
        common.resolve_profile(PROFILE, overrides={"teachr": {"epochs": 1}})


def test_overrides_arrive_as_integers_again():
    """A dict parameter travels as a protobuf Struct (2 -> 2.0); integer settings must stay integers."""
    profile = common.resolve_profile(PROFILE, overrides={"teacher": {"batch_size": 4.0, "learning_rate": 1.0}})
    assert profile.teacher["batch_size"] == 4 and isinstance(profile.teacher["batch_size"], int)
    assert profile.teacher["max_length"] == 64
    assert isinstance(profile.teacher["learning_rate"], int | float)


def test_prepare_data_writes_the_synthetic_split(prepared):
    tables = dataset_paths(prepared.path)
    assert set(tables) == {"train", "val", "test", "catalogue"}
    frames = {name: pd.read_parquet(path) for name, path in tables.items()}
    assert set(schema.LABELLED_COLUMNS) <= set(frames["train"].columns)
    assert not set(frames["train"][schema.QUERY_ID]) & set(frames["test"][schema.QUERY_ID])
    # synthetic data keeps its whole catalogue, beyond the products that were graded
    graded = pd.concat([frames[n] for n in ("train", "val", "test")])[schema.PRODUCT_ID].nunique()
    assert len(frames["catalogue"]) > graded
    assert prepared.metadata["source"] == "synthetic"
    assert prepared.metadata["train_pairs"] == len(frames["train"])


def test_prepare_data_reads_a_given_file(tmp_path):
    source = tmp_path / "pairs.csv"
    source.write_text("query,product_id,product_text,grade\n" + "".join(
        f"q{q} drill,p{p},cordless drill {p},{(p + q) % 3}\n" for q in range(20) for p in range(4)))
    out = artifact(Dataset, tmp_path, "data")
    data.prepare_data.python_func(data=out, profile=PROFILE, data_uri=str(source))
    tables = dataset_paths(out.path)
    assert sum(len(pd.read_parquet(tables[n])) for n in ("train", "val", "test")) == 80
    assert out.metadata["source"] == str(source)


def test_prepare_data_names_the_bad_row(tmp_path):
    source = tmp_path / "pairs.csv"
    source.write_text("query,product_id,product_text,grade\ndrill,p1,cordless drill,1\ndrill,p2,saw,high\n")
    with pytest.raises(schema.DataError, match=r"row 2.*column 'grade'"):
        data.prepare_data.python_func(data=artifact(Dataset, tmp_path, "data"), profile=PROFILE,
                                      data_uri=str(source))


def test_train_teacher_writes_a_teacher_checkpoint(teacher_model):
    info = read_info(teacher_model.path)
    assert info.role == "teacher" and info.num_grades == 3
    assert teacher_model.metadata["role"] == "teacher"
    assert math.isfinite(teacher_model.metadata["final_train_loss"])


def test_augment_adds_unlabelled_pairs_from_train_queries_only(pairs, prepared):
    frame = pd.read_parquet(Path(pairs.path, augment.PAIRS_FILE))
    assert set(schema.UNLABELLED_COLUMNS) <= set(frame.columns)
    tables = dataset_paths(prepared.path)
    train_queries = set(pd.read_parquet(tables["train"])[schema.QUERY_ID])
    assert set(frame[schema.QUERY_ID]) <= train_queries
    assert (frame[schema.SOURCE] != "labelled").sum() > 0


def test_augment_keeps_title_queries_apart_from_the_validation_and_test_queries(work, prepared, tiny_encoder):
    from components.augment import made_with

    out = artifact(Dataset, work, "titled-pairs")
    augment.augment_pairs.python_func(data=prepared, pairs=out, profile=PROFILE,
                                      settings={**tiny_encoder, "title_queries": 1.0})
    frame = pd.read_parquet(Path(out.path, augment.PAIRS_FILE))
    tables = dataset_paths(prepared.path)
    held = set(pd.read_parquet(tables["val"])[schema.QUERY_ID]) | set(pd.read_parquet(tables["test"])[schema.QUERY_ID])
    assert (frame[schema.SOURCE] == "title").any() and not held & set(frame[schema.QUERY_ID])
    assert "held_out" in made_with(str(Path(out.path, augment.PAIRS_FILE)))["settings"]


def test_label_shards_split_the_pairs_exactly(shards, pairs):
    pool = pd.read_parquet(Path(pairs.path, augment.PAIRS_FILE))
    parts = [pd.read_parquet(sorted(Path(s.path).rglob("*.parquet"))[0]) for s in shards]
    keys = [set(zip(p[schema.QUERY_ID], p[schema.PRODUCT_ID], strict=True)) for p in parts]
    assert not keys[0] & keys[1]
    assert keys[0] | keys[1] == set(zip(pool[schema.QUERY_ID], pool[schema.PRODUCT_ID], strict=True))
    for part in parts:
        assert part[schema.TEACHER_SCORE].between(0, 2).all()
    assert [s.metadata["shard_index"] for s in shards] == [0, 1]


def test_train_student_reads_every_shard(student_model, shards):
    info = read_info(student_model.path)
    assert info.role == "student" and info.calibration is not None
    total = sum(len(pd.read_parquet(p)) for s in shards for p in Path(s.path).rglob("*.parquet"))
    assert student_model.metadata["train_rows"] == total
    assert student_model.metadata["shards"] == 2


def test_train_student_refuses_an_empty_shard(tmp_path, prepared, tiny_student_dir):
    empty = artifact(Dataset, tmp_path, "labels-0")
    Path(empty.path).mkdir()
    with pytest.raises(FileNotFoundError, match="labelling shard 0"):
        student.train_student.python_func(data=prepared, labels=[empty], student=artifact(Model, tmp_path, "s"),
                                          profile=PROFILE, student_base=tiny_student_dir)


def test_evaluate_logs_finite_headline_metrics(work, prepared, teacher_model, student_model):
    metrics, table, report = (artifact(Metrics, work, "metrics"), artifact(Markdown, work, "table"),
                              artifact(Dataset, work, "report"))
    evaluate.evaluate.python_func(data=prepared, teacher=teacher_model, student=student_model, report=report,
                                  metrics=metrics, table=table, profile=PROFILE)
    logged = metrics.metadata
    for model in ("student", "teacher"):
        for key in ("ndcg_at_10", "pairwise_accuracy", "rmse"):
            assert math.isfinite(logged[f"{model}_{key}"]), (model, key, logged)
    stored = json.loads(Path(metrics.path).read_text())
    assert set(stored) == {"teacher", "student", "baseline bm25"}
    text = Path(table.path).read_text()
    assert "| teacher |" in text and "| student |" in text and "NDCG@10" in text
    for name in ("teacher", "student", "baseline-bm25"):
        assert Path(report.path, name, "scores.parquet").is_file()


def test_export_writes_a_triton_repository_and_publishes_it(tmp_path, student_model):
    published = tmp_path / "served"
    repository = artifact(Model, tmp_path, "repository")
    export.export_student.python_func(student=student_model, repository=repository, model_name="kd",
                                      repository_uri=str(published))
    manifest = json.loads(Path(repository.path, "manifest.json").read_text())
    assert manifest["model_name"] == "kd" and manifest["version"] == 1
    assert Path(repository.path, "local", "kd", "1").is_dir()
    assert repository.metadata["published_to"] == str(published)
    assert json.loads(Path(published, "manifest.json").read_text())["onnx"]["sha256"] == manifest["onnx"]["sha256"]


def test_secret_key_in_the_environment_becomes_a_credentials_file(monkeypatch):
    key = json.dumps({"type": "service_account", "project_id": "p", "client_email": "kdrank@p.iam"})
    monkeypatch.setenv(common.CREDENTIALS_ENV, key)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "")  # restored after the test
    common.start_step("test")
    path = Path(os.environ["GOOGLE_APPLICATION_CREDENTIALS"])
    assert path.read_text() == key
    assert path.stat().st_mode & 0o077 == 0  # readable by the step's user only
    path.unlink()


def test_a_secret_that_is_not_json_is_refused(monkeypatch):
    monkeypatch.setenv(common.CREDENTIALS_ENV, "not json")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "")  # restored after the test
    with pytest.raises(ValueError, match="KDRANK_GCS_CREDENTIALS_JSON does not hold a JSON"):
        common.start_step("test")


def _preempt_at_the_second_batch(monkeypatch, module, loss: str):
    """Make `module.<loss>` send this process SIGTERM (as a preempted pod gets) in the second training batch,
    with no timed saves; returns the real loss, to put back for the retry."""
    import signal

    import torch

    real, calls = getattr(module, loss), []

    def preempted(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        if calls.count(True) == 2 and calls[-1]:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setenv("KDRANK_STATE_EVERY", "0")
    monkeypatch.setattr(module, loss, preempted)
    return real


def _attempts(tmp_path, monkeypatch, rerun: str, name: str) -> tuple[Model, Model]:
    """The output artifacts of a step's first attempt and of the one that resumes it: a Kubeflow retry, given
    the same artifact, or the next `kdrank run`, given other artifact paths and the same state root."""
    if rerun == "retry":
        monkeypatch.delenv(common.STATE_ROOT, raising=False)
        return artifact(Model, tmp_path, name), artifact(Model, tmp_path, name)
    monkeypatch.setenv(common.STATE_ROOT, str(tmp_path / "state"))
    return artifact(Model, tmp_path / "run-1", name), artifact(Model, tmp_path / "run-2", name)


@pytest.mark.parametrize("rerun", ["retry", "next local run"])
def test_a_preempted_teacher_step_resumes_on_its_retry_or_in_the_next_local_run(
        tmp_path, prepared, tiny_teacher_dir, teacher_model, monkeypatch, rerun):
    # The pod's SIGTERM (a preempted node) stops the step after saving its state where the step keeps it; the
    # retry, with the same artifact (or the next `kdrank run`, with the same state root), goes on from it to
    # the teacher the uninterrupted step made.
    import torch
    from safetensors.torch import load_file

    import components.teacher as teacher_module

    out, retry = _attempts(tmp_path, monkeypatch, rerun, "teacher")
    real = _preempt_at_the_second_batch(monkeypatch, teacher_module, "soft_target_cross_entropy")
    with pytest.raises(SystemExit) as stopped:  # as a process SIGTERM killed: 143, one log line, no traceback
        teacher.train_teacher.python_func(data=prepared, teacher=out, profile=PROFILE, teacher_base=tiny_teacher_dir)
    assert stopped.value.code == 143
    assert Path(common.state_location(out), "state.pt").is_file()
    monkeypatch.setattr(teacher_module, "soft_target_cross_entropy", real)
    teacher.train_teacher.python_func(data=prepared, teacher=retry, profile=PROFILE, teacher_base=tiny_teacher_dir)
    assert retry.metadata["role"] == "teacher"
    assert read_info(retry.path).training["summary"]["resumed_at_batch"] == [2]
    whole, resumed = (load_file(str(Path(m.path, "model.safetensors"))) for m in (teacher_model, retry))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    assert not Path(common.state_location(retry)).exists()


def test_training_state_goes_under_a_gs_artifact_uri_else_beside_the_local_path(tmp_path, monkeypatch):
    monkeypatch.delenv(common.STATE_ROOT, raising=False)
    remote = Model(name="teacher", uri="gs://bucket/root/run-1/train-teacher/teacher", metadata={})
    assert common.state_location(remote) == "gs://bucket/root/run-1/train-teacher/teacher.state"
    local = artifact(Model, tmp_path, "student")
    assert common.state_location(local) == str(tmp_path / "student") + ".state"
    # `kdrank run` names one folder for every run of its output: by the artifact's name, whatever its path
    monkeypatch.setenv(common.STATE_ROOT, str(tmp_path / "state"))
    assert common.state_location(remote) == str(tmp_path / "state" / "teacher")
    assert common.state_location(local) == str(tmp_path / "state" / "student")
    other_run = artifact(Model, tmp_path / "run-2", "student")
    assert student.shards_folder(other_run) == student.shards_folder(local)


@pytest.mark.parametrize("rerun", ["retry", "next local run"])
def test_a_preempted_student_step_resumes_on_its_retry_or_in_the_next_local_run(
        tmp_path, prepared, shards, tiny_student_dir, monkeypatch, caplog, rerun):
    # The retry gathers the shards again: into the same folder as the first attempt, since the student's
    # resume identity holds that path (a fresh temporary folder made every retry train from the start).
    import logging

    import components.student as student_module

    out, retry = _attempts(tmp_path, monkeypatch, rerun, "student")
    real = _preempt_at_the_second_batch(monkeypatch, student_module, "margin_mse_loss")
    with pytest.raises(SystemExit) as stopped:
        student.train_student.python_func(data=prepared, labels=shards, student=out, profile=PROFILE,
                                          student_base=tiny_student_dir)
    assert stopped.value.code == 143
    assert Path(common.state_location(out), "state.pt").is_file()
    assert not Path(student.shards_folder(out)).exists()  # the links are cleaned up; the path stays the same
    monkeypatch.setattr(student_module, "margin_mse_loss", real)
    with caplog.at_level(logging.INFO, logger="components.resume"):
        student.train_student.python_func(data=prepared, labels=shards, student=retry, profile=PROFILE,
                                          student_base=tiny_student_dir)
    assert "resuming from" in caplog.text
    assert read_info(retry.path).training["summary"]["resumed_at_step"] == [2]
    assert not Path(common.state_location(retry)).exists()
    assert not Path(student.shards_folder(retry)).exists()
