"""Nightly: ingest -> validate -> fit_workflow -> train (+ train_retrieval) -> evaluate -> register -> promote (-> deploy).

Wiring only; each task calls the same stage function that `python -m cli nightly` runs
(plugins/nightly.py). Validation failing closed fails the run without retries, so nothing
downstream is trained or promoted.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowFailException

from plugins import nightly
from settings import get_settings


@dag(
    schedule="@daily",
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 2, "retry_delay": timedelta(minutes=5)},
    # Airflow 3 dropped SLAs; its Deadline Alerts (experimental in 3.3) break `dags test` runs
    # (DagRun.update_state fails on the alert), so the run and the train task have hard timeouts.
    dagrun_timeout=timedelta(hours=6),
    params={"deploy": True},
    tags=["recsys", "training"],
    doc_md=__doc__,
)
def nightly_training() -> None:
    @task
    def ingest(ds: str | None = None) -> dict:
        try:
            return nightly.ingest(ds, get_settings())
        except nightly.NoInputData as exc:
            raise AirflowFailException(str(exc)) from exc

    @task(retries=0)
    def validate(ingested: dict, ds: str | None = None) -> dict:
        from validation import ValidationFailed

        try:
            return nightly.validate(ds, ingested, get_settings())
        except ValidationFailed as exc:  # fail closed: retrying the same bad data cannot help
            raise AirflowFailException(str(exc)) from exc

    @task
    def fit_workflow(validated: dict, ds: str | None = None) -> dict:
        return nightly.fit_workflow(ds, validated, get_settings())

    @task(execution_timeout=timedelta(hours=4), queue="gpu")  # the GPU worker's queue (CeleryExecutor)
    def train(features: dict, ds: str | None = None) -> dict:
        return nightly.train(ds, features, get_settings())

    @task
    def train_retrieval(features: dict, ds: str | None = None) -> dict:
        return nightly.train_retrieval(ds, features, get_settings())

    @task
    def evaluate(features: dict, trained: dict, ds: str | None = None) -> dict:
        return nightly.evaluate(ds, features, trained, get_settings())

    @task
    def register(
        validated: dict,
        features: dict,
        trained: dict,
        evaluated: dict,
        retrieval: dict,
        ds: str | None = None,
    ) -> dict:
        return nightly.register(ds, validated, features, trained, evaluated, get_settings(), retrieval)

    @task
    def promote(features: dict, registered: dict) -> dict:
        return nightly.promote(features, registered, get_settings())

    @task.short_circuit
    def promoted(decision: dict, params: dict | None = None) -> bool:
        return bool(decision["promoted"]) and bool((params or {}).get("deploy", True))

    validated = validate(ingest())
    features = fit_workflow(validated)
    trained = train(features)
    evaluated = evaluate(features, trained)
    retrieval = train_retrieval(features)
    decision = promote(features, register(validated, features, trained, evaluated, retrieval))
    promoted(decision) >> TriggerDagRunOperator(
        task_id="trigger_deploy",
        trigger_dag_id="deploy_model",
        conf={"version": "champion", "target": "local"},
    )


nightly_training()
