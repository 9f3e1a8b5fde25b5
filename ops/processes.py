"""Long-running processes of the stack: start each in its own process group, record it, stop it.

Every service is started in a new session (its pid is its process group id), with stdout and
stderr appended to `<stack_dir>/logs/<name>.log` and a record in `<stack_dir>/pids/<name>.json`
(pid, command, log). Stopping sends SIGTERM to the whole group, then SIGKILL after a timeout, so
the children a service forks (gunicorn and uvicorn workers, Celery pool processes, Dask nannies'
workers) go with it.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ops.errors import StackError
from serving.local_triton import group_members, proc_stat, process_alive, reap

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Service:
    """One process the stack runs: its command line, environment and health check."""

    name: str
    command: list[str]
    env: dict[str, str] = field(repr=False, default_factory=dict)
    health_url: str = ""  # HTTP URL answering 2xx when the service is up; empty = pid alive only
    tcp: tuple[str, int] | None = None  # or a TCP port that accepts connections
    log_marker: str = ""  # or a line its log prints once it is ready (Celery: "ready.")
    # or a dask.distributed scheduler (address) that must answer and report at least `dask_workers` workers
    dask: str = ""
    dask_workers: int = 0
    cwd: str | None = None


@dataclass(frozen=True)
class Record:
    """What `start` wrote down about a running service."""

    name: str
    pid: int  # also its process group id (new session)
    command: list[str]
    log_path: str
    log_offset: int  # size of the (appended) log at start: readiness is looked for after it
    start_ticks: int  # the process's start time (/proc/<pid>/stat): tells it from a reused pid


def start_ticks(pid: int) -> int:
    """When `pid` started, in clock ticks since boot; 0 when it does not exist."""
    fields = proc_stat(pid)
    return int(fields[19]) if fields else 0


class ProcessTable:
    """The records and logs of the services of one stack directory."""

    def __init__(self, stack_dir: Path) -> None:
        self.stack_dir = Path(stack_dir)
        self.pid_dir = self.stack_dir / "pids"
        self.log_dir = self.stack_dir / "logs"

    def _record_path(self, name: str) -> Path:
        return self.pid_dir / f"{name}.json"

    def records(self) -> list[Record]:
        """Recorded services, in the order they were started."""
        paths = sorted(self.pid_dir.glob("*.json"), key=lambda p: p.stat().st_mtime_ns) if self.pid_dir.is_dir() else []
        return [Record(**json.loads(p.read_text())) for p in paths]

    def record(self, name: str) -> Record | None:
        path = self._record_path(name)
        return Record(**json.loads(path.read_text())) if path.is_file() else None

    def is_running(self, record: Record) -> bool:
        """Alive and still the process we started: a reused pid has another start time (the command
        line cannot tell: Dask and gunicorn rewrite their process titles)."""
        return process_alive(record.pid) and start_ticks(record.pid) == record.start_ticks

    def logged_since_start(self, record: Record, marker: str) -> bool:
        """Whether the service's log has printed `marker` since this start."""
        try:
            with open(record.log_path, "rb") as log_file:
                log_file.seek(record.log_offset)
                return marker.encode() in log_file.read()
        except FileNotFoundError:
            return False

    def start(self, service: Service) -> Record:
        """Spawn `service` detached in its own session; its output goes to its log file."""
        existing = self.record(service.name)
        if existing is not None and self.is_running(existing):
            raise StackError(f"{service.name} already runs as pid {existing.pid}; `stack down` first")
        self.pid_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{service.name}.log"
        offset = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as out:
            proc = subprocess.Popen(service.command, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=service.env or None, cwd=service.cwd,
                                    start_new_session=True)
        record = Record(service.name, proc.pid, service.command, str(log_path), offset, start_ticks(proc.pid))
        self._record_path(service.name).write_text(json.dumps(asdict(record)))
        log.info("started %s: pid %d, log %s", service.name, proc.pid, log_path)
        return record

    def stop(self, name: str, timeout_s: float) -> bool:
        """SIGTERM to the service's process group, SIGKILL to what is left after `timeout_s`.
        True when something was running. The record is removed."""
        record = self.record(name)
        if record is None:
            return False
        # A pid that now runs something else is not ours to signal (nor is its group).
        ours = self.is_running(record) or (not process_alive(record.pid) and bool(group_members(record.pid)))
        if ours:
            _signal_group(record.pid, signal.SIGTERM)
            if not _wait_gone(record.pid, timeout_s):
                log.warning("%s (group %d) still running %.0f s after SIGTERM; SIGKILL", name, record.pid, timeout_s)
                _signal_group(record.pid, signal.SIGKILL)
                if not _wait_gone(record.pid, 10.0):
                    raise StackError(f"{name}: processes {group_members(record.pid)} survived SIGKILL")
        self._record_path(name).unlink(missing_ok=True)
        log.info("stopped %s (group %d)", name, record.pid)
        return ours


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _wait_gone(pgid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        reap(pgid)
        if not process_alive(pgid) and not group_members(pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
