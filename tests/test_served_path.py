"""What is evaluated is what is served: the offline evaluator's top-k equals the API's, Triton ranking;
the API's fallback, a refused bundle and a new deployment picked up without a restart."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from flask import Flask

from api import create_app
from api.seed import seed
from etl import SyntheticConfig
from serving.bundle import build_bundle
from serving.sequential_export import OnnxSequentialScorer
from serving.triton_client import TritonSequentialScorer
from serving.recommender import TritonRecommender
from tests.conftest import free_port
from tests.serving_world import build_served_world, running_triton
from tests.test_api_support import make_config
from training.compare import served_lists
from training.quality import build_task
from training.ranker import RankerConfig

pytestmark = pytest.mark.integration
K = 10


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A fitted recommender laid out as the registry hands it over, built into a bundle at serving/current."""
    root = tmp_path_factory.mktemp("served")
    # the real-time path is under test here, so the sequential source is kept whatever held-out users say
    built = build_served_world(root, SyntheticConfig(n_events=20_000, n_users=120, n_products=400, days=5, seed=5),
                               RankerConfig(epochs=2, pool_size=60, keep_sequential="always"))
    bundle = build_bundle(built.model_dir, root / "serving", version=1)
    (root / "serving" / "current").symlink_to(bundle.name)
    return {"root": root, "fitted": built.fitted, "split": built.split, "train_file": built.train_file}


@pytest.fixture(scope="module")
def triton(world: dict) -> Iterator:
    yield from running_triton(world["root"] / "serving" / "1", world["root"] / "triton")


@pytest.mark.parametrize("sequential_on", ["triton", "auto"])
def test_the_api_serves_the_evaluators_lists(world: dict, triton, tmp_path: Path,  # type: ignore[no-untyped-def]
                                            sequential_on: str) -> None:
    app = create_app(make_config(tmp_path, SERVING_DIR=str(world["root"] / "serving"), TRITON_URL=triton.http_url,
                                 SEQUENTIAL_ON=sequential_on))
    seed(app.extensions["recsys_store"], world["train_file"])
    served_rec = app.extensions["recsys_ranker"].get()
    assert isinstance(served_rec, TritonRecommender)
    # the bundle ships the sequential model beside the ranker (on CPU): Triton's when asked for, else the
    # same ONNX file in the worker ("auto" sends it to Triton only on a GPU)
    expected = TritonSequentialScorer if sequential_on == "triton" else OnnxSequentialScorer
    assert isinstance(served_rec.recommender.sources["sequential"], expected)
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


