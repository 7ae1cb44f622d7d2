"""Export step: the student as ONNX inside a versioned Triton model repository (tokenizer, scorer, ensemble).

The repository artifact always holds version 1 of this run's student; with `repository_uri` (a path or
gs:// URI a Triton server watches) the student is also exported there as the next free version.
"""

from kfp.dsl import Input, Model, Output

from components.kfp.common import kdrank_component


@kdrank_component
def export_student(
    student: Input[Model],
    repository: Output[Model],
    model_name: str = "kdrank_student",
    repository_uri: str = "",
):
    """Export the student to ONNX and a Triton model repository; also publish it to `repository_uri` if set."""
    from components.kfp.common import start_step
    from serving.export import export_student as export

    start_step("export")
    manifest = export(student.path, repository.path, model_name=model_name, version=1)
    repository.metadata.update({"model_name": model_name, "onnx_sha256": manifest["onnx"]["sha256"],
                                "flavours": ", ".join(manifest["flavours"])})
    if repository_uri:
        published = export(student.path, repository_uri, model_name=model_name)
        repository.metadata.update({"published_to": repository_uri, "published_version": published["version"]})
