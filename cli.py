"""Command line: `python -m cli <command>` runs each stage by hand with the code the DAGs run.

    generate   write synthetic raw events (planted truth) into $RECSYS_HOME/raw
    nightly    run the nightly stages in-process, no Airflow
    deploy     run the deploy stages in-process, no Airflow
    airflow    run the `airflow` command with this project's configuration
    demo       generate -> nightly DAG -> deploy DAG (both through Airflow) -> API -> a response
    stop       stop the local Triton server and the API started by `demo`
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path

from settings import Settings, configure_logging

REPO = Path(__file__).resolve().parent
log = logging.getLogger("cli")


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for Airflow subprocesses: the repo's airflow.cfg, state under $RECSYS_HOME/airflow."""
    state = settings.home / "airflow"
    state.mkdir(parents=True, exist_ok=True)
    return os.environ | {
        "AIRFLOW_HOME": str(REPO),
        "RECSYS_HOME": str(settings.home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{state / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(state / "logs"),
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(state / "logs" / "dag_processor"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(state / "passwords.json"),
        # `airflow standalone` starts its components as `airflow ...` from PATH.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }


def run_airflow(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the Airflow CLI of this venv with the project's configuration."""
    airflow = Path(sys.executable).with_name("airflow")
    cmd = [str(airflow), *args]
    log.info("$ airflow %s", " ".join(args))
    return subprocess.run(cmd, env=airflow_env(settings), check=check)


def generate(
    settings: Settings,
    events: int,
    end: date,
    days: int,
    seed: int,
    corrupt: int,
    users: int | None = None,
    products: int | None = None,
) -> dict:
    """Synthetic raw events for `days` days ending the day before `end`, `corrupt` rows spoiled."""
    from etl.synthetic import SyntheticConfig, generate as generate_events, write_events

    config = SyntheticConfig(
        n_events=events, n_users=users, n_products=products,
        start_date=end - timedelta(days=days), days=days, seed=seed,
    )
    data = generate_events(config)
    files = write_events(data.events, settings.raw_dir, config=config)
    n_bad = corrupt_rows(Path(files[-1]), corrupt, seed) if corrupt else 0
    return {"files": [str(f) for f in files], "events": len(data.events), "corrupted": n_bad}


def corrupt_rows(path: Path, n: int, seed: int) -> int:
    """Spoil `n` distinct rows of one Parquet partition in ways validation must catch."""
    import numpy as np
    import pandas as pd

    frame = pd.read_parquet(path)
    rows = np.random.default_rng(seed).choice(len(frame), size=min(n, len(frame)), replace=False)
    frame["event_type"] = frame["event_type"].astype(object)
    for i, row in enumerate(rows):
        kind = i % 3
        if kind == 0:
            frame.loc[frame.index[row], "price"] = -abs(float(frame["price"].iloc[row])) - 1.0
        elif kind == 1:
            frame.loc[frame.index[row], "event_type"] = "teleport"
        else:
            frame.loc[frame.index[row], "event_time"] = frame["event_time"].iloc[row] + pd.Timedelta(days=400)
    frame.to_parquet(path, index=False)
    return len(rows)


def run_nightly(settings: Settings, run_date: str) -> dict:
    """All nightly stages in-process, in DAG order."""
    from plugins import nightly

    ingested = nightly.ingest(run_date, settings)
    validated = nightly.validate(run_date, ingested, settings)
    features = nightly.fit_workflow(run_date, validated, settings)
    trained = nightly.train(run_date, features, settings)
    evaluated = nightly.evaluate(run_date, features, trained, settings)
    retrieval = nightly.train_retrieval(run_date, features, settings)
    registered = nightly.register(run_date, validated, features, trained, evaluated, settings, retrieval)
    return nightly.promote(features, registered, settings)


def run_deploy(settings: Settings, version: str, target: str) -> dict:
    from plugins import deploy

    packaged = deploy.package(deploy.resolve(version, settings), settings)
    return deploy.record(deploy.deploy(packaged, target, settings), settings)


def start_api(settings: Settings) -> int:
    """gunicorn serving the API in the background; returns its pid once /health answers."""
    pidfile = settings.home / "api.pid"
    stop_api(settings)
    log_file = open(settings.home / "api.log", "ab")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "--workers", "2",
            "--bind", f"127.0.0.1:{settings.api_port}",
            "--pid", str(pidfile),
            "api.wsgi:app",
        ],
        stdout=log_file, stderr=log_file, start_new_session=True,
        env=os.environ | {"RECSYS_HOME": str(settings.home)},
    )
    url = f"http://127.0.0.1:{settings.api_port}/health"
    for _ in range(120):
        try:
            with urllib.request.urlopen(url, timeout=2):
                return proc.pid
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"the API exited; see {settings.home / 'api.log'}")
            time.sleep(0.5)
    raise RuntimeError(f"the API did not answer on {url}; see {settings.home / 'api.log'}")


def stop_api(settings: Settings) -> None:
    pidfile = settings.home / "api.pid"
    if pidfile.exists():
        try:
            os.kill(int(pidfile.read_text().strip()), signal.SIGTERM)
        except (ProcessLookupError, ValueError):
            pass
        pidfile.unlink(missing_ok=True)


def demo(settings: Settings, events: int) -> None:
    """The whole path on the embedded default, through Airflow, ending in a real API response."""
    import pandas as pd

    today = date.today()
    run_date = today.isoformat()
    started = time.time()
    print(f"[1/6] generating {events:,} synthetic events (planted truth) into {settings.raw_dir}")
    made = generate(settings, events, today, settings.window_days, seed=7, corrupt=30,
                    users=max(200, events // 500), products=max(100, events // 1000))
    print(f"      {made['events']:,} events in {len(made['files'])} day files, {made['corrupted']} rows corrupted on purpose")
    print("[2/6] Airflow metadata DB")
    run_airflow(settings, "db", "migrate")
    print(f"[3/6] nightly_training DAG for {run_date} (airflow dags test)")
    run_airflow(settings, "dags", "test", "nightly_training", run_date, "-c", json.dumps({"deploy": False}))
    print("[4/6] deploy_model DAG: champion -> local Triton")
    run_airflow(
        settings, "dags", "test", "deploy_model", run_date,
        "-c", json.dumps({"version": "champion", "target": "local"}),
    )
    print("[5/6] API: loading the store from the validated events, starting gunicorn")
    from api.seed import seed_from_events

    validated = settings.run_dir(run_date) / "validation" / "valid" / "events.parquet"
    seed_from_events(settings.database_url, validated)
    start_api(settings)
    buyers = pd.read_parquet(validated, columns=["user_id", "event_type"])
    customer = int(buyers.loc[buyers.event_type == "purchase", "user_id"].value_counts().index[0])
    url = f"http://127.0.0.1:{settings.api_port}/customers/{customer}/recommendations?k=10"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    print(f"[6/6] GET {url}")
    print(json.dumps(body, indent=2))
    report = json.loads((settings.run_dir(run_date) / "eval.json").read_text())
    print(f"\nmodel vs popularity on the test day: {_metrics_line(report)}")
    print(f"done in {time.time() - started:.0f} s. The API and Triton keep running (stop: make stop).")
    print(f"MLflow UI : .venv/bin/mlflow ui --backend-store-uri {settings.mlflow_tracking_uri} --port 5001")
    print("Airflow UI: make airflow-ui   (then http://127.0.0.1:8080; the DAG runs above are listed)")


def _metrics_line(report: dict) -> str:
    keys = ["auc", "oracle_auc", "ndcg_at_10", "baseline_ndcg_at_10", "recall_at_10", "baseline_recall_at_10"]
    return ", ".join(f"{k}={report[k]:.4f}" for k in keys if k in report)


def stop(settings: Settings) -> None:
    from serving.local_triton import stop_server

    stop_api(settings)
    stop_server(settings.serving_dir / "triton")


def main(argv: list[str] | None = None) -> int:
    configure_logging()
    parser = argparse.ArgumentParser(prog="python -m cli", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    gen = sub.add_parser("generate")
    gen.add_argument("--events", type=int, default=300_000)
    gen.add_argument("--end", type=date.fromisoformat, default=date.today())
    gen.add_argument("--days", type=int, default=None)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--corrupt", type=int, default=0)
    gen.add_argument("--users", type=int, default=None, help="default: the generator's, by size")
    gen.add_argument("--products", type=int, default=None)
    night = sub.add_parser("nightly")
    night.add_argument("--date", default=date.today().isoformat())
    dep = sub.add_parser("deploy")
    dep.add_argument("--version", default="champion")
    dep.add_argument("--target", default=None)
    af = sub.add_parser("airflow")
    af.add_argument("args", nargs=argparse.REMAINDER)
    dem = sub.add_parser("demo")
    dem.add_argument("--events", type=int, default=300_000)
    sub.add_parser("stop")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    settings.home.mkdir(parents=True, exist_ok=True)
    if args.command == "generate":
        days = args.days or settings.window_days
        print(json.dumps(generate(settings, args.events, args.end, days, args.seed, args.corrupt,
                                         args.users, args.products), indent=2))
    elif args.command == "nightly":
        print(json.dumps(run_nightly(settings, args.date), indent=2, default=str))
    elif args.command == "deploy":
        print(json.dumps(run_deploy(settings, args.version, args.target or settings.deploy_target), indent=2))
    elif args.command == "airflow":
        return run_airflow(settings, *args.args, check=False).returncode
    elif args.command == "demo":
        demo(settings, args.events)
    elif args.command == "stop":
        stop(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
