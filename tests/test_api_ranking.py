"""The API's cached-encoding ranker on a bundle from a real ETL run: parity with the workflow, Triton, fallback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flask import Flask

from api import create_app
from api.ranking import EncodedRanker
from api.seed import seed
from serving.bundle import ServingBundle, build_bundle
from serving.ranking import TritonRankingService
from tests.conftest import free_port
from tests.serving_world import build_serving_world, running_triton
from tests.test_api_support import make_config


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Synthetic events -> ETL -> an untrained DLRM -> bundle at serving/current; events for seeding a store."""
    root = tmp_path_factory.mktemp("ranking")
    world = build_serving_world(root)
    bundle = build_bundle(world.model_dir, root / "serving", version=1)
    (root / "serving" / "current").symlink_to(bundle.name)
    return {"root": root, "bundle": bundle, "events": world.events, "products": world.products}


@pytest.fixture(scope="module")
def triton(world: dict) -> Iterator:
    yield from running_triton(world["bundle"], world["root"] / "triton")


def _pairs(products: pd.DataFrame, customer_id: int) -> pd.DataFrame:
    pairs = products[["product_id", "category_id", "brand", "price"]].reset_index(drop=True)
    pairs.insert(0, "user_id", np.int64(customer_id))
    return pairs


def test_cached_features_equal_the_workflow_encoding_of_every_pair(world: dict) -> None:
    bundle = ServingBundle.load(world["bundle"])
    ranker = EncodedRanker(bundle, client=None)  # type: ignore[arg-type]  # features() never calls Triton
    products = world["products"].sample(frac=1.0, random_state=0).head(60)
    customers = pd.read_parquet(world["events"]).user_id.unique()[:3]
    assert ranker.separable
    for customer_id in [*customers.tolist(), 999_999_999]:  # known customers and one the workflow never saw
        dense, sparse = ranker.features(int(customer_id), products)
        want_dense, want_sparse = bundle.encode(_pairs(products, int(customer_id)))
        np.testing.assert_allclose(dense, want_dense, atol=1e-6)
        np.testing.assert_array_equal(sparse, want_sparse)


def test_a_changed_price_is_encoded_again_and_nothing_else_is(world: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    bundle = ServingBundle.load(world["bundle"])
    ranker = EncodedRanker(bundle, client=None)  # type: ignore[arg-type]
    products = world["products"].head(40).reset_index(drop=True)
    customer_id = int(pd.read_parquet(world["events"]).user_id.iloc[0])
    ranker.features(customer_id, products)
    encoded_rows: list[int] = []
    real_encode = bundle.encode
    monkeypatch.setattr(bundle, "encode", lambda pairs: encoded_rows.append(len(pairs)) or real_encode(pairs))
    ranker.features(customer_id, products)
    assert encoded_rows == []  # everything cached, REES46-sized category ids included
    changed = products.copy()
    changed.loc[3, "price"] = changed.loc[3, "price"] * 3 + 1
    dense, sparse = ranker.features(customer_id, changed)
    assert encoded_rows == [1]
    want_dense, want_sparse = real_encode(_pairs(changed, customer_id))
    np.testing.assert_allclose(dense, want_dense, atol=1e-6)
    np.testing.assert_array_equal(sparse, want_sparse)


@pytest.fixture
def served_app(world: dict, triton, tmp_path: Path) -> Flask:  # type: ignore[no-untyped-def]
    app = create_app(make_config(tmp_path, SERVING_DIR=str(world["root"] / "serving"), TRITON_URL=triton.http_url))
    seed(app.extensions["recsys_store"], world["events"])
    return app


def test_recommendations_are_ranked_by_triton_like_the_serving_service(served_app: Flask, world: dict,
                                                                      triton) -> None:  # type: ignore[no-untyped-def]
    client = served_app.test_client()
    customer_id = int(pd.read_parquet(world["events"]).user_id.iloc[0])
    body = client.get(f"/customers/{customer_id}/recommendations?k=5&exclude_purchased=false").json
    assert body["ranker"] == "triton" and body["fallback"] is False and len(body["items"]) == 5
    assert isinstance(served_app.extensions["recsys_ranker"].get(), EncodedRanker)
    # The same products scored by serving's own service (full workflow per pair) get the same scores.
    ids = [item["product_id"] for item in body["items"]]
    products = world["products"].set_index("product_id").loc[ids].reset_index()
    reference = TritonRankingService(world["bundle"], triton.http_url).score(customer_id, products)
    np.testing.assert_allclose([item["score"] for item in body["items"]], reference, atol=1e-5)


def test_recommendations_fall_back_to_popular_when_triton_is_unreachable(world: dict, tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, SERVING_DIR=str(world["root"] / "serving"),
                                 TRITON_URL=f"127.0.0.1:{free_port()}"))
    seed(app.extensions["recsys_store"], world["events"])
    customer_id = int(pd.read_parquet(world["events"]).user_id.iloc[0])
    body = app.test_client().get(f"/customers/{customer_id}/recommendations?k=5&exclude=purchased").json
    assert body["ranker"] == "popular" and body["fallback"] is True and len(body["items"]) == 5


def _point_current(serving: Path, bundle: Path) -> None:
    """What a deploy does (plugins.deploy): swap serving/current to the new bundle atomically."""
    tmp = serving / "current.tmp"
    tmp.symlink_to(bundle.resolve(), target_is_directory=True)
    tmp.replace(serving / "current")


def test_a_running_api_serves_a_new_deployment_without_a_restart(world: dict, triton,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    import shutil

    serving = tmp_path / "serving"
    serving.mkdir()
    app = create_app(make_config(tmp_path, SERVING_DIR=str(serving), TRITON_URL=triton.http_url, DEPLOY_CHECK_S=0))
    # The same deployments seen by a worker that checks once an hour: it keeps what it built first.
    slow = create_app(make_config(tmp_path / "slow", SERVING_DIR=str(serving), TRITON_URL=triton.http_url,
                                  DEPLOY_CHECK_S=3600))
    for each in (app, slow):
        seed(each.extensions["recsys_store"], world["events"])
    customer_id = int(pd.read_parquet(world["events"]).user_id.iloc[0])
    path = f"/customers/{customer_id}/recommendations?k=5&exclude_purchased=false"

    def ranked_by(which: Flask) -> str:
        body = which.test_client().get(path).json
        assert len(body["items"]) == 5
        return body["ranker"]

    assert ranked_by(app) == "popular" and ranked_by(slow) == "popular"  # nothing deployed yet
    _point_current(serving, world["bundle"])
    assert ranked_by(app) == "triton"
    first = app.extensions["recsys_ranker"].get()
    assert isinstance(first, EncodedRanker) and app.extensions["recsys_ranker"].get() is first  # built once
    assert ranked_by(slow) == "popular"  # its next look is an hour away

    second = shutil.copytree(world["bundle"], serving / "2", symlinks=True)  # version 2 of the same model
    _point_current(serving, second)
    assert ranked_by(app) == "triton"
    assert app.extensions["recsys_ranker"].get() is not first  # rebuilt from the new bundle

    (serving / "current").unlink()  # undeployed: popular items again, no error
    assert ranked_by(app) == "popular"
    for each in (app, slow):
        each.extensions["recsys_store"].dispose()
