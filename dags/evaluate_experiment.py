"""Daily: evaluate the running online experiment -> promote the winner (then deploy it) or roll back, or continue.

Wiring only; the stage is `stages.experiments.evaluate` (the same as `python -m cli experiment evaluate`):
per-arm figures from the API's database, the mSPRT decision with guardrails (registry.experiments), one
MLflow run per evaluation with the figures and a plot. A promotion moves alias `champion` to the winning
version and triggers `deploy_model` for it (unless conf {"deploy": false}).
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task

from settings import get_settings
from stages import experiments


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=5)},
    dagrun_timeout=timedelta(hours=1),
    params={"deploy": True},
    tags=["recsys", "experiments"],
    doc_md=__doc__,
)
def evaluate_experiment() -> None:
    @task(retries=0)  # the decision acts (alias, experiment state): never run it twice for one look
    def evaluate(ds: str | None = None) -> dict:
        return experiments.evaluate(ds, get_settings())

    @task.short_circuit
    def promoted(result: dict, params: dict | None = None) -> bool:
        return result["outcome"] == "promote" and bool((params or {}).get("deploy", True))

    promoted(evaluate()) >> TriggerDagRunOperator(
        task_id="trigger_deploy",
        trigger_dag_id="deploy_model",
        conf={"version": "champion", "target": get_settings().deploy_target},
    )


evaluate_experiment()
