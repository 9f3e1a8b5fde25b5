"""A real Triton server on this machine serving a repository's ONNX model, run detached.

The server is the `tritonserver` binary that PyTriton's wheel ships, started directly with its Python
backend: `start_server` writes a Python-backend twin of the repository's model (serving.triton_repo.
build_python_repository; the model runs onnxruntime inside Triton's backend stub, numpy in and out) and
spawns `tritonserver` in its own session, so the server outlives the caller (the deploy task starts it,
the API uses it later); `stop_server` ends it. A repository that ships the sequential model
(serving.triton_repo.SEQUENTIAL_MODEL) gets its twin too, so the server holds ranker and sequential
model at the same version. The ONNX Runtime repository itself, which SageMaker's
stock Triton image serves, is left as it is.

State lives in `state_dir`: `server.json` (pid, URLs, model), `triton.log`, and the generated
`model_repository/` and `backends/` that the server reads.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import signal
import socket
import shutil
import subprocess
import sys
import sysconfig
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from serving.errors import ServerStartError
from serving.triton_repo import (SEQUENTIAL_MODEL, RepositoryModel, SequentialRepositoryModel, build_python_repository,
                                 build_python_sequential, read_repository, read_sequential)

log = logging.getLogger(__name__)

STATE_FILE = "server.json"
LOG_FILE = "triton.log"
MODEL_REPOSITORY = "model_repository"
BACKENDS = "backends"
STUB = "triton_python_backend_stub"


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


def _distribution() -> Path:
    """PyTriton's copy of Triton: bin/tritonserver, backends/python, python_backend_stubs/<python version>."""
    spec = importlib.util.find_spec("pytriton")  # located, not imported: the server needs none of its code
    if spec is None or not spec.submodule_search_locations:
        raise ServerStartError("nvidia-pytriton is not installed; its wheel provides the tritonserver binary")
    return Path(next(iter(spec.submodule_search_locations))) / "tritonserver"


def _backend_directory(state_dir: Path) -> Path:
    """`state_dir/backends/python` linking the Python backend to the stub built for this interpreter.

    The backend starts `triton_python_backend_stub` from its own directory; the wheel keeps one stub per
    Python version elsewhere, so the backend directory is assembled here (links, nothing copied).
    """
    dist = _distribution()
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = {"libtriton_python.so": dist / "backends" / "python" / "libtriton_python.so",
               "triton_python_backend_utils.py": dist / "backends" / "python" / "triton_python_backend_utils.py",
               STUB: dist / "python_backend_stubs" / version / STUB}
    missing = [str(path) for path in sources.values() if not path.is_file()]
    if missing:
        raise ServerStartError(f"PyTriton's Triton distribution lacks {missing} (Python {version}); "
                               "reinstall nvidia-pytriton for this interpreter")
    backends = state_dir / BACKENDS
    python_dir = backends / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for name, target in sources.items():
        link = python_dir / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(target)
    return backends


def server_command(model: RepositoryModel, state_dir: Path, http_port: int, grpc_port: int,
                   metrics_port: int | None = None, host: str = "127.0.0.1",
                   also: Sequence[RepositoryModel] = ()) -> tuple[list[str], dict[str, str]]:
    """The `tritonserver` command line and environment serving `model`'s Python-backend twin.

    Writes the twin repository and the backend directory under `state_dir` first.
    """
    state_dir = Path(state_dir).resolve()
    model_repository = state_dir / MODEL_REPOSITORY
    build_python_repository(model, model_repository, also=also)
    sequential = sequential_models(model, also)
    if sequential:
        build_python_sequential(sequential, model_repository)
    else:  # an earlier deploy's twin must not be served beside a ranker that has none
        shutil.rmtree(model_repository / SEQUENTIAL_MODEL, ignore_errors=True)
    command = [
        str(_distribution() / "bin" / "tritonserver"),
        f"--model-repository={model_repository}",
        f"--backend-directory={_backend_directory(state_dir)}",
        f"--http-address={host}", f"--http-port={http_port}",
        f"--grpc-address={host}", f"--grpc-port={grpc_port}",
        f"--allow-metrics={'true' if metrics_port is not None else 'false'}",
        # Clients with keep-alive connections (the API's rankers) would otherwise hold a shutdown
        # for Triton's default 30 s; inferences take milliseconds, so 1 s drains them.
        "--exit-timeout-secs=1",
        # The config is complete; auto-completion would start an extra stub just to ask the model.
        "--disable-auto-complete-config",
        "--log-verbose=0",
    ]
    if metrics_port is not None:
        command += [f"--metrics-address={host}", f"--metrics-port={metrics_port}"]
    # Process plumbing, not configuration: the stub embeds this Python (libpython from LIBDIR) and finds
    # this environment's packages (numpy, onnxruntime) through the `python` first on PATH.
    env = dict(os.environ)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (libdir, env.get("LD_LIBRARY_PATH", "")) if p)
    env["PATH"] = os.pathsep.join(p for p in (str(Path(sys.executable).parent), env.get("PATH", "")) if p)
    return command, env


def sequential_models(model: RepositoryModel, also: Sequence[RepositoryModel] = ()) -> list[SequentialRepositoryModel]:
    """The sequential models shipped beside `model` and the `also` rankers, in that order (bundles without one skipped)."""
    found = [read_sequential(m.config_path.parents[1]) for m in (model, *also)]
    return [m for m in found if m is not None]