def test_the_sequential_model_in_the_worker_answers_as_on_triton(world: dict, triton, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The same ONNX file on one CPU thread, in the worker or in Triton's stub: the same lists, scores
    and explanations (one request at a time, so Triton batches nothing)."""
    bodies = {}
    for where in ("triton", "worker"):
        app = create_app(make_config(tmp_path / where, SERVING_DIR=str(world["root"] / "serving"),
                                     TRITON_URL=triton.http_url, SEQUENTIAL_ON=where))
        seed(app.extensions["recsys_store"], world["train_file"])
        client = app.test_client()
        customers = world["split"].train.user_id.drop_duplicates().iloc[:10].tolist()
        bodies[where] = [client.get(f"/customers/{int(c)}/recommendations?k={K}").json["items"] for c in customers]
    assert all(len(items) == K for items in bodies["worker"])
    assert bodies["worker"] == bodies["triton"]


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


WIDE = 50  # list length on which a shift toward a category is counted


def _ids(client, customer: int, k: int = K) -> list[int]:  # type: ignore[no-untyped-def]
    body = client.get(f"/customers/{customer}/recommendations?k={k}").json
    return [i["product_id"] for i in body["items"]]


def _category_products(world: dict, category: int, skip: set[int], n: int | None) -> list[int]:
    """The `n` most viewed training products of `category` (all with None), outside `skip`."""
    train = world["split"].train
    counts = train[train.category_id == category].product_id.value_counts()
    return [int(p) for p in counts.index if int(p) not in skip][:n]


def _least_shown_category(world: dict, shown: list[int], skip: set[int]) -> int:
    """Of the categories with enough unseen products, the one least present in `shown` (then most viewed)."""
    train = world["split"].train
    category_of = train.drop_duplicates("product_id").set_index("product_id").category_id
    present = pd.Series([category_of[p] for p in shown if p in category_of.index]).value_counts()
    candidates = [c for c in train.category_id.value_counts().index
                  if len(_category_products(world, c, skip, 8)) == 8]
    return int(min(candidates, key=lambda c: present.get(c, 0)))


def _in_category(world: dict, ids: list[int], category: int) -> int:
    train = world["split"].train
    return int(train[train.product_id.isin(ids)].drop_duplicates("product_id").category_id.eq(category).sum())


def _sequential_rank(rec, product_ids: np.ndarray, event_types: np.ndarray, targets: list[int]) -> float:  # type: ignore[no-untyped-def]
    """Mean rank of `targets` among all items by the sequential source's scores for these events."""
    seq = rec.sequences(product_ids, event_types)
    scores = rec.sources["sequential"].score_sequences(seq.items, seq.kinds)[0]
    rank = np.empty(len(scores), dtype=np.int64)
    rank[np.argsort(-scores, kind="stable")] = np.arange(len(scores))
    return float(rank[np.searchsorted(rec.items, targets)].mean())


def test_views_in_one_category_shift_the_next_answer_toward_it(world: dict, triton, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_config(tmp_path, SERVING_DIR=str(world["root"] / "serving"), TRITON_URL=triton.http_url))
    seed(app.extensions["recsys_store"], world["train_file"])
    client = app.test_client()
    train = world["split"].train
    counts = train.user_id.value_counts()
    customer = int(counts.index[len(counts) // 2])  # a customer with a median history
    seen = set(train[train.user_id == customer].product_id.astype(int))
    before = _ids(client, customer, WIDE)
    category = _least_shown_category(world, before, seen)
    viewed = _category_products(world, category, seen, 4)
    for product in viewed:
        assert client.post("/interactions", json={"customer_id": customer, "product_id": product,
                                                  "event_type": "view"}).status_code == 201
    after = _ids(client, customer, WIDE)
    assert len(after) == WIDE and not set(viewed) & set(after)
    assert _in_category(world, after, category) > _in_category(world, before, category), (before, after)
    # the sequential source itself reads the new steps: the category's other products move up its ranking
    rec = world["fitted"].recommender
    events = train[train.user_id == customer].sort_values("event_time")
    rest = _category_products(world, category, seen | set(viewed), None)
    ids, types = events.product_id.to_numpy(), events.event_type.to_numpy()
    assert _sequential_rank(rec, np.r_[ids, viewed], np.r_[types, ["view"] * len(viewed)], rest) \
        < _sequential_rank(rec, ids, types, rest)


def test_a_new_customer_gets_session_based_items_after_a_few_events(world: dict, triton, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    app = create_app(make_config(tmp_path, SERVING_DIR=str(world["root"] / "serving"), TRITON_URL=triton.http_url))
    seed(app.extensions["recsys_store"], world["train_file"])
    client = app.test_client()
    customer = int(world["split"].train.user_id.max()) + 1000  # no training history
    assert client.post("/customers", json={"id": customer}).status_code == 201
    cold = client.get(f"/customers/{customer}/recommendations?k={K}").json
    popular = [i["product_id"] for i in cold["items"]]
    assert cold["ranker"] == "popular"
    category = _least_shown_category(world, popular, set())
    viewed = _category_products(world, category, set(), 3)
    for product in viewed:
        assert client.post("/interactions", json={"customer_id": customer, "product_id": product,
                                                  "event_type": "view"}).status_code == 201
    body = client.get(f"/customers/{customer}/recommendations?k={K}").json
    after = [i["product_id"] for i in body["items"]]
    assert body["ranker"] == "triton" and body["fallback"] is False
    assert len(after) == K and not set(viewed) & set(after) and after != popular
    assert _in_category(world, after, category) > _in_category(world, popular, category), (popular, after)


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


def _first_customer(world: dict) -> int:
    return int(pd.read_parquet(world["train_file"], columns=["user_id"]).user_id.iloc[0])


def test_recommendations_fall_back_to_popular_when_triton_is_unreachable(world: dict, tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, SERVING_DIR=str(world["root"] / "serving"),
                                 TRITON_URL=f"127.0.0.1:{free_port()}"))
    seed(app.extensions["recsys_store"], world["train_file"])
    body = app.test_client().get(f"/customers/{_first_customer(world)}/recommendations?k=5&exclude=purchased").json
    assert body["ranker"] == "popular" and body["fallback"] is True and len(body["items"]) == 5


def test_a_bundle_without_the_served_recommender_is_refused_by_name(world: dict, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    serving = tmp_path / "serving"
    shutil.copytree(world["root"] / "serving" / "1", serving / "1", ignore=shutil.ignore_patterns("recommender"))
    (serving / "current").symlink_to("1")
    app = create_app(make_config(tmp_path, SERVING_DIR=str(serving), TRITON_URL=f"127.0.0.1:{free_port()}"))
    with caplog.at_level(logging.ERROR, logger="api"):
        assert app.extensions["recsys_ranker"].get() is None
    assert "has no recommender/" in caplog.text
    seed(app.extensions["recsys_store"], world["train_file"])
    body = app.test_client().get(f"/customers/{_first_customer(world)}/recommendations?k=5").json
    assert body["ranker"] == "popular" and body["fallback"] is False and len(body["items"]) == 5


def _point_current(serving: Path, bundle: Path) -> None:
    """What a deploy does (stages.deploy): swap serving/current to the new bundle atomically."""
    tmp = serving / "current.tmp"
    tmp.symlink_to(bundle.resolve(), target_is_directory=True)
    tmp.replace(serving / "current")


def test_a_running_api_serves_a_new_deployment_without_a_restart(world: dict, triton,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    serving = tmp_path / "serving"
    serving.mkdir()
    app = create_app(make_config(tmp_path, SERVING_DIR=str(serving), TRITON_URL=triton.http_url, DEPLOY_CHECK_S=0))
    # The same deployments seen by a worker that checks once an hour: it keeps what it built first.
    slow = create_app(make_config(tmp_path / "slow", SERVING_DIR=str(serving), TRITON_URL=triton.http_url,
                                  DEPLOY_CHECK_S=3600))
    for each in (app, slow):
        seed(each.extensions["recsys_store"], world["train_file"])
    path = f"/customers/{_first_customer(world)}/recommendations?k=5&exclude_purchased=false"

    def ranked_by(which: Flask) -> str:
        body = which.test_client().get(path).json
        assert len(body["items"]) == 5
        return body["ranker"]

    assert ranked_by(app) == "popular" and ranked_by(slow) == "popular"  # nothing deployed yet
    bundle = world["root"] / "serving" / "1"
    _point_current(serving, bundle)
    assert ranked_by(app) == "triton"
    first = app.extensions["recsys_ranker"].get()
    assert isinstance(first, TritonRecommender) and app.extensions["recsys_ranker"].get() is first  # built once
    assert ranked_by(slow) == "popular"  # its next look is an hour away

    second = shutil.copytree(bundle, serving / "2", symlinks=True)  # version 2 of the same model
    _point_current(serving, second)
    assert ranked_by(app) == "triton"
    assert app.extensions["recsys_ranker"].get() is not first  # rebuilt from the new bundle

    (serving / "current").unlink()  # undeployed: popular items again, no error
    assert ranked_by(app) == "popular"
    for each in (app, slow):
        each.extensions["recsys_store"].dispose()
