"""Ranking metrics against human labels on held-out queries, for teachers, students and baselines.

Definitions (one place, used by every report):
- NDCG@k: gain 2^g - 1 with g the 0-based grade, averaged over queries with at least two distinct
  grades; tied scores count at their expected value over random tie orders (tied positions share
  the mean gain of their group), so a constant scorer gets no credit from input order.
- pairwise accuracy: over same-query pairs whose grades differ by >= 0.5 grade, the share ordered
  like the grades; a tie in score counts half. Pooled over all such pairs (not averaged per query).
- Spearman: one rank correlation between score and grade over all pairs (pooled, not per query).
- RMSE: between grade and the score mapped onto the grade scale (students: stored calibration).
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from components import data, models, pairs, schema, storage

log = logging.getLogger(__name__)

METRIC_KEYS = ("ndcg@5", "ndcg@10", "pairwise_accuracy", "spearman", "rmse", "n_queries", "n_pairs")
MIN_GRADE_GAP = 0.5  # half a grade: Home Depot's 1..3 scale has the same unit as the 0..2 grades
BASELINES = ("random", "bm25", "biencoder")
SCORE = "score"  # raw model score in the per-pair output
SCORE_GRADE = "score_grade"  # the score mapped onto the grade scale


def _expected_dcg(scores: np.ndarray, gains: np.ndarray, k: int) -> float:
    """DCG@k of ranking by score, in expectation over random orders of tied scores."""
    _, groups = np.unique(-scores, return_inverse=True)  # group 0 = highest score
    counts = np.bincount(groups)
    mean_gain = np.bincount(groups, weights=gains) / counts
    ranked = np.repeat(mean_gain, counts)[:k]
    return float((ranked / np.log2(np.arange(2, len(ranked) + 2))).sum())


def ndcg_at(scores: np.ndarray, grades: np.ndarray, k: int) -> float:
    """NDCG@k of one query (gain 2^g - 1); NaN when every grade is equal (nothing to rank)."""
    gains = np.power(2.0, np.asarray(grades, dtype=np.float64)) - 1.0
    ideal = np.sort(gains)[::-1][:k]
    idcg = float((ideal / np.log2(np.arange(2, len(ideal) + 2))).sum())
    if len(np.unique(np.round(grades, 9))) < 2 or idcg <= 0:
        return math.nan
    return _expected_dcg(np.asarray(scores, dtype=np.float64), gains, k) / idcg


def _pairwise_counts(scores: np.ndarray, grades: np.ndarray, min_gap: float) -> tuple[float, int]:
    """(credit, number of pairs) over pairs of one query whose grades differ by >= min_gap."""
    upper = np.triu_indices(len(grades), k=1)
    dg = (grades[:, None] - grades[None, :])[upper]
    ds = (scores[:, None] - scores[None, :])[upper]
    keep = np.abs(dg) >= min_gap - 1e-9
    agree = np.sign(ds[keep]) * np.sign(dg[keep])
    return float((agree > 0).sum() + 0.5 * (agree == 0).sum()), int(keep.sum())


def ranking_metrics(frame: pd.DataFrame, score_col: str, grade_col: str = schema.GRADE,
                    mapped_col: str | None = None, *, min_grade_gap: float = MIN_GRADE_GAP) -> dict:
    """The metrics of the module docstring for one scored table (one row per (query, product)).

    `mapped_col` holds the score on the grade scale for RMSE; without it `score_col` is taken to be on
    that scale already (a teacher's expected grade). Metrics with nothing to measure are NaN.
    """
    needed = [schema.QUERY_ID, score_col, grade_col] + ([mapped_col] if mapped_col else [])
    schema.require_columns(frame, needed)
    if frame.empty:
        raise ValueError("cannot evaluate an empty table")
    scores = frame[score_col].to_numpy(dtype=np.float64)
    grades = frame[grade_col].to_numpy(dtype=np.float64)
    if not np.isfinite(scores).all():
        bad = int((~np.isfinite(scores)).sum())
        raise ValueError(f"column '{score_col}' holds {bad} non-finite score(s)")
    if not np.isfinite(grades).all():
        raise ValueError(f"column '{grade_col}' holds {int((~np.isfinite(grades)).sum())} missing grade(s)")
    ndcg5, ndcg10, credit, n_ordered = [], [], 0.0, 0
    for rows in frame.groupby(schema.QUERY_ID, sort=False).indices.values():
        s, g = scores[rows], grades[rows]
        if len(np.unique(np.round(g, 9))) >= 2:
            ndcg5.append(ndcg_at(s, g, 5))
            ndcg10.append(ndcg_at(s, g, 10))
        c, n = _pairwise_counts(s, g, min_grade_gap)
        credit, n_ordered = credit + c, n_ordered + n
    mapped = frame[mapped_col].to_numpy(dtype=np.float64) if mapped_col else scores
    varies = len(frame) > 1 and np.ptp(scores) > 0 and np.ptp(grades) > 0
    spearman = stats.spearmanr(scores, grades).statistic if varies else math.nan
    n_queries = int(frame[schema.QUERY_ID].nunique())
    log.info("NDCG over %d of %d queries (the rest have one distinct grade); %d ordered pairs",
             len(ndcg5), n_queries, n_ordered)
    return {
        "ndcg@5": float(np.mean(ndcg5)) if ndcg5 else math.nan,
        "ndcg@10": float(np.mean(ndcg10)) if ndcg10 else math.nan,
        "pairwise_accuracy": credit / n_ordered if n_ordered else math.nan,
        "spearman": float(spearman),
        "rmse": float(np.sqrt(np.mean((mapped - grades) ** 2))),
        "n_queries": n_queries,
        "n_pairs": int(len(frame)),
    }


def query_bootstrap(frame: pd.DataFrame, score_col: str, grade_col: str = schema.GRADE, *,
                    samples: int = 1000, seed: int = 0, min_grade_gap: float = MIN_GRADE_GAP) -> dict:
    """95% intervals of NDCG@5 and pairwise accuracy when the test queries are resampled with replacement.

    Queries are the unit of sampling (pairs of one query are not independent), so the interval says how
    much a metric would move on another draw of test queries of the same size.
    """
    schema.require_columns(frame, [schema.QUERY_ID, score_col, grade_col])
    ndcg_a, credit_a, ordered_a = _per_query(frame, score_col, grade_col, min_grade_gap)
    pick = np.random.default_rng(seed).integers(0, len(ndcg_a), size=(samples, len(ndcg_a)))
    with np.errstate(invalid="ignore", divide="ignore"):
        pairwise = credit_a[pick].sum(axis=1) / ordered_a[pick].sum(axis=1)
        ndcg5 = np.nanmean(ndcg_a[pick], axis=1)
    return {"ndcg@5": _interval(ndcg5), "pairwise_accuracy": _interval(pairwise), "samples": samples}


def paired_bootstrap(frame: pd.DataFrame, other: pd.DataFrame, score_col: str, grade_col: str = schema.GRADE, *,
                     samples: int = 1000, seed: int = 0, min_grade_gap: float = MIN_GRADE_GAP) -> dict:
    """The difference `frame` minus `other` in NDCG@5 and pairwise accuracy, with paired 95% intervals.

    Both tables score the same (query, product) pairs; the same resampled queries are drawn for both,
    so what two models share (easy and hard queries) cancels and the interval is much narrower than the
    two unpaired intervals suggest. `pairwise_accuracy_p_better` is the share of resamples in which
    `frame` is ahead.
    """
    keys = [schema.QUERY_ID, schema.PRODUCT_ID]
    for table in (frame, other):
        schema.require_columns(table, [*keys, score_col, grade_col])
    mine = frame.sort_values(keys, kind="stable").reset_index(drop=True)
    theirs = other.sort_values(keys, kind="stable").reset_index(drop=True)
    if not (len(mine) == len(theirs) and (mine[keys].to_numpy() == theirs[keys].to_numpy()).all()):
        raise ValueError(f"a paired comparison needs the same (query, product) pairs in both tables; "
                         f"got {len(mine)} and {len(theirs)} rows that differ")
    if not np.allclose(mine[grade_col].to_numpy(np.float64), theirs[grade_col].to_numpy(np.float64)):
        raise ValueError("a paired comparison needs the same grades in both tables")
    n_a, c_a, o = _per_query(mine, score_col, grade_col, min_grade_gap)
    n_b, c_b, _ = _per_query(theirs, score_col, grade_col, min_grade_gap)
    pick = np.random.default_rng(seed).integers(0, len(o), size=(samples, len(o)))
    with np.errstate(invalid="ignore", divide="ignore"):
        pairwise = (c_a[pick].sum(axis=1) - c_b[pick].sum(axis=1)) / o[pick].sum(axis=1)
        ndcg5 = np.nanmean(n_a[pick], axis=1) - np.nanmean(n_b[pick], axis=1)
    finite = pairwise[np.isfinite(pairwise)]
    return {"ndcg@5": float(np.nanmean(n_a) - np.nanmean(n_b)), "ndcg@5_ci": _interval(ndcg5),
            "pairwise_accuracy": float((c_a.sum() - c_b.sum()) / o.sum()) if o.sum() else math.nan,
            "pairwise_accuracy_ci": _interval(pairwise),
            "pairwise_accuracy_p_better": float((finite > 0).mean()) if len(finite) else math.nan,
            "samples": samples}


def _per_query(frame: pd.DataFrame, score_col: str, grade_col: str, min_grade_gap: float):
    """(NDCG@5, pairwise credit, ordered-pair count) per query, in sorted query order."""
    scores, grades = frame[score_col].to_numpy(np.float64), frame[grade_col].to_numpy(np.float64)
    groups = frame.groupby(schema.QUERY_ID, sort=True).indices
    ndcg, credit, ordered = [], [], []
    for rows in groups.values():
        s, g = scores[rows], grades[rows]
        ndcg.append(ndcg_at(s, g, 5) if len(np.unique(np.round(g, 9))) >= 2 else math.nan)
        c, n = _pairwise_counts(s, g, min_grade_gap)
        credit.append(c)
        ordered.append(n)
    return np.array(ndcg), np.array(credit), np.array(ordered, dtype=np.float64)


def _interval(values: np.ndarray) -> list[float] | None:
    values = values[np.isfinite(values)]
    return [float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))] if len(values) else None


def fit_linear_calibration(raw: np.ndarray, target: np.ndarray) -> dict:
    """Least-squares map target ~ scale * raw + offset (a student's raw score onto the grade scale)."""
    raw, target = np.asarray(raw, dtype=np.float64), np.asarray(target, dtype=np.float64)
    if len(raw) != len(target) or not len(raw):
        raise ValueError(f"calibration needs equal, non-empty arrays, got {len(raw)} and {len(target)}")
    if np.std(raw) < 1e-12:
        log.warning("constant raw scores: calibration maps everything to the mean target")
        return {"scale": 0.0, "offset": float(np.mean(target))}
    scale, offset = np.polyfit(raw, target, deg=1)
    return {"scale": float(scale), "offset": float(offset)}


def read_labelled(data_uri: str, fmt: str | None = None) -> pd.DataFrame:
    """Labelled pairs from a kdrank Parquet table (as is) or any source `data.read_pairs` knows."""
    fmt = fmt or data.infer_format(data_uri)
    if fmt == "parquet":
        frame = data.read_table(data_uri)
        if {*schema.PAIR_COLUMNS, schema.GRADE} <= set(frame.columns):  # kdrank's own table: as is
            return frame
    return data.read_pairs(data_uri, fmt)


def evaluate_checkpoint(model_dir: str, data_uri: str, output_dir: str | None = None, *,
                        fmt: str | None = None, batch_size: int = 64, name: str | None = None) -> dict:
    """Score labelled pairs with a teacher or student checkpoint and return its metrics.

    With `output_dir` (local or gs://), writes metrics.json, metrics.md and scores.parquet there, whole.
    Always recomputes: scoring a test set is cheap next to training, and stale metrics mislead.
    """
    from components.scoring import PairScorer

    frame = read_labelled(data_uri, fmt)
    scorer = PairScorer(model_dir)
    try:
        data_grades = schema.num_grades_of(frame) if schema.GRADE_DIST in frame.columns else scorer.num_grades
        if data_grades != scorer.num_grades:
            log.warning("%s has %d grades but %s was trained for %d", data_uri, data_grades, model_dir,
                        scorer.num_grades)
        raw = scorer.score(frame[schema.QUERY].tolist(), frame[schema.PRODUCT_TEXT].tolist(),
                           batch_size=batch_size, desc=f"evaluating {name or scorer.role}").score
        mapped = scorer.to_grade(raw)
        role = scorer.role
    finally:
        scorer.close()
    scored = _scored_frame(frame, raw, mapped)
    metrics = ranking_metrics(scored, SCORE, mapped_col=SCORE_GRADE)
    name = name or f"{role} {Path(str(model_dir).rstrip('/')).name}"
    if output_dir:
        _write_outputs(output_dir, scored, metrics, name=name, source=f"{role} checkpoint {model_dir}",
                       data_uri=data_uri)
    return metrics


def evaluate_baseline(kind: str, data_uri: str, output_dir: str | None = None, *, fmt: str | None = None,
                      seed: int = 13) -> dict:
    """Metrics of a baseline scorer (see `baseline_scores`); RMSE is NaN: baselines have no grade scale."""
    frame = read_labelled(data_uri, fmt)
    scored = _scored_frame(frame, baseline_scores(frame, kind, seed=seed), None)
    metrics = ranking_metrics(scored, SCORE, mapped_col=SCORE_GRADE)
    if output_dir:
        _write_outputs(output_dir, scored, metrics, name=f"baseline {kind}", source=f"baseline {kind}",
                       data_uri=data_uri)
    return metrics


def evaluate_mean(score_files: Sequence[str], data_uri: str, output_dir: str | None = None, *, name: str,
                  fmt: str | None = None) -> dict:
    """Metrics of the mean of several models' per-pair scores of the same labelled pairs.

    `score_files` are `scores.parquet` outputs of `evaluate_checkpoint` (teachers: expected grades). For a
    teacher ensemble, whose probability is the mean of its members', the expected grade is the mean of
    theirs (up to float rounding), so this scores an ensemble from its members' evaluations, with no model.
    """
    frame = read_labelled(data_uri, fmt)
    wanted = pd.MultiIndex.from_frame(frame[[schema.QUERY_ID, schema.PRODUCT_ID]].astype(str))
    raw, mapped = np.zeros(len(frame)), np.zeros(len(frame))
    for path in score_files:
        scored = pd.read_parquet(path)
        index = pd.MultiIndex.from_frame(scored[[schema.QUERY_ID, schema.PRODUCT_ID]].astype(str))
        position = index.get_indexer(wanted) if index.is_unique else np.full(len(frame), -1)
        if len(scored) != len(frame) or (position < 0).any():
            raise ValueError(f"{path} scored other pairs than the {len(frame)} of {data_uri} ({len(scored)} rows, "
                             f"{int((position < 0).sum())} of the pairs not among them)")
        raw += scored[SCORE].to_numpy(dtype=np.float64)[position]
        mapped += scored[SCORE_GRADE].to_numpy(dtype=np.float64)[position]
    scored = _scored_frame(frame, raw / len(score_files), mapped / len(score_files))
    metrics = ranking_metrics(scored, SCORE, mapped_col=SCORE_GRADE)
    if output_dir:
        _write_outputs(output_dir, scored, metrics, name=name, source=f"mean of {len(score_files)} models' scores",
                       data_uri=data_uri)
    return metrics


def _scored_frame(frame: pd.DataFrame, raw: np.ndarray, mapped: np.ndarray | None) -> pd.DataFrame:
    out = frame[[schema.QUERY_ID, schema.QUERY, schema.PRODUCT_ID, schema.GRADE]].copy()
    out[SCORE] = np.asarray(raw, dtype=np.float64)
    out[SCORE_GRADE] = np.full(len(out), np.nan) if mapped is None else np.asarray(mapped, dtype=np.float64)
    return out


def json_safe(value):
    """`value` with every non-finite float (NaN, inf), at any depth of dicts and lists, made None for JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_outputs(output_dir: str, scored: pd.DataFrame, metrics: dict, *, name: str, source: str,
                   data_uri: str) -> None:
    with storage.atomic_dir(output_dir) as tmp:
        Path(tmp, "metrics.json").write_text(json.dumps(json_safe(metrics), indent=2) + "\n")
        header = f"# Evaluation: {name}\n\n- model: {source}\n- data: {data_uri}\n\n"
        Path(tmp, "metrics.md").write_text(header + metrics_table({name: metrics}))
        scored.to_parquet(os.path.join(tmp, "scores.parquet"), index=False)
    log.info("wrote metrics of %s to %s", name, output_dir)


def metrics_table(results: dict[str, dict]) -> str:
    """A Markdown table: one row per model, one column per metric."""
    headers = ["model", "NDCG@5", "NDCG@10", "pairwise acc.", "Spearman", "RMSE", "queries", "pairs"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|"]
    for model, m in results.items():
        cells = [model] + [_cell(m.get(k)) for k in METRIC_KEYS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return f"{value:.4f}"


def baseline_scores(frame: pd.DataFrame, kind: str, seed: int = 13, *, encoder: str | None = None,
                    batch_size: int = 128) -> np.ndarray:
    """Scores of a reference ranker for every row, higher = more relevant.

    'random': seeded uniform noise. 'bm25': bm25s (Lucene BM25, English stop words) of the query
    against product texts, indexed once over the table's distinct products so IDF has real counts,
    read for each query's own candidates. 'biencoder': zero-shot cosine of mean-pooled MiniLM
    embeddings (`encoder`, default the packaged MiniLM-L6).
    """
    if kind == "random":
        return np.random.default_rng(seed).random(len(frame))
    if kind == "bm25":
        return _bm25_scores(frame)
    if kind == "biencoder":
        return _biencoder_scores(frame, encoder, batch_size)
    raise ValueError(f"unknown baseline '{kind}'; expected one of {BASELINES}")


def _bm25_scores(frame: pd.DataFrame) -> np.ndarray:
    from components.augment import BM25Index, import_bm25s

    bm25s = import_bm25s()

    docs, doc_of_row = np.unique(frame[schema.PRODUCT_TEXT].astype(str).to_numpy(), return_inverse=True)
    index = BM25Index(list(docs))  # the augmentation step's BM25 settings
    queries = frame[schema.QUERY].astype(str).to_numpy()
    out = np.zeros(len(frame))
    for rows in frame.groupby(schema.QUERY_ID, sort=False).indices.values():
        tokens = bm25s.tokenize([queries[rows[0]]], stopwords="en", show_progress=False, return_ids=False)[0]
        out[rows] = index.retriever.get_scores(tokens)[doc_of_row[rows]] if tokens else 0.0
    return out


def _biencoder_scores(frame: pd.DataFrame, encoder: str | None, batch_size: int) -> np.ndarray:
    from components.augment import Encoder

    model = Encoder(models.resolve_model(encoder, pairs.STUDENT), batch_size=batch_size)
    queries, query_of_row = np.unique(frame[schema.QUERY].astype(str).to_numpy(), return_inverse=True)
    products, product_of_row = np.unique(frame[schema.PRODUCT_TEXT].astype(str).to_numpy(),
                                         return_inverse=True)
    q = model.encode([pairs.clean_text(t) for t in queries], desc="embedding queries")
    p = model.encode([pairs.clean_text(t) for t in products], desc="embedding products")
    return np.einsum("ij,ij->i", q[query_of_row], p[product_of_row]).astype(np.float64)
