"""docs/kubernetes/ is linted here (no cluster runs it): every manifest validates strictly against
the Kubernetes API schemas (kubernetes-validate, offline), the Helm values against the chart keys
they use, and both describe the system `stack up` runs (same commands and queues)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

DOCS = REPO / "docs" / "kubernetes"
MANIFESTS = sorted(p for p in DOCS.glob("*.yaml") if p.name != "airflow-values.yaml")
KUBERNETES = "1.37.0"


def _documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _containers(path: Path) -> dict[str, list[str]]:
    """Deployment name -> its first container's argv."""
    return {doc["metadata"]["name"]: doc["spec"]["template"]["spec"]["containers"][0]["args"]
            for doc in _documents(path) if doc["kind"] == "Deployment"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifests_validate_strictly_against_the_kubernetes_api(path: Path) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    problems = []
    for doc in _documents(path):
        try:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert problems == []


def test_helm_values_use_only_the_chart_keys_they_are_checked_against() -> None:
    import jsonschema

    schema = json.loads((DOCS / "airflow-values.schema.json").read_text())
    values = yaml.safe_load((DOCS / "airflow-values.yaml").read_text())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
              for e in jsonschema.Draft7Validator(schema).iter_errors(values)]
    assert errors == []
    typo = values | {"worker": {"replicas": 1}}
    assert not jsonschema.Draft7Validator(schema).is_valid(typo)


def test_kubernetes_runs_the_stacks_commands_and_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.test_stack_config import _addresses_as_schemes, _compose_view
    from ops.stack import services

    settings, stack, env = _compose_view(monkeypatch)
    ours = {s.name: [Path(s.command[0]).name, *s.command[1:]] for s in services(settings, stack, env)}
    deployed = _containers(DOCS / "dask.yaml") | _containers(DOCS / "api.yaml")
    assert _addresses_as_schemes(deployed["recsys-dask-scheduler"]) == _addresses_as_schemes(ours["dask-scheduler"])
    assert _addresses_as_schemes(deployed["recsys-dask-workers"]) == _addresses_as_schemes(ours["dask-workers"])
    assert deployed["recsys-api"] == ours["api"]
    mlflow = _containers(DOCS / "mlflow.yaml")["recsys-mlflow"]
    assert mlflow[:mlflow.index("--backend-store-uri")] == ours["mlflow"][:ours["mlflow"].index("--backend-store-uri")]

    values = yaml.safe_load((DOCS / "airflow-values.yaml").read_text())
    gpu = _containers(DOCS / "gpu-worker.yaml")["recsys-worker-gpu"]
    assert values["executor"] == env["AIRFLOW__CORE__EXECUTOR"]
    assert gpu[gpu.index("--queues") + 1] == "gpu" and "--queues default" in values["workers"]["args"][-1]
    chart_env = {e["name"]: e["value"] for e in values["env"]}
    assert all(_addresses_as_schemes([chart_env[k]]) == _addresses_as_schemes([env[k]])
               for k in ("RECSYS_HOME", "MLFLOW_TRACKING_URI", "RECSYS_MLFLOW_ARTIFACT_ROOT", "RECSYS_DASK_SCHEDULER"))
