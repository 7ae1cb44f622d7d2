"""`kdrank serve` as an operator runs it: a new version exported while serving is picked up by an
explicit load, and Ctrl-C stops the server cleanly and frees its ports."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from serving_data import make_pairs, ports, spread_student

from serving import layout
from serving.client import RerankClient
from serving.export import export_student
from serving.server import port_in_use

ROOT = Path(__file__).resolve().parents[2]


def _read_lines(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line)


def _processes_with(marker: str) -> list[str]:
    """Command lines of live processes containing `marker` (the server's shm prefix names its stubs)."""
    found = []
    for proc_dir in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc_dir / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(cmdline)
    return found


def _drain(lines: queue.Queue, reader: threading.Thread) -> str:
    """Everything still queued once the reader has hit the end of the output (call after the process ended)."""
    reader.join(timeout=30)
    assert not reader.is_alive(), "the CLI's output stayed open after it exited"
    out = []
    while True:
        try:
            out.append(lines.get_nowait())
        except queue.Empty:
            return "".join(out)


def _wait_for(lines: queue.Queue, text: str, deadline_s: float, proc: subprocess.Popen) -> list[str]:
    seen, end = [], time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        seen.append(line)
        if text in line:
            return seen
    raise AssertionError(f"'{text}' not printed within {deadline_s} s; output:\n{''.join(seen)}")


@pytest.mark.slow
def test_serve_cli_loads_a_new_version_and_stops_on_ctrl_c(student_dir, reference_scorer, tmp_path):
    repo = tmp_path / "repo"
    export_student(student_dir, str(repo), flavours=(layout.LOCAL,))
    chosen = ports()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "serving.cli", "serve", "--repository", str(repo),
               "--http-port", str(chosen["http_port"]), "--grpc-port", str(chosen["grpc_port"]),
               "--metrics-port", str(chosen["metrics_port"])]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    lines: queue.Queue = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(proc.stdout, lines), daemon=True)
    reader.start()
    try:
        _wait_for(lines, "tritonserver ready", 300, proc)
        grpc_url = f"127.0.0.1:{chosen['grpc_port']}"
        queries, products = make_pairs(40, seed=5)
        with RerankClient(grpc_url) as client:
            first = client.score(queries, products)
            assert client.last_version == "1"
            expected = reference_scorer.score(queries, products, progress=False).score
            np.testing.assert_allclose(first, expected, atol=1e-4, rtol=0)  # the plain local flavour

            shifted = spread_student(student_dir, tmp_path / "student-v2", bias_shift=1.0)
            assert export_student(shifted, str(repo), flavours=(layout.LOCAL,))["version"] == 2
            assert client.score(queries[:3], products[:3]) is not None and client.last_version == "1"

            control = grpcclient.InferenceServerClient(grpc_url)
            control.load_model(layout.DEFAULT_MODEL_NAME)
            second = client.score(queries, products)
            assert client.last_version == "2"
            ready = {(m.name, m.version) for m in control.get_model_repository_index().models
                     if m.state == "READY"}
            control.close()
        np.testing.assert_allclose(second, first + 1.0, atol=1e-4, rtol=0)  # v2 = v1 with bias + 1
        scorer = layout.scorer_model(layout.DEFAULT_MODEL_NAME)
        assert (scorer, "2") in ready and (scorer, "1") not in ready

        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
        output = _drain(lines, reader)
        assert code == 0 and "tritonserver stopped" in output, output
        assert not any(port_in_use("127.0.0.1", p) for p in chosen.values())
        assert not _processes_with(f"x{chosen['grpc_port']}_"), "Python backend stubs outlived the server"
        assert not list(Path("/dev/shm").glob(f"kdrank*x{chosen['grpc_port']}_*")), "shared memory left behind"
    finally:
        if proc.poll() is None:  # the CLI stops its tritonserver on SIGINT; kill only as a last resort
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
