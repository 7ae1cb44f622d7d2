"""Augmentation with the real packaged MiniLM encoder and bm25s, on a small synthetic catalogue."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components import augment, data, schema, synthetic
from components.augment import AugmentConfig

SOURCES = {augment.LABELLED, augment.TITLE, augment.BIENCODER, augment.BM25, augment.RANDOM}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("augment")
    config = synthetic.SyntheticConfig(n_products=240, n_queries=30, pairs_per_query=6, seed=3)
    paths = synthetic.write_default_data(str(root / "data"), config)
    return {**paths, "root": str(root), "cache": str(root / "cache")}


@pytest.fixture(scope="module")
def first_run(inputs) -> tuple[dict, pd.DataFrame, str]:
    output = os.path.join(inputs["root"], "m2.parquet")
    config = AugmentConfig(multiple=2.0, title_queries=0.3, cache_dir=inputs["cache"], batch_size=64)
    summary = augment.augment_pairs(inputs["pairs"], inputs["catalogue"], output, config)
    return summary, data.read_table(output), output


def _keys(frame: pd.DataFrame) -> list[tuple[str, str]]:
    return list(zip(frame[schema.QUERY_ID], frame[schema.PRODUCT_ID], strict=True))


def test_new_pairs_match_the_multiple_and_are_new(inputs, first_run):
    summary, out, _ = first_run
    labelled = data.read_table(inputs["pairs"])
    catalogue = data.read_table(inputs["catalogue"]).set_index(schema.PRODUCT_ID)[schema.PRODUCT_TEXT]
    assert list(out.columns) == schema.UNLABELLED_COLUMNS
    head, new = out.iloc[:len(labelled)], out.iloc[len(labelled):]
    assert (head[schema.SOURCE] == augment.LABELLED).all()
    assert _keys(head) == _keys(labelled)
    assert len(new) == round(2.0 * len(labelled)) == summary["new"]
    assert not out.duplicated([schema.QUERY_ID, schema.PRODUCT_ID]).any()
    assert not set(_keys(new)) & set(_keys(labelled))
    assert set(out[schema.SOURCE]) == SOURCES
    assert summary["by_source"] == out[schema.SOURCE].value_counts().to_dict()
    assert (new[schema.PRODUCT_TEXT].to_numpy() == catalogue.loc[new[schema.PRODUCT_ID]].to_numpy()).all()
    assert (new[schema.QUERY_ID] == new[schema.QUERY].map(schema.query_id)).all()
    titled = new[new[schema.SOURCE] == augment.TITLE]
    assert not set(titled[schema.QUERY_ID]) & set(labelled[schema.QUERY_ID])
    assert summary["title_queries"] == titled[schema.QUERY_ID].nunique() == round(0.3 * 30)
    assert summary["embedding_cache"] == summary["query_embedding_cache"] == "miss"


def test_bi_encoder_finds_products_of_the_queried_type(first_run):
    _, out, _ = first_run
    hits = out[out[schema.SOURCE] == augment.BIENCODER]
    # the same word in query and title is common for semantic neighbours on this catalogue
    overlap = [bool(set(q.split()) & set(t.lower().split())) for q, t in
               zip(hits[schema.QUERY], hits[schema.PRODUCT_TEXT], strict=True)]
    randoms = out[out[schema.SOURCE] == augment.RANDOM]
    overlap_random = [bool(set(q.split()) & set(t.lower().split())) for q, t in
                      zip(randoms[schema.QUERY], randoms[schema.PRODUCT_TEXT], strict=True)]
    assert np.mean(overlap) > np.mean(overlap_random) + 0.2


def test_rerun_skips_and_the_embedding_cache_is_reused(inputs, first_run):
    summary, out, output = first_run
    mtime = os.path.getmtime(output)
    cache_files = list(Path(inputs["cache"], "embeddings").glob("catalogue-*.npy"))
    assert len(cache_files) == 1
    cache_mtime = cache_files[0].stat().st_mtime
    config = AugmentConfig(multiple=2.0, title_queries=0.3, cache_dir=inputs["cache"], batch_size=64)
    again = augment.augment_pairs(inputs["pairs"], inputs["catalogue"], output, config)
    assert again["skipped"] and os.path.getmtime(output) == mtime
    assert again["new"] == summary["new"]

    smaller = os.path.join(inputs["root"], "m1.parquet")
    config = AugmentConfig(multiple=1.0, title_queries=0.3, cache_dir=inputs["cache"], batch_size=32)
    one = augment.augment_pairs(inputs["pairs"], inputs["catalogue"], smaller, config)
    assert one["embedding_cache"] == one["query_embedding_cache"] == "hit" and not one["skipped"]
    assert cache_files[0].stat().st_mtime == cache_mtime
    small_new = data.read_table(smaller).iloc[one["labelled"]:]
    big_new = out.iloc[summary["labelled"]:]
    assert _keys(small_new) == _keys(big_new)[:len(small_new)]  # a smaller multiple is a prefix



def test_cpu_bf16_embeddings_are_cached_apart_from_fp32_ones(inputs, first_run, monkeypatch):
    from components import runtime

    monkeypatch.setenv(runtime.CPU_BF16, "1")
    config = AugmentConfig(multiple=1.0, title_queries=0.3, cache_dir=inputs["cache"], batch_size=32, device="cpu")
    bf16 = augment.augment_pairs(inputs["pairs"], inputs["catalogue"], os.path.join(inputs["root"], "bf16.parquet"),
                                 config)
    assert bf16["embedding_cache"] == "miss"  # the fp32 run's embeddings are not taken for bf16 ones
    assert len(list(Path(inputs["cache"], "embeddings").glob("catalogue-*.npy"))) == 2


def test_multiple_zero_gives_only_the_labelled_pairs(inputs):
    output = os.path.join(inputs["root"], "m0.parquet")
    summary = augment.augment_pairs(inputs["pairs"], inputs["catalogue"], output,
                                    AugmentConfig(multiple=0.0, cache_dir=inputs["cache"]))
    out = data.read_table(output)
    assert summary["new"] == 0 and summary["embedding_cache"] is None
    assert (out[schema.SOURCE] == augment.LABELLED).all()
    assert len(out) == len(data.read_table(inputs["pairs"]))


def test_shallow_retrieval_searches_deeper_to_fill_the_request(inputs):
    output = os.path.join(inputs["root"], "deep.parquet")
    config = AugmentConfig(multiple=1.0, biencoder_k=0, bm25_k=2, random_per_query=0,
                           cache_dir=inputs["cache"])
    summary = augment.augment_pairs(inputs["pairs"], inputs["catalogue"], output, config)
    assert summary["new"] == summary["requested_new"]
    assert summary["depth"][1] > 2 and summary["embedding_cache"] is None
    assert set(data.read_table(output)[schema.SOURCE]) == {augment.LABELLED, augment.BM25}


def test_first_depth_skips_only_depths_that_cannot_fill_the_request():
    # 10 queries, 2 fixed candidates: depths (20, 20) hold at most 402, (40, 40) 802, (80, 80) 1,602
    assert augment.first_depth([20, 20], 402, 10, 1000, 2) == [20, 20]
    assert augment.first_depth([20, 20], 403, 10, 1000, 2) == [40, 40]
    assert augment.first_depth([20, 20], 1000, 10, 1000, 2) == [80, 80]
    assert augment.first_depth([0, 20], 1000, 10, 1000, 0) == [0, 160]
    assert augment.first_depth([20, 20], 10**9, 10, 50, 0) == [50, 50]  # capped at the catalogue


def test_skipped_depths_give_the_pairs_of_the_full_doubling(inputs):
    """Starting deep gives the doubling loop's pairs: the depth searched last decides them."""
    shallow = os.path.join(inputs["root"], "shallow.parquet")
    config = AugmentConfig(multiple=1.0, biencoder_k=0, bm25_k=1, random_per_query=0,
                           cache_dir=inputs["cache"])
    summary = augment.augment_pairs(inputs["pairs"], inputs["catalogue"], shallow, config)
    doublings = int(np.log2(summary["depth"][1]))
    assert doublings >= 1 and summary["searches"] < doublings + 1  # depth 1 cannot fill it: not searched
    direct = os.path.join(inputs["root"], "direct.parquet")
    again = augment.augment_pairs(inputs["pairs"], inputs["catalogue"], direct,
                                  replace(config, bm25_k=summary["depth"][1]))
    assert again["depth"] == summary["depth"]
    pd.testing.assert_frame_equal(data.read_table(shallow), data.read_table(direct))


