"""`python -m cli stack demo`: the whole path on the production topology, told in a few lines.

The stack comes up, synthetic events are written, the scheduler runs the nightly DAG (triggered
through the REST API) on the Celery workers, the promotion triggers the deploy DAG, and the API
answers one recommendation. Airflow's own logs stay in files ($RECSYS_HOME/stack/); the terminal
gets one line per stage and a summary.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone

import requests

from ops.airflow_client import AirflowClient
from ops.stack import ADMIN, PASSWORDS_FILE, admin_password, stack_dir, up, urls
from settings import Settings, StackSettings

NIGHTLY, DEPLOY = "nightly_training", "deploy_model"


def _task_line(progress: Callable[[str], None]) -> Callable[[dict], None]:
    def show(task: dict) -> None:
        took = f"{task['duration']:.0f} s" if task.get("duration") is not None else ""
        queue = f"queue {task['queue']}" if task["state"] != "skipped" else ""
        progress(f"      {task['task_id']:<16} {task['state']:<8} {took:>6}  {queue}")
    return show


def demo(settings: Settings, stack: StackSettings, events: int,
         progress: Callable[[str], None] = print) -> dict:
    from etl.synthetic import SyntheticConfig, generate, write_events

    started = time.monotonic()
    now = datetime.now(timezone.utc)
    run_date, logical_date = now.date().isoformat(), now.strftime("%Y-%m-%dT%H:%M:%SZ")  # a demo again today: a new run
    progress("[1/5] the stack: Airflow on Celery, MLflow server, Dask, API")
    up(settings, stack, progress=lambda line: progress(f"      {line}"))

    progress(f"[2/5] {events:,} synthetic events for the {settings.window_days} days before {run_date}")
    config = SyntheticConfig(n_events=events, n_users=max(200, events // 500), n_products=max(100, events // 1000),
                             start_date=date.today() - timedelta(days=settings.window_days),
                             days=settings.window_days, seed=7)
    write_events(generate(config).events, settings.raw_dir, config=config)

    u = urls(settings, stack)
    airflow = AirflowClient(u["airflow"], ADMIN, admin_password(settings))
    airflow.wait_for_dags({NIGHTLY, DEPLOY}, timeout_s=180)
    run_id = f"demo-{run_date}-{int(time.time())}"
    progress(f"[3/5] {NIGHTLY} run {run_id}, run by the scheduler on the Celery workers")
    airflow.trigger(NIGHTLY, run_id, logical_date, {"deploy": True})
    state = airflow.wait(NIGHTLY, run_id, timeout_s=3600, on_task=_task_line(progress))
    if state != "success":
        progress(f"      the run {state}; task logs: {stack_dir(settings) / 'airflow' / 'logs'}")
        return {"state": state}
    decision = airflow.xcom(NIGHTLY, run_id, "promote")

    triggered = [r for r in airflow.runs(DEPLOY) if r.get("triggered_by") != "rest_api"]
    if decision["promoted"] and triggered:
        deploy_run = max(triggered, key=lambda r: r["queued_at"])["dag_run_id"]
        progress(f"[4/5] {DEPLOY}, triggered by the promotion: champion -> local Triton")
    else:  # the gate kept the champion; the demo still serves the night's model, as an operator could
        deploy_run = f"demo-deploy-{decision['version']}-{int(time.time())}"
        progress(f"[4/5] {DEPLOY} by hand for version {decision['version']} (the gate: {decision['reason']})")
        airflow.trigger(DEPLOY, deploy_run, datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                        {"version": str(decision["version"]), "target": "local"})
    airflow.wait(DEPLOY, deploy_run, timeout_s=1800, on_task=_task_line(progress))
    # No API restart: its workers build the new ranker when they see serving/current moved.

    progress("[5/5] the API: store loaded from the validated events, one recommendation")
    from api.seed import seed_from_events

    import pandas as pd

    validated = settings.run_dir(run_date) / "validation" / "valid" / "events.parquet"
    seed_from_events(stack.database_url("api"), validated)
    # A buyer who has seen few products: the API leaves seen ones out, so most of the catalogue is open.
    events_seen = pd.read_parquet(validated, columns=["user_id", "product_id", "event_type"])
    buyers = events_seen.loc[events_seen.event_type == "purchase", "user_id"].unique()
    seen = events_seen[events_seen.user_id.isin(buyers)].groupby("user_id")["product_id"].nunique()
    customer = int(seen.idxmin())
    answer = requests.get(f"{u['api']}/customers/{customer}/recommendations?k=5", timeout=30).json()

    report = json.loads((settings.run_dir(run_date) / "eval" / "comparison.json").read_text())
    progress("")
    progress(f"trained : DLRM ranker + two-tower retrieval on {run_date}'s window, registered as version "
             f"{decision['version']}")
    progress(f"metrics : {_metrics(report)}")
    progress(f"champion: {'version ' + str(decision['version']) if decision['promoted'] else 'unchanged'} "
             f"({decision['reason']})")
    progress(f"answer  : customer {customer} -> {[i['product_id'] for i in answer['items']]} "
             f"(ranker {answer['ranker']})")
    for item in answer["items"][:2]:
        why = item.get("explanation") or {}
        progress(f"why     : {item['product_id']}: {why.get('reason')} ({why.get('source')}, evidence "
                 f"{why.get('evidence')})")
    drift_file = settings.run_dir(run_date) / "eval" / "drift.json"
    if drift_file.is_file():  # written by the evaluate stage (registry.drift)
        progress(f"drift   : {json.loads(drift_file.read_text())['reason']}")
    progress(f"Airflow : {u['airflow']}  (user {ADMIN}, password in {stack_dir(settings) / PASSWORDS_FILE})")
    progress(f"MLflow  : {u['mlflow']}    API: {u['api']}")
    progress(f"logs    : {stack_dir(settings) / 'logs'} (services), {stack_dir(settings) / 'airflow' / 'logs'} (tasks)")
    progress(f"done in {time.monotonic() - started:.0f} s; the stack keeps running (make stack-down)")
    return {"state": state, "decision": decision, "answer": answer}


def _metrics(report: dict) -> str:
    """NDCG@10 over the full catalogue of the served path and each same-run baseline, with the served
    path's 95% interval over users (stages.nightly.evaluate's eval/comparison.json)."""
    metrics = report["metrics"]
    methods = sorted({key.split(".")[0] for key in metrics
                      if key.endswith(".ndcg_at_10") and not key.startswith("served_minus_")},
                     key=lambda m: (m != "served", -metrics[f"{m}.ndcg_at_10"]))
    shown = [f"{m} {metrics[f'{m}.ndcg_at_10']:.4f}" for m in methods]
    if "served.ndcg_at_10_ci_low" in metrics:
        shown[0] += f" [{metrics['served.ndcg_at_10_ci_low']:.4f}, {metrics['served.ndcg_at_10_ci_high']:.4f}]"
    return f"NDCG@10, {metrics.get('eval_users', 0):.0f} users: " + "; ".join(shown)
