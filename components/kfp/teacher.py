"""Teacher step: fine-tune the decoder LLM as a K-grade classifier with soft targets (a GPU step)."""

from kfp.dsl import Dataset, Input, Model, Output

from components.kfp.common import kdrank_component


@kdrank_component
def train_teacher(
    data: Input[Dataset],
    teacher: Output[Model],
    profile: str = "demo",
    teacher_base: str = "",
    settings: dict = {},  # noqa: B006 (KFP needs a literal default for an optional dict parameter)
):
    """Fine-tune the teacher LLM (base: path or gs:// URI; empty = packaged SmolLM2) on the train split."""
    from components.kfp.common import exit_on_stop, resolve_profile, scalar_metadata, start_step, state_location
    from components.kfp.data import dataset_paths
    from components.teacher import TeacherConfig
    from components.teacher import train_teacher as train

    start_step("teacher")
    tables = dataset_paths(data.path)
    profile_ = resolve_profile(profile, teacher_base=teacher_base, overrides={"teacher": settings})
    config = TeacherConfig(**profile_.teacher)
    with exit_on_stop():
        summary = train(tables["train"], tables["val"], teacher.path, config, state_dir=state_location(teacher))
    teacher.metadata.update({"role": "teacher", "base_model": teacher_base or "default",
                             **scalar_metadata(summary)})
