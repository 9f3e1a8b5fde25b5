"""Two-tower candidates in the API: deploy carries the retrieval model into the bundle, the API puts its
top-N first among the products Triton ranks, and a bundle without (or with a broken) one still serves."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flask import Flask

import registry
from api import create_app
from api.catalogue import Products
from api.ranking import EncodedRanker
from api.recommend import RETRIEVED, read_history
from api.seed import seed
from plugins import deploy
from serving.bundle import ServingBundle, build_bundle
from settings import Settings
from tests.serving_world import build_serving_world, running_triton
from tests.test_api_support import make_config
from models.two_tower import load_two_tower
from serving.candidate_index import build_candidate_index
from training.retrieval import RetrievalConfig, train_retrieval


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ETL + untrained DLRM + a tiny trained two-tower in model/retrieval; bundles with and without it."""
    root = tmp_path_factory.mktemp("retrieval")
    world = build_serving_world(root)
    train_retrieval(world.etl.schema_path.parent, RetrievalConfig(epochs=2, dim=8, embedding_dim=8),
                    world.model_dir / "retrieval")
    with_retrieval = build_bundle(world.model_dir, root / "serving", version=1)
    (root / "serving" / "current").symlink_to(with_retrieval.name)
    plain_model = root / "plain_model"
    shutil.copytree(world.model_dir, plain_model, ignore=shutil.ignore_patterns("retrieval"))
    plain = build_bundle(plain_model, root / "plain_serving", version=1)
    (root / "plain_serving" / "current").symlink_to(plain.name)
    return {"root": root, "world": world, "bundle": with_retrieval, "plain": plain}


@pytest.fixture(scope="module")
def triton(world: dict) -> Iterator:
    # Both bundles hold the same DLRM under the same name, so one server answers for either.
    yield from running_triton(world["bundle"], world["root"] / "triton")


def _app(serving_dir: Path, world: dict, triton, tmp_path: Path) -> Flask:  # type: ignore[no-untyped-def]
    app = create_app(make_config(tmp_path, SERVING_DIR=str(serving_dir), TRITON_URL=triton.http_url))
    seed(app.extensions["recsys_store"], world["world"].events)
    return app


def _buyer(app: Flask, events: Path) -> tuple[int, set[int]]:
    """A customer with at least one purchase, and what they bought (as the store has it)."""
    store = app.extensions["recsys_store"]
    for customer_id in pd.read_parquet(events).query("event_type == 'purchase'").user_id.unique():
        history = read_history(store, int(customer_id))
        if history.purchased:
            return int(customer_id), history.purchased
    raise AssertionError("the synthetic world has no buyer")


def _expected_retrieval(bundle: Path, customer_id: int, exclude: set[int], in_store: set[int]) -> list[int]:
    """The retrieval model's ranking for the customer, computed apart from the API: the workflow's own
    encoding of user_id, a fresh candidate index, purchased products excluded, store products only."""
    loaded = ServingBundle.load(bundle)
    products = pd.DataFrame({"user_id": [customer_id], "product_id": [next(iter(in_store))],
                             "category_id": [1], "brand": ["b"], "price": [1.0]})
    _, sparse = loaded.encode(products)
    code = int(sparse[0, loaded.schema.categorical.index("user_id")])
    index = build_candidate_index(load_two_tower(bundle / "retrieval" / "two_tower.pt"),
                                  pd.read_parquet(bundle / "retrieval" / "catalogue.parquet"))
    ids, _ = index.top_k(np.array([code]), len(index.product_ids), {code: exclude})
    return [int(p) for p in ids[0] if p >= 0 and int(p) in in_store]


def _record_scored(monkeypatch: pytest.MonkeyPatch, ranker: EncodedRanker) -> list[list[int]]:
    """Spy (the real call still runs): the product ids Triton was asked to score, per request."""
    scored: list[list[int]] = []
    real = ranker.score_catalogue

    def score_catalogue(customer_id, products, rows):  # type: ignore[no-untyped-def]
        scored.append(products.ids[rows].tolist())
        return real(customer_id, products, rows)

    monkeypatch.setattr(ranker, "score_catalogue", score_catalogue)
    return scored


def test_the_bundle_carries_the_retrieval_model_and_names_it(world: dict) -> None:
    deployment = json.loads((world["bundle"] / "deployment.json").read_text())
    assert deployment["retrieval"] == "retrieval"
    assert (world["bundle"] / "retrieval" / "two_tower.pt").is_file()
    assert (world["bundle"] / "retrieval" / "catalogue.parquet").is_file()
    assert json.loads((world["plain"] / "deployment.json").read_text())["retrieval"] is None
    assert not (world["plain"] / "retrieval").exists()


