"""Teacher fine-tuning on tiny Llama classifiers: soft targets, loss goes down, ensembles, LoRA, reruns."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from kdrank_testing import make_labelled, make_tiny_decoder_tokenizer
from safetensors.torch import load_file

from components import pairs, schema, storage
from components.checkpoint import read_info
from components.data import read_table, write_table
from components.scoring import PairScorer, load_classifier
from components.teacher import TeacherConfig, init_head_from_verbaliser, targets_of, train_teacher

FAST = {"batch_size": 8, "max_length": 64, "warmup_ratio": 0.0}


@pytest.fixture
def train_file(tmp_path) -> str:
    return write_table(make_labelled(n_queries=6, per_query=4), str(tmp_path / "train.parquet"))


def _weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(Path(directory, "model.safetensors")))


def _mean_probs(model_dir: str, frame) -> np.ndarray:
    scorer = PairScorer(model_dir, device="cpu")
    return scorer.score(frame[schema.QUERY], frame[schema.PRODUCT_TEXT], progress=False).probs.mean(axis=0)


def test_soft_targets_are_learned_as_distributions_and_hard_targets_differ(tiny_teacher_dir, tmp_path):
    # Every pair is rated half grade 0, half grade 1: soft training learns [.5, .5, 0]; hard learns grade 0.
    frame = make_labelled(n_queries=4, per_query=4)
    frame[schema.GRADE] = 0.5
    frame[schema.GRADE_DIST] = [np.array([0.5, 0.5, 0.0])] * len(frame)
    uri = write_table(frame, str(tmp_path / "half.parquet"))
    runs = {}
    for soft in (True, False):
        config = TeacherConfig(base_model=tiny_teacher_dir, epochs=8, learning_rate=1e-2, soft_targets=soft,
                               **FAST)
        out = str(tmp_path / f"soft-{soft}")
        train_teacher(uri, None, out, config)
        runs[soft] = _mean_probs(out, frame)
    np.testing.assert_allclose(runs[True], [0.5, 0.5, 0.0], atol=0.12)
    assert runs[False][0] > 0.8
    assert read_info(str(tmp_path / "soft-False")).training["config"]["soft_targets"] is False


def test_targets_of_soft_and_hard():
    frame = make_labelled(n_queries=2, per_query=3)
    soft = targets_of(frame, soft=True)
    hard = targets_of(frame, soft=False)
    np.testing.assert_allclose(soft, schema.dist_matrix(frame))
    assert set(np.unique(hard)) <= {0.0, 1.0}
    np.testing.assert_array_equal(hard.argmax(axis=1), soft.argmax(axis=1))


def test_short_training_lowers_the_loss(tiny_teacher_dir, train_file, tmp_path):
    config = TeacherConfig(base_model=tiny_teacher_dir, epochs=3, learning_rate=3e-3, **FAST)
    summary = train_teacher(train_file, train_file, str(tmp_path / "teacher"), config)
    assert summary["val_loss_per_epoch"][-1] < summary["val_loss_initial"]
    assert summary["train_loss_per_epoch"][-1] < summary["train_loss_per_epoch"][0]
    assert summary["pairs_per_second"] > 0 and summary["train_pairs"] == 24
    info = read_info(str(tmp_path / "teacher"))
    assert (info.role, info.num_grades, info.max_length) == ("teacher", 3, 64)
    assert info.training["summary"]["final_train_loss"] == summary["final_train_loss"]


def test_rerun_with_same_config_skips_and_other_config_retrains(tiny_teacher_dir, train_file, tmp_path):
    out = tmp_path / "teacher"
    config = TeacherConfig(base_model=tiny_teacher_dir, epochs=1, **FAST)
    first = train_teacher(train_file, None, str(out), config)
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    again = train_teacher(train_file, None, str(out), config)
    assert again["skipped"] is True and again["final_train_loss"] == first["final_train_loss"]
    assert (out / "model.safetensors").stat().st_mtime_ns == stamp
    changed = train_teacher(train_file, None, str(out), TeacherConfig(base_model=tiny_teacher_dir, epochs=1,
                                                                       learning_rate=1e-3, **FAST))
    assert "skipped" not in changed
    assert read_info(str(out)).training["config"]["learning_rate"] == 1e-3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary leftovers


def test_other_weights_behind_the_same_base_setting_are_trained_again(tiny_teacher_dir, train_file, tmp_path):
    """The base's weights are part of what a rerun matches (the student's is too), though not of the teacher's
    identity, which archived label sets are keyed on; a checkpoint from before bases were recorded still skips."""
    import shutil

    from safetensors.torch import save_file

    from components.teacher import identity

    base = tmp_path / "base"
    shutil.copytree(tiny_teacher_dir, base)
    out = tmp_path / "teacher"
    config = TeacherConfig(base_model=str(base), epochs=1, **FAST)
    train_teacher(train_file, None, str(out), config)
    first = json.loads((out / "kdrank.json").read_text())["training"]
    assert len(first["base"]) == 64
    assert train_teacher(train_file, None, str(out), config)["skipped"] is True
    weights = next(base.glob("*.safetensors"))
    tensors = load_file(weights)
    name = sorted(tensors)[0]
    tensors[name] = tensors[name] + 0.01
    save_file(tensors, weights, metadata={"format": "pt"})
    assert "skipped" not in train_teacher(train_file, None, str(out), config)
    second = json.loads((out / "kdrank.json").read_text())["training"]
    assert second["base"] != first["base"] and identity(second) == identity(first)
    meta = out / "kdrank.json"  # a checkpoint from before teachers recorded their base
    info = json.loads(meta.read_text())
    info["training"].pop("base")
    meta.write_text(json.dumps(info))
    shutil.copy(Path(tiny_teacher_dir, weights.name), weights)
    assert train_teacher(train_file, None, str(out), config)["skipped"] is True


def test_rerun_matches_data_by_contents_not_path(tiny_teacher_dir, train_file, tmp_path):
    """A runs folder that moved, or a teacher trained elsewhere on an identical split, is not retrained;
    a changed table is; checkpoints written before contents were recorded still match on paths."""
    out = tmp_path / "teacher"
    config = TeacherConfig(base_model=tiny_teacher_dir, epochs=1, **FAST)
    train_teacher(train_file, None, str(out), config)
    moved = tmp_path / "moved" / "train.parquet"
    moved.parent.mkdir()
    moved.write_bytes(Path(train_file).read_bytes())
    assert train_teacher(str(moved), None, str(out), config)["skipped"] is True
    changed = read_table(train_file)
    changed.loc[0, schema.PRODUCT_TEXT] = "another product"
    write_table(changed, str(moved))
    assert "skipped" not in train_teacher(str(moved), None, str(out), config)
    # A checkpoint from before: its kdrank.json names the data's paths only.
    meta = out / "kdrank.json"
    info = json.loads(meta.read_text())
    info["training"].pop("train_data"), info["training"].pop("val_data")
    meta.write_text(json.dumps(info))
    assert train_teacher(str(moved), None, str(out), config)["skipped"] is True
    assert "skipped" not in train_teacher(train_file, None, str(out), config)  # same contents, other path


def test_ensemble_of_two_averages_member_probabilities(tiny_teacher_dir, train_file, tmp_path):
    out = str(tmp_path / "ensemble")
    config = TeacherConfig(base_model=tiny_teacher_dir, epochs=1, learning_rate=1e-2, ensemble_size=2, **FAST)
    summary = train_teacher(train_file, None, out, config)
    info = read_info(out)
    assert info.members == ["member-0", "member-1"]
    assert [m["seed"] for m in summary["members"]] == [13, 14]
    w0, w1 = _weights(Path(out, "member-0")), _weights(Path(out, "member-1"))
    assert not torch.equal(w0["score.weight"], w1["score.weight"])
    frame = make_labelled(n_queries=3, per_query=3, seed=5)
    queries, products = frame[schema.QUERY], frame[schema.PRODUCT_TEXT]
    members = [PairScorer(str(Path(out, m)), device="cpu").score(queries, products, progress=False).probs
               for m in info.members]
    together = PairScorer(out, device="cpu").score(queries, products, progress=False)
    np.testing.assert_allclose(together.probs, np.mean(members, axis=0), atol=1e-6)
    np.testing.assert_allclose(together.score, together.probs @ np.arange(3), atol=1e-9)


def test_an_ensemble_keeps_finished_members_when_cut_short_and_reuses_a_matching_teacher(
        tiny_teacher_dir, train_file, tmp_path, monkeypatch):
    import components.teacher as teacher_module

    config = TeacherConfig(base_model=tiny_teacher_dir, epochs=1, learning_rate=1e-2, ensemble_size=3, **FAST)
    single = str(tmp_path / "single")  # the plain teacher of the same recipe: the ensemble's first member
    train_teacher(train_file, None, single, TeacherConfig(**{**config.__dict__, "ensemble_size": 1}))
    other = str(tmp_path / "other-seed")  # a plain teacher with another seed matches no member
    train_teacher(train_file, None, other, TeacherConfig(**{**config.__dict__, "ensemble_size": 1, "seed": 99}))

    trained = []
    real = teacher_module._train_member

    def cut_after_one(*args, **kwargs):
        if trained:
            raise KeyboardInterrupt("the time limit")
        trained.append(args[4].seed)
        return real(*args, **kwargs)

    out = tmp_path / "ensemble"
    monkeypatch.setattr(teacher_module, "_train_member", cut_after_one)
    with pytest.raises(KeyboardInterrupt):
        train_teacher(train_file, None, str(out), config, reuse=[other, single])
    assert trained == [14]  # member 0 was copied from `single`, member 1 trained, member 2 cut short
    assert not (out / "kdrank.json").exists() and not (out / "member-2").exists()
    assert torch.equal(_weights(out / "member-0")["score.weight"], _weights(single)["score.weight"])
    with pytest.raises(FileNotFoundError, match="kdrank.json is missing"):
        PairScorer(str(out), device="cpu")  # unfinished: never mistaken for a teacher
    stamps = {m: (out / m / "model.safetensors").stat().st_mtime_ns for m in ("member-0", "member-1")}

    trained.clear()
    monkeypatch.setattr(teacher_module, "_train_member", lambda *a, **k: (trained.append(a[4].seed), real(*a, **k))[1])
    summary = train_teacher(train_file, None, str(out), config)
    assert trained == [15]  # only the missing member
    assert {m: (out / m / "model.safetensors").stat().st_mtime_ns for m in stamps} == stamps
    assert read_info(str(out)).members == ["member-0", "member-1", "member-2"]
    assert [m["seed"] for m in summary["members"]] == [13, 14, 15]
    assert [m.get("skipped", False) for m in summary["members"]] == [True, True, False]
    assert all(read_info(str(out / m)).training["config"]["ensemble_size"] == 1 for m in stamps)
    assert train_teacher(train_file, None, str(out), config)["skipped"] is True

    # Other settings: the old ensemble is replaced whole, every member trained anew.
    trained.clear()
    train_teacher(train_file, None, str(out), TeacherConfig(**{**config.__dict__, "learning_rate": 2e-2}))
    assert trained == [13, 14, 15]
    assert read_info(str(out / "member-0")).training["config"]["learning_rate"] == 2e-2
    assert [p.name for p in tmp_path.rglob(".*")] == []  # no temporary leftovers


def test_lora_trains_head_and_adapters_and_saves_a_plain_checkpoint(tiny_teacher_dir, train_file, tmp_path):
    out = tmp_path / "lora"
    config = TeacherConfig(base_model=tiny_teacher_dir, epochs=2, learning_rate=1e-2, lora=True, lora_rank=4,
                           **FAST)
    train_teacher(train_file, None, str(out), config)
    assert not (out / "adapter_config.json").exists()
    assert "peft" not in json.loads((out / "config.json").read_text()).get("architectures", [""])[0].lower()
    base, tuned = _weights(tiny_teacher_dir), _weights(out)
    assert set(tuned) == set(base)  # merged: no lora_A / lora_B tensors left
    assert not torch.equal(base["score.weight"], tuned["score.weight"])  # head trained (modules_to_save)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(base[q], tuned[q])  # adapters merged into the base weights
    probs = _mean_probs(str(out), make_labelled(n_queries=2, per_query=2))
    assert probs.shape == (3,) and abs(probs.sum() - 1) < 1e-5


def test_bad_inputs_are_named(tiny_teacher_dir, train_file, tmp_path):
    frame = make_labelled(n_queries=2, per_query=2).drop(columns=[schema.GRADE_DIST])
    uri = write_table(frame, str(tmp_path / "nodist.parquet"))
    with pytest.raises(schema.DataError, match="grade_dist"):
        train_teacher(uri, None, str(tmp_path / "t"), TeacherConfig(base_model=tiny_teacher_dir))
    with pytest.raises(ValueError, match="epochs=0"):
        TeacherConfig(epochs=0)
    with pytest.raises(FileNotFoundError, match="model hub"):
        train_teacher(train_file, None, str(tmp_path / "t"),
                      TeacherConfig(base_model="HuggingFaceTB/SmolLM2-135M"))


@pytest.mark.parametrize(("dist", "match"), [
    ([0.0, 0.0, 0.0], "none above zero"), ([np.nan, 0.5, 0.5], "NaN"), ([-0.5, 1.0, 0.5], "negative"),
    ([0.5, 0.5], "every row needs the same number")])
def test_a_table_with_a_bad_grade_distribution_is_refused_before_training(tiny_teacher_dir, tmp_path, dist, match):
    frame = make_labelled(n_queries=3, per_query=3)
    frame[schema.GRADE_DIST] = [dist if i == 4 else v for i, v in enumerate(frame[schema.GRADE_DIST])]
    uri = write_table(frame, str(tmp_path / "bad.parquet"))
    with pytest.raises(schema.DataError, match=rf"bad.parquet, row 5, column 'grade_dist': .*{match}"):
        train_teacher(uri, None, str(tmp_path / "t"), TeacherConfig(base_model=tiny_teacher_dir, **FAST))
    assert not (tmp_path / "t").exists()


def test_a_bf16_base_trains_in_fp32_weights(tiny_teacher_dir, train_file, tmp_path):
    from transformers import AutoModelForSequenceClassification

    base = tmp_path / "bf16-base"
    AutoModelForSequenceClassification.from_pretrained(tiny_teacher_dir, num_labels=3).to(torch.bfloat16) \
        .save_pretrained(base)
    for name in ("tokenizer.json", "tokenizer_config.json", "kdrank.json"):
        if Path(tiny_teacher_dir, name).exists():
            (base / name).write_bytes(Path(tiny_teacher_dir, name).read_bytes())
    seen = []
    train_teacher(train_file, None, str(tmp_path / "t"), TeacherConfig(base_model=str(base), epochs=1, **FAST),
                  on_epoch_end=lambda epoch, model, tokenizer, device: seen.extend(
                      {p.dtype for p in model.parameters()}))
    assert set(seen) == {torch.float32}  # bf16 weights would round most of lr 5e-5's updates away


def test_a_max_length_the_base_cannot_take_is_refused_before_training(tiny_teacher_dir, train_file, tmp_path):
    with pytest.raises(ValueError, match="teacher max_length 100000 is more than .* supports"):
        train_teacher(train_file, None, str(tmp_path / "t"),
                      TeacherConfig(base_model=tiny_teacher_dir, **{**FAST, "max_length": 100_000}))
    assert not (tmp_path / "t").exists()


def test_gcs_base_model_data_and_output(gcs_emulator, tiny_teacher_dir, train_file, tmp_path, monkeypatch):
    monkeypatch.setenv("KDRANK_CACHE", str(tmp_path / "cache"))
    root = f"gs://{gcs_emulator}/teacher-test"
    storage.upload_dir(tiny_teacher_dir, f"{root}/base")
    storage.write_bytes(f"{root}/train.parquet", Path(train_file).read_bytes())
    out = f"{root}/teacher"
    config = TeacherConfig(base_model=f"{root}/base", epochs=1, **FAST)
    summary = train_teacher(f"{root}/train.parquet", f"{root}/train.parquet", out, config)
    assert summary["path"] == out and "model.safetensors" in storage.list_files(out)
    assert train_teacher(f"{root}/train.parquet", f"{root}/train.parquet", out, config)["skipped"] is True
    probs = _mean_probs(out, make_labelled(n_queries=2, per_query=2))
    assert abs(probs.sum() - 1) < 1e-5
    # An ensemble in the same place (the single teacher's marker goes first), then one built from its members.
    ensemble = TeacherConfig(base_model=f"{root}/base", epochs=1, ensemble_size=2, **FAST)
    summary = train_teacher(f"{root}/train.parquet", f"{root}/train.parquet", out, ensemble)
    files = storage.list_files(out)
    assert {"member-0/kdrank.json", "member-1/model.safetensors", "kdrank.json"} <= set(files)
    assert json.loads(storage.read_text(f"{out}/kdrank.json"))["members"] == ["member-0", "member-1"]
    assert [m["seed"] for m in summary["members"]] == [13, 14]
    copied = train_teacher(f"{root}/train.parquet", f"{root}/train.parquet", f"{root}/copy", ensemble,
                           reuse=[f"{out}/member-0", f"{out}/member-1"])
    assert [m.get("reused_from") for m in copied["members"]] == [f"{out}/member-0", f"{out}/member-1"]
    assert abs(_mean_probs(f"{root}/copy", make_labelled(n_queries=2, per_query=2)).sum() - 1) < 1e-5


def test_a_gcs_state_resumes_a_teacher_cut_short(gcs_emulator, tiny_teacher_dir, train_file, tmp_path,
                                                  monkeypatch):
    # The state of a Kubeflow step lives under its artifact's gs:// URI (components.kfp.common.state_location).
    from components.resume import TrainingInterrupted

    monkeypatch.setenv("KDRANK_STATE_EVERY", "0")
    config = TeacherConfig(base_model=tiny_teacher_dir, epochs=2, learning_rate=1e-2, **FAST)
    whole = train_teacher(train_file, None, str(tmp_path / "whole"), config)
    state = f"gs://{gcs_emulator}/teacher-state/run-1/teacher.state"
    restore = _interrupt_at(monkeypatch, 4, "sigterm")
    with pytest.raises(TrainingInterrupted, match=f"saved at {state}/state.pt"):
        train_teacher(train_file, None, str(tmp_path / "cut"), config, state_dir=state)
    restore()
    assert storage.list_files(state) == ["state.pt"] and not (tmp_path / "cut").exists()
    resumed = train_teacher(train_file, None, str(tmp_path / "cut"), config, state_dir=state)
    assert resumed["resumed_at_batch"] == [4] and resumed["train_loss_per_epoch"] == whole["train_loss_per_epoch"]
    assert torch.equal(_weights(tmp_path / "cut")["score.weight"], _weights(tmp_path / "whole")["score.weight"])
    assert not storage.exists(f"{state}/state.pt")


def _tiny_causal_lm(path, *, tied: bool) -> str:
    """A tiny Llama *language model* checkpoint (with its LM head), as real teacher bases are."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = make_tiny_decoder_tokenizer()
    torch.manual_seed(1)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=tied, pad_token_id=tokenizer.eos_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


