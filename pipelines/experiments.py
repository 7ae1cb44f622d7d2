"""`kdrank experiment run|report`: the paper's experiments on real labelled data, one named run at a time.

The plan, which runs a profile makes, is pipelines/experiment_plan.py; this module runs it (`Runner`), and
pipelines/experiment_report.py turns its rows into tables and the scaling plot.

Every run is idempotent: its checkpoint and metrics live under `--output`, a rerun skips what is done,
and `--only NAME` runs one experiment (and whatever it needs). A finished run is found by name, so after
changing a profile's settings rerun with `--force` or use a new `--output`. Each finished run adds one row to
`results.jsonl` with its settings, metrics, timings, hardware and the command that reproduces it;
`kdrank experiment report` turns those rows into a Markdown table and the scaling-curve PNG.

`kdrank experiment rescore` scores the finished checkpoints again on a larger held-out test set (e.g. the
full split's test queries, minus any query the runs trained on), into `rescored/NAME/`; `report --test-set
NAME` reports those rows. A small profile's own test split gives wide intervals; this narrows them.

The augmented sets are nested: augmentation runs once at the largest multiple and the teacher labels
that set once; the m-x set is the training pairs plus the first m x N augmented pairs in fill order.
A 0x run needs no augmentation: its teacher labels the training pairs alone; a `TEACHER@M` run labels
the m-x set alone unless the largest set's labels are there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shlex
import time
from pathlib import Path

from components.flow import PROFILES, get_profile
from pipelines.experiment_plan import Experiment, fmt_multiple, plan
from pipelines.experiment_report import fmt_metric, write_report
from pipelines.runs_folder import RESULTS, append_result, read_results, rescore_dir, training_record

log = logging.getLogger(__name__)


def _resumed(summary: dict, key: str) -> dict:
    """`{key: [...]}` when training was cut short and resumed (components.resume) at those batches or steps:
    its train_seconds then add up the runs that made it, without the time between them."""
    return {key: summary[key]} if summary.get(key) else {}


def ensemble_identity(members: list[str]) -> str:
    """The identity of a composed ensemble's labels: its members' teacher identities, in member order."""
    return hashlib.sha256(":".join(members).encode()).hexdigest()


def _starts_with_training_pairs(frame, train) -> bool:
    """Whether `frame`'s first rows are `train`'s (query id, product id) pairs, in their order."""
    from components import schema

    key = [schema.QUERY_ID, schema.PRODUCT_ID]
    return len(frame) >= len(train) and \
        frame[key].iloc[:len(train)].reset_index(drop=True).equals(train[key].reset_index(drop=True))


def _first_rows(labelled, multiple: float):
    """The training pairs of a labelled augmented set plus its first multiple x N new pairs (fill order)."""
    import pandas as pd

    from components import schema
    from components.augment import LABELLED

    base = labelled[labelled[schema.SOURCE] == LABELLED]
    new = labelled[labelled[schema.SOURCE] != LABELLED]
    want = round(multiple * len(base))
    if want > len(new):
        raise RuntimeError(f"{fmt_multiple(multiple)}x needs {want} augmented pairs but augmentation made {len(new)}")
    return pd.concat([base, new.iloc[:want]], ignore_index=True)


def cpu_bf16() -> bool:
    """Whether runs here train and score in bf16 on the CPU (no GPU, and KDRANK_CPU_BF16=1)."""
    import torch

    from components.runtime import precision

    return not torch.cuda.is_available() and precision(torch.device("cpu")) == "cpu-bf16"


def hardware() -> str:
    """The accelerator if one is used (fp32 named where it has no native bf16), else the CPU model and core
    count, and bf16 where KDRANK_CPU_BF16 asks for it (fp32 is the CPU's default and goes unsaid)."""
    import torch

    from components.runtime import cpu_model, precision

    if torch.cuda.is_available():  # a GPU without native bf16 runs in fp32, which is said
        return f"1x {torch.cuda.get_device_name()}{' (fp32)' if precision(torch.device('cuda')) == 'fp32' else ''}"

    return f"{cpu_model()}, {os.cpu_count()} cores (CPU only{', bf16 autocast' if cpu_bf16() else ''})"


class Runner:
    """Runs a profile's experiments on one labelled source, under one output folder."""

    def __init__(self, profile: str, data: str, output: str, *, fmt: str | None = None,
                 teacher_model: str | None = None, student_model: str | None = None):
        self.profile = get_profile(profile).with_models(teacher_model, student_model)
        self.models = {"--teacher-model": teacher_model, "--student-model": student_model}
        self.data, self.fmt, self.out = data, fmt, Path(output)
        self.experiments = {e.name: e for e in plan(profile)}
        self.top = max(float(m) for m in self.profile.experiments["multiples"])
        self._paths: dict[str, str] | None = None
        self._hardware, self._cpu_bf16 = hardware(), cpu_bf16()

    # ----- shared steps --------------------------------------------------------------------------------
    def paths(self) -> dict[str, str]:
        if self._paths is None:
            from components.data import PrepareConfig, prepare_data, prepared_differs

            config = PrepareConfig(fmt=self.fmt, **self.profile.prepare)
            rows = read_results(self.out)
            if rows and (differ := prepared_differs(self.data, str(self.out / "data"), config)):
                # splitting again would leave those rows scored on other test pairs than every later row
                raise ValueError(f"{self.out} holds {len(rows)} finished row(s) scored on its split in "
                                 f"{self.out / 'data'}, and these data and settings would split again "
                                 f"({', '.join(differ)} differ): use a new --output")
            self._paths = prepare_data(self.data, str(self.out / "data"), config)
        return self._paths

    def teacher(self, labels: str, why: str = "") -> str:
        """The checkpoint folder of a teacher run ('teacher-soft', 'teacher-soft-seed14'), trained if needed.

        `why`: why archived labels could not stand in for it, added to the error when it cannot be had."""
        self.run_one(labels)
        target = self.out / "models" / labels
        if not (target / "kdrank.json").is_file():  # a row restored from an archive or merged from a GPU bundle
            raise FileNotFoundError(f"{labels} has a result row in {self.out} but no checkpoint in {target}, and its "
                                    f"students need one{f' ({why})' if why else ''}: train it here with "
                                    f"`--only {labels} --force`")
        return str(target)

    def teacher_config(self, exp: Experiment):
        from components.teacher import TeacherConfig

        return TeacherConfig(**{**self.profile.teacher, **exp.settings})

    def augmented(self, multiple: float | None = None) -> str:
        """The training pairs plus `multiple` (default: the plan's largest) x N augmented pairs.

        Pairs restored from a results archive (`data/archived-pairs/`, pipelines/pair_sets.py) are used
        instead of augmenting when they were made from this folder's training pairs and catalogue with
        this profile's settings; then the bi-encoder is not loaded, and archived labels of them fit."""
        from components.augment import AugmentConfig, augment_pairs
        from pipelines import pair_sets

        multiple = self.top if multiple is None else multiple
        target = str(self.out / "data" / f"augmented-{fmt_multiple(multiple)}x.parquet")
        config = AugmentConfig(**{**self.profile.augment, "multiple": multiple})
        train, catalogue = self.paths()["train"], self.paths()["catalogue"]
        if (stored := pair_sets.find_archived(self.out / "data", multiple)) is not None:
            try:
                pair_sets.use_archived(stored, train, catalogue, target, config, self.held_out())
                return target
            except pair_sets.PairsMismatch as err:
                log.warning("%s; augmenting here instead", err)
        augment_pairs(train, catalogue, target, config, self.held_out())
        return target

    def held_out(self) -> tuple[str, str]:
        """The validation and test tables of the split, whose queries title queries must not repeat."""
        return self.paths()["val"], self.paths()["test"]

    def prepare(self) -> dict[str, str]:
        """Make the split and the plan's largest augmented set, the inputs every run shares, and nothing else.

        Augmentation needs only the bi-encoder, so a GPU session can make the set in a call that carries
        MiniLM but not yet the teacher, and the distillation runs after it find it finished."""
        return {**self.paths(), "augmented": self.augmented()}

    def teacher_labelled(self, labels: str, multiple: float | None = None,
                         own_pairs: bool = False) -> tuple[str, str]:
        """(folder of teacher labels of an augmented set, version tag of those labels).

        Every distillation run of a teacher shares the labels of the largest set, except a 0x run, which
        needs the training pairs only: it labels those alone rather than build and label the largest set
        (at full size that is minutes of a GPU session, for 1/17 of the pairs). With `own_pairs` (a profile's
        `TEACHER@M` entry), a run at a size between shares them when they are here or archived, and
        otherwise labels its own pairs alone: the training pairs and the largest set's first M x N new
        ones (on a 2-core CPU the 2x set's labels take about 50 minutes, the 16x set's about four hours).
        The tag hashes the teacher's kdrank.json and the augmented file, so a retrained teacher or a new
        augmented set labels into a new folder instead of reusing stale labels. Labels restored from a
        results archive (`data/archived-labels/`) are used instead of the teacher when they are this
        profile's teacher's labels of this very augmented set; then no teacher is trained or loaded.
        """
        from components.label import label_pairs
        from components.teacher import checkpoint_identity
        from pipelines import teacher_labels

        if self.experiments[labels].kind == "student":  # scores only the pairs of the size asked for
            return self._student_labelled(labels, self.top if multiple is None else multiple)
        asked = self.top if multiple is None else float(multiple)
        multiple = self.top if asked > 0 else 0.0
        if self.experiments[labels].kind == "ensemble":
            return self._ensemble_labelled(self.experiments[labels], multiple)
        own_pairs = own_pairs and 0 < asked < self.top  # its own pairs only, unless the largest set's labels exist
        # a run at its own size from restored labels that came with their pairs: no augmenting, on any machine
        carried = own_pairs and not teacher_labels.find_archived(self.out / "data", labels, self.top)
        if carried and (found := self._carried_own(labels, asked)) is not None:
            return found
        pairs_uri = self.augmented(multiple)
        found, why = self._archived_labels(labels, multiple, pairs_uri, lambda: self._planned_identity(labels))
        if found is not None:
            return found
        if why:
            log.warning("%s; labelling with the teacher instead", why)
        if own_pairs:
            prefix = self._first_rows_file(pairs_uri, asked)
            if (found := self._own_archived(labels, pairs_uri, prefix, asked)) is not None:
                return found
        teacher = self.teacher(labels, why)
        target = self._labelled_path(labels, teacher, pairs_uri, multiple)
        if own_pairs and teacher_labels.read_record(target) is None:  # no labels of the largest set here
            pairs_uri, multiple = prefix, asked
            target = self._labelled_path(labels, teacher, pairs_uri, multiple)
            if teacher_labels.read_record(target) is None:
                log.info("%s has no labels of the %sx set here: labelling the %sx set's pairs only", labels,
                         fmt_multiple(self.top), fmt_multiple(asked))
                self._label_after_smaller(labels, teacher, pairs_uri, target, asked)
        tag = target.name.rsplit("-", 1)[1]
        label_pairs(pairs_uri, teacher, str(target), num_shards=1,
                    batch_size=int(self.profile.label.get("batch_size", 64)))
        if teacher_labels.read_record(target) is None:  # what `experiment archive` keeps of these labels
            teacher_labels.write_record(target, teacher=labels, identity=checkpoint_identity(teacher),
                                        multiple=multiple, pairs_uri=pairs_uri)
        return str(target), tag

    def _own_archived(self, labels: str, largest: str, prefix: str, multiple: float) -> tuple[str, str] | None:
        """(labelled folder, tag) of the `multiple`x set's pairs (`prefix`, the first rows of the largest set
        `largest`) from restored labels of teacher run `labels`: the set of this size, or else the smallest
        larger set that leads with these pairs (an archive keeps only the larger one of such sets); None,
        having said why, when none fits."""
        from pipelines import teacher_labels

        data = self.out / "data"
        own = teacher_labels.find_archived(data, labels, multiple)
        larger = teacher_labels.larger_archived(data, labels, multiple)
        candidates = [(multiple, own)] if own is not None else [(m, f) for m, f in larger if m < self.top]
        identity = self._planned_identity(labels)
        for size, stored in candidates:
            leading = None if size == multiple else self._first_rows_file(largest, size)  # made only when tried
            try:
                return teacher_labels.use_archived(stored, prefix, identity, data, multiple, leading=leading)
            except teacher_labels.LabelsMismatch as err:
                log.warning("%s; not using them", err)
        return None

    def _carried_own(self, labels: str, multiple: float) -> tuple[str, str] | None:
        """(labelled folder, tag) of the `multiple`x set's pairs from restored labels of teacher run `labels`
        whose own pairs an archive carried with them (`pipelines/pair_sets.py`, found by digest): the set of
        this size, or else the smallest larger one with them, its first rows. No augmentation is needed, and
        the pairs are the ones the labels were made of, whichever machine made them. None, having said why,
        when no such set fits this folder (other training pairs or catalogue, another teacher)."""
        from components.augment import AugmentConfig
        from pipelines import pair_sets, teacher_labels

        data = self.out / "data"
        own = teacher_labels.find_archived(data, labels, multiple)
        candidates = [*([(multiple, own)] if own is not None else []),
                      *teacher_labels.larger_archived(data, labels, multiple)]
        identity = None
        for size, stored in candidates:
            record = teacher_labels.read_record(stored)
            if (found := pair_sets.find_by_digest(data, record["pairs_digest"])) is None:
                continue
            folder, pair_record = found
            source = str(data / f"{folder.name}.parquet")
            config = AugmentConfig(**{**self.profile.augment, "multiple": pair_record["multiple"]})
            identity = identity or self._planned_identity(labels)
            try:
                pair_sets.use_archived(folder, self.paths()["train"], self.paths()["catalogue"], source, config,
                                       self.held_out())
                prefix = source if size == multiple else self._first_rows_file(source, multiple)
                return teacher_labels.use_archived(stored, prefix, identity, data, multiple,
                                                   leading=None if size == multiple else source)
            except (pair_sets.PairsMismatch, teacher_labels.LabelsMismatch) as err:
                log.warning("%s; not using them", err)
        return None

    def _label_after_smaller(self, labels: str, teacher: str, pairs_uri: str, target: Path,
                             multiple: float) -> None:
        """Write `target`, the labels of `pairs_uri` (the training pairs, then new ones), from the labels this
        very checkpoint already made of a smaller set that `pairs_uri` starts with (its 0x run's, or an earlier
        `TEACHER@M` run's of the largest set's first M x N new pairs), labelling only the pairs after them. On
        a 2-core CPU that saves two fifths of the 2x set's labelling time and half of the 4x set's after a 2x
        run. The reused rows keep the labels their runs learned from; labelled in other batches they would
        differ only by float rounding. Nothing is written when no smaller set of this checkpoint is here."""
        import numpy as np

        from components import schema
        from components.data import read_table, write_table
        from components.label import label_pairs, write_labels
        from pipelines import teacher_labels

        pairs = read_table(pairs_uri)
        base, record = self._smaller_labels(labels, teacher, pairs, multiple)
        if base is None:
            return
        done = record["pairs"]
        new_uri = write_table(pairs.iloc[done:].reset_index(drop=True),
                              str(target.parent / f"new-pairs-of-{target.name}.parquet"))
        log.info("%s: the first %s pairs' labels from %s; labelling the %s new pairs", labels, f"{done:,}",
                 base.name, f"{len(pairs) - done:,}")
        new_dir = target.parent / f"new-labels-of-{target.name}"
        label_pairs(new_uri, teacher, str(new_dir), num_shards=1,
                    batch_size=int(self.profile.label.get("batch_size", 64)))
        new = np.stack(read_table(str(new_dir))[schema.TEACHER_PROBS].to_list())
        write_labels(pairs_uri, np.concatenate([teacher_labels.labelled_probs(base, record), new]), str(target))

    def _smaller_labels(self, labels: str, teacher: str, pairs, multiple: float) -> tuple[Path | None, dict]:
        """(folder, its record) of the largest label set here of checkpoint `teacher` (run `labels`) at a size
        below `multiple` whose pairs `pairs` starts with (by the record's digest of them), or (None, {}): its
        0x set or a `TEACHER@M` run's own pairs' set."""
        from components.teacher import checkpoint_identity
        from pipelines import teacher_labels

        identity = checkpoint_identity(teacher)
        found = []
        for folder in (self.out / "data").glob(f"labelled-{labels}-*x-*"):
            record = teacher_labels.read_record(folder)
            if (record and record["teacher"] == labels and record["identity"] == identity
                    and record["multiple"] < multiple and record["pairs"] < len(pairs)):
                found.append((record["multiple"], folder, record))
        for _, folder, record in sorted(found, key=lambda f: f[0], reverse=True):
            if teacher_labels.pairs_digest(pairs.iloc[:record["pairs"]]) == record["pairs_digest"]:
                return folder, record
            log.warning("the pairs to label do not start with those of %s; not reusing its labels", folder)
        return None, {}

    def _labelled_path(self, labels: str, teacher: str, pairs_uri: str, multiple: float) -> Path:
        """Where teacher run `labels` (checkpoint `teacher`) writes its labels of `pairs_uri`: the tag hashes
        the checkpoint's kdrank.json and the pairs file, so a retrained teacher or a new augmented set labels
        into a new folder instead of reusing stale labels."""
        digest = hashlib.sha256(Path(teacher, "kdrank.json").read_bytes())
        digest.update(str(Path(pairs_uri).stat().st_mtime_ns).encode())
        return self.out / "data" / f"labelled-{labels}-{fmt_multiple(multiple)}x-{digest.hexdigest()[:10]}"

    def _first_rows_file(self, largest: str, multiple: float) -> str:
        """The training pairs and the first multiple x N new pairs of an augmented set (`largest`: the largest
        one here, or a label set's carried pairs), as a file of their own named after it (made again when that
        set is newer): what a run at that size alone needs labelled."""
        from components.data import read_table, write_table

        source = Path(largest)
        target = self.out / "data" / f"{source.stem}-first-{fmt_multiple(multiple)}x.parquet"
        if not target.is_file() or target.stat().st_mtime_ns < source.stat().st_mtime_ns:
            write_table(_first_rows(read_table(str(source)), multiple), str(target))
        return str(target)

    def _planned_identity(self, teacher: str) -> str:
        """The identity of the teacher run `teacher` would train here (no training)."""
        from components.teacher import planned_identity

        return planned_identity(self.paths()["train"], self.paths()["val"],
                                self.teacher_config(self.experiments[teacher]))

    def _archived_labels(self, name: str, multiple: float, pairs_uri: str,
                         identity) -> tuple[tuple[str, str] | None, str]:
        """((labelled folder, tag), "") from a restored label set of run `name` (a teacher or a composed
        ensemble) when it is of `identity()` and of these pairs, a 0x set taking a larger set's first rows
        (pipelines/teacher_labels.py); (None, why not) when a set is there but does not fit; (None, "")."""
        from pipelines import teacher_labels

        data = self.out / "data"
        stored = (teacher_labels.find_archived(data, name, multiple)
                  or teacher_labels.find_archived(data, name, self.top)
                  or (teacher_labels.smallest_archived(data, name) if multiple == 0 else None))
        if stored is None:
            return None, ""
        try:
            return teacher_labels.use_archived(stored, pairs_uri, identity(), data, multiple), ""
        except teacher_labels.LabelsMismatch as err:
            return None, str(err)

    def distill_set(self, labels: str, multiple: float, own_pairs: bool = False) -> str:
        """Training pairs plus the first multiple x N augmented pairs (fill order), with teacher labels
        (`own_pairs`: see `teacher_labelled`)."""
        from components.data import read_table, write_table

        source, tag = self.teacher_labelled(labels, multiple, own_pairs)
        target = self._distill_path(labels, multiple, tag)
        if target.exists():
            return str(target)
        write_table(_first_rows(read_table(source), multiple), str(target))
        return str(target)

    def _distill_path(self, labels: str, multiple: float, tag: str) -> Path:
        return self.out / "data" / f"distill-{labels}-{fmt_multiple(multiple)}x-{tag}.parquet"

    def blended_set(self, distill: str, weight: float) -> str:
        """A distillation set whose training pairs' targets take `weight` of the human grades: (1 - weight) x
        the teacher's expected grade + weight x the grade (both on the grade scale); the augmented pairs after
        them keep the teacher's. `teacher_probs` stays the teacher's. Written beside the set, once."""
        import numpy as np

        from components import schema
        from components.augment import LABELLED
        from components.data import read_table, write_table

        if not 0 < weight < 1:
            raise ValueError(f"a share of the human grades is between 0 and 1 (exclusive), got {weight}")
        path = Path(distill)
        target = path.with_name(f"{path.stem}-human{round(weight * 100)}{path.suffix}")
        if target.exists():
            return str(target)
        frame, train = read_table(distill), read_table(self.paths()["train"])
        n = len(train)
        if not _starts_with_training_pairs(frame, train) or not (frame[schema.SOURCE].iloc[:n] == LABELLED).all() \
                or (frame[schema.SOURCE].iloc[n:] == LABELLED).any():
            raise RuntimeError(f"{distill} does not start with exactly the training pairs of {self.paths()['train']}, "
                               "in their order; make it again (delete it and rerun)")
        grades = train[schema.GRADE].to_numpy(dtype=np.float64)
        if not np.isfinite(grades).all():
            row = int(np.flatnonzero(~np.isfinite(grades))[0])
            raise RuntimeError(f"{self.paths()['train']} row {row + 1}: non-finite grade {grades[row]}")
        scores = frame[schema.TEACHER_SCORE].to_numpy(dtype=np.float64).copy()
        scores[:n] = (1 - weight) * scores[:n] + weight * grades
        write_table(frame.assign(**{schema.TEACHER_SCORE: scores}), str(target))
        return str(target)

    # ----- experiments ---------------------------------------------------------------------------------
    def run(self, only: list[str] | None = None, force: bool = False) -> list[dict]:
        names = only or list(self.experiments)
        unknown = [n for n in names if n not in self.experiments]
        if unknown:
            raise ValueError(f"unknown experiment(s) {unknown}; this profile has {list(self.experiments)}")
        return [self.run_one(name, force=force) for name in names]

    def run_one(self, name: str, force: bool = False) -> dict:
        exp = self.experiments[name]
        done = {row["run"]: row for row in read_results(self.out)}
        if name in done and not force:
            return done[name]
        log.info("experiment %s: %s", name, exp.description)
        if exp.kind == "baseline":
            row = self._baseline(exp)
        elif exp.kind == "teacher":
            row = self._teacher(exp)
        elif exp.kind == "ensemble":
            row = self._ensemble(exp)
        else:
            row = self._student(exp)
        row = {"run": name, "kind": exp.kind, "description": exp.description, "labels": exp.labels,
               "augmented": exp.augmented, "loss": exp.loss, "seed": exp.seed, "profile": self.profile.name,
               "hardware": self._hardware, "command": self.command(name), **row}
        append_result(self.out, row)
        return row

    def _evaluate(self, model_dir: str, name: str) -> dict:
        from components.evaluate import evaluate_checkpoint

        test = self.paths()["test"]
        start = time.perf_counter()
        metrics = evaluate_checkpoint(model_dir, test, str(self.out / "eval" / name), name=name,
                                      batch_size=int(self.profile.evaluate.get("batch_size", 64)))
        seconds = time.perf_counter() - start  # includes loading the model
        return {"metrics": metrics, "eval_seconds": round(seconds, 2),
                "eval_pairs_per_s": round(metrics["n_pairs"] / seconds, 1)}

    def _baseline(self, exp: Experiment) -> dict:
        from components.evaluate import evaluate_baseline

        kind = exp.name.removeprefix("baseline-")
        metrics = evaluate_baseline(kind, self.paths()["test"], str(self.out / "eval" / exp.name))
        return {"model": {"random": "random order", "bm25": "BM25 (bm25s)",
                          "biencoder": "MiniLM-L6 bi-encoder, zero-shot"}[kind],
                "train_pairs": 0, "train_seconds": 0.0, "metrics": metrics, "settings": {}}

    def _teacher(self, exp: Experiment) -> dict:
        from components.teacher import train_teacher

        config = self.teacher_config(exp)
        settings = {**self.profile.teacher, **exp.settings}
        target = str(self.out / "models" / exp.name)
        # A teacher with ensemble_size > 1 in a profile's own settings takes any member that another run already
        # trained with the same recipe and seed, and keeps its finished members if it is cut short (the plan's
        # `teacher-ensemble` is composed from single teacher runs instead: `_ensemble`).
        others = [str(p) for p in sorted((self.out / "models").glob("teacher-*")) if p.name != exp.name]
        summary = train_teacher(self.paths()["train"], self.paths()["val"], target, config, reuse=others)
        return {"model": (settings.get("base_model") or "SmolLM2-135M-Instruct") + " teacher",
                "train_pairs": int(summary["train_pairs"]), "train_seconds": round(float(summary["train_seconds"]), 1),
                "train_pairs_per_s": summary["pairs_per_second"], "settings": settings,
                **_resumed(summary, "resumed_at_batch"), **self._evaluate(target, exp.name)}

    def _ensemble(self, exp: Experiment) -> dict:
        """A teacher ensemble's row, composed from its members' rows and per-pair test scores (no model)."""
        from components.evaluate import evaluate_mean

        members = [self.run_one(name) for name in exp.settings["members"]]
        files = [self.out / "eval" / m["run"] / "scores.parquet" for m in members]
        if missing := [str(f) for f in files if not f.is_file()]:
            raise FileNotFoundError(f"{exp.name} is scored from its members' test scores, and {missing} are missing")
        metrics = evaluate_mean([str(f) for f in files], self.paths()["test"], str(self.out / "eval" / exp.name),
                                name=exp.name)
        return {"model": f"ensemble of {len(members)} x {members[0]['model']}", "members": exp.settings["members"],
                "train_pairs": sum(m["train_pairs"] for m in members),
                "train_seconds": round(sum(m["train_seconds"] for m in members), 1),
                "settings": {"members": [m["settings"] for m in members]}, "metrics": metrics,
                "hardware": "; ".join(sorted({m["hardware"] for m in members}))}

    def _ensemble_labelled(self, exp: Experiment, multiple: float) -> tuple[str, str]:
        """An ensemble's labels of an augmented set: the mean of its members' probabilities, computed as the
        ensemble's own scorer computes it, from each member's labels (made here, or restored from an archive)."""
        import numpy as np

        from components.label import write_labels
        from pipelines import teacher_labels

        pairs_uri = self.augmented(multiple)
        # the ensemble's own labels, archived when its student was (`experiment archive` keeps them in place of
        # its members' sets): no member is needed at all when they are of these very pairs
        found, why = self._archived_labels(exp.name, multiple, pairs_uri, lambda: ensemble_identity(
            [self._planned_identity(name) for name in exp.settings["members"]]))
        if found is not None:
            return found
        if why:
            log.warning("%s; composing them from its members instead", why)
        # member by member, each trained (where its labels are not archived) and labelling before the next,
        # so a session cut short keeps whole members; then the ensemble's own row, from theirs
        labelled = [self.teacher_labelled(name, multiple) for name in exp.settings["members"]]
        self.run_one(exp.name)
        records = [teacher_labels.read_record(folder) for folder, _ in labelled]
        tag = hashlib.sha256(":".join(t for _, t in labelled).encode()).hexdigest()[:10]
        target = self.out / "data" / f"labelled-{exp.name}-{fmt_multiple(multiple)}x-{tag}"
        if teacher_labels.read_record(target) is None:
            # members score in float32 and PairScorer averages those (components.scoring), so does this
            probs = np.mean([teacher_labels.labelled_probs(folder, record).astype(np.float32)
                             for (folder, _), record in zip(labelled, records, strict=True)], axis=0).astype(np.float64)
            write_labels(pairs_uri, probs, str(target))
            identity = ensemble_identity([r["identity"] for r in records])
            teacher_labels.write_record(target, teacher=exp.name, identity=identity, multiple=multiple,
                                        pairs_uri=pairs_uri)
        return str(target), tag

    def _student_labelled(self, labels: str, multiple: float) -> tuple[str, str]:
        """A student's scores of a distillation set's pairs as teacher labels (the born-again control's teacher).

        `teacher_score` is the student's score on the grade scale (its validation calibration), as a teacher's
        is its expected grade. At 0x the pairs are the training pairs; at Mx they are those and the first
        M x N new pairs of the largest augmented set (fill order), exactly the rows `distill_set` would take
        from a teacher's labels of it, and only those are scored (a student checkpoint has no grade
        probabilities to archive, so nothing beyond them is worth scoring). The tag hashes the checkpoint and
        the pairs file, as `teacher_labelled`'s does. The scored pairs are the distillation set itself, so they
        are written where `distill_set` finds them finished (one copy, not two)."""
        import pandas as pd

        from components import schema
        from components.augment import LABELLED
        from components.data import read_table, write_table
        from components.scoring import PairScorer

        model = self.teacher(labels)
        pairs_uri = self.paths()["train"] if multiple == 0 else self.augmented()
        digest = hashlib.sha256(Path(model, "kdrank.json").read_bytes())
        digest.update(str(Path(pairs_uri).stat().st_mtime_ns).encode())
        tag = digest.hexdigest()[:10]
        target = self._distill_path(labels, multiple, tag)
        if target.exists():
            return str(target), tag
        frame = read_table(self.paths()["train"]).assign(**{schema.SOURCE: LABELLED})  # grades kept, as a 0x set's
        if multiple > 0:
            rows = _first_rows(read_table(pairs_uri), multiple)
            if not _starts_with_training_pairs(rows, frame):
                raise RuntimeError(f"{pairs_uri} does not start with the training pairs of {self.paths()['train']} "
                                   "in their order; make it again (delete it and rerun)")
            frame = pd.concat([frame, rows.iloc[len(frame):]], ignore_index=True)
        scorer = PairScorer(model)
        try:
            scores = scorer.score(frame[schema.QUERY].astype(str).tolist(),
                                  frame[schema.PRODUCT_TEXT].astype(str).tolist(),
                                  batch_size=int(self.profile.evaluate.get("batch_size", 64)),
                                  desc=f"scoring the {fmt_multiple(multiple)}x set's pairs ({labels})")
            grade = scorer.to_grade(scores.score)
        finally:
            scorer.close()
        write_table(frame.assign(**{schema.TEACHER_SCORE: grade}), str(target))
        return str(target), tag

    def _student(self, exp: Experiment) -> dict:
        from components.student import StudentConfig, train_student

        train = self.paths()["train"] if exp.labels == "human" else \
            self.distill_set(exp.labels, exp.augmented, exp.own_pairs)
        if exp.human_weight:
            train = self.blended_set(train, exp.human_weight)
        settings = {**self.profile.student, **exp.settings}
        target = str(self.out / "models" / exp.name)
        summary = train_student(train, self.paths()["val"], target, StudentConfig(**settings))
        return {"model": (settings.get("base_model") or "MiniLM-L6") + " cross-encoder",
                "train_pairs": int(summary["train_rows"]), "train_seconds": round(float(summary["seconds"]), 1),
                "train_pairs_per_s": round(float(summary["pairs_per_s"]), 1), "settings": settings,
                **({"human_weight": exp.human_weight} if exp.human_weight else {}),
                **_resumed(summary, "resumed_at_step"), **self._evaluate(target, exp.name)}

    def command(self, name: str) -> str:
        """The command that makes row `name` again, with KDRANK_CPU_BF16=1 in front when it was set."""
        from components.runtime import CPU_BF16

        parts = ["kdrank", "experiment", "run", "--profile", self.profile.name, "--data", self.data]
        if self.fmt:
            parts += ["--format", self.fmt]
        parts += [part for option, model in self.models.items() if model for part in (option, model)]
        parts += ["--output", str(self.out), "--only", name]
        bf16 = f"{CPU_BF16}=1 " if self._cpu_bf16 else ""
        return bf16 + shlex.join(parts)


def final_val_loss(runs_dir: str | Path, teacher: str) -> float | None:
    """A teacher run's validation loss after its last epoch (soft-target cross-entropy against the raters'
    grade distribution on the validation queries), from its training record."""
    if (record := training_record(runs_dir, teacher)) is None:
        return None
    losses = json.loads(record.read_text()).get("training", {}).get("summary", {}).get("val_loss_per_epoch")
    return float(losses[-1]) if losses else None


def stronger_teacher_students(runs_dir: str | Path, profile_name: str, ensemble: str) -> tuple[list[str], str]:
    """(the largest-size students that answer step 6 for `ensemble`, why): the ensemble's own student, then the
    planned student of the member with the lowest validation loss.

    The member is chosen on the validation queries, never on the test ones, so its student's test row is
    not a pick of the best of several test scores. Members without a validation loss or a planned student
    of their own are passed over (and named in `why`).
    """
    runs = {e.name: e for e in plan(profile_name)}
    exp = runs.get(ensemble)
    if exp is None or exp.kind != "ensemble":
        raise ValueError(f"{ensemble} is not an ensemble of the {profile_name} plan: "
                         f"{[n for n, e in runs.items() if e.kind == 'ensemble']}")
    top = max(float(m) for m in get_profile(profile_name).experiments["multiples"])

    def student_of(labels: str) -> str | None:
        return next((e.name for e in runs.values() if e.kind == "student" and e.labels == labels
                     and e.augmented == top and e.loss == "margin_mse" and "-seed" not in e.name), None)

    chosen = [student_of(ensemble)]
    own = {m: student_of(m) for m in exp.settings["members"]}
    losses = {m: final_val_loss(runs_dir, m) for m in own}
    known = {m: v for m, v in losses.items() if v is not None and own[m]}
    notes = [f"{m}: {'no validation loss' if v is None else f'validation loss {v:.4f}'}"
             + ("" if own[m] else ", no student of its own planned") for m, v in losses.items()]
    if known:
        best = min(known, key=known.get)
        chosen.append(own[best])
        notes.append(f"lowest validation loss: {best}")
    return [c for c in chosen if c], "; ".join(notes)


# ----- rescoring on another test set ------------------------------------------------------------------


def training_queries(runs_dir: str | Path) -> set[str]:
    """Query ids a runs folder's models saw in training or model selection (train, val, augmented sets)."""
    import pandas as pd

    from components import schema

    data_dir = Path(runs_dir, "data")
    files = [data_dir / "train.parquet", data_dir / "val.parquet", *sorted(data_dir.glob("augmented-*.parquet"))]
    missing = [str(f) for f in files[:2] if not f.exists()]
    if missing:
        raise FileNotFoundError(f"{runs_dir} is not a `kdrank experiment run` folder: {missing} missing")
    seen: set[str] = set()
    for f in files:
        seen |= set(pd.read_parquet(f, columns=[schema.QUERY_ID])[schema.QUERY_ID])
    return seen


def rescore(runs_dir: str, test: str, name: str, *, fmt: str | None = None, max_queries: int | None = None,
            seed: int = 0, only: list[str] | None = None, force: bool = False) -> list[dict]:
    """Score a runs folder's finished models and baselines again on another labelled test set.

    A profile's own test split can be small (the reduced profile's 170 queries give +-0.05 intervals on
    pairwise accuracy); this scores the same checkpoints on a larger held-out set, e.g. the full split's
    test queries. Queries that the runs' models saw (train, val, augmented sets) are dropped, then up to
    `max_queries` queries are sampled with `seed`. Rows go to rescored/NAME/results.jsonl (same fields as
    the run's row, new metrics, plus `test_set`); a rerun skips rows already there unless `force`.
    """
    import numpy as np

    from components import schema
    from components.data import write_table
    from components.evaluate import evaluate_baseline, evaluate_checkpoint, evaluate_mean, read_labelled

    rows = read_results(runs_dir)
    if not rows:
        raise FileNotFoundError(f"no {RESULTS} in {runs_dir}: run `kdrank experiment run` first")
    by_run = {r["run"]: r for r in rows}
    names = only or list(by_run)
    unknown = [n for n in names if n not in by_run]
    if unknown:
        raise ValueError(f"run(s) {unknown} have no result row in {runs_dir}; it has {list(by_run)}")
    models = {n: Path(runs_dir, "models", n) for n in names if by_run[n]["kind"] not in ("baseline", "ensemble")}
    absent = [str(p) for p in models.values() if not (p / "kdrank.json").exists()]
    if absent:
        raise FileNotFoundError(f"no checkpoint at {absent}: rescoring needs each run's model folder")

    out = rescore_dir(runs_dir, name)
    test_path = out / "test.parquet"
    if not test_path.exists():
        frame = read_labelled(test, fmt)
        seen = training_queries(runs_dir)
        held = sorted(set(frame[schema.QUERY_ID]) - seen)
        if not held:
            raise ValueError(f"every query of {test} was used in training by {runs_dir}")
        if max_queries and max_queries < len(held):
            held = sorted(np.random.default_rng(seed).choice(held, max_queries, replace=False))
        chosen = frame[frame[schema.QUERY_ID].isin(set(held))].reset_index(drop=True)
        info = {"name": name, "source": test, "seed": seed, "max_queries": max_queries,
                "queries": int(chosen[schema.QUERY_ID].nunique()), "pairs": len(chosen),
                "dropped_training_queries": len(set(frame[schema.QUERY_ID]) & seen)}
        out.mkdir(parents=True, exist_ok=True)
        (out / "test.json").write_text(json.dumps(info, indent=2) + "\n")
        write_table(chosen, str(test_path))
        log.info("test set %s: %d pairs over %d queries of %s (%d training queries dropped)", name,
                 info["pairs"], info["queries"], test, info["dropped_training_queries"])
    info = json.loads((out / "test.json").read_text())
    if info["source"] != test or info.get("max_queries") != max_queries or info.get("seed") != seed:
        raise ValueError(f"test set {name} of {runs_dir} was drawn from {info['source']} with max_queries="
                         f"{info.get('max_queries')}, seed={info.get('seed')}; use another --name for other settings")

    done = {r["run"]: r for r in read_results(out)}
    here = hardware()
    command = ["kdrank", "experiment", "rescore", "--runs", str(runs_dir), "--test", test, "--name", name]
    if fmt:
        command += ["--format", fmt]
    if max_queries:
        command += ["--max-queries", str(max_queries), "--seed", str(seed)]
    result = []
    for run in names:
        if run in done and not force:
            result.append(done[run])
            continue
        row = by_run[run]
        start = time.perf_counter()
        if row["kind"] == "baseline":
            metrics = evaluate_baseline(run.removeprefix("baseline-"), str(test_path), str(out / "eval" / run))
        elif row["kind"] == "ensemble":  # from its members' scores on this test set, as `experiment run` does
            files = [out / "eval" / m / "scores.parquet" for m in row["members"]]
            if missing := [m for m, f in zip(row["members"], files, strict=True) if not f.is_file()]:
                raise FileNotFoundError(f"{run} is scored from its members' scores: rescore {missing} first")
            metrics = evaluate_mean([str(f) for f in files], str(test_path), str(out / "eval" / run), name=run)
        else:
            metrics = evaluate_checkpoint(str(models[run]), str(test_path), str(out / "eval" / run), name=run)
        seconds = time.perf_counter() - start
        new = {**{k: v for k, v in row.items() if k not in ("metrics", "eval_seconds", "eval_pairs_per_s")},
               "metrics": metrics, "test_set": info, "trained_by": row["command"],
               "command": shlex.join(command + ["--only", run])}
        if row["kind"] not in ("baseline", "ensemble"):  # `hardware` stays the training machine's (train time)
            new |= {"eval_seconds": round(seconds, 2), "eval_pairs_per_s": round(metrics["n_pairs"] / seconds, 1),
                    "eval_hardware": here}
        append_result(out, new)
        result.append(new)
    return result


# ----- CLI ---------------------------------------------------------------------------------------------------


def _names(values: list[str] | None) -> list[str]:
    """Run names from a repeatable NAME[,NAME] option."""
    return [n.strip() for item in values or [] for n in item.split(",") if n.strip()]


def _print_rows(rows: list[dict]) -> None:
    for row in rows:
        m = row["metrics"]
        print(f"{row['run']:<34} NDCG@5 {fmt_metric(m.get('ndcg@5'))}  "
              f"pairwise {fmt_metric(m.get('pairwise_accuracy'))}  RMSE {fmt_metric(m.get('rmse'))}")


def _run(args: argparse.Namespace) -> int:
    runner = Runner(args.profile, args.data, args.output, fmt=args.format, teacher_model=args.teacher_model,
                    student_model=args.student_model)
    only = _names(args.only)
    if args.force and not only:
        raise ValueError("--force reruns the runs --only names; without --only it would redo every planned run, "
                         "restored rows included: name them")
    _print_rows(runner.run(only or None, force=args.force))
    return 0


def _prepare(args: argparse.Namespace) -> int:
    import pyarrow.parquet as pq

    runner = Runner(args.profile, args.data, args.output, fmt=args.format)
    start = time.perf_counter()
    paths = runner.prepare()
    for name, uri in paths.items():
        print(f"{name:<10} {pq.ParquetFile(uri).metadata.num_rows:>9,} rows  {uri}")  # the footer's count
    print(f"prepared in {time.perf_counter() - start:.1f} s")
    return 0


def _list(args: argparse.Namespace) -> int:
    for exp in plan(args.profile):
        print(f"{exp.name:<34} {exp.description}")
    return 0


def _report(args: argparse.Namespace) -> int:
    references = _names(args.reference)
    print(write_report(args.runs, args.output, args.plot, args.test_set, references or None,
                       _names(args.curve) or None))
    return 0


def _archive(args: argparse.Namespace) -> int:
    from pipelines.archive import archive_runs

    names = archive_runs(args.runs, args.output)
    print(f"archived {len(names)} run(s) into {args.output}: {', '.join(names)}")
    return 0


def _restore(args: argparse.Namespace) -> int:
    from pipelines import pair_sets, teacher_labels
    from pipelines.archive import restore_runs

    names = restore_runs(args.archive, args.runs)
    print(f"restored {len(names)} run(s) into {args.runs}" + (f": {', '.join(names)}" if names else ""))
    if sets := sorted(p.name for p in Path(args.runs, "data", teacher_labels.ARCHIVED).glob("*")):
        print(f"teacher label sets for distillation runs: {', '.join(sets)}")
    if sets := sorted(p.name for p in Path(args.runs, "data", pair_sets.ARCHIVED).glob("*")):
        print(f"augmented pair sets, used in place of augmenting: {', '.join(sets)}")
    return 0


def _rescore(args: argparse.Namespace) -> int:
    only = _names(args.only)
    rows = rescore(args.runs, args.test, args.name, fmt=args.format, max_queries=args.max_queries, seed=args.seed,
                   only=only or None, force=args.force)
    _print_rows(rows)
    return 0


def register(subparsers) -> argparse.ArgumentParser:
    """Add `experiment run|list|report|rescore|archive|restore` to the `kdrank` subcommands."""
    choices = sorted(name for name, p in PROFILES.items() if p.experiments)
    exp = subparsers.add_parser("experiment", help="the paper's experiments on real data (results table, plot)")
    sub = exp.add_subparsers(dest="experiment_command", required=True, metavar="ACTION")

    def source(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--profile", default="reduced", choices=choices,
                            help="sizes and plan (default: %(default)s)")
        parser.add_argument("--data", required=True, help="labelled pairs (path or gs:// URI)")
        parser.add_argument("--format", choices=["homedepot", "esci", "csv", "parquet", "jsonl"])
        parser.add_argument("--output", required=True,
                            help="folder of data splits, checkpoints, metrics, results.jsonl")
        return parser

    run = source(sub.add_parser("run", help="run every experiment of a profile, or --only some (resumable)"))
    run.add_argument("--only", action="append", metavar="NAME[,NAME]", help="run just these (see `list`)")
    run.add_argument("--force", action="store_true", help="rerun --only runs that already have a result row")
    run.add_argument("--teacher-model", help="teacher base model folder (default: SmolLM2-135M)")
    run.add_argument("--student-model", help="student base model folder (default: MiniLM-L6)")
    run.set_defaults(handler=_run)

    pre = source(sub.add_parser("prepare", help="make the split and the plan's largest augmented set only "
                                                "(no teacher needed); later runs find them finished"))
    pre.set_defaults(handler=_prepare)

    lst = sub.add_parser("list", help="the experiments of a profile, in run order")
    lst.add_argument("--profile", default="reduced", choices=choices)
    lst.set_defaults(handler=_list)

    rep = sub.add_parser("report", help="Markdown table (and scaling plot) from a results.jsonl")
    rep.add_argument("--runs", required=True, help="the --output folder of `experiment run`")
    rep.add_argument("--output", required=True, help="Markdown file to write")
    rep.add_argument("--plot", help="also draw the scaling curve to this PNG")
    rep.add_argument("--test-set", metavar="NAME", help="report the rows rescored on test set NAME (see rescore)")
    rep.add_argument("--reference", action="append", metavar="RUN[,RUN]",
                     help="paired differences against these runs (default: teacher-soft, student-human)")
    rep.add_argument("--curve", action="append", metavar="TEACHER[,TEACHER]",
                     help="with --plot: draw the scaling curve of the students distilled from each of these teachers "
                          "(default: teacher-soft), e.g. teacher-soft,teacher-soft-verbaliser-seed15")
    rep.set_defaults(handler=_report)

    res = sub.add_parser("rescore", help="score finished runs again on a larger held-out test set (resumable)")
    res.add_argument("--runs", required=True, help="the --output folder of `experiment run`")
    res.add_argument("--test", required=True, help="labelled pairs to score (path or gs:// URI)")
    res.add_argument("--format", choices=["homedepot", "esci", "csv", "parquet", "jsonl"])
    res.add_argument("--name", required=True, help="name of this test set (results under RUNS/rescored/NAME)")
    res.add_argument("--max-queries", type=int, help="sample this many held-out queries (default: all)")
    res.add_argument("--seed", type=int, default=0, help="seed of that sample (default: %(default)s)")
    res.add_argument("--only", action="append", metavar="NAME[,NAME]", help="rescore just these runs")
    res.add_argument("--force", action="store_true", help="rescore runs that already have a row")
    res.set_defaults(handler=_rescore)

    arc = sub.add_parser("archive", help="copy a runs folder's rows and per-pair test scores, without any data, "
                                         "into a folder to commit (see pipelines/archive.py)")
    arc.add_argument("--runs", required=True, help="the --output folder of `experiment run`")
    arc.add_argument("--output", required=True, help="archive folder (made, or added to)")
    arc.set_defaults(handler=_archive)

    rst = sub.add_parser("restore", help="put an archive's runs back into a runs folder made from the same data")
    rst.add_argument("--archive", required=True, help="a folder written by `experiment archive`")
    rst.add_argument("--runs", required=True, help="runs folder holding the same test split (data/test.parquet)")
    rst.set_defaults(handler=_restore)
    return exp
