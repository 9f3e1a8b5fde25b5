"""Shared fixtures: free ports, an isolated RECSYS_HOME, and the GPU skip marker."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Airflow reads its configuration at import: point it at the project's airflow.cfg and a
# throw-away metadata DB before any test imports it.
_AIRFLOW_STATE = Path(tempfile.mkdtemp(prefix="recsys-airflow-"))
os.environ["AIRFLOW_HOME"] = str(REPO)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_STATE / 'airflow.db'}"
os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(_AIRFLOW_STATE / "logs")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def recsys_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private RECSYS_HOME so a test never touches ./var or another test's state."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("RECSYS_HOME", str(home))
    for name in ("MLFLOW_TRACKING_URI", "RECSYS_DATABASE_URL", "RECSYS_MLFLOW_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return home


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run on the lent device)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