def test_retrieval_candidates_come_first_and_reach_the_recommendations(
        world: dict, triton, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    app = _app(world["root"] / "serving", world, triton, tmp_path)
    customer_id, purchased = _buyer(app, world["world"].events)
    ranker = app.extensions["recsys_ranker"].get()
    assert isinstance(ranker, EncodedRanker)
    scored = _record_scored(monkeypatch, ranker)
    in_store = set(world["world"].products.product_id.astype(int).tolist())
    expected = _expected_retrieval(world["bundle"], customer_id, purchased, in_store)

    body = app.test_client().get(f"/customers/{customer_id}/recommendations?k=100&exclude_purchased=true").json
    assert body["ranker"] == "triton" and body["fallback"] is False
    # The retrieval model's top-N (purchases excluded) lead the candidates, in its order.
    n = min(RETRIEVED, len(expected))
    assert n >= 5
    assert scored[-1][:n] == expected[:n]
    assert not purchased & set(scored[-1])
    returned = {item["product_id"] for item in body["items"]}
    assert returned & set(expected[:n])
    assert not purchased & returned

    # Without exclusion, bought products may come back from the retrieval model.
    app.test_client().get(f"/customers/{customer_id}/recommendations?k=10&exclude_purchased=false")
    assert scored[-1][:n] == _expected_retrieval(world["bundle"], customer_id, set(), in_store)[:n]


def test_cached_and_per_request_user_encodings_retrieve_the_same_candidates(world: dict) -> None:
    catalogue = world["world"].products.rename(columns={"product_id": "id"}).assign(available=True)
    products = Products(catalogue[["id", "category_id", "brand", "price", "available"]])
    customer_id = int(pd.read_parquet(world["world"].events).user_id.iloc[0])
    cached = EncodedRanker(ServingBundle.load(world["bundle"]), client=None)  # type: ignore[arg-type]
    per_request = EncodedRanker(ServingBundle.load(world["bundle"]), client=None)  # type: ignore[arg-type]
    per_request.separable = False  # as for a bundle whose columns mix user and item inputs
    in_store = set(products.ids.tolist())
    want = _expected_retrieval(world["bundle"], customer_id, set(), in_store)[:20]
    assert cached.candidates(customer_id, products, 20) == want
    assert per_request.candidates(customer_id, products, 20) == want
    assert want[0] not in cached.candidates(customer_id, products, 20, exclude={want[0]})


def test_a_bundle_without_retrieval_serves_catalogue_candidates(
        world: dict, triton, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    app = _app(world["root"] / "plain_serving", world, triton, tmp_path)
    customer_id, _ = _buyer(app, world["world"].events)
    ranker = app.extensions["recsys_ranker"].get()
    scored = _record_scored(monkeypatch, ranker)
    body = app.test_client().get(f"/customers/{customer_id}/recommendations?k=5&exclude=purchased").json
    assert body["ranker"] == "triton" and body["fallback"] is False and len(body["items"]) == 5
    assert ranker.retrieval() is None and len(scored[-1]) > 0


def test_a_broken_retrieval_model_is_skipped_without_failing_requests(
        world: dict, triton, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    serving = tmp_path / "serving"
    shutil.copytree(world["bundle"], serving / "1")
    (serving / "1" / "retrieval" / "two_tower.pt").write_bytes(b"not a torch file")
    (serving / "current").symlink_to("1")
    app = _app(serving, world, triton, tmp_path)
    customer_id, _ = _buyer(app, world["world"].events)
    client = app.test_client()
    for _ in range(2):
        body = client.get(f"/customers/{customer_id}/recommendations?k=5&exclude=purchased").json
        assert body["ranker"] == "triton" and body["fallback"] is False and len(body["items"]) == 5
    errors = [r for r in caplog.records if "could not load the retrieval model" in r.getMessage()]
    assert len(errors) == 1  # logged once per bundle, not per request


def _settings(tmp_path: Path) -> Settings:
    return dataclasses.replace(
        Settings.from_env(), home=tmp_path, mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
        mlflow_artifact_root=(tmp_path / "mlartifacts").as_uri(), model_name="retrieval-test")


def _register(settings: Settings, world: dict, with_retrieval: bool) -> str:
    model_dir: Path = world["world"].model_dir
    artifacts = {"schema.json": model_dir / "schema.json", "workflow": model_dir / "workflow"}
    if with_retrieval:
        artifacts["retrieval/two_tower.pt"] = model_dir / "retrieval" / "two_tower.pt"
        artifacts["retrieval/catalogue.parquet"] = model_dir / "retrieval" / "catalogue.parquet"
    run_id = registry.log_training_run(
        settings.mlflow_tracking_uri, settings.model_name, {}, [], {"auc": 0.5}, model_dir / "dlrm.pt",
        artifacts, artifact_root=settings.mlflow_artifact_root)
    return registry.register_model(settings.mlflow_tracking_uri, run_id, settings.model_name)


def test_deploy_resolve_downloads_the_runs_retrieval_model_into_the_bundle(world: dict, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with_version = _register(settings, world, with_retrieval=True)
    plain_version = _register(settings, world, with_retrieval=False)

    resolved = deploy.resolve(with_version, settings)
    model_dir = Path(resolved["model_dir"])
    assert (model_dir / "retrieval" / "two_tower.pt").read_bytes() == \
        (world["world"].model_dir / "retrieval" / "two_tower.pt").read_bytes()
    packaged = deploy.package(resolved, settings)
    assert json.loads((Path(packaged["bundle"]) / "deployment.json").read_text())["retrieval"] == "retrieval"

    plain = deploy.resolve(plain_version, settings)
    assert not (Path(plain["model_dir"]) / "retrieval").exists()
    assert (Path(plain["model_dir"]) / "dlrm.pt").is_file()
