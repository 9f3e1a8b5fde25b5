"""A real Triton server on this machine (PyTriton) serving a repository's ONNX model, run detached.

`start_server` spawns `python -m serving.local_triton serve ...` in its own session so the server
outlives the caller (the deploy task starts it, the API uses it later); `stop_server` ends it.
State lives in `state_dir`: `server.json` (pid, URLs, model) and `triton.log`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from serving.errors import ServerStartError
from serving.triton_repo import RepositoryModel, read_repository

log = logging.getLogger(__name__)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
STATE_FILE = "server.json"
LOG_FILE = "triton.log"


@dataclass(frozen=True)
class ServerHandle:
    """A running local Triton: its process id (also its process group) and endpoints."""

    pid: int
    http_url: str  # host:port, as tritonclient takes it
    grpc_url: str
    model_name: str
    model_version: int
    repository: str
    log_path: str


def resolve_repository(source: Path) -> Path:
    """Accept a serving bundle (which holds `triton_repo/`) or a model repository itself."""
    source = Path(source)
    return source / "triton_repo" if (source / "triton_repo").is_dir() else source


def serve(
    repo_dir: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int | None = None,
    model_name: str | None = None,
    host: str = "127.0.0.1",
    onnx_threads: int = 1,
) -> None:
    """Block serving the newest version of the repository's model until SIGINT/SIGTERM."""
    import onnxruntime as ort
    from pytriton.decorators import batch
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    model: RepositoryModel = read_repository(repo_dir, model_name)
    options = ort.SessionOptions()
    # Triton batches requests; several sessions each grabbing every core would only contend.
    options.intra_op_num_threads = onnx_threads
    # onnxruntime-gpu exposes CUDA; the CPU wheel installed here does not.
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    session = ort.InferenceSession(str(model.onnx_path), options, providers=providers)

    @batch
    def infer(dense: np.ndarray, sparse: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {"dense": dense.astype(np.float32, copy=False), "sparse": sparse.astype(np.int64, copy=False)}
        (score,) = session.run(["score"], feeds)
        return {"score": score}

    config = TritonConfig(
        http_address=host,
        http_port=http_port,
        grpc_address=host,
        grpc_port=grpc_port,
        allow_metrics=metrics_port is not None,
        metrics_port=metrics_port,
        metrics_address=host if metrics_port is not None else None,
        # Clients with keep-alive connections (the API's Ranker) would otherwise hold a
        # shutdown for Triton's default 30 s; inferences take milliseconds, so 1 s drains them.
        exit_timeout_secs=1,
    )
    batcher = DynamicBatcher(
        max_queue_delay_microseconds=model.max_queue_delay_us,
        preferred_batch_size=list(model.preferred_batch_sizes) or None,
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name=model.name,
            infer_func=infer,
            inputs=[
                Tensor(name="dense", dtype=np.float32, shape=(model.n_dense,)),
                Tensor(name="sparse", dtype=np.int64, shape=(model.n_sparse,)),
            ],
            outputs=[Tensor(name="score", dtype=np.float32, shape=(1,))],
            model_version=model.version,
            config=ModelConfig(max_batch_size=model.max_batch_size, batcher=batcher),
            strict=True,
        )
        log.info("serving %s v%d from %s on http %s:%d grpc %s:%d",
                 model.name, model.version, model.onnx_path, host, http_port, host, grpc_port)
        triton.serve()


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) from /proc, or None when the pid does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return fields[0], int(fields[2])


def _alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")


