"""The sequential source as a second Triton model beside the ranker: repository layout, a real local
Triton serving both at one version, parity of Triton's scores with PyTorch (< 1e-4, as the export's
check), dynamic batching of concurrent customers, and the deploy stage's smoke test."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
import torch
import tritonclient.http as httpclient

from models.dlrm import DLRM, DLRMConfig
from models.saved import save_model
from models.sequential import SASRec, SASRecConfig, SequentialScorer
from stages.deploy import DeployError, smoke_test_sequential
from serving.errors import RankerUnavailable, RepositoryError
from serving.export import export_onnx
from serving.local_triton import ServerHandle, start_server, stop_server
from serving.sequential_export import PARITY_TOLERANCE, export_sequential, random_sequences
from serving.triton_client import TritonClient, TritonSequentialScorer
from serving.recommender import sequential_runs_on
from serving.triton_repo import (SEQUENTIAL_MODEL, build_repository, build_sequential_repository, instance_kind,
                                 read_repository, read_sequential)
from tests.conftest import free_port

pytestmark = pytest.mark.integration

VERSION = 3
MAX_BATCH = 4


def sequential_scorer(seed: int, n_items: int = 30, max_len: int = 6) -> SequentialScorer:
    torch.manual_seed(seed)
    return SequentialScorer(SASRec(SASRecConfig(n_items=n_items, max_len=max_len, dim=16, heads=2, layers=1)))


def repository(root: Path, scorer: SequentialScorer) -> Path:
    """A tiny random DLRM and the scorer's ONNX export, both at VERSION, in root/bundle/triton_repo."""
    torch.manual_seed(0)
    model_path = save_model(DLRM(DLRMConfig(n_dense=2, cardinalities=[5, 7], embedding_dim=4, bottom_mlp=[8],
                                            top_mlp=[8])), root / "dlrm.pt")
    schema_path = root / "bundle" / "schema.json"
    schema_path.parent.mkdir(parents=True)
    schema_path.write_text(json.dumps({"continuous": ["a", "b"], "categorical": ["u", "p"]}))
    repo = root / "bundle" / "triton_repo"
    build_repository(export_onnx(model_path, schema_path, root / "model.onnx"), schema_path, repo, version=VERSION)
    export_sequential(scorer, root / "sequential.onnx")
    build_sequential_repository(root / "sequential.onnx", repo, version=VERSION, max_batch_size=MAX_BATCH,
                                preferred_batch_sizes=(2, 4), max_queue_delay_us=2_000)
    return repo


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, SequentialScorer, Path]]:
    root = tmp_path_factory.mktemp("triton_sequential")
    scorer = sequential_scorer(seed=1)
    repo = repository(root, scorer)
    handle = start_server(repo, free_port(), free_port(), root / "state", timeout_s=120)
    try:
        yield handle, scorer, repo
    finally:
        stop_server(root / "state")


def test_the_repository_holds_the_ranker_and_the_sequential_model_at_one_version(tmp_path: Path) -> None:
    repo = repository(tmp_path, sequential_scorer(seed=0))
    ranker, sequential = read_repository(repo), read_sequential(repo)
    assert ranker.name == "dlrm" and sequential is not None  # the ranker stays "the" model of the repository
    assert (sequential.name, sequential.version, ranker.version) == (SEQUENTIAL_MODEL, VERSION, VERSION)
    assert sequential.onnx_path.is_file() and sequential.max_batch_size == MAX_BATCH
    config = sequential.config_path.read_text()
    assert 'platform: "onnxruntime_onnx"' in config and "dynamic_batching" in config
    assert read_sequential(tmp_path / "elsewhere") is None


def test_a_missing_export_or_a_bad_version_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        build_sequential_repository(tmp_path / "missing.onnx", tmp_path / "repo")
    export_sequential(sequential_scorer(seed=0), tmp_path / "s.onnx")
    with pytest.raises(RepositoryError, match="positive"):
        build_sequential_repository(tmp_path / "s.onnx", tmp_path / "repo", version=0)


