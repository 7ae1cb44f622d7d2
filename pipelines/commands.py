"""`kdrank pipeline compile|run|submit`: the training pipeline from the command line.

`register(subparsers)` adds the `pipeline` group to the `kdrank` parser; handlers import kfp and the
engine lazily so `kdrank --help` stays quick.
"""

from __future__ import annotations

import argparse
import json
import logging
import re

import yaml

from components.flow import PROFILES

log = logging.getLogger(__name__)

FORMATS = ["homedepot", "esci", "csv", "parquet", "jsonl"]


def parse_overrides(items: list[str] | None) -> dict:
    """['teacher.epochs=2', 'label.batch_size=128'] -> {'teacher': {'epochs': 2}, 'label': {...}}."""
    from components.kfp.common import STEPS

    overrides: dict[str, dict] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        step, dot, name = key.strip().partition(".")
        if not sep or not dot or not step or not name:
            raise ValueError(f"--set '{item}' is not STEP.SETTING=VALUE (e.g. teacher.epochs=2)")
        if step not in STEPS:
            raise ValueError(f"--set '{item}': unknown step '{step}'; steps are {list(STEPS)}")
        overrides.setdefault(step, {})[name] = _setting_value(raw)
    return overrides


def _setting_value(raw: str):
    """A --set value as YAML reads it, except that numbers in exponent form are numbers.

    YAML 1.1 (PyYAML) reads '1e-4' and '5E-5' as strings (it wants '1.0e-4'), and a learning rate is
    the setting most often written that way.
    """
    if not raw.strip():
        return ""
    value = yaml.safe_load(raw)
    if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
        return float(value)
    return value


def add_step_settings(parser) -> None:
    """--shards and --set (read by parse_overrides): on `kdrank run` and every `kdrank pipeline` command."""
    parser.add_argument("--shards", type=int, dest="num_shards",
                        help="labelling shards run in parallel (default: the profile's)")
    parser.add_argument("--set", action="append", metavar="STEP.SETTING=VALUE", dest="overrides",
                        help="override one step setting, e.g. --set teacher.epochs=2 (repeatable)")


