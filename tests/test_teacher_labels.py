"""Teacher labels kept without their teacher: written back exactly as labelling writes them, or refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kdrank_testing import make_labelled

from components import schema
from components.data import read_table, write_table
from components.label import label_pairs, write_labels
from components.teacher import TeacherConfig, checkpoint_identity, identity, planned_identity, train_teacher
from pipelines import teacher_labels
from pipelines.teacher_labels import LabelsMismatch


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, tiny_teacher_dir):
    """(pairs file, labelled folder with its record, teacher dir, train and val files) of a tiny teacher."""
    root = tmp_path_factory.mktemp("teacher-labels")
    train = write_table(make_labelled(n_queries=10, per_query=4, seed=1), str(root / "train.parquet"))
    val = write_table(make_labelled(n_queries=4, per_query=4, seed=2), str(root / "val.parquet"))
    teacher = str(root / "teacher")
    train_teacher(train, val, teacher, TeacherConfig(base_model=tiny_teacher_dir, epochs=1, batch_size=8,
                                                     max_length=48))
    pairs = make_labelled(n_queries=15, per_query=5, seed=3).drop(columns=[schema.GRADE, schema.GRADE_DIST])
    pairs[schema.SOURCE] = "bm25"
    pairs_uri = write_table(pairs, str(root / "augmented-2x.parquet"))
    folder = root / "labelled"
    label_pairs(pairs_uri, teacher, str(folder), num_shards=1, batch_size=16, chunk_rows=20, progress=False)
    teacher_labels.write_record(folder, teacher="teacher-soft", identity=checkpoint_identity(teacher), multiple=2,
                                pairs_uri=pairs_uri)
    return pairs_uri, folder, teacher, train, val


def test_stored_probabilities_label_the_pairs_exactly_as_the_teacher_did(labelled, tmp_path):
    pairs_uri, folder, teacher, train, val = labelled
    stored = tmp_path / "stored"
    record = teacher_labels.export_set(folder, stored)
    assert record["pairs"] == 75 and record["num_grades"] == 3 and record["multiple"] == 2.0
    probs = pd.read_parquet(stored / teacher_labels.PROBS)
    assert list(probs.columns) == ["p0", "p1", "p2"] and (probs.dtypes == np.float32).all()
    config = TeacherConfig(base_model=json.loads(Path(teacher, "kdrank.json").read_text())["training"]["config"][
        "base_model"], epochs=1, batch_size=8, max_length=48)
    # the teacher this config would make is the one that made the labels: no training needed to know it
    assert planned_identity(train, val, config) == record["identity"]
    again, _ = teacher_labels.use_archived(stored, pairs_uri, record["identity"], tmp_path / "data", 2)
    # teacher-made chunks were 20 rows, these 50,000: every row's labels are its own, bit for bit
    pd.testing.assert_frame_equal(read_table(again), read_table(str(folder)), check_exact=True)
    written = teacher_labels.read_record(again)
    assert {k: written[k] for k in teacher_labels.FIELDS} == {k: record[k] for k in teacher_labels.FIELDS}
    assert written["probs_sha256"] == teacher_labels.probs_digest(probs.to_numpy(dtype=np.float64))


def test_labels_written_from_an_archived_set_follow_its_probabilities_not_only_its_record(labelled, tmp_path):
    pairs_uri, folder, _, _, _ = labelled
    stored = tmp_path / "stored"
    record = teacher_labels.export_set(folder, stored)
    first, _ = teacher_labels.use_archived(stored, pairs_uri, record["identity"], tmp_path / "data", 2)
    # the same teacher trained again (same identity, other weights) archives other labels of the same pairs
    retrained = tmp_path / "retrained"
    teacher_labels.copy_set(stored, retrained)
    probs = pd.read_parquet(retrained / teacher_labels.PROBS)
    probs[["p0", "p2"]] = probs[["p2", "p0"]].to_numpy()
    probs.to_parquet(retrained / teacher_labels.PROBS, index=False)
    assert teacher_labels.read_record(retrained) == teacher_labels.read_record(stored)
    assert not teacher_labels.same_stored_probs(stored, retrained)
    again, _ = teacher_labels.use_archived(retrained, pairs_uri, record["identity"], tmp_path / "data", 2)
    assert again == first
    got = np.array(read_table(again)[schema.TEACHER_PROBS].tolist())
    np.testing.assert_array_equal(got, probs.to_numpy(dtype=np.float32))


def test_the_identity_is_the_data_and_config_not_where_the_data_lives(labelled, tmp_path):
    _, _, teacher, train, val = labelled
    moved = write_table(pd.read_parquet(train), str(tmp_path / "elsewhere.parquet"))
    config = TeacherConfig(epochs=1, batch_size=8, max_length=48)
    assert planned_identity(moved, val, config) == planned_identity(train, val, config)
    assert planned_identity(train, val, TeacherConfig(epochs=2, batch_size=8, max_length=48)) != \
        planned_identity(train, val, config)
    assert planned_identity(train, None, config) != planned_identity(train, val, config)
    with pytest.raises(ValueError, match="lack .*train_data"):
        identity({"train_uri": train, "config": {}})


def test_labels_of_other_pairs_or_another_teacher_are_refused_and_nothing_is_written(labelled, tmp_path):
    pairs_uri, folder, _, _, _ = labelled
    stored = tmp_path / "stored"
    record = teacher_labels.export_set(folder, stored)
    with pytest.raises(LabelsMismatch, match="trained on other data or with other settings"):
        teacher_labels.use_archived(stored, pairs_uri, "0" * 64, tmp_path / "data", 2)
    shuffled = pd.read_parquet(pairs_uri).iloc[::-1]
    other = write_table(shuffled, str(tmp_path / "other.parquet"))  # the same pairs in another order
    with pytest.raises(LabelsMismatch, match=r"another augmented set \(75 pairs, digest"):
        teacher_labels.use_archived(stored, other, record["identity"], tmp_path / "data", 2)
    assert not (tmp_path / "data").exists()


def test_a_larger_set_gives_back_a_smaller_one_it_starts_with_bit_for_bit_only(labelled, tmp_path):
    pairs_uri, folder, _, _, _ = labelled
    record = teacher_labels.read_record(folder)
    head = write_table(pd.read_parquet(pairs_uri).iloc[:40], str(tmp_path / "head.parquet"))
    small = tmp_path / "small"  # the first 40 rows, labelled as the larger set labelled them
    write_labels(head, teacher_labels.labelled_probs(folder, record)[:40], str(small))
    small_record = teacher_labels.write_record(small, teacher="teacher-soft", identity=record["identity"],
                                               multiple=1, pairs_uri=head)
    assert teacher_labels.leads((small, small_record), (folder, record))
    stored = tmp_path / "stored"
    teacher_labels.export_set(small, stored)  # either form of the smaller set
    assert teacher_labels.leads((stored, small_record), (folder, record))
    assert not teacher_labels.leads((folder, record), (small, small_record))  # the larger one is not a prefix
    # one probability off in its last bit, or another teacher: not the larger set's first rows
    probs = pd.read_parquet(stored / teacher_labels.PROBS)
    probs.iloc[39, 0] = np.nextafter(probs.iloc[39, 0], np.float32(1))
    probs.to_parquet(stored / teacher_labels.PROBS, index=False)
    assert not teacher_labels.leads((stored, small_record), (folder, record))
    assert not teacher_labels.leads((small, {**small_record, "identity": "0" * 64}), (folder, record))

    # restored, the larger set labels the smaller set's pairs given the pairs it was made of
    large = tmp_path / "large"
    teacher_labels.export_set(folder, large)
    again, _ = teacher_labels.use_archived(large, head, record["identity"], tmp_path / "data", 1, leading=pairs_uri)
    pd.testing.assert_frame_equal(read_table(again), read_table(str(small)), check_exact=True)
    # without them, or with pairs the smaller set does not start, it says so and writes nothing
    with pytest.raises(LabelsMismatch, match=r"another augmented set \(75 pairs"):
        teacher_labels.use_archived(large, head, record["identity"], tmp_path / "none", 1)
    tail = write_table(pd.read_parquet(pairs_uri).iloc[1:41], str(tmp_path / "tail.parquet"))
    with pytest.raises(LabelsMismatch, match="another augmented set"):
        teacher_labels.use_archived(large, tail, record["identity"], tmp_path / "none", 1, leading=pairs_uri)
    assert not (tmp_path / "none").exists()


def test_write_labels_refuses_a_wrong_count_and_leaves_no_shard(labelled, tmp_path):
    pairs_uri = labelled[0]
    with pytest.raises(ValueError, match="75 pairs; the probabilities given have shape \\(74, 3\\)"):
        write_labels(pairs_uri, np.full((74, 3), 1 / 3), str(tmp_path / "out"))
    assert not list(tmp_path.rglob("*.parquet"))


def test_a_broken_stored_set_is_named(labelled, tmp_path):
    stored = tmp_path / "stored"
    teacher_labels.export_set(labelled[1], stored)
    probs = pd.read_parquet(stored / teacher_labels.PROBS)
    probs.iloc[:-1].to_parquet(stored / teacher_labels.PROBS)
    with pytest.raises(LabelsMismatch, match="has 74 rows .* names 75 pairs"):
        teacher_labels.check_stored(stored)
    (stored / teacher_labels.RECORD).unlink()
    with pytest.raises(LabelsMismatch, match="labels.json is missing"):
        teacher_labels.check_stored(stored)


def test_a_record_must_describe_its_folder(labelled, tmp_path):
    pairs_uri, folder, _, _, _ = labelled
    shorter = write_table(pd.read_parquet(pairs_uri).iloc[1:], str(tmp_path / "shorter.parquet"))
    with pytest.raises(LabelsMismatch, match="does not hold the pairs of .*shorter.parquet"):
        teacher_labels.write_record(folder, teacher="teacher-soft", identity="x", multiple=2, pairs_uri=shorter)
