"""Deploy: resolve -> package -> deploy -> record. Triggered by hand or by a promotion.

Conf: {"version": "champion" | "challenger" | "<number>", "target": "local" | "sagemaker"}.
Wiring only; the stages live in stages/deploy.py and run the same from `python -m cli deploy`.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, dag, task
from airflow.sdk.exceptions import AirflowFailException

from settings import get_settings
from stages import deploy as deploy_stages


@dag(
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    default_args={"retries": 1, "retry_delay": timedelta(minutes=1)},
    params={
        "version": Param("champion", type="string", description="alias or version number"),
        "target": Param("local", enum=list(deploy_stages.TARGETS)),
    },
    tags=["recsys", "serving"],
    doc_md=__doc__,
)
def deploy_model() -> None:
    @task
    def resolve(params: dict | None = None) -> dict:
        return deploy_stages.resolve(str(params["version"]), get_settings())

    @task
    def package(resolved: dict) -> dict:
        return deploy_stages.package(resolved, get_settings())

    @task(retries=0)
    def deploy(packaged: dict, params: dict | None = None) -> dict:
        try:
            return deploy_stages.deploy(packaged, params["target"], get_settings())
        except Exception as exc:  # a failed deploy was rolled back; a retry would redo the same
            raise AirflowFailException(f"deploy to {params['target']} failed: {exc}") from exc

    @task
    def record(deployed: dict) -> dict:
        return deploy_stages.record(deployed, get_settings())

    record(deploy(package(resolve())))


deploy_model()