def _group_members(pgid: int) -> list[int]:
    """Live processes of a process group (tritonserver and PyTriton's helpers share the server's)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = _proc_state(int(entry.name))
            if state is not None and state[1] == pgid and state[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def _reap(pid: int) -> None:
    # Only the process that spawned the server can reap it; elsewhere init does.
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _is_our_server(pid: int) -> bool:
    """Guards against a stale pidfile whose pid now belongs to an unrelated process."""
    try:
        return b"serving.local_triton" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


def read_handle(state_dir: Path) -> ServerHandle | None:
    """The handle of the server recorded in `state_dir`, or None."""
    path = Path(state_dir) / STATE_FILE
    return ServerHandle(**json.loads(path.read_text())) if path.is_file() else None


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        _reap(pid)
        if not _alive(pid) and not _group_members(pid):
            return True
        time.sleep(0.1)
    return False


def stop_server(state_dir: Path, timeout_s: float = 20.0) -> bool:
    """Stop the server recorded in `state_dir`; True if one was running. Safe to call twice."""
    handle = read_handle(state_dir)
    if handle is None:
        return False
    pid = handle.pid
    was_running = _alive(pid) and _is_our_server(pid)
    if was_running:
        os.kill(pid, signal.SIGINT)  # PyTriton shuts tritonserver down and removes its workspace
        if not _wait_gone(pid, timeout_s):
            log.warning("triton pid %d ignored SIGINT for %.0fs; killing its process group", pid, timeout_s)
    # Leftovers (e.g. a tritonserver whose parent was killed) share the server's process group;
    # a live pid that is not ours means the pid (and group id) was reused: leave it alone.
    reused = _alive(pid) and not _is_our_server(pid)
    if not reused and _group_members(pid):
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _wait_gone(pid, 10.0)
    (Path(state_dir) / STATE_FILE).unlink(missing_ok=True)
    log.info("stopped triton pid %d", pid)
    return was_running


def _log_tail(path: Path, n_lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n_lines:])
    except FileNotFoundError:
        return "(no log written)"


def _port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port. Triton's HTTP server binds with SO_REUSEPORT,
    so a second Triton would share the port silently instead of failing; check first."""
    with socket.socket() as probe:
        # SO_REUSEADDR: connections in TIME_WAIT from a just-stopped server must not count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _ready(http_url: str, model_name: str) -> bool:
    import tritonclient.http as httpclient

    try:
        client = httpclient.InferenceServerClient(http_url, connection_timeout=2.0, network_timeout=2.0)
        try:
            return bool(client.is_server_ready() and client.is_model_ready(model_name))
        finally:
            client.close()
    except Exception:  # refused connections etc. simply mean "not yet" while polling
        return False


def start_server(
    source: Path,
    http_port: int,
    grpc_port: int,
    state_dir: Path,
    metrics_port: int | None = None,
    model_name: str | None = None,
    host: str = "127.0.0.1",
    timeout_s: float = 120.0,
) -> ServerHandle:
    """Start a detached Triton serving `source` (bundle or repository), replacing any earlier one.

    Returns once the server and model are ready; raises `ServerStartError` quoting the log tail.
    """
    repo_dir = resolve_repository(Path(source)).resolve()
    model = read_repository(repo_dir, model_name)
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    stop_server(state_dir)
    busy = [port for port in (http_port, grpc_port, metrics_port) if port is not None and _port_in_use(host, port)]
    if busy:
        raise ServerStartError(f"cannot start Triton on {host}: port(s) {busy} already in use; pick free ports "
                               "or stop the server holding them (python -m serving stop --state-dir ...)")
    log_path = state_dir / LOG_FILE
    command = [sys.executable, "-m", "serving.local_triton", "serve", str(repo_dir),
               "--http-port", str(http_port), "--grpc-port", str(grpc_port),
               "--model", model.name, "--host", host]
    if metrics_port is not None:
        command += ["--metrics-port", str(metrics_port)]
    # The child inherits this environment (process plumbing, not configuration) plus two fixes:
    # PyTriton's tritonserver links against this Python's libpython, and the child must find
    # this project whatever its working directory.
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=state_dir, env=env, start_new_session=True)
    handle = ServerHandle(pid=process.pid, http_url=f"{host}:{http_port}", grpc_url=f"{host}:{grpc_port}",
                          model_name=model.name, model_version=model.version,
                          repository=str(repo_dir), log_path=str(log_path))
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(handle), indent=2))
    deadline = time.monotonic() + timeout_s
    while not _ready(handle.http_url, model.name):
        if process.poll() is not None or time.monotonic() > deadline:
            reason = (f"exited with code {process.returncode}" if process.poll() is not None
                      else f"was not ready after {timeout_s:.0f}s")
            stop_server(state_dir)
            raise ServerStartError(
                f"local Triton for {repo_dir} on {handle.http_url} {reason}; last lines of {log_path}:\n"
                f"{_log_tail(log_path)}"
            )
        time.sleep(0.25)
    log.info("triton ready: pid %d, http %s, grpc %s, model %s v%d",
             handle.pid, handle.http_url, handle.grpc_url, model.name, model.version)
    return handle


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m serving.local_triton serve REPO --http-port P --grpc-port P`: the detached server."""
    parser = argparse.ArgumentParser(prog="python -m serving.local_triton")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="serve a repository in the foreground")
    run.add_argument("repository", type=Path)
    run.add_argument("--http-port", type=int, required=True)
    run.add_argument("--grpc-port", type=int, required=True)
    run.add_argument("--metrics-port", type=int)
    run.add_argument("--model")
    run.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # PyTriton's serve() loop shuts down cleanly on KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    serve(resolve_repository(args.repository), args.http_port, args.grpc_port, args.metrics_port,
          args.model, args.host)


if __name__ == "__main__":
    main()
