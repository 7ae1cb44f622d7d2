"""Export: ONNX graph parity, repository layout, manifest, configs valid as Triton ModelConfig, gs://."""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from serving_data import make_pairs
from tritonclient.grpc import model_config_pb2

from components import pairs, storage
from serving import cli, layout
from serving.configs import ServingOptions
from serving.export import existing_versions, export_student

STRING, INT64, FP32 = (model_config_pb2.DataType.Value(n) for n in ("TYPE_STRING", "TYPE_INT64", "TYPE_FP32"))


def parse_config(text: str) -> model_config_pb2.ModelConfig:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def load_configs(root: str, flavour: str) -> dict[str, model_config_pb2.ModelConfig]:
    return {model: parse_config(storage.read_text(storage.join(root, flavour, model, layout.CONFIG)))
            for model in layout.model_names(layout.DEFAULT_MODEL_NAME)}


@pytest.mark.parametrize("flavour", layout.FLAVOURS)
def test_every_config_is_a_valid_triton_model_config(exported_repo, flavour):
    root, manifest = exported_repo
    name = layout.DEFAULT_MODEL_NAME
    cfg = load_configs(root, flavour)
    tok, scorer, ensemble = cfg[layout.tokenizer_model(name)], cfg[layout.scorer_model(name)], cfg[name]
    input_names = manifest["onnx"]["inputs"]
    assert set(input_names) == {"input_ids", "attention_mask", "token_type_ids"}

    assert tok.backend == "python" and tok.max_batch_size == 512
    text_inputs = [("QUERY", STRING, [1]), ("PRODUCT", STRING, [1])]
    assert [(i.name, i.data_type, list(i.dims)) for i in tok.input] == text_inputs
    assert [(i.name, i.data_type, list(i.dims)) for i in ensemble.input] == text_inputs
    assert [(o.name, o.data_type) for o in tok.output] == [(n, INT64) for n in input_names]
    assert tok.parameters["max_length"].string_value == str(manifest["max_length"])
    assert tok.parameters["pad_multiple"].string_value == ("16" if flavour == layout.PRODUCTION else "1")

    assert [i.name for i in scorer.input] == input_names
    assert [(o.name, o.data_type, list(o.dims)) for o in scorer.output] == [("score", FP32, [1])]
    assert list(scorer.dynamic_batching.preferred_batch_size) == [128, 256, 512]
    assert scorer.dynamic_batching.max_queue_delay_microseconds == 2000
    if flavour == layout.PRODUCTION:
        assert scorer.platform == "onnxruntime_onnx" and scorer.default_model_filename == layout.ONNX_FILE
        assert scorer.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
        trt = scorer.optimization.execution_accelerators.gpu_execution_accelerator[0]
        assert trt.name == "tensorrt" and trt.parameters["precision_mode"] == "FP16"
        max_shape = f"{input_names[0]}:512x{manifest['max_length']}"
        assert trt.parameters["trt_profile_max_shapes"].startswith(max_shape)
        assert not any(i.allow_ragged_batch for i in scorer.input)  # ORT backend needs equal shapes
    else:
        assert scorer.backend == "python"
        assert all(i.allow_ragged_batch for i in scorer.input)  # model.py pads requests to one width
        assert scorer.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU

    assert ensemble.platform == "ensemble"
    assert [o.name for o in ensemble.output] == ["SCORE"]
    steps = ensemble.ensemble_scheduling.step
    assert [s.model_name for s in steps] == [layout.tokenizer_model(name), layout.scorer_model(name)]
    assert dict(steps[0].output_map) == dict(steps[1].input_map) == {n: n for n in input_names}
    assert dict(steps[1].output_map) == {"score": "SCORE"}


def test_manifest_and_versioned_layout(exported_repo, student_dir):
    root, manifest = exported_repo
    assert json.loads(Path(root, layout.MANIFEST).read_text()) == manifest
    assert manifest["version"] == 1 and manifest["source_checkpoint"] == student_dir
    assert manifest["max_length"] == 64 and manifest["onnx"]["opset"] == 18
    assert manifest["onnx"]["probe_max_abs_diff"] < 1e-4
    for flavour in layout.FLAVOURS:
        onnx_file = Path(root, flavour, layout.scorer_model("kdrank_student"), "1", layout.ONNX_FILE)
        assert hashlib.sha256(onnx_file.read_bytes()).hexdigest() == manifest["onnx"]["sha256"]
        version_manifest = Path(root, flavour, "kdrank_student", "1", layout.MANIFEST)
        assert json.loads(version_manifest.read_text())["version"] == 1
        tokenizer_dir = Path(root, flavour, layout.tokenizer_model("kdrank_student"), "1")
        assert (tokenizer_dir / layout.PAIRS_PY).read_text() == Path(pairs.__file__).read_text()
    assert Path(root, "local", "kdrank_student_onnx", "1", "model.py").is_file()
    assert not Path(root, "production", "kdrank_student_onnx", "1", "model.py").exists()
    assert existing_versions(root, "kdrank_student") == [1]


def test_triton_model_code_imports_nothing_from_kdrank(exported_repo):
    """The repository must run in a Triton image where kdrank is not installed."""
    root = Path(exported_repo[0], "local")
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not [n for n in names if n.split(".")[0] in ("components", "serving", "pipelines")], path


