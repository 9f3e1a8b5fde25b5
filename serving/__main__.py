"""CLI: `python -m serving export|repo|bundle|serve|start|stop ...`, thin wrappers over the package."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from serving.errors import ServingError
from settings import run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    export = sub.add_parser("export", help="DLRM weights -> ONNX with a parity check")
    export.add_argument("model_path", type=Path)
    export.add_argument("schema_path", type=Path)
    export.add_argument("out_path", type=Path)
    export.add_argument("--torchscript", type=Path, help="also write a TorchScript module here")

    repo = sub.add_parser("repo", help="add an ONNX model version to a Triton repository")
    repo.add_argument("onnx_path", type=Path)
    repo.add_argument("schema_path", type=Path)
    repo.add_argument("out_dir", type=Path)
    repo.add_argument("--model-name", default="dlrm")
    repo.add_argument("--version", type=int, default=1)
    repo.add_argument("--max-batch-size", type=int, default=1024)
    repo.add_argument("--instance-kind", choices=["KIND_CPU", "KIND_GPU"], default="KIND_CPU")
    repo.add_argument("--max-queue-delay-us", type=int, default=None,
                      help="dynamic batcher queue delay (default: 0 on KIND_CPU, 500 on KIND_GPU)")

    bundle = sub.add_parser("bundle", help="build <serving_dir>/<version>/ from a model dir")
    bundle.add_argument("model_dir", type=Path)
    bundle.add_argument("serving_dir", type=Path)
    bundle.add_argument("version")
    bundle.add_argument("--model-name", default="dlrm")

    for name, help_text in (("serve", "run Triton in the foreground"), ("start", "start a detached Triton")):
        server = sub.add_parser(name, help=help_text)
        server.add_argument("source", type=Path, help="serving bundle or Triton repository")
        server.add_argument("--http-port", type=int, default=8000)
        server.add_argument("--grpc-port", type=int, default=8001)
        server.add_argument("--metrics-port", type=int)
        server.add_argument("--model-name")
        server.add_argument("--host", default="127.0.0.1")
        if name == "start":
            server.add_argument("--state-dir", type=Path, required=True)

    stop = sub.add_parser("stop", help="stop the detached Triton recorded in a state dir")
    stop.add_argument("--state-dir", type=Path, required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(lambda: _run(args), ServingError, exit_code=1)


def _run(args: argparse.Namespace) -> None:
    if args.command == "export":
        from serving.export import export_onnx, export_torchscript

        print(export_onnx(args.model_path, args.schema_path, args.out_path))
        if args.torchscript:
            print(export_torchscript(args.model_path, args.torchscript))
    elif args.command == "repo":
        from serving.triton_repo import build_repository

        print(build_repository(args.onnx_path, args.schema_path, args.out_dir, args.model_name, args.version,
                               args.max_batch_size, args.instance_kind, max_queue_delay_us=args.max_queue_delay_us))
    elif args.command == "bundle":
        from serving.bundle import build_bundle

        print(build_bundle(args.model_dir, args.serving_dir, args.version, model_name=args.model_name))
    elif args.command == "serve":
        from serving.local_triton import resolve_repository, serve

        serve(resolve_repository(args.source), args.http_port, args.grpc_port, args.metrics_port,
              args.model_name, args.host)
    elif args.command == "start":
        from serving.local_triton import start_server

        handle = start_server(args.source, args.http_port, args.grpc_port, args.state_dir,
                              args.metrics_port, args.model_name, args.host)
        print(json.dumps(asdict(handle), indent=2))
    elif args.command == "stop":
        from serving.local_triton import stop_server

        print("stopped" if stop_server(args.state_dir) else "no server was running")


if __name__ == "__main__":
    sys.exit(main())
