"""config.pbtxt text for the three models of a repository flavour (tokenizer, scorer, ensemble).

Written as protobuf text by hand so export runs where tritonclient is not installed; the tests parse
every file into Triton's ModelConfig message. Batch dimension = pairs: a rerank request of N
candidates is N rows, and the dynamic batcher merges requests up to `max_batch_size` rows.
"""

from __future__ import annotations

from dataclasses import dataclass

from serving import layout

DEFAULT_PREFERRED_BATCH_SIZES = (128, 256, 512)


@dataclass
class ServingOptions:
    """Batching and placement settings written into the configs (not the model itself)."""

    max_batch_size: int = 512  # rows (pairs) per batch; also the most candidates one request may carry
    preferred_batch_sizes: tuple[int, ...] | None = None  # None: those of 128, 256, 512 not above the max
    max_queue_delay_us: int = 2000  # how long the batcher may hold a request to grow the batch
    cpu_instances: int = 2  # local flavour: ONNX Runtime processes (each with cpu_threads threads)
    cpu_threads: int = 0  # local flavour: ONNX Runtime intra-op threads; 0 = all cores
    cpu_rows_per_run: int = 32  # local flavour: length-sorted rows per ONNX Runtime call (cache-sized)
    cpu_spin: bool = False  # local flavour: ORT threads spin while idle (faster on dedicated cores only)
    tokenizer_instances: int = 1
    gpu_instances: int = 1  # production flavour: model instances per GPU
    trt_precision: str = "FP16"  # production flavour TensorRT precision: FP32 | FP16
    trt_workspace_bytes: int = 1 << 30
    gpu_pad_multiple: int = 16  # production flavour: token widths rounded up so requests share shapes
    max_text_chars: int = 2048  # longer query/product texts are rejected (error response), not served

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.preferred_batch_sizes is None:
            self.preferred_batch_sizes = tuple(s for s in DEFAULT_PREFERRED_BATCH_SIZES
                                               if s <= self.max_batch_size) or (self.max_batch_size,)
        self.preferred_batch_sizes = tuple(self.preferred_batch_sizes)
        bad = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if bad:
            raise ValueError(f"preferred_batch_sizes {bad} outside 1..max_batch_size={self.max_batch_size}")
        if self.trt_precision not in ("FP32", "FP16"):
            raise ValueError(f"trt_precision must be FP32 or FP16, got {self.trt_precision}")


def _string_param(key: str, value) -> str:
    return f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}'


def _tensor(name: str, data_type: str, dims: str, ragged: bool = False) -> str:
    extra = " allow_ragged_batch: true" if ragged else ""
    return f'  {{ name: "{name}" data_type: {data_type} dims: [ {dims} ]{extra} }}'


def _tensors(kind: str, entries: list[str]) -> str:
    return f"{kind} [\n" + ",\n".join(entries) + "\n]"


def _text_inputs() -> str:
    return _tensors("input", [_tensor(layout.QUERY, "TYPE_STRING", "1"),
                              _tensor(layout.PRODUCT, "TYPE_STRING", "1")])


def _batching(opts: ServingOptions) -> str:
    sizes = ", ".join(str(s) for s in opts.preferred_batch_sizes)
    return (f"dynamic_batching {{\n  preferred_batch_size: [ {sizes} ]\n"
            f"  max_queue_delay_microseconds: {opts.max_queue_delay_us}\n}}")


def _header(name: str, kind_line: str, opts: ServingOptions) -> str:
    return (f'name: "{name}"\n{kind_line}\nmax_batch_size: {opts.max_batch_size}\n'
            "version_policy: { latest { num_versions: 1 } }")


def tokenizer_config(name: str, input_names: list[str], *, max_length: int, opts: ServingOptions,
                     pad_multiple: int = 1) -> str:
    """Python-backend tokenizer: QUERY, PRODUCT strings -> int64 token tensors (padded per batch).

    `pad_multiple` > 1 rounds the padded width up (extra columns masked out) so that the ONNX Runtime
    backend, which only batches requests of equal shape, sees few distinct widths.
    """
    return "\n".join([
        _header(layout.tokenizer_model(name), 'backend: "python"', opts),
        _text_inputs(),
        _tensors("output", [_tensor(n, "TYPE_INT64", "-1") for n in input_names]),
        f"instance_group [ {{ count: {opts.tokenizer_instances} kind: KIND_CPU }} ]",
        _batching(opts),
        _string_param("max_length", max_length),
        _string_param("max_text_chars", opts.max_text_chars),
        _string_param("input_names", ",".join(input_names)),
        _string_param("pad_multiple", pad_multiple),
    ]) + "\n"


