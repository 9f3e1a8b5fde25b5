"""A client of the Airflow REST API (v2) logged in through the simple auth manager: trigger DAG
runs and read their task instances and XComs, as the demo and the stack's tests do."""

from __future__ import annotations

import json
import time

import requests

from ops.errors import StackError


class AirflowClient:
    """Airflow's REST API at `url`, with a JWT obtained from `/auth/token`."""

    def __init__(self, url: str, username: str, password: str, timeout_s: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        response = requests.post(f"{self.url}/auth/token", json={"username": username, "password": password},
                                 timeout=timeout_s)
        if response.status_code not in (200, 201):
            raise StackError(f"Airflow login as {username} failed ({response.status_code}): {response.text[:200]}")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def get(self, path: str) -> dict:
        response = self.session.get(f"{self.url}/api/v2{path}", timeout=self.timeout_s)
        response.raise_for_status()
        return response.json()

    def dag_ids(self) -> set[str]:
        return {d["dag_id"] for d in self.get("/dags")["dags"]}

    def wait_for_dags(self, dag_ids: set[str], timeout_s: float) -> None:
        """Until the dag-processor has parsed and registered `dag_ids`."""
        deadline = time.monotonic() + timeout_s
        while missing := dag_ids - self.dag_ids():
            if time.monotonic() > deadline:
                raise StackError(f"Airflow has not registered {sorted(missing)} after {timeout_s:.0f} s; "
                                 "see the dag-processor's log")
            time.sleep(2)

    def trigger(self, dag_id: str, run_id: str, logical_date: str, conf: dict) -> dict:
        """A manual DAG run; `logical_date` as YYYY-MM-DD (midnight UTC) or an ISO timestamp (a DAG
        has one run per logical date; the run's `ds` is its day either way)."""
        when = f"{logical_date}T00:00:00Z" if len(logical_date) == 10 else logical_date
        response = self.session.post(f"{self.url}/api/v2/dags/{dag_id}/dagRuns", timeout=self.timeout_s, json={
            "dag_run_id": run_id, "logical_date": when, "conf": conf})
        if response.status_code != 200:
            raise StackError(f"triggering {dag_id} failed ({response.status_code}): {response.text[:300]}")
        return response.json()

    def runs(self, dag_id: str) -> list[dict]:
        return self.get(f"/dags/{dag_id}/dagRuns")["dag_runs"]

    def state(self, dag_id: str, run_id: str) -> str:
        return self.get(f"/dags/{dag_id}/dagRuns/{run_id}")["state"]

    def tasks(self, dag_id: str, run_id: str) -> dict[str, dict]:
        items = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {t["task_id"]: t for t in items}

    def wait(self, dag_id: str, run_id: str, timeout_s: float, on_task=None) -> str:
        """The run's final state ("success"/"failed"); `on_task(task)` once per task that finished."""
        deadline = time.monotonic() + timeout_s
        reported: set[str] = set()
        while True:
            state = self.state(dag_id, run_id)
            if on_task is not None:
                finished = [t for t in self.tasks(dag_id, run_id).values()
                            if t["state"] in ("success", "failed", "skipped", "upstream_failed")
                            and t["task_id"] not in reported]
                for task in sorted(finished, key=lambda t: (t["state"] == "skipped", t.get("end_date") or "")):
                    reported.add(task["task_id"])
                    on_task(task)
            if state in ("success", "failed"):
                return state
            if time.monotonic() > deadline:
                raise StackError(f"{dag_id} run {run_id} not finished after {timeout_s:.0f} s: "
                                 f"{ {t: v['state'] for t, v in self.tasks(dag_id, run_id).items()} }")
            time.sleep(3)

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> object:
        entry = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/return_value")
        value = entry["value"]
        return json.loads(value) if isinstance(value, str) else value
