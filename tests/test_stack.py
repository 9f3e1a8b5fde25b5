"""The production topology really run: `python -m cli stack up` starts Airflow on Celery with
PostgreSQL and Redis, an MLflow server, a Dask cluster and the API; the *scheduler* runs the
nightly DAG triggered through Airflow's REST API; `stack down` leaves no process behind. A Celery
worker killed mid-task is recovered by Airflow's own retry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import requests

from ops.airflow_client import AirflowClient
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration

RUN_DATE = date(2026, 11, 20)
DATA = ["--events", "80000", "--users", "300", "--products", "1500"]
# The intent shop the main test's nightly promotes on, asked by the session split (README, "The production
# topology"). At session_focus=0.7 the decision hung on the host's floating point: +0.0311 [+0.0036, +0.0605]
# on one host, +0.0123 [-0.0238, +0.0508] (refused) on another, the same code and data. At 0.9 the margin is
# wide enough for any host: served 0.3308 vs item-kNN 0.0193, [+0.2608, +0.3633], 161 users (in-process, 2026-12-07).
INTENT_DATA = ["--events", "400000", "--users", "2000", "--products", "3000", "--truth", "session_focus=0.9"]
POSTGRES = "postgresql+psycopg2://postgres@127.0.0.1:5432"


def _postgres_and_redis_up() -> bool:
    import redis
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(f"{POSTGRES}/postgres")
        with engine.connect():
            pass
        engine.dispose()
        return bool(redis.Redis.from_url("redis://127.0.0.1:6379/0", socket_timeout=2).ping())
    except Exception:
        return False


def _processes_with_home(home: Path) -> list[str]:
    """Processes (other than this one) whose environment names `home` as RECSYS_HOME."""
    needle = f"RECSYS_HOME={home}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ")[:120]
                found.append(f"{entry.name}: {command!r}")
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return found


def _drop_databases(prefix: str) -> None:
    """Drop the databases this test's stack created (their names carry the test's own prefix)."""
    import sqlalchemy as sa

    engine = sa.create_engine(f"{POSTGRES}/postgres", isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        for role in ("airflow", "mlflow", "api"):
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{prefix}_{role}" WITH (FORCE)'))
    engine.dispose()


def _flush_redis(*urls: str) -> None:
    """Empty the Redis databases the test's stack used: a killed worker's unacknowledged message
    must not be redelivered to a later run's workers."""
    import redis

    for url in urls:
        redis.Redis.from_url(url, socket_timeout=5).flushdb()


@pytest.fixture
def stack_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    if not _postgres_and_redis_up():
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379")
    home = tmp_path / "home"
    prefix = f"recsys_stack_t{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AIRFLOW", "MLFLOW_", "RECSYS_"))} | {
        "RECSYS_HOME": str(home),
        "RECSYS_STACK_DB_PREFIX": prefix,
        "RECSYS_STACK_POSTGRES": POSTGRES,
        # Databases of their own on the shared Redis, away from other tests' limits.
        "RECSYS_STACK_BROKER_URL": "redis://127.0.0.1:6379/11",
        "RECSYS_STACK_RATELIMIT_STORAGE": "redis://127.0.0.1:6379/12",
        "RECSYS_STACK_SCHEDULE": "false",  # only the run this test triggers
        "RECSYS_STACK_STOP_TIMEOUT": "15",
        "RECSYS_AIRFLOW_PORT": str(free_port()),
        "RECSYS_MLFLOW_UI_PORT": str(free_port()),
        "RECSYS_DASK_PORT": str(free_port()),
        "RECSYS_API_PORT": str(free_port()),
        "RECSYS_TRITON_HTTP_PORT": str(free_port()),
        "RECSYS_TRITON_GRPC_PORT": str(free_port()),
        "RECSYS_WINDOW_DAYS": "6",
        "RECSYS_TRAIN_EPOCHS": "4",
    }
    try:
        yield env
    finally:
        cli(env, "stack", "down", timeout=180)
        _drop_databases(prefix)
        _flush_redis(env["RECSYS_STACK_BROKER_URL"], env["RECSYS_STACK_RATELIMIT_STORAGE"])
    assert _processes_with_home(home) == []


def cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def _airflow(env: dict[str, str]) -> AirflowClient:
    """Airflow's REST API, logged in as the stack's admin with the generated password."""
    passwords = Path(env["RECSYS_HOME"]) / "stack" / "airflow-passwords.json"
    # A generous per-request timeout: one API-server worker on a loaded 2-core machine took over 10 s.
    return AirflowClient(f"http://127.0.0.1:{env['RECSYS_AIRFLOW_PORT']}", "admin",
                         json.loads(passwords.read_text())["admin"], timeout_s=60)


def test_scheduler_runs_the_nightly_on_celery_deploys_and_the_api_answers(stack_env: dict[str, str]) -> None:
    stack_env["RECSYS_EVAL_SPLIT"] = "session_rest"
    env, home = stack_env, Path(stack_env["RECSYS_HOME"])
    made = cli(env, "generate", *INTENT_DATA, "--end", RUN_DATE.isoformat(), "--days", "6")
    assert made.returncode == 0, made.stderr[-3000:]

    started = cli(env, "stack", "up", timeout=420)
    assert started.returncode == 0, started.stdout + started.stderr[-4000:]
    assert "generated Airflow password for 'admin'" in started.stdout
    assert oct((home / "stack" / "airflow-passwords.json").stat().st_mode & 0o777) == "0o600"
    shown = cli(env, "stack", "status", timeout=60)  # asks the API's /health: no model is deployed yet
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert all(f"{part} " in shown.stdout and "healthy" in line
               for part in ("mlflow", "dask-workers", "airflow-scheduler", "worker-gpu", "api")
               for line in shown.stdout.splitlines() if line.startswith(f"{part} "))
    assert "answers: 2 workers" in next(line for line in shown.stdout.splitlines() if line.startswith("dask-workers "))
    api_pid = json.loads((home / "stack" / "pids" / "api.json").read_text())["pid"]

    airflow = _airflow(env)
    assert requests.get(f"{airflow.url}/api/v2/dags", timeout=60).status_code == 401  # login is on
    airflow.wait_for_dags({"nightly_training", "deploy_model"}, timeout_s=120)  # parsed after start
    run_id = "stack-test"
    airflow.trigger("nightly_training", run_id, RUN_DATE.isoformat(), {"deploy": True})
    state = airflow.wait("nightly_training", run_id, timeout_s=1200)
    tasks = airflow.tasks("nightly_training", run_id)
    assert state == "success", {t: (v["state"], v["try_number"]) for t, v in tasks.items()}
    assert tasks["train"]["queue"] == "gpu" and tasks["ingest"]["queue"] == "default"
    etl_log = next((home / "stack" / "airflow" / "logs").glob(f"dag_id=nightly_training/run_id={run_id}"
                                                                "/task_id=fit_workflow/attempt=*.log"))
    assert "ETL on the dask cluster" in etl_log.read_text()

    # The gate asks for evidence (the served path above the best classic baseline with its paired interval
    # above 0, over at least RECSYS_MIN_EVAL_USERS users). On this shop, asked by the session split, it
    # promotes (README, "The production topology"). What the
    # DAG decided must be what the registry records, and only a promotion triggers the deploy DAG (the
    # refusal under the scheduler is asserted by the killed-worker test below, the short-circuit by
    # tests/test_dags.py).
    decision = airflow.xcom("nightly_training", run_id, "promote")
    version, promoted = str(decision["version"]), bool(decision["promoted"])
    assert promoted and decision["eval_split"] == "session_rest", decision  # this shop promotes on evidence

    from mlflow import MlflowClient

    mlflow = MlflowClient(tracking_uri=f"http://127.0.0.1:{env['RECSYS_MLFLOW_UI_PORT']}")
    model = mlflow.get_registered_model("dlrm-ranker")
    night = mlflow.get_model_version("dlrm-ranker", version)
    assert night.tags["promotion.decision"] == ("promoted" if promoted else "rejected")
    assert model.aliases == ({"challenger": version, "champion": version} if promoted else {"challenger": version})
    assert tasks["trigger_deploy"]["state"] == ("success" if promoted else "skipped")
    deploys = airflow.runs("deploy_model")
    # A promotion triggers one deploy run through the nightly's TriggerDagRunOperator, else nobody does.
    assert [(r["conf"], r["triggered_by"], r["run_type"]) for r in deploys] == (
        [({"version": "champion", "target": "local"}, "operator", "operator_triggered")] if promoted else [])
    if not promoted:  # an operator deploys the night's version by hand, through the REST API
        deploys = [airflow.trigger("deploy_model", "deploy-by-hand", RUN_DATE.isoformat(),
                                   {"version": version, "target": "local"})]
    assert airflow.wait("deploy_model", deploys[0]["dag_run_id"], timeout_s=300) == "success"
    assert str(airflow.xcom("deploy_model", deploys[0]["dag_run_id"], "record")["version"]) == version
    assert (home / "serving" / "current").resolve().name == version

    # The API under gunicorn on PostgreSQL, started before the deploy, serves the deployed version without
    # a restart: its workers notice serving/current moved (RECSYS_API_DEPLOY_CHECK_S) and build its ranker.
    validated = home / "runs" / RUN_DATE.isoformat() / "validation" / "valid" / "events.parquet"
    api_env = env | {"RECSYS_DATABASE_URL": f"{POSTGRES}/{env['RECSYS_STACK_DB_PREFIX']}_api"}
    seeded = subprocess.run([sys.executable, "-m", "api", "seed", "--events", str(validated)], cwd=REPO,
                            env=api_env, capture_output=True, text=True, timeout=300)
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    events = pd.read_parquet(validated, columns=["user_id", "event_type"])
    customer = int(events.loc[events.event_type == "purchase", "user_id"].value_counts().index[0])
    url = f"http://127.0.0.1:{env['RECSYS_API_PORT']}/customers/{customer}/recommendations?k=10"
    deadline = time.monotonic() + 90
    while (body := requests.get(url, timeout=30).json()).get("ranker") != "triton":
        assert time.monotonic() < deadline, body
        time.sleep(1)
    assert len(body["items"]) == 10 and body["fallback"] is False
    assert json.loads((home / "stack" / "pids" / "api.json").read_text())["pid"] == api_pid  # same gunicorn

    stopped = cli(env, "stack", "down", timeout=180)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    assert _processes_with_home(home) == []
    assert not list((home / "stack" / "pids").glob("*.json"))


