"""Triton Python-backend tokenizer: QUERY and PRODUCT text in, the student's token-id tensors out.

Tokenises with `encode_pairs` from the `pairs.py` the export copied beside this file, so serving
tokenises exactly as training did. All requests of a dynamic batch are encoded in one call (same
padded width, so the scorer can batch them); a malformed request gets its own error response.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

QUERY, PRODUCT = "QUERY", "PRODUCT"


class RequestError(ValueError):
    """The request is malformed; the message goes back to the client."""


def load_pairs_module(path: Path):
    """Import the copied pairs.py under a private name (nothing from kdrank is importable here)."""
    spec = importlib.util.spec_from_file_location("kdrank_serving_pairs", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decode_texts(request, name: str, max_chars: int) -> list[str]:
    """The UTF-8 strings of input `name` (shape [n, 1]), checked for emptiness and length."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        raise RequestError(f"missing input {name}")
    values = tensor.as_numpy()
    if values.ndim != 2 or values.shape[1] != 1:
        raise RequestError(f"input {name} must have shape [n, 1], got {list(values.shape)}")
    if values.shape[0] == 0:
        raise RequestError(f"empty batch: input {name} holds no texts")
    texts = []
    for row, value in enumerate(values[:, 0]):
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RequestError(f"{name}[{row}] is not valid UTF-8 ({err.reason} at byte {err.start})"
                                   ) from err
        text = str(value)
        if len(text) > max_chars:
            raise RequestError(f"{name}[{row}] has {len(text)} characters, over the limit of {max_chars} "
                               "(max_text_chars in the tokenizer's config.pbtxt)")
        texts.append(text)
    return texts


def pad_width(encoded, names: list[str], multiple: int, limit: int, pad_id: int) -> dict:
    """Round the padded width up to a multiple of `multiple` (at most `limit`); new columns are masked."""
    width = encoded[names[0]].shape[1]
    target = max(width, min(-(-width // multiple) * multiple, limit))
    if target == width:
        return {name: encoded[name] for name in names}
    return {name: np.pad(encoded[name], ((0, 0), (0, target - width)),
                         constant_values=pad_id if name == "input_ids" else 0) for name in names}


def error_response(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.pairs = load_pairs_module(version_dir / "pairs.py")
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(version_dir / "tokenizer"))
        self.max_length = int(params["max_length"])
        self.max_chars = int(params["max_text_chars"])
        self.output_names = params["input_names"].split(",")
        self.pad_multiple = int(params.get("pad_multiple", "1"))
        self.logger = pb_utils.Logger

    def execute(self, requests):
        responses = [None] * len(requests)
        queries, products, owners = [], [], []  # owners: (request index, first row, row count)
        for i, request in enumerate(requests):
            try:
                qs = decode_texts(request, QUERY, self.max_chars)
                ps = decode_texts(request, PRODUCT, self.max_chars)
                if len(qs) != len(ps):
                    raise RequestError(f"{len(qs)} queries but {len(ps)} products; one query per product")
            except RequestError as err:
                responses[i] = error_response(str(err))
                continue
            owners.append((i, len(queries), len(qs)))
            queries.extend(qs)
            products.extend(ps)
        if not owners:
            return responses
        try:
            encoded = self.pairs.encode_pairs(self.tokenizer, queries, products, role=self.pairs.STUDENT,
                                              max_length=self.max_length, return_tensors="np")
        except Exception as err:  # noqa: BLE001 - any tokenizer failure becomes an error response
            self.logger.log_error(f"tokenizer failed: {err!r}")
            for i, _, _ in owners:
                responses[i] = error_response(f"tokenization failed: {err}")
            return responses
        padded = pad_width(encoded, self.output_names, self.pad_multiple, self.max_length,
                           self.tokenizer.pad_token_id or 0)
        for i, start, count in owners:
            rows = slice(start, start + count)
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(padded[name][rows], dtype=np.int64))
                       for name in self.output_names]
            responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
        return responses
