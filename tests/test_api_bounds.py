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


def _stored_times(app: Flask) -> list[datetime]:
    from sqlalchemy import select

    from api.store import Interaction

    with app.extensions["recsys_store"].engine.connect() as conn:
        return list(conn.execute(select(Interaction.event_time).order_by(Interaction.id)).scalars())


def test_event_times_are_stored_and_returned_in_utc_on_each_database(both: FlaskClient, tmp_path: Path) -> None:
    from api.seed import export_interactions

    created = both.post("/interactions", json={"customer_id": 1, "product_id": 1, "event_type": "view",
                                               "event_time": "2026-01-01T12:00:00+02:00"})
    assert created.status_code == 201 and created.json["event_time"] == "2026-01-01T10:00:00Z"
    iid = created.json["id"]
    assert both.get(f"/interactions/{iid}").json["event_time"] == "2026-01-01T10:00:00Z"
    bulk = both.post("/interactions/bulk", json={"items": [{"customer_id": 1, "product_id": 1, "event_type": "cart",
                                                            "event_time": "2026-01-01T05:00:00-05:00"}]})
    assert bulk.status_code == 201
    patched = both.patch(f"/interactions/{iid}", json={"event_time": "2026-01-01T12:00:00-05:00"})
    assert patched.status_code == 200 and patched.json["event_time"] == "2026-01-01T17:00:00Z"
    assert both.get(f"/interactions/{iid}").json["event_time"] == "2026-01-01T17:00:00Z"
    assert [i["event_time"] for i in both.get("/interactions").json["items"]] == [
        "2026-01-01T17:00:00Z", "2026-01-01T10:00:00Z"]
    app: Flask = both.application
    assert _stored_times(app) == [datetime(2026, 1, 1, 17, tzinfo=timezone.utc),
                                  datetime(2026, 1, 1, 10, tzinfo=timezone.utc)]
    # The export reads the raw stored text (SQLite) or timestamptz (PostgreSQL): the same instants.
    out = tmp_path / "export.csv"
    export_interactions(app.extensions["recsys_store"], out)
    import pandas as pd

    exported = pd.read_csv(out, parse_dates=["event_time"]).event_time.sort_values().tolist()
    assert [t.isoformat() for t in exported] == ["2026-01-01T10:00:00+00:00", "2026-01-01T17:00:00+00:00"]
    assert both.get("/customers/1").json["created_at"].endswith("Z")


@pytest.mark.parametrize("when", ["0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z", "9999-12-31T23:59:59-14:00",
                                  "DAY_AFTER_TOMORROW"])
def test_event_times_outside_epoch_to_now_are_422_naming_the_field(both: FlaskClient, tmp_path: Path,
                                                                   when: str) -> None:
    from api.seed import export_interactions

    if when == "DAY_AFTER_TOMORROW":
        when = (datetime.now(timezone.utc) + timedelta(days=2)).isoformat()
    event = {"customer_id": 1, "product_id": 1, "event_type": "view", "event_time": when}
    one = both.post("/interactions", json=event)
    assert one.status_code == 422 and one.json["error"]["field"] == "event_time"
    many = both.post("/interactions/bulk", json={"items": [{**event, "event_time": None}, event]})
    assert many.status_code == 422 and many.json["error"]["field"] == "items.1.event_time"
    iid = both.post("/interactions", json={**event, "event_time": "1970-01-01T00:00:00Z"}).json["id"]
    for method in ("patch", "put"):
        changed = getattr(both, method)(f"/interactions/{iid}", json={"event_time": when})
        assert changed.status_code == 422 and changed.json["error"]["field"] == "event_time"
    # Nothing unreadable got in: reads, list pages and the export still work.
    assert both.get(f"/interactions/{iid}").json["event_time"] == "1970-01-01T00:00:00Z"
    assert both.get("/interactions").json["total"] == 1
    assert export_interactions(both.application.extensions["recsys_store"], tmp_path / "out.parquet") == 1


def test_event_time_clock_skew_is_configurable(tmp_path: Path) -> None:
    soon = (datetime.now(timezone.utc) + timedelta(minutes=30)).isoformat()
    for skew_s, status in ((60.0, 422), (3600.0, 201)):
        app = create_app(make_config(tmp_path / str(skew_s), EVENT_TIME_SKEW_S=skew_s))
        client = app.test_client()
        client.post("/customers", json={"id": 1})
        client.post("/products", json={"id": 1})
        resp = client.post("/interactions", json={"customer_id": 1, "product_id": 1, "event_type": "view",
                                                  "event_time": soon})
        assert resp.status_code == status
        app.extensions["recsys_store"].dispose()


@pytest.mark.parametrize("bad", ["a\x00b", "tab\there", "line\n", "bell\x07", "del\x7f", "c1\x85"])
def test_control_characters_in_strings_are_422_naming_the_field_on_each_database(both: FlaskClient,
                                                                                 bad: str) -> None:
    attempts = [
        ("post", "/customers", {"id": 2, "name": bad}, "name"),
        ("patch", "/customers/1", {"email": bad}, "email"),
        ("put", "/products/1", {"brand": bad}, "brand"),
        ("post", "/products/bulk", {"items": [{"id": 3}, {"id": 4, "category_code": bad}]}, "items.1.category_code"),
        ("post", "/interactions", {"customer_id": 1, "product_id": 1, "event_type": "view", "session": bad},
         "session"),
    ]
    for method, path, body, field in attempts:
        resp = getattr(both, method)(path, json=body)
        assert (resp.status_code, resp.json["error"]["field"]) == (422, field), (path, resp.json)
    assert both.get("/customers").json["total"] == 1 and both.get("/products").json["total"] == 1
    assert both.get("/interactions").json["total"] == 0
    assert both.post("/customers", json={"id": 2, "name": "Zoë 東京 \u200d"}).status_code == 201
