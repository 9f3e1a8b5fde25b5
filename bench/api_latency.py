"""REST API latency and throughput under gunicorn, ranking on a real local Triton, against a bare-Flask floor.

    make bench-api        # installs Debian's wrk if missing, then: python -m bench.api_latency --workdir /tmp/api_bench

One run builds everything from `etl.synthetic` data: the served recommender (candidate sources and its
DLRM ranker, `training.ranker.fit_recommender`, as the nightly run registers it), ETL workflow, a serving bundle, a local Triton (serving.local_triton) and a SQLite store with a 10k-product catalogue.
Two gunicorn servers run with the same worker settings (2 gevent workers by default, as api/gunicorn_conf.py
serves; --worker-class gthread for 2 x 4 threads): the API
(auth on, rate limits on but raised) and a bare Flask app answering a fixed JSON list (the floor,
`floor_app()` below).
Measured, each on loopback:
  - closed loop (wrk, --threads/--connections): the floor, GET /customers/<id>/recommendations
    (the recommender's candidate pool ranked by Triton) and POST /interactions (validation, auth, store write);
    every accepted interaction is read back afterwards (count in the store + a sample through the API);
  - open loop (a paced Python client on keep-alive connections, latency counted from each request's
    scheduled start): recommendations and the floor at each of --rates requests/s.
Appends one JSON object per measurement to bench/results/api_latency.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Any

from bench import report

ROOT = report.REPO
FLOOR_BODY = [{"product_id": i, "score": 1.0 / (i + 1)} for i in range(10)]
API_KEY = "bench-" + "k" * 32
log = logging.getLogger("bench.api_latency")


def floor_app():  # type: ignore[no-untyped-def]
    """The floor: a bare Flask app returning a fixed JSON list (gunicorn 'api_latency:floor_app()')."""
    from flask import Flask, jsonify

    app = Flask(__name__)

    @app.get("/floor")
    def floor():  # type: ignore[no-untyped-def]
        return jsonify(FLOOR_BODY)

    return app


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---------------------------------------------------------------- building the data, model and store
def build_world(workdir: Path, n_events: int, n_users: int, n_products: int,
                keep_sequential: str = "always") -> dict[str, Any]:
    """Synthetic events -> the served recommender (sources + DLRM ranker, training.ranker) -> serving bundle;
    SQLite store seeded with every product.

    The bundle is the one the nightly run registers and the API serves today: `recommender/` (candidate
    sources, pool, features) with its ranker as the Triton model, so a request runs
    `serving.recommender.TritonRecommender` (the evaluated path). The ranker is made to order the list
    (`mode = "ranker"`) whatever won on held-out users, so every request is ranked on Triton: the slower
    of the served modes.
    """
    import numpy as np
    import pandas as pd
    from sqlalchemy import insert, select

    from api.seed import seed
    from api.store import Product, Store
    from etl import EtlConfig, SyntheticConfig, generate, run_etl
    from serving.bundle import build_bundle
    from training.ranker import MODEL_FILE, SCHEMA_FILE, RankerConfig, fit_recommender

    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    data = generate(SyntheticConfig(n_events=n_events, n_users=n_users, n_products=n_products, days=4, seed=0))
    events = workdir / "events.parquet"
    data.events.to_parquet(events)
    # The recommender's catalogue is every product of the shop (the store's catalogue below).
    catalogue = np.sort(data.products.product_id.to_numpy(np.int64))
    # the real-time path on: the sequential source served whatever held-out users say (issue 15's budget)
    fitted = fit_recommender(data.events, catalogue, RankerConfig(keep_sequential=keep_sequential))
    fitted_mode, fitted.recommender.mode = fitted.recommender.mode, "ranker"
    model_dir = workdir / "model"
    fitted.save(model_dir / "recommender")
    shutil.copyfile(model_dir / "recommender" / MODEL_FILE, model_dir / "dlrm.pt")
    shutil.copyfile(model_dir / "recommender" / SCHEMA_FILE, model_dir / "schema.json")
    etl_out = run_etl(events, workdir / "etl", EtlConfig())  # the bundle carries the nightly ETL workflow too
    shutil.copytree(etl_out.workflow_dir, model_dir / "workflow")
    serving_dir = workdir / "home" / "serving"
    # Default repository options: max_batch_size 1024 lets Triton batch concurrent pool-sized requests.
    bundle = build_bundle(model_dir, serving_dir, version=1)
    (serving_dir / "current").symlink_to(bundle.name)

    db = workdir / "home" / "api.db"
    store = Store(f"sqlite:///{db}")
    store.init_db()
    seeded = seed(store, events)
    # Products never seen in an event are still in the catalogue.
    with store.engine.begin() as conn:
        known = set(conn.scalars(select(Product.id)))
        rest = data.products[~data.products.product_id.isin(known)]
        if len(rest):
            conn.execute(insert(Product.__table__), [
                {"id": int(r.product_id), "category_id": int(r.category_id), "category_code": r.category_code,
                 "brand": None if pd.isna(r.brand) else str(r.brand), "price": float(r.price), "available": True}
                for r in rest.itertuples()])
        n_products_db = len(known) + len(rest)
    store.dispose()
    customers = sorted(int(u) for u in data.events.user_id.unique())
    rec = fitted.recommender
    return {"bundle": bundle, "db": db, "home": workdir / "home", "customers": customers,
            "products": sorted(int(p) for p in data.products.product_id), "n_products": n_products_db,
            "interactions": seeded.interactions, "pool_size": rec.pool_size,
            "sources": rec.source_names, "fitted_mode": fitted_mode,
            "ranker_valid_ndcg_at_10": round(rec.evidence.get("valid_ndcg_at_10.ranker", float("nan")), 4)}


def reused_world(source: Path, workdir: Path, sequential: str) -> dict[str, Any]:
    """A world `bench.api_cpu` built (its world.json): the serving folder and store are copied into `workdir`,
    so this run's interactions do not change the next run's store."""
    meta = json.loads((source / "world.json").read_text())
    if meta.get("sequential_source") != sequential:
        raise SystemExit(f"{source} serves the sequential source {meta.get('sequential_source')!r}, not {sequential!r}")
    if workdir.exists():
        shutil.rmtree(workdir)
    home = workdir / "home"
    shutil.copytree(Path(meta["home"]), home, symlinks=True)
    bundle_dir = home / Path(meta["bundle"]).relative_to(Path(meta["home"]))
    products = sorted(int(p) for p in pd_products(home / Path(meta["db"]).relative_to(Path(meta["home"]))))
    return {"bundle": bundle_dir, "db": home / Path(meta["db"]).relative_to(Path(meta["home"])),
            "home": home, "customers": meta["customers"], "products": products, "n_products": meta["n_products"],
            "interactions": meta.get("interactions", 0), "pool_size": meta["pool_size"], "sources": meta["sources"],
            "fitted_mode": meta.get("fitted_mode", "ranker"),
            "ranker_valid_ndcg_at_10": meta.get("ranker_valid_ndcg_at_10", float("nan"))}


def pd_products(db: Path) -> list[int]:
    """Every product id in a store."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM products")]


