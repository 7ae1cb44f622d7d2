"""Monitoring steps: the reference set (a training-pipeline step) and the drift check of a served window.

`build_reference` scores the held-out test pairs with teacher and student after training;
`monitor_window` runs the monitoring job on a window of logged requests and returns whether every
test passed; `monitoring_gate` fails the run when one did not, so the run's status is the alert while
the report stays readable in the run's artifacts. Bodies only unpack artifacts and call monitoring/.
"""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components.kfp.common import kdrank_component


def record_outputs(summary: dict, results_dir: str, report_path: str, metrics) -> None:
    """Copy the HTML report to the HTML artifact and log every test's value on the Metrics artifact."""
    import shutil
    from pathlib import Path

    from components.kfp.common import log_metrics

    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(Path(results_dir, "report.html"), report_path)
    log_metrics(metrics, {t["key"]: t["value"] for t in summary["tests"] if t["value"] is not None})
    log_metrics(metrics, {"passed": float(summary["passed"]), "failed_tests": float(len(summary["failed"]))})


@kdrank_component
def build_reference(
    data: Input[Dataset],
    teacher: Input[Model],
    student: Input[Model],
    reference: Output[Dataset],
    model_name: str = "kdrank_student",
    model_version: str = "1",
    max_pairs: int = 5000,
    batch_size: int = 64,
):
    """The reference set for monitoring: held-out test pairs scored by teacher and student."""
    from components.kfp.common import start_step
    from components.kfp.data import dataset_paths
    from monitoring.reference import build_reference_set

    start_step("reference")
    build_reference_set(dataset_paths(data.path)["test"], teacher.path, student.path, reference.path,
                        model_name=model_name, model_version=model_version, max_pairs=max_pairs,
                        batch_size=batch_size, teacher_uri=teacher.uri)
    reference.metadata.update({"model_name": model_name, "model_version": model_version})


@kdrank_component
def monitor_window(
    window_uri: str,
    reference_uri: str,
    results: Output[Dataset],
    report: Output[HTML],
    metrics: Output[Metrics],
    teacher_uri: str = "",
    student_uri: str = "",
    thresholds_uri: str = "",
    overrides: list = [],  # noqa: B006 (KFP needs a literal default for an optional list parameter)
    sample_size: int = 2000,
    max_pairs_per_query: int = 10,
    reference_size: int = 5000,
    seed: int = 0,
    batch_size: int = 64,
) -> bool:
    """Drift report of a window of logged requests vs the reference set; True when every test passed."""
    from components.kfp.common import start_step
    from components.kfp.monitor import record_outputs
    from monitoring.job import monitor

    start_step("monitor")
    result = monitor(window_uri, reference_uri, results.path, teacher_dir=teacher_uri or None,
                     student_dir=student_uri or None, thresholds=thresholds_uri or None,
                     overrides=[str(o) for o in overrides], sample_size=sample_size,
                     max_pairs_per_query=max_pairs_per_query, reference_size=reference_size, seed=seed,
                     batch_size=batch_size)
    record_outputs(result.summary, results.path, report.path, metrics)
    results.metadata.update({"passed": result.passed, "failed": ", ".join(result.summary["failed"]),
                             "warnings": len(result.summary["warnings"])})
    return result.passed


@kdrank_component
def monitoring_gate(passed: bool, results: Input[Dataset]):
    """Fail the run when a monitoring test failed, naming the tests (the report is in `results`)."""
    import json
    from pathlib import Path

    if not passed:
        summary = json.loads(Path(results.path, "summary.json").read_text())
        failed = ", ".join(summary["failed"])
        raise RuntimeError(f"monitoring failed: {failed} (report: {results.uri}/report.html)")