# Words whose first tokens differ under the tiny tokenizer (lowest grade first).
TINY_WORDS = ("query", "product", "relevant")


@pytest.mark.parametrize("tied", [False, True])
def test_verbaliser_head_gives_the_lm_logits_of_the_grade_words(tmp_path, tied):
    from transformers import AutoModelForCausalLM

    base = _tiny_causal_lm(tmp_path / "lm", tied=tied)
    tokenizer, model = load_classifier(base, role=pairs.TEACHER, num_labels=3)
    words = init_head_from_verbaliser(model, tokenizer, base, TINY_WORDS)
    lm = AutoModelForCausalLM.from_pretrained(base).eval()
    ids = [tokenizer.encode(" " + w, add_special_tokens=False)[0] for w in TINY_WORDS]
    assert words == [tokenizer.decode([i]) for i in ids] and words[0].strip() == "query"
    prompt = tokenizer(pairs.TEACHER_TEMPLATE.format(query="cordless drill", product="drill bit set"),
                       return_tensors="pt")
    with torch.no_grad():
        head_logits = model.eval()(**prompt).logits[0]
        lm_logits = lm(**prompt).logits[0, -1, ids]
    torch.testing.assert_close(head_logits, lm_logits, atol=1e-5, rtol=1e-5)


def test_teacher_trains_from_a_verbaliser_head(tmp_path, train_file):
    base = _tiny_causal_lm(tmp_path / "lm", tied=False)
    out = tmp_path / "teacher"
    config = TeacherConfig(base_model=base, epochs=2, learning_rate=1e-2, head_init="verbaliser",
                           verbaliser=TINY_WORDS, **FAST)
    summary = train_teacher(train_file, train_file, str(out), config)
    assert summary["train_loss_per_epoch"][-1] < summary["train_loss_per_epoch"][0]
    stored = read_info(str(out)).training["config"]
    assert (stored["head_init"], stored["verbaliser"]) == ("verbaliser", list(TINY_WORDS))


