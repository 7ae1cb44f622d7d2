"""A server start that fails before tritonserver runs gives back what it had set up."""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_data import ports

from serving import layout
from serving.server import ServerConfig, TritonServer


def test_a_start_that_fails_before_the_process_leaves_no_work_folder(exported_repo, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    config = ServerConfig(repository=str(Path(exported_repo[0], layout.LOCAL)), log_path=str(blocker / "t.log"),
                          **ports())
    server = TritonServer(config)
    with pytest.raises(OSError):
        server.start()
    assert server._workdir is None and server._log_handle is None and server._process is None
