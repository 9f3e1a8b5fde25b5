"""Nightly: ingest -> validate -> fit_workflow -> train -> evaluate (+ train_retrieval) -> register -> promote (-> deploy).

Wiring only. The tasks are `stages.nightly.NIGHTLY_STAGES`, in that order, each calling the same
stage function that `python -m cli nightly` runs, with the outputs of the stages it needs as XComs.
Validation failing closed fails the run without retries, so nothing downstream is trained or promoted;
a promotion triggers the deploy DAG to `RECSYS_DEPLOY_TARGET`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import dag, task
from airflow.sdk.exceptions import AirflowFailException

from settings import get_settings
from stages import nightly

# Errors that retrying the same inputs cannot fix: the task fails at once.
FAIL_FAST = {"ingest": (nightly.NoInputData,)}
# train: the Celery queue of the GPU worker (`stack up`, docker/, docs/KUBERNETES.md); other executors ignore it.
TASK_ARGS = {"validate": {"retries": 0}, "train": {"execution_timeout": timedelta(hours=4), "queue": "gpu"}}


def _stage_task(stage: nightly.StageSpec):  # type: ignore[no-untyped-def]
    @task(task_id=stage.name, **TASK_ARGS.get(stage.name, {}))
    def run(*inputs: dict, ds: str | None = None) -> dict:
        from validation import ValidationFailed

        try:
            return stage.run(ds, *inputs, get_settings())
        except (ValidationFailed, *FAIL_FAST.get(stage.name, ())) as exc:  # fail closed
            raise AirflowFailException(str(exc)) from exc

    return run


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
    outputs: dict = {}
    for stage in nightly.NIGHTLY_STAGES:
        outputs[stage.name] = _stage_task(stage)(*(outputs[n] for n in stage.needs))

    @task.short_circuit
    def promoted(decision: dict, params: dict | None = None) -> bool:
        return bool(decision["promoted"]) and bool((params or {}).get("deploy", True))

    promoted(outputs["promote"]) >> TriggerDagRunOperator(
        task_id="trigger_deploy",
        trigger_dag_id="deploy_model",
        conf={"version": "champion", "target": get_settings().deploy_target},
    )


nightly_training()
