"""Fine-tune a decoder LLM as a relevance classifier over K grades with soft targets (the teacher).

The model is `AutoModelForSequenceClassification` over any Hugging Face decoder (default SmolLM2-135M),
trained with cross-entropy against the raters' grade distribution (arXiv 2505.07105), or against the
one-hot arg-max grade for the hard-target ablation. Optional LoRA (merged before saving), optional
ensemble of members trained with consecutive seeds. The output is a kdrank checkpoint directory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from components import models, pairs, resume, schema, storage
from components.batching import TokenTable, length_batches, to_device
from components.checkpoint import META_FILE, CheckpointInfo, write_info
from components.data import read_table
from components.losses import soft_target_cross_entropy
from components.resume import Resumer, rng_states, set_rng_states
from components.runtime import adamw, autocast, pick_device, seed_everything
from components.scoring import check_max_length, load_classifier

log = logging.getLogger(__name__)

LOSS_READ_EVERY = 50  # training batches between reads of the running loss (each read syncs the GPU)
HEAD_INITS = ("random", "verbaliser")


@dataclass
class TeacherConfig:
    base_model: str | None = None  # HF decoder directory or gs:// URI; None = packaged SmolLM2-135M-Instruct
    epochs: float = 2.0
    learning_rate: float = 5e-5
    batch_size: int = 16
    max_length: int = 128
    soft_targets: bool = True  # False: one-hot of the arg-max grade (the hard-target ablation)
    lora: bool = False
    lora_rank: int = 16
    ensemble_size: int = 1  # members trained with seeds seed, seed+1, ...; probabilities averaged
    seed: int = 13
    max_train_pairs: int | None = None
    device: str | None = None
    grad_accumulation: int = 1
    warmup_ratio: float = 0.1
    # "random": a new linear head on the last token. "verbaliser": the head starts as the LM's own output
    # rows for one word per grade (`verbaliser`, lowest grade first), prompt-based fine-tuning's start.
    head_init: str = "random"
    verbaliser: tuple[str, ...] = ("Low", "Medium", "High")

    def __post_init__(self):
        checks = {
            "epochs": self.epochs > 0, "learning_rate": self.learning_rate > 0,
            "batch_size": self.batch_size >= 1, "max_length": self.max_length >= 8,
            "lora_rank": self.lora_rank >= 1,
            "ensemble_size": self.ensemble_size >= 1, "grad_accumulation": self.grad_accumulation >= 1,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "max_train_pairs": self.max_train_pairs is None or self.max_train_pairs >= 1,
            "head_init": self.head_init in HEAD_INITS,
            "verbaliser": len(self.verbaliser) >= 2 and all(str(w).strip() for w in self.verbaliser),
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)!r}" for name in bad)
            raise ValueError(f"invalid TeacherConfig value(s): {values}")


def train_teacher(train_uri: str, val_uri: str | None, output_dir: str, config: TeacherConfig, *,
                  on_epoch_end=None, reuse: Sequence[str] = (), state_dir: str | None = None) -> dict:
    """Train the teacher on labelled pairs and save a kdrank checkpoint at `output_dir` (local or gs://).

    `on_epoch_end(epoch, model, tokenizer, device)`, when given, is called after every epoch of every
    member (the model is put back in training mode afterwards); probes use it to score a recipe epoch by epoch.

    The checkpoint is finished when its kdrank.json is written, last; a rerun with the same data and config
    finds it and returns its stored summary without training. "The same data" means the same table
    contents, wherever they are stored: a runs folder that moved (to gs://, to another machine), or a
    teacher trained by the pipeline on an identical split, is not retrained.

    A single teacher's directory is written whole or not at all. An ensemble keeps each member as it
    finishes (`member-i/`, a usable teacher with its own settings), so a run cut short by a time limit
    keeps its finished members and a rerun trains only the rest. A member may also come from `reuse`:
    finished single-teacher checkpoints, one of which is copied in when it was trained with exactly the
    member's data, settings and seed (an ensemble's first member is the plain teacher of the same recipe).

    Training cut short (SIGTERM, a time limit, a crash) leaves its state in `state_dir` (local or gs://;
    default `<output_dir>.state`, an ensemble's members in sub-folders), and the same call resumes from it
    to the teacher an uninterrupted run makes (components.resume).
    """
    train = _read_labelled(train_uri)
    val = _read_labelled(val_uri) if val_uri else None
    base = models.resolve_model(config.base_model, pairs.TEACHER)
    fingerprint = models.model_fingerprint(base)  # the weights behind the name: another base is another teacher
    settings = _settings(train_uri, val_uri, train, val, config, fingerprint)
    done = _finished_summary(output_dir, settings)
    if done is not None:
        log.info("teacher checkpoint %s is already trained with these settings; skipping", output_dir)
        return done

    num_grades = schema.num_grades_of(train)
    if val is not None and schema.num_grades_of(val) != num_grades:
        raise ValueError(f"{val_uri} has {schema.num_grades_of(val)} grades but {train_uri} has {num_grades}")
    device = pick_device(config.device)
    log.info("training teacher on %d pairs (%d grades) from %s on %s",
             min(len(train), config.max_train_pairs or len(train)), num_grades, base, device)

    base_name = config.base_model or models.TEACHER_NAME

    def info(training: dict, members: Sequence[str] = ()) -> CheckpointInfo:
        return CheckpointInfo(role=pairs.TEACHER, num_grades=num_grades, max_length=config.max_length,
                              base_model=base_name, members=list(members), training=training)

    def train_one(cfg: TeacherConfig, out: Path, desc: str, resumer: Resumer) -> dict:
        return _train_member(base, _subsample(train, cfg), val, out, cfg, num_grades, device=device, desc=desc,
                             on_epoch_end=on_epoch_end, resumer=resumer)

    state_root = state_dir or resume.state_dir(output_dir)
    member_names = [f"member-{m}" for m in range(config.ensemble_size)] if config.ensemble_size > 1 else []
    if not member_names:
        resumer = Resumer(state_root, _resume_identity(settings))
        with storage.atomic_dir(output_dir) as tmp:
            summary = _combine([train_one(config, Path(tmp), "teacher 1/1", resumer)], output_dir)
    else:
        _drop_stale(output_dir)
        members = []
        for m, name in enumerate(member_names):
            cfg = dataclasses.replace(config, ensemble_size=1, seed=config.seed + m)
            member_settings = _settings(train_uri, val_uri, train, val, cfg, fingerprint)
            resumer = Resumer(storage.join(state_root, name), _resume_identity(member_settings))
            members.append(_ensemble_member(storage.join(output_dir, name), reuse, member_settings, info,
                                            lambda out, cfg=cfg, m=m, resumer=resumer: train_one(
                                                cfg, out, f"teacher {m + 1}/{config.ensemble_size}", resumer)))
            resumer.clear()
        summary = _combine(members, output_dir)
    # kdrank.json goes last, after the whole directory is in place (gs:// uploads file by file): it is
    # the marker a rerun looks for, so an interrupted upload is retrained, never mistaken for finished.
    write_info(output_dir, info({**settings, "summary": summary}, member_names))
    if not member_names:
        resumer.clear()
    resume.remove_empty(state_root)
    log.info("teacher saved to %s: %s", output_dir, json.dumps(summary))
    return summary


def _settings(train_uri, val_uri, train: pd.DataFrame, val: pd.DataFrame | None, config: TeacherConfig,
              base: str | None = None) -> dict:
    """What a finished teacher records of its making, and what a rerun must match to skip training; `base`,
    the base model's `models.model_fingerprint`, where it is known (training; not a planned identity)."""
    return {"train_uri": str(train_uri), "val_uri": None if val_uri is None else str(val_uri),
            "train_data": table_digest(train), "val_data": None if val is None else table_digest(val),
            "config": dataclasses.asdict(config), **({"base": base} if base is not None else {})}


def _resume_identity(settings: dict) -> str:
    """What a saved training state must match to be resumed: the teacher's identity and its base's weights."""
    return hashlib.sha256(f"{identity(settings)}:{settings.get('base')}".encode()).hexdigest()


def _subsample(train: pd.DataFrame, config: TeacherConfig) -> pd.DataFrame:
    """At most `max_train_pairs` of the training pairs, drawn with the model's own seed."""
    if config.max_train_pairs is None or len(train) <= config.max_train_pairs:
        return train
    keep = np.random.default_rng(config.seed).choice(len(train), config.max_train_pairs, replace=False)
    return train.iloc[np.sort(keep)].reset_index(drop=True)


def _ensemble_member(member_dir: str, reuse: Sequence[str], settings: dict, info, train_one) -> dict:
    """One ensemble member's summary: already finished in place, copied from a matching teacher in
    `reuse`, or trained now; in every case `member_dir` holds it, finished, afterwards."""
    if (done := _stored_summary(member_dir, settings)) is not None:
        log.info("ensemble member %s is already trained; keeping it", member_dir)
        return done
    for source in reuse:
        if (done := _stored_summary(source, settings)) is not None:
            log.info("ensemble member %s: copying %s, trained with the same data, settings and seed",
                     member_dir, source)
            with storage.local_dir(source) as local, storage.atomic_dir(member_dir, last=(META_FILE,)) as tmp:
                shutil.copytree(local, tmp, dirs_exist_ok=True)
            return {**done, "reused_from": str(source)}
    with storage.atomic_dir(member_dir, last=(META_FILE,)) as tmp:
        member = train_one(Path(tmp))
        summary = _combine([member], member_dir)
        write_info(tmp, info({**settings, "summary": summary}))
    return summary


def _drop_stale(output_dir: str) -> None:
    """Before an ensemble is built member by member in `output_dir`, unmark what was finished there with
    other settings: a cut-short run must never leave an old kdrank.json naming a mix of old and new members.
    A local directory goes whole, as a replaced single teacher always did; its members go with it, even
    one whose own settings would still match (say, after only the ensemble size changed), and are retrained.
    On gs:// only the marker goes (no directory to remove in one step); stale files stay and are overwritten."""
    meta = storage.join(output_dir, META_FILE)
    if not storage.exists(meta):
        return
    if storage.is_gcs(output_dir):
        storage.remove(meta)
    else:
        shutil.rmtree(output_dir)


IDENTITY_KEYS = ("train_data", "val_data", "config")


def identity(settings: dict) -> str:
    """What makes two teachers the same model: the contents of their training and validation data and
    their config, not where the data was stored. The base model's fingerprint is not part of it (archived
    label sets are keyed on it, from before teachers recorded one); `_stored_summary` checks it apart.
    `settings` is `_settings`'s dict, or the `training` record of a checkpoint's kdrank.json (the same keys,
    read back from JSON)."""
    missing = [k for k in IDENTITY_KEYS if k not in settings]
    if missing:
        raise ValueError(f"teacher settings lack {missing}: a checkpoint from before kdrank recorded its data "
                         "contents has no identity")
    wanted = json.loads(json.dumps({k: settings[k] for k in IDENTITY_KEYS}))  # tuples as lists, as stored
    return hashlib.sha256(json.dumps(wanted, sort_keys=True).encode()).hexdigest()


def planned_identity(train_uri: str, val_uri: str | None, config: TeacherConfig) -> str:
    """The identity of the teacher `train_teacher` would make from these inputs, without training it."""
    train = _read_labelled(train_uri)
    val = _read_labelled(val_uri) if val_uri else None
    return identity(_settings(train_uri, val_uri, train, val, config))


def checkpoint_identity(checkpoint: str) -> str:
    """The identity of a finished teacher checkpoint (local or gs://), from its kdrank.json."""
    return identity(json.loads(storage.read_text(storage.join(checkpoint, META_FILE))).get("training", {}))


def table_digest(frame: pd.DataFrame) -> str:
    """sha256 of a table's columns and values: the identity of training data wherever it is stored."""
    return hashlib.sha256(frame.to_json(orient="split", index=False, double_precision=15).encode()).hexdigest()


def _stored_summary(checkpoint: str, settings: dict) -> dict | None:
    """The stored training summary of a finished teacher made with `settings`; None otherwise."""
    meta = storage.join(checkpoint, META_FILE)
    if not storage.exists(meta):
        return None
    stored = json.loads(storage.read_text(meta)).get("training", {})
    wanted = json.loads(json.dumps(settings))
    # Checkpoints that record their data's contents are matched on those; older ones only on its paths.
    keys = ("train_data", "val_data", "config") if stored.get("train_data") else ("train_uri", "val_uri", "config")
    if any(stored.get(k) != wanted[k] for k in keys):
        return None
    # a checkpoint from before teachers recorded their base's fingerprint is matched without it
    if "base" in stored and "base" in wanted and stored["base"] != wanted["base"]:
        return None
    return {**stored.get("summary", {}), "skipped": True}


def _finished_summary(output_dir: str, settings: dict) -> dict | None:
    summary = _stored_summary(output_dir, settings)
    if summary is None and storage.exists(storage.join(output_dir, META_FILE)):
        log.warning("%s holds a teacher trained with other settings; it will be replaced", output_dir)
    return summary


def _read_labelled(uri: str) -> pd.DataFrame:
    """A labelled table the teacher can learn from: texts present, every grade distribution a distribution."""
    frame = read_table(uri)
    schema.require_columns(frame, [schema.QUERY, schema.PRODUCT_TEXT, schema.GRADE_DIST], path=str(uri))
    if frame.empty:
        raise schema.DataError("no labelled pairs", path=str(uri))
    schema.require_texts(frame, [schema.QUERY, schema.PRODUCT_TEXT], path=str(uri))
    lengths = frame[schema.GRADE_DIST].map(lambda v: np.size(v) if v is not None else 0).to_numpy()
    if (lengths != lengths[0]).any() or lengths[0] < 2:
        row = int(np.flatnonzero(lengths != lengths[0])[0]) if (lengths != lengths[0]).any() else 0
        raise schema.DataError(f"grade distributions of {sorted(set(lengths.tolist()))} grades; every row needs "
                               "the same number, at least 2", path=str(uri), row=row + 1, column=schema.GRADE_DIST)
    dist = schema.dist_matrix(frame)
    bad = ~np.isfinite(dist).all(axis=1) | (dist < 0).any(axis=1) | ~(dist.sum(axis=1) > 0)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise schema.DataError(f"{int(bad.sum())} grade distribution(s) with a negative, NaN or infinite share or "
                               f"none above zero, e.g. {dist[row].tolist()}", path=str(uri), row=row + 1,
                               column=schema.GRADE_DIST)
    return frame


def targets_of(frame: pd.DataFrame, soft: bool) -> np.ndarray:
    """(n, K) training targets: the grade distribution, or the one-hot of its arg-max (hard ablation)."""
    dist = schema.dist_matrix(frame)
    if soft:
        return dist / dist.sum(axis=1, keepdims=True)
    return np.eye(dist.shape[1])[dist.argmax(axis=1)]


def _train_member(base: str, train: pd.DataFrame, val: pd.DataFrame | None, out: Path, config: TeacherConfig,
                  num_grades: int, *, device: torch.device, desc: str, on_epoch_end=None,
                  resumer: Resumer | None = None) -> dict:
    seed = config.seed
    seed_everything(seed)
    # fp32 weights whatever the base directory stores (a bf16 one would round small updates away); autocast
    # still computes in bf16 where it pays
    tokenizer, model = load_classifier(base, role=pairs.TEACHER, num_labels=num_grades, dtype=torch.float32)
    check_max_length(config.max_length, tokenizer, model, option="teacher max_length", source=str(base))
    if config.head_init == "verbaliser":
        words = init_head_from_verbaliser(model, tokenizer, base, config.verbaliser)
        log.info("classification head started from the LM's rows for %s", words)
    if config.lora:
        model = _with_lora(model, config.lora_rank)
    model.to(device)
    data = _encode(tokenizer, train, config.max_length)
    targets = torch.tensor(targets_of(train, config.soft_targets), dtype=torch.float32)
    val_data = _encode(tokenizer, val, config.max_length) if val is not None else None
    val_targets = torch.tensor(targets_of(val, True), dtype=torch.float32) if val is not None else None

    rng = np.random.default_rng(seed)
    per_epoch = math.ceil(len(train) / config.batch_size)
    total_batches = max(1, math.ceil(config.epochs * per_epoch))
    total_steps = math.ceil(total_batches / config.grad_accumulation)
    optimizer = adamw([p for p in model.parameters() if p.requires_grad], device, lr=config.learning_rate,
                      weight_decay=0.01)
    from transformers import get_linear_schedule_with_warmup

    warmup = int(config.warmup_ratio * total_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, warmup, total_steps)
    # The loop's own state: what a resumed run needs besides the model, optimiser and schedule (see
    # components.resume). `epoch_rng` is the batch-order generator as the current epoch began.
    loop = {"done": 0, "total": total_batches, "pairs_seen": 0, "seconds": 0.0, "epoch_losses": [],
            "val_losses": [], "val_initial": None, "epoch_start": 0, "epoch_sum": 0.0, "epoch_batches": 0,
            "resumed_at": []}
    saved = resumer.load(device) if resumer else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        set_rng_states(saved["rng"])
        rng.bit_generator.state = saved["epoch_rng"]
        loop.update(saved["loop"])
        loop["resumed_at"] = [*loop["resumed_at"], loop["done"]]
    elif val_data:
        loop["val_initial"] = _val_loss(model, val_data, val_targets, device, config.batch_size)
    bar = tqdm(total=total_batches, initial=loop["done"], desc=desc, unit="batch")
    start = time.perf_counter()

    def state() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_states(), "epoch_rng": epoch_rng, "done": loop["done"], "total": total_batches,
                "loop": {**loop, "epoch_sum": float(epoch_sum), "epoch_batches": epoch_batches,
                         "seconds": loop["seconds"] + time.perf_counter() - start}}

    with resumer.watch() if resumer else contextlib.nullcontext():
        # (a run resumed from a save at the last batch still has that epoch's end to do: its loss, validation)
        while loop["done"] < total_batches or loop["epoch_batches"]:
            model.train()
            # Losses are summed on the device and read at most every LOSS_READ_EVERY batches: a read waits for
            # the GPU, and a wait every step would leave it idle while the host prepares the next batch.
            epoch_rng = rng.bit_generator.state
            batches = length_batches(data.lengths, config.batch_size, rng)[:total_batches - loop["epoch_start"]]
            epoch_batches = loop["epoch_batches"]  # > 0 only when resuming inside this epoch
            epoch_sum, recent = torch.tensor(loop["epoch_sum"], device=device), []
            for idx in batches[epoch_batches:]:
                with autocast(device):
                    logits = model(**data.batch(idx, device)).logits
                loss = soft_target_cross_entropy(logits.float(), to_device(targets[idx], device))
                (loss / config.grad_accumulation).backward()
                loop["done"] += 1
                loop["pairs_seen"] += len(idx)
                epoch_sum += loss.detach()
                epoch_batches += 1
                recent.append(loss.detach())
                bar.update(1)
                if len(recent) == LOSS_READ_EVERY:
                    bar.set_postfix(loss=f"{torch.stack(recent).mean().item():.4f}")
                    recent = []
                if loop["done"] % config.grad_accumulation == 0 or loop["done"] == total_batches:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    if resumer:
                        resumer.step(state)
            loop["epoch_losses"].append(epoch_sum.item() / max(epoch_batches, 1))
            if not math.isfinite(loop["epoch_losses"][-1]):
                raise RuntimeError(f"the teacher's training loss is {loop['epoch_losses'][-1]} in epoch "
                                   f"{len(loop['epoch_losses'])}: diverged (try a lower learning_rate); "
                                   "nothing is saved")
            loop.update(epoch_start=loop["done"], epoch_sum=0.0, epoch_batches=0)
            if val_data is not None:
                loop["val_losses"].append(_val_loss(model, val_data, val_targets, device, config.batch_size))
                bar.set_postfix(loss=f"{loop['epoch_losses'][-1]:.4f}", val=f"{loop['val_losses'][-1]:.4f}")
            if on_epoch_end is not None:
                on_epoch_end(len(loop["epoch_losses"]), model, tokenizer, device)
    bar.close()
    seconds = loop["seconds"] + time.perf_counter() - start  # training time of every run that made it
    if config.lora:
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {"seed": seed, "train_seconds": round(seconds, 3), "train_pairs": len(train),
               "pairs_seen": loop["pairs_seen"], "pairs_per_second": round(loop["pairs_seen"] / max(seconds, 1e-9), 2),
               "optimizer_steps": total_steps,
               "train_loss_per_epoch": loop["epoch_losses"], "final_train_loss": loop["epoch_losses"][-1],
               "val_loss_initial": loop["val_initial"], "val_loss_per_epoch": loop["val_losses"]}
    if loop["resumed_at"]:
        summary["resumed_at_batch"] = loop["resumed_at"]
    return summary


def init_head_from_verbaliser(model, tokenizer, base: str | Path, words, *, leading_space: bool = True) -> list[str]:
    """Start the classification head from the LM's output rows of one word per grade (lowest grade first).

    The head's logits then equal the LM's next-token logits of those words after the prompt, so training
    starts from the model's own reading of the answer words instead of a random projection (the few-shot
    recipe of prompt-based fine-tuning). Each word counts by its first token; the tokens must differ.
    A word is read as it follows other text (" Low") unless `leading_space` is False (a chat turn's "Low").
    """
    head = getattr(model, "score", None)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"head_init='verbaliser' needs a decoder classifier with a linear 'score' head; "
                         f"{type(model).__name__} has none")
    if len(words) != head.out_features:
        raise ValueError(f"the verbaliser has {len(words)} words {list(words)} but the teacher has "
                         f"{head.out_features} grades; give one word per grade, lowest first")
    ids = [tokenizer.encode((" " if leading_space else "") + str(w).strip(), add_special_tokens=False)[0]
           for w in words]
    if len(set(ids)) != len(ids):
        raise ValueError(f"verbaliser words {list(words)} share first tokens "
                         f"{[tokenizer.decode([i]) for i in ids]}; pick words that start differently")
    with torch.no_grad():
        head.weight.copy_(_output_rows(model, base)[ids].to(head.weight.dtype))
    return [tokenizer.decode([i]) for i in ids]


