"""The synthetic default data: deterministic, real soft targets, and ranking that is not trivial."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from components import data, schema, synthetic
from components.synthetic import Intent, Product, SyntheticConfig

SMALL = SyntheticConfig(n_products=600, n_queries=120, pairs_per_query=8)


@pytest.fixture(scope="module")
def small() -> tuple[pd.DataFrame, pd.DataFrame]:
    catalogue = synthetic.generate_catalogue(SMALL)
    return catalogue, synthetic.generate_labelled(SMALL, catalogue)


def _tokens(text: str) -> set[str]:
    return set(re.findall(r"\w+", text.lower()))


def _pairwise_accuracy(frame: pd.DataFrame, score: str) -> float:
    """Share of same-query pairs whose grades differ by >= 0.5 that `score` orders right (ties count half)."""
    right = total = 0.0
    for _, group in frame.groupby(schema.QUERY_ID):
        g, s = group[schema.GRADE].to_numpy(), group[score].to_numpy()
        dg, ds = g[:, None] - g[None, :], s[:, None] - s[None, :]
        mask = np.triu(np.abs(dg) >= 0.5, k=1)
        right += ((dg * ds > 0) + 0.5 * (ds == 0))[mask].sum()
        total += mask.sum()
    return right / total


def test_same_seed_same_frames_other_seed_other_frames(small):
    catalogue, labelled = small
    pd.testing.assert_frame_equal(catalogue, synthetic.generate_catalogue(SMALL))
    pd.testing.assert_frame_equal(labelled, synthetic.generate_labelled(SMALL))
    other = SyntheticConfig(seed=8, n_products=600, n_queries=120, pairs_per_query=8)
    assert not synthetic.generate_catalogue(other).equals(catalogue)
    assert set(synthetic.generate_labelled(other)[schema.QUERY]) != set(labelled[schema.QUERY])


def test_same_tables_in_other_processes_whatever_their_hash_seed(small):
    code = ("import pandas as pd; from components import synthetic as s; c = s.SyntheticConfig(n_products=600, "
            "n_queries=120, pairs_per_query=8); print(pd.util.hash_pandas_object(s.generate_labelled(c)"
            ".astype(str)).sum())")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    digests = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root,
                              env={**os.environ, "PYTHONPATH": root, "PYTHONHASHSEED": seed}).stdout.strip()
               for seed in ("1", "2")}
    assert digests == {str(pd.util.hash_pandas_object(small[1].astype(str)).sum())}


def test_labelled_pairs_follow_the_schema(small):
    catalogue, labelled = small
    assert list(labelled.columns) == schema.LABELLED_COLUMNS
    assert labelled[schema.QUERY_ID].nunique() == SMALL.n_queries
    assert not labelled.duplicated([schema.QUERY_ID, schema.PRODUCT_ID]).any()
    assert (labelled[schema.QUERY_ID] == labelled[schema.QUERY].map(schema.query_id)).all()
    assert set(labelled[schema.PRODUCT_ID]) <= set(catalogue[schema.PRODUCT_ID])
    per_query = labelled.groupby(schema.QUERY_ID).size()
    assert per_query.between(SMALL.pairs_per_query - 2, SMALL.pairs_per_query + 2).all()
    assert catalogue[schema.PRODUCT_ID].is_unique and (catalogue[schema.PRODUCT_TEXT].str.len() > 0).all()


def test_soft_targets_are_real_rater_distributions(small):
    _, labelled = small
    dist = schema.dist_matrix(labelled)
    assert dist.shape[1] == synthetic.NUM_GRADES
    np.testing.assert_allclose(dist.sum(axis=1), 1.0)
    np.testing.assert_allclose(labelled[schema.GRADE], schema.expected_grade(dist))
    one_hot = (dist.max(axis=1) == 1.0).mean()
    assert 0.1 < one_hot < 0.7, one_hot  # raters agree often, but far from always
    # each distribution is counts over 3..5 raters
    assert all(any(np.allclose(row * n, np.rint(row * n)) for n in (3, 4, 5)) for row in dist)
    shares = dist.mean(axis=0)
    assert (shares > 0.15).all(), shares  # every grade is common


def test_ranking_is_not_trivial(small):
    _, labelled = small
    distinct = labelled.groupby(schema.QUERY_ID)[schema.GRADE].agg(lambda g: g.round(3).nunique())
    assert (distinct >= 2).mean() > 0.9
    frame = labelled.assign(overlap=[len(_tokens(q) & _tokens(p)) / len(_tokens(q)) for q, p in
                                     zip(labelled[schema.QUERY], labelled[schema.PRODUCT_TEXT], strict=True)])
    accuracy = _pairwise_accuracy(frame, "overlap")
    assert 0.6 < accuracy < 0.9, accuracy  # word overlap helps but is far from perfect
    rng = np.random.default_rng(0)
    assert abs(_pairwise_accuracy(frame.assign(noise=rng.random(len(frame))), "noise") - 0.5) < 0.05


def _product(name: str, brand: str = "Voltrex", **attributes: str) -> Product:
    ptype = next(t for t in synthetic.TYPES if t.name == name)
    return Product("x", ptype, brand, attributes, name)


def test_relevance_orders_product_accessory_sibling_and_unrelated():
    drill = next(t for t in synthetic.TYPES if t.name == "cordless drill")
    intent = Intent(drill, None, {})
    scores = {name: synthetic.relevance(intent, _product(name)) for name in
              ("cordless drill", "impact driver", "drill bit set", "circular saw", "kitchen faucet")}
    assert scores["cordless drill"] > scores["impact driver"] > scores["drill bit set"]
    assert scores["drill bit set"] > scores["circular saw"] > scores["kitchen faucet"] == 0.0
    wanted = Intent(drill, "Voltrex", {"voltage": "18-Volt"})
    exact = synthetic.relevance(wanted, _product("cordless drill", voltage="18-Volt"))
    assert exact == 2.0
    other_brand = _product("cordless drill", brand="Torqline", voltage="18-Volt")
    assert synthetic.relevance(wanted, other_brand) < exact
    assert synthetic.relevance(wanted, _product("cordless drill", voltage="12-Volt")) < exact
    battery = next(t for t in synthetic.TYPES if t.name == "battery pack")
    # a drill sold with a battery is only partly what someone searching "drill battery" wants
    assert 0 < synthetic.relevance(Intent(battery, None, {}), _product("cordless drill")) < 1


def test_write_default_data_is_readable_and_skips_a_rerun(tmp_path):
    config = SyntheticConfig(n_products=300, n_queries=40, pairs_per_query=6)
    paths = synthetic.write_default_data(str(tmp_path / "default"), config)
    pairs = data.read_pairs(paths["pairs"])  # kdrank's own reader validates every row
    assert len(pairs) == len(synthetic.generate_labelled(config))
    assert len(data.read_table(paths["catalogue"])) == 300
    np.testing.assert_allclose(schema.dist_matrix(pairs), schema.dist_matrix(data.read_table(paths["pairs"])))
    mtime = os.path.getmtime(paths["pairs"])
    assert synthetic.write_default_data(str(tmp_path / "default"), config) == paths
    assert os.path.getmtime(paths["pairs"]) == mtime
    assert not [p for p in os.listdir(tmp_path / "default") if p.endswith(".tmp")]


def test_default_size_generates_with_many_unlabelled_products():
    config = SyntheticConfig()
    catalogue = synthetic.generate_catalogue(config)
    labelled = synthetic.generate_labelled(config, catalogue)
    assert 4000 < len(labelled) < 6000
    unused = 1 - labelled[schema.PRODUCT_ID].nunique() / len(catalogue)
    assert unused > 0.3, unused  # augmentation has products to find that no labelled pair holds


@pytest.mark.parametrize("bad", [dict(n_products=10), dict(n_queries=0), dict(pairs_per_query=2),
                                 dict(min_raters=4, max_raters=3), dict(rater_noise=-1.0),
                                 dict(misspell_rate=2.0)])
def test_bad_config_is_refused(bad):
    with pytest.raises(ValueError, match="SyntheticConfig"):
        synthetic.generate_catalogue(SyntheticConfig(**bad))


def test_a_foreign_catalogue_is_refused(small):
    catalogue, _ = small
    with pytest.raises(ValueError, match="does not match"):
        synthetic.generate_labelled(SyntheticConfig(n_products=300, n_queries=10), catalogue)
