"""Triton Python-backend scorer for the local flavour: the exported ONNX student on ONNX Runtime CPU.

The tritonserver bundled with nvidia-pytriton has no onnxruntime backend, so this model runs the same
model.onnx the production flavour serves natively. Rows of all requests in a dynamic batch are
sorted by token length and run in chunks trimmed to their longest row (less padding than per
request); trailing columns with attention mask 0 carry no information, so trimming is exact.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

MASK = "attention_mask"


class RequestError(ValueError):
    """The request is malformed; the message goes back to the client."""


def error_response(message: str):
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(message))


def used_width(mask: np.ndarray) -> np.ndarray:
    """Per row, one past the last attended position (robust to left or right padding)."""
    attended = mask != 0
    last = attended.shape[1] - np.argmax(attended[:, ::-1], axis=1)
    return np.where(attended.any(axis=1), last, 1)


class TritonPythonModel:
    def initialize(self, args):
        import onnxruntime as ort

        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / params.get("onnx_file", "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(params.get("intra_op_threads", "0"))
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.add_session_config_entry("session.intra_op.allow_spinning", params.get("allow_spinning", "0"))
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_name = self.session.get_outputs()[0].name
        self.rows_per_run = max(1, int(params.get("rows_per_run", "32")))
        self.max_width = int(params.get("max_width", "512"))

    def _inputs(self, request) -> dict[str, np.ndarray]:
        arrays = {}
        for name in self.input_names:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise RequestError(f"missing input {name}")
            arrays[name] = np.asarray(tensor.as_numpy(), dtype=np.int64)
        shapes = {tuple(a.shape) for a in arrays.values()}
        shape = next(iter(shapes))
        if len(shapes) != 1 or len(shape) != 2:
            raise RequestError(f"inputs must be 2-D and of one shape, got {sorted(shapes)}")
        if shape[0] == 0 or shape[1] == 0:
            raise RequestError(f"empty input of shape {list(shape)}")
        if shape[1] > self.max_width:
            raise RequestError(f"sequence width {shape[1]} exceeds the model's limit {self.max_width}")
        return arrays

    def execute(self, requests):
        responses = [None] * len(requests)
        parts = []  # (request index, arrays)
        for i, request in enumerate(requests):
            try:
                parts.append((i, self._inputs(request)))
            except RequestError as err:
                responses[i] = error_response(str(err))
        if not parts:
            return responses
        try:
            scores = self._score([arrays for _, arrays in parts])
        except Exception as err:  # noqa: BLE001 - a failed run becomes error responses, not a crash
            pb_utils.Logger.log_error(f"onnxruntime failed: {err!r}")
            for i, _ in parts:
                responses[i] = error_response(f"scoring failed: {err}")
            return responses
        start = 0
        for i, arrays in parts:
            count = len(arrays[self.input_names[0]])
            out = scores[start:start + count].reshape(-1, 1)
            responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output_name, out)])
            start += count
        return responses

    def _score(self, batches: list[dict[str, np.ndarray]]) -> np.ndarray:
        """Scores of every row of every request, in order, from length-sorted trimmed chunks."""
        width = max(b[self.input_names[0]].shape[1] for b in batches)
        merged = {}
        for name in self.input_names:
            rows = [np.pad(b[name], ((0, 0), (0, width - b[name].shape[1]))) for b in batches]
            merged[name] = np.concatenate(rows)
        total = len(merged[self.input_names[0]])
        lengths = used_width(merged[MASK]) if MASK in merged else np.full(total, width)
        order = np.argsort(lengths, kind="stable")
        scores = np.empty(total, dtype=np.float32)
        for begin in range(0, total, self.rows_per_run):
            idx = order[begin:begin + self.rows_per_run]
            run_width = int(lengths[idx].max())
            feeds = {name: np.ascontiguousarray(merged[name][idx, :run_width]) for name in self.input_names}
            scores[idx] = self.session.run([self.output_name], feeds)[0][:, 0]
        return scores
