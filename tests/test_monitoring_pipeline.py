"""The monitoring pipeline: compiled IR, its components through `python_func`, and a kfp.local run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from kfp.dsl import HTML, Dataset, Metrics, Model

from components import schema
from components.kfp import monitor
from components.scoring import PairScorer
from pipelines.monitoring import PIPELINE_NAME, compile_monitoring_pipeline
from serving.requestlog import RequestLogger

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["drill", "cordless", "battery", "saw", "blade", "hammer", "wrench", "paint", "brush", "lamp", "bulb",
         "faucet", "hose", "garden", "tile"]


def pairs_table(n_queries: int, per_query: int, seed: int) -> pd.DataFrame:
    """Held-out pairs in kdrank's schema (grades are not needed by monitoring)."""
    rng = np.random.default_rng(seed)
    rows = [(f"{' '.join(rng.choice(WORDS, 2))} {q}", f"p{seed}-{q}-{p}", " ".join(rng.choice(WORDS, 6)))
            for q in range(n_queries) for p in range(per_query)]
    frame = pd.DataFrame(rows, columns=[schema.QUERY, schema.PRODUCT_ID, schema.PRODUCT_TEXT])
    frame.insert(0, schema.QUERY_ID, frame[schema.QUERY].map(schema.query_id))
    return frame


def artifact(kind, folder: Path, name: str):
    return kind(name=name, uri=str(folder / name), metadata={})


def test_compiles_to_monitor_then_gate_uncached(tmp_path):
    path = compile_monitoring_pipeline(str(tmp_path / "monitor.yaml"))
    spec = yaml.safe_load(Path(path).read_text())
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    tasks = spec["root"]["dag"]["tasks"]
    assert set(tasks) == {"monitor-window", "monitoring-gate"}
    gate = tasks["monitoring-gate"]
    assert gate["dependentTasks"] == ["monitor-window"]
    assert gate["inputs"]["parameters"]["passed"]["taskOutputParameter"]["producerTask"] == "monitor-window"
    assert all(not t["cachingOptions"].get("enableCache") for t in tasks.values())  # new traffic every run
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"window_uri", "reference_uri", "thresholds_uri", "overrides", "sample_size"} <= set(params)
    assert not params["window_uri"].get("isOptional") and params["sample_size"]["defaultValue"] == 2000
    executors = spec["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {"kdrank:0.1.0"}
    assert Path(compile_monitoring_pipeline(str(tmp_path / "again.yaml"))).read_text() == Path(path).read_text()


def test_kdrank_monitor_compile_sets_the_image(tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "monitor.yaml"
    assert main(["monitor", "compile", "--output", str(out), "--image", "registry.example/kdrank:9"]) == 0
    executors = yaml.safe_load(out.read_text())["deploymentSpec"]["executors"].values()
    assert {e["container"]["image"] for e in executors} == {"registry.example/kdrank:9"}
    assert capsys.readouterr().out.strip() == str(out)


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_teacher_dir, tiny_student_dir):
    """A data-step folder with a test split, a request log scored by the tiny student, model artifacts."""
    work = tmp_path_factory.mktemp("monitoring-pipeline")
    data = work / "data"
    data.mkdir()
    pairs_table(30, 6, seed=5).to_parquet(data / "test.parquet", index=False)
    (data / "paths.json").write_text(json.dumps({"test": "test.parquet"}))
    pairs = pairs_table(30, 6, seed=6)
    scorer = PairScorer(tiny_student_dir, device="cpu")
    with RequestLogger(str(work / "logs"), fmt="parquet") as logger:
        for query, group in pairs.groupby("query"):
            scores = scorer.score([query] * len(group), group["product_text"].tolist(), progress=False).score
            logger.log(query, group["product_text"].tolist(), scores, model_name="kdrank_student",
                       model_version="1", product_ids=group["product_id"].tolist())
    return {"work": work, "data": Dataset(name="data", uri=str(data), metadata={}),
            "teacher": Model(name="teacher", uri=tiny_teacher_dir, metadata={}),
            "student": Model(name="student", uri=tiny_student_dir, metadata={}), "logs": str(work / "logs")}


@pytest.fixture(scope="module")
def reference(served):
    out = artifact(Dataset, served["work"], "reference")
    monitor.build_reference.python_func(data=served["data"], teacher=served["teacher"],
                                        student=served["student"], reference=out)
    return out


def test_build_reference_records_the_served_model_and_the_teacher(reference, served):
    meta = json.loads(Path(reference.path, "reference.json").read_text())
    assert (meta["model_name"], meta["model_version"], meta["rows"]) == ("kdrank_student", "1", 180)
    assert meta["teacher_dir"] == served["teacher"].uri
    assert reference.metadata == {"model_name": "kdrank_student", "model_version": "1"}


def test_monitor_component_reports_and_the_gate_fails_the_run(reference, served):
    work = served["work"]
    results, report, metrics = (artifact(Dataset, work, "results"), artifact(HTML, work, "report.html"),
                                artifact(Metrics, work, "metrics"))
    passed = monitor.monitor_window.python_func(
        window_uri=served["logs"], reference_uri=reference.path, results=results, report=report,
        metrics=metrics, overrides=["min_rows=100000"])  # far more rows than logged: must fail
    summary = json.loads(Path(results.path, "summary.json").read_text())
    assert passed is False and passed == summary["passed"] and "rows" in summary["failed"]
    assert Path(report.path).read_text() == Path(results.path, "report.html").read_text()
    assert metrics.metadata["rows"] == 180 and metrics.metadata["passed"] == 0.0
    assert results.metadata["passed"] is False and "rows" in results.metadata["failed"]
    with pytest.raises(RuntimeError, match="monitoring failed: .*rows"):
        monitor.monitoring_gate.python_func(passed=passed, results=results)
    monitor.monitoring_gate.python_func(passed=True, results=results)  # a passing run goes through


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*non-Python base image", "ignore:.*no effect in the current local runner")
def test_local_run_of_the_compiled_pipeline_alerts_on_a_failed_test(reference, served, tmp_path, monkeypatch):
    from kfp import local
    from kfp.components import load_component_from_file

    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipeline_root = tmp_path / "root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               enable_caching=False, raise_on_error=True)
    pipeline = load_component_from_file(compile_monitoring_pipeline(str(tmp_path / "monitor.yaml")))
    with pytest.raises(RuntimeError, match="monitoring-gate"):
        pipeline(window_uri=served["logs"], reference_uri=reference.path, overrides=["min_rows=100000"])
    [summary] = pipeline_root.rglob("summary.json")  # the report survives the failed run
    assert json.loads(summary.read_text())["failed"][0] == "rows"
    assert (summary.parent / "report.html").stat().st_size > 100_000
