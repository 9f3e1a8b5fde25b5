"""A real local Triton (PyTriton's tritonserver binary, Python backend running onnxruntime) started
detached on free ports: scores over HTTP and gRPC, model config, restart with a new version, and
unavailability once stopped."""

from __future__ import annotations

import json
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from serving.errors import RankerUnavailable, ServerStartError
from serving.export import export_onnx, random_batch
from serving.local_triton import ServerHandle, read_handle, start_server, stop_server
from serving.triton_client import TritonClient
from serving.triton_repo import build_repository
from tests.conftest import free_port
from models.dlrm import DLRM, DLRMConfig
from models.saved import load_model, save_model

pytestmark = pytest.mark.integration

MAX_BATCH = 16


def pid_gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


def live_group_members(pgid: int) -> list[int]:
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(stat.parent.name))
    return members


def add_version(root: Path, version: int, seed: int) -> Path:
    """Train-free tiny DLRM (random weights differ by seed), exported into root/repo as `version`."""
    torch.manual_seed(seed)
    model_path = save_model(DLRM(DLRMConfig(n_dense=3, cardinalities=[13, 6, 4], embedding_dim=4,
                                            bottom_mlp=[8], top_mlp=[8])), root / f"v{version}" / "dlrm.pt")
    schema_path = root / "schema.json"
    schema_path.write_text(json.dumps({"continuous": ["a", "b", "c"], "categorical": ["u", "p", "k"]}))
    onnx_path = export_onnx(model_path, schema_path, root / f"v{version}" / "model.onnx")
    build_repository(onnx_path, schema_path, root / "repo", version=version, max_batch_size=MAX_BATCH,
                     preferred_batch_sizes=(4, 16), max_queue_delay_us=100)
    return model_path


def torch_scores(model_path: Path, dense: torch.Tensor, sparse: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.sigmoid(load_model(model_path)(dense, sparse)).numpy()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, Path, Path]]:
    root = tmp_path_factory.mktemp("triton")
    model_path = add_version(root, version=1, seed=0)
    state_dir = root / "state"
    # Started by a CLI process that exits at once: the server has to outlive it, as it outlives
    # the deploy task that starts it in production.
    cli = subprocess.run([sys.executable, "-m", "serving", "start", str(root / "repo"), "--http-port", str(free_port()),
                          "--grpc-port", str(free_port()), "--state-dir", str(state_dir)],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 0, cli.stderr
    handle = read_handle(state_dir)
    assert handle is not None and json.loads(cli.stdout)["pid"] == handle.pid
    assert TritonClient(handle.http_url).is_ready()
    try:
        yield handle, root, model_path
    finally:
        stop_server(state_dir)
        current = read_handle(state_dir)
        assert current is None and pid_gone(handle.pid)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_scores_over_both_protocols_equal_torch(served: tuple[ServerHandle, Path, Path], protocol: str) -> None:
    handle, _, model_path = served
    dense, sparse = random_batch(load_model(model_path), 40, seed=7)  # 40 > max_batch_size: split
    url = handle.http_url if protocol == "http" else handle.grpc_url
    with TritonClient(url, protocol=protocol) as client:
        scores = client.score(dense.numpy(), sparse.numpy())
        assert client.max_batch_size() == MAX_BATCH
    assert scores.shape == (40,) and scores.dtype == np.float32
    np.testing.assert_allclose(scores, torch_scores(model_path, dense, sparse), atol=1e-5)


def test_one_triton_client_serves_concurrent_threads(served: tuple[ServerHandle, Path, Path]) -> None:
    handle, _, model_path = served
    model = load_model(model_path)
    batches = [random_batch(model, 5 + i, seed=i) for i in range(8)]
    client = TritonClient(handle.http_url)
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda b: client.score(b[0].numpy(), b[1].numpy()), batches))
    for (dense, sparse), scores in zip(batches, results):
        np.testing.assert_allclose(scores, torch_scores(model_path, dense, sparse), atol=1e-5)


def test_served_model_config_matches_the_repository(served: tuple[ServerHandle, Path, Path]) -> None:
    handle, root, _ = served
    client = httpclient.InferenceServerClient(handle.http_url)
    try:
        config = client.get_model_config("dlrm")
        metadata = client.get_model_metadata("dlrm")
    finally:
        client.close()
    pbtxt = (root / "repo" / "dlrm" / "config.pbtxt").read_text()
    assert f"max_batch_size: {config['max_batch_size']}" in pbtxt
    for tensor in (*config["input"], *config["output"]):
        block = pbtxt.split(f'name: "{tensor["name"]}"')[1].split("}")[0]
        assert tensor["data_type"] in block
        assert all(f"dims: {d}" in block for d in tensor["dims"])
    assert config["dynamic_batching"]["preferred_batch_size"] == [4, 16]
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == 100
    shapes = {t["name"]: (t["datatype"], t["shape"]) for t in (*metadata["inputs"], *metadata["outputs"])}
    assert shapes == {"dense": ("FP32", [-1, 3]), "sparse": ("INT64", [-1, 3]), "score": ("FP32", [-1, 1])}
    assert metadata["versions"] == ["1"]