def test_verbaliser_errors_name_the_problem(tmp_path, tiny_teacher_dir):
    base = _tiny_causal_lm(tmp_path / "lm", tied=False)
    tokenizer, model = load_classifier(base, role=pairs.TEACHER, num_labels=3)
    with pytest.raises(ValueError, match="2 words .* 3 grades"):
        init_head_from_verbaliser(model, tokenizer, base, ("query", "product"))
    with pytest.raises(ValueError, match="share first tokens"):
        init_head_from_verbaliser(model, tokenizer, base, ("Low", "Medium", "High"))  # all start with one byte
    tokenizer, model = load_classifier(tiny_teacher_dir, role=pairs.TEACHER, num_labels=3)
    with pytest.raises(ValueError, match="no 'lm_head.weight'"):  # a classifier checkpoint has no LM head
        init_head_from_verbaliser(model, tokenizer, tiny_teacher_dir, TINY_WORDS)
    with pytest.raises(ValueError, match="head_init='nope'"):
        TeacherConfig(head_init="nope")
    with pytest.raises(ValueError, match="verbaliser="):
        TeacherConfig(verbaliser=("Low", " "))


def _interrupt_at(monkeypatch, batch: int, how: str):
    """Make the teacher's loop stop at its `batch`-th training batch: by SIGTERM (the signal itself, sent to
    this process as Kubernetes sends it to a pod it preempts) or by a crash (an exception out of the loss)."""
    import os
    import signal

    import components.teacher as teacher_module

    real, calls = teacher_module.soft_target_cross_entropy, []

    def loss(*args, **kwargs):
        calls.append(torch.is_grad_enabled())  # validation losses run without gradients: not counted
        if calls.count(True) == batch and calls[-1]:
            if how == "sigterm":
                os.kill(os.getpid(), signal.SIGTERM)
            else:
                raise RuntimeError("the node went away")
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_module, "soft_target_cross_entropy", loss)
    return lambda: monkeypatch.setattr(teacher_module, "soft_target_cross_entropy", real)


