"""Operations through `python -m cli`: `stop` ends every process group the project started, and the
Airflow UI binds loopback and asks for a login."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

import cli
from settings import Settings
from tests.conftest import free_port

# A server that ignores SIGTERM, like Airflow's scheduler, with two children that ignore it too:
# one in its group, one in a session of its own (as Airflow runs a task).
STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sleeper = [sys.executable, "-c",
           "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"]
children = [subprocess.Popen(sleeper), subprocess.Popen(sleeper, start_new_session=True)]
open(sys.argv[1], "w").write(" ".join(str(child.pid) for child in children))
time.sleep(600)
"""


def _wait_for(predicate, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.1)


@pytest.fixture
def settings(recsys_home: Path) -> Settings:
    return Settings.from_env()


def test_stop_ends_a_started_group_that_ignores_sigterm(settings: Settings, tmp_path: Path, capsys) -> None:
    ready = tmp_path / "child.pid"
    proc = cli.start_tracked(settings, "stubborn", [sys.executable, "-c", STUBBORN, str(ready)])
    try:
        _wait_for(lambda: ready.exists() and ready.read_text(), 60, "the server's children")
        in_group, own_session = map(int, ready.read_text().split())
        assert len(cli.group_members(proc.pid)) == 2 and cli.group_members(own_session) == [own_session]

        assert cli.main(["stop", "--timeout", "1"]) == 0

        assert cli.group_members(proc.pid) == []  # the server and its child, zombies aside
        assert cli.group_members(own_session) == []
        assert cli.tracked_names(settings) == []
        assert "stopped: stubborn" in capsys.readouterr().out
    finally:
        for group in (proc.pid, *(map(int, ready.read_text().split()) if ready.exists() else ())):
            if cli.group_members(group):
                os.killpg(group, 9)
        proc.wait(timeout=10)


def test_stop_leaves_a_process_that_reused_a_recorded_pid_alone(settings: Settings) -> None:
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    try:
        settings.pid_dir.mkdir(parents=True)
        (settings.pid_dir / "api.json").write_text(json.dumps(
            {"name": "api", "pgid": stranger.pid, "start_ticks": 1, "command": ["gunicorn"]}))

        assert cli.stop(settings, timeout_s=1) == []

        assert stranger.poll() is None and cli.tracked_names(settings) == []
    finally:
        stranger.kill()
        stranger.wait(timeout=10)


def test_airflow_binds_loopback_unless_configured(recsys_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cli.airflow_env(Settings.from_env())["AIRFLOW__API__HOST"] == "127.0.0.1"
    monkeypatch.setenv("RECSYS_AIRFLOW_HOST", "0.0.0.0")
    env = cli.airflow_env(Settings.from_env())
    assert env["AIRFLOW__API__HOST"] == "0.0.0.0"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"].startswith("http://127.0.0.1:")


def test_the_admin_password_is_generated_once_for_its_owner_only(settings: Settings) -> None:
    path = cli.ensure_airflow_login(settings)
    password = json.loads(path.read_text())["admin"]
    assert len(password) >= 16 and path.stat().st_mode & 0o077 == 0
    assert cli.ensure_airflow_login(settings) == path and json.loads(path.read_text())["admin"] == password


@pytest.mark.integration
def test_airflow_api_server_asks_for_a_login_on_loopback_and_stops(
        recsys_home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    port = free_port()
    monkeypatch.setenv("RECSYS_AIRFLOW_PORT", str(port))
    monkeypatch.setenv("AIRFLOW__API__WORKERS", "1")
    settings = Settings.from_env()
    cli.run_airflow(settings, "db", "migrate")
    log = open(tmp_path / "api-server.log", "wb")
    # The CLI runs in the foreground, as `make airflow-ui` does; `stop` comes from elsewhere.
    runner = subprocess.Popen([sys.executable, "-m", "cli", "airflow", "api-server"], cwd=cli.REPO,
                              stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def answers() -> bool:
            assert runner.poll() is None, (tmp_path / "api-server.log").read_text()[-3000:]
            try:
                return requests.get(f"{url}/api/v2/version", timeout=2).status_code < 500
            except requests.ConnectionError:
                return False
        _wait_for(answers, 240, "the Airflow API server")

        assert requests.get(f"{url}/api/v2/dags", timeout=10).status_code == 401
        password = json.loads(cli.airflow_passwords_file(settings).read_text())["admin"]
        assert requests.post(f"{url}/auth/token", json={"username": "admin", "password": "wrong"},
                             timeout=10).status_code == 401
        token = requests.post(f"{url}/auth/token", json={"username": "admin", "password": password},
                              timeout=10).json()["access_token"]
        assert requests.get(f"{url}/api/v2/dags", headers={"Authorization": f"Bearer {token}"},
                            timeout=10).status_code == 200
        listening = _listening_addresses(port)
        assert listening and all(address == "127.0.0.1" for address in listening)
        assert str(cli.airflow_passwords_file(settings)) in (tmp_path / "api-server.log").read_text()
        pgid = json.loads((settings.pid_dir / "airflow-api-server.json").read_text())["pgid"]

        assert cli.stop(settings, timeout_s=10) == ["airflow-api-server"]

        assert cli.group_members(pgid) == []
        runner.wait(timeout=30)
    finally:
        cli.stop(settings, timeout_s=5)
        if runner.poll() is None:
            runner.kill()
            runner.wait(timeout=10)


def _listening_addresses(port: int) -> list[str]:
    """IPv4 addresses with a socket listening on `port` (from /proc/net/tcp; state 0A = LISTEN)."""
    found = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.append(".".join(str(int(address[i:i + 2], 16)) for i in (6, 4, 2, 0)))
    return found