def test_served_twin_runs_the_python_backend_and_leaves_the_shipped_repository_alone(
    served: tuple[ServerHandle, Path, Path],
) -> None:
    handle, root, _ = served
    client = httpclient.InferenceServerClient(handle.http_url)
    try:
        config = client.get_model_config("dlrm")
    finally:
        client.close()
    assert config["backend"] == "python"
    assert config["parameters"]["onnx_path"]["string_value"] == str((root / "repo" / "dlrm" / "1" / "model.onnx").resolve())
    # The repository that SageMaker's stock Triton serves keeps its ONNX Runtime platform and no model.py.
    assert 'platform: "onnxruntime_onnx"' in (root / "repo" / "dlrm" / "config.pbtxt").read_text()
    assert sorted(p.name for p in (root / "repo" / "dlrm" / "1").iterdir()) == ["model.onnx"]


def test_unknown_model_is_unavailable_with_the_url_in_the_message(served: tuple[ServerHandle, Path, Path]) -> None:
    handle, _, _ = served
    with pytest.raises(RankerUnavailable, match=handle.http_url):
        TritonClient(handle.http_url, model_name="nope").score(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.int64))


def test_empty_batch_needs_no_server() -> None:
    assert TritonClient("127.0.0.1:1").score(np.zeros((0, 3)), np.zeros((0, 3))).shape == (0,)


def test_start_on_a_busy_port_fails_without_touching_the_running_server(
    tmp_path: Path, served: tuple[ServerHandle, Path, Path]
) -> None:
    handle, root, _ = served
    busy_port = int(handle.grpc_url.rsplit(":", 1)[1])  # the module's server holds it
    with pytest.raises(ServerStartError, match=f"{busy_port}.*already in use"):
        start_server(root / "repo", free_port(), busy_port, tmp_path / "other-state")
    assert read_handle(tmp_path / "other-state") is None
    assert TritonClient(handle.http_url).is_ready()


def test_a_server_that_dies_at_start_is_reported_with_its_log(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    add_version(tmp_path, version=1, seed=0)
    (repo / "dlrm" / "1" / "model.onnx").write_bytes(b"not an onnx graph")
    with pytest.raises(ServerStartError, match="(?s)exited with code.*last lines of.*model.onnx"):
        start_server(repo, free_port(), free_port(), tmp_path / "state", timeout_s=60)
    assert read_handle(tmp_path / "state") is None


def test_restart_with_a_new_version_replaces_the_server_then_stop_makes_it_unavailable(
    served: tuple[ServerHandle, Path, Path],
) -> None:
    old, root, model_v1 = served
    model_v2 = add_version(root, version=2, seed=1)
    new = start_server(root / "repo", int(old.http_url.rsplit(":", 1)[1]), int(old.grpc_url.rsplit(":", 1)[1]),
                       root / "state")
    assert pid_gone(old.pid) and new.pid != old.pid and new.model_version == 2
    assert sorted(p.name for p in (root / "repo" / "dlrm").iterdir()) == ["1", "2", "config.pbtxt"]
    dense, sparse = random_batch(load_model(model_v2), 8, seed=11)
    for protocol, url in (("http", new.http_url), ("grpc", new.grpc_url)):
        scores = TritonClient(url, protocol=protocol).score(dense.numpy(), sparse.numpy())
        np.testing.assert_allclose(scores, torch_scores(model_v2, dense, sparse), atol=1e-5)
        assert not np.allclose(scores, torch_scores(model_v1, dense, sparse), atol=1e-3)

    client = TritonClient(new.http_url, protocol="http")
    assert client.is_ready()
    assert stop_server(root / "state") is True
    assert pid_gone(new.pid)
    assert live_group_members(new.pid) == []  # tritonserver and its backend stub went with it
    assert not client.is_ready()
    for protocol, url in (("http", new.http_url), ("grpc", new.grpc_url)):
        with pytest.raises(RankerUnavailable, match=url):
            TritonClient(url, protocol=protocol, timeout_s=2).score(dense.numpy(), sparse.numpy())
    assert stop_server(root / "state") is False  # idempotent


def test_one_server_serves_two_versions_of_the_model_each_with_its_own_weights(tmp_path: Path) -> None:
    """An experiment's arms: two bundles (versions 1 and 2) loaded in one Triton, addressed by version."""
    champion = add_version(tmp_path / "a", version=1, seed=0)
    challenger = add_version(tmp_path / "b", version=2, seed=1)
    handle = start_server(tmp_path / "a" / "repo", free_port(), free_port(), tmp_path / "state",
                          also=[tmp_path / "b" / "repo"])
    try:
        dense, sparse = random_batch(load_model(champion), 8, seed=5)
        for version, model_path in (("1", champion), ("2", challenger)):
            client = TritonClient(handle.http_url, model_version=version)
            assert client.is_ready()
            np.testing.assert_allclose(client.score(dense.numpy(), sparse.numpy()),
                                       torch_scores(model_path, dense, sparse), atol=1e-5)
        assert not np.allclose(torch_scores(champion, dense, sparse), torch_scores(challenger, dense, sparse), atol=1e-3)
        with pytest.raises(RankerUnavailable):
            TritonClient(handle.http_url, model_version="3", timeout_s=2).score(dense.numpy(), sparse.numpy())
    finally:
        stop_server(tmp_path / "state")
