"""Command line: `python -m etl generate ...` writes synthetic events, `python -m etl public NAME ...`
a real public data set shipped in a package, `python -m etl run ...` the ETL."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from datetime import date
from pathlib import Path

from etl.errors import EtlError
from etl.pipeline import EtlConfig, run_etl
from etl.public_data import INSTACART_END, PUBLIC_DATASETS, write_public_events
from etl.synthetic import SyntheticConfig, iter_event_days, write_events
from settings import run_command


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m etl", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate", help="write synthetic REES46 events with a planted truth")
    gen.add_argument("--events", type=int, required=True, help="number of events")
    gen.add_argument("--days", type=int, default=7)
    gen.add_argument("--start", default="2026-01-01", help="first day, YYYY-MM-DD")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--users", type=int, default=None, help="default scales with --events")
    gen.add_argument("--products", type=int, default=None, help="default scales with --events")
    gen.add_argument("--out", type=Path, required=True, help="raw directory to write")
    gen.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    public = sub.add_parser("public", help="write a real public data set (shipped in a package) "
                                           "as raw REES46 day partitions")
    public.add_argument("dataset", choices=sorted(PUBLIC_DATASETS))
    public.add_argument("--raw-dir", type=Path, required=True, help="raw directory to write (empty)")
    public.add_argument("--end", type=date.fromisoformat, default=INSTACART_END,
                        help="day of the last events, YYYY-MM-DD; run the nightly for the day after")
    public.add_argument("--spread-days", type=int, default=7,
                        help="users' last orders are spread over this many days ending at --end")
    public.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    run = sub.add_parser("run", help="events -> impressions -> encoded train/valid/test")
    run.add_argument("--events", type=Path, required=True, help="validated events file or directory")
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--freq-threshold", type=int, default=EtlConfig.freq_threshold)
    run.add_argument("--oov-buckets", type=int, default=EtlConfig.oov_buckets)
    run.add_argument("--embedding-dim", type=int, default=EtlConfig.embedding_dim)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return run_command(lambda: _run(args), EtlError, exit_code=2)


def _run(args: argparse.Namespace) -> None:
    if args.command == "generate":
        config = SyntheticConfig(n_events=args.events, days=args.days, start_date=args.start,
                                 seed=args.seed, n_users=args.users, n_products=args.products)
        paths = write_events(iter_event_days(config), args.out, config=config, fmt=args.format)
        print(json.dumps({"raw_dir": str(args.out), "files": [str(p) for p in paths],
                          "config": asdict(config.resolved())}, indent=2))
    elif args.command == "public":
        print(json.dumps(write_public_events(args.dataset, args.raw_dir, end=args.end,
                                             spread_days=args.spread_days, fmt=args.format), indent=2))
    else:
        config = EtlConfig(freq_threshold=args.freq_threshold, oov_buckets=args.oov_buckets,
                           embedding_dim=args.embedding_dim)
        outputs = run_etl(args.events, args.out, config)
        print(json.dumps({k: str(v) if isinstance(v, Path) else v
                          for k, v in asdict(outputs).items()}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
