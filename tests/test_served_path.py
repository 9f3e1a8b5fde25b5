"""What is evaluated is what is served: the offline evaluator's top-k equals the API's, Triton ranking."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from api import create_app
from api.seed import seed
from etl import EtlConfig, SyntheticConfig, generate, run_etl
from serving.bundle import build_bundle
from serving.recommender import TritonRecommender
from tests.serving_world import running_triton
from tests.test_api_support import make_config
from training.compare import served_lists
from training.quality import Split, build_task, last_days_split
from training.ranker import MODEL_FILE, SCHEMA_FILE, RankerConfig, fit_recommender

pytestmark = pytest.mark.integration
K = 10


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fitted recommender laid out as the registry hands it over, built into a bundle at serving/current."""
    root = tmp_path_factory.mktemp("served")
    events = generate(SyntheticConfig(n_events=20_000, n_users=120, n_products=400, days=5, seed=5)).events
    held = last_days_split(events, 1)
    # The shop's catalogue is what the store knows: the products of the training days.
    split = Split(held.train, held.test, np.unique(held.train["product_id"].to_numpy(np.int64)), held.kind)
    fitted = fit_recommender(split.train, split.items, RankerConfig(epochs=2, pool_size=60))
    fitted.recommender.mode = "ranker"  # whatever won on held-out users: here Triton must rank
    model_dir = root / "model"
    fitted.save(model_dir / "recommender")
    shutil.copyfile(model_dir / "recommender" / MODEL_FILE, model_dir / "dlrm.pt")
    shutil.copyfile(model_dir / "recommender" / SCHEMA_FILE, model_dir / "schema.json")
    train_file = root / "train.parquet"
    split.train.to_parquet(train_file)
    etl = run_etl(train_file, root / "etl", EtlConfig())
    shutil.copytree(etl.workflow_dir, model_dir / "workflow")
    bundle = build_bundle(model_dir, root / "serving", version=1)
    (root / "serving" / "current").symlink_to(bundle.name)
    return {"root": root, "fitted": fitted, "split": split, "train_file": train_file}


@pytest.fixture(scope="module")
def triton(world: dict) -> Iterator:
    yield from running_triton(world["root"] / "serving" / "1", world["root"] / "triton")


def test_the_api_serves_the_evaluators_lists(world: dict, triton, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_config(tmp_path, SERVING_DIR=str(world["root"] / "serving"), TRITON_URL=triton.http_url))
    seed(app.extensions["recsys_store"], world["train_file"])
    assert isinstance(app.extensions["recsys_ranker"].get(), TritonRecommender)
    fitted, split = world["fitted"], world["split"]
    task = build_task(split, exclude="seen")
    offline = served_lists(fitted.recommender, fitted.scorer(), task, K)  # the nightly evaluator's code
    rows = np.random.default_rng(0).choice(len(task.users), size=min(12, len(task.users)), replace=False)
    client = app.test_client()
    for row in rows:
        body = client.get(f"/customers/{int(task.users[row])}/recommendations?k={K}").json
        assert body["ranker"] == "triton" and body["fallback"] is False
        served = [item["product_id"] for item in body["items"]]
        want = split.items[offline[row][offline[row] >= 0]].tolist()
        assert served[:len(want)] == want, f"customer {task.users[row]}"


def test_a_new_event_changes_the_next_answer(world: dict, triton, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_config(tmp_path, SERVING_DIR=str(world["root"] / "serving"), TRITON_URL=triton.http_url))
    seed(app.extensions["recsys_store"], world["train_file"])
    client = app.test_client()
    customer = int(pd.read_parquet(world["train_file"], columns=["user_id"]).user_id.iloc[0])
    before = [i["product_id"] for i in client.get(f"/customers/{customer}/recommendations?k={K}").json["items"]]
    viewed = before[0]
    assert client.post("/interactions", json={"customer_id": customer, "product_id": viewed,
                                              "event_type": "view"}).status_code == 201
    after = [i["product_id"] for i in client.get(f"/customers/{customer}/recommendations?k={K}").json["items"]]
    assert viewed not in after and len(after) == K  # seen now, so excluded; the list is still full


def test_every_served_item_is_explained_by_its_source_and_the_customers_products(world: dict, triton,  # type: ignore[no-untyped-def]
                                                                                tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, SERVING_DIR=str(world["root"] / "serving"), TRITON_URL=triton.http_url))
    seed(app.extensions["recsys_store"], world["train_file"])
    rec = world["fitted"].recommender
    events = pd.read_parquet(world["train_file"], columns=["user_id", "product_id"])
    client = app.test_client()
    sources = set()
    for customer in events.user_id.drop_duplicates().iloc[:8].tolist():
        history = set(events.product_id[events.user_id == customer].tolist())
        items = client.get(f"/customers/{customer}/recommendations?k={K}").json["items"]
        assert len(items) == K
        for item in items:
            why = item["explanation"]
            sources.add(why["source"])
            assert why["source"] in rec.sources and why["reason"]
            assert set(why["evidence"]) <= history and len(why["evidence"]) <= 3
            if why["source"] in ("item_knn", "ease", "als"):  # decomposable: evidence named in the reason
                assert why["evidence"] and f"product {why['evidence'][0]}" in why["reason"]
    assert len(sources) >= 2  # the pool mixes sources, and so do the explanations
