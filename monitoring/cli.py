"""`kdrank monitor`: check a window of served traffic; `kdrank monitor ui`: browse the history.

Exit status of `kdrank monitor`: 0 when every test passes (warnings allowed), 1 when any test fails
(so a scheduler can alert), 2 on bad input (the message names the file, row and column).
"""

from __future__ import annotations

import argparse
import json
import sys

from serving.layout import DEFAULT_MODEL_NAME


def _at_least_one(text: str) -> int:
    """argparse type of a size option: a whole number >= 1 (argparse names the option in its error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _monitor(args: argparse.Namespace) -> int:
    from monitoring.job import format_summary, monitor
    from monitoring.workspace import default_workspace

    sizes = {k: v for k, v in (("sample_size", args.sample_size), ("max_pairs_per_query", args.max_pairs_per_query),
                                ("reference_size", args.reference_size)) if v is not None}
    result = monitor(
        args.window, args.reference, args.output, teacher_dir=args.teacher, student_dir=args.student,
        thresholds=args.thresholds, overrides=args.set, seed=args.seed, batch_size=args.batch_size,
        workspace=None if args.no_workspace else (args.workspace or default_workspace()), **sizes,
    )
    print(json.dumps(result.summary, indent=2, default=str) if args.json else format_summary(result.summary))
    print(f"report: {result.html_path}\nsummary: {result.json_path}", file=sys.stderr)
    return 0 if result.passed else 1


def _ui(args: argparse.Namespace) -> int:
    from monitoring.workspace import default_workspace, serve_ui

    return serve_ui(args.workspace or default_workspace(), port=args.port)


def _reference(args: argparse.Namespace) -> int:
    from monitoring.reference import build_reference_set, served_model

    name, version = served_model(args.manifest) if args.manifest else (args.model_name, args.model_version)
    print(build_reference_set(args.test, args.teacher, args.student, args.output, model_name=name,
                              model_version=version, max_pairs=args.max_pairs, seed=args.seed,
                              batch_size=args.batch_size))
    return 0


def _add(args: argparse.Namespace) -> int:
    from evidently.core.report import Snapshot

    from components import storage
    from monitoring.workspace import add_to_workspace, default_workspace

    for uri in args.snapshots:
        with storage.local_file(uri) as local:
            added = add_to_workspace(Snapshot.load(local), args.workspace or default_workspace())
        print(f"{uri}: snapshot {added['snapshot_id']} in {added['dir']}")
    return 0


def _compile(args: argparse.Namespace) -> int:
    from pipelines.monitoring import compile_monitoring_pipeline
    from pipelines.settings import ClusterSettings

    settings = ClusterSettings(image=args.image, gcs_secret=args.gcs_secret, gcs_secret_key=args.gcs_secret_key)
    print(compile_monitoring_pipeline(args.output, settings, args.pipeline_root))
    return 0


def _handler(args: argparse.Namespace) -> int:
    if args.monitor_command:
        actions = {"ui": _ui, "reference": _reference, "add": _add, "compile": _compile}
        return actions[args.monitor_command](args)
    missing = [f"--{name}" for name in ("window", "reference", "output") if not getattr(args, name)]
    if missing:
        args.parser.error(f"the following arguments are required: {', '.join(missing)}")
    return _monitor(args)


def register(subparsers) -> None:
    """Add `monitor` (and `monitor ui`) to the `kdrank` subcommands."""
    parser = subparsers.add_parser(
        "monitor", help="drift report of a window of served requests (teacher agreement, score/input drift)",
        description="Sample a window of logged rerank requests, label it with the teacher and compare it "
                    "with the reference set in an Evidently report. Exit 0: all tests passed; 1: a test "
                    "failed; 2: bad input.")
    parser.add_argument("--window", help="request log: a JSONL/Parquet file or a directory of them, local or gs://")
    parser.add_argument("--reference", help="reference set directory (local or gs://)")
    parser.add_argument("--output", help="directory for report.html, summary.json, snapshot.json (or gs://)")
    parser.add_argument("--teacher", help="teacher checkpoint, local or gs:// (default: the one recorded in "
                                           "the reference set, which labelled it)")
    parser.add_argument("--student", help="student checkpoint: scores windows logged without scores, and its "
                                           "calibration maps scores to grades (default: the reference's)")
    parser.add_argument("--thresholds", help="YAML overriding monitoring/thresholds.yaml (may be partial)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override one threshold, e.g. --set agreement.mae_max=0.3 (repeatable)")
    parser.add_argument("--sample-size", type=_at_least_one, help="pairs labelled by the teacher (default 2000)")
    parser.add_argument("--max-pairs-per-query", type=_at_least_one, help="pairs per sampled query (default 10)")
    parser.add_argument("--reference-size", type=_at_least_one, help="reference pairs compared (default 5000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workspace", help="Evidently workspace directory the run is appended to "
                                            "(default: $KDRANK_MONITOR_WORKSPACE or ./evidently-workspace)")
    parser.add_argument("--no-workspace", action="store_true", help="do not append to a workspace")
    parser.add_argument("--json", action="store_true", help="print the JSON summary instead of the table")
    parser.set_defaults(handler=_handler, monitor_command=None, parser=parser)

    actions = parser.add_subparsers(dest="monitor_command", metavar="ACTION")
    ui = actions.add_parser("ui", help="start the Evidently UI on 127.0.0.1 over the monitoring workspace")
    ui.add_argument("--workspace", help="workspace directory (default: $KDRANK_MONITOR_WORKSPACE or "
                                        "./evidently-workspace)")
    ui.add_argument("--port", type=int, default=8000)

    ref = actions.add_parser("reference", help="build the reference set: held-out pairs scored by teacher "
                                               "and student (the training pipeline does this too)")
    ref.add_argument("--test", required=True, help="held-out labelled pairs (Parquet file or directory)")
    ref.add_argument("--teacher", required=True, help="teacher checkpoint")
    ref.add_argument("--student", required=True, help="student checkpoint, as exported and served")
    ref.add_argument("--output", required=True, help="reference set directory (local or gs://)")
    ref.add_argument("--manifest", help="Triton export (directory or manifest.json): served name and version")
    ref.add_argument("--model-name", default=DEFAULT_MODEL_NAME, help="served name (without --manifest)")
    ref.add_argument("--model-version", default="1", help="served model version (without --manifest)")
    ref.add_argument("--max-pairs", type=int, default=5000)
    ref.add_argument("--seed", type=int, default=0)
    ref.add_argument("--batch-size", type=int, default=64)

    comp = actions.add_parser("compile", help="write the monitoring pipeline's IR YAML for Kubeflow")
    comp.add_argument("--output", default="monitor.yaml", help="YAML path or gs:// URI (%(default)s)")
    comp.add_argument("--image", help="image of both steps (default: $KDRANK_IMAGE, else kdrank:0.1.0)")
    comp.add_argument("--gcs-secret", default="", help="Kubernetes secret holding a GCS service-account key")
    comp.add_argument("--gcs-secret-key", default="key.json", help="key of that secret (default: key.json)")
    comp.add_argument("--pipeline-root", help="default pipeline root, e.g. gs://bucket/kdrank-monitoring")

    add = actions.add_parser("add", help="append saved snapshots (e.g. of pipeline runs) to a workspace")
    add.add_argument("snapshots", nargs="+", help="snapshot.json files, local or gs://")
    add.add_argument("--workspace", help="workspace directory (default: $KDRANK_MONITOR_WORKSPACE or "
                                         "./evidently-workspace)")
