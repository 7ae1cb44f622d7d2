"""Synthetic served traffic for the monitoring tests and benchmark: pairs, a decisive teacher, request logs.

The served "student" here is a scorer that agrees with the teacher by construction (its raw score is
the teacher's real score mapped back through the student's calibration, plus small noise); a degraded
student shuffles those scores within each query. Everything else (labelling, report) is the real job.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from components import pairs, schema
from components.scoring import PairScorer, load_classifier

_TOOLS = """drill cordless battery charger saw blade hammer wrench screwdriver bit set paint brush roller
white black red blue steel wood oak pine 12 in 18 volt kit lamp bulb led faucet chrome kitchen bath
shower valve tile grout glue tape"""
_GARDEN = """hose garden mower lawn outdoor sprinkler rake shovel planter soil seed fertilizer fence trimmer
hedge leaf blower patio grill umbrella bench pot compost edging mulch wheelbarrow pruner gloves
trellis bird feeder"""
TOOLS = tuple(_TOOLS.split())
GARDEN = tuple(_GARDEN.split())  # another product category, for the shifted window


def make_pairs(n_queries: int, per_query: int, *, seed: int, vocab: tuple[str, ...] | list[str] = TOOLS,
               query_words: tuple[int, int] = (1, 4), product_words: tuple[int, int] = (3, 10),
               prefix: str = "p") -> pd.DataFrame:
    """Pairs in kdrank's schema: random-word queries, each with `per_query` random-word products."""
    rng = np.random.default_rng(seed)
    rows = []
    for q in range(n_queries):
        query = " ".join(rng.choice(vocab, size=rng.integers(*query_words)))
        for p in range(per_query):
            text = " ".join(rng.choice(vocab, size=rng.integers(*product_words)))
            rows.append((query, f"{prefix}{seed}-{q}-{p}", text))
    frame = pd.DataFrame(rows, columns=[schema.QUERY, schema.PRODUCT_ID, schema.PRODUCT_TEXT])
    frame.insert(0, schema.QUERY_ID, frame[schema.QUERY].map(schema.query_id))
    return frame.drop_duplicates([schema.QUERY_ID, schema.PRODUCT_ID]).reset_index(drop=True)


def _pooled_hidden(model, tokenizer, frame: pd.DataFrame, max_length: int) -> np.ndarray:
    """The hidden state the classification head reads: the last non-padding token of each prompt."""
    captured = []
    handle = model.score.register_forward_hook(lambda _m, inputs, _o: captured.append(inputs[0].detach()))
    try:
        queries, products = frame[schema.QUERY].tolist(), frame[schema.PRODUCT_TEXT].tolist()
        batch = pairs.encode_pairs(tokenizer, queries, products, role=pairs.TEACHER, max_length=max_length)
        with torch.inference_mode():
            model(**batch)
    finally:
        handle.remove()
    last = batch["attention_mask"].sum(dim=1) - 1
    return captured[0][torch.arange(len(frame)), last].numpy().astype(np.float64)


def make_decisive_teacher(tiny_teacher_dir: str, out_dir: str | Path, frame: pd.DataFrame,
                          spread: float = 2.5) -> str:
    """A copy of the tiny teacher whose head reads the direction along which its inputs vary most.

    A random tiny LLM gives nearly the same grade to every pair; this sets the 3-grade head to
    (-a p, 0, a p) with p the top principal component of its pooled states (made zero-mean), so the
    expected grade spreads over 0..2 like a trained teacher's. It stays a real checkpoint, scored by
    the real labelling step.
    """
    out_dir = Path(out_dir)
    shutil.copytree(tiny_teacher_dir, out_dir, dirs_exist_ok=True)
    tokenizer, model = load_classifier(out_dir, role=pairs.TEACHER)
    model.eval()
    info = json.loads(Path(out_dir, "kdrank.json").read_text())
    hidden = _pooled_hidden(model, tokenizer, frame, info["max_length"])
    centre = hidden.mean(axis=0)
    direction = np.linalg.svd(hidden - centre, full_matrices=False)[2][0]
    unit_centre = centre / np.linalg.norm(centre)
    direction -= (direction @ unit_centre) * unit_centre  # zero mean projection: grade 1 on average
    direction /= np.linalg.norm(direction)
    scale = spread / (hidden @ direction).std()
    weight = torch.zeros_like(model.score.weight)
    weight[0] = torch.as_tensor(-scale * direction, dtype=weight.dtype)
    weight[-1] = torch.as_tensor(scale * direction, dtype=weight.dtype)
    with torch.no_grad():
        model.score.weight.copy_(weight)
    model.save_pretrained(out_dir)
    return str(out_dir)


