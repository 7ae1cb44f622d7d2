"""Augmented pair sets that outlive their session: kept in a results archive, used instead of augmenting.

A teacher's archived labels (`pipelines/teacher_labels.py`) fit only the very pairs they were made of,
in their order. Augmentation makes those pairs again only where the bi-encoder's scores come out the
same to the last bit: another device, or the encoder's weights in another precision, moves near-ties,
and a few pairs then differ. So archived labels served only sessions on the same kind of machine (this
CPU could not distil from the H200's labels of the 16x set), and every GPU session still spent 40-100 s
of its device time making that set again.

- `kdrank experiment archive` keeps, with each archived label set of an augmented set, that set's new
  pairs (`pairs/augmented-Mx/`): `pairs.parquet` holds, per new pair in fill order, its query's
  position in the query pool (`components.augment.query_pool`), its product's position in the
  catalogue (product id order) and its source, as small integers (no ids or texts); `pairs.json`
  records the row counts, the digest of the whole set's (query id, product id) sequence, the
  augmentation's settings with fingerprints of its inputs (training pairs, catalogue; with title queries,
  the validation and test queries they leave out), and the summary of the run that made it.
- A label set whose pairs are not an archived augmented set's, but the first rows of one made in the runs
  folder (a `TEACHER@M` run labels the largest set's first M x N new pairs alone), keeps those first rows
  as a pair set of their own (`pairs/augmented-16x-first-8x-DIGEST/`, its record's `first_rows_of` the
  made set's size), found again by its digest: without them such labels fit only a machine that
  augments to the same bits.
- `kdrank experiment restore` puts them under the runs folder's `data/archived-pairs/`.
- `Runner.augmented` then writes the augmented set from them instead of augmenting, when this folder's
  training pairs, catalogue and augmentation settings are the recorded ones. The encoder's weights are
  not compared (that is the point); the set written must have the recorded digest. If anything differs
  it says what, and augmentation runs as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from components import schema, storage
from pipelines.teacher_labels import copy_files, footer, load_record, pairs_digest

log = logging.getLogger(__name__)

RECORD = "pairs.json"
PAIRS = "pairs.parquet"
ARCHIVED = "archived-pairs"  # under a runs folder's data/: pair sets restored from an archive
COLUMNS = ["q", "doc", "src"]
FIELDS = ("multiple", "pairs", "pairs_digest", "base_pairs", "base_digest", "settings", "sources")
ENCODER_MARK = "archived:"  # the encoder_id of a set written from an archive: the digest of its pairs follows


class PairsMismatch(ValueError):
    """An archived pair set that does not fit a runs folder (other training pairs, catalogue or settings)."""


def set_name(multiple: float) -> str:
    """The name of an augmented set's pairs in an archive, e.g. augmented-16x."""
    return f"augmented-{multiple:g}x"


def _config(settings: dict):
    from components.augment import AugmentConfig

    names = {f.name for f in dataclasses.fields(AugmentConfig)}
    return AugmentConfig(**{k: v for k, v in settings.items() if k in names})


def _portable(settings: dict) -> dict:
    return {k: v for k, v in settings.items() if k != "encoder_id"}


def holds(uri: str | Path, record: dict) -> bool:
    """Whether the augmented file `uri` was written from the archived set with this record."""
    from components.augment import made_with

    try:
        made = made_with(str(uri))
    except (OSError, ValueError):
        return False
    return made.get("settings", {}).get("encoder_id") == ENCODER_MARK + record["pairs_digest"]


