"""Augmented pair sets in a results archive: another machine distils from archived labels without augmenting."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kdrank_testing import split_only

from components import augment
from components.augment import ATTRS_KEY, AugmentConfig, augment_pairs
from components.flow import get_profile
from pipelines import pair_sets
from pipelines.archive import ArchiveError, archive_runs, restore_runs
from pipelines.experiments import Runner
from pipelines.teacher_labels import pairs_digest

KEY = ["query_id", "product_id"]


def _digest(path: Path) -> str:
    return pairs_digest(pd.read_parquet(path, columns=KEY))


def _config(multiple: float = 2.0, **changes) -> AugmentConfig:
    return AugmentConfig(**{**get_profile("test").augment, "multiple": multiple, **changes})


def test_the_archive_keeps_the_labelled_augmented_set_as_positions(finished, archived):
    _, _, root = finished
    archive, _ = archived
    assert json.loads((archive / "manifest.json").read_text())["pairs"] == ["augmented-2x"]
    record = json.loads((archive / "pairs" / "augmented-2x" / "pairs.json").read_text())
    made = root / "runs" / "data" / "augmented-2x.parquet"
    assert record["pairs_digest"] == _digest(made)
    for name in ("teacher-soft-2x", "teacher-ensemble-2x"):  # the pairs its label sets are of
        assert json.loads((archive / "labels" / name / "labels.json").read_text())["pairs_digest"] == _digest(made)
    pairs = pd.read_parquet(archive / "pairs" / "augmented-2x" / "pairs.parquet")
    assert list(pairs.columns) == ["q", "doc", "src"] and all(t.kind == "u" for t in pairs.dtypes)
    assert len(pairs) == record["pairs"] - record["base_pairs"] == 2 * record["base_pairs"]
    assert "encoder_id" not in record["settings"] and record["settings"]["bm25_k"] == 5


def test_another_encoder_distils_from_the_archive_without_augmenting_or_a_teacher(
        finished, archived, tmp_path, tiny_teacher_dir, tiny_student_dir, monkeypatch):
    _, rows, root = finished
    archive, here = archived
    # another bi-encoder (as another device or precision would): augmentation alone gives other pairs, which the
    # archived labels do not fit
    monkeypatch.setenv("KDRANK_STUDENT_BASE", tiny_student_dir)
    other = tmp_path / "other-2x.parquet"
    augment_pairs(str(here / "data" / "train.parquet"), str(here / "data" / "catalogue.parquet"), str(other),
                  _config())
    assert _digest(other) != _digest(root / "runs" / "data" / "augmented-2x.parquet")

    runner = Runner("test", str(root / "train.csv"), str(here), fmt="homedepot", teacher_model=tiny_teacher_dir,
                    student_model=tiny_student_dir)
    row = runner.run(["student-margin-1x"], force=True)[0]
    assert row["metrics"] == next(r for r in rows if r["run"] == "student-margin-1x")["metrics"]
    assert not (here / "models" / "teacher-soft").exists()
    written = here / "data" / "augmented-2x.parquet"
    original = pd.read_parquet(root / "runs" / "data" / "augmented-2x.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(written), original)
    made = json.loads(pd.read_parquet(written, columns=["source"]).attrs[ATTRS_KEY])
    assert made["settings"]["encoder_id"].startswith("archived:") and made["summary"]["archived"] is True
    # a second use finds it written and leaves it (the labels' version tag hashes its mtime)
    stamp = written.stat().st_mtime_ns
    assert runner.augmented() == str(written) and written.stat().st_mtime_ns == stamp
    # archived again from here, the pair set comes back byte for byte
    again = tmp_path / "again"
    archive_runs(here, again)
    for name in ("pairs.json", "pairs.parquet"):
        assert (again / "pairs" / "augmented-2x" / name).read_bytes() == \
            (archive / "pairs" / "augmented-2x" / name).read_bytes()


def test_pairs_made_with_other_settings_or_data_are_named_and_not_used(archived, tmp_path):
    _, here = archived
    stored = pair_sets.find_archived(here / "data", 2.0)
    train, catalogue = str(here / "data" / "train.parquet"), str(here / "data" / "catalogue.parquet")
    target = tmp_path / "augmented.parquet"
    with pytest.raises(pair_sets.PairsMismatch, match="made with other bm25_k, seed than"):
        pair_sets.use_archived(stored, train, catalogue, str(target), _config(bm25_k=4, seed=3))
    fewer = tmp_path / "train.parquet"
    pd.read_parquet(train).iloc[1:].to_parquet(fewer)
    with pytest.raises(pair_sets.PairsMismatch, match="made with other training pairs than"):
        pair_sets.use_archived(stored, str(fewer), catalogue, str(target), _config())
    assert not target.exists()


def test_pairs_that_rebuild_to_another_digest_are_refused(finished, archived, tmp_path, caplog):
    _, _, root = finished
    _, here = archived
    stored = here / "data" / "archived-pairs" / "augmented-2x"
    pairs = pd.read_parquet(stored / "pairs.parquet")
    swapped = pairs.copy()
    swapped.iloc[[0, -1]] = pairs.iloc[[-1, 0]].to_numpy()  # same counts, two pairs in other places
    swapped.to_parquet(stored / "pairs.parquet")
    train, catalogue = str(here / "data" / "train.parquet"), str(here / "data" / "catalogue.parquet")
    target = tmp_path / "augmented.parquet"
    with pytest.raises(pair_sets.PairsMismatch, match="rebuilt here give digest .*, not the recorded"):
        pair_sets.use_archived(stored, train, catalogue, str(target), _config())
    assert not target.exists()
    beyond = pairs.assign(doc=pairs["doc"].astype(np.uint32) + 100_000)
    beyond.to_parquet(stored / "pairs.parquet")
    with pytest.raises(pair_sets.PairsMismatch, match="product positions up to"):
        pair_sets.use_archived(stored, train, catalogue, str(target), _config())

    # in a run, the misfit is named and the augmented set is made here as before
    runner = Runner("test", str(root / "train.csv"), str(here), fmt="homedepot")
    with caplog.at_level("WARNING"):
        runner.augmented()
    assert "augmenting here instead" in caplog.text
    made = json.loads(pd.read_parquet(here / "data" / "augmented-2x.parquet", columns=["source"]).attrs[ATTRS_KEY])
    assert not made["settings"]["encoder_id"].startswith("archived:")


def test_restore_refuses_a_pair_set_that_does_not_fit_its_record_and_writes_nothing(finished, tmp_path):
    _, _, root = finished
    archive = tmp_path / "archive"
    archive_runs(root / "runs", archive)
    pairs = archive / "pairs" / "augmented-2x" / "pairs.parquet"
    pd.read_parquet(pairs).iloc[1:].to_parquet(pairs)
    here = split_only(root, tmp_path / "here")
    with pytest.raises(ArchiveError, match=r"pairs.parquet has \d+ rows .* names \d+ new pairs"):
        restore_runs(archive, here)
    assert not (here / "results.jsonl").exists() and not (here / "data" / "archived-pairs").exists()


def test_label_sets_of_pairs_the_folder_no_longer_holds_are_kept_without_them(finished, tmp_path, caplog):
    _, _, root = finished
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    (runs / "data" / "augmented-2x.parquet").unlink()
    with caplog.at_level("WARNING"):
        archive_runs(runs, tmp_path / "archive")
    assert "kept without them" in caplog.text and "not in this folder" in caplog.text
    manifest = json.loads((tmp_path / "archive" / "manifest.json").read_text())
    assert manifest["pairs"] == [] and "teacher-soft-2x" in manifest["labels"]


def test_an_archive_sent_back_without_its_pair_set_is_refused(finished, tmp_path, capsys):
    import tarfile

    from kdrank_testing import load_benchmark

    _, _, root = finished
    made = tmp_path / "made"
    archive_runs(root / "runs", made)
    for with_pairs in (False, True):
        part = tmp_path / f"{with_pairs}" / "archive.tgz"
        part.parent.mkdir()
        with tarfile.open(part, "w:gz") as tar:  # as gpu_run.sh packs it: everything but the label sets
            for path in sorted(made.iterdir()):
                if path.name != "labels" and (with_pairs or path.name != "pairs"):
                    tar.add(path, arcname=f"./{path.name}")
        checkout = tmp_path / f"checkout-{with_pairs}"
        shutil.copytree(made / "labels", checkout / "labels")
        code = load_benchmark("gpu_archive").main(["--archive", str(checkout), str(part)])
        if with_pairs:
            assert code == 0 and (checkout / "pairs" / "augmented-2x" / "pairs.parquet").read_bytes() == \
                (made / "pairs" / "augmented-2x" / "pairs.parquet").read_bytes()
        else:
            assert code == 2 and "pair set(s) ['augmented-2x'] are in the new manifest but not in" in \
                capsys.readouterr().err
            assert not (checkout / "pairs").exists()


def test_an_augmented_file_that_cannot_be_stored_leaves_its_labels_archived_without_pairs(finished, tmp_path, caplog):
    _, _, root = finished
    runs = tmp_path / "runs"
    shutil.copytree(root / "runs", runs)
    augmented = runs / "data" / "augmented-2x.parquet"
    frame = pd.read_parquet(augmented)
    frame.attrs = {}  # the same pairs, without the settings augmentation stores with them
    frame.to_parquet(augmented)
    with caplog.at_level("WARNING"):
        archive_runs(runs, tmp_path / "archive")
    assert "holds no augmentation settings" in caplog.text and "archived without their pairs" in caplog.text
    manifest = json.loads((tmp_path / "archive" / "manifest.json").read_text())
    assert manifest["pairs"] == [] and "teacher-soft-2x" in manifest["labels"]
    assert not (tmp_path / "archive" / "pairs").exists()


def test_the_first_rows_of_a_set_are_stored_as_a_set_of_their_own(finished, tmp_path):
    _, _, root = finished
    data = root / "runs" / "data"
    made = data / "augmented-2x.parquet"
    keys = pd.read_parquet(made, columns=KEY)
    n = len(pd.read_parquet(data / "train.parquet"))
    args = (made, str(data / "train.parquet"), str(data / "catalogue.parquet"))
    record = pair_sets.export_set(*args, tmp_path / "first", rows=n + 5)
    assert (record["pairs"], record["first_rows_of"]) == (n + 5, len(keys))
    assert record["pairs_digest"] == pairs_digest(keys.iloc[:n + 5])
    assert pair_sets.find_by_digest(tmp_path / "nowhere", record["pairs_digest"]) is None
    assert pair_sets.carried_name(2.0, record) == f"augmented-2x-first-{5 / n:g}x-{record['pairs_digest'][:12]}"
    for bad in (0, len(keys) + 1):
        with pytest.raises(pair_sets.PairsMismatch, match=f"has {len(keys)} pairs; its first {bad} were asked for"):
            pair_sets.export_set(*args, tmp_path / f"bad-{bad}", rows=bad)
        assert not (tmp_path / f"bad-{bad}").exists()


def test_a_run_with_title_queries_leaves_out_its_held_out_queries_and_archives_with_them(tmp_path):
    import dataclasses

    from kdrank_testing import write_homedepot_csv

    runner = Runner("test", write_homedepot_csv(tmp_path / "train.csv"), str(tmp_path / "runs"), fmt="homedepot")
    runner.profile = dataclasses.replace(runner.profile, augment={**runner.profile.augment, "title_queries": 1.0})
    made = Path(runner.augmented())
    held = set().union(*(pd.read_parquet(path)["query_id"] for path in runner.held_out()))
    frame = pd.read_parquet(made)
    assert (frame["source"] == augment.TITLE).any() and not held & set(frame["query_id"])
    assert augment.made_with(str(made))["settings"]["held_out"] == augment._fingerprint(*sorted(held))
    # stored with them, the set is written from the archive instead of augmenting
    paths = runner.paths()
    pair_sets.export_set(made, paths["train"], paths["catalogue"],
                         Path(paths["train"]).parent / pair_sets.ARCHIVED / pair_sets.set_name(runner.top),
                         held_out=runner.held_out())
    made.unlink()
    assert runner.augmented() == str(made)
    assert augment.made_with(str(made))["settings"]["encoder_id"].startswith(pair_sets.ENCODER_MARK)
    pd.testing.assert_frame_equal(pd.read_parquet(made), frame)