def _run_parameters(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("run parameters (compiled in as defaults; a run may override them)")
    group.add_argument("--profile", choices=sorted(PROFILES), help="sizes of every step (default: demo)")
    add_step_settings(group)
    group.add_argument("--data", help="labelled pairs, path or gs:// URI (default: embedded synthetic data)")
    group.add_argument("--format", choices=FORMATS, help="format of --data (default: from the name)")
    group.add_argument("--teacher-model", help="teacher base model folder or gs:// URI (default: SmolLM2)")
    group.add_argument("--student-model", help="student base model folder or gs:// URI (default: MiniLM-L6)")
    group.add_argument("--repository", help="also export the student to this Triton model repository (path, gs://)")


# the flags of _cluster_options that are compiled into the YAML (none has an effect on a --package YAML)
CLUSTER_FLAGS = {"image": "--image", "cpu": "--cpu", "accelerator_type": "--accelerator-type",
                 "accelerator_count": "--accelerator-count", "node_selector": "--node-selector",
                 "toleration": "--toleration", "gcs_secret": "--gcs-secret", "gcs_secret_key": "--gcs-secret-key"}


def _cluster_options(parser: argparse.ArgumentParser) -> None:
    # no defaults here (None = not given; ClusterSettings holds the defaults), so `submit --package` sees
    # every flag given, even one given its default value
    group = parser.add_argument_group("cluster settings (compile time)")
    group.add_argument("--image", help="image of every step (default: $KDRANK_IMAGE, else kdrank:0.1.0)")
    group.add_argument("--cpu", action="store_true", default=None, help="request no GPU (all steps on CPU)")
    group.add_argument("--accelerator-type", help="GPU resource name to request (default: nvidia.com/gpu)")
    group.add_argument("--accelerator-count", type=int, help="GPUs per GPU step (default: 1)")
    group.add_argument("--node-selector", action="append", metavar="KEY=VALUE",
                       help="node label the GPU steps require (repeatable)")
    group.add_argument("--toleration", action="append", metavar="KEY[=VALUE]:EFFECT",
                       help="taint the GPU steps tolerate, e.g. nvidia.com/gpu=present:NoSchedule")
    group.add_argument("--gcs-secret", help="Kubernetes secret holding a GCS service-account key")
    group.add_argument("--gcs-secret-key", help="key of that secret (default: key.json)")
    group.add_argument("--pipeline-root", help="default pipeline root, e.g. gs://bucket/kdrank")


def _settings(args: argparse.Namespace):
    from pipelines.settings import ClusterSettings, Toleration, parse_label

    given = {name: getattr(args, name) for name in ("accelerator_type", "accelerator_count", "gcs_secret",
                                                     "gcs_secret_key") if getattr(args, name) is not None}
    return ClusterSettings(
        image=args.image, gpu=not args.cpu,
        node_selector=tuple(parse_label(s) for s in args.node_selector or ()),
        tolerations=tuple(Toleration.parse(t) for t in args.toleration or ()), **given,
    )


def _defaults(args: argparse.Namespace):
    from pipelines.training import RunDefaults

    return RunDefaults(profile=args.profile or "demo", num_shards=args.num_shards, data_uri=args.data or "",
                       data_format=args.format or "", teacher_base=args.teacher_model or "",
                       student_base=args.student_model or "", repository_uri=args.repository or "",
                       overrides=parse_overrides(args.overrides))


def _compile(args: argparse.Namespace) -> int:
    from pipelines.training import compile_pipeline

    print(compile_pipeline(args.output, _settings(args), _defaults(args), args.pipeline_root))
    return 0


def _run(args: argparse.Namespace) -> int:
    if not args.local:
        raise ValueError("only local runs start here (kdrank pipeline run --local); "
                         "to run on Kubeflow use: kdrank pipeline submit --host URL")
    from pipelines.local import run_local

    result = run_local(args.output, profile=args.profile or "demo", data_uri=args.data,
                       data_format=args.format, teacher_model=args.teacher_model,
                       student_model=args.student_model,
                       num_shards=args.num_shards, overrides=parse_overrides(args.overrides),
                       repository_uri=args.repository, cache=not args.no_cache, image=args.image)
    if args.json:
        print(json.dumps(result["metrics"]))
    return 0


def _submit(args: argparse.Namespace) -> int:
    import tempfile

    from pipelines.submit import SubmitOptions, submit
    from pipelines.training import compile_pipeline

    if args.package:
        given = [flag for name, flag in CLUSTER_FLAGS.items() if getattr(args, name) is not None]
        if given:
            raise ValueError(f"{', '.join(given)} set(s) how the pipeline is compiled, so it has no effect on "
                             f"--package {args.package}: compile a package with it (kdrank pipeline compile), "
                             "or leave --package out to compile one now")
    local = [f"{flag} {value}" for flag, value in (("--data", args.data), ("--teacher-model", args.teacher_model),
                                                   ("--student-model", args.student_model),
                                                   ("--repository", args.repository))
             if value and not str(value).startswith("gs://")]
    if local:
        raise ValueError(f"{', '.join(local)}: a cluster's pods cannot read this machine's paths; upload to gs:// "
                         "and pass that URI (kdrank run runs the pipeline here with local paths)")
    overrides = parse_overrides(args.overrides)
    explicit = {"profile": args.profile, "num_shards": _num_shards(args.num_shards, args.profile, overrides),
                "data_uri": args.data, "data_format": args.format, "teacher_base": args.teacher_model,
                "student_base": args.student_model, "repository_uri": args.repository}
    arguments = {k: v for k, v in explicit.items() if v is not None}
    arguments.update({f"{step}_settings": settings for step, settings in overrides.items()})
    options = SubmitOptions(host=args.host, experiment=args.experiment, run_name=args.run_name,
                            namespace=args.namespace, pipeline_root=args.pipeline_root,
                            enable_caching=False if args.no_cache else None,
                            service_account=args.service_account, arguments=arguments)
    with tempfile.TemporaryDirectory(prefix="kdrank-submit-") as tmp:
        package = args.package or compile_pipeline(f"{tmp}/distill.yaml", _settings(args), _defaults(args),
                                                   args.pipeline_root)
        run_id = submit(options, package)
    print(f"run {run_id} started at {args.host}")
    return 0


def _num_shards(num_shards: int | None, profile: str | None, overrides: dict) -> int | None:
    """The `num_shards` argument of a submitted run: --shards, else --set label.num_shards, else the shard
    count of the --profile given; None (the package's compiled default) when none of them is given."""
    from components.kfp.common import resolve_profile
    from components.kfp.plan import check_num_shards

    if num_shards is None:
        num_shards = overrides.get("label", {}).get("num_shards")
    if num_shards is None and profile:
        num_shards = resolve_profile(profile).label.get("num_shards", 1)
    if num_shards is not None:
        check_num_shards(num_shards)
    return num_shards


def register(subparsers) -> argparse.ArgumentParser:
    """Add `pipeline compile|run|submit` to the `kdrank` subcommands."""
    pipeline = subparsers.add_parser("pipeline", help="compile, run locally or submit the Kubeflow pipeline")
    sub = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")

    comp = sub.add_parser("compile", help="write the pipeline IR YAML a Kubeflow cluster accepts")
    comp.add_argument("--output", default="distill.yaml", help="YAML path or gs:// URI (%(default)s)")
    _run_parameters(comp)
    _cluster_options(comp)
    comp.set_defaults(handler=_compile)

    run = sub.add_parser("run", help="compile, then run that YAML on this machine (kfp.local)")
    run.add_argument("--local", action="store_true", help="run here with kfp.local (the only runner here)")
    run.add_argument("--output", default="runs/latest", help="local folder of the run (default: %(default)s)")
    run.add_argument("--no-cache", action="store_true", help="rerun every step, even finished ones")
    run.add_argument("--image", help="image name compiled into the YAML (local runs use this environment)")
    run.add_argument("--json", action="store_true", help="also print the metrics as one JSON object")
    _run_parameters(run)
    run.set_defaults(handler=_run)

    subm = sub.add_parser("submit", help="upload the pipeline to Kubeflow Pipelines and start a run")
    subm.add_argument("--host", required=True, help="Kubeflow Pipelines API URL (token: $KDRANK_KFP_TOKEN)")
    subm.add_argument("--package", help="a compiled YAML to submit (default: compile one now)")
    subm.add_argument("--experiment", default="kdrank", help="experiment name (default: kdrank)")
    subm.add_argument("--run-name", help="run name shown in the UI")
    subm.add_argument("--namespace", help="Kubernetes namespace (multi-user deployments)")
    subm.add_argument("--service-account", help="Kubernetes service account of the run's pods")
    subm.add_argument("--no-cache", action="store_true", help="rerun every step, even cached ones")
    _run_parameters(subm)
    _cluster_options(subm)
    subm.set_defaults(handler=_submit)
    return pipeline