def local_scorer_config(name: str, input_names: list[str], *, max_length: int, opts: ServingOptions) -> str:
    """Python backend running the ONNX file with ONNX Runtime on CPU (for the bundled tritonserver)."""
    return "\n".join([
        _header(layout.scorer_model(name), 'backend: "python"', opts),
        # ragged: requests of different padded widths still batch (model.py pads them to one width)
        _tensors("input", [_tensor(n, "TYPE_INT64", "-1", ragged=True) for n in input_names]),
        _tensors("output", [_tensor(layout.ONNX_OUTPUT, "TYPE_FP32", "1")]),
        f"instance_group [ {{ count: {opts.cpu_instances} kind: KIND_CPU }} ]",
        _batching(opts),
        _string_param("onnx_file", layout.ONNX_FILE),
        _string_param("intra_op_threads", opts.cpu_threads),
        _string_param("rows_per_run", opts.cpu_rows_per_run),
        _string_param("allow_spinning", int(opts.cpu_spin)),
        _string_param("max_width", max_length),
    ]) + "\n"


def production_scorer_config(name: str, input_names: list[str], *, max_length: int,
                             opts: ServingOptions) -> str:
    """onnxruntime_onnx on GPU with TensorRT (CUDA fallback) for the NGC Triton image."""
    def shapes(batch: int, seq: int) -> str:
        return ",".join(f"{n}:{batch}x{seq}" for n in input_names)

    opt_batch = opts.preferred_batch_sizes[0] if opts.preferred_batch_sizes else opts.max_batch_size
    trt = [
        ("precision_mode", opts.trt_precision),
        ("max_workspace_size_bytes", opts.trt_workspace_bytes),
        ("trt_engine_cache_enable", "1"),
        ("trt_engine_cache_path", "/tmp/kdrank_trt_cache"),
        ("trt_profile_min_shapes", shapes(1, 1)),
        ("trt_profile_opt_shapes", shapes(opt_batch, min(64, max_length))),
        ("trt_profile_max_shapes", shapes(opts.max_batch_size, max_length)),
    ]
    trt_params = "\n".join(f'      parameters {{ key: "{k}" value: "{v}" }}' for k, v in trt)
    return "\n".join([
        _header(layout.scorer_model(name), 'platform: "onnxruntime_onnx"', opts),
        f'default_model_filename: "{layout.ONNX_FILE}"',
        _tensors("input", [_tensor(n, "TYPE_INT64", "-1") for n in input_names]),
        _tensors("output", [_tensor(layout.ONNX_OUTPUT, "TYPE_FP32", "1")]),
        f"instance_group [ {{ count: {opts.gpu_instances} kind: KIND_GPU }} ]",
        _batching(opts),
        "optimization {\n  execution_accelerators {\n    gpu_execution_accelerator: [ {\n"
        f'      name: "tensorrt"\n{trt_params}\n    }} ]\n  }}\n}}',
    ]) + "\n"


def ensemble_config(name: str, input_names: list[str], *, opts: ServingOptions) -> str:
    """Ensemble: raw QUERY/PRODUCT text through the tokenizer into the scorer, SCORE back."""
    def maps(kind: str, pairs: list[tuple[str, str]]) -> str:
        return "\n".join(f'      {kind} {{ key: "{k}" value: "{v}" }}' for k, v in pairs)

    tok_in = [(layout.QUERY, layout.QUERY), (layout.PRODUCT, layout.PRODUCT)]
    ids = [(n, n) for n in input_names]
    steps = [
        (layout.tokenizer_model(name), maps("input_map", tok_in), maps("output_map", ids)),
        (layout.scorer_model(name), maps("input_map", ids),
         maps("output_map", [(layout.ONNX_OUTPUT, layout.SCORE)])),
    ]
    body = ",\n".join(f'    {{\n      model_name: "{model}"\n      model_version: -1\n{i}\n{o}\n    }}'
                      for model, i, o in steps)
    return "\n".join([
        _header(name, 'platform: "ensemble"', opts),
        _text_inputs(),
        _tensors("output", [_tensor(layout.SCORE, "TYPE_FP32", "1")]),
        f"ensemble_scheduling {{\n  step [\n{body}\n  ]\n}}",
    ]) + "\n"
