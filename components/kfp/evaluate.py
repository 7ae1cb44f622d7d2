"""Evaluation step: teacher, student and a BM25 baseline on the held-out test queries.

Writes per-model metrics and scores to a report folder, the comparison table as a Markdown artifact
(rendered by the Kubeflow UI) and logs the headline figures on a Metrics artifact.
"""

from pathlib import Path

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output

from components.kfp.common import kdrank_component, write_json

HEADLINE = ("ndcg@5", "ndcg@10", "pairwise_accuracy", "spearman", "rmse")


def evaluate_models(checkpoints: dict[str, str], test_uri: str, output_dir: str,
                    baselines: tuple[str, ...] = ("bm25",), **settings) -> dict[str, dict]:
    """Metrics of each checkpoint (name -> directory) and baseline on `test_uri`; one sub-folder each."""
    from components.evaluate import evaluate_baseline, evaluate_checkpoint, metrics_table

    results = {}
    for name, model_dir in checkpoints.items():
        results[name] = evaluate_checkpoint(model_dir, test_uri, str(Path(output_dir, name)), name=name,
                                            **settings)
    for kind in baselines:
        folder = str(Path(output_dir, f"baseline-{kind}"))
        results[f"baseline {kind}"] = evaluate_baseline(kind, test_uri, folder)
    Path(output_dir, "metrics.md").write_text(metrics_table(results))
    write_json(str(Path(output_dir, "metrics.json")), results)
    return results


@kdrank_component
def evaluate(
    data: Input[Dataset],
    teacher: Input[Model],
    student: Input[Model],
    report: Output[Dataset],
    metrics: Output[Metrics],
    table: Output[Markdown],
    profile: str = "demo",
    settings: dict = {},  # noqa: B006 (KFP needs a literal default for an optional dict parameter)
):
    """Rank the test queries with teacher, student and BM25; log NDCG, pairwise accuracy, Spearman, RMSE."""
    from pathlib import Path

    from components.kfp.common import log_metrics, resolve_profile, start_step, write_json
    from components.kfp.data import dataset_paths
    from components.kfp.evaluate import HEADLINE, evaluate_models

    start_step("evaluate")
    kwargs = resolve_profile(profile, overrides={"evaluate": settings}).evaluate
    results = evaluate_models({"teacher": teacher.path, "student": student.path},
                              dataset_paths(data.path)["test"], report.path, **kwargs)
    for name in ("student", "teacher"):
        log_metrics(metrics, {k: results[name][k] for k in HEADLINE}, prefix=f"{name}_")
    write_json(metrics.path, results)
    Path(table.path).write_text(Path(report.path, "metrics.md").read_text())
