"""Token tables and length-bucketed batches: the input side of every training and scoring loop.

Pairs are tokenised once (through `pairs.encode_pairs`, the one definition of model input) into a flat
int32 array with offsets; a batch is gathered and padded with numpy, never by the tokenizer inside the
loop. On a GPU the loop then costs the host little more than the model's own kernel launches, and the
padded tensors go over in pinned memory without blocking.

Student tables are built from each distinct query and product text, tokenised once: an augmented set
repeats every query dozens of times and many products too. The pieces are joined the way the tokenizer
joins a pair, with its own truncation and special-token template (read from the tokenizer for each
distinct pair of piece lengths, on which truncation alone depends), so the table is identical to
tokenising every pair through `pairs.encode_pairs` (tests/test_batching.py checks it pair by pair).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from components import pairs

ENCODE_SLICE = 2048  # pairs tokenised per tokenizer call (bounds the fast tokenizer's transient memory)
PROGRESS_FROM = 50_000  # tables of at least this many pairs show a progress bar while tokenising
PAD_MULTIPLE = 8  # padded lengths are rounded up to a multiple of 8: tensor-core shapes, fewer distinct shapes


@dataclass
class TokenTable:
    """Token ids of n pairs, unpadded: row i is ids[offsets[i]:offsets[i + 1]]."""

    ids: np.ndarray  # (total,) int32
    offsets: np.ndarray  # (n + 1,) int64
    token_types: np.ndarray | None  # (total,) int8, for models with segment embeddings (BERT)
    pad_id: int
    pad_left: bool = False

    @classmethod
    def encode(cls, tokenizer, queries: Sequence[str], products: Sequence[str], *, role: str,
               max_length: int) -> TokenTable:
        if len(queries) != len(products):
            raise ValueError(f"{len(queries)} queries but {len(products)} products")
        for what, texts in (("query", queries), ("product text", products)):
            wrong = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
            if wrong is not None:
                raise ValueError(f"{what} {wrong} is {texts[wrong]!r}, not a text: every pair needs a query and a "
                                 "product text")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no pad token")
        pieces = _student_pieces(tokenizer, queries, products, max_length) if role == pairs.STUDENT else None
        if pieces is not None:
            ids, offsets, token_types = pieces
            return cls(ids=ids, offsets=offsets, token_types=token_types, pad_id=int(tokenizer.pad_token_id),
                       pad_left=getattr(tokenizer, "padding_side", "right") == "left")
        ids, types, lengths = [], [], []
        bar = tqdm(total=len(queries), desc=f"tokenising ({role})", unit="pair", leave=False,
                   disable=len(queries) < PROGRESS_FROM)
        for start in range(0, len(queries), ENCODE_SLICE):
            enc = pairs.encode_pairs(tokenizer, list(queries[start:start + ENCODE_SLICE]),
                                     list(products[start:start + ENCODE_SLICE]), role=role, max_length=max_length,
                                     padding=False, return_tensors=None)
            rows = enc["input_ids"]
            lengths.extend(len(row) for row in rows)
            ids.append(np.fromiter((t for row in rows for t in row), dtype=np.int32))
            if "token_type_ids" in enc:
                types.append(np.fromiter((t for row in enc["token_type_ids"] for t in row), dtype=np.int8))
            bar.update(len(rows))
        bar.close()
        offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(
            ids=np.concatenate(ids) if ids else np.zeros(0, np.int32),
            offsets=offsets,
            token_types=np.concatenate(types) if types else None,
            pad_id=int(tokenizer.pad_token_id),
            pad_left=getattr(tokenizer, "padding_side", "right") == "left",
        )

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def batch(self, idx: Sequence[int], device: torch.device | None = None) -> dict[str, torch.Tensor]:
        """Rows `idx` padded to their longest (rounded up to PAD_MULTIPLE): input_ids, attention_mask,
        and token_type_ids where the tokenizer makes them; on `device` (pinned, non-blocking on CUDA)."""
        idx = np.asarray(idx, dtype=np.int64)
        starts, lengths = self.offsets[idx], self.offsets[idx + 1] - self.offsets[idx]
        width = int(-(-lengths.max(initial=1) // PAD_MULTIPLE) * PAD_MULTIPLE)  # ceil to a multiple
        cols = np.arange(width)
        mask = cols[None, :] < lengths[:, None]
        if self.pad_left:
            mask = mask[:, ::-1]
        src = np.where(mask, starts[:, None] + np.cumsum(mask, axis=1) - 1, 0)
        out = {"input_ids": np.where(mask, self.ids[src], self.pad_id).astype(np.int64),
               "attention_mask": mask.astype(np.int64)}
        if self.token_types is not None:
            out["token_type_ids"] = np.where(mask, self.token_types[src], 0).astype(np.int64)
        return {key: to_device(torch.from_numpy(value), device) for key, value in out.items()}


def _flat(encodings) -> tuple[np.ndarray, np.ndarray]:
    """(ids, offsets) of a list of tokenizers Encodings, concatenated."""
    rows = [e.ids for e in encodings]
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    ids = np.fromiter((t for r in rows for t in r), dtype=np.int64, count=int(offsets[-1]))
    return ids, offsets


def _student_pieces(tokenizer, queries: Sequence[str], products: Sequence[str],
                    max_length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None] | None:
    """(ids, offsets, token types) of the student's pairs, from each distinct text tokenised once (see
    the module docstring); None where the tokenizer is not a fast one or there are no pairs (the caller
    then tokenises pair by pair)."""
    if not getattr(tokenizer, "is_fast", False) or not len(queries):
        return None
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # a copy: the caller's stays as it is
    backend.no_padding()
    backend.no_truncation()
    q_codes, q_texts = pd.factorize(pd.Series(list(queries), dtype=object))
    p_codes, p_texts = pd.factorize(pd.Series(list(products), dtype=object))
    q_enc = backend.encode_batch([pairs.clean_text(t) for t in q_texts], add_special_tokens=False)
    p_enc = backend.encode_batch([pairs.clean_text(t) for t in p_texts], add_special_tokens=False)
    # As `tokenizer(queries, products, truncation="longest_first", max_length=...)` sets it up.
    side = getattr(tokenizer, "truncation_side", "right")
    backend.enable_truncation(max_length, strategy="longest_first", direction=side)
    q_ids, q_off = _flat(q_enc)
    p_ids, p_off = _flat(p_enc)
    q_ids, p_ids = np.append(q_ids, 0), np.append(p_ids, 0)  # index 0 stays valid where every piece is empty
    n1, n2 = np.diff(q_off)[q_codes], np.diff(p_off)[p_codes]
    with_types = "token_type_ids" in tokenizer.model_input_names

    out_len = np.zeros(len(q_codes), dtype=np.int64)
    groups = pd.DataFrame({"n1": n1, "n2": n2}).groupby(["n1", "n2"], sort=False).indices
    layouts = {}
    for key, members in groups.items():
        first = members[0]  # tokenised whole, as a pair: its layout serves every pair of these lengths
        enc = backend.encode(pairs.clean_text(q_texts[q_codes[first]]), pairs.clean_text(p_texts[p_codes[first]]),
                             add_special_tokens=True)
        seq = np.array([-1 if s is None else s for s in enc.sequence_ids], dtype=np.int64)
        # Position within its piece of each kept token: truncation keeps one contiguous run of each piece.
        index = np.zeros(len(seq), dtype=np.int64)
        for part, length in ((0, key[0]), (1, key[1])):
            kept = np.flatnonzero(seq == part)
            start = length - len(kept) if side == "left" else 0
            index[kept] = start + np.arange(len(kept))
        layouts[key] = (seq, index, np.asarray(enc.ids, dtype=np.int64), np.asarray(enc.type_ids, dtype=np.int8))
        out_len[members] = len(seq)
    offsets = np.zeros(len(q_codes) + 1, dtype=np.int64)
    np.cumsum(out_len, out=offsets[1:])
    ids = np.zeros(int(offsets[-1]), dtype=np.int32)
    types = np.zeros(int(offsets[-1]), dtype=np.int8) if with_types else None
    for key, members in groups.items():
        seq, index, special, type_ids = layouts[key]
        q_src = q_off[q_codes[members]][:, None] + index
        p_src = p_off[p_codes[members]][:, None] + index
        block = np.where(seq == 0, q_ids[np.where(seq == 0, q_src, 0)],
                         np.where(seq == 1, p_ids[np.where(seq == 1, p_src, 0)], special))
        dest = offsets[members][:, None] + np.arange(len(seq))
        ids[dest] = block
        if types is not None:
            types[dest] = type_ids
        if not np.array_equal(block[0], special):  # the group's first pair is the one the tokenizer made whole
            raise RuntimeError(f"token table: joined pieces differ from the tokenizer's pair {members[0]}")
    return ids, offsets, types


def to_device(tensor: torch.Tensor, device: torch.device | None) -> torch.Tensor:
    """A host tensor on `device`. To CUDA it goes through pinned memory without blocking: a copy from
    ordinary (pageable) memory waits for every queued GPU kernel first, stalling the loop each step."""
    if device is None or device.type == "cpu":
        return tensor
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def length_batches(lengths: np.ndarray, batch_size: int, rng: np.random.Generator,
                   window_batches: int = 50) -> list[np.ndarray]:
    """Shuffle, sort by length within windows of `window_batches` batches, cut, shuffle the batches.

    Neighbours in a batch have similar lengths, so dynamic padding wastes little, while batch order
    stays random.
    """
    order = rng.permutation(len(lengths))
    window = batch_size * window_batches
    batches = []
    for start in range(0, len(order), window):
        block = order[start:start + window]
        block = block[np.argsort(lengths[block], kind="stable")]
        batches.extend(block[i:i + batch_size] for i in range(0, len(block), batch_size))
    return [batches[i] for i in rng.permutation(len(batches))]
