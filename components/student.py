"""Student training: a BERT-family cross-encoder (one score per (query, product)) distilled from the teacher.

Default objective: margin MSE on pairs (a, b) of products of the same query,
((s_a - s_b) - (t_a - t_b))^2. Both halves of a batch go through the model in one forward pass.

Pair-sampling rule (margin MSE), drawn afresh each epoch from seed and epoch, per query with n >= 2 rows:
  1. shuffle the query's products and pair neighbours (1st, 2nd), (3rd, 4th), ...; with n odd the last
     one is paired with a random other product, so every product is in a pair: ceil(n/2) pairs;
  2. with `pairs_per_query` = m: keep the first m of those when m is smaller, else add distinct random
     same-query pairs until there are m (or all n(n-1)/2 pairs);
  3. drop pairs whose targets differ by less than MIN_MARGIN: they carry no ordering to learn.
One epoch therefore shows every product about once (by default), like one epoch of pointwise training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from components import data, models, pairs, resume, schema, storage
from components.batching import TokenTable, length_batches, to_device
from components.checkpoint import META_FILE, CheckpointInfo, write_info
from components.evaluate import SCORE, SCORE_GRADE, fit_linear_calibration, ranking_metrics
from components.losses import margin_mse_loss, pointwise_mse_loss
from components.resume import Resumer, rng_states, set_rng_states
from components.runtime import adamw, autocast, pick_device, seed_everything
from components.schema import DataError

log = logging.getLogger(__name__)

LABELS = {"teacher": schema.TEACHER_SCORE, "human": schema.GRADE}
LOSSES = ("margin_mse", "pointwise_mse")
MIN_MARGIN = 1e-6  # pairs whose targets differ by less are skipped (no ordering to learn)


@dataclass
class StudentConfig:
    """How to train the student. `batch_size` counts product pairs (2x sequences) for margin MSE and
    rows / 2 for pointwise MSE, so both see 2 * batch_size sequences per step.

    learning_rate 5e-5: the usual 2e-5..1e-4 fine-tuning range of 6-layer MiniLM, toward the top because
    the scoring head starts random and distillation sets are small. `pairs_per_query`: see the module
    docstring (None = each product in about one pair per epoch).
    """

    base_model: str | None = None  # HF directory or gs:// URI; None = packaged MiniLM-L6
    labels: str = "teacher"  # "teacher": teacher_score of teacher-label tables; "human": grade
    loss: str = "margin_mse"  # "margin_mse" | "pointwise_mse"
    epochs: float = 3.0
    learning_rate: float = 5e-5
    batch_size: int = 32
    max_length: int = 128
    pairs_per_query: int | None = None
    seed: int = 13
    device: str | None = None
    max_steps: int | None = None
    # At least this many steps (more epochs over a small table): in a scaling curve, the small sets are
    # then trained to convergence rather than for fewer steps than the large ones.
    min_steps: int | None = None
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    calibration_rows: int = 5000  # whole queries up to this many rows, for the calibration and val metrics

    def __post_init__(self):
        if self.labels not in LABELS:
            raise ValueError(f"StudentConfig.labels must be one of {sorted(LABELS)}, got '{self.labels}'")
        if self.loss not in LOSSES:
            raise ValueError(f"StudentConfig.loss must be one of {list(LOSSES)}, got '{self.loss}'")
        for name in ("epochs", "learning_rate", "batch_size", "max_length", "calibration_rows"):
            if not getattr(self, name) > 0:
                raise ValueError(f"StudentConfig.{name} must be > 0, got {getattr(self, name)}")
        for name in ("pairs_per_query", "max_steps", "min_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"StudentConfig.{name} must be None or >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"StudentConfig.warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


@dataclass
class TrainingRows:
    """A training table reduced to what the loop needs: token ids, targets, and row indices per query."""

    tokens: TokenTable
    targets: np.ndarray
    groups: list[np.ndarray]

    @property
    def lengths(self) -> np.ndarray:
        return self.tokens.lengths


def read_training_table(uri: str, labels: str) -> pd.DataFrame:
    """A teacher-label or labelled table (Parquet file or shard directory; CSV/JSONL via read_pairs)."""
    fmt = data.infer_format(uri)
    frame = data.read_table(uri) if fmt == "parquet" else data.read_pairs(uri, fmt)
    column = LABELS[labels]
    if column not in frame.columns:
        hint = ("labels='teacher' needs a teacher-label table (from the labelling step); "
                "use labels='human' to train on graded pairs") if labels == "teacher" else (
                "labels='human' needs a labelled table with grades")
        raise DataError(f"missing column '{column}' ({hint}); found {list(frame.columns)}", path=uri,
                        column=column)
    schema.require_columns(frame, [schema.QUERY_ID, schema.QUERY, schema.PRODUCT_TEXT], path=uri)
    # else a null would be learnt as the text "None"
    schema.require_texts(frame, [schema.QUERY, schema.PRODUCT_TEXT], path=uri)
    target = frame[column].to_numpy(dtype=np.float64)
    if not np.isfinite(target).all():
        row = int(np.flatnonzero(~np.isfinite(target))[0])
        raise DataError(f"non-finite target {target[row]}", path=uri, row=row + 1, column=column)
    if frame.empty:
        raise DataError("no rows to train on", path=uri)
    return frame.reset_index(drop=True)


def _num_grades(frame: pd.DataFrame, uri: str) -> int:
    if not {schema.GRADE_DIST, schema.TEACHER_PROBS} & set(frame.columns):
        raise DataError(f"cannot tell the number of grades: neither '{schema.GRADE_DIST}' nor "
                        f"'{schema.TEACHER_PROBS}' is present", path=uri)
    return schema.num_grades_of(frame)


def training_rows(frame: pd.DataFrame, labels: str, tokenizer, max_length: int) -> TrainingRows:
    """Tokenise every row once (the loop then only gathers and pads ids)."""
    tokens = TokenTable.encode(tokenizer, frame[schema.QUERY].astype(str).tolist(),
                               frame[schema.PRODUCT_TEXT].astype(str).tolist(), role=pairs.STUDENT,
                               max_length=max_length)
    return TrainingRows(tokens=tokens, targets=frame[LABELS[labels]].to_numpy(dtype=np.float64),
                        groups=list(frame.groupby(schema.QUERY_ID, sort=True).indices.values()))


def sample_margin_pairs(groups: Sequence[np.ndarray], targets: np.ndarray, rng: np.random.Generator,
                        pairs_per_query: int | None = None) -> np.ndarray:
    """(m, 2) row indices of same-query pairs for one epoch, by the rule in the module docstring."""
    chosen: list[np.ndarray] = []
    for rows in groups:
        n = len(rows)
        if n < 2:
            continue
        perm = rng.permutation(rows)
        base = [(perm[i], perm[i + 1]) for i in range(0, n - 1, 2)]
        if n % 2:
            base.append((perm[-1], perm[rng.integers(n - 1)]))
        want = len(base) if pairs_per_query is None else min(pairs_per_query, n * (n - 1) // 2)
        picked = base[:want]
        seen = {frozenset(p) for p in picked}
        while len(picked) < want:
            a, b = rng.choice(rows, size=2, replace=False)
            if frozenset((a, b)) not in seen:
                seen.add(frozenset((a, b)))
                picked.append((a, b))
        chosen.append(np.asarray(picked, dtype=np.int64))
    if not chosen:
        return np.zeros((0, 2), dtype=np.int64)
    out = np.concatenate(chosen)
    return out[np.abs(targets[out[:, 0]] - targets[out[:, 1]]) >= MIN_MARGIN]


def pair_scores(model, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """(n,) float32 scores of a one-label cross-encoder for a padded batch already on `device`."""
    with autocast(device):
        logits = model(**batch).logits
    if logits.shape[-1] != 1:
        raise ValueError(f"the student must have one output label, got {logits.shape[-1]}")
    return logits.float().squeeze(-1)


def batch_loss(model, rows: TrainingRows, items: np.ndarray, loss: str, device: torch.device) -> torch.Tensor:
    """The loss of one batch of items ((m, 2) pairs for margin MSE, (n, 1) rows for pointwise MSE).

    Margin MSE puts the a and b halves into ONE forward pass (2m sequences), not two.
    """
    idx = np.concatenate([items[:, 0], items[:, 1]]) if loss == "margin_mse" else items[:, 0]
    scores = pair_scores(model, rows.tokens.batch(idx, device), device)
    t = to_device(torch.from_numpy(rows.targets[idx].astype(np.float32)), device)
    if loss == "margin_mse":
        m = len(items)
        return margin_mse_loss(scores[:m], scores[m:], t[:m], t[m:])
    return pointwise_mse_loss(scores, t)


def epoch_batches(rows: TrainingRows, config: StudentConfig,
                   epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
    """(batches of item indices, items) for one epoch; items are pairs (m, 2) or rows (n, 1)."""
    rng = np.random.default_rng([config.seed, epoch])
    if config.loss == "margin_mse":
        items = sample_margin_pairs(rows.groups, rows.targets, rng, config.pairs_per_query)
        lengths = np.maximum(rows.lengths[items[:, 0]], rows.lengths[items[:, 1]])
        return length_batches(lengths, config.batch_size, rng), items
    items = np.arange(len(rows.targets))[:, None]
    return length_batches(rows.lengths, 2 * config.batch_size, rng), items


def _optimizer(model, config: StudentConfig, total_steps: int, device: torch.device):
    from transformers import get_linear_schedule_with_warmup

    decay, no_decay = [], []
    for name, param in model.named_parameters():
        (no_decay if param.ndim < 2 or "LayerNorm" in name else decay).append(param)
    optimizer = adamw([{"params": decay, "weight_decay": config.weight_decay},
                       {"params": no_decay, "weight_decay": 0.0}], device, lr=config.learning_rate)
    warmup = int(round(config.warmup_ratio * total_steps))
    return optimizer, get_linear_schedule_with_warmup(optimizer, warmup, total_steps)


def _rows_digest(frame: pd.DataFrame, target: np.ndarray) -> str:
    """sha256 of what the student learns from, row by row: query id, query and product text, target."""
    digest = hashlib.sha256()
    texts = frame[[schema.QUERY_ID, schema.QUERY, schema.PRODUCT_TEXT]].astype(str)
    digest.update(pd.util.hash_pandas_object(texts, index=False).to_numpy().tobytes())
    digest.update(np.ascontiguousarray(target, dtype=np.float64).tobytes())
    return digest.hexdigest()


def _settings(train_uri: str, val_uri: str | None, config: StudentConfig, frame: pd.DataFrame) -> dict:
    """What determines the result (device aside); a rerun with equal settings skips training."""
    target = frame[LABELS[config.labels]].to_numpy(dtype=np.float64)
    fingerprint = {"rows": len(frame), "queries": int(frame[schema.QUERY_ID].nunique()),
                   "target_sum": round(float(target.sum()), 6), "sha256": _rows_digest(frame, target)}
    config_dict = {k: v for k, v in dataclasses.asdict(config).items() if k != "device"}
    return json.loads(json.dumps({"train": str(train_uri), "val": val_uri, "train_table": fingerprint,
                                  "config": config_dict}))


def _finished(output_dir: str, settings: dict) -> dict | None:
    meta = storage.join(output_dir, META_FILE)
    if not storage.exists(meta):
        return None
    training = json.loads(storage.read_text(meta)).get("training", {})
    if training.get("settings") != settings or "summary" not in training:
        return None
    log.info("student already trained with these settings in %s; skipping", output_dir)
    return {**training["summary"], "path": str(output_dir), "skipped": True}


def _query_sample(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    """Whole queries, in a seeded random order, up to `max_rows` rows (all when the table is small)."""
    if len(frame) <= max_rows:
        return frame.reset_index(drop=True)
    qids = frame[schema.QUERY_ID].unique()
    sizes = frame.groupby(schema.QUERY_ID).size()
    shuffled = np.random.default_rng(seed).permutation(qids)
    fits = int(np.searchsorted(np.cumsum(sizes[shuffled].to_numpy()), max_rows, side="right"))
    keep = shuffled[: max(1, fits)]
    return frame[frame[schema.QUERY_ID].isin(set(keep))].reset_index(drop=True)


def _calibration_set(train: pd.DataFrame, val_uri: str | None,
                     config: StudentConfig) -> tuple[pd.DataFrame, str, str]:
    """(table, target column, name): val with the preferred target column, else the training table."""
    preferred = [schema.TEACHER_SCORE, schema.GRADE] if config.labels == "teacher" else [schema.GRADE]
    if val_uri:
        fmt = data.infer_format(val_uri)
        val = data.read_table(val_uri) if fmt == "parquet" else data.read_pairs(val_uri, fmt)
        for column in preferred:
            if column in val.columns and len(val):
                return _query_sample(val, config.calibration_rows, config.seed), column, "val"
        log.warning("%s has none of %s; calibrating on the training table", val_uri, preferred)
    return _query_sample(train, config.calibration_rows, config.seed), LABELS[config.labels], "train"


def _calibrate(model_dir: str, frame: pd.DataFrame, column: str, config: StudentConfig) -> tuple[dict, dict]:
    """Fit raw score -> target scale by least squares and measure ranking metrics on the same rows."""
    from components.scoring import PairScorer

    scorer = PairScorer(model_dir, device=config.device, max_length=config.max_length)
    try:
        raw = scorer.score(frame[schema.QUERY].tolist(), frame[schema.PRODUCT_TEXT].tolist(),
                           desc="calibrating student").score
    finally:
        scorer.close()
    target = frame[column].to_numpy(dtype=np.float64)
    calibration = fit_linear_calibration(raw, target)
    scored = pd.DataFrame({schema.QUERY_ID: frame[schema.QUERY_ID].to_numpy(), "target": target, SCORE: raw,
                           SCORE_GRADE: calibration["scale"] * raw + calibration["offset"]})
    return calibration, ranking_metrics(scored, SCORE, "target", SCORE_GRADE)


def train_student(train_uri: str, val_uri: str | None, output_dir: str,
                  config: StudentConfig | None = None, *, state_dir: str | None = None) -> dict:
    """Train a cross-encoder student on teacher (or human) labels; save it with tokenizer and kdrank.json.

    The output directory (local or gs://) is written whole; a rerun with the same settings and the same
    training table skips. Training cut short (SIGTERM, a time limit, a crash) leaves its state in `state_dir`
    (local or gs://; default `<output_dir>.state`), and the same call resumes from it to the student an
    uninterrupted run makes (components.resume).
    Returns a summary: path, seconds, pairs_per_s, losses, val metrics, calibration.
    """
    config = config or StudentConfig()
    frame = read_training_table(train_uri, config.labels)
    base = models.resolve_model(config.base_model, pairs.STUDENT)
    # the base's fingerprint too: config.base_model is "" for the default, whichever model that resolves to
    settings = {**_settings(train_uri, val_uri, config, frame), "base": models.model_fingerprint(base)}
    done = _finished(output_dir, settings)
    if done:
        return done
    num_grades = _num_grades(frame, train_uri)
    seed_everything(config.seed)
    device = pick_device(config.device)
    from components.scoring import check_max_length, load_classifier

    # fp32 weights whatever the base directory stores (a bf16 one would round small updates away); autocast
    # still computes in bf16 where it pays
    tokenizer, model = load_classifier(base, role=pairs.STUDENT, num_labels=1, dtype=torch.float32)
    check_max_length(config.max_length, tokenizer, model, option="student max_length", source=str(base))
    model.to(device).train()
    rows = training_rows(frame, config.labels, tokenizer, config.max_length)

    batches, items = epoch_batches(rows, config, 0)
    if not batches:
        raise DataError("no same-query pairs with different targets to train on (every query has one "
                        "product, or equal targets)", path=str(train_uri))
    total_steps = math.ceil(config.epochs * len(batches))
    if config.min_steps:
        total_steps = max(total_steps, config.min_steps)
    if config.max_steps:
        total_steps = min(total_steps, config.max_steps)
    optimizer, scheduler = _optimizer(model, config, total_steps, device)
    log.info("student: %d rows, %d queries, %d %s items/epoch, %d steps on %s", len(frame), len(rows.groups),
             len(items), config.loss, total_steps, device)

    # Losses stay on the device and are read once per log point: a read waits for the GPU, and a wait
    # every step would leave it idle while the host prepares the next batch.
    # `loop` is what a resumed run needs besides the model, optimiser and schedule (components.resume); an
    # epoch's batches follow from its number, so the position in it is enough.
    loop = {"step": 0, "sequences": 0, "epoch_losses": [], "curve": [], "window": [], "epoch": 0,
            "empty_epochs": 0, "epoch_sum": 0.0, "epoch_steps": 0, "seconds": 0.0, "cpu_seconds": 0.0,
            "resumed_at": []}
    identity = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()  # what the skip compares
    resumer = Resumer(state_dir or resume.state_dir(output_dir), identity)
    if (saved := resumer.load(device)) is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_states(saved["rng"])
        loop.update(saved["loop"])
        loop["resumed_at"] = [*loop["resumed_at"], loop["step"]]
    window = [torch.tensor(v, device=device) for v in loop["window"]]
    log_every = max(1, total_steps // 50)
    bar = tqdm(total=total_steps, initial=loop["step"], desc=f"student ({config.loss}, {config.labels} labels)",
               unit="step")
    start, cpu_start = time.perf_counter(), time.process_time()

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_states(), "done": loop["step"], "total": total_steps,
                "loop": {**loop, "window": [float(v) for v in window], "epoch_sum": float(epoch_sum),
                         "epoch_steps": epoch_steps, "seconds": loop["seconds"] + time.perf_counter() - start,
                         "cpu_seconds": loop["cpu_seconds"] + time.process_time() - cpu_start}}

    with resumer.watch():
        while loop["step"] < total_steps:
            if loop["epoch"]:
                batches, items = epoch_batches(rows, config, loop["epoch"])
            epoch_steps = loop["epoch_steps"]  # > 0 only when resuming inside this epoch
            epoch_sum = torch.tensor(loop["epoch_sum"], device=device)
            for batch in batches[epoch_steps:]:
                loss = batch_loss(model, rows, items[batch], config.loss, device)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                loop["step"] += 1
                loop["sequences"] += items[batch].size
                epoch_sum += loss.detach()
                epoch_steps += 1
                window.append(loss.detach())
                if loop["step"] % log_every == 0 or loop["step"] == total_steps:
                    loop["curve"].append([loop["step"], torch.stack(window).mean().item()])
                    bar.set_postfix(loss=f"{loop['curve'][-1][1]:.4f}", epoch=loop["epoch"])
                    window = []
                bar.update(1)
                if loop["step"] >= total_steps:
                    break
                resumer.step(state)
            loop["empty_epochs"] = 0 if epoch_steps else loop["empty_epochs"] + 1
            if epoch_steps:
                loop["epoch_losses"].append(epoch_sum.item() / epoch_steps)
                if not math.isfinite(loop["epoch_losses"][-1]):
                    raise RuntimeError(f"the student's training loss is {loop['epoch_losses'][-1]} in epoch "
                                       f"{loop['epoch'] + 1}: diverged (try a lower learning_rate); nothing is saved")
            elif loop["empty_epochs"] > 100:  # a tiny table may draw an empty epoch now and then, never this many
                raise RuntimeError(f"no training pairs drawn from {train_uri} in {loop['empty_epochs']} epochs")
            loop.update(epoch=loop["epoch"] + 1, epoch_sum=0.0, epoch_steps=0)
    bar.close()
    # training time of every run that made it (a resumed run adds its own to the saved runs')
    seconds = loop["seconds"] + time.perf_counter() - start
    cpu_seconds = loop["cpu_seconds"] + time.process_time() - cpu_start
    step, sequences, epoch_losses, curve = loop["step"], loop["sequences"], loop["epoch_losses"], loop["curve"]
    model.eval()

    cal_frame, cal_column, cal_set = _calibration_set(frame, val_uri, config)
    summary = {
        "path": str(output_dir), "loss": config.loss, "labels": config.labels, "device": str(device),
        "train_rows": len(frame), "train_queries": len(rows.groups), "items_per_epoch": len(items),
        "steps": step, "epochs_run": round(step / len(batches), 4), "seconds": round(seconds, 3),
        "cpu_seconds": round(cpu_seconds, 3),  # process CPU time of the loop, all threads
        "pairs_per_s": sequences / seconds,  # (query, product) pairs through forward + backward per second
        "margin_pairs_per_s": sequences / 2 / seconds if config.loss == "margin_mse" else None,
        "losses": epoch_losses, "loss_curve": curve, "final_loss": curve[-1][1],
    }
    if loop["resumed_at"]:
        summary["resumed_at_step"] = loop["resumed_at"]
    info = CheckpointInfo(role=pairs.STUDENT, num_grades=num_grades, max_length=config.max_length,
                          base_model=config.base_model or models.STUDENT_NAME)
    # kdrank.json is what a rerun checks for: on gs:// it is uploaded after the weights.
    with storage.atomic_dir(output_dir, last=(META_FILE,)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_info(tmp, info)
        calibration, metrics = _calibrate(tmp, cal_frame, cal_column, config)
        summary.update(calibration=calibration, calibration_set=f"{cal_set}:{cal_column}",
                       val_metrics={k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                                    for k, v in metrics.items()})
        info.calibration = calibration
        info.training = {"settings": settings, "summary": summary}
        write_info(tmp, info)
    resumer.clear()
    log.info("student saved to %s: %.1f s, %.1f pairs/s, final loss %.4f, %s metrics %s", output_dir, seconds,
             summary["pairs_per_s"], summary["final_loss"], cal_set, summary["val_metrics"])
    return summary
