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
    assert set(dagbag.dag_ids) == {"nightly_training", "deploy_model"}


def test_nightly_dag_runs_the_stages_in_order(dagbag) -> None:
    dag = dagbag.dags["nightly_training"]
    order = ["ingest", "validate", "fit_workflow", "train", "evaluate", "register", "promote",
             "promoted", "trigger_deploy"]
    assert set(dag.task_ids) == set(order) | {"train_retrieval"}
    assert dag.get_task("train_retrieval").upstream_task_ids == {"fit_workflow"}
    assert "register" in dag.get_task("train_retrieval").downstream_task_ids
    for upstream, downstream in zip(order, order[1:]):
        assert downstream in dag.get_task(upstream).downstream_task_ids
    assert dag.catchup is False
    assert dag.dagrun_timeout is not None
    assert dag.get_task("train").retries >= 1
    assert dag.get_task("validate").retries == 0  # fail closed, no retry on bad data


def test_deploy_dag_is_manual_and_takes_version_and_target(dagbag) -> None:
    dag = dagbag.dags["deploy_model"]
    assert type(dag.timetable).__name__ == "NullTimetable"  # triggered by hand or by promotion only
    assert list(dag.params.keys()) == ["version", "target"]
    assert dag.params["version"] == "champion"
    assert set(dag.task_ids) == {"resolve", "package", "deploy", "record"}