def test_onnx_graph_matches_pytorch_for_any_batch_and_length(exported_repo, reference_scorer):
    """The exported graph (dynamic axes) against the PyTorch student on batches of 1 to 64 pairs."""
    import onnxruntime as ort

    root, manifest = exported_repo
    onnx_file = Path(root, "production", "kdrank_student_onnx", "1", layout.ONNX_FILE)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    input_names = manifest["onnx"]["inputs"]
    queries, products = make_pairs(150, seed=3)
    expected = reference_scorer.score(queries, products, progress=False).score
    tokenizer = reference_scorer.members[0][0]
    got, start = [], 0
    for size in (1, 2, 17, 64, 66):
        enc = pairs.encode_pairs(tokenizer, queries[start:start + size], products[start:start + size],
                                 role="student", max_length=manifest["max_length"], return_tensors="np")
        got.append(session.run(None, {n: enc[n].astype(np.int64) for n in input_names})[0][:, 0])
        start += size
    np.testing.assert_allclose(np.concatenate(got), expected, atol=1e-4, rtol=0)
    assert np.std(expected) > 0.1  # scores spread far beyond the tolerance: the check means something


def test_export_to_gcs_with_the_cli(gcs_emulator, tiny_student_dir, capsys, monkeypatch):
    from google.cloud.storage import Blob

    uploaded, upload = [], Blob.upload_from_filename

    def recorded(blob, *args, **kwargs):  # the real upload, its order noted
        uploaded.append(blob.name)
        return upload(blob, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_filename", recorded)
    uri = f"gs://{gcs_emulator}/serving/repo"
    assert cli.main(["export", "--model", tiny_student_dir, "--output", uri, "--flavour", "production",
                     "--max-batch-size", "256", "--trt-precision", "FP32"]) == 0
    # version files first, then the configs, the manifest last: a poll in between never sees a config
    # without its version
    versions = [i for i, name in enumerate(uploaded) if "/1/" in name]
    configs = [i for i, name in enumerate(uploaded) if name.endswith("/" + layout.CONFIG)]
    assert versions and configs and max(versions) < min(configs)
    assert uploaded[-1].endswith("/" + layout.MANIFEST)
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == 1 and printed["output"] == uri
    files = storage.list_files(uri)
    assert layout.MANIFEST in files
    assert "production/kdrank_student_onnx/1/model.onnx" in files
    assert "production/kdrank_student/1/manifest.json" in files  # the ensemble version dir exists in GCS
    assert not [f for f in files if f.startswith("local/")]
    cfg = load_configs(uri, layout.PRODUCTION)
    scorer = cfg["kdrank_student_onnx"]
    assert scorer.max_batch_size == 256 and list(scorer.dynamic_batching.preferred_batch_size) == [128, 256]
    assert scorer.optimization.execution_accelerators.gpu_execution_accelerator[0].parameters[
        "precision_mode"] == "FP32"
    assert existing_versions(uri, "kdrank_student") == [1]
    with pytest.raises(FileExistsError, match="version 1"):
        export_student(tiny_student_dir, uri, version=1)


def test_export_refuses_what_it_cannot_serve(tiny_teacher_dir, tiny_student_dir, exported_repo, tmp_path):
    with pytest.raises(ValueError, match="teacher checkpoint"):
        export_student(tiny_teacher_dir, str(tmp_path / "out"))
    with pytest.raises(FileExistsError, match="version 1"):
        export_student(tiny_student_dir, exported_repo[0], version=1)
    with pytest.raises(ValueError, match="flavours"):
        export_student(tiny_student_dir, str(tmp_path / "out"), flavours=("cloud",))
    with pytest.raises(ValueError, match="preferred_batch_sizes"):
        ServingOptions(max_batch_size=64, preferred_batch_sizes=(128,))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("max_length", [0, -5, 513, 100_000])
def test_max_length_outside_what_the_model_supports_is_refused_before_writing(tiny_student_dir, tmp_path,
                                                                              max_length):
    out = tmp_path / "out"
    expected = "must be >= 1" if max_length < 1 else "at most 512 tokens .*max_position_embeddings 512"
    with pytest.raises(ValueError, match=rf"max_length \(--max-length\).*{expected}"):
        export_student(tiny_student_dir, str(out), max_length=max_length)
    assert not out.exists()


def test_export_cli_reports_errors_without_a_traceback(student_dir, exported_repo, tmp_path, capsys):
    assert cli.main(["export", "--model", student_dir, "--output", exported_repo[0], "--version", "1"]) == 2
    err = capsys.readouterr().err
    assert "kdrank export: error:" in err and "already holds version 1" in err and "Traceback" not in err
    code = cli.main(["export", "--model", student_dir, "--output", str(tmp_path / "out"), "--max-length", "4096"])
    assert code == 2 and "--max-length" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_default_preferred_batch_sizes_follow_max_batch_size():
    assert ServingOptions(max_batch_size=64).preferred_batch_sizes == (64,)
    assert ServingOptions(max_batch_size=300).preferred_batch_sizes == (128, 256)
    assert ServingOptions().preferred_batch_sizes == (128, 256, 512)
