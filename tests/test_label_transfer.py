"""tests/benchmarks/label_transfer.py: archived labels moved onto another machine's augmented pairs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from kdrank_testing import load_benchmark

from components import schema
from components.augment import AugmentConfig, augment_pairs
from components.flow import get_profile
from components.scoring import score_file
from pipelines.archive import archive_runs
from pipelines.experiments import Runner
from pipelines.teacher_labels import pairs_digest

KEY = ["query_id", "product_id"]


@pytest.fixture(scope="module")
def lt():
    return load_benchmark("label_transfer")


def _sequences(seed: int, m: int = 30_000, anchor: int = 3_000, rate: float = 0.004, noise: float = 0.25):
    """(teacher grades of the labelled side, proxy grades of the other side, the other row each labelled
    row is or -1): the other side's rows with some left out and some foreign rows put in."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=m)
    rows, truth = [], []
    for j in range(m):
        if j >= anchor and rng.random() < rate:  # a row only the labelled side has
            rows.append(rng.normal())
            truth.append(-1)
        if j < anchor or rng.random() >= rate:  # a row both have (else only the other side has it)
            rows.append(latent[j])
            truth.append(j)
    teacher = 1 + 0.4 * np.array(rows) + rng.normal(scale=noise, size=len(rows))
    return teacher, latent, np.array(truth)


def test_align_recovers_the_rows_of_two_sequences_that_differ_by_skipped_rows(lt):
    teacher, proxy, truth = _sequences(0)
    match, summary = lt.align(teacher, proxy, lt.AlignConfig(anchor=3_000, band=64))
    found = match >= 0
    assert np.all(np.diff(match[found]) > 0)  # each other row at most once, in order
    assert np.array_equal(match[:3_000], np.arange(3_000))
    assert (match == truth).mean() > 0.98
    assert summary["matched"] == found.sum() and summary["labelled_unmatched"] == (~found).sum()
    assert summary["other_unmatched"] == len(proxy) - found.sum() and not summary["at_band_edge"]
    # the same rows, taken in order without aligning, are mostly another pair's
    assert (truth[:len(proxy)] == np.arange(len(proxy))).mean() < 0.5
    # a proxy that knows nothing cannot place the rows: the path says little, and the check above fails
    noise = np.random.default_rng(1).normal(size=len(proxy))
    noise[:3_000] = proxy[:3_000]
    blind, _ = lt.align(teacher, noise, lt.AlignConfig(anchor=3_000, band=64))
    assert (blind == truth).mean() < 0.9


def test_align_refuses_what_it_cannot_anchor(lt):
    teacher, proxy, _ = _sequences(2, m=2_000, anchor=500)
    with pytest.raises(ValueError, match="anchor must be 1..2000"):
        lt.align(teacher, proxy, lt.AlignConfig(anchor=0))
    with pytest.raises(ValueError, match="too few to fit the proxy curve"):
        lt.align(teacher, proxy, lt.AlignConfig(anchor=50))
    with pytest.raises(ValueError, match="nothing to align"):
        lt.align(teacher[:0], proxy, lt.AlignConfig(anchor=1))


def _split_only(root: Path, where: Path) -> Path:
    (where / "data").mkdir(parents=True)
    for name in ("train.parquet", "val.parquet", "test.parquet", "catalogue.parquet", "summary.json"):
        shutil.copy(root / "runs" / "data" / name, where / "data" / name)
    return where


def _in_order(rows: np.ndarray, within: np.ndarray) -> bool:
    """Whether `rows` are rows of `within`, each once, in its order."""
    at = 0
    for row in rows:
        while at < len(within) and not np.array_equal(within[at], row):
            at += 1
        if at == len(within):
            return False
        at += 1
    return True


