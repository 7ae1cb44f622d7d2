"""Augmentation: unlabelled (query, product) pairs for the teacher to label, a multiple of the labelled set.

For every query of the pool (training queries, plus optional queries derived from catalogue titles, none
of them a validation or test query when those are given) the catalogue is searched with a bi-encoder
(mean-pooled, normalised MiniLM embeddings, cosine top-k) and with BM25 (`bm25s`), and random negatives
are added. Pairs already labelled and repeats are dropped; the rest are taken in a fixed fill order (see
`fill_order`) until the requested count is reached.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from components import models, runtime, schema, storage
from components.data import read_table, write_table

log = logging.getLogger(__name__)

LABELLED, TITLE, BIENCODER, BM25, RANDOM = "labelled", "title", "biencoder", "bm25", "random"
RETRIEVERS = (BIENCODER, BM25, RANDOM)  # at equal rank, a pair is credited to the first of these
ATTRS_KEY = "kdrank_augment"  # Parquet metadata (DataFrame.attrs) holding the settings and summary
SKIP_WORDS = {"and", "or", "of", "the", "a", "an", "to", "with", "in", "for", "by", "on",  # not query words
              "ft", "lb", "oz", "gal", "qt", "cu", "sq", "mm", "cm", "pack", "piece", "pc"}


@dataclass
class AugmentConfig:
    """How many unlabelled pairs to make, and from where."""

    multiple: float = 4.0  # new pairs = round(multiple * labelled pairs); 0 keeps only the labelled pairs
    biencoder_k: int = 20  # starting retrieval depths; doubled while the pool is short of the request
    #                        (depths that cannot be enough are skipped: first_depth)
    bm25_k: int = 20
    random_per_query: int = 2  # random negatives per query
    title_queries: float = 0.0  # extra queries derived from catalogue titles, as a share of training queries
    encoder: str | None = None  # sentence-embedding model dir (local or gs://); None: packaged MiniLM-L6
    batch_size: int = 256
    max_length: int = 128
    seed: int = 13
    cache_dir: str | None = None  # kdrank cache root (embeddings go under embeddings/); None: $KDRANK_CACHE
    device: str | None = None

    def validate(self) -> None:
        problems = [msg for bad, msg in (
            (not (math.isfinite(self.multiple) and self.multiple >= 0),
             f"multiple must be a number >= 0, got {self.multiple}"),
            (min(self.biencoder_k, self.bm25_k, self.random_per_query) < 0,
             "biencoder_k, bm25_k and random_per_query must be >= 0, got "
             f"{self.biencoder_k}, {self.bm25_k}, {self.random_per_query}"),
            (self.multiple > 0 and self.biencoder_k + self.bm25_k + self.random_per_query == 0,
             "biencoder_k, bm25_k and random_per_query are all 0: no source to draw new pairs from"),
            (not self.title_queries >= 0, f"title_queries must be >= 0, got {self.title_queries}"),
            (self.batch_size < 1 or self.max_length < 8,
             f"batch_size must be >= 1 and max_length >= 8, got {self.batch_size}, {self.max_length}"),
        ) if bad]
        if problems:
            raise ValueError("bad AugmentConfig: " + "; ".join(problems))

    def output_settings(self) -> dict:
        """The fields that change the output (batch size, device and cache location do not)."""
        return {k: v for k, v in asdict(self).items() if k not in ("batch_size", "cache_dir", "device")}


def default_encoder_path() -> str:
    """The default bi-encoder: the packaged MiniLM-L6 sentence-embedding model (also the default student)."""
    return models.default_student_path()


# ---------------------------------------------------------------- embeddings


def _fingerprint(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8") if isinstance(part, str) else part)
        digest.update(b"\x1e")
    return digest.hexdigest()[:24]


def _encoder_identity(path: str) -> str:
    """Path, config and weight files (name, size, mtime): a retrained model in place gets a new key."""
    root = Path(path)
    weights = sorted(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in root.iterdir()
                     if p.suffix in (".safetensors", ".bin"))
    return _fingerprint(str(root.resolve()), (root / "config.json").read_bytes(), *weights)


def _catalogue_hash(catalogue: pd.DataFrame) -> str:
    return _fingerprint("\x1f".join(catalogue[schema.PRODUCT_ID]),
                        "\x1f".join(catalogue[schema.PRODUCT_TEXT]))


class Encoder:
    """Mean-pooled, L2-normalised sentence embeddings from a plain Hugging Face encoder directory."""

    def __init__(self, path: str, *, device: str | None = None, max_length: int = 128, batch_size: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.path, self.max_length, self.batch_size = path, max_length, batch_size
        self.device = runtime.pick_device(device)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(self.device).eval()

    @torch.inference_mode()
    def encode(self, texts: list[str], desc: str = "encoding") -> np.ndarray:
        """(len(texts), dim) float32; texts are batched by length so padding stays small."""
        order = np.argsort([len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.model.config.hidden_size), dtype=np.float32)
        for start in tqdm(range(0, len(texts), self.batch_size), desc=desc, unit="batch",
                          disable=len(texts) <= self.batch_size):
            idx = order[start:start + self.batch_size]
            batch = self.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            with runtime.autocast(self.device):
                hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu().numpy()
        return out


def cached_embeddings(encoder: Encoder, texts: list[str], cache_dir: str | None,
                      kind: str) -> tuple[np.ndarray, bool]:
    """Embeddings of `texts`, and whether they came from the on-disk cache: the key hashes the encoder
    (path, config, weight files), max_length, the precision it runs in (`runtime.precision`: bf16 on CUDA,
    or on the CPU with KDRANK_CPU_BF16; fp32 adds nothing, so older fp32 caches stay valid) and every text
    in order, so a rerun skips encoding and a shared cache never hands one precision's vectors to another."""
    precision = runtime.precision(encoder.device)
    key = _fingerprint(_encoder_identity(encoder.path), str(encoder.max_length),
                       *([] if precision == "fp32" else [precision]), *texts)
    path = storage.join(str(models.cache_root(cache_dir)), "embeddings", f"{kind}-{key}.npy")
    if storage.exists(path):
        emb = np.load(io.BytesIO(storage.read_bytes(path)))
        if emb.shape[0] == len(texts):
            log.info("%s embeddings from cache %s", kind, path)
            return emb, True
        log.warning("ignoring cache %s: %d rows for %d texts", path, emb.shape[0], len(texts))
    emb = encoder.encode(texts, desc=f"embedding {kind}")
    with storage.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, emb)
    return emb, False


