"""The data layer: readers, mapping, validation errors, split by query, prepare."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components import data, schema
from components.schema import DataError

HOMEDEPOT_CSV = (
    "id,product_uid,product_title,search_term,relevance\n"
    "2,100001,Simpson Strong-Tie 12-Gauge Angle,angle bracket,3\n"
    "3,100001,Simpson Strong-Tie 12-Gauge Angle,l bracket,2.5\n"
    "16,100005,Delta Vero 1-Handle Shower Faucet Trim Kit in Chrome,rain shower head,2.33\n"
    "17,100005,Delta Vero 1-Handle Shower Faucet Trim Kit in Chrome,shower only faucet,2.67\n"
    "18,100006,Whirlpool 1.9 cu. ft. Over the Range Microwave,microwave,1\n"
)


def write(tmp_path, name, text, encoding="utf-8"):
    path = tmp_path / name
    path.write_bytes(text.encode(encoding))
    return str(path)


def test_homedepot_reader_maps_scale_and_soft_targets(tmp_path):
    # latin-1 byte in a title: valid in the Kaggle file's encoding
    path = write(tmp_path, "train.csv", HOMEDEPOT_CSV.replace("Chrome", "Chrome\xae"), "latin-1")
    frame = data.read_pairs(path, "homedepot")
    assert list(frame.columns) == schema.LABELLED_COLUMNS
    assert frame[schema.GRADE].tolist() == pytest.approx([2.0, 1.5, 1.33, 1.67, 0.0])
    # mean 2.33 on 1..3 = 1.33 on 0..2: p(1) = 2 - 1.33, p(2) = 1.33 - 1
    assert frame[schema.GRADE_DIST][2] == pytest.approx([0.0, 0.67, 0.33])
    assert "Chrome®" in frame[schema.PRODUCT_TEXT][2]


def test_gzip_compressed_csv_reads_as_the_plain_file(tmp_path):
    import gzip

    plain = write(tmp_path, "train.csv", HOMEDEPOT_CSV.replace("Chrome", "Chrome\xae"), "latin-1")
    packed = tmp_path / "train.csv.gz"
    packed.write_bytes(gzip.compress(Path(plain).read_bytes()))
    pd.testing.assert_frame_equal(data.read_pairs(str(packed), "homedepot"), data.read_pairs(plain, "homedepot"))
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(packed.read_bytes()[:40])
    with pytest.raises(DataError, match="broken.csv.gz: not a readable gzip file"):
        data.read_pairs(str(broken), "homedepot")


def test_homedepot_detected_from_header(tmp_path):
    # the Kaggle file is latin-1: recognised by its header, it is read as latin-1 without --format
    path = write(tmp_path, "train.csv", HOMEDEPOT_CSV.replace("Chrome", "Chrome\xae"), "latin-1")
    frame = data.read_pairs(path)
    pd.testing.assert_frame_equal(frame, data.read_pairs(path, "homedepot"))
    assert "Chrome®" in frame[schema.PRODUCT_TEXT][2]


def test_a_non_utf8_csv_without_a_known_header_says_what_to_pass(tmp_path):
    text = "query,product_id,product_text,grade\ndrill,1,Drill \xae,2\n"
    with pytest.raises(DataError, match=r"row 1: bytes b'\\xae' .* not valid utf-8 .*pass --format homedepot"):
        data.read_pairs(write(tmp_path, "pairs.csv", text, "latin-1"))


def test_esci_labels_mapped_by_columns(tmp_path):
    rows = [{"query": "usb c cable", "product_id": "B1", "product_title": "USB-C cable 2m", "esci_label": "E"},
            {"query": "usb c cable", "product_id": "B2", "product_title": "USB-C charger", "esci_label": "C"},
            {"query": "usb c cable", "product_id": "B3", "product_title": "Garden hose", "esci_label": "I"},
            {"query": "usb c cable", "product_id": "B4", "product_title": "Lightning cable", "esci_label": "S"}]
    path = tmp_path / "esci.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    frame = data.read_pairs(str(path), "jsonl", data.ESCI)
    assert frame[schema.GRADE].tolist() == [3.0, 1.0, 0.0, 2.0]
    assert len(frame[schema.GRADE_DIST][0]) == 4


def test_parquet_with_rater_distribution(tmp_path):
    frame = pd.DataFrame({"q": ["drill", "drill"], "pid": ["a", "b"], "title": ["Cordless drill", "Drill bit"],
                          "r": [2.0, 1.0], "dist": [[0.0, 0.0, 1.0], [0.2, 0.4, 0.4]]})
    path = str(tmp_path / "pairs.parquet")
    frame.to_parquet(path)
    mapping = data.ColumnMapping(query="q", product_id="pid", product_text="title", grade="r", grade_dist="dist")
    out = data.read_pairs(path, mapping=mapping)
    assert out[schema.GRADE_DIST][1] == pytest.approx([0.2, 0.4, 0.4])
    assert out[schema.GRADE][1] == pytest.approx(1.2)  # the distribution's expected grade


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (HOMEDEPOT_CSV.replace("search_term", "query_text"), r"column 'search_term'.*missing column"),
        (HOMEDEPOT_CSV.replace(",l bracket,", ",  ,"), r"row 2, column 'search_term': empty value"),
        (HOMEDEPOT_CSV.replace("Whirlpool 1.9 cu. ft. Over the Range Microwave", ""),
         r"row 5, column 'product_title': empty value"),
        (HOMEDEPOT_CSV.replace("microwave,1", "microwave,4"), r"row 5, column 'relevance': grade 4.0 outside"),
        (HOMEDEPOT_CSV.replace("l bracket,2.5", "l bracket,two"), r"row 2, column 'relevance': not a number"),
    ],
)
def test_bad_input_names_file_row_and_column(tmp_path, text, match):
    path = write(tmp_path, "bad.csv", text)
    with pytest.raises(DataError, match=match) as err:
        data.read_pairs(path, "homedepot")
    assert "bad.csv" in str(err.value)


@pytest.mark.parametrize("dist", [[float("nan"), 0.5, 0.5], [float("inf"), 1.0, 0.0]])
def test_a_distribution_with_nan_or_inf_is_refused(tmp_path, dist):
    frame = pd.DataFrame({"query": ["drill", "drill"], "product_id": ["a", "b"], "product_text": ["Drill", "Bit"],
                          "grade": [1.0, 1.0], "grade_dist": [[0.0, 1.0, 0.0], dist]})
    path = str(tmp_path / "pairs.parquet")
    frame.to_parquet(path)
    with pytest.raises(DataError, match=r"row 2, column 'grade_dist': not a distribution over 3 grades"):
        data.read_pairs(path)


def test_jsonl_ids_keep_their_digits_beside_a_null_and_bad_lines_are_named(tmp_path):
    rows = [{"query": "drill", "product_id": 100001, "product_text": "Drill", "grade": 2},
            {"query": "drill", "product_id": None, "product_text": "Bit", "grade": 1},
            {"query": "drill", "product_id": 100003, "product_text": "Saw", "grade": 0}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    frame = data.read_pairs(str(path), on_invalid="drop")
    assert frame[schema.PRODUCT_ID].tolist() == ["100001", "100003"]
    with pytest.raises(DataError, match=r"row 2, column 'product_id': empty value"):
        data.read_pairs(str(path))
    path.write_text(json.dumps(rows[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"pairs.jsonl, row 2: unreadable JSON"):
        data.read_pairs(str(path))
    path.write_text(json.dumps(rows[0]) + "\n" + json.dumps({**rows[2], "query": ["drill"]}))
    with pytest.raises(DataError, match=r"row 2, column 'query': a list, not a text value"):
        data.read_pairs(str(path))


def test_a_json_array_of_objects_reads_as_jsonl(tmp_path):
    rows = [{"query": "drill", "product_id": "a", "product_text": "Drill", "grade": 2},
            {"query": "drill", "product_id": "b", "product_text": "Bit", "grade": 1}]
    array, lines = tmp_path / "pairs.json", tmp_path / "pairs.jsonl"
    array.write_text(json.dumps(rows))
    lines.write_text("\n".join(json.dumps(r) for r in rows))
    pd.testing.assert_frame_equal(data.read_pairs(str(array)), data.read_pairs(str(lines)))
    array.write_text(json.dumps([rows[0], 3]))
    with pytest.raises(DataError, match=r"pairs.json, row 2: item 2 is a int, not an object"):
        data.read_pairs(str(array))


def test_undecodable_bytes_named(tmp_path):
    path = tmp_path / "utf8.csv"
    path.write_bytes(HOMEDEPOT_CSV.encode() .replace(b"Delta", b"Delta\xff"))
    mapping = data.ColumnMapping(query="search_term", product_id="product_uid", product_text="product_title",
                                 grade="relevance", scale=data.HOMEDEPOT.scale, encoding="utf-8")
    with pytest.raises(DataError, match=r"utf8.csv, row 3: bytes b'\\xff' .* not valid utf-8"):
        data.read_pairs(str(path), "csv", mapping)


def test_drop_mode_counts_in_log(tmp_path, caplog):
    path = write(tmp_path, "bad.csv", HOMEDEPOT_CSV.replace("microwave,1", "microwave,9"))
    with caplog.at_level(logging.WARNING):
        frame = data.read_pairs(path, "homedepot", on_invalid="drop")
    assert len(frame) == 4
    assert "dropped 1 of 5 rows" in caplog.text


def test_duplicates_are_merged(tmp_path):
    text = HOMEDEPOT_CSV + "99,100001,Simpson Strong-Tie 12-Gauge Angle,Angle  Bracket,2\n"
    frame = data.read_pairs(write(tmp_path, "dup.csv", text), "homedepot")
    row = frame[frame[schema.QUERY_ID] == schema.query_id("angle bracket")]
    assert len(row) == 1
    assert row[schema.GRADE].iloc[0] == pytest.approx(1.5)  # mean of 2.0 and 1.0 on the 0..2 scale


def test_split_by_query_no_leakage_and_deterministic():
    rng = np.random.default_rng(0)
    queries = [f"query {i}" for i in range(400)]
    frame = pd.DataFrame({schema.QUERY: rng.choice(queries, 3000), schema.PRODUCT_ID: np.arange(3000).astype(str)})
    frame[schema.QUERY_ID] = frame[schema.QUERY].map(schema.query_id)
    a = data.split_by_query(frame, val_fraction=0.1, test_fraction=0.2, seed=3)
    ids = [set(part[schema.QUERY_ID]) for part in a.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(len(p) for p in a.values()) == len(frame)
    assert 0.12 < len(ids[2]) / 400 < 0.28
    shuffled = data.split_by_query(frame.sample(frac=1, random_state=1), val_fraction=0.1, test_fraction=0.2, seed=3)
    assert set(shuffled["test"][schema.QUERY_ID]) == ids[2]
    other = data.split_by_query(frame, val_fraction=0.1, test_fraction=0.2, seed=4)
    assert set(other["test"][schema.QUERY_ID]) != ids[2]


def test_prepare_data_writes_splits_and_skips_rerun(tmp_path):
    rows = [f"{i},{1000 + i % 37},Product {i % 37} title,query {i % 50},{1 + (i % 5) / 2}" for i in range(300)]
    path = write(tmp_path, "hd.csv", "id,product_uid,product_title,search_term,relevance\n" + "\n".join(rows))
    out = tmp_path / "prepared"
    paths = data.prepare_data(path, str(out), data.PrepareConfig(fmt="homedepot"))
    parts = {k: pd.read_parquet(v) for k, v in paths.items()}
    assert sum(len(parts[k]) for k in ("train", "val", "test")) == 300
    assert len(parts["catalogue"]) == 37
    mtime = (out / "train.parquet").stat().st_mtime_ns
    data.prepare_data(path, str(out), data.PrepareConfig(fmt="homedepot"))
    assert (out / "train.parquet").stat().st_mtime_ns == mtime
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_prepare_data_reruns_when_the_input_changes_under_the_same_name(tmp_path):
    path = write(tmp_path, "hd.csv", HOMEDEPOT_CSV)
    out = str(tmp_path / "prepared")
    data.prepare_data(path, out, data.PrepareConfig(test_fraction=0.0, val_fraction=0.0))
    write(tmp_path, "hd.csv", HOMEDEPOT_CSV.replace("microwave,1", "microwave oven,1"))
    paths = data.prepare_data(path, out, data.PrepareConfig(test_fraction=0.0, val_fraction=0.0))
    assert "microwave oven" in pd.read_parquet(paths["train"])[schema.QUERY].tolist()


def test_a_prepare_stopped_half_way_leaves_no_summary_and_the_next_run_redoes_every_table(tmp_path, monkeypatch):
    rows = [f"{i},{1000 + i % 37},Product {i % 37} title,query {i % 50},{1 + (i % 5) / 2}" for i in range(300)]
    path = write(tmp_path, "hd.csv", "id,product_uid,product_title,search_term,relevance\n" + "\n".join(rows))
    out = tmp_path / "prepared"
    data.prepare_data(path, str(out), data.PrepareConfig(seed=13))
    real_write, calls = data.write_table, []

    def write_then_fail(frame, uri):
        calls.append(uri)
        if len(calls) == 2:
            raise OSError("disk full")
        return real_write(frame, uri)

    monkeypatch.setattr(data, "write_table", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        data.prepare_data(path, str(out), data.PrepareConfig(seed=14))  # train written with seed 14, then stopped
    assert not (out / "summary.json").exists()
    monkeypatch.setattr(data, "write_table", real_write)
    paths = data.prepare_data(path, str(out), data.PrepareConfig(seed=13))
    parts = {k: set(pd.read_parquet(paths[k])[schema.QUERY_ID]) for k in ("train", "val", "test")}
    assert not (parts["train"] & parts["val"]) and not (parts["train"] & parts["test"])


def test_read_table_leaves_out_a_writers_hidden_temporary_folder(tmp_path, tiny_labelled):
    folder = tmp_path / "shards"
    data.write_table(tiny_labelled.iloc[:30], str(folder / "shard-0.parquet"))
    data.write_table(tiny_labelled.iloc[30:], str(folder / ".shard-1.parquet.tmp123" / "part.parquet"))
    assert len(data.read_table(str(folder))) == 30


def test_read_table_from_gcs_shards(gcs_emulator, tiny_labelled):
    base = f"gs://{gcs_emulator}/data-test/shards"
    data.write_table(tiny_labelled.iloc[:30], f"{base}/shard-0.parquet")
    data.write_table(tiny_labelled.iloc[30:], f"{base}/shard-1.parquet")
    back = data.read_table(base)
    assert back[schema.PRODUCT_ID].tolist() == tiny_labelled[schema.PRODUCT_ID].tolist()
    csv_uri = f"gs://{gcs_emulator}/data-test/hd.csv"
    from components import storage

    storage.write_bytes(csv_uri, HOMEDEPOT_CSV.encode("latin-1"))
    assert len(data.read_pairs(csv_uri, "homedepot")) == 5
