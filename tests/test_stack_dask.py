"""`stack status` asks the Dask scheduler itself: it must answer over its protocol (a stopped
scheduler whose port still accepts connections is unhealthy) and count the stack's workers."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from ops.processes import ProcessTable
from ops.stack import _wait_healthy, probe, services, stack_env, status
from settings import Settings, StackSettings
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _until(check, timeout_s: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.5)


def test_status_reports_whether_the_dask_scheduler_answers_and_its_workers(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    monkeypatch.setenv("RECSYS_DASK_PORT", str(free_port()))
    monkeypatch.setenv("RECSYS_DASK_WORKERS", "1")
    settings, stack = Settings.from_env(), StackSettings.from_env()
    env = stack_env(settings, stack, {"fernet_key": "", "jwt_secret": "", "api_secret_key": ""})
    by_name = {s.name: s for s in services(settings, stack, env)}
    scheduler, workers = by_name["dask-scheduler"], by_name["dask-workers"]
    table = ProcessTable(tmp_path / "stack")
    try:
        table.start(scheduler)
        _wait_healthy(table, scheduler, timeout_s=90)
        assert probe(table, workers) == (False, "not running")
        table.start(workers)
        _wait_healthy(table, workers, timeout_s=90)
        parts = {p.name: p for p in status(settings, stack)}
        assert parts["dask-scheduler"].healthy and parts["dask-workers"].healthy
        assert parts["dask-workers"].detail.endswith("answers: 1 workers (expects 1)")

        # Workers gone: the scheduler still answers, and counts none.
        table.stop("dask-workers", timeout_s=15)
        _until(lambda: probe(table, scheduler)[1].endswith("answers: 0 workers"))
        assert probe(table, scheduler)[0] is True

        # A frozen scheduler: its pid lives and its port still accepts connections, yet it is unhealthy.
        record = table.record("dask-scheduler")
        assert record is not None
        os.kill(record.pid, signal.SIGSTOP)
        try:
            with socket.create_connection(("127.0.0.1", stack.dask_port), timeout=2):
                pass
            ok, seen = probe(table, scheduler)
            assert not ok and seen.endswith("does not answer"), seen
        finally:
            os.kill(record.pid, signal.SIGCONT)
    finally:
        table.stop("dask-workers", timeout_s=15)
        table.stop("dask-scheduler", timeout_s=15)
