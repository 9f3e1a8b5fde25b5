"""Per-worker caches of the API: catalogue index freshness, agreement with the SQL reference, key lookups."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import delete, select

from api import create_app
from api.auth import create_key
from api.seed import seed
from api.store import ApiKey, Interaction
from etl.synthetic import SyntheticConfig, generate
from serving.catalogue import ProductFilter
from tests import sql_reference
from tests.test_api_support import PriceRanker, add_catalogue, make_config


class Clock:
    """A clock the test moves by hand, so TTLs are tested without sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _app(tmp_path: Path, ranker: PriceRanker | None = None, **config: object) -> tuple[Flask, FlaskClient, Clock]:
    app = create_app(make_config(tmp_path, CATALOGUE_TTL_S=60, INTERACTIONS_TTL_S=10, CATALOGUE_REBUILD_S=600,
                                 **config), ranker=ranker)
    clock = Clock()
    app.extensions["recsys_catalogue"].clock = clock
    client = app.test_client()
    add_catalogue(client)
    return app, client, clock


def _ids(resp) -> list[int]:  # type: ignore[no-untyped-def]
    return [item["product_id"] for item in resp.json["items"]]


def test_a_new_purchase_is_excluded_on_the_very_next_request_whatever_the_ttl(tmp_path: Path) -> None:
    _, client, _ = _app(tmp_path, PriceRanker())
    assert 5 in _ids(client.get("/customers/2/recommendations?k=20"))
    assert client.post("/interactions", json={"customer_id": 2, "product_id": 5,
                                              "event_type": "purchase"}).status_code == 201
    assert 5 not in _ids(client.get("/customers/2/recommendations?k=20"))  # clock not moved: cache is stale


def test_a_first_interaction_switches_a_customer_from_popular_to_ranked_at_once(tmp_path: Path) -> None:
    _, client, _ = _app(tmp_path, PriceRanker())
    assert client.get("/customers/4/recommendations").json["ranker"] == "popular"
    client.post("/interactions", json={"customer_id": 4, "product_id": 7, "event_type": "view", "session": "s9"})
    body = client.get("/customers/4/recommendations?k=20").json
    assert body["ranker"] == "triton" and body["fallback"] is False and body["items"]


def test_a_new_product_appears_after_the_catalogue_ttl(tmp_path: Path) -> None:
    _, client, clock = _app(tmp_path)
    assert 11 not in _ids(client.get("/products/popular?k=20"))
    assert client.post("/products", json={"id": 11, "category_id": 1, "price": 1.0}).status_code == 201
    assert client.post("/interactions", json={"customer_id": 4, "product_id": 11,
                                              "event_type": "purchase"}).status_code == 201
    assert 11 not in _ids(client.get("/products/popular?k=20"))  # within both TTLs: the cached catalogue
    clock.now += 60
    popular = client.get("/products/popular?k=20").json["items"]
    assert {"product_id": 11, "score": 1.0} in popular  # a purchase weighs 1 (RECSYS_EVENT_WEIGHTS default)


def test_new_interactions_change_popularity_after_their_ttl(tmp_path: Path) -> None:
    _, client, clock = _app(tmp_path)
    assert _ids(client.get("/products/popular?k=1")) == [6]
    items = [{"customer_id": 4, "product_id": 8, "event_type": "purchase"} for _ in range(3)]
    assert client.post("/interactions/bulk", json={"items": items}).status_code == 201
    assert _ids(client.get("/products/popular?k=1")) == [6]
    clock.now += 10
    assert client.get("/products/popular?k=1").json["items"] == [{"product_id": 8, "score": 3.0}]


def test_unavailable_products_leave_once_the_catalogue_refreshes(tmp_path: Path) -> None:
    _, client, clock = _app(tmp_path)
    assert client.patch("/products/6", json={"available": False}).status_code == 200
    clock.now += 60
    assert 6 not in _ids(client.get("/products/popular?k=20"))


