"""Stage what a lent GPU machine needs under .gpu/ (git-ignored): it has torch, transformers and pandas,
but none of kdrank's weight packages, no registry, and takes at most 64 MiB per call, the checkout's
tracked files (and untracked ones git does not ignore) included.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/gpu_stage.py

writes carry groups, each under 64 MiB with the checkout beside it, to send over back-to-back device
calls (a carried path stays on the machine while it is warm; name only the new group each time):
  .gpu/a: MiniLM-L6 as fp16 safetensors (gpu_run.sh restores fp32), the wheels the core flow needs
          there (gguf, bm25s; it has peft and accelerate) and the Home Depot CSV, gzip-compressed;
          when the checkout leaves too little room beside them (the results archive's teacher labels
          grow it, ~7 MiB a 16x set), MiniLM's weights are cut into parts and the rest go to .gpu/a2, ...;
  .gpu/b, .gpu/c, ...: the SmolLM2-135M GGUF file in as many parts as the room beside the checkout
          needs (two while the checkout is small);
  .gpu/k: the wheels `kdrank run` adds (kfp and the Google clients and cryptography it imports,
          ~9 MiB), for the `check` and `pipeline` steps only.
All for Python 3.12, as that machine has. Then run tests/benchmarks/gpu_run.sh there (docs/results/next-gpu-session.md).
"""

from __future__ import annotations

import gzip
import math
import os
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

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
LIMIT = int(os.environ.get("KDRANK_GPU_LIMIT", 64 * 2**20))  # lower it to dry-run the splitting here
SPARE = 2**20  # kept free in every call


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


def tree_size() -> int:
    """Bytes every device call sends beside its carry: the tracked files and the untracked ones git does not
    ignore."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    return sum((ROOT / name).stat().st_size for name in set(listed) if name and (ROOT / name).is_file())


def room(tree: int, limit: int = LIMIT) -> int:
    """Bytes a carry group may hold beside the checkout in one call."""
    left = limit - tree - SPARE
    if left < 8 * 2**20:
        raise SystemExit(f"the checkout alone sends {tree / 2**20:.1f} MiB a call: too little room for the carries")
    return left


def part_count(size: int, beside: int, space: int) -> int:
    """Into how many equal parts a file of `size` bytes is cut so that the first fits in a group that already
    holds `beside` bytes, and each other part in a group of its own, each group within `space` bytes."""
    if size + beside <= space:
        return 1
    if beside >= space:
        raise SystemExit(f"{beside / 2**20:.1f} MiB must travel with the first part, more than the "
                         f"{space / 2**20:.1f} MiB a call has room for")
    return math.ceil(size / (space - beside))


def write_parts(data: bytes, name: str, folders: list[Path]) -> None:
    """`data` cut into len(folders) equal parts, folder i holding NAME.part{i+1}of{n} (gpu_run.sh joins them)."""
    n = len(folders)
    step = math.ceil(len(data) / n)
    for i, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{name}.part{i + 1}of{n}").write_bytes(data[i * step:(i + 1) * step])


def folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    from transformers import AutoModel, AutoTokenizer

    out = ROOT / ".gpu"
    shutil.rmtree(out, ignore_errors=True)
    a, k = out / "a", out / "k"
    minilm = models.default_student_path()
    model = AutoModel.from_pretrained(minilm, dtype=torch.float16)
    model.save_pretrained(a / "minilm")
    AutoTokenizer.from_pretrained(minilm).save_pretrained(a / "minilm")
    fetch_wheels(a / "wheels", CORE_WHEELS)
    fetch_wheels(k / "wheels", PIPELINE_WHEELS)
    (a / "data").mkdir(parents=True)
    (a / "data" / "train.csv.gz").write_bytes(gzip.compress(Path(HOMEDEPOT).read_bytes(), mtime=0))
    tree = tree_size()
    space = room(tree)
    # MiniLM's weights in parts when .gpu/a cannot hold them whole: the first beside the rest of .gpu/a
    weights = a / "minilm" / "model.safetensors"
    n = part_count(weights.stat().st_size, folder_size(a) - weights.stat().st_size, space)
    if n > 1:
        data = weights.read_bytes()
        weights.unlink()
        a_groups = [a, *(out / f"a{i}" for i in range(2, n + 1))]
        write_parts(data, "minilm.safetensors", a_groups)
    else:
        a_groups = [a]
    gguf = models.packaged_teacher_gguf().read_bytes()
    groups = [out / chr(ord("b") + i) for i in range(part_count(len(gguf), 0, space))]
    write_parts(gguf, "teacher.gguf", groups)
    print(f"the checkout: {tree / 2**20:.1f} MiB, sent with every call; carry, one call each, in this order:")
    for folder in (*a_groups, *groups, k):
        size = folder_size(folder)
        print(f"{folder.relative_to(ROOT)}: {size / 2**20:.1f} MiB, {(size + tree) / 2**20:.1f} MiB with the checkout")
        if size + tree > LIMIT:
            raise SystemExit(f"{folder} and the checkout are over the {LIMIT / 2**20:.0f} MiB a device call carries")


if __name__ == "__main__":
    main()
