"""CLI: `python -m registry {register,promote,download,tag-deployment}` with settings from env."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from registry.errors import RegistryError
from registry.models import download_model, set_deployment_tag
from registry.promotion import ChampionEvidence, promote, register_model
from settings import get_settings, run_command


def _parser(default_name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m registry", description=__doc__)
    parser.add_argument("--name", default=default_name, help="registered model name")
    commands = parser.add_subparsers(dest="command", required=True)
    register = commands.add_parser("register", help="register a run's model as challenger")
    register.add_argument("run_id")
    prom = commands.add_parser("promote", help="move champion to a version if it wins")
    prom.add_argument("version")
    prom.add_argument("--metric", default="ndcg_at_10")
    prom.add_argument("--evidence", type=Path,
                      help="comparison.json of the nightly evaluate stage (runs/<date>/eval/), whose `champion` "
                           "entry scored the current champion on the challenger's users")
    download = commands.add_parser("download", help="fetch a model for deployment")
    download.add_argument("ref", help="alias or version, e.g. champion or 3")
    download.add_argument("dst", type=Path)
    tag = commands.add_parser("tag-deployment", help="record where a version is deployed")
    tag.add_argument("version")
    tag.add_argument("target", choices=["local", "sagemaker"])
    tag.add_argument("endpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    args = _parser(settings.model_name).parse_args(argv)
    return run_command(lambda: _run(args, settings.mlflow_tracking_uri), RegistryError, exit_code=1)


def _run(args: argparse.Namespace, uri: str) -> None:
    if args.command == "register":
        print(register_model(uri, args.run_id, args.name))
    elif args.command == "promote":
        versus = None
        if args.evidence is not None:
            champion = json.loads(args.evidence.read_text()).get("champion")
            versus = None if champion is None else ChampionEvidence(**champion)
        decision = promote(uri, args.name, args.version, args.metric, versus)
        print(json.dumps(asdict(decision), indent=2))
    elif args.command == "download":
        print(download_model(uri, f"models:/{args.name}@{args.ref}"
                             if not args.ref.isdigit() else f"models:/{args.name}/{args.ref}",
                             args.dst))
    else:
        set_deployment_tag(uri, args.name, args.version, args.target, args.endpoint)


if __name__ == "__main__":
    sys.exit(main())
