"""The DAG files import cleanly under Airflow and declare the flow of DESIGN.md."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(REPO / "dags"))


def test_dag_files_import_without_errors(dagbag) -> None:
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == {"nightly_training", "deploy_model", "evaluate_experiment"}


def test_nightly_dag_follows_the_declared_stage_list(dagbag) -> None:
    from stages.nightly import NIGHTLY_STAGES

    dag = dagbag.dags["nightly_training"]
    names = [stage.name for stage in NIGHTLY_STAGES]
    assert set(dag.task_ids) == set(names) | {"promoted", "trigger_deploy"}
    assert all(dag.get_task(stage.name).upstream_task_ids == set(stage.needs) for stage in NIGHTLY_STAGES)
    # every stage comes after the ones it needs in the declared list, so the CLI's loop is a valid order
    assert all(names.index(n) < names.index(stage.name) for stage in NIGHTLY_STAGES for n in stage.needs)
    assert dag.get_task("promoted").upstream_task_ids == {"promote"}
    assert dag.get_task("trigger_deploy").upstream_task_ids == {"promoted"}
    assert dag.catchup is False
    assert dag.dagrun_timeout is not None
    assert dag.get_task("train").retries >= 1
    assert dag.get_task("validate").retries == 0  # fail closed, no retry on bad data


@pytest.mark.parametrize(("promoted", "deploy", "triggers"), [
    (True, True, True),     # a promotion deploys the champion (observed under the scheduler: tests/test_stack.py)
    (False, True, False),   # the gate kept the champion: trigger_deploy is skipped, no deploy run
    (True, False, False),   # a run triggered with {"deploy": false} promotes without deploying
])
def test_only_a_promotion_lets_the_nightly_trigger_the_deploy(dagbag, promoted: bool, deploy: bool,
                                                               triggers: bool) -> None:
    dag = dagbag.dags["nightly_training"]
    gate = dag.get_task("promoted")
    assert type(gate).__name__ == "_ShortCircuitDecoratedOperator"  # False skips everything downstream
    decision = {"promoted": promoted, "reason": "...", "version": "3"}
    assert gate.python_callable(decision, params={"deploy": deploy}) is triggers
    trigger = dag.get_task("trigger_deploy")
    assert trigger.trigger_dag_id == "deploy_model" and trigger.conf["version"] == "champion"


def test_deploy_dag_is_manual_and_takes_version_and_target(dagbag) -> None:
    dag = dagbag.dags["deploy_model"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # triggered by hand or by promotion only
    assert list(dag.params.keys()) == ["version", "target"]
    assert dag.params["version"] == "champion"
    assert set(dag.task_ids) == {"resolve", "package", "deploy", "record"}


def test_evaluate_experiment_is_daily_and_deploys_only_a_promotion(dagbag) -> None:
    dag = dagbag.dags["evaluate_experiment"]
    assert dag.schedule == "@daily" and dag.catchup is False
    assert set(dag.task_ids) == {"evaluate", "promoted", "trigger_deploy"}
    assert dag.get_task("evaluate").retries == 0  # a decision acts once per look
    assert dag.get_task("promoted").upstream_task_ids == {"evaluate"}
    assert dag.get_task("trigger_deploy").upstream_task_ids == {"promoted"}
    assert dag.get_task("trigger_deploy").trigger_dag_id == "deploy_model"
    assert dag.params["deploy"] is True