@pytest.mark.parametrize("how, at", [("sigterm", 5), ("sigterm", 3), ("crash", 6)])
def test_training_cut_short_resumes_to_the_same_teacher(tiny_teacher_dir, train_file, tmp_path, monkeypatch,
                                                        how, at):
    # 24 pairs in batches of 8 with 2 gradient accumulation: 3 batches an epoch, 6 in all, 3 optimiser steps.
    # SIGTERM at batch 5 saves after its step (batch 6, the last; the state holds the end of the second
    # epoch), at batch 3 mid-step (saved after batch 4, in the second epoch); a crash at batch 6 resumes
    # from the timed save after batch 4 (saves every step here).
    from components.resume import TrainingInterrupted, state_dir

    monkeypatch.setenv("KDRANK_STATE_EVERY", "0" if how == "sigterm" else "1e-9")
    val = write_table(make_labelled(n_queries=2, per_query=4, seed=5), str(tmp_path / "val.parquet"))
    config = TeacherConfig(base_model=tiny_teacher_dir, epochs=2, learning_rate=1e-2, grad_accumulation=2, **FAST)
    whole = train_teacher(train_file, val, str(tmp_path / "whole"), config)

    out = str(tmp_path / "cut")
    restore = _interrupt_at(monkeypatch, at, how)
    with pytest.raises(TrainingInterrupted if how == "sigterm" else RuntimeError, match="SIGTERM|went away"):
        train_teacher(train_file, val, out, config)
    restore()
    assert not Path(out).exists()  # no half-written teacher, only its state
    assert (Path(state_dir(out)) / "state.pt").is_file()

    resumed = train_teacher(train_file, val, out, config)
    assert resumed["resumed_at_batch"] == [6 if at == 5 else 4]
    for name, tensor in _weights(tmp_path / "whole").items():
        assert torch.equal(tensor, _weights(out)[name]), name
    for key in ("train_loss_per_epoch", "val_loss_initial", "val_loss_per_epoch", "pairs_seen", "optimizer_steps"):
        assert resumed[key] == pytest.approx(whole[key], rel=1e-6), key
    assert not Path(state_dir(out)).exists()  # the finished teacher needs no state
    assert train_teacher(train_file, val, out, config)["skipped"] is True