def test_auto_runs_the_sequential_model_on_triton_only_where_triton_has_a_gpu(tmp_path: Path) -> None:
    export_sequential(sequential_scorer(seed=0), tmp_path / "s.onnx")
    for kind, auto in (("KIND_CPU", "worker"), ("KIND_GPU", "triton")):
        repo = tmp_path / kind
        build_sequential_repository(tmp_path / "s.onnx", repo, instance_kind=kind)  # type: ignore[arg-type]
        assert instance_kind(repo, SEQUENTIAL_MODEL) == kind
        assert sequential_runs_on("auto", repo, SEQUENTIAL_MODEL, has_onnx=True) == auto
        assert sequential_runs_on("triton", repo, SEQUENTIAL_MODEL, has_onnx=True) == "triton"
        assert sequential_runs_on("worker", repo, SEQUENTIAL_MODEL, has_onnx=True) == "worker"
        # an explicit choice the bundle cannot serve falls to the place that can
        assert sequential_runs_on("worker", repo, SEQUENTIAL_MODEL, has_onnx=False) == "triton"
    assert sequential_runs_on("triton", tmp_path / "none", None, has_onnx=True) == "worker"
    assert sequential_runs_on("auto", tmp_path / "none", None, has_onnx=False) is None
    with pytest.raises(ValueError, match="sequential_on"):
        sequential_runs_on("gpu", tmp_path / "none", None, has_onnx=True)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_triton_scores_equal_torch(served: tuple[ServerHandle, SequentialScorer, Path], protocol: str) -> None:
    handle, scorer, _ = served
    items, kinds = random_sequences(scorer, 11, seed=5)  # 11 > max_batch_size: split into requests
    url = handle.http_url if protocol == "http" else handle.grpc_url
    client = TritonClient(url, SEQUENTIAL_MODEL, protocol, model_version=str(VERSION))
    try:
        got = TritonSequentialScorer(client, scorer.n_items, scorer.max_len).score_sequences(items, kinds)
    finally:
        client.close()
    want = scorer.score_sequences(items, kinds)
    assert got.shape == want.shape == (11, scorer.n_items) and got.dtype == np.float32
    assert float(np.max(np.abs(got - want))) < PARITY_TOLERANCE


def test_concurrent_customers_are_batched_and_each_gets_its_own_scores(
        served: tuple[ServerHandle, SequentialScorer, Path]) -> None:
    handle, scorer, _ = served
    items, kinds = random_sequences(scorer, 16, seed=9)
    client = TritonClient(handle.http_url, SEQUENTIAL_MODEL, model_version=str(VERSION))
    remote = TritonSequentialScorer(client, scorer.n_items, scorer.max_len)
    before = counts(handle)
    with ThreadPoolExecutor(max_workers=8) as pool:  # one request per customer, as the API sends them
        rows = list(pool.map(lambda r: remote.score_sequences(items[r:r + 1], kinds[r:r + 1])[0], range(16)))
    after = counts(handle)
    np.testing.assert_allclose(np.stack(rows), scorer.score_sequences(items, kinds), atol=PARITY_TOLERANCE)
    # Triton counts inferences (rows) and model executions apart: 16 one-row requests in fewer
    # executions means the dynamic batcher joined concurrent customers into one onnxruntime run.
    assert after[0] - before[0] == 16
    assert after[1] - before[1] < 16


def counts(handle: ServerHandle) -> tuple[int, int]:
    """(inference_count, execution_count) of the served sequential model."""
    client = httpclient.InferenceServerClient(handle.http_url)
    try:
        stats = client.get_inference_statistics(SEQUENTIAL_MODEL, str(VERSION))["model_stats"][0]
    finally:
        client.close()
    return int(stats["inference_count"]), int(stats["execution_count"])


def test_the_deploy_smoke_test_passes_on_the_served_model_and_fails_on_another(
        served: tuple[ServerHandle, SequentialScorer, Path], tmp_path: Path) -> None:
    handle, _, repo = served
    smoke_test_sequential(repo.parent, handle.http_url)  # compares with onnxruntime on the bundle's own file
    other = repository(tmp_path, sequential_scorer(seed=2))  # same shapes, other weights
    with pytest.raises(DeployError, match="differ"):
        smoke_test_sequential(other.parent, handle.http_url)
    smoke_test_sequential(tmp_path / "no_bundle", handle.http_url)  # a bundle without the model: nothing to check


def test_a_stopped_server_makes_the_sequential_source_unavailable(tmp_path: Path) -> None:
    scorer = sequential_scorer(seed=0)
    client = TritonClient(f"127.0.0.1:{free_port()}", SEQUENTIAL_MODEL, timeout_s=1.0)
    items, kinds = random_sequences(scorer, 1)
    with pytest.raises(RankerUnavailable):
        TritonSequentialScorer(client, scorer.n_items, scorer.max_len).score_sequences(items, kinds)
