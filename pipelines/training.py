"""The training pipeline: data -> teacher -> augment -> sharded labelling -> student -> evaluate -> export.

`build_pipeline` makes the `@dsl.pipeline` for one set of compile-time choices (image, GPUs, placement,
default profile and shard count); `compile_pipeline` writes the IR YAML a Kubeflow cluster accepts,
byte-identical for the same choices. Runtime parameters (profile, shard count, data and model URIs,
per-step overrides) keep those defaults and can be changed per run. (No `from __future__ import
annotations` here: KFP reads the pipeline function's annotations as types.)
"""

import copy
import dataclasses
import logging
from dataclasses import dataclass, field
from typing import List, NamedTuple  # noqa: UP035 (KFP reads these annotations)

from kfp import dsl
from kfp.dsl import Dataset, Markdown, Metrics, Model

from components.kfp.common import STEPS, resolve_profile, with_image
from pipelines.settings import ClusterSettings, apply_settings, compile_to
from serving.layout import DEFAULT_MODEL_NAME

log = logging.getLogger(__name__)

PIPELINE_NAME = "kdrank-distill"
DESCRIPTION = ("Distil an LLM relevance teacher into a cross-encoder re-ranker: prepare data, train the "
               "teacher, augment pairs, label them in parallel shards, train and evaluate the student, "
               "export it for Triton and build the monitoring reference set.")


class TrainingOutputs(NamedTuple):
    """Every artifact a run leaves, as pipeline outputs (local runs print where each landed)."""

    data: Dataset
    teacher: Model
    pairs: Dataset
    labels: List[Dataset]  # noqa: UP006
    student: Model
    report: Dataset
    metrics: Metrics
    table: Markdown
    repository: Model
    reference: Dataset


@dataclass(frozen=True)
class RunDefaults:
    """Compile-time defaults of the runtime parameters; `num_shards` None = the profile's own count.

    `overrides` maps a step to settings of its config, e.g. {"teacher": {"epochs": 2}}; each step gets
    only its own settings as a parameter, so changing one step's settings leaves the others cached.
    """

    profile: str = "demo"
    num_shards: int | None = None
    data_uri: str = ""
    data_format: str = ""
    teacher_base: str = ""
    student_base: str = ""
    model_name: str = DEFAULT_MODEL_NAME
    repository_uri: str = ""
    overrides: dict = field(default_factory=dict)

    def resolved(self) -> "RunDefaults":
        """Check the defaults now (unknown profile, bad shard count or override fail at compile time)."""
        from components.kfp.plan import check_num_shards, check_profile

        profile = resolve_profile(self.profile, self.teacher_base, self.student_base, self.overrides)
        check_profile(profile)  # first: it names a bad label.num_shards setting
        shards = self.num_shards if self.num_shards is not None else profile.label.get("num_shards", 1)
        check_num_shards(shards)
        if not self.model_name or not self.model_name.replace("_", "").replace("-", "").isalnum():
            raise ValueError(f"model_name must be letters, digits, '_' or '-', got '{self.model_name}'")
        return dataclasses.replace(self, num_shards=shards, overrides=copy.deepcopy(self.overrides))

    def settings(self, step: str) -> dict:
        return dict(self.overrides.get(step, {}))


def run_arguments(defaults: RunDefaults) -> dict:
    """The pipeline arguments of a run: one parameter per setting, each step's settings apart."""
    return {"profile": defaults.profile, "num_shards": defaults.num_shards, "data_uri": defaults.data_uri,
            "data_format": defaults.data_format, "teacher_base": defaults.teacher_base,
            "student_base": defaults.student_base, "model_name": defaults.model_name,
            "repository_uri": defaults.repository_uri,
            **{f"{step}_settings": defaults.settings(step) for step in STEPS}}


def _ops(image: str) -> dict:
    """Every component of the pipeline, built for `image`."""
    from components.kfp import augment, data, evaluate, export, label, monitor, plan, student, teacher

    return {name: with_image(op, image) for name, op in {
        "plan": plan.plan, "data": data.prepare_data, "teacher": teacher.train_teacher,
        "augment": augment.augment_pairs, "label": label.label_shard, "student": student.train_student,
        "evaluate": evaluate.evaluate, "export": export.export_student, "reference": monitor.build_reference,
    }.items()}