def export_set(augmented_uri: str | Path, train_uri: str, catalogue_uri: str, target: str | Path,
               rows: int | None = None, held_out: Iterable[str] = ()) -> dict:
    """Write the new pairs of an augmented set (made from `train_uri` and `catalogue_uri`, its title queries
    kept apart from the queries of the `held_out` tables, as `augment_pairs` takes them) into `target`;
    with `rows`, of its first `rows` pairs only (the pairs of a `TEACHER@M` run's labels, say)."""
    from components import augment

    with storage.open_binary(str(augmented_uri)) as file:  # read once: the pair keys, with the stored settings
        frame = pd.read_parquet(file, columns=[schema.QUERY_ID, schema.PRODUCT_ID, schema.SOURCE])
    made = json.loads(frame.attrs.get(augment.ATTRS_KEY, "{}"))
    if "settings" not in made:
        raise PairsMismatch(f"{augmented_uri} holds no augmentation settings: not written by augment_pairs")
    whole = len(frame)
    if rows is not None:
        if not 0 < rows <= whole:
            raise PairsMismatch(f"{augmented_uri} has {whole} pairs; its first {rows} were asked for")
        frame = frame.iloc[:rows]
    settings = _portable(made["settings"])
    config = _config(settings)
    labelled, catalogue = augment.read_inputs(train_uri, catalogue_uri)
    excluded = augment.held_out_queries(held_out, config)
    if (here := augment.input_settings(labelled, catalogue, config, excluded)) != settings:
        if here.get("held_out") != settings.get("held_out"):
            raise PairsMismatch(f"{augmented_uri} was made with other held-out queries than "
                                f"{', '.join(map(str, held_out)) or 'none'} (its title queries leave them out)")
        raise PairsMismatch(f"{augmented_uri} was not made from {train_uri} and {catalogue_uri} as they are now")
    base = augment.base_pairs(labelled)
    n_base = len(base)
    base_digest = pairs_digest(base)
    new = frame.iloc[n_base:]
    if pairs_digest(frame.iloc[:n_base]) != base_digest or (new[schema.SOURCE] == augment.LABELLED).any():
        raise PairsMismatch(f"{augmented_uri} does not start with the {n_base} training pairs of {train_uri}")
    pool = augment.query_pool(base, catalogue, config, excluded)
    sources = [*augment.RETRIEVERS, augment.TITLE]
    q = pd.Index(pool[schema.QUERY_ID]).get_indexer(new[schema.QUERY_ID])
    doc = pd.Index(catalogue[schema.PRODUCT_ID]).get_indexer(new[schema.PRODUCT_ID].astype(str))
    src = pd.Index(sources).get_indexer(new[schema.SOURCE])
    for name, found in (("queries", q), ("products", doc), ("sources", src)):
        if (found < 0).any():
            raise PairsMismatch(f"{augmented_uri}: {int((found < 0).sum())} new pairs have {name} that "
                                "the query pool, catalogue or source names do not hold")
    target = Path(target)
    with storage.atomic_dir(str(target)) as tmp:
        # positions as the narrowest unsigned integers, zstd: 3.6 bytes a pair for the full 16x set
        pd.DataFrame({"q": q.astype(np.min_scalar_type(max(len(pool) - 1, 0))),
                      "doc": doc.astype(np.min_scalar_type(max(len(catalogue) - 1, 0))),
                      "src": src.astype(np.uint8)}).to_parquet(Path(tmp, PAIRS), index=False, compression="zstd")
        summary = {k: v for k, v in made.get("summary", {}).items() if k not in ("output", "skipped")}
        record = {"multiple": float(settings["multiple"]), "pairs": len(frame), "pairs_digest": pairs_digest(frame),
                  "base_pairs": n_base, "base_digest": base_digest, "settings": settings,
                  "sources": sources, "made": summary}
        if len(frame) < whole:
            record["first_rows_of"] = whole  # the made set's pairs; these are its first rows
        Path(tmp, RECORD).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return record


def read_record(folder: str | Path) -> dict | None:
    """A stored pair set's record, or None when the folder has none."""
    return load_record(Path(folder, RECORD), FIELDS, PairsMismatch)


def check_stored(folder: str | Path) -> dict:
    """A stored pair set's record, after checking that its pairs file fits it (footer only)."""
    record = read_record(folder)
    if record is None:
        raise PairsMismatch(f"{folder} is not a stored pair set: {RECORD} is missing")
    names, rows = footer(Path(folder, PAIRS))
    if names != COLUMNS or rows != record["pairs"] - record["base_pairs"]:
        raise PairsMismatch(f"{folder}: {PAIRS} has {rows} rows and columns {list(names)}; its {RECORD} names "
                            f"{record['pairs'] - record['base_pairs']} new pairs and columns {COLUMNS}")
    return record


def copy_set(source: str | Path, target: str | Path) -> None:
    """Copy a stored pair set (record and pairs) to `target`, written whole or not at all."""
    copy_files(source, target, (RECORD, PAIRS))


