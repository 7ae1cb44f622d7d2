"""Paths and gs:// URIs behind one small API, with all-or-nothing writes.

Local writes go to a temporary name beside the target and are renamed when complete; gs:// writes
are staged locally and uploaded as whole objects (an object upload is atomic in GCS). A local
temporary left by a killed writer is removed by the next write of the same target. The
google-cloud-storage client is imported lazily so the engine runs where it is not installed.
With STORAGE_EMULATOR_HOST set, the client talks to that emulator with anonymous credentials.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO

GCS_PREFIX = "gs://"


def is_gcs(uri: str | os.PathLike) -> bool:
    return str(uri).startswith(GCS_PREFIX)


def split_gcs(uri: str) -> tuple[str, str]:
    """'gs://bucket/a/b' -> ('bucket', 'a/b')."""
    if not is_gcs(uri):
        raise ValueError(f"not a gs:// URI: {uri}")
    bucket, _, name = uri[len(GCS_PREFIX):].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri}")
    return bucket, name


def join(uri: str | os.PathLike, *parts: str) -> str:
    if is_gcs(uri):
        return "/".join([str(uri).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(uri).joinpath(*parts))


@lru_cache(maxsize=1)
def gcs_client():
    from google.cloud import storage  # lazy: not needed for local paths

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        project = os.environ.get("GOOGLE_CLOUD_PROJECT", "kdrank-local")
        return storage.Client(project=project, credentials=AnonymousCredentials())
    return storage.Client()


def _blob(uri: str):
    bucket, name = split_gcs(uri)
    return gcs_client().bucket(bucket).blob(name)


def exists(uri: str | os.PathLike) -> bool:
    if is_gcs(uri):
        return _blob(str(uri)).exists()
    return Path(uri).exists()


def remove(uri: str | os.PathLike) -> None:
    """Delete one file or object; nothing happens when it is not there."""
    if is_gcs(uri):
        from google.api_core.exceptions import NotFound

        with contextlib.suppress(NotFound):
            _blob(str(uri)).delete()
        return
    Path(uri).unlink(missing_ok=True)


def read_bytes(uri: str | os.PathLike) -> bytes:
    if is_gcs(uri):
        from google.api_core.exceptions import NotFound

        try:
            return _blob(str(uri)).download_as_bytes()
        except NotFound as err:
            raise FileNotFoundError(f"no such object: {uri}") from err
    return Path(uri).read_bytes()


def write_bytes(uri: str | os.PathLike, data: bytes) -> None:
    with atomic_path(uri) as tmp:
        Path(tmp).write_bytes(data)


def read_text(uri: str | os.PathLike, encoding: str = "utf-8") -> str:
    return read_bytes(uri).decode(encoding)


def write_text(uri: str | os.PathLike, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def _tmp_head(target: Path) -> str:
    """What every local temporary of `target` made on this host starts with; the writer's pid follows."""
    return f".{target.name}.{socket.gethostname()}-"


def _tmp_prefix(target: Path) -> str:
    return f"{_tmp_head(target)}{os.getpid()}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def sweep_orphans(target: str | os.PathLike) -> list[str]:
    """Remove the temporaries of earlier writes of `target` whose writer, on this host, is gone.

    A write killed outright (SIGKILL, the OOM killer) cannot clean up after itself, and a model or a
    training state leaves hundreds of MB to GB behind. Only temporaries named for this host and a pid
    that no longer runs are removed: a live writer's, or another host's on a shared disk, are kept.
    """
    target = Path(target)
    head = _tmp_head(target)
    removed = []
    for path in target.parent.glob(f"{glob.escape(head)}*.tmp*"):
        pid = path.name[len(head):].partition(".")[0]
        if not pid.isdigit() or _alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(str(path))
    return removed


@contextlib.contextmanager
def atomic_path(uri: str | os.PathLike) -> Iterator[str]:
    """Yield a local temporary file path; on success it becomes `uri`, on error it is removed."""
    uri = str(uri)
    if is_gcs(uri):
        with tempfile.TemporaryDirectory(prefix="kdrank-") as tmpdir:
            tmp = os.path.join(tmpdir, os.path.basename(uri) or "object")
            yield tmp
            _blob(uri).upload_from_filename(tmp)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(target)
    fd, tmp = tempfile.mkstemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@contextlib.contextmanager
