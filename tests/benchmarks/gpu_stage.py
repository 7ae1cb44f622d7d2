"""Stage what a lent GPU machine needs under .gpu/ (git-ignored): it has torch, transformers and pandas,
but none of kdrank's weight packages, no registry, and takes at most 64 MiB per call.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/gpu_stage.py

writes three carry groups, each under 64 MiB, to send over three back-to-back device calls (a carried
path stays on the machine while it is warm; name only the new group each time):
  .gpu/a: MiniLM-L6 as fp16 safetensors (gpu_run.sh restores fp32), the wheels the core flow needs
          there (gguf, bm25s; it has peft and accelerate) and a copy of the Home Depot CSV;
  .gpu/b: the first half of the SmolLM2-135M GGUF file, and the wheels `kdrank run` adds (kfp and
          the Google clients and cryptography it imports, ~9 MiB), for Python 3.12 as that machine has;
  .gpu/c: the second half of the GGUF file.
Then run tests/benchmarks/gpu_run.sh there (see docs/results.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import torch
from benchlib import HOMEDEPOT, ROOT

from components import models

CORE_WHEELS = ["gguf", "bm25s"]
# kfp and what it imports that the GPU image lacks (it has protobuf, pyyaml, click, requests, urllib3, ...).
PIPELINE_WHEELS = ["kfp", "kfp-kubernetes", "kfp-pipeline-spec", "kfp-server-api", "docstring_parser",
                   "google-api-core", "google-auth", "google-cloud-core", "google-cloud-storage", "google-crc32c",
                   "google-resumable-media", "googleapis-common-protos", "proto-plus", "kubernetes", "oauthlib",
                   "requests-oauthlib", "requests-toolbelt", "websocket-client", "pyasn1", "pyasn1_modules",
                   # kfp's generated code needs protobuf >= 6.31 (the image's version is not known here);
                   # kfp.cli imports click-option-group; kfp's client imports google.auth's crypt module,
                   # which needs cryptography (absent there: `import kfp` failed on the first GPU session).
                   "protobuf", "click-option-group", "cryptography", "cffi", "pycparser"]
# The GPU image's python3 is 3.12; KDRANK_GPU_PYTHON=3.11 stages for this machine's Python (a CPU dry run).
PLATFORM = ["--python-version", os.environ.get("KDRANK_GPU_PYTHON", "3.12"), "--implementation", "cp",
            "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux_2_17_x86_64",
            "--platform", "manylinux2014_x86_64"]
LIMIT = 64 * 2**20


def fetch_wheels(dest, names: list[str]) -> None:
    """Each package at the version installed here, as a wheel for the GPU machine's Python 3.12; built
    from the source distribution where PyPI has no wheel (kfp-server-api)."""
    pip = [sys.executable, "-m", "pip"]
    for name in names:
        spec = f"{name}=={version(name)}"
        got = subprocess.run([*pip, "download", "-q", "--no-deps", "--only-binary=:all:", *PLATFORM, "-d", str(dest),
                              spec], capture_output=True)
        if got.returncode:
            subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(dest), spec], check=True)


def main() -> None:
    from transformers import AutoModel, AutoTokenizer

    out = ROOT / ".gpu"
    shutil.rmtree(out, ignore_errors=True)
    a, b, c = out / "a", out / "b", out / "c"
    minilm = models.default_student_path()
    model = AutoModel.from_pretrained(minilm, dtype=torch.float16)
    model.save_pretrained(a / "minilm")
    AutoTokenizer.from_pretrained(minilm).save_pretrained(a / "minilm")
    fetch_wheels(a / "wheels", CORE_WHEELS)
    fetch_wheels(b / "wheels", PIPELINE_WHEELS)
    (a / "data").mkdir(parents=True)
    shutil.copy(HOMEDEPOT, a / "data" / "train.csv")
    gguf = models.packaged_teacher_gguf().read_bytes()
    half = len(gguf) // 2
    for folder, part in ((b, gguf[:half]), (c, gguf[half:])):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"teacher.gguf.{folder.name}").write_bytes(part)
    for folder in (a, b, c):
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"{folder.relative_to(ROOT)}: {size / 2**20:.1f} MiB")
        if size > LIMIT:
            raise SystemExit(f"{folder} is over the 64 MiB a device call carries")


if __name__ == "__main__":
    main()
