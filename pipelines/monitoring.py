"""The monitoring pipeline: a window of served requests -> drift report -> gate (fails on a failed test).

Schedule it (a recurring run, or any scheduler submitting it) with the window of the period as
`window_uri`; the run's status is the alert, and the report, summary and Evidently snapshot are its
artifacts. Compiled like the training pipeline, with the same cluster settings (image, GCS secret).
(No `from __future__ import annotations`: KFP reads the pipeline function's annotations as types.)
"""

import dataclasses
import logging

from kfp import dsl

from components.kfp.common import with_image
from pipelines.settings import ClusterSettings, apply_settings, compile_to

log = logging.getLogger(__name__)

PIPELINE_NAME = "kdrank-monitor"
DESCRIPTION = ("Check a window of served rerank requests: label a sample with the teacher, compare the "
               "student's agreement, score and input distributions with the reference set (Evidently), "
               "and fail the run when a test fails.")
# (CPU, memory) requests of the monitoring steps: labelling a 2,000-pair sample with the teacher on CPU.
MONITOR_RESOURCES = {"monitor": ("4", "16Gi"), "monitor-gate": ("500m", "1Gi")}


def build_monitoring_pipeline(settings: ClusterSettings | None = None, pipeline_root: str | None = None):
    """The monitoring `@dsl.pipeline` for these cluster settings."""
    from components.kfp import monitor

    settings = settings or ClusterSettings()
    settings = dataclasses.replace(settings, resources={**settings.resources, **MONITOR_RESOURCES})
    monitor_op = with_image(monitor.monitor_window, settings.image)
    gate_op = with_image(monitor.monitoring_gate, settings.image)

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION, pipeline_root=pipeline_root)
    def kdrank_monitor(
        window_uri: str,
        reference_uri: str,
        teacher_uri: str = "",
        student_uri: str = "",
        thresholds_uri: str = "",
        overrides: list = [],  # noqa: B006 (KFP needs a literal default)
        sample_size: int = 2000,
        max_pairs_per_query: int = 10,
        reference_size: int = 5000,
        seed: int = 0,
    ):
        checked = monitor_op(window_uri=window_uri, reference_uri=reference_uri, teacher_uri=teacher_uri,
                             student_uri=student_uri, thresholds_uri=thresholds_uri, overrides=overrides,
                             sample_size=sample_size, max_pairs_per_query=max_pairs_per_query,
                             reference_size=reference_size, seed=seed)
        # Never cached: the same window URI (a "latest" prefix) holds new traffic on every run.
        apply_settings(checked, "monitor", settings).set_display_name("monitor window")
        checked.set_caching_options(False)
        gate = gate_op(passed=checked.outputs["Output"], results=checked.outputs["results"])
        apply_settings(gate, "monitor-gate", settings).set_display_name("alert on failed tests")
        gate.set_caching_options(False)

    return kdrank_monitor


def compile_monitoring_pipeline(output_path: str, settings: ClusterSettings | None = None,
                                pipeline_root: str | None = None) -> str:
    """Compile the monitoring pipeline to IR YAML at `output_path` (a path or gs:// URI), written whole."""
    compile_to(build_monitoring_pipeline(settings, pipeline_root), output_path)
    log.info("compiled %s to %s", PIPELINE_NAME, output_path)
    return str(output_path)
