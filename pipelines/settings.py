"""Compile-time cluster settings of the training pipeline: image, GPUs, requests, placement, secrets.

These become the pods' Kubernetes settings (KFP SDK calls, and kfp-kubernetes where the SDK has none);
`apply_settings` is the one place a task gets them. Local runs ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from components.kfp.common import CREDENTIALS_ENV, resolve_image

GPU_STEPS = ("teacher", "label", "student")  # the steps that request accelerators unless gpu=False
EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
# (CPU, memory) requests per step; the GPU steps hold a model and batches in host memory too.
RESOURCES: dict[str, tuple[str, str]] = {
    "plan": ("500m", "2Gi"),
    "data": ("1", "4Gi"),
    "teacher": ("4", "16Gi"),
    "augment": ("4", "8Gi"),
    "label": ("4", "16Gi"),
    "student": ("4", "16Gi"),
    "evaluate": ("4", "8Gi"),
    "export": ("2", "8Gi"),
    "reference": ("2", "8Gi"),
}


@dataclass(frozen=True)
class Toleration:
    """A pod toleration, parsed from 'KEY[=VALUE]:EFFECT' (e.g. 'nvidia.com/gpu=present:NoSchedule')."""

    key: str
    effect: str
    value: str = ""

    def __post_init__(self):
        if self.effect not in EFFECTS:
            raise ValueError(f"toleration '{self.key}': effect must be one of {EFFECTS}, got '{self.effect}'")
        if not self.key:
            raise ValueError("toleration needs a taint key")

    @property
    def operator(self) -> str:
        return "Equal" if self.value else "Exists"

    @classmethod
    def parse(cls, text: str) -> Toleration:
        head, sep, effect = text.rpartition(":")
        if not sep:
            raise ValueError(f"toleration '{text}' is not KEY[=VALUE]:EFFECT "
                             "(e.g. nvidia.com/gpu=present:NoSchedule)")
        key, _, value = head.partition("=")
        return cls(key=key.strip(), effect=effect.strip(), value=value.strip())


def parse_label(text: str) -> tuple[str, str]:
    """'cloud.google.com/gke-accelerator=nvidia-l4' -> (key, value)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not value.strip():
        raise ValueError(f"node selector '{text}' is not KEY=VALUE")
    return key.strip(), value.strip()


@dataclass(frozen=True)
class ClusterSettings:
    """How the compiled pipeline's pods are built and placed.

    `node_selector` and `tolerations` apply to the GPU steps (teacher, labelling, student), which are
    the ones that need special nodes; `gcs_secret` names a Kubernetes secret whose `gcs_secret_key`
    holds a service-account JSON key, given to every step as an environment variable.
    """

    image: str = field(default_factory=resolve_image)
    gpu: bool = True
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_count: int = 1
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    gcs_secret: str = ""
    gcs_secret_key: str = "key.json"
    label_retries: int = 2
    # teacher and student: a retried pod resumes the training from its saved state (components.resume)
    train_retries: int = 2
    resources: dict[str, tuple[str, str]] = field(default_factory=lambda: dict(RESOURCES))

    def __post_init__(self):
        object.__setattr__(self, "image", resolve_image(self.image))
        if self.accelerator_count < 1:
            raise ValueError(f"accelerator_count must be >= 1, got {self.accelerator_count}")
        for name in ("label_retries", "train_retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        missing = sorted(set(RESOURCES) - set(self.resources))
        if missing:
            raise ValueError(f"resources lack request(s) for step(s) {missing}")


def apply_settings(task, step: str, settings: ClusterSettings):
    """Give one task its display name, requests, accelerator, placement, secrets and retries."""
    from kfp import kubernetes

    cpu, memory = settings.resources[step]
    task.set_cpu_request(cpu).set_memory_request(memory)
    if step in GPU_STEPS:
        if settings.gpu:
            task.set_accelerator_type(settings.accelerator_type).set_accelerator_limit(settings.accelerator_count)
        for key, value in settings.node_selector:
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for toleration in settings.tolerations:
            kubernetes.add_toleration(task, key=toleration.key, operator=toleration.operator,
                                      value=toleration.value or None, effect=toleration.effect)
    if settings.gcs_secret:
        kubernetes.use_secret_as_env(task, secret_name=settings.gcs_secret,
                                     secret_key_to_env={settings.gcs_secret_key: CREDENTIALS_ENV})
    if step == "label" and settings.label_retries:
        task.set_retry(num_retries=settings.label_retries, backoff_duration="30s")
    if step in ("teacher", "student") and settings.train_retries:
        task.set_retry(num_retries=settings.train_retries, backoff_duration="30s")
    return task


def compile_to(pipeline, output: str) -> str:
    """Compile a `@dsl.pipeline` to IR YAML at `output` (a path or gs:// URI), written whole."""
    import os
    import tempfile

    from kfp import compiler

    from components import storage

    if not storage.is_gcs(output) and os.path.isdir(output):
        raise IsADirectoryError(f"{output} is a folder; give the path of the YAML file to write")
    with tempfile.TemporaryDirectory(prefix="kdrank-compile-") as tmp:
        local = os.path.join(tmp, "pipeline.yaml")
        compiler.Compiler().compile(pipeline, package_path=local)
        with open(local, "rb") as handle:
            storage.write_bytes(output, handle.read())
    return str(output)