# ---------------------------------------------------------------- retrieval


def biencoder_topk(query_emb: np.ndarray, doc_emb: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices of the k most cosine-similar documents per query (rows are normalised), best first."""
    k = min(k, doc_emb.shape[0])
    docs = torch.from_numpy(doc_emb)
    out = np.zeros((len(query_emb), k), dtype=np.int64)
    for start in tqdm(range(0, len(query_emb), chunk), desc="bi-encoder search", unit="chunk",
                      disable=len(query_emb) <= chunk):
        scores = torch.from_numpy(query_emb[start:start + chunk]) @ docs.T
        out[start:start + chunk] = torch.topk(scores, k, dim=1).indices.numpy()
    return out


def import_bm25s():
    """The `bm25s` module, with JAX (where installed) kept off the GPU.

    Importing bm25s runs one JAX top-k when JAX is installed (bm25s/selection.py). That starts JAX's GPU
    backend, which reserves 75% of the card's memory: 108-112 GB of an H200 in the augment and evaluate
    steps of a GPU run, even with the numpy top-k that kdrank asks for. So JAX is pointed at the CPU
    before the first import, unless JAX_PLATFORMS is set already (a user's choice wins). kdrank uses
    JAX nowhere else; a process that imported JAX before this keeps its settings.
    """
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import bm25s

    return bm25s


class BM25Index:
    """BM25 over catalogue titles with the `bm25s` library (English stop words, no stemming)."""

    def __init__(self, texts: list[str]):
        bm25s = import_bm25s()
        self._bm25s = bm25s
        self.n_docs = len(texts)
        self.retriever = bm25s.BM25()
        self.retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)

    def topk(self, queries: list[str], k: int) -> list[np.ndarray]:
        """Per query, indices of up to k documents with a positive score, best first."""
        k = min(k, self.n_docs)
        tokens = self._bm25s.tokenize(queries, stopwords="en", return_ids=False, show_progress=False)
        out = [np.zeros(0, dtype=np.int64) for _ in queries]
        asked = [i for i, t in enumerate(tokens) if t]  # a query of stop words only matches nothing
        if asked:
            # numpy top-k: bm25s's "auto" picks JAX when it is installed, which compiles per batch shape
            # for no gain here (and would run on the GPU but for import_bm25s).
            docs, scores = self.retriever.retrieve([tokens[i] for i in asked], k=k, backend_selection="numpy",
                                                   show_progress=len(asked) > 2000)
            for i, d, s in zip(asked, np.asarray(docs), np.asarray(scores), strict=True):
                out[i] = d[s > 0].astype(np.int64)
        return out


def title_query(text: str, with_brand: bool) -> str | None:
    """A short search query from a product title: its last two content words before ' with/in/for/(,'
    ('Voltrex 18-Volt Cordless Drill/Driver with ...' -> 'drill/driver' nouns), optionally after the first
    word (usually the brand)."""
    head = re.split(r"\s+(?:with|in|for|-)\s+|[(,]", text, maxsplit=1)[0]
    words = [w for w in head.split()
             if re.fullmatch(r"[A-Za-z][A-Za-z'/&.-]*", w) and w.lower().rstrip(".") not in SKIP_WORDS]
    if not words:
        return None
    picked = words[-2:]
    if with_brand and len(words) > 2:
        picked = [words[0], *picked]
    return " ".join(picked).lower()


def _title_queries(catalogue: pd.DataFrame, n: int, taken: set[str], seed: int) -> pd.DataFrame:
    """n queries made from random catalogue titles, skipping repeats and the query ids in `taken` (the pool's
    and the held-out ones)."""
    rng = np.random.default_rng([seed, 1])
    rows, seen = [], set(taken)
    for i in rng.permutation(len(catalogue)):
        if len(rows) == n:
            break
        query = title_query(catalogue[schema.PRODUCT_TEXT].iat[i], with_brand=bool(rng.random() < 0.5))
        if query and (qid := schema.query_id(query)) not in seen:
            seen.add(qid)
            rows.append((qid, query, int(i)))
    return pd.DataFrame(rows, columns=[schema.QUERY_ID, schema.QUERY, "origin"])


def random_negatives(query_ids: list[str], n_docs: int, per_query: int, seed: int) -> list[np.ndarray]:
    """per_query random catalogue rows for each query, seeded by the query id (independent of the pool)."""
    if per_query == 0:
        return [np.zeros(0, dtype=np.int64) for _ in query_ids]
    return [np.random.default_rng([seed, int(qid[:15], 16)]).choice(n_docs, min(per_query, n_docs),
                                                                      replace=False) for qid in query_ids]


def deeper(depth: list[int], n_docs: int) -> list[int]:
    """The next retrieval depths: each non-zero depth doubled, up to the catalogue's size."""
    return [min(2 * d, n_docs) if d else 0 for d in depth]


def exhausted(depth: list[int], n_docs: int) -> bool:
    """Whether no retriever can search deeper (each is off or at the catalogue's size)."""
    return all(d in (0, n_docs) for d in depth)


def first_depth(depth: list[int], n_new: int, n_queries: int, n_docs: int, n_fixed: int) -> list[int]:
    """The first depths worth searching: doubling skips those that cannot yield n_new candidates.

    At depths (b, m) there are at most n_queries * (b + m) retrieved candidates, plus the `n_fixed`
    random and title-origin ones; when that bound is short of the request, the search would only be
    doubled again. The candidates at a depth do not depend on the depths searched before it, so
    starting at the first depth whose bound reaches n_new gives exactly the pairs the doubling
    loop gives, without the searches it would throw away (two of three for a 16x set at k 20).
    """
    depth = [min(d, n_docs) for d in depth]
    while n_queries * sum(depth) + n_fixed < n_new and not exhausted(depth, n_docs):
        depth = deeper(depth, n_docs)
    return depth


def fill_order(lists: dict[str, list[np.ndarray]], origins: np.ndarray, labelled: set[tuple[int, int]],
                seed: int) -> pd.DataFrame:
    """Every candidate (query, product) once, in the order new pairs are taken.

    Rank by rank ("round-robin"): all queries' rank-0 candidates first (a title query's own product,
    then bi-encoder, BM25, random), then every rank-1 candidate, and so on; within a rank, queries go in a
    seeded shuffle. A pair is kept where it first appears; pairs already labelled are dropped. Taking a
    prefix of this order makes a smaller multiple a subset of a larger one.
    """
    n_queries = len(origins)
    position = np.random.default_rng([seed, 2]).permutation(n_queries)
    parts = []
    has_origin = origins >= 0
    if has_origin.any():
        q = np.flatnonzero(has_origin)
        parts.append(pd.DataFrame({"q": q, "doc": origins[q], "rank": -1, "src": -1}))
    for s, name in enumerate(RETRIEVERS):
        ranked = lists[name]
        lengths = np.array([len(r) for r in ranked])
        if lengths.sum() == 0:
            continue
        parts.append(pd.DataFrame({
            "q": np.repeat(np.arange(n_queries), lengths), "doc": np.concatenate(ranked).astype(np.int64),
            "rank": np.concatenate([np.arange(n) for n in lengths]), "src": s,
        }))
    frame = pd.concat(parts, ignore_index=True)
    frame["pos"] = position[frame["q"].to_numpy()]
    frame = frame.sort_values(["rank", "src", "pos"], kind="stable").drop_duplicates(["q", "doc"])
    if labelled:
        known = pd.MultiIndex.from_tuples(sorted(labelled), names=["q", "doc"])
        frame = frame[~pd.MultiIndex.from_frame(frame[["q", "doc"]]).isin(known)]
    return frame.reset_index(drop=True)


# ---------------------------------------------------------------- the step


def read_inputs(labelled_uri: str, catalogue_uri: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(labelled pairs, catalogue of products with text, one row per product id in id order), checked."""
    labelled = read_table(labelled_uri)
    schema.require_columns(labelled, schema.PAIR_COLUMNS, path=labelled_uri)
    if labelled.empty:
        raise schema.DataError("no labelled pairs: augmentation needs training queries", path=labelled_uri)
    catalogue = read_table(catalogue_uri)
    schema.require_columns(catalogue, [schema.PRODUCT_ID, schema.PRODUCT_TEXT], path=catalogue_uri)
    catalogue = catalogue[[schema.PRODUCT_ID, schema.PRODUCT_TEXT]].astype(str)
    usable = catalogue[schema.PRODUCT_TEXT].str.strip() != ""
    if (~usable).any():
        log.warning("%s: dropped %d products with empty text", catalogue_uri, int((~usable).sum()))
    catalogue = catalogue[usable].drop_duplicates(schema.PRODUCT_ID).sort_values(schema.PRODUCT_ID)
    if catalogue.empty:
        raise schema.DataError("no products in the catalogue", path=catalogue_uri)
    return labelled, catalogue.reset_index(drop=True)


def base_pairs(labelled: pd.DataFrame) -> pd.DataFrame:
    """The labelled pairs that lead every augmented set: one row per (query, product), source 'labelled'."""
    return labelled[schema.PAIR_COLUMNS].astype({schema.PRODUCT_ID: str}).drop_duplicates(
        [schema.QUERY_ID, schema.PRODUCT_ID]).assign(**{schema.SOURCE: LABELLED})


def held_out_queries(uris: Iterable[str], config: AugmentConfig) -> frozenset[str]:
    """The query ids of held-out tables (validation, test), which title queries must not repeat.

    Read only when `config` makes title queries: they are the one thing held-out queries change.
    """
    if not config.title_queries > 0:
        return frozenset()
    ids: set[str] = set()
    for uri in _uri_list(uris):
        table = read_table(str(uri))
        schema.require_columns(table, [schema.QUERY_ID], path=str(uri))
        ids.update(table[schema.QUERY_ID].astype(str))
    return frozenset(ids)


def _uri_list(uris: Iterable[str] | str) -> list[str]:
    """Table URIs as a list; one path given alone is one table, not its characters."""
    return [str(uris)] if isinstance(uris, str | os.PathLike) else [str(u) for u in uris]


def input_settings(labelled: pd.DataFrame, catalogue: pd.DataFrame, config: AugmentConfig,
                   held_out: frozenset[str] = frozenset()) -> dict:
    """What fixes an augmented set apart from the encoder's weights: the settings and the inputs' contents.

    The held-out queries count only where title queries are made and some were given, so sets without
    title queries (every profile's) keep the settings they were stored with.
    """
    excluded = {"held_out": _fingerprint(*sorted(held_out))} if config.title_queries > 0 and held_out else {}
    return {**config.output_settings(),
            "labelled": _fingerprint(*labelled[schema.QUERY_ID], *labelled[schema.PRODUCT_ID].map(str)),
            "catalogue": _catalogue_hash(catalogue), **excluded}


def query_pool(base: pd.DataFrame, catalogue: pd.DataFrame, config: AugmentConfig,
               held_out: frozenset[str] = frozenset()) -> pd.DataFrame:
    """The queries new pairs are drawn for, in the order `fill_order` numbers them: the labelled queries
    (first appearance; origin -1), then any derived from catalogue titles (origin: the title's row), none
    of which repeats a `held_out` query id."""
    queries = base.drop_duplicates(schema.QUERY_ID)[[schema.QUERY_ID, schema.QUERY]].assign(origin=-1)
    titles = _title_queries(catalogue, round(config.title_queries * len(queries)),
                            set(queries[schema.QUERY_ID]) | held_out, config.seed)
    return pd.concat([queries, titles], ignore_index=True)


def made_with(output_uri: str) -> dict:
    """{"settings", "summary"} that `augment_pairs` stored in an augmented set's Parquet metadata ({} if none)."""
    with storage.open_binary(str(output_uri)) as file:  # on gs://, ranged reads of one column, not the whole set
        return json.loads(pd.read_parquet(file, columns=[schema.SOURCE]).attrs.get(ATTRS_KEY, "{}"))


def _finished(output_uri: str, settings: dict) -> dict | None:
    """The stored summary when `output_uri` was written with exactly these settings, else None."""
    if not storage.exists(output_uri):
        return None
    try:
        done = made_with(output_uri)
    except (OSError, ValueError) as err:
        log.warning("cannot read %s (%s); augmenting again", output_uri, err)
        return None
    return done.get("summary") if done.get("settings") == settings else None


def augment_pairs(labelled_uri: str, catalogue_uri: str, output_uri: str,
                  config: AugmentConfig | None = None, held_out: Iterable[str] = ()) -> dict:
    """Write one Parquet of unlabelled pairs: the labelled pairs (source 'labelled') first, then
    round(multiple * labelled) new pairs in fill order. Returns a summary (counts per source, seconds).

    `held_out`: tables (validation, test) whose queries title queries must not repeat; read only when
    `config.title_queries` > 0. A rerun with the same inputs and settings finds the finished output and
    returns its summary.
    """
    config = config or AugmentConfig()
    config.validate()
    held_out = _uri_list(held_out)
    if config.title_queries > 0 and not held_out:
        log.warning("title_queries=%s without held-out queries: a query made from a title may repeat a validation "
                    "or test query; pass their tables as augment_pairs(..., held_out=(val_uri, test_uri)) "
                    "(docs/data.md)", config.title_queries)
    start = time.perf_counter()
    labelled, catalogue = read_inputs(labelled_uri, catalogue_uri)
    excluded = held_out_queries(held_out, config)
    if excluded:
        log.info("title queries skip the %d held-out queries of %s", len(excluded), ", ".join(map(str, held_out)))
    encoder_path = (models.resolve_model(config.encoder, "student", cache_dir=config.cache_dir)
                    if config.encoder else default_encoder_path())
    settings = {**input_settings(labelled, catalogue, config, excluded),
                "encoder_id": _encoder_identity(encoder_path)}
    if (done := _finished(output_uri, settings)) is not None:
        log.info("augmented pairs already in %s", output_uri)
        return {**done, "skipped": True}

    base = base_pairs(labelled)
    n_new = round(config.multiple * len(base))
    summary = {"output": str(output_uri), "labelled": len(base), "requested_new": n_new, "new": 0,
               "queries": int(base[schema.QUERY_ID].nunique()), "title_queries": 0, "depth": [0, 0],
               "embedding_cache": None, "query_embedding_cache": None, "encode_seconds": 0.0,
               "catalogue_encode_seconds": 0.0, "query_encode_seconds": 0.0, "retrieval_seconds": 0.0}
    new = _new_pairs(base, catalogue, n_new, encoder_path, config, summary, excluded) if n_new else base.iloc[:0]
    out = pd.concat([base, new], ignore_index=True)[schema.UNLABELLED_COLUMNS]
    summary.update(new=len(new), by_source={s: int(n) for s, n in out[schema.SOURCE].value_counts().items()},
                   seconds=round(time.perf_counter() - start, 2), skipped=False)
    out.attrs[ATTRS_KEY] = json.dumps({"settings": settings, "summary": summary})
    write_table(out, output_uri)
    log.info("augmentation: %s", summary)
    return summary


def _embed(queries: list[str], texts: list[str], encoder_path: str, config: AugmentConfig,
           summary: dict) -> tuple[np.ndarray, np.ndarray]:
    """Query and catalogue embeddings (cached on disk), with their timings and cache states in `summary`."""
    started = time.perf_counter()
    encoder = Encoder(encoder_path, device=config.device, max_length=config.max_length,
                      batch_size=config.batch_size)
    timer = time.perf_counter()
    doc_emb, doc_hit = cached_embeddings(encoder, texts, config.cache_dir, "catalogue")
    summary["catalogue_encode_seconds"] = round(time.perf_counter() - timer, 2)
    timer = time.perf_counter()
    query_emb, query_hit = cached_embeddings(encoder, queries, config.cache_dir, "queries")
    summary.update(query_encode_seconds=round(time.perf_counter() - timer, 2),
                   encode_seconds=round(time.perf_counter() - started, 2),
                   embedding_cache="hit" if doc_hit else "miss",
                   query_embedding_cache="hit" if query_hit else "miss")
    return query_emb, doc_emb


def _new_pairs(base: pd.DataFrame, catalogue: pd.DataFrame, n_new: int, encoder_path: str,
               config: AugmentConfig, summary: dict, held_out: frozenset[str] = frozenset()) -> pd.DataFrame:
    """n_new pairs (or fewer when the catalogue runs out) not in `base`, in fill order; no title query
    repeats a `held_out` query id."""
    pool = query_pool(base, catalogue, config, held_out)
    texts, n_docs = list(catalogue[schema.PRODUCT_TEXT]), len(catalogue)

    summary["title_queries"] = int((pool["origin"] >= 0).sum())
    query_emb = doc_emb = None
    if config.biencoder_k:
        query_emb, doc_emb = _embed(list(pool[schema.QUERY]), texts, encoder_path, config, summary)

    started = time.perf_counter()
    bm25 = BM25Index(texts) if config.bm25_k else None
    row_of = {pid: i for i, pid in enumerate(catalogue[schema.PRODUCT_ID])}
    q_of = {qid: i for i, qid in enumerate(pool[schema.QUERY_ID])}
    known = {(q_of[q], row_of[p]) for q, p in zip(base[schema.QUERY_ID], base[schema.PRODUCT_ID], strict=True)
             if p in row_of}
    empty = [np.zeros(0, dtype=np.int64)] * len(pool)
    randoms = random_negatives(list(pool[schema.QUERY_ID]), n_docs, config.random_per_query, config.seed)
    lists = {RANDOM: randoms}
    origins = pool["origin"].to_numpy()
    depth = first_depth([config.biencoder_k, config.bm25_k], n_new, len(pool), n_docs,
                        sum(len(r) for r in randoms) + int((origins >= 0).sum()))
    searches = 0
    while True:
        lists[BIENCODER] = list(biencoder_topk(query_emb, doc_emb, depth[0])) if depth[0] else empty
        lists[BM25] = bm25.topk(list(pool[schema.QUERY]), depth[1]) if depth[1] else empty
        order = fill_order(lists, origins, known, config.seed)
        searches += 1
        if len(order) >= n_new or exhausted(depth, n_docs):
            break
        depth = deeper(depth, n_docs)
        log.info("%d candidates for %d new pairs: searching deeper (bi-encoder %d, BM25 %d)",
                 len(order), n_new, *depth)
    summary.update(depth=depth, searches=searches, retrieval_seconds=round(time.perf_counter() - started, 2))
    if len(order) < n_new:
        log.warning("the catalogue yields only %d new pairs of the %d requested", len(order), n_new)
    order = order.head(n_new)
    q, doc = order["q"].to_numpy(), order["doc"].to_numpy()
    source = np.array(RETRIEVERS)[order["src"].clip(lower=0).to_numpy()]
    source[pool["origin"].to_numpy()[q] >= 0] = TITLE  # every pair of a title-derived query
    return pair_rows(pool, catalogue, q, doc, source)


def pair_rows(pool: pd.DataFrame, catalogue: pd.DataFrame, q: np.ndarray, doc: np.ndarray,
              source: np.ndarray) -> pd.DataFrame:
    """New pairs as table rows, from positions in the query pool and the catalogue."""
    return pd.DataFrame({
        schema.QUERY_ID: pool[schema.QUERY_ID].to_numpy()[q], schema.QUERY: pool[schema.QUERY].to_numpy()[q],
        schema.PRODUCT_ID: catalogue[schema.PRODUCT_ID].to_numpy()[doc],
        schema.PRODUCT_TEXT: catalogue[schema.PRODUCT_TEXT].to_numpy()[doc],
        schema.SOURCE: source,
    })
