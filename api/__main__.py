"""Command line of the API: serve, init-db, seed, export-interactions, create-key (`python -m api --help`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from api import default_config
from api.auth import ROLES, create_key
from api.seed import SeedError, export_interactions, seed
from api.store import Store
from settings import configure_logging


def _store(cfg: dict) -> Store:
    store = Store(cfg["DATABASE_URL"], schema=cfg.get("DATABASE_SCHEMA"))
    store.init_db()
    return store


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the API under gunicorn (api/gunicorn_conf.py, app spec api.wsgi:app)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=5000)
    serve.add_argument("--workers", type=int, default=None, help="default: RECSYS_API_WORKERS")
    sub.add_parser("init-db", help="create the tables in the configured database")
    seed_p = sub.add_parser("seed", help="load customers, products and interactions from REES46 events")
    seed_p.add_argument("--events", type=Path, required=True, help="Parquet/CSV file or a directory of them")
    export_p = sub.add_parser("export-interactions", help="write interactions in the REES46 layout")
    export_p.add_argument("--out", type=Path, required=True, help=".parquet (default) or .csv")
    key_p = sub.add_parser("create-key", help="create an API key and print it once")
    key_p.add_argument("--role", choices=ROLES, required=True)
    args = parser.parse_args(argv)
    configure_logging()

    cfg = default_config()
    if args.command == "serve":
        # api/gunicorn_conf.py: gevent workers, header and keep-alive timeouts, warm-up per worker.
        gunicorn = [sys.executable, "-m", "gunicorn", "-c", "python:api.gunicorn_conf",
                    *(["--workers", str(args.workers)] if args.workers else []),
                    "--bind", f"{args.host}:{args.port}", "api.wsgi:app"]
        os.execv(sys.executable, gunicorn)
    store = _store(cfg)
    if args.command == "init-db":
        print(f"initialised {store.engine.url.render_as_string()}")
    elif args.command == "seed":
        try:
            result = seed(store, args.events)
        except (SeedError, OSError) as exc:
            print(f"seed failed: {exc}", file=sys.stderr)
            return 2
        print(f"customers={result.customers} products={result.products} "
              f"interactions={result.interactions} skipped={result.skipped}")
    elif args.command == "export-interactions":
        print(f"exported {export_interactions(store, args.out)} interactions to {args.out}")
    elif args.command == "create-key":
        key = create_key(store, args.role, cfg.get("API_KEY_PEPPER", ""))
        print(key)
    return 0


if __name__ == "__main__":
    sys.exit(main())
