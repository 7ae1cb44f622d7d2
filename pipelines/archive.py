"""`kdrank experiment archive|restore`: a runs folder's results without any of its data, to commit.

A runs folder (`runs/results-full`, say) holds the data split, checkpoints and per-pair test scores
beside the query and product texts: none of it may be committed, and a new session's work tree starts
without it. So results made on a lent GPU would be lost with the session, and later rows could not be
compared pair by pair with them. The archive keeps what the data cannot give back:

- `manifest.json`: the profile, the test split's size and a digest of its (query id, product id)
  sequence, and the split's counts;
- `results.jsonl`: each run's row, as `kdrank experiment run` wrote it;
- `runs/RUN/metrics.json`, `runs/RUN/checkpoint.json` (the training record, where there is one) and
  `runs/RUN/scores.parquet`: the run's two score columns in the test split's row order, nothing else
  (no ids, texts or grades);
- `labels/TEACHER-Mx/`: an archived teacher's labels of an augmented set, as probabilities in the set's
  row order and a record of the teacher's identity and the set's digest (`pipelines/teacher_labels.py`),
  so that later sessions can distil from them without training the teacher again. A composed ensemble's
  own set (the mean of its members', identity from theirs) takes the place of its members' sets, unless a
  student learned from a member itself; a 0x set that leads a larger set of the same teacher is not kept,
  nor a smaller set whose pairs and probabilities a larger set of the same teacher starts with (a run at
  its size takes that set's first rows).
- `pairs/augmented-Mx/`: the augmented set those labels are of, as positions in the query pool and the
  catalogue (`pipelines/pair_sets.py`), so that a later session (another device, say) makes exactly
  those pairs without augmenting, and the labels fit them. A label set of other pairs, the first rows of
  an augmented set made in the folder (a `TEACHER@M` run's), keeps those rows as a pair set of its own,
  `pairs/augmented-16x-first-8x-DIGEST/`, which a run finds by its digest.

`restore` puts the rows back into a runs folder whose split was made anew from the same data and
settings; it refuses another split, and it recomputes every run's metrics from the restored scores
and the split's grades and refuses a run whose metrics differ from the archived ones. Label sets go to
the folder's `data/archived-labels/` and pair sets to its `data/archived-pairs/`, where distillation
runs find them.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from pathlib import Path

import pandas as pd

from components import schema, storage
from pipelines import pair_sets, teacher_labels
from pipelines.experiments import ensemble_identity
from pipelines.runs_folder import append_result, read_results, training_record

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
SCORE_COLUMNS = ("score", "score_grade")  # components.evaluate.SCORE, SCORE_GRADE
CHECKED_METRICS = ("ndcg@5", "ndcg@10", "pairwise_accuracy", "spearman", "rmse")
KEY = [schema.QUERY_ID, schema.PRODUCT_ID]


class ArchiveError(ValueError):
    """An archive and a runs folder that do not fit together (another split, misaligned scores)."""


def _read_test(runs_dir: Path) -> pd.DataFrame:
    path = runs_dir / "data" / "test.parquet"
    if not path.is_file():
        raise ArchiveError(f"{path} is missing: make the runs folder's split first, e.g. "
                           f"`kdrank experiment run --profile PROFILE --data DATA --output {runs_dir} "
                           "--only baseline-random`")
    return pd.read_parquet(path)


def split_digest(test: pd.DataFrame) -> str:
    """sha256 of the test split's (query id, product id) sequence, in row order."""
    return teacher_labels.pairs_digest(test)


def _aligned_scores(scores_path: Path, test: pd.DataFrame, run: str) -> pd.DataFrame:
    """A run's score columns in the test split's row order; it must have scored exactly those pairs."""
    scored = pd.read_parquet(scores_path)
    missing = [c for c in (*KEY, *SCORE_COLUMNS) if c not in scored.columns]
    if missing:
        raise ArchiveError(f"{run}: {scores_path} lacks column(s) {missing}")
    keys = scored[KEY].astype(str)
    if keys.duplicated().any() or len(scored) != len(test):
        raise ArchiveError(f"{run}: {scores_path} holds {len(scored)} rows ({int(keys.duplicated().sum())} "
                           f"repeated pairs) for a test split of {len(test)} pairs")
    index = pd.MultiIndex.from_frame(keys)
    wanted = pd.MultiIndex.from_frame(test[KEY].astype(str))
    position = index.get_indexer(wanted)
    if (position < 0).any():
        raise ArchiveError(f"{run}: {int((position < 0).sum())} of the split's {len(test)} test pairs were not "
                           f"scored in {scores_path}")
    return scored.iloc[position][list(SCORE_COLUMNS)].astype("float64").reset_index(drop=True)


