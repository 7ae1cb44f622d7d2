"""Labelling step: the teacher's grade probabilities for one shard of the unlabelled pairs (a GPU step).

The pipeline fans this step out over shards with `dsl.ParallelFor`; each shard reads only its own
rows, writes its own artifact and is retried alone, and the student step collects them all.
"""

from kfp.dsl import Dataset, Input, Model, Output

from components.kfp.common import kdrank_component


def label_kwargs(profile) -> dict:
    """The profile's keyword arguments for `label_shard` (the shard count is a pipeline parameter)."""
    return {k: v for k, v in profile.label.items() if k != "num_shards"}


@kdrank_component
def label_shard(
    pairs: Input[Dataset],
    teacher: Input[Model],
    labels: Output[Dataset],
    shard_index: int,
    num_shards: int,
    profile: str = "demo",
    settings: dict = {},  # noqa: B006 (KFP needs a literal default for an optional dict parameter)
):
    """Label shard `shard_index` of `num_shards` of the unlabelled pairs with the teacher."""
    from components.kfp.common import resolve_profile, start_step
    from components.kfp.label import label_kwargs
    from components.label import label_shard as label

    start_step(f"label shard {shard_index}/{num_shards}")
    kwargs = label_kwargs(resolve_profile(profile, overrides={"label": settings}))
    written = label(pairs.path, teacher.path, labels.path, shard_index, num_shards, **kwargs)
    labels.metadata.update({"shard_index": shard_index, "num_shards": num_shards, "file": str(written)})