def test_a_state_of_other_training_is_not_resumed(tiny_teacher_dir, train_file, tmp_path, monkeypatch):
    from components.resume import TrainingInterrupted, state_dir

    monkeypatch.setenv("KDRANK_STATE_EVERY", "0")
    config = TeacherConfig(base_model=tiny_teacher_dir, epochs=2, learning_rate=1e-2, **FAST)
    out = str(tmp_path / "teacher")
    restore = _interrupt_at(monkeypatch, 2, "sigterm")
    with pytest.raises(TrainingInterrupted):
        train_teacher(train_file, None, out, config)
    restore()
    other = TeacherConfig(**{**config.__dict__, "learning_rate": 2e-2})
    summary = train_teacher(train_file, None, out, other)
    assert "resumed_at_batch" not in summary
    assert not Path(state_dir(out)).exists()
    fresh = train_teacher(train_file, None, str(tmp_path / "fresh"), other)
    assert torch.equal(_weights(out)["score.weight"], _weights(tmp_path / "fresh")["score.weight"])
    assert summary["train_loss_per_epoch"] == fresh["train_loss_per_epoch"]


def test_an_ensemble_member_resumes_where_it_stopped(tiny_teacher_dir, train_file, tmp_path, monkeypatch):
    from components.resume import TrainingInterrupted, state_dir

    monkeypatch.setenv("KDRANK_STATE_EVERY", "0")
    config = TeacherConfig(base_model=tiny_teacher_dir, epochs=1, learning_rate=1e-2, ensemble_size=2, **FAST)
    whole = str(tmp_path / "whole")
    train_teacher(train_file, None, whole, config)
    out = tmp_path / "cut"
    restore = _interrupt_at(monkeypatch, 5, "sigterm")  # the second member's second batch
    with pytest.raises(TrainingInterrupted):
        train_teacher(train_file, None, str(out), config)
    restore()
    assert (out / "member-0" / "kdrank.json").is_file() and not (out / "member-1").exists()
    assert (Path(state_dir(str(out))) / "member-1" / "state.pt").is_file()
    summary = train_teacher(train_file, None, str(out), config)
    assert summary["members"][1]["resumed_at_batch"] == [2]
    for member in ("member-0", "member-1"):
        assert torch.equal(_weights(out / member)["score.weight"], _weights(Path(whole) / member)["score.weight"])
    assert sorted(p.name for p in out.iterdir()) == ["kdrank.json", "member-0", "member-1"]
    assert not Path(state_dir(str(out))).exists()


