"""Token tables and length-bucketed batches: the input side of every training and scoring loop.

Pairs are tokenised once (through `pairs.encode_pairs`, the one definition of model input) into a flat
int32 array with offsets; a batch is gathered and padded with numpy, never by the tokenizer inside the
loop. On a GPU the loop then costs the host little more than the model's own kernel launches, and the
padded tensors go over in pinned memory without blocking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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
        if tokenizer.pad_token_id is None:
            raise ValueError(f"tokenizer {type(tokenizer).__name__} has no pad token")
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
