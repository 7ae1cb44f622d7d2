"""`kdrank`: one console script whose subcommands each call into one package.

Engine commands (run, data, score, evaluate) are defined here; `export`/`serve`/`rerank` come from
serving.cli, `monitor` from monitoring.cli, `pipeline` from pipelines.commands and `experiment` from
pipelines.experiments. Heavy imports
happen inside the handlers, so `kdrank --help` is quick.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from components.flow import PROFILES
from pipelines.commands import add_step_settings, parse_overrides


def _run(args: argparse.Namespace) -> int:
    from pipelines.local import run_local

    result = run_local(args.output, profile=args.profile, data_uri=args.data, data_format=args.format,
                       teacher_model=args.teacher_model, student_model=args.student_model,
                       num_shards=args.num_shards, overrides=parse_overrides(args.overrides))
    return 0 if result else 1


def _prepare(args: argparse.Namespace) -> int:
    from components.data import PrepareConfig, prepare_data

    paths = prepare_data(args.data, args.output, PrepareConfig(
        fmt=args.format, val_fraction=args.val_fraction, test_fraction=args.test_fraction, seed=args.seed,
        on_invalid=args.on_invalid, max_queries=args.max_queries))
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from components.synthetic import SyntheticConfig, write_default_data

    settings = dict(PROFILES[args.profile].synthetic)
    if args.seed is not None:
        settings["seed"] = args.seed
    for name, path in write_default_data(args.output, SyntheticConfig(**settings)).items():
        print(f"{name}: {path}")
    return 0


def _score(args: argparse.Namespace) -> int:
    from components.scoring import score_file

    print(score_file(args.model, args.input, args.output, fmt=args.format, batch_size=args.batch_size,
                     device=args.device))
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from components.evaluate import evaluate_checkpoint, metrics_table

    metrics = evaluate_checkpoint(args.model, args.data, args.output, fmt=args.format,
                                  batch_size=args.batch_size)
    if args.json:
        print(json.dumps(metrics))
    else:
        print(metrics_table({args.model: metrics}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kdrank", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    formats = ["homedepot", "esci", "csv", "parquet", "jsonl"]

    run = sub.add_parser("run", help="run the whole flow locally (compiled pipeline, kfp.local)")
    run.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    run.add_argument("--data", help="labelled pairs (path or gs:// URI); default: embedded synthetic data")
    run.add_argument("--format", choices=formats, help="format of --data (default: from the name)")
    run.add_argument("--output", default="runs/latest", help="where artifacts land (default: runs/latest)")
    run.add_argument("--teacher-model", help="teacher base model directory (default: SmolLM2-135M)")
    run.add_argument("--student-model", help="student base model directory (default: MiniLM-L6)")
    add_step_settings(run)
    run.set_defaults(handler=_run)

    data = sub.add_parser("data", help="prepare labelled data or write the synthetic default data")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    prep = data_sub.add_parser("prepare", help="validate and split labelled pairs by query")
    prep.add_argument("--data", required=True)
    prep.add_argument("--output", required=True)
    prep.add_argument("--format", choices=formats)
    prep.add_argument("--val-fraction", type=float, default=0.1)
    prep.add_argument("--test-fraction", type=float, default=0.1)
    prep.add_argument("--seed", type=int, default=13)
    prep.add_argument("--max-queries", type=int)
    prep.add_argument("--on-invalid", choices=["error", "drop"], default="error")
    prep.set_defaults(handler=_prepare)
    syn = data_sub.add_parser("synthetic", help="write the embedded synthetic data set")
    syn.add_argument("--output", required=True)
    syn.add_argument("--profile", default="demo", choices=sorted(PROFILES))
    syn.add_argument("--seed", type=int)
    syn.set_defaults(handler=_synthetic)

    score = sub.add_parser("score", help="score a pairs file with a teacher or student checkpoint")
    score.add_argument("--model", required=True)
    score.add_argument("--input", required=True, help="CSV/Parquet/JSONL with query and product_text columns")
    score.add_argument("--output", required=True, help="output file (.parquet, .csv or .jsonl)")
    score.add_argument("--format", choices=formats)
    score.add_argument("--batch-size", type=int, default=64)
    score.add_argument("--device", help="cpu, cuda, cuda:1 (default: GPU when present)")
    score.set_defaults(handler=_score)

    ev = sub.add_parser("evaluate", help="ranking metrics of a checkpoint on labelled pairs")
    ev.add_argument("--model", required=True)
    ev.add_argument("--data", required=True)
    ev.add_argument("--format", choices=formats)
    ev.add_argument("--output", help="also write metrics.json, metrics.md and scores here")
    ev.add_argument("--batch-size", type=int, default=64)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    ev.set_defaults(handler=_evaluate)

    from monitoring.cli import register as register_monitoring
    from pipelines.commands import register as register_pipeline
    from pipelines.experiments import register as register_experiments
    from serving.cli import register as register_serving

    register_serving(sub)
    register_monitoring(sub)
    register_pipeline(sub)
    register_experiments(sub)
    return parser


def _one_line(err: Exception) -> str:
    """The message of `err`; for an OSError the system raised, its reason and the path(s) it names."""
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        paths = " -> ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        return f"{err.strerror}: {paths}"
    return str(err)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from components.resume import TrainingInterrupted
    from components.schema import DataError

    try:
        return int(args.handler(args) or 0)
    except TrainingInterrupted as err:  # SIGTERM or Ctrl-C, the state saved: 143 or 130, as a process killed by it
        print(f"kdrank {args.command}: {err}", file=sys.stderr)
        return 128 + err.signum
    except (DataError, OSError, ValueError, RuntimeError) as err:  # OSError: a bad path (a file, not a folder...)
        print(f"kdrank {args.command}: error: {_one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