def test_a_request_beyond_the_catalogue_yields_what_exists(inputs, caplog):
    output = os.path.join(inputs["root"], "huge.parquet")
    config = AugmentConfig(multiple=500.0, biencoder_k=0, bm25_k=0, random_per_query=3,
                           cache_dir=inputs["cache"])
    summary = augment.augment_pairs(inputs["pairs"], inputs["catalogue"], output, config)
    assert 80 <= summary["new"] <= 30 * 3 < summary["requested_new"]  # a random pick may be labelled
    assert "yields only" in caplog.text


@pytest.mark.parametrize("bad", [dict(multiple=-1.0), dict(multiple=float("nan")), dict(bm25_k=-1),
                                 dict(biencoder_k=0, bm25_k=0, random_per_query=0), dict(title_queries=-0.1),
                                 dict(batch_size=0)])
def test_bad_config_is_refused(inputs, bad):
    with pytest.raises(ValueError, match="AugmentConfig"):
        augment.augment_pairs(inputs["pairs"], inputs["catalogue"], os.path.join(inputs["root"], "x.parquet"),
                              AugmentConfig(**bad))


def test_bad_inputs_are_named(inputs, tmp_path):
    labelled = data.read_table(inputs["pairs"])
    empty = str(tmp_path / "empty.parquet")
    data.write_table(labelled.iloc[:0], empty)
    out = str(tmp_path / "out.parquet")
    with pytest.raises(schema.DataError, match="no labelled pairs"):
        augment.augment_pairs(empty, inputs["catalogue"], out)
    no_text = str(tmp_path / "no_text.parquet")
    data.write_table(data.read_table(inputs["catalogue"])[[schema.PRODUCT_ID]], no_text)
    with pytest.raises(schema.DataError, match="no_text.parquet.*product_text"):
        augment.augment_pairs(inputs["pairs"], no_text, out)
    with pytest.raises(FileNotFoundError):
        augment.augment_pairs(str(tmp_path / "missing.parquet"), inputs["catalogue"], out)
    assert not os.path.exists(out)