def _output_rows(model, base: str | Path) -> torch.Tensor:
    """The LM head's weight matrix: the input embeddings when tied, else `lm_head.weight` of the checkpoint."""
    if model.config.get_text_config().tie_word_embeddings:
        return model.get_input_embeddings().weight
    from safetensors import safe_open

    for file in sorted(Path(base).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            names = set(f.keys())
            if "lm_head.weight" in names:
                return f.get_tensor("lm_head.weight")
    raise ValueError(f"{base} has untied output embeddings but no 'lm_head.weight' in its safetensors files; "
                     "head_init='verbaliser' needs the LM head (use head_init='random')")


def _with_lora(model, rank: int):
    """LoRA adapters on every linear layer; the new classification head ('score') trains in full."""
    from peft import LoraConfig, TaskType, get_peft_model

    lora = LoraConfig(task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=2 * rank, lora_dropout=0.05,
                      target_modules="all-linear", modules_to_save=["score"])
    model = get_peft_model(model, lora)
    trainable, total = model.get_nb_trainable_parameters()
    log.info("LoRA rank %d: %d of %d parameters trainable", rank, trainable, total)
    return model


def _encode(tokenizer, frame: pd.DataFrame, max_length: int) -> TokenTable:
    return TokenTable.encode(tokenizer, frame[schema.QUERY].tolist(), frame[schema.PRODUCT_TEXT].tolist(),
                             role=pairs.TEACHER, max_length=max_length)


def _val_loss(model, data: TokenTable, targets: torch.Tensor, device: torch.device, batch_size: int) -> float:
    """Soft-target cross-entropy on validation pairs (always against the raters' distribution)."""
    model.eval()
    order = np.argsort(data.lengths, kind="stable")
    total = torch.zeros((), device=device)
    with torch.inference_mode(), autocast(device):
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            logits = model(**data.batch(idx, device)).logits
            loss = soft_target_cross_entropy(logits.float(), to_device(targets[idx], device))
            total += loss * len(idx)
    return total.item() / len(order)


def _combine(members: list[dict], output_dir: str) -> dict:
    """One summary for the checkpoint: totals over members, losses of the first member, every member kept."""
    first = members[0]
    seconds = sum(m["train_seconds"] for m in members)
    # (summaries stored before members kept pairs_seen give it as their rate times their time)
    seen = sum(m.get("pairs_seen") or m["pairs_per_second"] * m["train_seconds"] for m in members)
    summary = {"path": str(output_dir), "train_seconds": round(seconds, 3),
               "pairs_per_second": round(seen / max(seconds, 1e-9), 2), "train_pairs": first["train_pairs"],
               "final_train_loss": float(np.mean([m["final_train_loss"] for m in members])),
               "train_loss_per_epoch": first["train_loss_per_epoch"],
               "val_loss_initial": first["val_loss_initial"],
               "val_loss_per_epoch": first["val_loss_per_epoch"]}
    if len(members) > 1:
        summary["members"] = members
    else:  # one model: its own fields too (seed, pairs seen, steps), so it can serve as an ensemble member
        summary = {**first, **summary}
    return summary
