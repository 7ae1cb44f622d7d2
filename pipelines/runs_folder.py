"""The files of a `kdrank experiment run` folder that outlive its models: results.jsonl (one row per finished
run), each run's training record, and the rescored test sets under rescored/NAME/."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = "results.jsonl"


def training_record(runs_dir: str | Path, run: str) -> Path | None:
    """A run's training record: its checkpoint's kdrank.json, else eval/RUN/checkpoint.json (a row merged
    from a GPU bundle or restored from an archive, with no checkpoint here)."""
    candidates = (Path(runs_dir, "models", run, "kdrank.json"), Path(runs_dir, "eval", run, "checkpoint.json"))
    return next((p for p in candidates if p.is_file()), None)


def read_results(out: str | Path) -> list[dict]:
    path = Path(out, RESULTS)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_result(out: str | Path, row: dict) -> None:
    """Add (or replace) one run's row; the file is rewritten whole through a temporary file."""
    from components.evaluate import json_safe

    rows = [r for r in read_results(out) if r["run"] != row["run"]] + [json_safe(row)]
    path = Path(out, RESULTS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    tmp.replace(path)


def rescore_dir(runs_dir: str | Path, name: str) -> Path:
    """Where `rescore` keeps test set NAME of a runs folder: test.parquet, results.jsonl, eval/RUN/."""
    if not name or not all(c.isalnum() or c in "-_" for c in name):
        raise ValueError(f"test set name {name!r} must be letters, digits, '-' or '_'")
    return Path(runs_dir, "rescored", name)