def test_title_query_takes_the_product_words_of_a_title():
    title = "Voltrex 18-Volt Brushless Cordless Drill/Driver with Lithium-Ion Battery Pack in Red"
    assert augment.title_query(title, with_brand=False) == "cordless drill/driver"
    assert augment.title_query(title, with_brand=True) == "voltrex cordless drill/driver"
    assert augment.title_query("Simpson Strong-Tie 12-Gauge Angle", with_brand=False) == "strong-tie angle"
    assert augment.title_query("12 in. (2-Pack)", with_brand=True) is None


def test_bm25_returns_only_matching_products():
    index = augment.BM25Index(["Red Cordless Drill", "Garden Hose 50 ft.", "Drill Bit Set", "Claw Hammer"])
    drill, nothing, stop_words = index.topk(["drill", "xyzzy", "the and"], k=3)
    assert sorted(drill.tolist()) == [0, 2] and len(nothing) == 0 and len(stop_words) == 0


_FAKE_JAX = '''
import os
from pathlib import Path

def top_k(values, k):  # bm25s runs one top-k when it is imported; JAX would pick its platform here
    Path(os.environ["JAX_SEEN"]).write_text(os.environ.get("JAX_PLATFORMS", "<unset>"))
    return values[:k], list(range(k))
'''