def teacher_scores(teacher_dir: str, frame: pd.DataFrame) -> np.ndarray:
    scorer = PairScorer(teacher_dir, device="cpu")
    try:
        queries, products = frame[schema.QUERY].tolist(), frame[schema.PRODUCT_TEXT].tolist()
        return scorer.score(queries, products, progress=False).score
    finally:
        scorer.close()


def agreeing_raw_scores(teacher: np.ndarray, calibration: dict, *, noise: float, seed: int) -> np.ndarray:
    """Raw student scores that map (through `calibration`) onto the teacher's grades plus N(0, noise)."""
    grades = np.asarray(teacher) + np.random.default_rng(seed).normal(0.0, noise, len(teacher))
    return (grades - calibration["offset"]) / calibration["scale"]


def shuffle_within_queries(frame: pd.DataFrame, column: str, *, seed: int) -> pd.DataFrame:
    """A degraded student: each query's scores permuted among its products."""
    rng = np.random.default_rng(seed)
    out = frame.copy()
    for _, idx in out.groupby(schema.QUERY).indices.items():
        out.loc[out.index[idx], column] = rng.permutation(out[column].to_numpy()[idx])
    return out


def request_log(frame: pd.DataFrame, raw_scores: np.ndarray, *, model_name: str = "kdrank_student",
                model_version: str = "1", start: datetime | None = None) -> pd.DataFrame:
    """Rows as the rerank client logs them: one request per query, one row per scored product."""
    start = start or datetime(2025, 1, 1, tzinfo=UTC)
    request = frame.groupby(schema.QUERY_ID, sort=False).ngroup()
    return pd.DataFrame({
        "request_id": [f"req-{i}" for i in request],
        "time": [(start + timedelta(seconds=int(i))).isoformat() for i in request],
        "query": frame[schema.QUERY].to_numpy(),
        "product_id": frame[schema.PRODUCT_ID].to_numpy(),
        "product_text": frame[schema.PRODUCT_TEXT].to_numpy(),
        "score": np.asarray(raw_scores, dtype=np.float64),
        "model_name": model_name,
        "model_version": model_version,
    })


def write_jsonl(frame: pd.DataFrame, path: str | Path) -> str:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.to_json(path, orient="records", lines=True)
    return str(path)


def scored_frame(n_queries: int, per_query: int, *, seed: int, noise: float = 0.1, num_grades: int = 3,
                 **pair_options) -> pd.DataFrame:
    """Pairs already scored (teacher grades drawn at random, student = teacher + noise) with every column
    the report reads: for testing the report and workspace layers without a teacher model."""
    from monitoring import features, report

    frame = make_pairs(n_queries, per_query, seed=seed, **pair_options)
    rng = np.random.default_rng(seed)
    frame[schema.TEACHER_SCORE] = rng.uniform(0, num_grades - 1, len(frame))
    frame[features.STUDENT_GRADE] = frame[schema.TEACHER_SCORE] + rng.normal(0, noise, len(frame))
    frame[report.SERVED_BY_REFERENCE_MODEL] = 1.0
    frame = features.add_input_features(frame)
    return features.add_agreement_columns(frame, num_grades, min_pairs_per_query=3)


def _probs(grades: np.ndarray) -> list[list[float]]:
    """3-grade teacher probabilities whose expected grade is `grades` (0..2)."""
    high = np.clip(grades, 0, 2) / 2
    return [[float(1 - h), 0.0, float(h)] for h in high]


