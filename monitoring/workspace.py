"""Monitoring history: every run's snapshot appended to a local Evidently workspace, browsable with
`kdrank monitor ui` (which runs `evidently ui --workspace DIR --host 127.0.0.1`)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE = "evidently-workspace"
PROJECT_NAME = "kdrank monitoring"
PROJECT_DESCRIPTION = "Served kdrank student checked against teacher labels and the reference set"


class WorkspaceError(ValueError):
    """The workspace directory cannot hold the run (bad input: `kdrank monitor` exits 2)."""


def check_workspace(workspace_dir: str) -> None:
    """Raise WorkspaceError unless `workspace_dir` is, or can be created as, a writable local directory."""
    path = Path(workspace_dir)
    if "://" in str(workspace_dir):
        raise WorkspaceError(f"the Evidently workspace must be a local directory, got {workspace_dir} "
                             "(save runs to gs:// with --output; `kdrank monitor add` brings them in)")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())  # "/" always exists
    if not existing.is_dir():
        raise WorkspaceError(f"the Evidently workspace {workspace_dir} cannot be a directory: {existing} "
                             "is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise WorkspaceError(f"the Evidently workspace {workspace_dir} is not writable ({existing})")


def default_workspace() -> str:
    """$KDRANK_MONITOR_WORKSPACE, else ./evidently-workspace."""
    return os.environ.get("KDRANK_MONITOR_WORKSPACE", DEFAULT_WORKSPACE)


def _panels():
    """Dashboard panels: agreement and drift over time (one point per monitored window)."""
    from evidently.sdk.models import PanelMetric
    from evidently.sdk.panels import line_plot_panel

    from monitoring import features, report

    return [
        line_plot_panel("Student vs teacher: error on the grade scale", [
            PanelMetric(legend="MAE", metric="MAE", metric_labels={"value_type": "mean"}),
            PanelMetric(legend="RMSE", metric="RMSE"),
        ], size="half"),
        line_plot_panel("Student vs teacher: ranking and grades", [
            PanelMetric(legend="mean per-query Spearman", metric="MeanValue",
                        metric_labels={"column": features.QUERY_SPEARMAN}),
            PanelMetric(legend="grade agreement", metric="Accuracy"),
        ], size="half"),
        line_plot_panel("Prediction drift (student scores vs reference)", [
            PanelMetric(legend="drift score", metric="ValueDrift",
                        metric_labels={"column": features.STUDENT_GRADE}),
        ], size="half"),
        line_plot_panel("Served by the reference model version", [
            PanelMetric(legend="share", metric="MeanValue",
                        metric_labels={"column": report.SERVED_BY_REFERENCE_MODEL}),
        ], size="half"),
    ]


def add_to_workspace(snapshot, workspace_dir: str, *, project_name: str = PROJECT_NAME) -> dict:
    """Append `snapshot` to the project `project_name` in the local workspace (created with its
    dashboard on first use); returns the ids to find it again."""
    from evidently.ui.workspace import Workspace

    check_workspace(workspace_dir)
    try:
        Path(workspace_dir).mkdir(parents=True, exist_ok=True)
        workspace = Workspace.create(workspace_dir)
        found = workspace.search_project(project_name)
        if found:
            project = found[0]
        else:
            project = workspace.create_project(project_name, description=PROJECT_DESCRIPTION)
            for panel in _panels():
                project.dashboard.add_panel(panel)
            log.info("created Evidently project '%s' in %s", project_name, workspace_dir)
        ref = workspace.add_run(project.id, snapshot)
    except (OSError, ValueError) as err:  # ValueError: e.g. a directory holding something else
        raise WorkspaceError(f"could not add the run to the Evidently workspace {workspace_dir}: "
                             f"{type(err).__name__}: {err}") from err
    return {"dir": str(workspace_dir), "project": project_name, "project_id": str(project.id),
            "snapshot_id": str(ref.id)}


def ui_command(workspace_dir: str, *, port: int = 8000) -> list[str]:
    """The `evidently ui` command line serving `workspace_dir` on 127.0.0.1 only."""
    exe = shutil.which("evidently") or str(Path(sys.executable).with_name("evidently"))
    if not Path(exe).exists():
        raise RuntimeError("the `evidently` command is not installed (pip install evidently)")
    return [exe, "ui", "--workspace", str(workspace_dir), "--host", "127.0.0.1", "--port", str(port)]


def serve_ui(workspace_dir: str, *, port: int = 8000) -> int:
    """Run the Evidently UI on the workspace until interrupted; its exit status."""
    if not Path(workspace_dir).is_dir():
        raise FileNotFoundError(f"no Evidently workspace at {workspace_dir} (run `kdrank monitor` first)")
    command = ui_command(workspace_dir, port=port)
    print(f"Evidently UI on http://127.0.0.1:{port} (workspace {workspace_dir}); Ctrl-C stops it", flush=True)
    env = {**os.environ, "DO_NOT_TRACK": os.environ.get("DO_NOT_TRACK", "1")}  # no usage telemetry offline
    # A process started in the background by a non-interactive shell (`nohup ... &`) inherits SIGINT
    # ignored, and Python then never raises KeyboardInterrupt: restore it so Ctrl-C/SIGINT always stops us.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    process = subprocess.Popen(command, env=env)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        return 130
