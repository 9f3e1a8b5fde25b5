"""Registry through a real `mlflow server` process: tracking, registry and artifacts over HTTP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import torch

import registry
from registry import Lineage
from tests.conftest import free_port
from models.dlrm import DLRM, DLRMConfig
from models.saved import load_model, save_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    # Own session: the server forks uvicorn workers, and the whole group must go at teardown.
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        stdout=log, stderr=subprocess.STDOUT, cwd=root, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180  # the first start migrates the sqlite schema
        while True:
            try:
                if requests.get(f"{url}/health", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def test_run_is_logged_registered_promoted_and_downloaded_over_http(
    mlflow_server: str, tmp_path: Path
) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"categorical": ["user_id"], "continuous": ["price"]}))
    (tmp_path / "workflow").mkdir()
    (tmp_path / "workflow" / "workflow.json").write_text('{"ops": ["Categorify"]}')
    torch.manual_seed(1)
    model_path = save_model(DLRM(DLRMConfig(2, [4], embedding_dim=4, bottom_mlp=[4], top_mlp=[4])),
                            tmp_path / "dlrm.pt")

    run_id = registry.log_training_run(
        mlflow_server, "recsys-http", {"epochs": 1}, [{"epoch": 1, "loss": 0.7}],
        {"ndcg_at_10": 0.4, "baseline_ndcg_at_10": 0.3, "eval_users": 300,
         "vs_baseline_ndcg_at_10_ci_low": 0.05, "vs_baseline_ndcg_at_10_ci_high": 0.15}, model_path,
        {"schema": schema, "workflow": tmp_path / "workflow"},
        Lineage(registry.git_sha(), registry.data_hash([schema]), "eval-1", "2026-11-24"),
    )
    version = registry.register_model(mlflow_server, run_id, "ranker-http")
    decision = registry.promote(mlflow_server, "ranker-http", version)
    assert decision.promoted

    local = registry.download_model(mlflow_server, "models:/ranker-http@champion", tmp_path / "dl")
    assert (local / "workflow" / "workflow.json").read_text() == '{"ops": ["Categorify"]}'
    dense, sparse = torch.randn(3, 2), torch.tensor([[0], [3], [2]])
    assert torch.equal(load_model(local / "dlrm.pt")(dense, sparse), load_model(model_path)(dense, sparse))

    registry.set_deployment_tag(mlflow_server, "ranker-http", version, "local", "127.0.0.1:8000")
    with registry.tracking.tracking(mlflow_server) as client:
        tags = client.get_model_version("ranker-http", version).tags
    assert tags["deployment.local.endpoint"] == "127.0.0.1:8000"
    assert tags["promotion.decision"] == "promoted"
