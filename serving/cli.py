"""`kdrank export`, `kdrank serve` and `kdrank rerank`: the serving subcommands (imports in handlers)."""

from __future__ import annotations

import argparse
import json
import sys

from serving import layout


def _export(args: argparse.Namespace) -> int:
    from serving.configs import ServingOptions
    from serving.export import export_student

    opts = ServingOptions(max_batch_size=args.max_batch_size, max_queue_delay_us=args.queue_delay_us,
                          cpu_instances=args.cpu_instances, cpu_threads=args.cpu_threads,
                          gpu_instances=args.gpu_instances, trt_precision=args.trt_precision,
                          max_text_chars=args.max_text_chars)
    manifest = export_student(args.model, args.output, model_name=args.name, version=args.version,
                              max_length=args.max_length, opset=args.opset,
                              flavours=args.flavour or layout.FLAVOURS, options=opts)
    print(json.dumps({k: manifest[k] for k in ("model_name", "version", "max_length", "flavours")}
                     | {"onnx_sha256": manifest["onnx"]["sha256"], "output": args.output}))
    return 0


def _serve(args: argparse.Namespace) -> int:
    import contextlib
    import signal

    from components import storage
    from serving.server import ServerConfig, TritonServer

    def interrupt(signum, frame):  # SIGTERM (docker stop, kubelet) and SIGINT (Ctrl-C) stop the server cleanly
        raise KeyboardInterrupt

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    with contextlib.ExitStack() as stack:
        repository = args.repository
        if storage.is_gcs(repository):  # the bundled server reads a local copy; NGC Triton reads gs:// itself
            repository = stack.enter_context(storage.local_dir(repository))
        config = ServerConfig(repository=repository, http_port=args.http_port, grpc_port=args.grpc_port,
                              metrics_port=args.metrics_port, load_models=tuple(args.load_model or ["*"]),
                              ready_timeout_s=args.ready_timeout, exit_timeout_s=args.exit_timeout,
                              log_path=args.log_file)
        server = stack.enter_context(TritonServer(config))
        print(f"tritonserver ready: http {server.http_url}  grpc {server.grpc_url}  "
              f"metrics {server.metrics_url}\nlog: {server.log_path}   (Ctrl-C stops it)", flush=True)
        code = server.wait()
        if not server.stop_requested:
            server.stop()  # keeps the log of a server that died
            print(f"tritonserver exited on its own with code {code}:\n{server.failure_summary()}\n"
                  f"(full log: {server.log_path})", file=sys.stderr)
            return 1
        note = "" if code == 0 else f" (exit code {code}; models still unloading at the exit timeout)"
        print(f"tritonserver stopped{note}", flush=True)
    return 0


def _read_products(path: str) -> list[str]:
    from components import storage

    text = sys.stdin.read() if path == "-" else storage.read_text(path)
    products = [line.strip() for line in text.splitlines() if line.strip()]
    if not products:
        raise ValueError(f"{path}: no products (expected one product text per line)")
    return products


def _rerank(args: argparse.Namespace) -> int:
    from serving.client import RerankClient
    from serving.requestlog import RequestLogger

    products = _read_products(args.products)
    # the whole request is written once, after the ranking is printed: a sink that fails loses no result
    logger = RequestLogger(args.log, fmt=args.log_format, flush_rows=len(products) + 1) if args.log else None
    with RerankClient(args.url, protocol=args.protocol, model=args.model, timeout_s=args.timeout,
                      logger=logger) as client:
        ranked = client.rerank(args.query, products)
    if args.json:
        print(json.dumps([{"product": p, "score": s} for p, s in ranked], ensure_ascii=False))
    else:
        for product, score in ranked:
            print(f"{score:.6f}\t{product}")
    sys.stdout.flush()
    if logger is not None:
        logger.close()  # RequestLogError names the sink
    return 0


def register(subparsers) -> None:
    """Add `export`, `serve` and `rerank` to an argparse subparsers object."""
    ex = subparsers.add_parser("export", help="export a student to ONNX + a Triton model repository")
    ex.add_argument("--model", required=True, help="student checkpoint directory (local or gs://)")
    ex.add_argument("--output", required=True, help="repository root (local path or gs:// URI)")
    ex.add_argument("--name", default=layout.DEFAULT_MODEL_NAME, help="ensemble model name")
    ex.add_argument("--version", type=int, help="model version (default: the next free one)")
    ex.add_argument("--max-length", type=int, help="token limit per pair (default: the checkpoint's)")
    ex.add_argument("--opset", type=int, default=18)
    ex.add_argument("--flavour", action="append", choices=layout.FLAVOURS,
                    help="repository flavour to write (repeatable; default: both)")
    ex.add_argument("--max-batch-size", type=int, default=512, help="pairs per batch and per request")
    ex.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batcher queue delay")
    ex.add_argument("--cpu-instances", type=int, default=2, help="local flavour: ONNX Runtime instances")
    ex.add_argument("--cpu-threads", type=int, default=0, help="local flavour: threads each (0 = all)")
    ex.add_argument("--gpu-instances", type=int, default=1, help="production flavour: instances per GPU")
    ex.add_argument("--trt-precision", choices=["FP16", "FP32"], default="FP16")
    ex.add_argument("--max-text-chars", type=int, default=2048, help="longer texts get an error response")
    ex.set_defaults(handler=_export)

    sv = subparsers.add_parser("serve", help="run the bundled tritonserver on a repository (127.0.0.1)")
    sv.add_argument("--repository", required=True,
                    help="export output or model repository (its local flavour is served)")
    sv.add_argument("--http-port", type=int, default=8000)
    sv.add_argument("--grpc-port", type=int, default=8001)
    sv.add_argument("--metrics-port", type=int, default=8002)
    sv.add_argument("--load-model", action="append", help="model to load at start (repeatable; default: all)")
    sv.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for readiness")
    sv.add_argument("--exit-timeout", type=int, default=10, help="seconds to drain requests on stop")
    sv.add_argument("--log-file", help="server log file (default: a temporary file)")
    sv.set_defaults(handler=_serve)

    rr = subparsers.add_parser("rerank", help="rerank products for a query through Triton")
    rr.add_argument("--query", required=True)
    rr.add_argument("--products", required=True, help="file with one product text per line ('-' = stdin)")
    rr.add_argument("--url", help="HOST:PORT (default: 127.0.0.1:8001 for grpc, :8000 for http)")
    rr.add_argument("--protocol", choices=["grpc", "http"], default="grpc")
    rr.add_argument("--model", default=layout.DEFAULT_MODEL_NAME)
    rr.add_argument("--timeout", type=float, default=60.0)
    rr.add_argument("--log", help="request log sink: directory or gs:// prefix, or a local .jsonl file")
    rr.add_argument("--log-format", choices=["jsonl", "parquet"], help="part-file format (default: jsonl)")
    rr.add_argument("--json", action="store_true", help="print JSON instead of score<TAB>product lines")
    rr.set_defaults(handler=_rerank)


def main(argv: list[str] | None = None) -> int:
    """`python -m serving.cli ...`: the serving subcommands alone (what a serving image needs)."""
    import logging

    parser = argparse.ArgumentParser(prog="kdrank", description=__doc__.splitlines()[0])
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return int(args.handler(args) or 0)
    except (OSError, ValueError, RuntimeError) as err:  # OSError: FileExistsError, unreachable sinks, ...
        print(f"kdrank {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