# Parsed by the dag-processor (Airflow's cluster policy hook): retries come after 5 s instead of
# the nightly's 5 minutes, so the test waits for Airflow's retry, not for the clock.
FAST_RETRY_POLICY = """
from datetime import timedelta


def task_policy(task):
    task.retry_delay = timedelta(seconds=5)
"""


def test_a_killed_celery_worker_is_retried_without_a_duplicate_registration(stack_env: dict[str, str],
                                                                             tmp_path: Path) -> None:
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    (policy_dir / "airflow_local_settings.py").write_text(FAST_RETRY_POLICY)
    env = stack_env | {
        "PYTHONPATH": str(policy_dir),
        # A task whose worker died stops heartbeating; the scheduler fails it (then retries) after this.
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "45",
        "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        "RECSYS_TRAIN_EPOCHS": "6",  # long enough a train task to be killed in the middle of it
        # More users than the shop has: the gate must refuse (not enough evidence), so this run also shows
        # the negative path under the scheduler: no champion, trigger_deploy skipped, no deploy run.
        "RECSYS_MIN_EVAL_USERS": "100000",
    }
    home = Path(env["RECSYS_HOME"])
    made = cli(env, "generate", *DATA, "--end", RUN_DATE.isoformat(), "--days", "6")
    assert made.returncode == 0, made.stderr[-3000:]
    started = cli(env, "stack", "up", timeout=420)
    assert started.returncode == 0, started.stdout + started.stderr[-4000:]
    airflow = _airflow(env)
    airflow.wait_for_dags({"nightly_training"}, timeout_s=120)
    run_id = "worker-killed"
    airflow.trigger("nightly_training", run_id, RUN_DATE.isoformat(), {"deploy": True})

    deadline = time.monotonic() + 300
    while airflow.tasks("nightly_training", run_id)["train"]["state"] != "running":
        assert time.monotonic() < deadline, airflow.tasks("nightly_training", run_id)
        time.sleep(1)
    time.sleep(3)  # in the middle of training
    worker = json.loads((home / "stack" / "pids" / "worker-gpu.json").read_text())
    os.killpg(worker["pid"], signal.SIGKILL)  # the worker, its pool and the task's supervisor
    restarted = cli(env, "stack", "up", timeout=300)  # what a process supervisor would do
    assert restarted.returncode == 0, restarted.stdout + restarted.stderr[-4000:]
    assert "already running" in restarted.stdout

    state = airflow.wait("nightly_training", run_id, timeout_s=480)
    tasks = airflow.tasks("nightly_training", run_id)
    assert state == "success", {t: (v["state"], v["try_number"]) for t, v in tasks.items()}
    assert tasks["train"]["try_number"] == 2
    assert all(t["try_number"] == 1 for name, t in tasks.items() if name not in ("train", "trigger_deploy")
               and t["state"] == "success")

    from mlflow import MlflowClient

    mlflow = MlflowClient(tracking_uri=f"http://127.0.0.1:{env['RECSYS_MLFLOW_UI_PORT']}")
    versions = mlflow.search_model_versions("name = 'dlrm-ranker'")
    runs = mlflow.search_runs([mlflow.get_experiment_by_name("dlrm-ranker").experiment_id])
    assert len(versions) == 1 and len(runs) == 1
    assert versions[0].run_id == runs[0].info.run_id
    assert airflow.xcom("nightly_training", run_id, "register")["version"] == versions[0].version

    decision = airflow.xcom("nightly_training", run_id, "promote")
    assert decision["promoted"] is False and decision["reason"].startswith("not enough evidence"), decision
    assert tasks["promoted"]["state"] == "success" and tasks["trigger_deploy"]["state"] == "skipped"
    assert airflow.runs("deploy_model") == []
    assert mlflow.get_registered_model("dlrm-ranker").aliases == {"challenger": versions[0].version}
    assert versions[0].tags["promotion.decision"] == "rejected"


