"""Data step: labelled pairs (given, or the embedded synthetic set) validated and split by query.

The output Dataset is a folder: train/val/test Parquet, the product catalogue augmentation draws from,
the data summary, and `paths.json` naming each table relative to the folder (read with `dataset_paths`).
"""

import json
from pathlib import Path

from kfp.dsl import Dataset, Output

from components.kfp.common import kdrank_component

PATHS_FILE = "paths.json"
TABLES = ("train", "val", "test", "catalogue")


def prepare_inputs(data_uri: str, output_dir: str, profile, data_format: str = "") -> dict[str, str]:
    """Prepare `data_uri` (or write and prepare the synthetic default data) under `output_dir`.

    Synthetic data keeps its whole catalogue (products no query was graded on) for augmentation.
    Returns absolute paths by table name, and writes them relative to `output_dir` in paths.json.
    """
    from components.data import PrepareConfig, prepare_data

    source, catalogue = data_uri, None
    if not data_uri:
        from components.synthetic import SyntheticConfig, write_default_data

        written = write_default_data(str(Path(output_dir, "source")), SyntheticConfig(**profile.synthetic))
        source, catalogue, data_format = written["pairs"], written["catalogue"], "parquet"
    paths = prepare_data(source, output_dir, PrepareConfig(fmt=data_format or None, **profile.prepare))
    if catalogue:
        paths["catalogue"] = catalogue
    relative = {name: str(Path(paths[name]).relative_to(output_dir)) for name in TABLES}
    Path(output_dir, PATHS_FILE).write_text(json.dumps(relative, indent=2, sort_keys=True) + "\n")
    return {name: str(Path(output_dir, rel)) for name, rel in relative.items()}


def dataset_paths(folder: str) -> dict[str, str]:
    """Absolute paths of the tables of a data-step output folder."""
    index = Path(folder, PATHS_FILE)
    if not index.is_file():
        raise FileNotFoundError(f"{folder} is not an output of the data step: {PATHS_FILE} is missing")
    return {name: str(Path(folder, rel)) for name, rel in json.loads(index.read_text()).items()}


def dataset_metadata(folder: str, data_uri: str) -> dict:
    """Counts of a data-step output folder, for the artifact's metadata (shown in the Kubeflow UI)."""
    summary = json.loads(Path(folder, "summary.json").read_text())
    counts = {f"{name}_pairs": c["pairs"] for name, c in summary["counts"].items() if "pairs" in c}
    return {"source": data_uri or "synthetic", "num_grades": summary.get("num_grades"), **counts}


@kdrank_component
def prepare_data(
    data: Output[Dataset],
    profile: str = "demo",
    data_uri: str = "",
    data_format: str = "",
    synthetic_settings: dict = {},  # noqa: B006 (KFP needs a literal default for an optional dict parameter)
    prepare_settings: dict = {},  # noqa: B006
):
    """Validate labelled pairs (path or gs:// URI; empty = embedded synthetic data); split them by query."""
    from components.kfp.common import resolve_profile, start_step
    from components.kfp.data import dataset_metadata, prepare_inputs

    start_step("data")
    overrides = {"synthetic": synthetic_settings, "prepare": prepare_settings}
    prepare_inputs(data_uri, data.path, resolve_profile(profile, overrides=overrides), data_format)
    data.metadata.update(dataset_metadata(data.path, data_uri))