def test_deleted_interactions_leave_popularity_at_the_full_rebuild(tmp_path: Path) -> None:
    app, client, clock = _app(tmp_path)
    assert _ids(client.get("/products/popular?k=1")) == [6]
    with app.extensions["recsys_store"].session() as session:
        session.execute(delete(Interaction).where(Interaction.product_id == 6))
    clock.now += 60  # increments are folded in, deletions are not
    assert _ids(client.get("/products/popular?k=1")) == [6]
    clock.now += 600
    popular = client.get("/products/popular?k=20").json["items"]
    assert popular[0]["product_id"] != 6 and {"product_id": 6, "score": 0.0} in popular


@pytest.mark.parametrize("weights", ["", "view=1,cart=0,purchase=0", "view=0,cart=3,purchase=0.5"])
def test_popularity_weighs_events_as_configured(tmp_path: Path, weights: str) -> None:
    """/products/popular sums RECSYS_EVENT_WEIGHTS per product: one meaning with training's weights."""
    from collections import Counter

    from contracts import EventWeights

    app, client, _ = _app(tmp_path, EVENT_WEIGHTS=weights)
    want = EventWeights.parse(weights).as_dict()
    with app.extensions["recsys_store"].session() as session:
        scores: Counter[int] = Counter()
        for i in session.query(Interaction):
            scores[i.product_id] += want[i.event_type]
    popular = client.get("/products/popular?k=20").json["items"]
    assert popular and {p["product_id"]: p["score"] for p in popular} == \
        {p["product_id"]: pytest.approx(scores[p["product_id"]]) for p in popular}
    assert [p["score"] for p in popular] == sorted((p["score"] for p in popular), reverse=True)


def test_unparseable_event_weights_stop_the_app_at_start(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="click"):
        create_app(make_config(tmp_path, EVENT_WEIGHTS="click=1"))


@pytest.fixture(scope="module")
def synthetic_app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """A store seeded from synthetic events: enough customers and categories for purchases and filters to matter."""
    root = tmp_path_factory.mktemp("synthetic")
    events = generate(SyntheticConfig(n_events=4000, n_users=60, n_products=150, days=3, seed=3)).events
    events.to_parquet(root / "events.parquet")
    app = create_app(make_config(root))
    seed(app.extensions["recsys_store"], root / "events.parquet")
    return app


@pytest.mark.parametrize("where", [ProductFilter(), ProductFilter(min_price=20.0, max_price=200.0)])
def test_catalogue_index_agrees_with_the_sql_popularity(synthetic_app: Flask, where: ProductFilter) -> None:
    store = synthetic_app.extensions["recsys_store"]
    index = synthetic_app.extensions["recsys_catalogue"].index()
    with store.session() as session:
        assert index.popular(40, where) == sql_reference.popular(session, 40, where)
        customers = session.scalars(select(Interaction.customer_id).distinct().order_by(Interaction.customer_id)
                                    .limit(15)).all()
        assert len(customers) == 15
        for customer_id in customers:
            bought = sql_reference.purchased(session, customer_id)
            assert index.popular(30, where, bought) == sql_reference.popular(session, 30, where, bought)


def test_stored_key_lookups_are_cached_for_their_ttl(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path, API_KEY_CACHE_TTL_S=5))
    clock = Clock()
    app.extensions["recsys_stored_keys"].clock = clock
    key = create_key(app.extensions["recsys_store"], "read", "test-pepper")
    client = app.test_client()
    assert client.get("/customers", headers={"X-API-Key": key}).status_code == 200
    with app.extensions["recsys_store"].session() as session:
        session.execute(delete(ApiKey))
    assert client.get("/customers", headers={"X-API-Key": key}).status_code == 200  # cached role
    clock.now += 5
    # No key anywhere any more: auth is off again, as in the embedded setup.
    assert client.get("/customers").status_code == 200
    assert app.extensions["recsys_stored_keys"].role("0" * 64) is None
