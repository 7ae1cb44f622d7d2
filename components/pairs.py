"""How a (query, product) pair becomes model input: the one definition for every stage.

Training, teacher labelling, evaluation, ONNX export and the Triton tokenizer model all call
`encode_pairs`; the export copies this file into the Triton model repository, so it must import
nothing from kdrank (only the tokenizer passed in).
"""

from __future__ import annotations

from collections.abc import Sequence

STUDENT = "student"
TEACHER = "teacher"

TEACHER_TEMPLATE = "Search query: {query}\nProduct: {product}\nHow relevant is the product to the query?"
DEFAULT_MAX_LENGTH = {STUDENT: 128, TEACHER: 128}


def clean_text(text: str) -> str:
    """Collapse whitespace; the same cleaning for training and serving."""
    return " ".join(str(text).split())


def teacher_text(query: str, product: str) -> str:
    return TEACHER_TEMPLATE.format(query=clean_text(query), product=clean_text(product))


def encode_pairs(tokenizer, queries: Sequence[str], products: Sequence[str], *, role: str,
                 max_length: int, padding: bool | str = True, return_tensors: str | None = "pt"):
    """Tokenise pairs for a `role` model.

    Student (cross-encoder): query and product as a text pair, product truncated first.
    Teacher (decoder LLM): one prompt string per pair, truncated on the right.
    `padding=True` pads to the longest pair in the batch (dynamic padding); 'max_length' pads to
    `max_length` (the naive baseline the benchmark compares against).
    """
    if len(queries) != len(products):
        raise ValueError(f"{len(queries)} queries but {len(products)} products")
    if role == STUDENT:
        return tokenizer(
            [clean_text(q) for q in queries], [clean_text(p) for p in products],
            truncation="longest_first", max_length=max_length, padding=padding,
            return_tensors=return_tensors,
        )
    if role == TEACHER:
        return tokenizer(
            [teacher_text(q, p) for q, p in zip(queries, products, strict=True)],
            truncation=True, max_length=max_length, padding=padding, return_tensors=return_tensors,
        )
    raise ValueError(f"unknown role '{role}' (expected '{STUDENT}' or '{TEACHER}')")