def build_pipeline(settings: ClusterSettings | None = None, defaults: RunDefaults | None = None,
                   pipeline_root: str | None = None):
    """The training `@dsl.pipeline` for these cluster settings and parameter defaults."""
    settings = settings or ClusterSettings()
    d = (defaults or RunDefaults()).resolved()
    ops = _ops(settings.image)

    def step(name: str, task, display: str):
        return apply_settings(task, name, settings).set_display_name(display)

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION, pipeline_root=pipeline_root)
    def kdrank_distill(
        profile: str = d.profile,
        num_shards: int = d.num_shards,
        data_uri: str = d.data_uri,
        data_format: str = d.data_format,
        teacher_base: str = d.teacher_base,
        student_base: str = d.student_base,
        model_name: str = d.model_name,
        repository_uri: str = d.repository_uri,
        synthetic_settings: dict = d.settings("synthetic"),
        prepare_settings: dict = d.settings("prepare"),
        teacher_settings: dict = d.settings("teacher"),
        augment_settings: dict = d.settings("augment"),
        label_settings: dict = d.settings("label"),
        student_settings: dict = d.settings("student"),
        evaluate_settings: dict = d.settings("evaluate"),
    ) -> TrainingOutputs:
        plan = step("plan", ops["plan"](
            profile=profile, num_shards=num_shards, data_uri=data_uri, data_format=data_format,
            teacher_base=teacher_base,
            student_base=student_base, synthetic_settings=synthetic_settings, prepare_settings=prepare_settings,
            teacher_settings=teacher_settings, augment_settings=augment_settings, label_settings=label_settings,
            student_settings=student_settings, evaluate_settings=evaluate_settings), "check parameters")
        data = step("data", ops["data"](profile=profile, data_uri=data_uri, data_format=data_format,
                                        synthetic_settings=synthetic_settings, prepare_settings=prepare_settings),
                    "prepare data").after(plan).outputs["data"]
        teacher = step("teacher", ops["teacher"](data=data, profile=profile, teacher_base=teacher_base,
                                                 settings=teacher_settings), "train teacher").outputs["teacher"]
        pairs = step("augment", ops["augment"](data=data, profile=profile, settings=augment_settings),
                     "augment pairs").outputs["pairs"]
        with dsl.ParallelFor(plan.output, name="label-shards") as shard_index:
            label = step("label", ops["label"](pairs=pairs, teacher=teacher, shard_index=shard_index,
                                               num_shards=num_shards, profile=profile, settings=label_settings),
                         "label shard")
        student = step("student", ops["student"](data=data, labels=dsl.Collected(label.outputs["labels"]),
                                                 profile=profile, student_base=student_base,
                                                 settings=student_settings), "train student").outputs["student"]
        evaluated = step("evaluate", ops["evaluate"](data=data, teacher=teacher, student=student, profile=profile,
                                                     settings=evaluate_settings), "evaluate")
        repository = step("export", ops["export"](student=student, model_name=model_name,
                                                  repository_uri=repository_uri), "export for Triton")
        reference = step("reference", ops["reference"](data=data, teacher=teacher, student=student,
                                                       model_name=model_name), "monitoring reference set")
        return TrainingOutputs(
            data=data, teacher=teacher, pairs=pairs, labels=dsl.Collected(label.outputs["labels"]),
            student=student, report=evaluated.outputs["report"], metrics=evaluated.outputs["metrics"],
            table=evaluated.outputs["table"], repository=repository.outputs["repository"],
            reference=reference.outputs["reference"],
        )

    return kdrank_distill


def compile_pipeline(output: str, settings: ClusterSettings | None = None,
                     defaults: RunDefaults | None = None, pipeline_root: str | None = None) -> str:
    """Compile the training pipeline to IR YAML at `output` (a path or gs:// URI), written whole."""
    compile_to(build_pipeline(settings, defaults, pipeline_root), output)
    log.info("compiled %s to %s", PIPELINE_NAME, output)
    return str(output)
