"""Serving bundles built from a real ETL run: layout, feature encoding, and ranking through Triton."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from serving.bundle import ServingBundle, build_bundle
from serving.errors import BundleError, RankerUnavailable
from serving.local_triton import start_server, stop_server
from serving.ranking import TritonRankingService
from tests.conftest import free_port
from tests.serving_world import build_serving_world
from models.saved import load_model


@pytest.fixture(scope="module")
def etl_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """(model dir as the registry hands it over, ETL output dir, products) from synthetic events."""
    root = tmp_path_factory.mktemp("bundle")
    world = build_serving_world(root)
    return world.model_dir, root / "etl", world.products


@pytest.fixture(scope="module")
def bundle_dir(etl_run: tuple[Path, Path, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_bundle(etl_run[0], tmp_path_factory.mktemp("serving"), version=3, max_batch_size=32)


def test_bundle_holds_model_schema_workflow_repository_and_deployment(
    bundle_dir: Path, etl_run: tuple[Path, Path, pd.DataFrame]
) -> None:
    assert bundle_dir.name == "3"
    for part in ("model.onnx", "schema.json", "workflow", "triton_repo/dlrm/config.pbtxt",
                 "triton_repo/dlrm/3/model.onnx", "deployment.json"):
        assert (bundle_dir / part).exists(), part
    schema = json.loads((bundle_dir / "schema.json").read_text())
    deployment = json.loads((bundle_dir / "deployment.json").read_text())
    assert deployment["version"] == "3" and deployment["model_name"] == "dlrm"
    assert deployment["n_dense"] == len(schema["continuous"]) and deployment["n_sparse"] == len(schema["categorical"])
    assert deployment["created_at"].endswith("+00:00")
    assert not list(bundle_dir.parent.glob(".*partial"))


def test_bundle_versions_are_immutable_and_need_the_workflow(
    bundle_dir: Path, etl_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    with pytest.raises(BundleError, match="already exists"):
        build_bundle(etl_run[0], bundle_dir.parent, version=3)
    incomplete = tmp_path / "model"
    incomplete.mkdir()
    shutil.copyfile(etl_run[0] / "dlrm.pt", incomplete / "dlrm.pt")
    shutil.copyfile(etl_run[0] / "schema.json", incomplete / "schema.json")
    with pytest.raises(BundleError, match="workflow"):
        build_bundle(incomplete, tmp_path / "serving", version=1)
    assert not (tmp_path / "serving" / "1").exists()


def test_encode_reproduces_the_etl_encoding_in_row_order(
    bundle_dir: Path, etl_run: tuple[Path, Path, pd.DataFrame]
) -> None:
    _, etl_dir, products = etl_run
    train = pd.read_parquet(etl_dir / "train")
    user_raw = int(train["user_id_raw"].iloc[0])
    user_index = int(train.loc[train["user_id_raw"] == user_raw, "user_id"].iloc[0])
    product_index = dict(zip(train["product_id_raw"], train["product_id"]))
    bundle = ServingBundle.load(bundle_dir)
    pairs = products[["product_id", "category_id", "brand", "price"]].iloc[::-1].reset_index(drop=True)
    pairs.insert(0, "user_id", user_raw)
    dense, sparse = bundle.encode(pairs)
    assert dense.dtype == np.float32 and dense.shape == (len(pairs), bundle.schema.n_dense)
    assert sparse.dtype == np.int64 and sparse.shape == (len(pairs), bundle.schema.n_sparse)
    assert np.isfinite(dense).all()
    categorical = list(bundle.schema.categorical)
    assert (sparse[:, categorical.index("user_id")] == user_index).all()
    seen = pairs["product_id"].isin(product_index).to_numpy()
    expected = pairs.loc[seen, "product_id"].map(product_index).to_numpy()
    np.testing.assert_array_equal(sparse[seen, categorical.index("product_id")], expected)
    with pytest.raises(BundleError, match="price"):
        bundle.encode(pairs.drop(columns=["price"]))


def test_ranking_service_scores_through_triton_like_torch_and_fails_over_when_stopped(
    bundle_dir: Path, etl_run: tuple[Path, Path, pd.DataFrame], tmp_path: Path
) -> None:
    model_dir, _, products = etl_run
    handle = start_server(bundle_dir, free_port(), free_port(), tmp_path / "state")
    try:
        assert handle.model_version == 3
        service = TritonRankingService(bundle_dir, handle.grpc_url, protocol="grpc")
        candidates = products.head(50)  # > max_batch_size 32: the client splits the request
        scores = service.score(512000284, candidates)
        pairs = candidates[["product_id", "category_id", "brand", "price"]].reset_index(drop=True)
        pairs.insert(0, "user_id", 512000284)
        dense, sparse = ServingBundle.load(bundle_dir).encode(pairs)
        with torch.no_grad():
            expected = torch.sigmoid(load_model(model_dir / "dlrm.pt")(torch.from_numpy(dense), torch.from_numpy(sparse)))
        np.testing.assert_allclose(scores, expected.numpy(), atol=1e-5)
        assert service.score(512000284, candidates.head(0)).shape == (0,)
    finally:
        stop_server(tmp_path / "state")
    with pytest.raises(RankerUnavailable, match=handle.grpc_url):
        service.score(512000284, candidates)
