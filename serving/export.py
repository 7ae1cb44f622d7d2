"""Export a student checkpoint to ONNX and a versioned Triton model repository (local or gs://).

One ONNX file (dynamic batch and sequence axes) feeds two repository flavours: `production`
(onnxruntime_onnx on GPU with TensorRT, for the NGC Triton image) and `local` (a Python-backend model
running ONNX Runtime on CPU, for the tritonserver bundled with nvidia-pytriton). Both put a Python
tokenizer model (components/pairs.py copied in) and an ensemble in front, so clients send raw text.
The export fails unless ONNX Runtime reproduces the PyTorch scores on a probe batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from components import checkpoint, pairs, storage
from serving import configs, layout
from serving.configs import ServingOptions

log = logging.getLogger(__name__)

TEMPLATES = Path(__file__).parent / "triton_models"
PROBE_TOLERANCE = 1e-4
PROBE_PAIRS = [
    ("drill", "cordless drill 18 volt with two batteries and a charger"),
    ("wasserhahn küche", "Küchenarmatur aus Edelstahl, schwenkbar – 360° drehbar"),
    ("", "empty query still scores"),
    ("led bulb", "warm white " * 200),  # truncated to max_length
    ("照明", "天井照明 LED シーリングライト 調光 調色"),
    ("saw blade", "10 in. 40-tooth carbide blade"),
    ("a", "b"),
]


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def logits_module(model, input_names: list[str]):
    """`model` as a module taking the named int64 tensors positionally and returning logits (for export)."""
    import torch

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(**dict(zip(input_names, tensors, strict=True))).logits

    return Logits().eval()


def export_onnx(model, tokenizer, path: str | Path, *, max_length: int, opset: int) -> dict:
    """Write `model` as ONNX with dynamic batch and sequence axes; returns what the manifest records."""
    import torch

    sample = pairs.encode_pairs(tokenizer, ["cordless drill", "lamp"], ["18 volt drill kit", "led"],
                                role=pairs.STUDENT, max_length=max_length)
    input_names = [n for n in tokenizer.model_input_names if n in sample]
    batch, seq = torch.export.Dim("batch", min=1, max=4096), torch.export.Dim("sequence", min=1, max=4096)
    dynamic = tuple({0: batch, 1: seq} for _ in input_names)
    args = tuple(sample[n] for n in input_names)
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(logits_module(model, input_names), args, str(path), input_names=input_names,
                          output_names=[layout.ONNX_OUTPUT], dynamic_shapes=(dynamic,), opset_version=opset,
                          dynamo=True, external_data=False, verbose=False)
    return {"inputs": input_names, "output": layout.ONNX_OUTPUT, "opset": opset,
            "exporter": f"torch.onnx dynamo (torch {torch.__version__})"}


def probe_onnx(path: str | Path, model, tokenizer, input_names: list[str], *, max_length: int) -> float:
    """Largest |ONNX Runtime - PyTorch| score over probe batches of 1, 3 and 7 mixed-length pairs."""
    import numpy as np
    import onnxruntime as ort
    import torch

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst = 0.0
    for size in (1, 3, len(PROBE_PAIRS)):
        qs, ps = zip(*PROBE_PAIRS[:size], strict=True)
        enc = pairs.encode_pairs(tokenizer, qs, ps, role=pairs.STUDENT, max_length=max_length)
        with torch.inference_mode():
            expected = model(**enc).logits.float().numpy()
        got = session.run(None, {n: enc[n].numpy().astype(np.int64) for n in input_names})[0]
        worst = max(worst, float(np.abs(got - expected).max()))
    return worst


def existing_versions(output: str, model_name: str) -> list[int]:
    """Integer versions of `model_name` present in any flavour under `output` (local or gs://)."""
    if not storage.exists(output) and not storage.is_gcs(output):
        return []
    pattern = re.compile(rf"^(?:{'|'.join(layout.FLAVOURS)})/{re.escape(model_name)}/(\d+)/")
    found = {int(m.group(1)) for rel in storage.list_files(output) if (m := pattern.match(rel))}
    return sorted(found)


def _write_flavour(root: Path, flavour: str, *, name: str, version: int, input_names: list[str],
                   onnx_path: Path, tokenizer, max_length: int, manifest: dict, opts: ServingOptions) -> None:
    """Stage one flavour's three models (config.pbtxt + version directory each) under `root`/flavour."""
    base = root / flavour
    tok_dir = base / layout.tokenizer_model(name) / str(version)
    tokenizer.save_pretrained(str(tok_dir / layout.TOKENIZER_DIR))
    shutil.copy(Path(pairs.__file__), tok_dir / layout.PAIRS_PY)
    shutil.copy(TEMPLATES / "tokenizer.py", tok_dir / layout.MODEL_PY)
    pad_multiple = opts.gpu_pad_multiple if flavour == layout.PRODUCTION else 1
    (base / layout.tokenizer_model(name) / layout.CONFIG).write_text(
        configs.tokenizer_config(name, input_names, max_length=max_length, opts=opts, pad_multiple=pad_multiple))

    scorer_dir = base / layout.scorer_model(name) / str(version)
    scorer_dir.mkdir(parents=True)
    shutil.copy(onnx_path, scorer_dir / layout.ONNX_FILE)
    if flavour == layout.LOCAL:
        shutil.copy(TEMPLATES / "onnx_cpu.py", scorer_dir / layout.MODEL_PY)
        scorer_config = configs.local_scorer_config(name, input_names, max_length=max_length, opts=opts)
    else:
        scorer_config = configs.production_scorer_config(name, input_names, max_length=max_length, opts=opts)
    (base / layout.scorer_model(name) / layout.CONFIG).write_text(scorer_config)

    ensemble_dir = base / name / str(version)
    ensemble_dir.mkdir(parents=True)  # holds the manifest: an empty directory would not survive GCS
    (ensemble_dir / layout.MANIFEST).write_text(json.dumps(manifest, indent=2))
    (base / name / layout.CONFIG).write_text(configs.ensemble_config(name, input_names, opts=opts))


def _publish(stage: Path, output: str, flavours: Sequence[str], name: str, version: int) -> None:
    """Move the staged version into `output`: version directories first, then configs, manifest last."""
    if storage.is_gcs(output):
        # each object upload is atomic; the configs go after every version file (Triton's poll finds a model
        # whole or not at all), manifest.json after both
        configs = tuple(rel for rel in storage.list_files(stage / "repo") if Path(rel).name == layout.CONFIG)
        storage.upload_dir(stage / "repo", output, last=configs)
        storage.write_bytes(storage.join(output, layout.MANIFEST), (stage / layout.MANIFEST).read_bytes())
        return
    for flavour in flavours:
        for model in layout.model_names(name):
            src = stage / "repo" / flavour / model
            with storage.atomic_dir(storage.join(output, flavour, model, str(version))) as tmp:
                shutil.copytree(src / str(version), tmp, dirs_exist_ok=True)
            storage.write_bytes(storage.join(output, flavour, model, layout.CONFIG),
                                (src / layout.CONFIG).read_bytes())
    storage.write_bytes(storage.join(output, layout.MANIFEST), (stage / layout.MANIFEST).read_bytes())


def export_student(model_dir: str, output: str, *, model_name: str = layout.DEFAULT_MODEL_NAME,
                   version: int | None = None, max_length: int | None = None, opset: int = 18,
                   flavours: Sequence[str] = layout.FLAVOURS, options: ServingOptions | None = None) -> dict:
    """Export the student at `model_dir` as version `version` (next free one when None) under `output`.

    Returns the manifest (also written to `output`/manifest.json and the ensemble's version directory).
    """
    import torch

    from components.scoring import check_max_length, load_classifier

    opts = options or ServingOptions()
    if max_length is not None:
        check_max_length(max_length, option="max_length (--max-length)")
    unknown = [f for f in flavours if f not in layout.FLAVOURS]
    if unknown or not flavours:
        raise ValueError(f"flavours must be a non-empty subset of {layout.FLAVOURS}, got {list(flavours)}")
    taken = existing_versions(output, model_name)
    if version is None:
        version = (max(taken) + 1) if taken else 1
    elif version in taken:
        raise FileExistsError(f"{output} already holds version {version} of {model_name}; "
                              "omit --version to export the next free one")
    if version < 1:
        raise ValueError(f"version must be >= 1, got {version}")

    with storage.local_dir(model_dir) as local, tempfile.TemporaryDirectory(prefix="kdrank-export-") as tmp:
        info = checkpoint.read_info(local)
        if info.role != pairs.STUDENT:
            raise ValueError(f"{model_dir} is a {info.role} checkpoint; only students are served")
        max_length = info.max_length if max_length is None else max_length
        tokenizer, model = load_classifier(local, role=pairs.STUDENT, dtype=torch.float32)
        check_max_length(max_length, tokenizer, model, option="max_length (--max-length)", source=str(model_dir))
        model.eval()
        if model.config.num_labels != 1:
            raise ValueError(f"{model_dir}: a student has one output (num_labels=1), "
                             f"this model has {model.config.num_labels}")
        stage = Path(tmp)
        onnx_path = stage / layout.ONNX_FILE
        log.info("exporting %s to ONNX (opset %d, max_length %d)", model_dir, opset, max_length)
        onnx_info = export_onnx(model, tokenizer, onnx_path, max_length=max_length, opset=opset)
        diff = probe_onnx(onnx_path, model, tokenizer, onnx_info["inputs"], max_length=max_length)
        if diff > PROBE_TOLERANCE:
            raise RuntimeError(f"exported ONNX differs from PyTorch by {diff:.2e} (> {PROBE_TOLERANCE}) "
                               "on the probe batch; the graph is wrong, not serving it")
        manifest = {
            "model_name": model_name,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "source_checkpoint": str(model_dir),
            "source_info": {k: v for k, v in dataclasses.asdict(info).items() if k != "training"},
            "max_length": max_length,
            "onnx": {**onnx_info, "file": layout.ONNX_FILE, "sha256": sha256_file(onnx_path),
                     "bytes": onnx_path.stat().st_size, "probe_max_abs_diff": diff},
            "models": {"ensemble": model_name, "tokenizer": layout.tokenizer_model(model_name),
                       "scorer": layout.scorer_model(model_name)},
            "request": {"inputs": [layout.QUERY, layout.PRODUCT], "output": layout.SCORE},
            "flavours": list(flavours),
            "serving_options": dataclasses.asdict(opts),
        }
        manifest = json.loads(json.dumps(manifest))  # the returned dict equals what is written
        for flavour in flavours:
            _write_flavour(stage / "repo", flavour, name=model_name, version=version,
                           input_names=onnx_info["inputs"], onnx_path=onnx_path, tokenizer=tokenizer,
                           max_length=max_length, manifest=manifest, opts=opts)
        (stage / layout.MANIFEST).write_text(json.dumps(manifest, indent=2))
        _publish(stage, output, flavours, model_name, version)
    log.info("exported %s version %d to %s (%s)", model_name, version, output, ", ".join(flavours))
    return manifest
