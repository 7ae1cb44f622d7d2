"""Batched scoring of pairs with any kdrank checkpoint (teacher, teacher ensemble or student).

Pairs are sorted by length and padded per batch (dynamic padding) under `torch.inference_mode`,
with bf16 autocast on GPU; results come back in input order. The naive mode (pad to max length,
input order) exists only as the benchmark's baseline.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from components import pairs, storage
from components.batching import TokenTable
from components.checkpoint import CheckpointInfo, apply_calibration, read_info
from components.runtime import autocast, pick_device

log = logging.getLogger(__name__)

@dataclass
class Scores:
    score: np.ndarray  # teacher: expected grade; student: raw score
    probs: np.ndarray | None = None  # teacher only: (n, K) grade probabilities


def load_classifier(path: str | Path, *, role: str, num_labels: int | None = None, dtype=None):
    """(tokenizer, model) for a Hugging Face directory, ready for sequence classification."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    kwargs = {} if num_labels is None else {"num_labels": num_labels}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForSequenceClassification.from_pretrained(str(path), **kwargs)
    if role == pairs.TEACHER:
        prepare_decoder_tokenizer(tokenizer, model)
    return tokenizer, model


def token_limit(tokenizer, model) -> tuple[int | None, str]:
    """The most tokens per pair `model` takes, and where that comes from: its position embeddings, and
    the tokenizer's model_max_length where that is a real number (transformers' "unset" is 1e30)."""
    found = {"max_position_embeddings": getattr(model.config, "max_position_embeddings", None),
             "tokenizer model_max_length": getattr(tokenizer, "model_max_length", None)}
    found = {k: v for k, v in found.items() if isinstance(v, int) and 0 < v <= 1_000_000}
    if not found:
        return None, "no limit known"
    return min(found.values()), ", ".join(f"{k} {v}" for k, v in found.items())


def check_max_length(max_length: int, tokenizer=None, model=None, *, option: str = "max_length",
                     source: str = "the model") -> int:
    """`max_length` if at least 1 and within what `model` and `tokenizer` support, else a ValueError."""
    if max_length < 1:
        raise ValueError(f"{option} must be >= 1, got {max_length}")
    if model is not None:
        limit, why = token_limit(tokenizer, model)
        if limit is not None and max_length > limit:
            raise ValueError(f"{option} {max_length} is more than {source} supports: at most {limit} tokens ({why})")
    return max_length