# ---------------------------------------------------------------- servers
class Gunicorn:
    """A gunicorn process group on a free port; stopped with SIGTERM to its group."""

    def __init__(self, app_spec: str, workers: int, worker_class: str, threads: int, env: dict[str, str],
                 cwd: Path, log_path: Path, config: str | None = None) -> None:
        self.port = free_port()
        # gevent is what api/gunicorn_conf.py serves with (slow clients cost a greenlet); gthread workers
        # keep connections alive and overlap a request's wait on Triton with another request's work.
        flags = ["--worker-class", worker_class] + (["--threads", str(threads)] if worker_class == "gthread" else [])
        self.command = [sys.executable, "-m", "gunicorn", *(["-c", config] if config else []), "--workers",
                        str(workers), *flags, "--bind", f"127.0.0.1:{self.port}", "--backlog", "2048",
                        "--log-level", "warning", "--no-control-socket", app_spec]
        with open(log_path, "ab") as out:
            self.proc = subprocess.Popen(self.command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn {self.command} exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"gunicorn on {self.url} not ready after {timeout_s:.0f}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# ---------------------------------------------------------------- load generators
WRK_LUA = r"""
local threads = {}
local counter = 0
function setup(thread)
  thread:set("id", #threads + 1)
  table.insert(threads, thread)
end
function init(args)
  math.randomseed(id * 7919 + os.time())
  created, ok, other = 0, 0, 0
  mode = args[1]
  run = args[2]
  customers = {}
  for c in io.lines(args[3]) do table.insert(customers, c) end
  products = {}
  for p in io.lines(args[4]) do table.insert(products, p) end
  wrk.headers["X-API-Key"] = args[5]
  wrk.headers["Content-Type"] = "application/json"
  if mode == "interactions" then
    ids = io.open(args[6] .. "/ids-" .. id .. ".txt", "w")
    ids:setvbuf("line")
  end
end
function request()
  local c = customers[math.random(#customers)]
  if mode == "floor" then
    return wrk.format("GET", "/floor")
  elseif mode == "recommend" then
    return wrk.format("GET", "/customers/" .. c .. "/recommendations?k=10")
  end
  counter = counter + 1
  local body = '{"customer_id": ' .. c .. ', "product_id": ' .. products[math.random(#products)] ..
    ', "event_type": "view", "session": "' .. run .. '-' .. id .. '-' .. counter .. '"}'
  return wrk.format("POST", "/interactions", nil, body)
end
function response(status, headers, body)
  if status == 201 then
    created = created + 1
    ids:write(string.match(body, '"id":%s*(%d+)'), "\n")
  elseif status == 200 and mode == "recommend" and not string.find(body, '"ranker":%s*"triton"') then
    other = other + 1  -- answered, but not ranked on Triton (the popular fallback): not what is measured
  elseif status == 200 then ok = ok + 1 else other = other + 1 end
end
function done(summary, latency, requests)
  local c, o, x = 0, 0, 0
  for _, t in ipairs(threads) do c = c + t:get("created"); o = o + t:get("ok"); x = x + t:get("other") end
  local e = summary.errors
  io.write(string.format('WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "max_us": %d, "created": %d, "ok": %d, "other_status": %d, "connect_errors": %d, ' ..
    '"read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, c, o, x, e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def run_wrk(url: str, script: Path, mode: str, run_id: str, customers: Path, products: Path,
            threads: int, connections: int, duration_s: int) -> dict[str, Any]:
    """wrk with the Lua script above; `customers`/`products` are files of ids, one per line."""
    command = ["wrk", f"--threads={threads}", f"--connections={connections}", f"--duration={duration_s}s",
               "--timeout=5s", f"--script={script}", url, "--", mode, run_id, str(customers), str(products),
               API_KEY, str(script.parent)]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    line = next(ln for ln in out.splitlines() if ln.startswith("WRKJSON "))
    stats = json.loads(line.removeprefix("WRKJSON "))
    stats["rps"] = stats["requests"] / (stats["duration_us"] / 1e6)
    stats["errors"] = (stats["other_status"] + stats["connect_errors"] + stats["read_errors"]
                       + stats["write_errors"] + stats["timeouts"])
    stats["command"] = " ".join(command[:6] + [url, "--", mode, "..."])
    log.info("wrk %s: %.0f req/s, p50 %.2f ms, p99 %.2f ms, errors %d", mode, stats["rps"],
             stats["p50_us"] / 1e3, stats["p99_us"] / 1e3, stats["errors"])
    return stats


class KeepAliveClient:
    """GET over one persistent connection per client thread, as wrk and real front ends do, so the paced
    runs measure requests rather than TCP connection setup (urllib opens one per request)."""

    def __init__(self, base_url: str, headers: dict[str, str]) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        self.host, self.port = parsed.hostname or "127.0.0.1", parsed.port or 80
        self.headers = headers
        self._local = threading.local()

    def get(self, path: str) -> tuple[int, bytes]:
        for attempt in (1, 2):  # the server may close an idle keep-alive connection; reconnect once
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = http.client.HTTPConnection(self.host, self.port, timeout=5)
            try:
                conn.request("GET", path, headers=self.headers)
                resp = conn.getresponse()
                return resp.status, resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


class _Exchange:
    """One request of the open loop on one keep-alive connection: what was sent, what came back so far."""

    __slots__ = ("index", "scheduled", "request", "buffer", "fresh")

    def __init__(self, index: int, scheduled: float, request: bytes, fresh: bool) -> None:
        self.index, self.scheduled, self.request, self.fresh = index, scheduled, request, fresh
        self.buffer = bytearray()

    def response(self) -> tuple[int, bytes, bool] | None:
        """(status, body, keep the connection) once the whole response is in the buffer, else None."""
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0:
            return None
        head = bytes(self.buffer[:head_end]).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
        body_start = head_end + 4
        keep = headers.get("connection", "").lower() != "close"
        if "content-length" in headers:
            length = int(headers["content-length"])
            if len(self.buffer) - body_start < length:
                return None
            return status, bytes(self.buffer[body_start:body_start + length]), keep
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, at = bytearray(), body_start
            while True:
                line_end = self.buffer.find(b"\r\n", at)
                if line_end < 0:
                    return None
                size = int(bytes(self.buffer[at:line_end]).split(b";")[0], 16)
                if len(self.buffer) < line_end + 2 + size + 2:
                    return None
                if size == 0:
                    return status, bytes(body), keep
                body += self.buffer[line_end + 2:line_end + 2 + size]
                at = line_end + 2 + size + 2
        return status, bytes(self.buffer[body_start:]), False  # no length: the body ends with the connection


def open_loop(base_url: str, path_of: Any, rate: float, duration_s: float, check: Any,
              max_connections: int = 32, stall_s: float = 30.0) -> dict[str, Any]:
    """Requests at a fixed `rate`; latency runs from each request's scheduled start (no coordinated omission).

    One thread drives every request over keep-alive connections (`selectors`, non-blocking sockets): a
    request is written at its scheduled time on an idle connection (a new one when none is idle, up to
    `max_connections`, as many requests in flight as the 32 threads of the client it replaced; past that it
    queues, its latency still counted from its schedule), and its latency is taken when the last byte of its
    response is read. The run ends when every request is answered, or fails those still open when nothing
    was sent or answered for `stall_s` seconds (a backlog that drains slowly is measured, not cut off). The thread-pool client this replaced
    (http.client in 32 threads) cost ~0.4-0.6 ms of CPU per request on the 2 cores the server shares;
    this one ~0.1 ms (README, "Latency budget"). A request on a reused connection that the server had
    closed meanwhile is sent again once on a new connection, as `KeepAliveClient` does.
    """
    import selectors
    from collections import deque

    import numpy as np

    parsed = urllib.parse.urlsplit(base_url)
    address = (parsed.hostname or "127.0.0.1", parsed.port or 80)
    head = f"Host: {address[0]}:{address[1]}\r\nX-API-Key: {API_KEY}\r\nConnection: keep-alive\r\n\r\n"
    n = int(rate * duration_s)
    latencies = np.full(n, np.nan)
    failures: list[str] = []
    selector = selectors.DefaultSelector()
    idle: list[socket.socket] = []
    waiting: deque[tuple[int, float]] = deque()  # due requests without a connection yet
    open_count = 0

    def finish(exchange: _Exchange, status: int, body: bytes) -> None:
        latencies[exchange.index] = time.perf_counter() - exchange.scheduled
        problem = check(status, body)
        if problem:
            failures.append(problem)

    def send(index: int, scheduled: float, request: bytes | None = None) -> bool:
        """Write request `index` on an idle (or new) connection; False when every connection is busy."""
        nonlocal open_count
        fresh = not idle
        if fresh:
            if open_count >= max_connections:
                return False
            try:
                sock = socket.create_connection(address, timeout=5)
            except OSError as exc:
                finish(_Exchange(index, scheduled, b"", fresh), 0, repr(exc).encode())
                return True
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, None)  # registered while open: no epoll call per request
            open_count += 1
        else:
            sock = idle.pop()
        request = request or f"GET {path_of(index)} HTTP/1.1\r\n{head}".encode("latin-1")
        try:
            written = sock.send(request)  # a request line and a few headers: one write, in practice whole
            if written < len(request):
                sock.setblocking(True)
                sock.sendall(request[written:])
                sock.setblocking(False)
        except OSError as exc:
            close(sock)
            if fresh:
                finish(_Exchange(index, scheduled, request, fresh), 0, repr(exc).encode())
                return True
            return send(index, scheduled, request)  # a stale keep-alive connection: once more on a new one
        selector.modify(sock, selectors.EVENT_READ, _Exchange(index, scheduled, request, fresh))  # data only: no syscall
        return True

    def close(sock: socket.socket) -> None:
        nonlocal open_count
        open_count -= 1
        selector.unregister(sock)
        sock.close()

    start = time.perf_counter() + 0.1
    sent = 0
    progress = start  # when a request was last sent or answered, or nothing was outstanding
    while sent < n or waiting or len(idle) < open_count:
        now = time.perf_counter()
        if not waiting and len(idle) == open_count:
            progress = now  # nothing outstanding: only the schedule is awaited
        elif now - progress > stall_s:
            break
        while sent < n and start + sent / rate <= now:  # due: queue behind any that wait for a connection
            waiting.append((sent, start + sent / rate))
            sent += 1
        while waiting and send(*waiting[0]):
            waiting.popleft()
            progress = time.perf_counter()
        timeout = max(0.0, start + sent / rate - time.perf_counter()) if sent < n else 0.05
        for key, _ in selector.select(timeout if not waiting else min(timeout, 0.001)):
            sock, exchange = key.fileobj, key.data
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if exchange is None:  # an idle connection is readable only when the server closed it
                if not chunk:
                    idle.remove(sock)
                    close(sock)
                continue
            if chunk:
                exchange.buffer += chunk
                done = exchange.response()
                if done is None:
                    continue
                finish(exchange, done[0], done[1])
                progress = time.perf_counter()
                if done[2]:
                    selector.modify(sock, selectors.EVENT_READ, None)
                    idle.append(sock)
                else:
                    close(sock)
                continue
            close(sock)  # closed by the server
            if not exchange.buffer and not exchange.fresh:  # closed while idle: send it again on a new connection
                waiting.appendleft((exchange.index, exchange.scheduled))
            else:
                done = exchange.response()
                finish(exchange, *(done[:2] if done else (0, b"connection closed mid-response")))
    elapsed = time.perf_counter() - start
    failures += [f"not sent, nothing answered for {stall_s:.0f} s"] * (len(waiting) + n - sent)
    for key in list(selector.get_map().values()):
        if key.data is not None:
            failures.append(f"no response, nothing answered for {stall_s:.0f} s")
        key.fileobj.close()
    selector.close()
    ms = latencies * 1e3
    answered = ms[~np.isnan(ms)]
    stats = {"requests": n, "rps": n / elapsed, "p50_ms": float(np.percentile(answered, 50)),
             "p90_ms": float(np.percentile(answered, 90)), "p99_ms": float(np.percentile(answered, 99)),
             "max_ms": float(answered.max()), "errors": len(failures), "first_errors": failures[:5]}
    log.info("open loop %.0f req/s: p50 %.2f ms, p99 %.2f ms, errors %d", rate, stats["p50_ms"],
             stats["p99_ms"], stats["errors"])
    return stats


def _check_triton_ranked(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"status {status}: {body[:200]!r}"
    doc = json.loads(body)
    if doc["ranker"] != "triton" or doc["fallback"] or len(doc["items"]) != 10:
        return f"not ranked by triton: {body[:200]!r}"
    return None


def _check_ok(status: int, body: bytes) -> str | None:
    return None if status == 200 else f"status {status}"


def verify_interactions(db: Path, api_url: str, run_id: str, created: int, ids_dir: Path,
                        sample: int = 200) -> dict[str, Any]:
    """Every 201 left its row: each id the API answered with is in the store with this run's session,
    their number is the count of 201s, and a sample reads back through the API."""
    import sqlite3

    answered = [int(line) for f in sorted(ids_dir.glob("ids-*.txt")) for line in f.read_text().split()]
    with sqlite3.connect(db) as conn:
        def count() -> int:
            return conn.execute("SELECT count(*) FROM interactions WHERE session LIKE ?", (run_id + "-%",)).fetchone()[0]
        # Requests still queued in gunicorn's backlog when wrk stopped are written after it exits.
        before, now = -1, count()
        while now != before:
            time.sleep(1.0)
            before, now = now, count()
        stored = {r[0] for r in conn.execute("SELECT id FROM interactions WHERE session LIKE ?", (run_id + "-%",))}
    missing = [i for i in answered if i not in stored]
    picked = random.Random(0).sample(answered, min(sample, len(answered)))
    client = KeepAliveClient(api_url, {"X-API-Key": API_KEY})
    readable = sum(client.get(f"/interactions/{i}")[0] == 200 for i in picked)
    result = {"accepted": created, "ids_answered": len(answered), "distinct_ids": len(set(answered)),
              "missing_in_store": len(missing), "rows_in_store": len(stored),
              "written_after_client_stopped": len(stored) - len(set(answered)), "sampled": len(picked),
              "sample_readable": readable}
    result["ok"] = (len(answered) == len(set(answered)) == created and not missing and readable == len(picked))
    log.info("interactions read back: %s", result)
    return result


# ---------------------------------------------------------------- main
def _row(common: dict[str, Any], metric: str, value: float, unit: str, baseline: float, config: dict[str, Any],
         higher_is_better: bool) -> dict[str, Any]:
    ratio = value / baseline if higher_is_better else baseline / value
    return {"benchmark": "api_latency", "metric": metric, "value": round(value, 3), "unit": unit,
            "baseline": round(baseline, 3), "ratio": round(ratio, 3), "config": config, **common}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/api_bench"))
    parser.add_argument("--reuse-world", type=Path, default=None,
                        help="serve the world `python -m bench.api_cpu --workdir DIR` built (its bundle and a copy of its "
                             "store) instead of building one: the same shop, recommender and sources")
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--products", type=int, default=10_000)
    parser.add_argument("--sequential", default="always", choices=("always", "held_out"),
                        help="serve the real-time sequential source always (default) or as held-out users decide")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers (API and floor alike)")
    parser.add_argument("--worker-class", default="gevent", choices=("gevent", "gthread", "sync"),
                        help="gunicorn worker class (API and floor alike); the API also loads api/gunicorn_conf.py")
    parser.add_argument("--worker-threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (closed loop)")
    parser.add_argument("--duration", type=int, default=20, help="seconds per closed-loop run")
    parser.add_argument("--rates", default="200,50", help="open-loop requests/s for recommendations (comma list)")
    parser.add_argument("--open-duration", type=float, default=30.0, help="seconds of the open-loop run")
    report.add_common_options(parser, report.RESULTS / "api_latency.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rates = [float(r) for r in args.rates.split(",")]
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed; apt-get install wrk")

    world = (reused_world(args.reuse_world, args.workdir, args.sequential) if args.reuse_world
             else build_world(args.workdir, args.events, args.users, args.products, args.sequential))
    # Other work on the machine shares the 2 cores; record how busy it was.
    load_at_start = round(os.getloadavg()[0], 2)
    log.info("world: %s", {k: v for k, v in world.items() if k not in ("customers", "products")})
    from serving.local_triton import start_server, stop_server

    state = args.workdir / "triton"
    handle = start_server(world["bundle"], free_port(), free_port(), state)
    triton_host, triton_port = handle.http_url.rsplit(":", 1)
    env = {**os.environ, "RECSYS_HOME": str(world["home"]), "RECSYS_DATABASE_URL": f"sqlite:///{world['db']}",
           "RECSYS_API_KEYS": f"{API_KEY}:ingest", "RECSYS_API_KEY_PEPPER": "bench-pepper",
           "RECSYS_RATELIMIT_DEFAULT": "10000000 per minute", "RECSYS_RATELIMIT_STORAGE": "memory://",
           "RECSYS_TRITON_HOST": triton_host, "RECSYS_TRITON_HTTP_PORT": triton_port,
           "PYTHONPATH": str(ROOT)}
    logs = args.workdir / "gunicorn.log"
    api = Gunicorn("api.wsgi:app", args.workers, args.worker_class, args.worker_threads, env, ROOT, logs,
                   config="python:api.gunicorn_conf")
    floor = Gunicorn("bench.api_latency:floor_app()", args.workers, args.worker_class, args.worker_threads, env,
                     ROOT, logs)
    script = args.workdir / "load.lua"
    script.write_text(WRK_LUA)
    customers, products = args.workdir / "customers.txt", args.workdir / "products.txt"
    customers.write_text("\n".join(map(str, world["customers"])) + "\n")
    products.write_text("\n".join(map(str, world["products"])) + "\n")
    run_id = "bench-" + uuid.uuid4().hex[:8]
    try:
        api.wait_ready("/health")
        floor.wait_ready("/floor")
        # Warm up: each worker builds its catalogue index and loads the recommender once.
        run_wrk(api.url, script, "recommend", run_id, customers, products, args.threads, args.connections, 5)
        wrk = {mode: run_wrk(api.url if mode != "floor" else floor.url, script, mode, run_id, customers, products,
                             args.threads, args.connections, args.duration)
               for mode in ("floor", "recommend")}
        rng = random.Random(1)
        paced = {}
        for rate in rates:
            rec_paths = [f"/customers/{rng.choice(world['customers'])}/recommendations?k=10"
                         for _ in range(int(rate * args.open_duration))]
            paced[rate] = {
                "recommend": open_loop(api.url, lambda i: rec_paths[i], rate, args.open_duration,
                                       _check_triton_ranked),
                "floor": open_loop(floor.url, lambda i: "/floor", rate, args.open_duration, _check_ok)}
        wrk["interactions"] = run_wrk(api.url, script, "interactions", run_id, customers, products, args.threads,
                                      args.connections, args.duration)
        readback = verify_interactions(world["db"], api.url, run_id, wrk["interactions"]["created"], args.workdir)
    finally:
        api.stop()
        floor.stop()
        stop_server(state)

    common = {"device": "cpu-2core", "command": report.command("bench.api_latency"), "date": report.now(),
              "git_sha": args.git_sha or report.git_sha(short=True)}
    base = {"load_average_1m_at_start": load_at_start, "server": " ".join(api.command[3:-1]), "database": "sqlite (WAL, group commit)", "transport": "loopback",
            "auth": "on", "rate_limit": "on (10000000 per minute, memory)", "catalogue_products": world["n_products"],
            "customers": len(world["customers"]), "seed_interactions": world["interactions"],
            "candidates_per_request": world["pool_size"], "k": 10, "sequential_source": args.sequential,
            "ranker": "local Triton (PyTriton's tritonserver, Python backend running ONNX Runtime CPU), HTTP",
            "served_path": f"serving.recommender.TritonRecommender: sources {world['sources']} -> pool of "
            f"{world['pool_size']} -> DLRM ranker on Triton (mode forced to ranker; fitted mode "
            f"{world['fitted_mode']})", "ranker_valid_ndcg_at_10": world["ranker_valid_ndcg_at_10"], "baseline": "bare Flask GET returning a fixed JSON list, same gunicorn config"}
    rows = []
    for name, path in (("recommend", "GET /customers/<id>/recommendations"), ("interactions", "POST /interactions")):
        w, f = wrk[name], wrk["floor"]
        cfg = {**base, "endpoint": path, "load": f"closed loop, wrk {args.threads} threads {args.connections} "
               f"connections {args.duration}s", "requests": w["requests"], "errors": w["errors"]}
        if name == "interactions":
            cfg["read_back"] = readback
        rows.append(_row(common, f"{name}_throughput", w["rps"], "requests/s", f["rps"], cfg, True))
        rows.append(_row(common, f"{name}_p50", w["p50_us"] / 1e3, "ms", f["p50_us"] / 1e3, cfg, False))
        rows.append(_row(common, f"{name}_p99", w["p99_us"] / 1e3, "ms", f["p99_us"] / 1e3, cfg, False))
    for rate in rates:
        p, f = paced[rate]["recommend"], paced[rate]["floor"]
        cfg = {**base, "endpoint": "GET /customers/<id>/recommendations", "load": f"open loop at {rate:.0f} "
               f"requests/s for {args.open_duration:.0f}s (Python client, latency from scheduled start)",
               "requests": p["requests"], "errors": p["errors"], "achieved_rps": round(p["rps"], 1)}
        rows.append(_row(common, f"recommend_p50_at_{rate:.0f}rps", p["p50_ms"], "ms", f["p50_ms"], cfg, False))
        rows.append(_row(common, f"recommend_p99_at_{rate:.0f}rps", p["p99_ms"], "ms", f["p99_ms"], cfg, False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    earlier = json.loads(args.out.read_text()) if args.out.exists() else []  # keep every run on record
    args.out.write_text(json.dumps(earlier + rows, indent=2) + "\n")
    for row in rows:
        print(f"{row['metric']:>28}: {row['value']:>9} {row['unit']:<10} floor {row['baseline']:>9}  "
              f"errors {row['config']['errors']}")
    print(f"interactions read back: {readback}")
    open_errors = [e for r in rates for e in paced[r]["recommend"]["first_errors"]]
    if open_errors or any(w["errors"] for w in wrk.values()) or not readback["ok"]:
        print(f"FAILURES: open loop {open_errors[:5]}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
