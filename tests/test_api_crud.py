"""CRUD, pagination, bulk limits and malformed requests for customers, products and interactions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api import create_app
from tests.test_api_support import add_catalogue, app, client, make_config  # noqa: F401  (fixtures)


def test_customer_lifecycle_create_read_patch_put_delete(client: FlaskClient) -> None:
    created = client.post("/customers", json={"name": "Ada", "email": "ada@example.com"})
    assert created.status_code == 201
    cid = created.json["id"]
    assert created.json["created_at"].endswith("Z")
    assert client.get(f"/customers/{cid}").json["name"] == "Ada"

    patched = client.patch(f"/customers/{cid}", json={"email": "ada@lovelace.org"})
    assert patched.json == {**created.json, "email": "ada@lovelace.org"}
    replaced = client.put(f"/customers/{cid}", json={"name": "Ada L."})
    assert replaced.json["name"] == "Ada L." and replaced.json["email"] is None  # PUT resets omitted fields

    assert client.delete(f"/customers/{cid}").status_code == 204
    missing = client.get(f"/customers/{cid}")
    assert missing.status_code == 404 and missing.json["error"]["field"] == "id"


def test_client_given_ids_are_kept_and_duplicates_conflict(client: FlaskClient) -> None:
    assert client.post("/customers", json={"id": 512, "name": "x"}).json["id"] == 512
    dup = client.post("/customers", json={"id": 512})
    assert dup.status_code == 409 and dup.json["error"]["field"] == "id"
    assert client.post("/customers", json={}).json["id"] == 513  # generated ids follow the maximum


def test_bulk_create_reports_ids_and_rejects_duplicates_within_request(client: FlaskClient) -> None:
    ok = client.post("/products/bulk", json={"items": [{"id": 7, "price": 1.5}, {"price": 2.0}]})
    assert ok.status_code == 201 and ok.json == {"created": 2, "ids": [7, 8]}
    dup = client.post("/products/bulk", json={"items": [{"id": 20}, {"id": 20}]})
    assert dup.status_code == 409 and dup.json["error"]["field"] == "items.1.id"
    assert client.get("/products").json["total"] == 2  # the failed batch inserted nothing
    taken = client.post("/products/bulk", json={"items": [{"id": 30}, {"id": 7}]})
    assert taken.status_code == 409 and taken.json["error"]["field"] == "items.1.id"


def test_bulk_over_the_configured_limit_is_413_and_inserts_nothing(client: FlaskClient) -> None:
    items = [{"name": f"c{i}"} for i in range(51)]  # BULK_LIMIT is 50 in tests
    resp = client.post("/customers/bulk", json={"items": items})
    assert resp.status_code == 413 and resp.json["error"]["field"] == "items"
    assert client.get("/customers").json["total"] == 0
    assert client.post("/customers/bulk", json={"items": items[:50]}).json["created"] == 50


def test_body_over_max_content_length_is_413_json(tmp_path: Path) -> None:
    small = create_app(make_config(tmp_path, MAX_CONTENT_LENGTH=1000)).test_client()
    resp = small.post("/customers", data=json.dumps({"name": "x" * 2000}), content_type="application/json")
    assert resp.status_code == 413 and resp.json["error"]["status"] == 413


def test_list_paginates_with_total_and_stable_order(client: FlaskClient) -> None:
    client.post("/customers/bulk", json={"items": [{"id": i} for i in range(1, 26)]})
    first = client.get("/customers?limit=10&offset=0").json
    last = client.get("/customers?limit=10&offset=20").json
    assert first["total"] == 25 and [c["id"] for c in first["items"]] == list(range(1, 11))
    assert [c["id"] for c in last["items"]] == list(range(21, 26))
    assert client.get("/customers?limit=1001").status_code == 422


def test_interactions_filter_by_customer_and_require_existing_references(client: FlaskClient) -> None:
    add_catalogue(client)
    mine = client.get("/interactions?customer_id=3&limit=100").json
    assert mine["total"] == 4 and {i["customer_id"] for i in mine["items"]} == {3}
    bad = client.post("/interactions", json={"customer_id": 99, "product_id": 1, "event_type": "view"})
    assert bad.status_code == 409 and bad.json["error"]["field"] == "customer_id"
    bulk = client.post("/interactions/bulk", json={"items": [
        {"customer_id": 1, "product_id": 1, "event_type": "view"},
        {"customer_id": 1, "product_id": 404, "event_type": "view"}]})
    assert bulk.status_code == 409 and bulk.json["error"]["field"] == "items.1.product_id"


def test_interaction_patch_changes_event_type(client: FlaskClient) -> None:
    add_catalogue(client)
    iid = client.get("/interactions?limit=1").json["items"][0]["id"]
    resp = client.patch(f"/interactions/{iid}", json={"event_type": "cart"})
    assert resp.status_code == 200 and resp.json["event_type"] == "cart"


MALFORMED = [
    # (path, raw body, content type, status, field)
    ("/customers", "{not json", "application/json", 400, None),
    ("/customers", "", "application/json", 400, None),
    ("/customers", '{"name": "x"}', "text/plain", 415, None),
    ("/customers", '{"name": 5}', "application/json", 422, "name"),
    ("/customers", '{"nickname": "x"}', "application/json", 422, "nickname"),
    ("/customers", '{"id": -3}', "application/json", 422, "id"),
    ("/customers", '{"id": "7"}', "application/json", 422, "id"),
    ("/customers", "[1, 2]", "application/json", 422, None),
    ("/customers/bulk", '{"items": []}', "application/json", 422, "items"),
    ("/customers/bulk", '{"items": [{"email": 1}]}', "application/json", 422, "items.0.email"),
    ("/products", '{"price": -1}', "application/json", 422, "price"),
    ("/products", '{"price": "10"}', "application/json", 422, "price"),
    ("/products", '{"price": NaN}', "application/json", 422, "price"),
    ("/products", '{"available": "yes"}', "application/json", 422, "available"),
    ("/products", '{"category_id": 1.5}', "application/json", 422, "category_id"),
    ("/products/bulk", '{"items": [{"price": 1}, {"price": -2}]}', "application/json", 422, "items.1.price"),
    ("/products/bulk", '{"things": []}', "application/json", 422, "items"),
    ("/interactions", '{"customer_id": 1, "product_id": 1}', "application/json", 422, "event_type"),
    ("/interactions", '{"customer_id": 1, "product_id": 1, "event_type": "like"}', "application/json", 422,
     "event_type"),
    ("/interactions", '{"customer_id": 1, "product_id": 1, "event_type": "view", "event_time": "yesterday"}',
     "application/json", 422, "event_time"),
    ("/interactions", '{"product_id": 1, "event_type": "view"}', "application/json", 422, "customer_id"),
]


@pytest.mark.parametrize(("path", "body", "ctype", "status", "field"), MALFORMED)
def test_malformed_bodies_are_rejected_naming_the_field(client: FlaskClient, path: str, body: str, ctype: str,
                                                        status: int, field: str | None) -> None:
    resp = client.post(path, data=body, content_type=ctype)
    assert resp.status_code == status
    error = resp.json["error"]
    assert error["status"] == status and error["title"] and error["detail"]
    if field is not None:
        assert error["field"] == field


@pytest.mark.parametrize("query", ["k=0", "k=101", "k=ten", "min_price=-1", "max_price=abc",
                                   "exclude_purchased=maybe", "category_id=-2"])
def test_bad_recommendation_queries_name_the_parameter(client: FlaskClient, query: str) -> None:
    resp = client.get(f"/customers/1/recommendations?{query}")
    assert resp.status_code == 422
    assert resp.json["error"]["field"] == query.split("=")[0]


def test_patch_to_negative_price_is_422_and_leaves_the_row(client: FlaskClient) -> None:
    pid = client.post("/products", json={"price": 3.0}).json["id"]
    resp = client.patch(f"/products/{pid}", json={"price": -0.01})
    assert resp.status_code == 422 and resp.json["error"]["field"] == "price"
    assert client.get(f"/products/{pid}").json["price"] == 3.0


def test_unknown_route_and_method_are_json_problems(client: FlaskClient) -> None:
    assert client.get("/nope").json["error"]["status"] == 404
    resp = client.delete("/customers")
    assert resp.status_code == 405 and "POST" in resp.headers["Allow"]
    assert client.get("/customers/99999999999999999999").status_code == 404