def carried_name(multiple: float, record: dict) -> str:
    """The name of the pairs of a label set that are not an archived augmented set's own, e.g.
    augmented-16x-first-8x-5bc680a01f6d: the first rows of a 16x set (found by their digest)."""
    size = (record["pairs"] - record["base_pairs"]) / record["base_pairs"]
    return f"{set_name(multiple)}-first-{size:g}x-{record['pairs_digest'][:12]}"


def find_by_digest(data_dir: str | Path, digest: str) -> tuple[Path, dict] | None:
    """(folder, record) of the restored pair set under a runs folder's data/ whose pairs have `digest`, if
    there is one."""
    for folder in sorted(Path(data_dir, ARCHIVED).glob("*")):
        if (record := read_record(folder)) is not None and record["pairs_digest"] == digest:
            return folder, record
    return None


def find_archived(data_dir: str | Path, multiple: float) -> Path | None:
    """The restored pair set of the `multiple`x augmented set under a runs folder's data/, if there is one."""
    folder = Path(data_dir, ARCHIVED, set_name(multiple))
    return folder if (folder / RECORD).is_file() else None


def use_archived(stored: str | Path, train_uri: str, catalogue_uri: str, target: str, config,
                 held_out: Iterable[str] = ()) -> dict:
    """Write the augmented set `target` from a stored pair set; its summary (as augment_pairs returns one).

    `held_out`: the tables (validation, test) whose queries title queries leave out, as for `augment_pairs`.
    Raises PairsMismatch, naming what differs, when this folder's training pairs, catalogue, held-out
    queries (where title queries are made) or the augmentation settings `config` are not the ones the set
    was made with, or when the pairs rebuilt from them do not have the recorded digest. A target already
    written from this set is left as it is.
    """
    from components import augment
    from components.data import write_table

    record = check_stored(stored)
    name = Path(stored).name
    labelled, catalogue = augment.read_inputs(train_uri, catalogue_uri)
    excluded = augment.held_out_queries(held_out, config)
    here = augment.input_settings(labelled, catalogue, config, excluded)
    if differ := sorted(k for k in {*here, *record["settings"]} if here.get(k) != record["settings"].get(k)):
        named = {"labelled": "training pairs", "catalogue": "catalogue", "held_out": "held-out queries"}
        raise PairsMismatch(f"the archived pairs {name} were made with other "
                            f"{', '.join(named.get(k, k) for k in differ)} than this folder's augmentation")
    summary = {**record["made"], "output": str(target), "archived": True, "skipped": False}
    if storage.exists(target) and holds(target, record):
        log.info("augmented pairs already in %s (from the archived set %s)", target, name)
        return {**summary, "skipped": True}
    base = augment.base_pairs(labelled)
    pool = augment.query_pool(base, catalogue, config, excluded)
    pairs = pd.read_parquet(Path(stored, PAIRS))
    q, doc, src = (pairs[c].to_numpy(dtype=np.int64) for c in COLUMNS)
    for what, values, bound in (("query", q, len(pool)), ("product", doc, len(catalogue)),
                                ("source", src, len(record["sources"]))):
        if len(values) and (values.min() < 0 or values.max() >= bound):
            raise PairsMismatch(f"the archived pairs {name} name {what} positions up to {int(values.max())}; "
                                f"this folder has {bound}")
    frame = pd.concat([base, augment.pair_rows(pool, catalogue, q, doc, np.array(record["sources"])[src])],
                      ignore_index=True)[schema.UNLABELLED_COLUMNS]
    if (digest := pairs_digest(frame)) != record["pairs_digest"]:
        raise PairsMismatch(f"the archived pairs {name} rebuilt here give digest {digest[:12]}, not the recorded "
                            f"{record['pairs_digest'][:12]}")
    settings = {**record["settings"], "encoder_id": ENCODER_MARK + digest}
    frame.attrs[augment.ATTRS_KEY] = json.dumps({"settings": settings, "summary": summary})
    write_table(frame, target)
    log.info("augmented set %s written from the archived pairs %s (%d pairs): no augmentation needed",
             target, name, len(frame))
    return summary
