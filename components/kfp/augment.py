"""Augmentation step: unlabelled (query, product) pairs for the teacher to label.

Queries of the train split against the catalogue: bi-encoder and BM25 retrieval, random negatives.
Validation and test queries are left out, so the student never trains on the queries it is scored on: they
are not in the train split, and queries made from titles (`title_queries`) skip them.
"""

from kfp.dsl import Dataset, Input, Output

from components.kfp.common import kdrank_component

PAIRS_FILE = "pairs.parquet"


@kdrank_component
def augment_pairs(
    data: Input[Dataset],
    pairs: Output[Dataset],
    profile: str = "demo",
    settings: dict = {},  # noqa: B006 (KFP needs a literal default for an optional dict parameter)
):
    """Generate unlabelled pairs from the train queries and the catalogue (retrieval + random negatives)."""
    from pathlib import Path

    from components.augment import AugmentConfig
    from components.augment import augment_pairs as augment
    from components.kfp.augment import PAIRS_FILE
    from components.kfp.common import resolve_profile, scalar_metadata, start_step
    from components.kfp.data import dataset_paths

    start_step("augment")
    tables = dataset_paths(data.path)
    config = AugmentConfig(**resolve_profile(profile, overrides={"augment": settings}).augment)
    Path(pairs.path).mkdir(parents=True, exist_ok=True)
    summary = augment(tables["train"], tables["catalogue"], str(Path(pairs.path, PAIRS_FILE)), config,
                      held_out=(tables["val"], tables["test"]))
    pairs.metadata.update(scalar_metadata(summary))
