"""Serving fixtures: the tiny student exported once, and a real tritonserver on it (free ports).

The server fixture waits for readiness under a deadline and always stops the server (process group
included), also when a test fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from serving_data import spread_student, start_server


@pytest.fixture(scope="session")
def student_dir(tiny_student_dir, tmp_path_factory) -> str:
    """The shared tiny student with weights large enough that its scores spread over units."""
    return spread_student(tiny_student_dir, tmp_path_factory.mktemp("spread-student"))


@pytest.fixture(scope="session")
def exported_repo(student_dir, tmp_path_factory) -> tuple[str, dict]:
    """(repository root, manifest) of the tiny student exported as version 1, both flavours."""
    from serving.export import export_student

    root = tmp_path_factory.mktemp("triton") / "repo"
    return str(root), export_student(student_dir, str(root))


@pytest.fixture(scope="session")
def served_repo(exported_repo, tmp_path_factory) -> str:
    """The local flavour with the production flavour's tokenizer config in front (widths padded to a
    multiple of 16), so one server covers both tokenizer settings; the plain local flavour is served
    in test_serving_versions."""
    import shutil

    from serving import layout

    root = tmp_path_factory.mktemp("served") / "repo"
    shutil.copytree(Path(exported_repo[0], layout.LOCAL), root)
    tokenizer = layout.tokenizer_model(layout.DEFAULT_MODEL_NAME)
    shutil.copy(Path(exported_repo[0], layout.PRODUCTION, tokenizer, layout.CONFIG), root / tokenizer)
    return str(root)


@pytest.fixture(scope="session")
def triton_server(served_repo):
    server = start_server(served_repo)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def reference_scorer(student_dir):
    """The parity reference: the PyTorch student through components.scoring.PairScorer."""
    from components.scoring import PairScorer

    return PairScorer(student_dir, device="cpu")