@pytest.mark.parametrize("preset", [None, "cuda"])
def test_bm25_keeps_an_installed_jax_off_the_gpu(tmp_path, preset):
    """Importing bm25s with JAX installed starts JAX, which reserves 75% of a GPU (seen: 108 GB of an H200).

    A stand-in `jax` package records the JAX_PLATFORMS that bm25s's import-time top-k runs under, in a
    fresh interpreter: BM25 retrieval and the BM25 baseline must leave it on the CPU, and a user's own
    setting must stand.
    """
    import subprocess
    import sys

    (tmp_path / "jax").mkdir()
    (tmp_path / "jax" / "__init__.py").write_text("from . import lax\n")
    (tmp_path / "jax" / "lax.py").write_text(_FAKE_JAX)
    env = {k: v for k, v in os.environ.items() if k != "JAX_PLATFORMS"}
    env.update({"JAX_SEEN": str(tmp_path / "seen.txt"),
                "PYTHONPATH": os.pathsep.join([str(tmp_path), str(Path(__file__).parents[1])])})
    if preset:
        env["JAX_PLATFORMS"] = preset
    code = ("import numpy as np, pandas as pd\n"
            "from components import evaluate\n"
            "frame = pd.DataFrame({'query_id': ['q', 'q'], 'query': ['red drill', 'red drill'], "
            "'product_text': ['red cordless drill', 'garden hose']})\n"
            "scores = evaluate._bm25_scores(frame)\n"
            "assert scores[0] > scores[1] == 0, scores\n")
    subprocess.run([sys.executable, "-c", code], env=env, check=True, cwd=tmp_path)
    assert (tmp_path / "seen.txt").read_text() == (preset or "cpu")


def test_a_set_with_title_queries_is_stored_and_rebuilt_exactly(inputs, first_run, tmp_path):
    from pipelines import pair_sets

    _, frame, output = first_run
    assert (frame[schema.SOURCE] == augment.TITLE).any()
    record = pair_sets.export_set(output, inputs["pairs"], inputs["catalogue"], tmp_path / "stored")
    assert record["made"]["title_queries"] == round(0.3 * 30)
    rebuilt = tmp_path / "rebuilt.parquet"
    config = AugmentConfig(multiple=2.0, title_queries=0.3, batch_size=8)  # batch size and cache do not count
    summary = pair_sets.use_archived(tmp_path / "stored", inputs["pairs"], inputs["catalogue"], str(rebuilt), config)
    assert summary["archived"] and not summary["skipped"]
    pd.testing.assert_frame_equal(data.read_table(str(rebuilt)), frame)


# A six-product catalogue where every title makes a query of its own (two words: the same with or without the
# brand), one training query, and held-out tables holding the queries two of those titles make.
TINY = AugmentConfig(multiple=5.0, biencoder_k=0, bm25_k=2, random_per_query=1, title_queries=10.0)
TINY_TITLES = ["Cordless Drill", "Garden Hose", "Claw Hammer", "Tile Saw", "Paint Roller", "Drill Bits"]


@pytest.fixture
def tiny(tmp_path) -> dict[str, str]:
    def write(frame: pd.DataFrame, name: str) -> str:
        return data.write_table(frame, str(tmp_path / f"{name}.parquet"))

    def queries(*texts: str) -> pd.DataFrame:
        return pd.DataFrame({schema.QUERY_ID: [schema.query_id(t) for t in texts], schema.QUERY: list(texts)})

    catalogue = pd.DataFrame({schema.PRODUCT_ID: [f"p{i}" for i in range(len(TINY_TITLES))],
                              schema.PRODUCT_TEXT: TINY_TITLES})
    train = queries("hammer", "hammer").assign(**{schema.PRODUCT_ID: ["p2", "p3"],
                                                    schema.PRODUCT_TEXT: ["Claw Hammer", "Tile Saw"]})
    return {"root": str(tmp_path), "catalogue": write(catalogue, "catalogue"), "train": write(train, "train"),
            "val": write(queries("cordless drill"), "val"), "test": write(queries("Garden  Hose"), "test")}


def _title_ids(path: str) -> set[str]:
    frame = data.read_table(path)
    return set(frame.loc[frame[schema.SOURCE] == augment.TITLE, schema.QUERY_ID])