def atomic_dir(uri: str | os.PathLike, *, last: tuple[str, ...] = ()) -> Iterator[str]:
    """Yield a local temporary directory; on success it replaces `uri` whole (or is uploaded).

    gs:// has no directory rename, so files are uploaded one by one with the relative paths in `last`
    (a completion marker such as kdrank.json) uploaded after everything else.
    """
    uri = str(uri)
    if is_gcs(uri):
        with tempfile.TemporaryDirectory(prefix="kdrank-") as tmpdir:
            yield tmpdir
            upload_dir(tmpdir, uri, last=last)
        return
    target = Path(uri)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_orphans(target)
    tmp = tempfile.mkdtemp(prefix=_tmp_prefix(target), suffix=".tmp", dir=target.parent)
    try:
        yield tmp
        if target.exists():
            old = f"{tmp}.old"
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def list_files(uri: str | os.PathLike) -> list[str]:
    """Relative paths of every file under a directory or gs:// prefix, sorted."""
    if is_gcs(uri):
        bucket, prefix = split_gcs(str(uri))
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        names = [b.name[len(prefix):] for b in gcs_client().list_blobs(bucket, prefix=prefix)]
        return sorted(n for n in names if n and not n.endswith("/"))
    root = Path(uri)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def upload_dir(local: str | os.PathLike, uri: str, *, last: tuple[str, ...] = ()) -> None:
    """Upload every file under `local` to `uri`; the relative paths in `last` go after the rest."""
    bucket_name, prefix = split_gcs(uri)
    bucket = gcs_client().bucket(bucket_name)
    for rel in sorted(list_files(local), key=lambda name: name in last):
        bucket.blob("/".join(p for p in (prefix.rstrip("/"), rel) if p)).upload_from_filename(
            os.path.join(local, rel)
        )


def download_dir(uri: str, local: str | os.PathLike) -> None:
    bucket_name, prefix = split_gcs(uri)
    bucket = gcs_client().bucket(bucket_name)
    files = list_files(uri)
    if not files:
        raise FileNotFoundError(f"nothing under {uri}")
    for rel in files:
        dest = Path(local) / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        bucket.blob("/".join(p for p in (prefix.rstrip("/"), rel) if p)).download_to_filename(str(dest))


@contextlib.contextmanager
def local_dir(uri: str | os.PathLike) -> Iterator[str]:
    """A local directory holding the contents of `uri` (downloaded first when it is gs://)."""
    if not is_gcs(uri):
        if not Path(uri).is_dir():
            raise FileNotFoundError(f"no such directory: {uri}")
        yield str(uri)
        return
    with tempfile.TemporaryDirectory(prefix="kdrank-") as tmpdir:
        download_dir(str(uri), tmpdir)
        yield tmpdir


READ_CHUNK = 8 * 1024 * 1024  # least bytes one ranged read of a gs:// object fetches (open_binary)


@contextlib.contextmanager
def open_binary(uri: str | os.PathLike, *, chunk_size: int = READ_CHUNK) -> Iterator[BinaryIO]:
    """`uri` open for reading, seekable. On gs:// each read fetches only the range it needs (at least
    `chunk_size` bytes, less at the object's end), all of one generation of the object: a Parquet file's
    schema or row count costs its footer, and some of its columns cost their column chunks, never the
    whole object (`local_file` downloads it whole)."""
    if not is_gcs(uri):
        with open(uri, "rb") as file:
            yield file
        return
    from google.api_core.exceptions import NotFound

    blob = _blob(str(uri))
    try:
        blob.reload()  # its size and generation: every range is read from this version of the object
    except NotFound as err:
        raise FileNotFoundError(f"no such object: {uri}") from err
    with blob.open("rb", chunk_size=chunk_size) as file:
        yield file


@contextlib.contextmanager
def local_file(uri: str | os.PathLike) -> Iterator[str]:
    """A local path holding the bytes of `uri` (downloaded first when it is gs://)."""
    if not is_gcs(uri):
        if not Path(uri).is_file():
            raise FileNotFoundError(f"no such file: {uri}")
        yield str(uri)
        return
    with tempfile.TemporaryDirectory(prefix="kdrank-") as tmpdir:
        path = os.path.join(tmpdir, os.path.basename(str(uri)) or "object")
        Path(path).write_bytes(read_bytes(uri))
        yield path
