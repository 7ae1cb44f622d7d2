"""History: snapshots appended to a local Evidently workspace, `kdrank monitor add`, and the real UI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import monitor_traffic as traffic
import pytest

from monitoring import report, workspace
from monitoring.config import load_thresholds
from pipelines.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def snapshot():
    reference, current = traffic.scored_frame(200, 4, seed=1), traffic.scored_frame(150, 4, seed=2)
    snap, _ = report.run_report(current, reference, load_thresholds(None, ["text_drift.enabled=false"]),
                                with_source=False, name="window test")
    return snap


def test_runs_accumulate_in_one_project_with_a_dashboard(snapshot, tmp_path):
    from evidently.ui.workspace import Workspace

    first = workspace.add_to_workspace(snapshot, str(tmp_path))
    second = workspace.add_to_workspace(snapshot, str(tmp_path))
    assert first["project_id"] == second["project_id"] and first["snapshot_id"] != second["snapshot_id"]
    ws = Workspace(str(tmp_path))
    assert len(ws.list_runs(first["project_id"])) == 2
    titles = [p.title for p in ws.get_dashboard(first["project_id"]).panels]
    assert any("error on the grade scale" in t for t in titles) and len(titles) == 4


def test_monitor_add_imports_saved_snapshots(snapshot, tmp_path, capsys):
    from evidently.ui.workspace import Workspace

    saved = tmp_path / "snapshot.json"
    saved.write_text(snapshot.dumps())
    assert main(["monitor", "add", str(saved), str(saved), "--workspace", str(tmp_path / "ws")]) == 0
    ws = Workspace(str(tmp_path / "ws"))
    [project] = ws.search_project(workspace.PROJECT_NAME)
    assert len(ws.list_runs(project.id)) == 2
    assert capsys.readouterr().out.count("snapshot ") == 2


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


@pytest.mark.slow
def test_monitor_ui_serves_the_workspace_on_loopback(snapshot, tmp_path):
    added = workspace.add_to_workspace(snapshot, str(tmp_path / "ws"))
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    output = tmp_path / "ui.log"  # a file, not a pipe: a server that logs every request never blocks on it
    with open(output, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "monitor", "ui", "--workspace",
                                    str(tmp_path / "ws"), "--port", str(port)], env=env, cwd=tmp_path,
                                   stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, projects = time.monotonic() + 90, None
        while time.monotonic() < deadline and process.poll() is None:
            try:
                projects = get_json(f"http://127.0.0.1:{port}/api/projects")
                break
            except OSError:
                time.sleep(0.5)
        assert projects is not None, output.read_text(errors="replace") or "no answer"
        assert [p["name"] for p in projects] == [workspace.PROJECT_NAME]
        snapshots = get_json(f"http://127.0.0.1:{port}/api/projects/{added['project_id']}/snapshots")
        assert [s["id"] for s in snapshots] == [added["snapshot_id"]]
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)  # `kdrank monitor ui` stops its Evidently server on Ctrl-C
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert process.returncode == 130


def test_ui_on_a_missing_workspace_is_a_clear_error(tmp_path, capsys):
    assert main(["monitor", "ui", "--workspace", str(tmp_path / "nothing")]) == 2
    assert "no Evidently workspace" in capsys.readouterr().err
