"""Malformed and out-of-range input is refused with a 4xx naming the field, the same on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api import create_app
from api.schemas import MAX_ID, MIN_ID
from tests.test_api_support import make_config, pg_available, store_config  # noqa: F401  (fixtures)


@pytest.fixture
def strict_app(tmp_path: Path) -> Iterator[Flask]:
    """An app that answers a bug with the 500 a client would see (no exception propagated to the test)."""
    app = create_app(make_config(tmp_path, TESTING=False))
    yield app
    app.extensions["recsys_store"].dispose()


@pytest.fixture
def strict(strict_app: Flask) -> FlaskClient:
    return strict_app.test_client()


@pytest.fixture
def both(store_config: dict) -> Iterator[FlaskClient]:
    """A client of an app on SQLite or on PostgreSQL (the test runs once per backend)."""
    app = create_app({**store_config, "TESTING": False})
    client = app.test_client()
    assert client.post("/customers", json={"id": 1}).status_code == 201
    assert client.post("/products", json={"id": 1, "price": 1.0}).status_code == 201
    yield client
    app.extensions["recsys_store"].dispose()


@pytest.mark.parametrize("path", ["/customers/bulk", "/products/bulk", "/interactions/bulk"])
def test_deeply_nested_json_to_bulk_is_400_not_500(strict: FlaskClient, path: str) -> None:
    deep = '{"items": ' + "[" * 100_000 + "]" * 100_000 + "}"
    resp = strict.post(path, data=deep, content_type="application/json")
    assert resp.status_code == 400 and resp.json["error"]["status"] == 400


@pytest.mark.parametrize("path", [
    "/customers/9223372036854775808/recommendations",
    "/customers/9223372036854775808",
    "/products/99999999999999999999999/similar",
    "/interactions/9223372036854775808",
    "/customers/0/recommendations",
    "/customers/\uff19/recommendations",  # a full-width 9
    "/products/\u0661\u0662",  # Arabic-Indic 12
])
def test_ids_outside_ascii_bigint_range_are_404_not_500(strict: FlaskClient, path: str) -> None:
    resp = strict.get(path)
    assert resp.status_code == 404 and resp.json["error"]["status"] == 404


def test_out_of_range_id_is_404_for_every_method(strict: FlaskClient) -> None:
    for method in ("get", "put", "patch", "delete"):
        resp = getattr(strict, method)("/customers/9223372036854775808", json={})
        assert resp.status_code == 404 and resp.json["error"]["field"] == "id"


def test_largest_id_is_served(strict: FlaskClient) -> None:
    assert strict.post("/customers", json={"id": MAX_ID}).status_code == 201
    assert strict.get(f"/customers/{MAX_ID}").json["id"] == MAX_ID
    assert strict.get(f"/customers/{MAX_ID}/recommendations").status_code == 200


def test_spec_states_the_bounds_of_path_ids(strict: FlaskClient) -> None:
    spec = strict.get("/openapi.json").json
    ids = [param["schema"] for ops in spec["paths"].values() for param in ops.get("parameters", [])
           if param["name"] == "ident"]
    assert ids and all(s == {"type": "integer", "minimum": MIN_ID, "maximum": MAX_ID} for s in ids)
