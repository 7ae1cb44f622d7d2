"""tests/benchmarks/quantised_start.py: the GGUF round trip of a student's weights, and its paired report."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from kdrank_testing import load_benchmark, save_tiny_student
from safetensors.torch import load_file

from components import schema
from components.evaluate import SCORE, ranking_metrics


@pytest.fixture(scope="module")
def quantised_start():
    return load_benchmark("quantised_start")


def test_make_rounds_linear_layers_to_q4_1_and_embeddings_to_q8_0_and_keeps_the_rest(tmp_path, quantised_start):
    source = save_tiny_student(tmp_path / "fp32")
    record = quantised_start.quantise_folder(source, tmp_path / "q4", label="tiny")
    assert record["source"] == source and record["source_name"] == "tiny"
    before, after = load_file(f"{source}/model.safetensors"), load_file(str(tmp_path / "q4" / "model.safetensors"))
    assert set(before) == set(after)
    for name, tensor in before.items():
        kind = record["codecs"].get(name)
        if kind is None:  # norms, biases, integer buffers: bit for bit
            assert torch.equal(tensor, after[name]), name
            continue
        assert kind == ("Q8_0" if name.startswith("bert.embeddings") else "Q4_1"), name
        blocks = after[name].numpy().reshape(-1, 32)
        levels = max(len(np.unique(b)) for b in blocks)
        assert levels <= (16 if kind == "Q4_1" else 256), (name, levels)
        error = (after[name] - tensor).abs().numpy().reshape(-1, 32)
        values = tensor.numpy().reshape(-1, 32)
        if kind == "Q4_1":  # 16 levels from the block's minimum to its maximum
            step = np.ptp(values, axis=1, keepdims=True) / 15
        else:  # 255 levels symmetric about 0, up to the block's largest magnitude
            step = np.abs(values).max(axis=1, keepdims=True) / 127
        assert (error <= step * 0.51 + 1e-3 * np.abs(values).max(axis=1, keepdims=True)).all(), name
        assert error.max() > 0, name
    assert record["summary"]["Q4_1"]["relative_rms_error"] > record["summary"]["Q8_0"]["relative_rms_error"] > 0
    assert json.loads((tmp_path / "q4" / "quantised_start.json").read_text()) == record
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "q4")
    assert torch.isfinite(model(input_ids=torch.tensor([[101, 2000, 102]])).logits).all()


def test_make_refuses_an_existing_output_and_a_folder_without_safetensors(tmp_path, quantised_start):
    source = save_tiny_student(tmp_path / "fp32")
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken exists"):
        quantised_start.quantise_folder(source, tmp_path / "taken")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="has no model.safetensors"):
        quantised_start.quantise_folder(tmp_path / "empty", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="not a multiple of Q4_1's block of 32"):
        quantised_start.round_trip("w", torch.ones(3, 40), "Q4_1")


def test_compare_pairs_the_two_starts_over_the_same_test_pairs(quantised_start):
    rng = np.random.default_rng(3)
    base = pd.DataFrame({schema.QUERY_ID: np.repeat(["a", "b", "c"], 5), schema.PRODUCT_ID: list("abcdefghijklmno"),
                         schema.GRADE: rng.choice([0.0, 1.0, 2.0], 15)})
    fp32 = base.assign(**{SCORE: base[schema.GRADE] + rng.normal(scale=0.2, size=15)})
    rounded = base.assign(**{SCORE: rng.normal(size=15)})
    row = quantised_start.compare(fp32, rounded, "student")
    assert row["fp32_pairwise"] == pytest.approx(ranking_metrics(fp32, SCORE)["pairwise_accuracy"])
    assert row["minus"] == pytest.approx(row["q_pairwise"] - row["fp32_pairwise"])
    assert "| student | " in quantised_start.table([row])
    with pytest.raises(ValueError, match="student: the two runs scored other test pairs"):
        quantised_start.compare(fp32, rounded.iloc[::-1], "student")
