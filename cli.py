"""Command line: `python -m cli <command>` runs each stage by hand with the code the DAGs run.

    generate   write synthetic raw events (planted truth) into $RECSYS_HOME/raw
    nightly    run the nightly stages in-process, no Airflow (a stage that stops the night, e.g.
               validation failing closed: one `error: ...` line on stderr, exit code 1)
    deploy     run the deploy stages in-process, no Airflow
    airflow    run the `airflow` command with this project's configuration (the UI asks for a login)
    mlflow-ui  the MLflow UI on 127.0.0.1 over this project's tracking store
    demo       generate -> nightly DAG -> deploy DAG (both through Airflow) -> API -> a response
    experiment start|stop|list|evaluate: online A/B experiments between registered versions
    stop       stop everything the project started: Triton, the API, Airflow, the MLflow UI
    stack      up|status|down|reload-api|demo: the production topology (Airflow on Celery, MLflow
               server, Dask cluster, API, Triton) as local processes (ops/stack.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import date, timedelta
from pathlib import Path

from settings import Settings, configure_logging, run_command

REPO = Path(__file__).resolve().parent
log = logging.getLogger("cli")


# Airflow commands that run until stopped; they are tracked so `stop` can end them.
LONG_RUNNING_AIRFLOW = ("standalone", "api-server", "scheduler", "dag-processor", "triggerer")
AIRFLOW_ADMIN = "admin"  # the one user of airflow.cfg's simple_auth_manager_users


def repo_pythonpath() -> str:
    """PYTHONPATH with the repository root first: the project is not installed, so a process started
    from a console script (airflow, gunicorn) finds `api`, `stages`, ... only through it."""
    return os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


def airflow_env(settings: Settings) -> dict[str, str]:
    """Environment for Airflow subprocesses: the repo's airflow.cfg, state under $RECSYS_HOME/airflow."""
    state = settings.home / "airflow"
    state.mkdir(parents=True, exist_ok=True)
    # Tasks reach the execution API on the API server; 0.0.0.0 binds loopback too.
    reach = "127.0.0.1" if settings.airflow_host in ("0.0.0.0", "::") else settings.airflow_host
    return os.environ | {
        "AIRFLOW_HOME": str(REPO),
        "RECSYS_HOME": str(settings.home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{state / 'airflow.db'}",
        "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(state / "logs"),
        "AIRFLOW__LOGGING__DAG_PROCESSOR_CHILD_PROCESS_LOG_DIRECTORY": str(state / "logs" / "dag_processor"),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(airflow_passwords_file(settings)),
        "AIRFLOW__API__HOST": settings.airflow_host,
        "AIRFLOW__API__PORT": str(settings.airflow_port),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://{reach}:{settings.airflow_port}/execution/",
        # `airflow standalone` starts its components as `airflow ...` from PATH.
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
        "PYTHONPATH": repo_pythonpath(),
    }


def airflow_passwords_file(settings: Settings) -> Path:
    return settings.home / "airflow" / "passwords.json"


def ensure_airflow_login(settings: Settings) -> Path:
    """The admin's password, generated once into a file only its owner can read; returns the file.

    Airflow's simple auth manager would generate it too, but world-readable and only into its log.
    """
    path = airflow_passwords_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    passwords = json.loads(path.read_text() or "{}") if path.exists() else {}
    if AIRFLOW_ADMIN not in passwords:
        passwords[AIRFLOW_ADMIN] = secrets.token_urlsafe(16)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(json.dumps(passwords) + "\n")
    os.chmod(path, 0o600)
    return path


def run_airflow(settings: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the Airflow CLI of this venv with the project's configuration.

    Servers (`standalone`, `api-server`, `scheduler`, ...) run as a tracked process group that
    `python -m cli stop` ends; Ctrl-C stops the group the same way.
    """
    airflow = Path(sys.executable).with_name("airflow")
    cmd = [str(airflow), *args]
    log.info("$ airflow %s", " ".join(args))
    if not args or args[0] not in LONG_RUNNING_AIRFLOW:
        return subprocess.run(cmd, env=airflow_env(settings), check=check)
    if args[0] in ("standalone", "api-server"):
        passwords = ensure_airflow_login(settings)
        print(f"Airflow UI: http://{settings.airflow_host}:{settings.airflow_port} "
              f"(user '{AIRFLOW_ADMIN}', password in {passwords})", flush=True)
    name = f"airflow-{args[0]}"
    proc = start_tracked(settings, name, cmd, env=airflow_env(settings))
    try:
        returncode = proc.wait()
    except KeyboardInterrupt:
        # Standalone shuts its components down on SIGINT; whatever ignores it is killed.
        stop_tracked(settings, name, first_signal=signal.SIGINT)
        returncode = proc.wait()
    finally:
        forget(settings, name, proc.pid)
    if check and returncode:
        raise subprocess.CalledProcessError(returncode, cmd)
    return subprocess.CompletedProcess(cmd, returncode)


# ---------------------------------------------------------------- processes the project starts
# Each long-running process starts in a session of its own (so its pid is its process group id)
# and leaves `<pid_dir>/<name>.json`; `stop` signals the whole group, so children go too, and
# escalates to SIGKILL for a group that ignores SIGTERM (Airflow's scheduler does).


def start_tracked(settings: Settings, name: str, command: list[str], **popen) -> subprocess.Popen:
    """Start `command` as a new process group and record it under `name` for `stop`."""
    stop_tracked(settings, name)  # one of each: a second start replaces the first
    proc = subprocess.Popen(command, start_new_session=True, **popen)
    settings.pid_dir.mkdir(parents=True, exist_ok=True)
    record = {"name": name, "pgid": proc.pid, "start_ticks": _start_ticks(proc.pid), "command": command}
    (settings.pid_dir / f"{name}.json").write_text(json.dumps(record))
    return proc


def forget(settings: Settings, name: str, pgid: int) -> None:
    """Drop the record of `name` if it is still the one for `pgid`."""
    path = settings.pid_dir / f"{name}.json"
    try:
        if json.loads(path.read_text())["pgid"] == pgid:
            path.unlink()
    except (OSError, ValueError, KeyError):
        pass


def stop_tracked(settings: Settings, name: str, timeout_s: float = 20.0,
                 first_signal: int = signal.SIGTERM) -> bool:
    """End the recorded process group `name`: `first_signal`, then SIGKILL after `timeout_s`.

    False when nothing of it was running. A record whose pid now belongs to another process
    (same number, other start time) is dropped without signalling anyone.
    """
    path = settings.pid_dir / f"{name}.json"
    try:
        record = json.loads(path.read_text())
        pgid, start_ticks = int(record["pgid"]), int(record["start_ticks"])
    except (OSError, ValueError, KeyError):
        path.unlink(missing_ok=True)
        return False
    stopped = _ours(pgid, start_ticks)
    if stopped:
        # Airflow runs each task in a session of its own below the executor: those groups go too.
        groups = [pgid, *_descendant_groups(pgid)]
        for group in groups:
            _signal_group(group, first_signal)
        if not _wait_groups_gone(groups, timeout_s):
            log.warning("%s (process group %d) still runs %.0fs after %s; killing it",
                        name, pgid, timeout_s, signal.Signals(first_signal).name)
            for group in groups:
                _signal_group(group, signal.SIGKILL)
            _wait_groups_gone(groups, 10.0)
        log.info("stopped %s (process group %d)", name, pgid)
    path.unlink(missing_ok=True)
    return stopped


def tracked_names(settings: Settings) -> list[str]:
    return sorted(p.stem for p in settings.pid_dir.glob("*.json")) if settings.pid_dir.is_dir() else []


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], pgrp [2], starttime [19])."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    return text[text.rindex(")") + 2:].split()


def _start_ticks(pid: int) -> int:
    fields = _proc_stat(pid)
    return int(fields[19]) if fields else -1


def _live_processes() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, process group) of every live (not zombie) process."""
    table = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (fields := _proc_stat(int(entry.name))) and fields[0] != "Z":
            table[int(entry.name)] = (int(fields[1]), int(fields[2]))
    return table


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    return [pid for pid, (_, group) in _live_processes().items() if group == pgid]


def _descendant_groups(pgid: int) -> set[int]:
    """Process groups, other than `pgid`, of the descendants of its members."""
    table = _live_processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in table.items():
        children.setdefault(parent, []).append(pid)
    todo = [pid for pid, (_, group) in table.items() if group == pgid]
    groups: set[int] = set()
    while todo:
        for child in children.get(todo.pop(), []):
            groups.add(table[child][1])
            todo.append(child)
    groups.discard(pgid)
    return groups


def _ours(pgid: int, start_ticks: int) -> bool:
    """The group still runs and is the one recorded: a live leader must have the recorded start
    time; without a leader, live members keep the group id from being reused, so they are ours."""
    if not group_members(pgid):
        return False
    leader = _proc_stat(pgid)
    return leader is None or leader[0] == "Z" or int(leader[19]) == start_ticks


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _wait_groups_gone(groups: list[int], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            os.waitpid(groups[0], os.WNOHANG)  # reap the leader when this process started it
        except ChildProcessError:
            pass
        if not any(group in groups for _, group in _live_processes().values()):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def generate(
    settings: Settings,
    events: int,
    end: date,
    days: int,
    seed: int,
    corrupt: int,
    users: int | None = None,
    products: int | None = None,
    truth: dict[str, object] | None = None,
) -> dict:
    """Synthetic raw events for `days` days ending the day before `end`, `corrupt` rows spoiled;
    `truth` overrides parameters of the planted model (etl.synthetic.SyntheticConfig)."""
    from etl.synthetic import SyntheticConfig, generate as generate_events, write_events

    config = SyntheticConfig(
        n_events=events, n_users=users, n_products=products,
        start_date=end - timedelta(days=days), days=days, seed=seed, **(truth or {}),
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
    from stages import nightly

    return nightly.run_nightly(run_date, settings)["promote"]


def nightly_errors() -> tuple[type[Exception], ...]:
    """The errors the nightly stages raise on purpose, one root per package."""
    from etl.errors import EtlError
    from stages.nightly import NoInputData
    from registry.errors import RegistryError
    from training.errors import TrainingError
    from validation import ValidationError

    return (ValidationError, NoInputData, EtlError, TrainingError, RegistryError)


def run_deploy(settings: Settings, version: str, target: str) -> dict:
    from stages import deploy

    packaged = deploy.package(deploy.resolve(version, settings), settings)
    return deploy.record(deploy.deploy(packaged, target, settings), settings)


def start_api(settings: Settings) -> int:
    """gunicorn serving the API in the background; returns its pid once /health answers."""
    log_file = open(settings.home / "api.log", "ab")
    proc = start_tracked(
        settings, "api",
        [
            str(Path(sys.executable).with_name("gunicorn")),
            "-c", "python:api.gunicorn_conf",  # gevent workers (RECSYS_API_WORKERS): slow clients cannot starve them
            "--bind", f"127.0.0.1:{settings.api_port}",
            "api.wsgi:app",
        ],
        stdout=log_file, stderr=log_file,
        # `-c python:api.gunicorn_conf` is imported before any --chdir: the root must be on PYTHONPATH.
        env=os.environ | {"RECSYS_HOME": str(settings.home), "PYTHONPATH": repo_pythonpath()}, cwd=REPO,
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


def mlflow_ui(settings: Settings) -> int:
    """The MLflow UI over this project's tracking store, on loopback, tracked for `stop`."""
    cmd = [str(Path(sys.executable).with_name("mlflow")), "ui", "--backend-store-uri",
           settings.mlflow_tracking_uri, "--host", "127.0.0.1", "--port", str(settings.mlflow_ui_port)]
    print(f"MLflow UI: http://127.0.0.1:{settings.mlflow_ui_port}", flush=True)
    proc = start_tracked(settings, "mlflow-ui", cmd)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        stop_tracked(settings, "mlflow-ui", first_signal=signal.SIGINT)
        return proc.wait()
    finally:
        forget(settings, "mlflow-ui", proc.pid)


def demo(settings: Settings, events: int) -> None:
    """The whole path on the embedded default, through Airflow, ending in a real API response."""
    import pandas as pd

    today = date.today()
    run_date = today.isoformat()
    started = time.time()
    print(f"[1/7] generating {events:,} synthetic events (planted truth) into {settings.raw_dir}")
    made = generate(settings, events, today, settings.window_days, seed=7, corrupt=30,
                    users=max(200, events // 500), products=max(1000, events // 100))
    print(f"      {made['events']:,} events in {len(made['files'])} day files, {made['corrupted']} rows corrupted on purpose")
    print("[2/7] Airflow metadata DB")
    _quiet_airflow(settings, "migrate", "db", "migrate")
    print(f"[3/7] nightly_training DAG for {run_date} (airflow dags test)")
    _quiet_airflow(settings, "nightly", "dags", "test", "nightly_training", run_date,
                   "-c", json.dumps({"deploy": False}))
    _nightly_summary(settings, run_date)
    version, why = _deploy_choice(settings)
    print(f"      promote: {why}")
    print(f"[4/7] deploy_model DAG: {version} -> local Triton")
    _quiet_airflow(settings, "deploy", "dags", "test", "deploy_model", run_date,
                   "-c", json.dumps({"version": version, "target": "local"}))
    print("[5/7] API: loading the store from the validated events, starting gunicorn")
    from api.seed import seed_from_events

    validated = settings.run_dir(run_date) / "validation" / "valid" / "events.parquet"
    seed_from_events(settings.database_url, validated)
    start_api(settings)
    buyers = pd.read_parquet(validated, columns=["user_id", "event_type"])
    customer = int(buyers.loc[buyers.event_type == "purchase", "user_id"].value_counts().index[0])
    url = f"http://127.0.0.1:{settings.api_port}/customers/{customer}/recommendations?k=10"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.loads(response.read())
    print(f"[6/7] GET {url}")
    answer_file = settings.home / "logs" / "demo-recommendation.json"
    answer_file.write_text(json.dumps(body, indent=2))
    print(f"      customer {customer} -> {[item['product_id'] for item in body['items']]} "
          f"(ranker {body.get('ranker')}; the whole answer: {answer_file})")
    for item in body["items"][:3]:
        print(f"      {_explained(item)}")
    _demo_experiment(settings, version, validated, f"http://127.0.0.1:{settings.api_port}", run_date)
    report = json.loads((settings.run_dir(run_date) / "eval" / "comparison.json").read_text())
    print(f"\nNDCG@10 on the held-out day, full catalogue (95% interval over users):\n{_metrics_lines(report)}")
    print(f"done in {time.time() - started:.0f} s. The API and Triton keep running (stop: make stop).")
    print(f"MLflow UI : make mlflow-ui    (then http://127.0.0.1:{settings.mlflow_ui_port})")
    print(f"Airflow UI: make airflow-ui   (then http://{settings.airflow_host}:{settings.airflow_port}, user "
          f"'{AIRFLOW_ADMIN}', password in {airflow_passwords_file(settings)}; the DAG runs above are listed)")


def _explained(item: dict) -> str:
    """One recommended item and why (serving.explain's explanation), on one line."""
    why = item.get("explanation") or {}
    evidence = f", evidence {why['evidence']}" if why.get("evidence") else ""
    return (f"why {item['product_id']}: {why.get('reason')} (source {why.get('source')}, kind {why.get('kind')}"
            f"{evidence})")


def _demo_experiment(settings: Settings, deployed: str, validated: Path, api_url: str, run_date: str,
                     visits: int = 240) -> None:
    """An A/A online experiment on the running API: the deployed version against the same model registered
    again (identical weights), simulated customers shopping through both arms, the evaluate_experiment
    DAG's code deciding, GET /experiments/<id>, then stop, so the deployed model serves everyone again."""
    import pandas as pd
    import requests

    from ops import shopper
    from stages import experiments
    from registry import resolve_version

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # packaging downloads both arms
    control = resolve_version(settings.mlflow_tracking_uri, settings.model_name, deployed)
    treatment = experiments.register_copy(settings, control)
    experiment_id = f"demo-aa-{int(time.time())}"
    print(f"[7/7] online experiment {experiment_id}: an A/A test, version {control} (deployed) against "
          f"version {treatment} (the same model registered again)")
    began = time.time()
    started = experiments.start(settings, experiment_id, {"control": control, "treatment": treatment}, "control")
    print(f"      started: 50/50 split, Triton restarted serving both versions ({started['triton']})")
    time.sleep(settings.experiment_ttl_s + 0.5)  # API workers re-read the running experiment this often
    seen = pd.read_parquet(validated, columns=["user_id", "product_id", "category_id"]).dropna()
    liked = shopper.preferences(seen)
    category_of = dict(zip(seen["product_id"].astype(int), seen["category_id"].astype(int)))
    customers = sorted(liked)[:: max(1, len(liked) // 150)]
    done = shopper.shop(api_url, {c: liked[c] for c in customers}, category_of, visits, seed=11)
    print(f"      traffic: {done.visits} visits by {len(customers)} simulated customers, responses per arm "
          f"{done.per_arm}; posted {done.events} with recommendation_id and position")
    decided = experiments.evaluate(run_date, settings)  # what the evaluate_experiment DAG runs
    summary = requests.get(f"{api_url}/experiments/{experiment_id}", timeout=30).json()
    for arm, shown in summary["arms"].items():
        f = shown["figures"]
        print(f"      {arm:9s} v{shown['version']}: {f['impressions']:4d} impressions, CTR {f['ctr']:.3f}, "
              f"conversion {f['conversion_rate']:.3f}")
    print(f"      decision: {decided['outcome']}: {decided['reason']} (MLflow run {decided.get('run_id')})")
    print(f"      GET /experiments/{experiment_id}: state {summary['state']}, control {summary['control']}, "
          f"min_impressions {summary['guardrails'].get('min_impressions')}")
    stopped = experiments.stop(settings, experiment_id)
    print(f"      stopped (state {stopped['state']}): everyone gets version {control} again; "
          f"{time.time() - began:.0f} s")


def _metrics_lines(report: dict) -> str:
    """One line per method of the night's comparison (stages.nightly.evaluate's comparison.json)."""
    metrics = report["metrics"]
    methods = sorted({key.split(".")[0] for key in metrics
                      if key.endswith(".ndcg_at_10") and not key.startswith("served_minus_")},
                     key=lambda m: (m != "served", -metrics[f"{m}.ndcg_at_10"]))
    return "\n".join(f"  {m:12s} {metrics[f'{m}.ndcg_at_10']:.4f}  [{metrics[f'{m}.ndcg_at_10_ci_low']:.4f}, "
                     f"{metrics[f'{m}.ndcg_at_10_ci_high']:.4f}]" for m in methods)


def _quiet_airflow(settings: Settings, name: str, *args: str) -> None:
    """An Airflow CLI call whose own output goes to `$RECSYS_HOME/logs/demo-<name>.log`; on failure
    the log's tail is printed and the demo stops."""
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"demo-{name}.log"
    cmd = [str(Path(sys.executable).with_name("airflow")), *args]
    started = time.time()
    with open(path, "w") as out:
        done = subprocess.run(cmd, env=airflow_env(settings), stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        print("".join(path.read_text().splitlines(keepends=True)[-40:]), file=sys.stderr)
        raise SystemExit(f"error: airflow {' '.join(args[:3])} failed (exit {done.returncode}); log: {path}")
    print(f"      done in {time.time() - started:.0f} s (Airflow's output: {path})")


def _nightly_summary(settings: Settings, run_date: str) -> None:
    """One line per nightly stage, read from what the stages wrote."""
    run = settings.run_dir(run_date)
    report = json.loads((run / "validation" / "report.json").read_text())
    print(f"      validate: {report['n_in']:,} rows in, {report['n_passed']:,} passed, "
          f"{report['n_quarantined']:,} quarantined")
    from serving.recommender import Recommender

    rec = Recommender.load(run / "model")
    print(f"      train: {rec.n_items:,} products; sources {', '.join(rec.source_names)}; "
          f"served mode: {rec.mode}")
    comparison = json.loads((run / "eval" / "comparison.json").read_text())["metrics"]
    print(f"      evaluate: {comparison['eval_users']:.0f} users, served NDCG@10 {comparison['ndcg_at_10']:.4f} "
          f"vs best baseline {comparison['baseline_ndcg_at_10']:.4f}")
    drift_file = run / "eval" / "drift.json"
    if drift_file.is_file():  # written by the evaluate stage (registry.drift)
        print(f"      drift: {json.loads(drift_file.read_text())['reason']}")


def _deploy_choice(settings: Settings) -> tuple[str, str]:
    """`champion` when the gate promoted one; else the new `challenger`, with the gate's reason, so the
    demo still shows the served path (the nightly DAG itself deploys only a promoted champion)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(tracking_uri=settings.mlflow_tracking_uri, registry_uri=settings.mlflow_tracking_uri)
    challenger = client.get_model_version_by_alias(settings.model_name, "challenger")
    reason = challenger.tags.get("promotion.reason", "no decision recorded")
    try:
        client.get_model_version_by_alias(settings.model_name, "champion")
        return "champion", reason
    except MlflowException:
        return "challenger", f"{reason} (no champion: the demo deploys the challenger to show it)"


def stop(settings: Settings, timeout_s: float = 20.0) -> list[str]:
    """Stop everything the project started: Triton, then each tracked group (API, Airflow, MLflow UI).

    Returns the names of what was running.
    """
    from serving.local_triton import stop_server

    stopped = ["triton"] if stop_server(settings.serving_dir / "triton", timeout_s=timeout_s) else []
    stopped += [name for name in tracked_names(settings) if stop_tracked(settings, name, timeout_s)]
    return stopped


def _truth_override(text: str) -> tuple[str, object]:
    from etl.errors import SyntheticDataError
    from etl.synthetic import SyntheticConfig

    try:
        return SyntheticConfig.parse_override(text)
    except SyntheticDataError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


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
    gen.add_argument("--truth", type=_truth_override, action="append", default=[], metavar="NAME=VALUE",
                     help="a parameter of the planted model, e.g. product_bias_std=1.5 (repeatable)")
    night = sub.add_parser("nightly")
    night.add_argument("--date", default=date.today().isoformat())
    dep = sub.add_parser("deploy")
    dep.add_argument("--version", default="champion")
    dep.add_argument("--target", default=None)
    af = sub.add_parser("airflow")
    af.add_argument("args", nargs=argparse.REMAINDER)
    dem = sub.add_parser("demo")
    dem.add_argument("--events", type=int, default=300_000)
    sub.add_parser("mlflow-ui")
    stp = sub.add_parser("stop")
    stp.add_argument("--timeout", type=float, default=20.0, help="seconds from SIGTERM to SIGKILL")
    exp = sub.add_parser("experiment", help="online A/B experiments between registered versions")
    exp_sub = exp.add_subparsers(dest="action", required=True)
    exp_start = exp_sub.add_parser("start", help="package both arms, load them into Triton, start routing")
    exp_start.add_argument("id", help="experiment id, e.g. ranker-2026-12")
    exp_start.add_argument("--control", default="champion", help="version or alias served to the control arm")
    exp_start.add_argument("--treatment", default="challenger", help="version or alias of the treatment arm")
    exp_start.add_argument("--holdout", type=float, default=0.0, help="share of customers outside the test")
    exp_start.add_argument("--treatment-share", type=float, default=None,
                           help="share of all traffic for the treatment (default: half of what the holdout leaves)")
    exp_start.add_argument("--guardrail", action="append", default=[], metavar="KEY=VALUE",
                           help="min_impressions, max_days, metric, guardrail_metric, alpha, tau")
    exp_start.add_argument("--no-triton", action="store_true", help="do not restart the local Triton")
    exp_stop = exp_sub.add_parser("stop", help="end the experiment; everyone gets the champion")
    exp_stop.add_argument("id")
    exp_sub.add_parser("list", help="every experiment with live figures (what GET /experiments returns)")
    exp_eval = exp_sub.add_parser("evaluate", help="what the evaluate_experiment DAG does, in-process")
    exp_eval.add_argument("--date", default=date.today().isoformat())
    stk = sub.add_parser("stack", help="the production topology on this machine (ops/stack.py)")
    stk.add_argument("action", choices=["up", "status", "down", "reload-api", "demo"],
                     help="reload-api: the API's workers restart gracefully (a new deployment needs none); "
                          "demo: up, then the nightly DAG through the scheduler, deploy, one answer")
    stk.add_argument("--events", type=int, default=100_000, help="demo: synthetic events to generate")
    args = parser.parse_args(argv)

    settings = Settings.from_env()
    settings.home.mkdir(parents=True, exist_ok=True)
    if args.command == "generate":
        days = args.days or settings.window_days
        print(json.dumps(generate(settings, args.events, args.end, days, args.seed, args.corrupt,
                                         args.users, args.products, dict(args.truth)), indent=2))
    elif args.command == "nightly":
        # A night that stops on purpose (validation failed closed, no partitions, a stage's own
        # error) is one `error:` line and exit 1, not a traceback; the details are in the logs.
        return run_command(lambda: print(json.dumps(run_nightly(settings, args.date), indent=2, default=str)),
                           nightly_errors(), exit_code=1)
    elif args.command == "deploy":
        print(json.dumps(run_deploy(settings, args.version, args.target or settings.deploy_target), indent=2))
    elif args.command == "airflow":
        return run_airflow(settings, *args.args, check=False).returncode
    elif args.command == "mlflow-ui":
        return mlflow_ui(settings)
    elif args.command == "demo":
        demo(settings, args.events)
    elif args.command == "stop":
        stopped = stop(settings, args.timeout)
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    elif args.command == "stack":
        return stack_command(settings, args.action, args.events)
    elif args.command == "experiment":
        return experiment_command(settings, args)
    return 0


def _guardrail_value(text: str) -> object:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def experiment_command(settings: Settings, args: argparse.Namespace) -> int:
    """`experiment start|stop|list|evaluate`; a refused definition or state change is one `error:` line, exit 1."""
    from api.experiments import ExperimentError
    from stages import experiments
    from stages.deploy import DeployError
    from registry.errors import RegistryError
    from serving.errors import ServerStartError

    def run() -> None:
        if args.action == "start":
            guardrails = {}
            for item in args.guardrail:
                key, sep, value = item.partition("=")
                if not sep:
                    raise ExperimentError(f"--guardrail {item!r}: expected KEY=VALUE")
                guardrails[key] = _guardrail_value(value)
            arms = {"control": args.control, "treatment": args.treatment}
            share = (1.0 - args.holdout) / 2 if args.treatment_share is None else args.treatment_share
            shares = {"control": 1.0 - args.holdout - share, "treatment": share}
            out = experiments.start(settings, args.id, arms, "control", shares, args.holdout, guardrails,
                                    load_triton=not args.no_triton and settings.deploy_target == "local")
        elif args.action == "stop":
            out = experiments.stop(settings, args.id)
        elif args.action == "evaluate":
            out = experiments.evaluate(args.date, settings)
        else:
            out = experiments.describe_all(settings)
        print(json.dumps(out, indent=2, default=str))

    return run_command(run, (ExperimentError, ValueError, RegistryError, DeployError, ServerStartError), exit_code=1)


def stack_command(settings: Settings, action: str, events: int = 100_000) -> int:
    """`stack up|status|down|reload-api|demo`; 1 when a part is unhealthy or failed to start."""
    from ops import StackError, down, reload_api, status, up
    from settings import StackSettings

    stack = StackSettings.from_env()
    try:
        if action == "up":
            up(settings, stack)
        elif action == "down":
            down(settings, stack)
        elif action == "reload-api":
            reload_api(settings, stack)
        elif action == "demo":
            from ops.demo import demo as stack_demo

            logging.getLogger().setLevel(logging.WARNING)  # the demo tells its own story, one line a stage
            return 0 if stack_demo(settings, stack, events)["state"] == "success" else 1
        else:
            parts = status(settings, stack)
            for part in parts:
                state = "healthy" if part.healthy else ("running" if part.running else "down")
                print(f"{part.name:<22} {state:<8} pid {part.pid or '-':<8} {part.detail}")
            return 0 if all(p.healthy for p in parts if p.name != "triton" or p.pid) else 1
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
