"""Shared fixtures: free ports, an isolated RECSYS_HOME, and the GPU skip marker."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
# Airflow reads its configuration at import: point it at the project's airflow.cfg and a
# throw-away metadata DB before any test imports it.
_AIRFLOW_STATE = Path(tempfile.mkdtemp(prefix="recsys-airflow-"))
os.environ["AIRFLOW_HOME"] = str(REPO)
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_AIRFLOW_STATE / 'airflow.db'}"
os.environ["AIRFLOW__LOGGING__BASE_LOG_FOLDER"] = str(_AIRFLOW_STATE / "logs")


_HANDED_OUT: set[int] = set()


def _ephemeral_low() -> int:
    """The first port of the kernel's range for clients' source ports (Linux: 32768 by default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the ephemeral range.

    Not bind(0)'s port: that one lies in the range the kernel draws clients' source ports from, so
    a client polling it before its server listens (a readiness loop, a gloo rank dialling rank 0's
    store) can be given that very port as its own and connect to itself (TCP simultaneous open),
    then wait on its own socket. Each port is handed out once per test session.
    """
    low = _ephemeral_low()
    draw = random.Random()  # not the global generator, which tests seed
    for _ in range(1000):
        port = draw.randrange(max(1024, low - 12000), low)
        if port in _HANDED_OUT:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _HANDED_OUT.add(port)
        return port
    raise RuntimeError(f"no free port found below {low}")


@pytest.fixture
def recsys_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private RECSYS_HOME so a test never touches ./var or another test's state."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("RECSYS_HOME", str(home))
    for name in ("MLFLOW_TRACKING_URI", "RECSYS_DATABASE_URL", "RECSYS_MLFLOW_ARTIFACT_ROOT"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """A real moto server (S3, SageMaker, runtime, autoscaling) on a free loopback port."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                requests.get(f"{url}/moto-api/", timeout=1)
                break
            except requests.ConnectionError:
                if proc.poll() is not None:
                    pytest.fail(f"moto server exited with {proc.returncode}")
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


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
