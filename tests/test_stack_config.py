"""The stack without services: docker/compose.yaml runs what `stack up` runs, secrets stay
private, and `down`'s process-group handling leaves nothing behind (fast, no network)."""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
import time
from pathlib import Path

import pytest
import yaml

from ops.processes import ProcessTable, Service
from serving.local_triton import group_members
from ops.stack import ensure_secrets, services, stack_env
from settings import Settings, StackSettings
from tests.conftest import REPO

COMPOSE = REPO / "docker" / "compose.yaml"


def _compose_view(monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, StackSettings, dict[str, str]]:
    """The stack as compose runs it: home /data, bound to 0.0.0.0, PostgreSQL/Redis by service name."""
    monkeypatch.setenv("RECSYS_HOME", "/data")
    monkeypatch.setenv("RECSYS_AIRFLOW_HOST", "0.0.0.0")
    for name in ("RECSYS_API_PORT", "RECSYS_AIRFLOW_PORT", "RECSYS_MLFLOW_UI_PORT", "RECSYS_DASK_PORT",
                 "RECSYS_API_WORKERS", "RECSYS_STACK_ARTIFACTS", "RECSYS_STACK_DB_PREFIX", "RECSYS_STACK_SCHEDULE"):
        monkeypatch.delenv(name, raising=False)
    stack = dataclasses.replace(StackSettings.from_env(), host="0.0.0.0", db_prefix="recsys",
                                postgres_url="postgresql+psycopg2://recsys:recsys@postgres:5432",
                                broker_url="redis://redis:6379/0", ratelimit_storage="redis://redis:6379/1")
    settings = Settings.from_env()
    return settings, stack, stack_env(settings, stack, {"fernet_key": "f", "jwt_secret": "j", "api_secret_key": "k"})


def _addresses_as_schemes(argv: list[str]) -> list[str]:
    """Hosts differ by nature (127.0.0.1 vs a service name); everything else must match."""
    return [token.split("://")[0] + "://" if "://" in token else token for token in argv]


def test_compose_runs_the_same_commands_as_stack_up(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, stack, env = _compose_view(monkeypatch)
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    ours = {s.name: [Path(s.command[0]).name, *s.command[1:]] for s in services(settings, stack, env)}
    assert set(ours) <= set(compose), f"compose lacks {set(ours) - set(compose)}"
    mismatched = {name: (compose[name]["command"], " ".join(argv)) for name, argv in ours.items()
                  if _addresses_as_schemes(compose[name]["command"].split()) != _addresses_as_schemes(argv)}
    assert mismatched == {}
    queues = {name: argv[argv.index("--queues") + 1] for name, argv in ours.items() if "--queues" in argv}
    assert queues == {"worker-default": "default", "worker-gpu": "gpu"}


def test_compose_sets_the_same_configuration_as_stack_up(monkeypatch: pytest.MonkeyPatch) -> None:
    settings, stack, env = _compose_view(monkeypatch)
    compose_env = yaml.safe_load(COMPOSE.read_text())["x-recsys-env"]
    process_plumbing = {"PATH", "PYTHONPATH", "AIRFLOW_HOME"}  # the image sets these its own way
    assert set(env) - process_plumbing <= set(compose_env)
    secrets = {"AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"}
    differing = {k: (compose_env[k], v) for k, v in env.items()
                 if k not in process_plumbing | secrets
                 and _addresses_as_schemes([str(compose_env[k])]) != _addresses_as_schemes([v])}
    assert differing == {}
    assert all(str(compose_env[k]).startswith("${") for k in secrets)  # never committed


def test_generated_secrets_and_admin_password_are_private_and_made_once(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSYS_HOME", str(tmp_path))
    settings = Settings.from_env()
    first, password = ensure_secrets(settings)
    again, second_password = ensure_secrets(settings)
    assert password and second_password is None and first == again
    files = [tmp_path / "stack" / "secrets.json", tmp_path / "stack" / "airflow-passwords.json"]
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert password in files[1].read_text()


def test_stop_kills_the_whole_process_group_even_when_sigterm_is_ignored(tmp_path: Path) -> None:
    table = ProcessTable(tmp_path)
    # A parent that ignores SIGTERM with a child that does too: only SIGKILL to the group ends both.
    script = "import signal, subprocess, sys, time\n" \
             "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" \
             "subprocess.Popen([sys.executable, '-c', 'import signal, time; " \
             "signal.signal(signal.SIGTERM, signal.SIG_IGN); print(\"child\", flush=True); time.sleep(60)'])\n" \
             "time.sleep(60)\n"
    record = table.start(Service("stubborn", [sys.executable, "-c", script], dict(os.environ)))
    deadline = time.monotonic() + 30
    while len(group_members(record.pid)) < 2:
        assert time.monotonic() < deadline, "the child did not start"
        time.sleep(0.1)
    assert table.stop("stubborn", timeout_s=1.0)
    assert group_members(record.pid) == []
    assert table.records() == []