def labelled_reference(root: str | Path, n_queries: int = 150, per_query: int = 4, *, seed: int = 1) -> str:
    """A reference set written directly (random teacher grades, an agreeing student): no models needed."""
    from monitoring import features
    from monitoring.reference import META_FILE, TABLE_FILE

    frame = make_pairs(n_queries, per_query, seed=seed)
    rng = np.random.default_rng(seed)
    frame[schema.TEACHER_SCORE] = rng.uniform(0, 2, len(frame))
    frame[schema.TEACHER_PROBS] = _probs(frame[schema.TEACHER_SCORE].to_numpy())
    frame[features.STUDENT_GRADE] = frame[schema.TEACHER_SCORE] + rng.normal(0, NOISE, len(frame))
    frame[schema.STUDENT_SCORE] = (frame[features.STUDENT_GRADE] - CALIBRATION["offset"]) / CALIBRATION["scale"]
    frame = features.add_input_features(frame)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(root / TABLE_FILE, index=False)
    (root / META_FILE).write_text(json.dumps({
        "model_name": "kdrank_student", "model_version": "1", "num_grades": 3, "rows": len(frame),
        "calibration": CALIBRATION, "teacher_dir": str(root / "no-teacher-needed")}))
    return str(root)


def labelled_log(n_queries: int = 100, per_query: int = 4, *, seed: int = 2) -> pd.DataFrame:
    """A request log that already carries teacher labels (as a previous run's sample.parquet does), so the
    job re-checks it without a teacher model; its student agrees with those labels."""
    frame = make_pairs(n_queries, per_query, seed=seed)
    rng = np.random.default_rng(seed)
    teacher = rng.uniform(0, 2, len(frame))
    log = request_log(frame, agreeing_raw_scores(teacher, CALIBRATION, noise=NOISE, seed=seed))
    log[schema.TEACHER_SCORE] = teacher
    log[schema.TEACHER_PROBS] = _probs(teacher)
    return log


CALIBRATION = {"scale": 1.0, "offset": 1.0}  # what tests/conftest.py's tiny student stores
NOISE = 0.1  # grade-scale noise of the agreeing student


@dataclass(frozen=True)
class Traffic:
    """A reference set and three windows: unshifted, degraded student, shifted queries."""

    teacher: str
    student: str
    reference: str
    good: str  # unshifted traffic, agreeing student
    degraded: str  # the same traffic, scores shuffled within each query
    shifted: str  # long garden queries on garden products, agreeing student
    root: Path


def build_traffic(root: Path, tiny_teacher_dir: str, tiny_student_dir: str) -> Traffic:
    """The decisive teacher, a reference set and the three windows, under `root`."""
    from monitoring.reference import build_reference_set

    teacher = make_decisive_teacher(tiny_teacher_dir, root / "teacher", make_pairs(80, 4, seed=100))
    held_out = make_pairs(300, 4, seed=1)
    held_out["student_score"] = agreeing_raw_scores(teacher_scores(teacher, held_out), CALIBRATION,
                                                    noise=NOISE, seed=1)
    reference = build_reference_set(held_out, teacher, tiny_student_dir, str(root / "reference"),
                                    model_name="kdrank_student", model_version="1")

    served = make_pairs(200, 4, seed=2)
    log = request_log(served, agreeing_raw_scores(teacher_scores(teacher, served), CALIBRATION,
                                                  noise=NOISE, seed=2))
    shifted = make_pairs(200, 4, seed=3, vocab=GARDEN, query_words=(5, 9))
    shifted_log = request_log(shifted, agreeing_raw_scores(teacher_scores(teacher, shifted), CALIBRATION,
                                                           noise=NOISE, seed=3))
    windows = root / "windows"
    return Traffic(
        teacher=teacher, student=tiny_student_dir, reference=reference,
        good=write_jsonl(log, windows / "good.jsonl"),
        degraded=write_jsonl(shuffle_within_queries(log, "score", seed=4), windows / "degraded.jsonl"),
        shifted=write_jsonl(shifted_log, windows / "shifted.jsonl"),
        root=root,
    )