def test_mlflow_server_of_the_stack_keeps_artifacts_in_s3(tmp_path: Path, moto_url: str,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """RECSYS_STACK_ARTIFACTS=s3://...: the stack's MLflow server proxies artifacts to S3 (moto)."""
    if not _postgres_and_redis_up():
        pytest.skip("needs PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379")
    import boto3
    import mlflow

    from ops.processes import ProcessTable
    from ops.stack import _wait_healthy, ensure_databases, services, stack_env
    from settings import Settings, StackSettings

    prefix = f"recsys_stack_t{uuid.uuid4().hex[:8]}"
    for name, value in {"RECSYS_HOME": str(tmp_path), "RECSYS_STACK_DB_PREFIX": prefix,
                        "RECSYS_STACK_ARTIFACTS": "s3://recsys-mlflow/mlartifacts", "AWS_ENDPOINT_URL": moto_url,
                        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                        "AWS_DEFAULT_REGION": "us-east-1", "RECSYS_MLFLOW_UI_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    s3 = boto3.client("s3", endpoint_url=moto_url)
    s3.create_bucket(Bucket="recsys-mlflow")
    settings, stack = Settings.from_env(), StackSettings.from_env()
    server = next(s for s in services(settings, stack, stack_env(settings, stack, {
        "fernet_key": "", "jwt_secret": "", "api_secret_key": ""})) if s.name == "mlflow")
    table = ProcessTable(tmp_path / "stack")
    ensure_databases(stack, roles=("mlflow",))
    try:
        table.start(server)
        _wait_healthy(table, server, timeout_s=180)
        client = mlflow.MlflowClient(tracking_uri=server.health_url.removesuffix("/health"))
        experiment = client.create_experiment("s3-check", artifact_location="mlflow-artifacts:/s3-check")
        run = client.create_run(experiment)
        (tmp_path / "note.txt").write_text("kept in S3")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
    finally:
        table.stop("mlflow", timeout_s=15)
        _drop_databases(prefix)
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="recsys-mlflow").get("Contents", [])]
    assert any(key.startswith("mlartifacts/s3-check/") and key.endswith("note.txt") for key in keys), keys