def test_transfer_moves_archived_labels_onto_other_pairs_and_a_run_distils_from_them(
        lt, finished, tmp_path, tiny_teacher_dir, tiny_student_dir, monkeypatch):
    _, _, root = finished
    archive = tmp_path / "archive"
    archive_runs(root / "runs", archive)
    here = _split_only(root, tmp_path / "here")
    data = here / "data"
    # another machine's pairs: another bi-encoder finds other neighbours
    monkeypatch.setenv("KDRANK_STUDENT_BASE", tiny_student_dir)
    other = tmp_path / "other-2x.parquet"
    config = AugmentConfig(**{**get_profile("test").augment, "multiple": 2.0})
    augment_pairs(str(data / "train.parquet"), str(data / "catalogue.parquet"), str(other), config)
    original = pd.read_parquet(root / "runs" / "data" / "augmented-2x.parquet", columns=KEY)
    assert pairs_digest(pd.read_parquet(other, columns=KEY)) != pairs_digest(original)
    scored = tmp_path / "scored.parquet"
    score_file(str(root / "runs" / "models" / "student-margin-0x"), str(other), str(scored), device="cpu")
    labels = archive / "labels" / "teacher-soft-2x"

    # misfits are named, and nothing is written
    out = tmp_path / "moved"
    short = tmp_path / "short.parquet"
    pd.read_parquet(scored).iloc[:-1].to_parquet(short)
    with pytest.raises(ValueError, match="transfer needs them all"):
        lt.transfer(labels, other, short, str(data / "train.parquet"), str(data / "catalogue.parquet"), out)
    shuffled = tmp_path / "shuffled.parquet"
    frame = pd.read_parquet(scored)
    frame.iloc[::-1].to_parquet(shuffled)
    with pytest.raises(ValueError, match="row 0 scores another pair than row 0"):
        lt.transfer(labels, other, shuffled, str(data / "train.parquet"), str(data / "catalogue.parquet"), out)
    assert not out.exists()

    small = lt.AlignConfig(band=32, bins=4)
    moved = lt.transfer(labels, other, scored, str(data / "train.parquet"), str(data / "catalogue.parquet"), out,
                        small)
    record = json.loads((out / "labels" / "teacher-soft-2x" / "labels.json").read_text())
    kept = record["pairs"]
    assert kept == moved["matched"] == len(pd.read_parquet(out / "labels" / "teacher-soft-2x" / "probs.parquet"))
    assert moved["to_pairs"] - kept == sum(moved["dropped_by_source"].values())
    assert record["transferred"]["from_pairs_digest"] == pairs_digest(original)
    assert json.loads((out / "pairs" / "augmented-2x" / "pairs.json").read_text())["pairs_digest"] == \
        record["pairs_digest"]
    with pytest.raises(FileExistsError, match="transfer writes new sets only"):
        lt.transfer(labels, other, scored, str(data / "train.parquet"), str(data / "catalogue.parquet"), out, small)
    # the training pairs lead both sets as the same rows: they keep their own labels, in order
    source_probs = pd.read_parquet(labels / "probs.parquet").to_numpy()
    moved_probs = pd.read_parquet(out / "labels" / "teacher-soft-2x" / "probs.parquet").to_numpy()
    base = record["base_pairs"]
    assert 0 < base < kept and np.array_equal(moved_probs[:base], source_probs[:base])

    # restored like an archive's sets, a run distils from them with no teacher and no augmentation
    for part, folder in (("labels", "archived-labels"), ("pairs", "archived-pairs")):
        shutil.copytree(out / part, data / folder)
    runner = Runner("test", str(root / "train.csv"), str(here), fmt="homedepot", teacher_model=tiny_teacher_dir,
                    student_model=tiny_student_dir)
    row = runner.run(["student-margin-1x"], force=True)[0]
    assert row["run"] == "student-margin-1x"
    assert not (here / "models" / "teacher-soft").exists()
    moved_pairs = pd.read_parquet(data / "augmented-2x.parquet", columns=KEY)  # written from the moved pairs
    assert pairs_digest(moved_pairs) == record["pairs_digest"]
    # every moved label is an archived one, in the archive's order: the labelled rows left unmatched drop out
    assert kept == moved["labelled_rows"] - moved["labelled_unmatched"] == len(source_probs) - \
        moved["labelled_unmatched"]
    assert _in_order(moved_probs, source_probs)
    # a pair both sets hold at the same row (the path's offset there is 0) carries the archive's label for it.
    # Shared pairs at other rows are not checked: the tiny teacher's grades barely vary, so they say nothing
    # about where a row belongs, and the other bi-encoder reorders its neighbours by more than any skip.
    both = moved_pairs.assign(row=np.arange(kept)).merge(original.assign(source=np.arange(len(original))),
                                                         on=KEY, validate="one_to_one")
    same = both[both["row"] == both["source"]]
    assert moved["largest_offset"] == 0 and len(same) > base
    np.testing.assert_array_equal(moved_probs[same["row"]], source_probs[same["source"]])
    distilled = pd.read_parquet(next(data.glob("distill-teacher-soft-1x-*.parquet")))
    assert pairs_digest(distilled) == pairs_digest(moved_pairs.iloc[:len(distilled)])
    np.testing.assert_allclose(distilled[schema.TEACHER_SCORE], lt.teacher_grade(moved_probs[:len(distilled)]),
                               rtol=0, atol=1e-6)