def test_title_queries_skip_the_held_out_queries(tiny, caplog):
    assert {augment.title_query(t, with_brand=b) for t in TINY_TITLES[:2] for b in (False, True)} == \
        {"cordless drill", "garden hose"}
    leaked = {schema.query_id("cordless drill"), schema.query_id("garden hose")}
    config = replace(TINY, cache_dir=tiny["root"])
    plain = os.path.join(tiny["root"], "plain.parquet")
    with caplog.at_level("WARNING"):
        augment.augment_pairs(tiny["train"], tiny["catalogue"], plain, config)
    assert "without held-out queries" in caplog.text and "held_out=" in caplog.text
    assert leaked <= _title_ids(plain) and len(_title_ids(plain)) == len(TINY_TITLES)

    caplog.clear()
    kept = os.path.join(tiny["root"], "kept.parquet")
    with caplog.at_level("WARNING"):
        summary = augment.augment_pairs(tiny["train"], tiny["catalogue"], kept, config,
                                        held_out=(tiny["val"], tiny["test"]))
    assert "held-out" not in caplog.text
    assert _title_ids(kept) == _title_ids(plain) - leaked and summary["title_queries"] == len(TINY_TITLES) - 2
    assert not leaked & set(data.read_table(kept)[schema.QUERY_ID])
    assert augment.made_with(kept)["settings"]["held_out"] == augment._fingerprint(*sorted(leaked))
    assert "held_out" not in augment.made_with(plain)["settings"]


def test_held_out_queries_change_nothing_without_title_queries(tiny):
    """Sets without title queries (every profile's, and every archived one) keep their settings."""
    held = (tiny["val"], tiny["test"])
    out = os.path.join(tiny["root"], "plain.parquet")
    config = replace(TINY, title_queries=0.0, cache_dir=tiny["root"])
    augment.augment_pairs(tiny["train"], tiny["catalogue"], out, config)
    missing = os.path.join(tiny["root"], "missing.parquet")  # not read: nothing it holds could matter
    again = augment.augment_pairs(tiny["train"], tiny["catalogue"], out, config, held_out=(*held, missing))
    assert again["skipped"]
    labelled, catalogue = augment.read_inputs(tiny["train"], tiny["catalogue"])
    ids = augment.held_out_queries(held, TINY)
    assert len(ids) == 2 and augment.held_out_queries(held, config) == frozenset()
    assert augment.input_settings(labelled, catalogue, config, ids) == \
        augment.input_settings(labelled, catalogue, config)
    # with title queries they count: a set made without them is made again
    titled = os.path.join(tiny["root"], "titled.parquet")
    augment.augment_pairs(tiny["train"], tiny["catalogue"], titled, replace(TINY, cache_dir=tiny["root"]))
    assert not augment.augment_pairs(tiny["train"], tiny["catalogue"], titled, replace(TINY, cache_dir=tiny["root"]),
                                     held_out=held)["skipped"]


def test_a_title_set_with_held_out_queries_is_archived_with_them(tiny, tmp_path):
    from pipelines import pair_sets

    held = (tiny["val"], tiny["test"])
    made = os.path.join(tiny["root"], "made.parquet")
    augment.augment_pairs(tiny["train"], tiny["catalogue"], made, replace(TINY, cache_dir=tiny["root"]),
                          held_out=held)
    inputs = (tiny["train"], tiny["catalogue"])
    for other in ((tiny["val"],), ()):
        with pytest.raises(pair_sets.PairsMismatch, match="other held-out queries than"):
            pair_sets.export_set(made, *inputs, tmp_path / "refused", held_out=other)
    record = pair_sets.export_set(made, *inputs, tmp_path / "stored", held_out=held)
    assert record["settings"]["held_out"] == augment.made_with(made)["settings"]["held_out"]
    rebuilt = tmp_path / "rebuilt.parquet"
    summary = pair_sets.use_archived(tmp_path / "stored", *inputs, str(rebuilt), TINY, held_out=held)
    assert summary["archived"] and not summary["skipped"]
    pd.testing.assert_frame_equal(data.read_table(str(rebuilt)), data.read_table(made))
    for other in ((tiny["test"],), ()):
        with pytest.raises(pair_sets.PairsMismatch, match="made with other held-out queries than"):
            pair_sets.use_archived(tmp_path / "stored", *inputs, str(tmp_path / "other.parquet"), TINY,
                                   held_out=other)
    assert not (tmp_path / "other.parquet").exists()