def _manifest(runs_dir: Path, test: pd.DataFrame, profile: str) -> dict:
    summary = runs_dir / "data" / "summary.json"
    counts = json.loads(summary.read_text())["counts"] if summary.is_file() else {}
    return {"profile": profile, "test_pairs": len(test), "test_queries": int(test[schema.QUERY_ID].nunique()),
            "test_digest": split_digest(test), "counts": counts}


def archive_runs(runs_dir: str | Path, archive_dir: str | Path) -> list[str]:
    """Add every run of `runs_dir` with per-pair test scores to the archive (made if absent); run names.

    Runs already in the archive are replaced by the runs folder's; archived runs the folder lacks are
    kept. The archive must be of the same test split. It is rewritten whole, or not at all.
    """
    runs_dir, archive_dir = Path(runs_dir), Path(archive_dir)
    test = _read_test(runs_dir)
    listed = read_results(runs_dir)
    rows = [r for r in listed if (runs_dir / "eval" / r["run"] / "scores.parquet").is_file()]
    skipped = [r["run"] for r in listed if r not in rows]
    if skipped:
        log.warning("no per-pair test scores for %s in %s/eval: not archived", ", ".join(skipped), runs_dir)
    if not rows:
        raise ArchiveError(f"no run in {runs_dir} has per-pair test scores (eval/RUN/scores.parquet) to archive")
    profiles = {r["profile"] for r in rows}
    if len(profiles) > 1:
        raise ArchiveError(f"{runs_dir} mixes profiles {sorted(profiles)}; an archive holds one")
    manifest = _manifest(runs_dir, test, profiles.pop())
    old = _read_manifest(archive_dir) if (archive_dir / MANIFEST).is_file() else None
    if old and (old["test_digest"], old["profile"]) != (manifest["test_digest"], manifest["profile"]):
        raise ArchiveError(f"{archive_dir} holds profile '{old['profile']}' runs of another test split "
                           f"({old['test_pairs']} pairs, digest {old['test_digest'][:12]}) than {runs_dir} "
                           f"('{manifest['profile']}', {manifest['test_pairs']} pairs, "
                           f"digest {manifest['test_digest'][:12]})")
    aligned = {r["run"]: _aligned_scores(runs_dir / "eval" / r["run"] / "scores.parquet", test, r["run"])
               for r in rows}  # every run is checked before anything is written
    names = {r["run"] for r in rows}
    kept = [r for r in (read_results(archive_dir) if old else []) if r["run"] not in names]
    identities = {**_identities(kept, lambda run: archive_dir / "runs" / run / "checkpoint.json"),
                  **_identities(rows, lambda run: training_record(runs_dir, run))}
    identities.update(_ensemble_identities(kept + rows, identities))
    new_sets = _label_sets(runs_dir, identities)
    old_sets = {} if not old else {
        folder.name: folder for folder in sorted((archive_dir / "labels").glob("*"))
        if folder.name not in new_sets and (record := teacher_labels.read_record(folder))
        and identities.get(record["teacher"]) == record["identity"]}
    records = {**{n: teacher_labels.read_record(f) for n, f in old_sets.items()},
               **{n: teacher_labels.read_record(f) for n, f in new_sets.items()}}
    # a 0x run takes these from the larger set, an ensemble's student from the ensemble's own set (every call
    # sends the archive along, so a set kept twice costs every later call its room)
    for name in _covered(records) | _held_by_ensembles(records, kept + rows):
        old_sets.pop(name, None)
        new_sets.pop(name, None)
    # a `TEACHER@M` run's own set that a larger one's leads with: a run at its size takes the larger one's rows
    for name in _led({**old_sets, **new_sets}, records):
        old_sets.pop(name, None)
        new_sets.pop(name, None)
    kept_records = {n: records[n] for n in (*old_sets, *new_sets)}
    pairs = _pair_sets(runs_dir, archive_dir if old else None, kept_records)
    carried = _carried_pairs(runs_dir, archive_dir if old else None, kept_records, pairs)
    held_out = [str(runs_dir / "data" / f"{split}.parquet") for split in ("val", "test")]  # left out of title queries
    with storage.atomic_dir(archive_dir) as tmp:
        out = Path(tmp)
        for row in kept:
            shutil.copytree(archive_dir / "runs" / row["run"], out / "runs" / row["run"])
        for name, folder in old_sets.items():
            shutil.copytree(folder, out / "labels" / name)
        for name, folder in new_sets.items():
            if folder.parent.name == teacher_labels.ARCHIVED:  # restored, still in the archive's form
                teacher_labels.copy_set(folder, out / "labels" / name)
            else:
                teacher_labels.export_set(folder, out / "labels" / name)
        for name, (source, first) in carried.items():
            if source.is_dir():
                pair_sets.copy_set(source, out / "pairs" / name)
            else:  # checked before: made by augment_pairs, starting with the label set's pairs
                pair_sets.export_set(source, str(runs_dir / "data" / "train.parquet"),
                                     str(runs_dir / "data" / "catalogue.parquet"), out / "pairs" / name, rows=first,
                                     held_out=held_out)
        pairs = {name: source for name, (source, _) in pairs.items()}
        for name, source in list(pairs.items()):
            if source.is_dir():  # restored, or kept in the archive: copied as it is
                pair_sets.copy_set(source, out / "pairs" / name)
                continue
            try:
                pair_sets.export_set(source, str(runs_dir / "data" / "train.parquet"),
                                     str(runs_dir / "data" / "catalogue.parquet"), out / "pairs" / name,
                                     held_out=held_out)
            except pair_sets.PairsMismatch as err:  # the labels are still worth keeping
                log.warning("%s: the label sets of %s are archived without their pairs", err, name)
                del pairs[name]
        for row in rows:
            source, target = runs_dir / "eval" / row["run"], out / "runs" / row["run"]
            target.mkdir(parents=True)
            aligned[row["run"]].to_parquet(target / "scores.parquet", index=False)
            shutil.copy(source / "metrics.json", target / "metrics.json")
            if record := training_record(runs_dir, row["run"]):
                shutil.copy(record, target / "checkpoint.json")
        all_rows = kept + rows
        (out / "results.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in all_rows))
        (out / MANIFEST).write_text(json.dumps({**manifest, "runs": [r["run"] for r in all_rows],
                                                "labels": sorted({*old_sets, *new_sets}),
                                                "pairs": sorted({*pairs, *carried})}, indent=2) + "\n")
    log.info("archived %d run(s) of %s into %s%s%s", len(rows), runs_dir, archive_dir,
             f", with the label sets {', '.join(sorted(new_sets))}" if new_sets else "",
             f" and the pair sets {', '.join(sorted({*pairs, *carried}))}" if pairs or carried else "")
    return [r["run"] for r in rows]


def _pair_sets(runs_dir: Path, archive_dir: Path | None, records: dict[str, dict]) -> dict[str, tuple[Path, str]]:
    """augmented-Mx -> (where the pairs of the archived label sets at Mx come from, their digest): a stored
    set (restored into the runs folder, or already in the archive) with their digest, else the folder's
    augmented file when it holds them. One set per multiple: label sets of other pairs of that multiple
    keep theirs as carried pairs where the folder has them (`_carried_pairs`)."""
    by_multiple: dict[float, dict[str, str]] = {}
    for name, record in sorted(records.items()):
        if record["multiple"] > 0:
            by_multiple.setdefault(record["multiple"], {})[name] = record["pairs_digest"]
    chosen = {}
    for multiple, digests in sorted(by_multiple.items()):
        name = pair_sets.set_name(multiple)
        stored = [runs_dir / "data" / pair_sets.ARCHIVED / name]
        if archive_dir is not None:
            stored.append(archive_dir / "pairs" / name)
        found = {folder: record["pairs_digest"] for folder in stored if (record := pair_sets.read_record(folder))}
        current = runs_dir / "data" / f"augmented-{multiple:g}x.parquet"
        if not any(d in digests.values() for d in found.values()) and current.is_file():
            found[current] = teacher_labels.pairs_digest(pd.read_parquet(current, columns=KEY))
        for source, digest in found.items():
            if digest in digests.values():
                chosen[name] = (source, digest)
                break
    return chosen


def _carried_pairs(runs_dir: Path, archive_dir: Path | None, records: dict[str, dict],
                   chosen: dict[str, tuple[Path, str]]) -> dict[str, tuple[Path, int | None]]:
    """NAME -> (source, rows): the pairs of the label sets above 0x that no chosen augmented set holds, as
    pair sets of their own, one per digest (`pair_sets.carried_name`): a stored set of that digest (restored
    here or already in the archive), else the first rows of an augmented set made in this folder that
    start with them (a `TEACHER@M` run's labels of the largest set's first rows). Label sets whose pairs
    are nowhere here are named in the log and keep none."""
    from components.augment import made_with

    wanted: dict[str, list[str]] = {}
    for name, record in sorted(records.items()):
        default = chosen.get(pair_sets.set_name(record["multiple"]))
        if record["multiple"] > 0 and (default is None or default[1] != record["pairs_digest"]):
            wanted.setdefault(record["pairs_digest"], []).append(name)
    if not wanted:
        return {}
    stored = {}
    for folder in [*sorted((runs_dir / "data" / pair_sets.ARCHIVED).glob("*")),
                   *(sorted((archive_dir / "pairs").glob("*")) if archive_dir is not None else [])]:
        if (record := pair_sets.read_record(folder)) is not None:
            stored.setdefault(record["pairs_digest"], (folder, record))
    made = []  # (augmented file, its keys, its settings' multiple): read once, only when a digest needs them
    carried = {}
    for digest, names in wanted.items():
        record = records[names[0]]
        if digest in stored:
            folder, pair_record = stored[digest]
            carried[pair_sets.carried_name(pair_record["multiple"], record)] = (folder, None)
            continue
        if not made:
            for path in sorted((runs_dir / "data").glob("augmented-*x.parquet")):  # not the first-rows copies
                if re.fullmatch(r"augmented-[\d.]+x\.parquet", path.name) and (settings := made_with(str(path))
                                                                               .get("settings")):
                    made.append((path, pd.read_parquet(path, columns=KEY), float(settings["multiple"])))
        source = next(((path, multiple) for path, keys, multiple in made if len(keys) >= record["pairs"]
                       and teacher_labels.pairs_digest(keys.iloc[:record["pairs"]]) == digest), None)
        if source is None:
            log.warning("the pairs of the label set(s) %s are not in this folder: kept without them",
                        ", ".join(names))
            continue
        carried[pair_sets.carried_name(source[1], record)] = (source[0], record["pairs"])
    return carried


def _ensemble_identities(rows: list[dict], identities: dict[str, str]) -> dict[str, str]:
    """Composed ensemble run -> the identity of its labels, where every member's teacher identity is known."""
    return {r["run"]: ensemble_identity([identities[m] for m in r["members"]]) for r in rows
            if r["kind"] == "ensemble" and r.get("members") and all(m in identities for m in r["members"])}


def _held_by_ensembles(records: dict[str, dict], rows: list[dict]) -> set[str]:
    """Members' label sets whose pairs an archived set of each of their ensembles holds (as the members' mean),
    where no student learned from the member itself: those ensembles' students need their own sets alone."""
    ensembles: dict[str, set[str]] = {}
    for row in rows:
        if row["kind"] == "ensemble":
            for member in row.get("members", []):
                ensembles.setdefault(member, set()).add(row["run"])
    taught = {r["labels"] for r in rows if r["kind"] == "student"}
    held = {(r["teacher"], r["pairs_digest"]) for r in records.values()}
    return {name for name, r in records.items() if r["teacher"] not in taught
            and r["teacher"] in ensembles and all((e, r["pairs_digest"]) in held for e in ensembles[r["teacher"]])}


def _covered(records: dict[str, dict]) -> set[str]:
    """The 0x label sets whose pairs lead a larger set of the same teacher (its training-pair prefix)."""
    prefixes = {(r["teacher"], r["identity"], r["base_digest"]) for r in records.values() if r["multiple"] > 0}
    return {name for name, r in records.items()
            if r["multiple"] == 0 and (r["teacher"], r["identity"], r["pairs_digest"]) in prefixes}


def _led(sets: dict[str, Path], records: dict[str, dict]) -> set[str]:
    """The label sets above 0x that a larger set of the same teacher here (a runs folder's, with its pairs)
    starts with, pairs and probabilities bit for bit: a smaller `TEACHER@M` set whose labels a larger one
    reused (`Runner._label_after_smaller`). Restored, the larger set gives them back
    (`Runner._own_archived`); kept twice, every device call would carry them twice."""
    return {name for name, folder in sets.items() if records[name]["multiple"] > 0 and any(
        teacher_labels.leads((folder, records[name]), (other, records[key]))
        for key, other in sets.items() if key != name and records[key]["multiple"] > records[name]["multiple"])}


def _identities(rows: list[dict], record_of) -> dict[str, str]:
    """Teacher run -> the identity of the teacher it trained, from its training record (where it has one)."""
    from components.teacher import identity

    found = {}
    for row in rows:
        path = record_of(row["run"]) if row["kind"] == "teacher" else None
        if path is not None and path.is_file():
            training = json.loads(path.read_text()).get("training", {})
            try:
                found[row["run"]] = identity(training)
            except ValueError as err:  # a record from before teachers recorded their data's contents
                log.warning("%s: %s; its labels are not archived", row["run"], err)
    return found


def _label_sets(runs_dir: Path, identities: dict[str, str]) -> dict[str, Path]:
    """NAME -> labelled folder: the runs folder's label sets made by the archived teachers as they are.

    A set counts when its record names an archived teacher run with that teacher's identity. Where
    a teacher labelled several sets of one multiple (the augmented set was made again), the set of the
    folder's current augmented file wins, then the newest.
    """
    data = runs_dir / "data"
    found: dict[str, list[tuple[dict, Path]]] = {}
    for folder in [*sorted(data.glob("labelled-*")), *sorted((data / teacher_labels.ARCHIVED).glob("*"))]:
        record = teacher_labels.read_record(folder)
        if record and identities.get(record["teacher"]) == record["identity"]:
            name = teacher_labels.set_name(record["teacher"], record["multiple"])
            found.setdefault(name, []).append((record, folder))
    chosen = {}
    for name, sets in found.items():
        current = data / f"augmented-{sets[0][0]['multiple']:g}x.parquet"
        digest = teacher_labels.pairs_digest(pd.read_parquet(current, columns=KEY)) if len(sets) > 1 and \
            current.is_file() else None
        chosen[name] = max(sets, key=lambda s: (s[0]["pairs_digest"] == digest,
                                                (s[1] / teacher_labels.RECORD).stat().st_mtime_ns))[1]
    return chosen


def _read_manifest(archive_dir: Path) -> dict:
    path = archive_dir / MANIFEST
    if not path.is_file():
        raise ArchiveError(f"{archive_dir} is not a results archive: {MANIFEST} is missing")
    return json.loads(path.read_text())


def _check_metrics(run: str, archived: dict, recomputed: dict) -> None:
    """Refuse a restore whose scores do not give back the row's metrics (the split's grades differ, say)."""
    for key in CHECKED_METRICS:
        a, b = archived.get(key), recomputed.get(key)
        a = math.nan if a is None else float(a)
        b = math.nan if b is None else float(b)
        if not (math.isnan(a) and math.isnan(b)) and not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            raise ArchiveError(f"{run}: the restored scores give {key} {b:.6f} on this split, the archive says "
                               f"{a:.6f}: the split's grades differ from the archived run's; not restored")


def restore_runs(archive_dir: str | Path, runs_dir: str | Path) -> list[str]:
    """Put the archive's runs that `runs_dir` lacks back into it (rows, eval/RUN/ with per-pair scores).

    `runs_dir` must hold the archive's test split (same pairs in the same order). Each run's metrics
    are recomputed from its scores and must equal the archived ones. Runs the folder has are left as
    they are (with a warning where the archive's row of that name has other metrics); nothing is written
    unless every run to restore passes. The archive's teacher label sets go to data/archived-labels/
    (checked against their records first); whether a set fits this folder's teacher and augmented set is
    checked where a distillation run uses it.
    """
    from components.evaluate import SCORE, SCORE_GRADE, ranking_metrics

    archive_dir, runs_dir = Path(archive_dir), Path(runs_dir)
    manifest = _read_manifest(archive_dir)
    test = _read_test(runs_dir)
    if (digest := split_digest(test)) != manifest["test_digest"]:
        raise ArchiveError(f"{runs_dir}'s test split ({len(test)} pairs, digest {digest[:12]}) is not the archive's "
                           f"({manifest['test_pairs']} pairs, digest {manifest['test_digest'][:12]}): make it "
                           f"with the archived rows' data and profile '{manifest['profile']}'")
    present = {r["run"]: r for r in read_results(runs_dir)}
    archived = read_results(archive_dir)
    todo = [r for r in archived if r["run"] not in present]
    label_sets = sorted(p for p in (archive_dir / "labels").glob("*") if p.is_dir())
    try:
        records = {folder.name: teacher_labels.check_stored(folder) for folder in label_sets}
    except teacher_labels.LabelsMismatch as err:
        raise ArchiveError(f"{archive_dir}: {err}") from None
    pair_folders = sorted(p for p in (archive_dir / "pairs").glob("*") if p.is_dir())
    try:
        pair_records = {folder.name: pair_sets.check_stored(folder) for folder in pair_folders}
    except pair_sets.PairsMismatch as err:
        raise ArchiveError(f"{archive_dir}: {err}") from None
    base = test[[schema.QUERY_ID, schema.QUERY, schema.PRODUCT_ID, schema.GRADE]].reset_index(drop=True)
    frames = {}
    for row in todo:  # all checked before any is written
        stored = pd.read_parquet(archive_dir / "runs" / row["run"] / "scores.parquet")
        if len(stored) != len(base) or list(stored.columns) != list(SCORE_COLUMNS):
            raise ArchiveError(f"{row['run']}: archived scores have {len(stored)} rows and columns "
                               f"{list(stored.columns)}; expected {len(base)} and {list(SCORE_COLUMNS)}")
        scored = base.assign(**{SCORE: stored["score"].to_numpy(), SCORE_GRADE: stored["score_grade"].to_numpy()})
        _check_metrics(row["run"], row["metrics"], ranking_metrics(scored, SCORE, mapped_col=SCORE_GRADE))
        frames[row["run"]] = scored
    for row in todo:
        source = archive_dir / "runs" / row["run"]
        with storage.atomic_dir(runs_dir / "eval" / row["run"]) as tmp:
            frames[row["run"]].to_parquet(Path(tmp, "scores.parquet"), index=False)
            for name in ("metrics.json", "checkpoint.json"):
                if (source / name).is_file():
                    shutil.copy(source / name, Path(tmp, name))
        append_result(runs_dir, row)
    for folder in label_sets:
        target = runs_dir / "data" / teacher_labels.ARCHIVED / folder.name
        # the record names teacher and pairs, not the probabilities: a retrained teacher's set has an equal one
        if teacher_labels.read_record(target) != records[folder.name] \
                or not teacher_labels.same_stored_probs(folder, target):
            teacher_labels.copy_set(folder, target)
            log.info("label set %s restored into %s", folder.name, target.parent)
    for folder in pair_folders:
        target = runs_dir / "data" / pair_sets.ARCHIVED / folder.name
        if pair_sets.read_record(target) != pair_records[folder.name]:
            pair_sets.copy_set(folder, target)
            log.info("pair set %s restored into %s", folder.name, target.parent)
    for row in archived:
        if (mine := present.get(row["run"])) is None:
            continue
        if mine.get("metrics") == row.get("metrics"):
            log.info("%s: already in %s; left as it is", row["run"], runs_dir)
        else:  # two archives with one name, or a row made here again: the folder's stands, and the reader is told
            key = "pairwise_accuracy"
            log.warning("%s: %s already holds a row of this name with other metrics (%s %s, the archive's %s); "
                        "the folder's row is kept, not the archive's (restore the archive into a folder of "
                        "its own to compare the two)", row["run"], runs_dir, key,
                        mine.get("metrics", {}).get(key), row.get("metrics", {}).get(key))
    return [r["run"] for r in todo]
