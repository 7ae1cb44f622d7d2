"""Put the results archive a GPU session sent back in place of the repository's copy.

`gpu_run.sh archive` merges the machine's runs into a copy of the checkout's archive and sends it back
in parts, within the device tool's limits (8 files, 16 MiB each): `archive.tgz` (manifest, rows,
per-pair scores, training records, the augmented pair sets) and one `labels-NAME.tgz` per label set that
the checkout's archive does not already hold as it is (a 16x set is about 7 MB). This rebuilds the
whole archive from those parts and the current one: every label set the new manifest names must come
from a part or, unchanged, from the current archive, and every pair set it names must be in
archive.tgz. Every label and pair set is checked against its record, and the archive is replaced whole,
or not at all.

    PYTHONPATH=. python tests/benchmarks/gpu_archive.py --archive docs/results/archive/full \
        FILES_AT/archive.tgz FILES_AT/labels-*.tgz
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from components import storage
from pipelines import pair_sets, teacher_labels
from pipelines.archive import MANIFEST, ArchiveError


def _extract(part: Path, into: Path) -> None:
    with tarfile.open(part) as tar:
        tar.extractall(into, filter="data")  # refuses absolute paths, links out of the folder, devices


def assemble(archive: str | Path, parts: list[str | Path]) -> list[str]:
    """Replace `archive` with the one in `parts` (archive.tgz first, then labels-*.tgz); the label sets."""
    archive = Path(archive)
    main = [Path(p) for p in parts if Path(p).name == "archive.tgz"]
    sets = [Path(p) for p in parts if Path(p).name.startswith("labels-")]
    other = [str(p) for p in parts if Path(p) not in (*main, *sets)]
    if len(main) != 1 or other:
        raise ArchiveError(f"expected one archive.tgz and labels-NAME.tgz files, got {[str(p) for p in parts]}")
    with tempfile.TemporaryDirectory() as tmp:
        new = Path(tmp, "archive")
        _extract(main[0], new)
        if not (new / MANIFEST).is_file():
            raise ArchiveError(f"{main[0]} holds no {MANIFEST}: not an archive made by `kdrank experiment archive`")
        for part in sets:
            _extract(part, new)
        manifest = json.loads((new / MANIFEST).read_text())
        names, pairs = manifest.get("labels", []), manifest.get("pairs", [])
        for name in names:
            if not (new / "labels" / name).is_dir():
                if not (archive / "labels" / name).is_dir():
                    raise ArchiveError(f"label set {name} is in the new manifest, but came back in no part and "
                                       f"{archive} does not hold it: was its labels-{name}.tgz left out?")
                shutil.copytree(archive / "labels" / name, new / "labels" / name)
        extra = sorted(p.name for p in (new / "labels").glob("*") if p.name not in names)
        if extra:
            raise ArchiveError(f"label sets {extra} came back but the manifest does not name them")
        if missing := [name for name in pairs if not (new / "pairs" / name).is_dir()]:
            raise ArchiveError(f"pair set(s) {missing} are in the new manifest but not in {main[0]}")
        try:
            for name in names:
                teacher_labels.check_stored(new / "labels" / name)
            for name in pairs:
                pair_sets.check_stored(new / "pairs" / name)
        except (teacher_labels.LabelsMismatch, pair_sets.PairsMismatch) as err:
            raise ArchiveError(str(err)) from None
        with storage.atomic_dir(str(archive)) as target:
            shutil.copytree(new, target, dirs_exist_ok=True)
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archive", required=True, help="the archive to replace, e.g. docs/results/archive/full")
    parser.add_argument("parts", nargs="+", help="archive.tgz and labels-NAME.tgz from gpu_run.sh archive")
    args = parser.parse_args(argv)
    try:
        names = assemble(args.archive, args.parts)
    except (ArchiveError, OSError, tarfile.TarError) as err:
        print(f"gpu_archive: {err}", file=sys.stderr)
        return 2
    runs = json.loads(Path(args.archive, MANIFEST).read_text())["runs"]
    print(f"{args.archive}: {len(runs)} run(s), label sets {', '.join(names) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
