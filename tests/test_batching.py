"""Token tables: the ids the tokenizer makes, padded with numpy exactly as the tokenizer pads, and the
same model outputs; length batches cover every item once with similar lengths."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from components import batching, pairs
from components.batching import PAD_MULTIPLE, TokenTable, length_batches
from components.scoring import load_classifier

QUERIES = ["cordless drill", "paint", "garden hose with a long query text", "led bulb", "x"]
PRODUCTS = [
    "red drill kit 18 volt with two batteries and a charger",
    "white interior paint",
    "hose",
    "60 watt equivalent soft white",
    "a product title that is long enough to be cut at max length " * 3,
]


@pytest.mark.parametrize("role", [pairs.STUDENT, pairs.TEACHER])
@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_matches_the_tokenizer_and_scores_the_same(role, side, tiny_student_dir, tiny_teacher_dir):
    tokenizer, model = load_classifier(tiny_student_dir if role == pairs.STUDENT else tiny_teacher_dir, role=role)
    tokenizer.padding_side = side
    model.eval()
    table = TokenTable.encode(tokenizer, QUERIES, PRODUCTS, role=role, max_length=24)
    idx = [3, 0, 4]
    batch = table.batch(idx)
    expected = pairs.encode_pairs(
        tokenizer, [QUERIES[i] for i in idx], [PRODUCTS[i] for i in idx], role=role, max_length=24, padding=True
    )
    width = expected["input_ids"].shape[1]
    assert batch["input_ids"].shape[1] % PAD_MULTIPLE == 0 and batch["input_ids"].shape[1] >= width
    keep = slice(batch["input_ids"].shape[1] - width, None) if side == "left" else slice(0, width)
    for key in expected:  # the same ids, mask and token types, with only extra padding columns
        assert torch.equal(batch[key][:, keep], expected[key].long()), key
    assert int(batch["attention_mask"].sum()) == int(expected["attention_mask"].sum())
    assert ("token_type_ids" in batch) == (role == pairs.STUDENT)
    if side == "right":  # decoders here take positions from the left edge, so only right padding is padding-proof
        with torch.no_grad():
            assert torch.allclose(model(**batch).logits, model(**expected).logits, atol=1e-5)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("max_length", [8, 16, 64])
def test_student_table_from_distinct_texts_equals_pair_by_pair(side, max_length, tiny_student_dir):
    """The student's table joins each distinct text's tokens; it must equal tokenising every pair."""
    tokenizer, _ = load_classifier(tiny_student_dir, role=pairs.STUDENT)
    tokenizer.truncation_side = side
    rng = np.random.default_rng(0)
    queries = QUERIES + ["cordless  drill", "", "café 1/2 in. pvc", " paint "]  # repeats after cleaning, empty
    products = PRODUCTS + ["", "Ölfilter 3/4\" × 10 ft", "hose", "stainless steel sink " * 30]
    qs = [queries[i] for i in rng.integers(len(queries), size=300)]
    ps = [products[i] for i in rng.integers(len(products), size=300)]
    assert batching._student_pieces(tokenizer, qs, ps, max_length) is not None  # not the pair-by-pair fallback
    table = TokenTable.encode(tokenizer, qs, ps, role=pairs.STUDENT, max_length=max_length)
    expected = pairs.encode_pairs(tokenizer, qs, ps, role=pairs.STUDENT, max_length=max_length, padding=False,
                                  return_tensors=None)
    assert [len(row) for row in expected["input_ids"]] == table.lengths.tolist()
    assert table.ids.tolist() == [t for row in expected["input_ids"] for t in row]
    assert table.token_types.tolist() == [t for row in expected["token_type_ids"] for t in row]
    assert (table.lengths == max_length).any() and (table.lengths < max_length).any()


def test_lengths_offsets_and_errors(tiny_student_dir):
    tokenizer, _ = load_classifier(tiny_student_dir, role=pairs.STUDENT)
    table = TokenTable.encode(tokenizer, QUERIES, PRODUCTS, role=pairs.STUDENT, max_length=16)
    assert len(table) == 5 and table.lengths.max() == 16 and table.offsets[-1] == len(table.ids)
    one = table.batch([1])
    assert one["attention_mask"].sum() == table.lengths[1]
    with pytest.raises(ValueError, match="5 queries but 4 products"):
        TokenTable.encode(tokenizer, QUERIES, PRODUCTS[:4], role=pairs.STUDENT, max_length=16)
    empty = TokenTable.encode(tokenizer, [], [], role=pairs.STUDENT, max_length=16)
    assert len(empty) == 0
    # a null text had indexed another pair's piece (IndexError) or failed the table's own check
    for role in (pairs.STUDENT, pairs.TEACHER):
        with pytest.raises(ValueError, match="query 1 is None, not a text"):
            TokenTable.encode(tokenizer, [QUERIES[0], None, *QUERIES[2:]], PRODUCTS, role=role, max_length=16)
        with pytest.raises(ValueError, match="product text 2 is nan, not a text"):
            TokenTable.encode(tokenizer, QUERIES, [*PRODUCTS[:2], float("nan"), *PRODUCTS[3:]], role=role,
                              max_length=16)


def test_length_batches_cover_every_item_once_with_similar_lengths():
    lengths = np.random.default_rng(0).integers(5, 500, size=1000)
    batches = length_batches(lengths, 10, np.random.default_rng(0))
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000)) and max(len(b) for b in batches) == 10
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    assert spread < 0.2 * np.ptp(lengths)  # random batches would spread over most of the range
