"""The API as served (gunicorn with api/gunicorn_conf.py): slow clients cannot starve the workers, and the
gevent workers rank with a real Triton, warmed up before their first request."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.integration

WORKERS = 2
HEADER_TIMEOUT_S = 3


@dataclass
class Server:
    url: str
    port: int
    log: Path


def _start(tmp_path: Path, attempt: int, overrides: dict[str, str]) -> tuple[subprocess.Popen, Server]:
    port = free_port()
    log = tmp_path / f"gunicorn-{attempt}.log"
    env = {**os.environ, "RECSYS_HOME": str(tmp_path / "home"), "RECSYS_DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}",
           "RECSYS_API_WORKERS": str(WORKERS), "RECSYS_API_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
           "PYTHONPATH": str(REPO), **overrides}
    for name in ("RECSYS_API_KEYS", "RECSYS_RATELIMIT_STORAGE"):
        env.pop(name, None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "api", "serve", "--port", str(port)], cwd=REPO, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, Server(f"http://127.0.0.1:{port}", port, log)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def serve(tmp_path: Path, **overrides: str) -> Iterator[Server]:
    """`python -m api serve` as a user runs it: gunicorn with the project's config, on a free port.

    Ready once its own log says it listens on the port and /health answers (another test's server may take
    a port between free_port() and the bind: then gunicorn exits and a new port is tried).
    """
    for attempt in range(3):
        proc, server = _start(tmp_path, attempt, overrides)
        try:
            deadline = time.monotonic() + 120
            while proc.poll() is None and time.monotonic() < deadline:
                if f"Listening at: {server.url}" in server.log.read_text():
                    try:
                        if requests.get(server.url + "/health", timeout=2).status_code == 200:
                            break
                    except requests.RequestException:
                        pass
                time.sleep(0.2)
            else:
                if proc.poll() is not None and "in use" in server.log.read_text():
                    continue
                pytest.fail(f"the API did not start:\n{server.log.read_text()[-3000:]}")
            yield server
            return
        finally:
            _stop(proc)
    pytest.fail("no free port could be bound in 3 attempts")


@pytest.fixture
def served_api(tmp_path: Path) -> Iterator[Server]:
    yield from serve(tmp_path)


class Dribbler:
    """Connections that send a request line, then their headers one byte at a time, never finishing."""

    def __init__(self, port: int, n: int) -> None:
        self.socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
        for sock in self.socks:
            sock.sendall(b"GET /health HTTP/1.1\r\n")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._dribble, daemon=True)
        self.thread.start()

    def _dribble(self) -> None:
        header = b"X-Slow: " + b"a" * 10_000
        i = 0
        while not self.stop.wait(0.5):
            for sock in self.socks:
                try:
                    sock.send(header[i:i + 1])
                except OSError:
                    pass  # closed by the server
            i += 1

    def closed_by_server(self) -> int:
        closed = 0
        for sock in self.socks:
            sock.settimeout(0.05)
            try:
                data = sock.recv(4096)
                closed += data == b"" or data.startswith(b"HTTP/1.1 4")
            except TimeoutError:
                pass
            except OSError:
                closed += 1
        return closed

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=10)
        for sock in self.socks:
            sock.close()


def test_slow_clients_do_not_starve_the_workers(served_api: Server) -> None:
    slow = Dribbler(served_api.port, 8 * WORKERS)  # 4 x workers is enough to starve sync workers
    try:
        time.sleep(1.0)  # every slow connection has been accepted and is sending
        health = requests.get(served_api.url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["database"] == "ok"
        recs = requests.get(served_api.url + "/customers/1/recommendations?k=3", timeout=10)
        assert recs.status_code == 200 and recs.json()["customer_id"] == 1
        assert requests.post(served_api.url + "/customers", json={"id": 5}, timeout=10).status_code == 201
        # The header timeout closes the dribbling connections; a guard deadline only, not a speed assertion.
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 60
        closed = 0
        while closed < len(slow.socks) and time.monotonic() < deadline:
            closed += slow.closed_by_server()
            time.sleep(0.5)
        assert closed >= len(slow.socks)
    finally:
        slow.close()
    assert requests.get(served_api.url + "/health", timeout=10).status_code == 200
    assert "worker warmed up" in served_api.log.read_text()  # post_worker_init ran api.warm_up


def test_idle_keep_alive_connections_are_closed(served_api: Server) -> None:
    idle = [socket.create_connection(("127.0.0.1", served_api.port), timeout=10) for _ in range(8 * WORKERS)]
    try:
        assert requests.get(served_api.url + "/health", timeout=10).status_code == 200
        deadline = time.monotonic() + HEADER_TIMEOUT_S + 60
        open_ = list(idle)
        while open_ and time.monotonic() < deadline:
            for sock in list(open_):
                sock.settimeout(0.05)
                try:
                    if sock.recv(1) == b"":
                        open_.remove(sock)
                except TimeoutError:
                    pass
            time.sleep(0.5)
        assert not open_
    finally:
        for sock in idle:
            sock.close()


def test_gevent_workers_rank_with_triton_warmed_up(tmp_path: Path) -> None:
    """The served path under gevent: a real Triton ranks, as in-process; each worker warmed the ranker up."""
    import pandas as pd

    from api import create_app
    from api.seed import seed
    from serving.bundle import build_bundle
    from tests.serving_world import build_served_world, running_triton
    from tests.test_api_support import make_config

    (tmp_path / "world").mkdir()
    world = build_served_world(tmp_path / "world")
    home = tmp_path / "home"
    bundle = build_bundle(world.model_dir, home / "serving", version=1)
    (home / "serving" / "current").symlink_to(bundle.name)
    triton_gen = running_triton(bundle, tmp_path / "triton")
    triton = next(triton_gen)
    try:
        config = make_config(tmp_path, SERVING_DIR=str(home / "serving"), TRITON_URL=triton.http_url)
        in_process = create_app(config)
        seed(in_process.extensions["recsys_store"], world.train_file)
        customer = int(pd.read_parquet(world.train_file).user_id.iloc[0])
        path = f"/customers/{customer}/recommendations?k=5&exclude_purchased=false"
        want = in_process.test_client().get(path).json
        host, port = triton.http_url.rsplit(":", 1)
        for server in serve(tmp_path, RECSYS_HOME=str(home), RECSYS_DATABASE_URL=config["DATABASE_URL"],
                            RECSYS_TRITON_HOST=host, RECSYS_TRITON_HTTP_PORT=port):
            got = requests.get(server.url + path, timeout=30).json()
            assert got["ranker"] == "triton" and got["fallback"] is False
            assert [i["product_id"] for i in got["items"]] == [i["product_id"] for i in want["items"]]
            deadline = time.monotonic() + 120  # the other worker may still be warming up (guard only)
            while server.log.read_text().count("worker warmed up") < WORKERS and time.monotonic() < deadline:
                time.sleep(0.5)
            assert server.log.read_text().count("worker warmed up") == WORKERS
            assert "(ranker: TritonRecommender)" in server.log.read_text()
        in_process.extensions["recsys_store"].dispose()
    finally:
        triton_gen.close()