def test_a_bad_save_interval_is_named(monkeypatch):
    from components.resume import save_every

    monkeypatch.setenv("KDRANK_STATE_EVERY", "ten minutes")
    with pytest.raises(ValueError, match="KDRANK_STATE_EVERY='ten minutes' is not a number"):
        save_every()
    monkeypatch.setenv("KDRANK_STATE_EVERY", "-1")
    with pytest.raises(ValueError, match="cannot be negative"):
        save_every()


def test_a_state_of_another_layout_or_a_torn_file_starts_afresh(tiny_teacher_dir, train_file, tmp_path,
                                                                 monkeypatch, caplog):
    from components.resume import TrainingInterrupted, state_dir

    monkeypatch.setenv("KDRANK_STATE_EVERY", "0")
    config = TeacherConfig(base_model=tiny_teacher_dir, epochs=2, learning_rate=1e-2, **FAST)
    out = str(tmp_path / "teacher")
    state = Path(state_dir(out), "state.pt")
    restore = _interrupt_at(monkeypatch, 2, "sigterm")
    with pytest.raises(TrainingInterrupted):
        train_teacher(train_file, None, out, config)
    restore()
    saved = torch.load(state, weights_only=True)
    torch.save({**saved, "version": 99}, state)
    assert "resumed_at_batch" not in train_teacher(train_file, None, out, config)
    assert "layout 99, not 1" in caplog.text and not state.exists()

    restore = _interrupt_at(monkeypatch, 2, "sigterm")
    with pytest.raises(TrainingInterrupted):
        train_teacher(train_file, None, str(tmp_path / "other"), config)
    restore()
    torn = Path(state_dir(str(tmp_path / "other")), "state.pt")
    torn.write_bytes(torn.read_bytes()[:1000])
    assert "resumed_at_batch" not in train_teacher(train_file, None, str(tmp_path / "other"), config)
    assert "is unreadable" in caplog.text
    assert torch.equal(_weights(tmp_path / "other")["score.weight"], _weights(out)["score.weight"])

    # the first states written had no layout field: they are layout 1, and resume
    restore = _interrupt_at(monkeypatch, 2, "sigterm")
    with pytest.raises(TrainingInterrupted):
        train_teacher(train_file, None, str(tmp_path / "first"), config)
    restore()
    first = Path(state_dir(str(tmp_path / "first")), "state.pt")
    torch.save({k: v for k, v in torch.load(first, weights_only=True).items() if k != "version"}, first)
    assert train_teacher(train_file, None, str(tmp_path / "first"), config)["resumed_at_batch"] == [2]
    assert torch.equal(_weights(tmp_path / "first")["score.weight"], _weights(out)["score.weight"])