def serve(
    repo_dir: Path,
    http_port: int,
    grpc_port: int,
    metrics_port: int | None = None,
    model_name: str | None = None,
    host: str = "127.0.0.1",
    state_dir: Path | None = None,
) -> None:
    """Serve the newest version of the repository's model in the foreground (this process becomes
    tritonserver; Ctrl-C stops it). The twin repository goes to `state_dir` (default: a temporary one)."""
    import tempfile

    model = read_repository(repo_dir, model_name)
    state = Path(state_dir) if state_dir is not None else Path(tempfile.mkdtemp(prefix="recsys-triton-"))
    command, env = server_command(model, state, http_port, grpc_port, metrics_port, host)
    log.info("serving %s v%d from %s on http %s:%d grpc %s:%d",
             model.name, model.version, model.onnx_path, host, http_port, host, grpc_port)
    os.execve(command[0], command, env)


def proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state first, process group third), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()


def _proc_state(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) from /proc, or None when the pid does not exist."""
    fields = proc_stat(pid)
    return None if fields is None else (fields[0], int(fields[2]))


def process_alive(pid: int) -> bool:
    state = _proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (tritonserver and its backend stubs share the server's)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            state = _proc_state(int(entry.name))
            if state is not None and state[1] == pgid and state[0] not in ("Z", "X"):
                members.append(int(entry.name))
    return members


def reap(pid: int) -> None:
    """Collect `pid`'s exit status if it is our child; elsewhere init does."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _is_our_server(pid: int, state_dir: Path) -> bool:
    """Guards against a stale pidfile whose pid now belongs to an unrelated process: ours is a
    tritonserver reading the model repository under `state_dir`."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    repository = f"--model-repository={Path(state_dir).resolve() / MODEL_REPOSITORY}".encode()
    return b"tritonserver" in cmdline and repository in cmdline.split(b"\0")


def read_handle(state_dir: Path) -> ServerHandle | None:
    """The handle of the server recorded in `state_dir`, or None."""
    path = Path(state_dir) / STATE_FILE
    return ServerHandle(**json.loads(path.read_text())) if path.is_file() else None


def _wait_gone(pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        reap(pid)
        if not process_alive(pid) and not group_members(pid):
            return True
        time.sleep(0.1)
    return False


def stop_server(state_dir: Path, timeout_s: float = 20.0) -> bool:
    """Stop the server recorded in `state_dir`; True if one was running. Safe to call twice."""
    handle = read_handle(state_dir)
    if handle is None:
        return False
    pid = handle.pid
    was_running = process_alive(pid) and _is_our_server(pid, state_dir)
    if was_running:
        os.kill(pid, signal.SIGINT)  # tritonserver unloads the model (ending its stub) and exits
        if not _wait_gone(pid, timeout_s):
            log.warning("triton pid %d ignored SIGINT for %.0fs; killing its process group", pid, timeout_s)
    # Leftovers (e.g. a tritonserver whose parent was killed) share the server's process group;
    # a live pid that is not ours means the pid (and group id) was reused: leave it alone.
    reused = process_alive(pid) and not _is_our_server(pid, state_dir)
    if not reused and group_members(pid):
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


def port_in_use(host: str, port: int) -> bool:
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


def _ready(http_url: str, model_name: str, versions: Sequence[int] = (),
           sequential_versions: Sequence[int] = ()) -> bool:
    import tritonclient.http as httpclient

    try:
        client = httpclient.InferenceServerClient(http_url, connection_timeout=2.0, network_timeout=2.0)
        try:
            return bool(client.is_server_ready() and client.is_model_ready(model_name)
                        and all(client.is_model_ready(model_name, str(v)) for v in versions)
                        and all(client.is_model_ready(SEQUENTIAL_MODEL, str(v)) for v in sequential_versions))
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
    also: Sequence[Path] = (),
) -> ServerHandle:
    """Start a detached Triton serving `source` (bundle or repository), replacing any earlier one.

    `also`: more bundles of the same model, served as further versions by the same server (an
    experiment's arms); clients address them by version (serving.triton_client's model_version).

    Returns once the server and model are ready; raises `ServerStartError` quoting the log tail.
    """
    repo_dir = resolve_repository(Path(source)).resolve()
    model = read_repository(repo_dir, model_name)
    extra = [read_repository(resolve_repository(Path(b)).resolve(), model.name) for b in also]
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    stop_server(state_dir)
    busy = [port for port in (http_port, grpc_port, metrics_port) if port is not None and port_in_use(host, port)]
    if busy:
        raise ServerStartError(f"cannot start Triton on {host}: port(s) {busy} already in use; pick free ports "
                               "or stop the server holding them (python -m serving stop --state-dir ...)")
    log_path = state_dir / LOG_FILE
    command, env = server_command(model, state_dir, http_port, grpc_port, metrics_port, host, also=extra)
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=state_dir, env=env, start_new_session=True)
    handle = ServerHandle(pid=process.pid, http_url=f"{host}:{http_port}", grpc_url=f"{host}:{grpc_port}",
                          model_name=model.name, model_version=model.version,
                          repository=str(repo_dir), log_path=str(log_path))
    (state_dir / STATE_FILE).write_text(json.dumps(asdict(handle), indent=2))
    deadline = time.monotonic() + timeout_s
    versions = sorted({model.version, *(m.version for m in extra)}) if extra else []
    sequential_versions = sorted({m.version for m in sequential_models(model, extra)})
    while not _ready(handle.http_url, model.name, versions, sequential_versions):
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
