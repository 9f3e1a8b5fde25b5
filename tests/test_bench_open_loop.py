"""bench.api_latency's open-loop client against a real HTTP/1.1 server: every request answered once over
keep-alive connections (Content-Length, chunked and `Connection: close` responses), checks see each body,
latency counts from the scheduled start, so a stalled server shows in it (no coordinated omission), and a
request never answered fails the run instead of hanging it."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from bench.api_latency import open_loop


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive unless a response says otherwise
    seen: Counter = Counter()
    stall_s = 0.0
    lock = threading.Lock()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        with self.lock:
            self.seen[self.path] += 1
            first = sum(self.seen.values()) == 1
        if first and self.stall_s:
            time.sleep(self.stall_s)
        if self.path.startswith("/hang"):
            time.sleep(2.0)
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if self.path.startswith("/chunked"):
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (body[:5], body[5:]):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
            return
        self.send_header("Content-Length", str(len(body)))
        if self.path.startswith("/close"):
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {"seen": Counter(), "stall_s": 0.0})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_every_request_is_answered_once_whatever_the_response_framing(server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    paths = [f"/{kind}/{i}" for i in range(60) for kind in ("plain", "chunked", "close")]
    bodies: list[str] = []

    def check(status: int, body: bytes) -> str | None:
        bodies.append(json.loads(body)["path"])
        return None if status == 200 else f"status {status}"

    stats = open_loop(url, lambda i: paths[i], rate=300, duration_s=len(paths) / 300, check=check)
    assert stats["requests"] == len(paths) and stats["errors"] == 0
    assert sorted(bodies) == sorted(paths)  # each answer read whole, to the request it answers
    assert handler.seen == Counter(paths)  # each sent once


def test_failed_checks_are_counted(server: tuple[str, type[_Handler]]) -> None:
    url, _ = server
    stats = open_loop(url, lambda i: f"/plain/{i}", rate=200, duration_s=0.2,
                      check=lambda status, body: "odd" if json.loads(body)["path"].endswith(("1", "3")) else None)
    assert stats["errors"] == sum(str(i).endswith(("1", "3")) for i in range(stats["requests"]))


def test_latency_counts_from_the_schedule_not_from_when_a_connection_was_free(server: tuple[str, type[_Handler]]) -> None:
    url, handler = server
    handler.stall_s = 0.3  # the first request holds the only connection for 0.3 s
    stats = open_loop(url, lambda i: f"/plain/{i}", rate=100, duration_s=0.5, check=lambda s, b: None,
                      max_connections=1)
    assert stats["errors"] == 0 and sum(handler.seen.values()) == stats["requests"]
    # the 30 requests due meanwhile (one per 10 ms) waited for the connection: request i at least 300 - 10 i ms,
    # so at least 5 of the 50 took >= 250 ms, whatever the machine's speed (a closed-loop client would have
    # sent them late and timed them from then)
    assert stats["max_ms"] >= 300 and stats["p90_ms"] >= 200


def test_requests_left_unanswered_when_nothing_moves_fail_the_run(server: tuple[str, type[_Handler]]) -> None:
    url, _ = server
    stats = open_loop(url, lambda i: "/hang" if i == 3 else f"/plain/{i}", rate=100, duration_s=0.1,
                      check=lambda s, b: None, stall_s=0.5)
    assert stats["requests"] == 10 and stats["errors"] == 1  # the other nine answered
