"""Storage round trips, local and through a real GCS emulator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components import storage


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out.txt"
    with pytest.raises(RuntimeError), storage.atomic_path(target) as tmp:
        Path(tmp).write_text("half")
        raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_whole(tmp_path):
    target = tmp_path / "model"
    with storage.atomic_dir(target) as tmp:
        Path(tmp, "a.txt").write_text("1")
    with pytest.raises(RuntimeError), storage.atomic_dir(target) as tmp:
        Path(tmp, "b.txt").write_text("2")
        raise RuntimeError("crash")
    assert storage.list_files(target) == ["a.txt"]


def _writer(target: Path, kind: str) -> subprocess.Popen:
    """A process inside storage.atomic_{kind}(target), stopped there once it has written its temporary."""
    code = (f"import time, pathlib\nfrom components import storage\n"
            f"with storage.atomic_{kind}({str(target)!r}) as tmp:\n"
            f"    p = pathlib.Path(tmp)\n"
            f"    (p / 'weights.bin' if p.is_dir() else p).write_bytes(b'x' * 1000)\n"
            f"    print(tmp, flush=True)\n    time.sleep(600)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert Path(proc.stdout.readline().strip()).exists()
    return proc


@pytest.mark.parametrize("kind", ["dir", "path"])
def test_a_killed_writers_temporary_is_swept_by_the_next_write(tmp_path, kind):
    target = tmp_path / "model"
    killed, live = _writer(target, kind), _writer(target, kind)
    try:
        killed.kill()  # SIGKILL: no finally runs, its temporary stays
        killed.wait()
        other_host = tmp_path / ".model.another-host-1.abcd.tmp"  # a shared disk's writer elsewhere
        other_host.write_text("theirs")
        left = sorted(p.name for p in tmp_path.iterdir())
        assert len(left) == 3 and any(f"-{killed.pid}." in n for n in left)
        with getattr(storage, f"atomic_{kind}")(target) as tmp:
            (Path(tmp) / "a.txt" if kind == "dir" else Path(tmp)).write_text("1")
        names = sorted(p.name for p in tmp_path.iterdir())
        assert not any(f"-{killed.pid}." in n for n in names)  # swept
        assert any(f"-{live.pid}." in n for n in names) and other_host.exists() and target.exists()
    finally:
        live.kill()
        live.wait()


def test_gcs_round_trip(gcs_emulator, tmp_path):
    uri = f"gs://{gcs_emulator}/storage-test"
    storage.write_text(f"{uri}/x/hello.txt", "héllo")
    assert storage.read_text(f"{uri}/x/hello.txt") == "héllo"
    assert storage.exists(f"{uri}/x/hello.txt")
    assert not storage.exists(f"{uri}/x/missing.txt")
    local = tmp_path / "tree"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "f.bin").write_bytes(b"\x00\x01")
    (local / "g.txt").write_text("g")
    storage.upload_dir(local, f"{uri}/tree")
    assert storage.list_files(f"{uri}/tree") == ["g.txt", "sub/f.bin"]
    with storage.local_dir(f"{uri}/tree") as copy:
        assert Path(copy, "sub", "f.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        storage.read_bytes(f"{uri}/x/missing.txt")


def test_gcs_directory_upload_puts_the_marker_last(gcs_emulator, tmp_path):
    uri = f"gs://{gcs_emulator}/storage-test/ordered"
    with storage.atomic_dir(uri, last=("kdrank.json",)) as tmp:
        for name in ("a.bin", "kdrank.json", "z.bin"):
            Path(tmp, name).write_text(name)
    bucket, prefix = storage.split_gcs(uri)
    blobs = list(storage.gcs_client().list_blobs(bucket, prefix=prefix + "/"))
    newest = max(blobs, key=lambda b: b.updated)
    assert newest.name.endswith("kdrank.json")


def test_remove_deletes_one_file_or_object_and_ignores_a_missing_one(gcs_emulator, tmp_path):
    uri = f"gs://{gcs_emulator}/storage-test/remove"
    for root in (str(tmp_path), uri):
        storage.write_text(storage.join(root, "kdrank.json"), "{}")
        storage.write_text(storage.join(root, "kept.txt"), "k")
        storage.remove(storage.join(root, "kdrank.json"))
        storage.remove(storage.join(root, "kdrank.json"))  # already gone: no error
        assert not storage.exists(storage.join(root, "kdrank.json"))
        assert storage.read_text(storage.join(root, "kept.txt")) == "k"


def test_open_binary_reads_only_the_ranges_it_is_asked_for(gcs_emulator, tmp_path):
    """A Parquet file's footer from gs:// costs kilobytes, not the object: label shards' teacher marks and
    row counts are read so. Counted from the responses the real client gets from the emulator."""
    local = tmp_path / "big.parquet"
    table = pa.table({"x": np.random.default_rng(0).random(1_000_000)})
    pq.write_table(table.replace_schema_metadata({b"k": b"v"}), local)
    uri = f"gs://{gcs_emulator}/storage-test/big.parquet"
    storage.write_bytes(uri, local.read_bytes())
    fetched = []

    def count(response, *args, **kwargs):
        fetched.append(int(response.headers.get("Content-Length", 0)))

    hooks = storage.gcs_client()._http.hooks["response"]
    hooks.append(count)
    try:
        with storage.open_binary(uri, chunk_size=64 * 1024) as file:
            found = pq.read_schema(file)
            rows = pq.ParquetFile(file).metadata.num_rows
            file.seek(3_000_000)
            middle = file.read(100)
    finally:
        hooks.remove(count)
    assert found.metadata[b"k"] == b"v" and rows == 1_000_000
    assert middle == local.read_bytes()[3_000_000:3_000_100]
    assert 0 < sum(fetched) < 512 * 1024 and local.stat().st_size > 7_000_000
    with storage.open_binary(local) as file:
        assert pq.read_schema(file).metadata[b"k"] == b"v"
    missing = f"gs://{gcs_emulator}/storage-test/missing.parquet"
    with pytest.raises(FileNotFoundError, match="missing.parquet"), storage.open_binary(missing):
        pass