def prepare_decoder_tokenizer(tokenizer, model) -> None:
    """Decoder LLMs often ship without a pad token; classification needs one to find the last token."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model.config.pad_token_id = tokenizer.pad_token_id


class PairScorer:
    """Scores (query, product) pairs with a kdrank checkpoint directory (local or gs://)."""

    def __init__(self, model_dir: str | Path, *, device: str | None = None, max_length: int | None = None):
        self._stack = contextlib.ExitStack()
        local = self._stack.enter_context(storage.local_dir(str(model_dir)))
        self.source = str(model_dir)
        self.info: CheckpointInfo = read_info(local)
        self.role = self.info.role
        self.num_grades = self.info.num_grades
        self.max_length = self.info.max_length if max_length is None else max_length
        self.device = pick_device(device)
        member_dirs = [Path(local, m) for m in self.info.members] or [Path(local)]
        self.members = []
        try:
            check_max_length(self.max_length)
            for member in member_dirs:
                tokenizer, model = load_classifier(member, role=self.role)
                check_max_length(self.max_length, tokenizer, model, source=str(member))
                model.to(self.device).eval()
                self.members.append((tokenizer, model))
        except BaseException:
            self._stack.close()
            raise
        if not storage.is_gcs(model_dir):
            self._stack.close()

    def close(self) -> None:
        self._stack.close()

    def to_grade(self, raw: np.ndarray) -> np.ndarray:
        """Scores on the 0-based grade scale (identity for teachers, the fitted linear map for students)."""
        if self.role == pairs.TEACHER:
            return np.asarray(raw, dtype=np.float64)
        return apply_calibration(raw, self.info.calibration)

    def score(self, queries: Sequence[str], products: Sequence[str], *, batch_size: int = 64,
              naive: bool = False, progress: bool = True, desc: str | None = None) -> Scores:
        queries, products = list(queries), list(products)
        if len(queries) != len(products):
            raise ValueError(f"{len(queries)} queries but {len(products)} products")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(queries)
        tables = None
        if naive:
            order = np.arange(n)
        else:  # tokenise once, unpadded, and sort by exact token length so each batch pads little
            tables = [TokenTable.encode(tok, queries, products, role=self.role, max_length=self.max_length)
                      for tok, _ in self.members]
            order = np.argsort(tables[0].lengths, kind="stable")
        # Outputs stay on the device until the end: no host sync per batch, so batches queue back to back.
        outputs: list[list[torch.Tensor]] = [[] for _ in self.members]
        bar = tqdm(total=n, desc=desc or f"scoring ({self.role})", unit="pair", disable=not progress,
                   leave=False)
        with torch.inference_mode(), autocast(self.device):
            for start in range(0, n, batch_size):
                idx = order[start:start + batch_size]
                for m, (tok, model) in enumerate(self.members):
                    if tables is None:  # naive baseline: tokenise per batch, pad to max_length
                        batch = pairs.encode_pairs(tok, [queries[i] for i in idx], [products[i] for i in idx],
                                                   role=self.role, max_length=self.max_length,
                                                   padding="max_length").to(self.device)
                    else:
                        batch = tables[m].batch(idx, self.device)
                    logits = model(**batch).logits.float()
                    outputs[m].append(torch.softmax(logits, dim=-1) if self.role == pairs.TEACHER else logits)
                bar.update(len(idx))
        results = []
        for member_outputs in outputs:
            result = np.zeros((n, self.num_grades if self.role == pairs.TEACHER else 1), dtype=np.float32)
            if n:
                result[order] = torch.cat(member_outputs).cpu().numpy()
            results.append(result)
        bar.close()
        if self.role == pairs.TEACHER:
            probs = np.mean(results, axis=0).astype(np.float64)
            return Scores(score=probs @ np.arange(self.num_grades, dtype=np.float64), probs=probs)
        return Scores(score=results[0][:, 0].astype(np.float64))


def _with_json_lists(frame):
    """`frame` with list cells (teacher_probs, grade_dist) as JSON text, as read_pairs parses them in CSV."""
    def is_list(value) -> bool:
        return isinstance(value, list | tuple | np.ndarray)

    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object and frame[column].map(is_list).any():
            frame[column] = [json.dumps(np.asarray(v).tolist()) if is_list(v) else v for v in frame[column]]
    return frame


def score_file(model_dir: str, input_uri: str, output_uri: str, *, fmt: str | None = None,
               batch_size: int = 64, device: str | None = None) -> str:
    """Score every (query, product_text) row of a pairs file; write it back with score columns.

    Teachers add `teacher_probs` (JSON lists in CSV) and `teacher_score`; students add `student_score`
    (raw) and `student_grade` (on the grade scale). The output format follows the output name's
    extension (.csv, .jsonl, .parquet; CSV and JSONL gzip-compressed when it ends in .gz), checked
    before anything is scored. An empty query or product text is an error naming its row.
    """
    from components import data, schema

    out_fmt = data.infer_format(output_uri)
    gzipped = str(output_uri).lower().endswith(".gz")
    if gzipped and out_fmt == "parquet":
        raise schema.DataError("gzip applies to CSV and JSONL output; Parquet is compressed already",
                               path=output_uri)
    mapping = data.PRESETS.get(fmt or "")
    frame = data.read_raw(input_uri, fmt, mapping.encoding if mapping else "utf-8")
    if mapping is not None:
        frame = frame.rename(columns={mapping.query: schema.QUERY, mapping.product_text: schema.PRODUCT_TEXT,
                                      mapping.product_id: schema.PRODUCT_ID})
    schema.require_columns(frame, [schema.QUERY, schema.PRODUCT_TEXT], path=input_uri)
    if frame.empty:
        raise schema.DataError("no rows to score", path=input_uri)
    for column in (schema.QUERY, schema.PRODUCT_TEXT):
        blank = schema.blank_rows(frame[column])
        if blank.any():
            positions = np.flatnonzero(blank)
            more = f" ({len(positions) - 1} more rows like it)" if len(positions) > 1 else ""
            raise schema.DataError(f"empty {column}; every row needs one to be scored{more}", path=input_uri,
                                   row=int(positions[0]) + 1, column=column)
    scorer = PairScorer(model_dir, device=device)
    result = scorer.score(frame[schema.QUERY].astype(str).tolist(),
                          frame[schema.PRODUCT_TEXT].astype(str).tolist(), batch_size=batch_size)
    if scorer.role == pairs.TEACHER:
        frame[schema.TEACHER_PROBS] = list(result.probs)
        frame[schema.TEACHER_SCORE] = result.score
    else:
        frame[schema.STUDENT_SCORE] = result.score
        frame["student_grade"] = scorer.to_grade(result.score)
    if out_fmt == "parquet":
        data.write_table(frame, output_uri)
    else:
        if out_fmt == "csv":
            text = _with_json_lists(frame).to_csv(index=False)
        else:
            text = frame.to_json(orient="records", lines=True, force_ascii=False)
        raw = text.encode("utf-8")
        storage.write_bytes(output_uri, gzip.compress(raw) if gzipped else raw)
    log.info("scored %d pairs with %s -> %s", len(frame), model_dir, output_uri)
    return output_uri
