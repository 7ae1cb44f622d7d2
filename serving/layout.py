"""Names of everything in an exported Triton model repository, shared by export, server, client and tests.

    <output>/manifest.json                          latest export (also in each ensemble version dir)
    <output>/{local,production}/<name>/             ensemble: QUERY, PRODUCT (TYPE_STRING) -> SCORE
    <output>/{local,production}/<name>_tokenizer/   Python backend: text -> token ids (components/pairs.py)
    <output>/{local,production}/<name>_onnx/        the student: token ids -> raw score
Each model directory holds config.pbtxt and integer version directories.
"""

from __future__ import annotations

LOCAL = "local"  # Python backend running ONNX Runtime on CPU: the bundled tritonserver
PRODUCTION = "production"  # onnxruntime_onnx platform on GPU with TensorRT: the NGC Triton image
FLAVOURS = (LOCAL, PRODUCTION)

MANIFEST = "manifest.json"
CONFIG = "config.pbtxt"
ONNX_FILE = "model.onnx"
MODEL_PY = "model.py"
PAIRS_PY = "pairs.py"
TOKENIZER_DIR = "tokenizer"

DEFAULT_MODEL_NAME = "kdrank_student"

# Ensemble inputs and output (what clients send and get).
QUERY = "QUERY"
PRODUCT = "PRODUCT"
SCORE = "SCORE"
# ONNX graph output; its inputs are named after the tokenizer's model_input_names.
ONNX_OUTPUT = "score"


def tokenizer_model(name: str) -> str:
    return f"{name}_tokenizer"


def scorer_model(name: str) -> str:
    return f"{name}_onnx"


def model_names(name: str) -> list[str]:
    """Every model the ensemble `name` consists of, itself included (dependencies first)."""
    return [tokenizer_model(name), scorer_model(name), name]
