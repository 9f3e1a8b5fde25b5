"""Recommendations: the served recommender's list, filters, exclusion of purchases, popular fallback and top-up,
similar and popular products."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient

from api import create_app
from tests.recommenders import TableRecommender
from tests.test_api_support import DownRanker, PriceRanker, add_catalogue, app, client, make_config  # noqa: F401


@pytest.fixture
def ranker() -> PriceRanker:
    return PriceRanker()


@pytest.fixture
def ranked(tmp_path: Path, ranker: PriceRanker) -> FlaskClient:
    c = create_app(make_config(tmp_path), ranker=ranker).test_client()
    add_catalogue(c)
    return c


def _ids(resp) -> list[int]:  # type: ignore[no-untyped-def]
    return [item["product_id"] for item in resp.json["items"]]


def test_recommendations_are_k_distinct_ranked_by_the_ranker(ranked: FlaskClient, ranker: PriceRanker) -> None:
    resp = ranked.get("/customers/2/recommendations?k=4")
    body = resp.json
    assert resp.status_code == 200 and body["ranker"] == "triton" and body["fallback"] is False
    ids = _ids(resp)
    assert len(ids) == 4 and len(set(ids)) == 4
    scores = [item["score"] for item in body["items"]]
    assert scores == sorted(scores, reverse=True)
    # The recommender got customer 2's events, in the order they happened.
    assert ranker.calls[-1] == [(1, "view"), (3, "purchase"), (6, "cart")]
    # Cheapest available, not seen by customer 2 (product 3), wins under the price ranker.
    assert ids[0] == 5 and 3 not in ids


def test_seen_products_are_excluded_by_default_and_the_exclusion_is_a_parameter(ranked: FlaskClient) -> None:
    assert ranked.post("/interactions", json={"customer_id": 2, "product_id": 5,
                                              "event_type": "view"}).status_code == 201
    assert 5 not in _ids(ranked.get("/customers/2/recommendations?k=20"))  # default: seen, as evaluated
    assert 5 in _ids(ranked.get("/customers/2/recommendations?k=20&exclude=purchased"))
    assert 3 not in _ids(ranked.get("/customers/2/recommendations?k=20&exclude=purchased"))
    assert 3 in _ids(ranked.get("/customers/2/recommendations?k=20&exclude=none"))
    assert ranked.get("/customers/2/recommendations?exclude=everything").status_code in (400, 422)


def test_purchased_products_are_excluded_and_new_purchases_count_at_once(ranked: FlaskClient) -> None:
    before = _ids(ranked.get("/customers/2/recommendations?k=20&exclude=purchased"))
    assert 3 not in before and 5 in before
    assert ranked.post("/interactions", json={"customer_id": 2, "product_id": 5,
                                              "event_type": "purchase"}).status_code == 201
    after = _ids(ranked.get("/customers/2/recommendations?k=20&exclude=purchased"))
    assert 5 not in after
    assert 3 in _ids(ranked.get("/customers/2/recommendations?k=20&exclude_purchased=false"))


def test_unavailable_products_are_never_recommended(ranked: FlaskClient) -> None:
    for cid in (1, 2, 3, 4):
        assert 10 not in _ids(ranked.get(f"/customers/{cid}/recommendations?k=20&exclude_purchased=false"))


@pytest.mark.parametrize("customer_id", [1, 4, 777])
def test_filters_are_respected(ranked: FlaskClient, customer_id: int) -> None:
    items = _ids(ranked.get(f"/customers/{customer_id}/recommendations?k=20&category_id=2&min_price=10"
                            f"&max_price=30"))
    assert items and set(items) <= {6, 7}  # category 2 priced 15 and 25
    # Customer 3 bought 6, so with purchases excluded only 7 remains for them.
    assert _ids(ranked.get("/customers/3/recommendations?k=20&category_id=2&min_price=10&max_price=30"
                           "&exclude=purchased")) == [7]


@pytest.mark.parametrize("customer_id", [4, 777])
def test_customer_without_history_gets_popular_items(ranked: FlaskClient, customer_id: int) -> None:
    body = ranked.get(f"/customers/{customer_id}/recommendations?k=3").json
    popular = ranked.get("/products/popular?k=3").json["items"]
    assert body["ranker"] == "popular" and body["fallback"] is False
    assert [{"product_id": i["product_id"], "score": i["score"]} for i in body["items"]] == popular
    assert all(i["explanation"]["kind"] == "popular" and i["explanation"]["evidence"] == [] for i in body["items"])


def test_ranker_down_falls_back_to_popular_with_flag(tmp_path: Path) -> None:
    c = create_app(make_config(tmp_path), ranker=DownRanker()).test_client()
    add_catalogue(c)
    body = c.get("/customers/1/recommendations?k=3").json
    assert body["ranker"] == "popular" and body["fallback"] is True
    assert len(body["items"]) == 3 and 1 not in _ids_of(body)  # customer 1 bought product 1
    assert {i["explanation"]["kind"] for i in body["items"]} == {"popular"}
    in_category = c.get("/customers/1/recommendations?k=3&category_id=1").json["items"]
    assert in_category and all(i["explanation"]["kind"] == "popular_in_category"
                               and i["explanation"]["category_id"] == 1 for i in in_category)


def _ids_of(body: dict) -> list[int]:
    return [item["product_id"] for item in body["items"]]


def test_without_ranker_recommendations_use_popularity(client: FlaskClient) -> None:
    add_catalogue(client)
    body = client.get("/customers/1/recommendations?k=2").json
    assert body["ranker"] == "popular" and body["fallback"] is False
    # Product 6: cart + purchase (0.5 + 1) outweighs product 3 (purchase 1); product 1 is bought by customer 1.
    assert _ids_of(body) == [6, 3]


def test_popular_products_order_by_weighted_events(client: FlaskClient) -> None:
    add_catalogue(client)
    items = client.get("/products/popular?k=3").json["items"]
    # RECSYS_EVENT_WEIGHTS' defaults (view 0.125, cart 0.5, purchase 1): 6: cart + purchase, 1: purchase + view,
    # 3: purchase (10 is unavailable)
    assert [i["product_id"] for i in items] == [6, 1, 3]
    assert [i["score"] for i in items] == [1.5, 1.125, 1.0]


def test_similar_products_share_sessions_or_customers(client: FlaskClient) -> None:
    add_catalogue(client)
    body = client.get("/products/1/similar?k=10").json
    ids = _ids_of(body)
    assert set(ids) == {2, 3, 5, 6} and 1 not in ids  # s1 and s3 session-mates, plus customer 1's product 5
    # product 1's contexts: s1, s3, c1, c2 (4); product 2's: s1, c1 (2), both shared: 2 / sqrt(4 * 2)
    scores = {item["product_id"]: item["score"] for item in body["items"]}
    assert scores[2] == pytest.approx(2 / (4 * 2) ** 0.5)
    # product 6 (s3, s4, c2, c3) shares s3 and c2 with product 1: 2 / sqrt(4 * 4), below product 2
    assert scores[6] == pytest.approx(0.5) and ids.index(2) < ids.index(6)
    assert all(0 < s <= 1 for s in scores.values())
    assert client.get("/products/404/similar").status_code == 404


def test_empty_price_range_yields_no_items(ranked: FlaskClient) -> None:
    body = ranked.get("/customers/1/recommendations?min_price=30&max_price=10").json
    assert body["items"] == []


class _ReadyRanker(PriceRanker):
    def __init__(self, ready: bool) -> None:
        super().__init__()
        self.ready = ready

    def is_ready(self) -> bool:
        return self.ready


@pytest.mark.parametrize(("ranker_", "state", "status"), [
    (None, "none", "ok"), (PriceRanker(), "configured", "ok"), (_ReadyRanker(True), "ready", "ok"),
    (_ReadyRanker(False), "unavailable", "degraded")])
def test_health_reports_ranker_readiness(tmp_path: Path, ranker_, state: str, status: str) -> None:  # type: ignore[no-untyped-def]
    resp = create_app(make_config(tmp_path), ranker=ranker_).test_client().get("/health")
    assert resp.status_code == 200
    assert resp.json == {"status": status, "database": "ok", "ranker": state}


def test_default_ranker_is_absent_without_a_serving_bundle(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path))
    assert app.extensions["recsys_ranker"].get() is None
    (tmp_path / "serving" / "current").mkdir(parents=True)  # an empty bundle dir cannot load
    broken = create_app(make_config(tmp_path))
    assert broken.extensions["recsys_ranker"].get() is None
    assert broken.test_client().get("/customers/1/recommendations").json["ranker"] == "popular"


class _KnowsFew(TableRecommender):
    """A recommender trained on few products: 4, 2 and 99 (not in the catalogue), in that order."""

    def __init__(self) -> None:
        super().__init__([4, 2, 99])

    def scores(self, product_ids: np.ndarray, event_types: np.ndarray) -> np.ndarray:
        return np.array([3.0, 2.0, 1.0])


def test_a_short_list_is_topped_up_with_popular_products_not_excluded(tmp_path: Path) -> None:
    c = create_app(make_config(tmp_path), ranker=_KnowsFew()).test_client()
    add_catalogue(c)
    body = c.get("/customers/2/recommendations?k=4").json  # customer 2 saw 1, 3 and 6
    assert body["ranker"] == "triton" and body["fallback"] is False
    popular = [i["product_id"] for i in c.get("/products/popular?k=20").json["items"]]
    top_up = [p for p in popular if p not in {1, 3, 6, 4, 2}][:2]
    assert _ids_of(body) == [4, 2] + top_up  # 99 is not in the catalogue, so never recommended
    assert [i["explanation"]["kind"] for i in body["items"]] == ["recommended"] * 2 + ["popular"] * 2
