"""Sharded, streamed, resumable teacher labelling with a tiny Llama teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kdrank_testing import make_labelled, save_tiny_student

from components import schema, storage
from components.data import read_table, write_table
from components.label import label_pairs, label_shard, shard_name, shard_of
from components.scoring import PairScorer

KEY = [schema.QUERY_ID, schema.PRODUCT_ID]


@pytest.fixture
def unlabelled(tmp_path) -> tuple[str, pd.DataFrame]:
    frame = make_labelled(n_queries=15, per_query=4, seed=3).drop(columns=[schema.GRADE, schema.GRADE_DIST])
    frame[schema.SOURCE] = np.where(np.arange(len(frame)) % 2, "bm25", "random")
    return write_table(frame, str(tmp_path / "pairs.parquet")), frame


def _sorted(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(KEY).reset_index(drop=True)


def _assert_same_labels(a: pd.DataFrame, b: pd.DataFrame, atol: float = 0.0) -> None:
    a, b = _sorted(a), _sorted(b)
    pd.testing.assert_frame_equal(a.drop(columns=[schema.TEACHER_PROBS]),
                                  b.drop(columns=[schema.TEACHER_PROBS]), atol=atol, check_exact=atol == 0.0)
    np.testing.assert_allclose(schema.dist_matrix(a, schema.TEACHER_PROBS),
                               schema.dist_matrix(b, schema.TEACHER_PROBS), atol=atol, rtol=0)


def test_shard_of_is_deterministic_and_keeps_queries_whole():
    ids = np.array([schema.query_id(f"query {i % 40}") for i in range(400)])
    shards = shard_of(ids, 4)
    assert shards.min() >= 0 and shards.max() <= 3
    np.testing.assert_array_equal(shards, shard_of(list(ids), 4))  # same on every call and input type
    per_query = pd.Series(shards).groupby(ids).nunique()
    assert (per_query == 1).all()
    assert len(set(shards)) == 4  # 40 queries spread over every shard
    assert set(shard_of(ids, 1)) == {0}
    assert shard_of(ids[:5], 7)[2] == shard_of(ids[2:3], 7)[0]  # depends on the id alone, not its company


def test_shards_partition_the_input_by_query(tiny_teacher_dir, unlabelled, tmp_path):
    uri, frame = unlabelled
    paths = label_pairs(uri, tiny_teacher_dir, str(tmp_path / "labels"), num_shards=4, progress=False)
    assert [Path(p).name for p in paths] == [shard_name(i, 4) for i in range(4)]
    shards = [pd.read_parquet(p) for p in paths]
    seen = [set(s[schema.QUERY_ID]) for s in shards]
    assert sum(len(s) for s in seen) == frame[schema.QUERY_ID].nunique()  # no query in two shards
    union = pd.concat(shards, ignore_index=True)
    assert list(union.columns) == schema.TEACHER_LABEL_COLUMNS
    pd.testing.assert_frame_equal(_sorted(union)[frame.columns], _sorted(frame))
    probs = schema.dist_matrix(union, schema.TEACHER_PROBS)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(union[schema.TEACHER_SCORE], schema.expected_grade(probs), atol=1e-9)
    direct = PairScorer(tiny_teacher_dir, device="cpu").score(frame[schema.QUERY], frame[schema.PRODUCT_TEXT],
                                                              progress=False)
    by_key = _sorted(union.merge(frame.assign(direct=direct.score)[[*KEY, "direct"]], on=KEY))
    np.testing.assert_allclose(by_key[schema.TEACHER_SCORE], by_key["direct"], atol=1e-5)


def test_resume_after_one_shard_skips_it_and_matches_a_fresh_run(tiny_teacher_dir, unlabelled, tmp_path):
    uri, _ = unlabelled
    resumed = tmp_path / "resumed"
    first = label_shard(uri, tiny_teacher_dir, str(resumed), 0, 3, progress=False)  # the run "dies" here
    assert sorted(p.name for p in resumed.iterdir()) == [shard_name(0, 3)]
    stamp = Path(first).stat().st_mtime_ns
    paths = label_pairs(uri, tiny_teacher_dir, str(resumed), num_shards=3, progress=False)
    assert Path(paths[0]).stat().st_mtime_ns == stamp  # finished shard not redone
    assert label_shard(uri, tiny_teacher_dir, str(resumed), 0, 3) == first
    assert Path(first).stat().st_mtime_ns == stamp
    fresh = label_pairs(uri, tiny_teacher_dir, str(tmp_path / "fresh"), num_shards=3, progress=False)
    for mine, theirs in zip(paths, fresh, strict=True):
        pd.testing.assert_frame_equal(pd.read_parquet(mine), pd.read_parquet(theirs))


def test_a_shard_another_teacher_labelled_is_labelled_again(tiny_teacher_dir, unlabelled, tmp_path, caplog):
    """A finished shard is skipped only when this teacher labelled it (a teacher trained again has another
    kdrank.json, so another mark); a shard written before shards were marked is kept as it was."""
    import json
    import shutil

    import pyarrow.parquet as pq

    from components.label import labelled_by, teacher_mark

    uri, _ = unlabelled
    out = tmp_path / "labels"
    first, = label_pairs(uri, tiny_teacher_dir, str(out), progress=False)
    assert labelled_by(first) == teacher_mark(tiny_teacher_dir)
    stamp = Path(first).stat().st_mtime_ns
    other = tmp_path / "teacher-again"
    shutil.copytree(tiny_teacher_dir, other)
    meta = json.loads((other / "kdrank.json").read_text())
    meta["training"] = {**meta.get("training", {}), "summary": {"final_train_loss": 0.5}}
    (other / "kdrank.json").write_text(json.dumps(meta))
    with caplog.at_level("WARNING", logger="components.label"):
        again, = label_pairs(uri, str(other), str(out), progress=False)
    assert Path(again).stat().st_mtime_ns != stamp and labelled_by(again) == teacher_mark(str(other))
    assert "labelled by another teacher" in caplog.text
    stamp = Path(again).stat().st_mtime_ns
    assert label_shard(uri, str(other), str(out), 0, 1) == again and Path(again).stat().st_mtime_ns == stamp
    table = pq.read_table(again)  # as an older kdrank wrote it: no mark
    pq.write_table(table.replace_schema_metadata({}), again)
    stamp = Path(again).stat().st_mtime_ns
    assert labelled_by(again) is None
    label_pairs(uri, tiny_teacher_dir, str(out), progress=False)
    assert Path(again).stat().st_mtime_ns == stamp


def test_streaming_chunks_and_directories_give_the_same_labels(tiny_teacher_dir, unlabelled, tmp_path):
    uri, frame = unlabelled
    whole = read_table(label_pairs(uri, tiny_teacher_dir, str(tmp_path / "whole"), progress=False)[0])
    parts = tmp_path / "parts"
    extra = frame.assign(extra_note=[f"n{i}" for i in range(len(frame))]).drop(columns=[schema.SOURCE])
    for i, rows in enumerate(np.array_split(np.arange(len(extra)), 3)):
        write_table(extra.iloc[rows], str(parts / f"part-{i}.parquet"))
    small = label_pairs(str(parts), tiny_teacher_dir, str(tmp_path / "small"), num_shards=2, chunk_rows=7,
                        batch_size=5, progress=False)
    chunked = read_table(str(tmp_path / "small"))
    assert len(small) == 2 and list(chunked.columns) == [*schema.TEACHER_LABEL_COLUMNS, "extra_note"]
    assert set(chunked[schema.SOURCE]) == {"unknown"}  # no source column in the input
    assert dict(zip(chunked[schema.PRODUCT_ID], chunked["extra_note"], strict=True)) == dict(
        zip(extra[schema.PRODUCT_ID], extra["extra_note"], strict=True))
    _assert_same_labels(chunked.drop(columns=["extra_note", schema.SOURCE]),
                        whole.drop(columns=[schema.SOURCE]), atol=1e-5)


def test_failure_mid_shard_leaves_no_file(tiny_teacher_dir, unlabelled, tmp_path):
    uri, frame = unlabelled
    parts = tmp_path / "parts"
    write_table(frame, str(parts / "a.parquet"))
    write_table(frame.drop(columns=[schema.SOURCE]), str(parts / "b.parquet"))  # the second file is broken
    out = tmp_path / "labels"
    with pytest.raises(schema.DataError, match=r"b\.parquet.*source"):
        label_pairs(str(parts), tiny_teacher_dir, str(out), progress=False)
    assert list(out.iterdir()) == []


def test_bad_arguments_are_refused_clearly(tiny_teacher_dir, unlabelled, tmp_path):
    uri, frame = unlabelled
    out = str(tmp_path / "labels")
    with pytest.raises(ValueError, match="shard_index 3 is out of range for 3"):
        label_shard(uri, tiny_teacher_dir, out, 3, 3)
    with pytest.raises(ValueError, match="shard_index -1"):
        label_shard(uri, tiny_teacher_dir, out, -1, 3)
    with pytest.raises(ValueError, match="num_shards must be an integer >= 1"):
        label_pairs(uri, tiny_teacher_dir, out, num_shards=0)
    with pytest.raises(ValueError, match="num_shards"):
        shard_of(["a"], 0)
    with pytest.raises(ValueError, match="batch_size"):
        label_pairs(uri, tiny_teacher_dir, out, batch_size=0)
    bad = write_table(frame.drop(columns=[schema.PRODUCT_TEXT]), str(tmp_path / "bad.parquet"))
    with pytest.raises(schema.DataError, match=r"bad\.parquet.*product_text"):
        label_pairs(bad, tiny_teacher_dir, out, progress=False)
    with pytest.raises(FileNotFoundError, match="missing.parquet"):
        label_pairs(str(tmp_path / "missing.parquet"), tiny_teacher_dir, out)
    student = save_tiny_student(tmp_path / "student")
    with pytest.raises(ValueError, match="student checkpoint; labelling needs a teacher"):
        label_pairs(uri, student, out)
    label_shard(uri, tiny_teacher_dir, out, 0, 2, progress=False)
    with pytest.raises(ValueError, match=r"shards cut for \[2\] shard\(s\), not 3"):
        label_pairs(uri, tiny_teacher_dir, out, num_shards=3)


def test_gcs_input_and_output(gcs_emulator, tiny_teacher_dir, unlabelled, tmp_path):
    uri, frame = unlabelled
    root = f"gs://{gcs_emulator}/label-test"
    storage.write_bytes(f"{root}/pairs/part-0.parquet", Path(uri).read_bytes())
    paths = label_pairs(f"{root}/pairs", tiny_teacher_dir, f"{root}/labels", num_shards=2, progress=False)
    assert storage.list_files(f"{root}/labels") == [shard_name(0, 2), shard_name(1, 2)]
    local = label_pairs(uri, tiny_teacher_dir, str(tmp_path / "local"), num_shards=2, progress=False)
    for remote, here in zip(paths, local, strict=True):
        pd.testing.assert_frame_equal(read_table(remote), pd.read_parquet(here))
    assert label_pairs(f"{root}/pairs", tiny_teacher_dir, f"{root}/labels", num_shards=2) == paths
    from components.label import labelled_by, teacher_mark

    assert [labelled_by(p) for p in paths] == [teacher_mark(tiny_teacher_dir)] * 2  # from the footers on gs://
