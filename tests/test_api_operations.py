"""Running the API: a cheap /health, honest rate-limit headers, email checks, database URLs, worker warm-up."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

import api.queries
from api import create_app, warm_up
from api.store import Store
from tests.test_api_support import (PG_URL, PriceRanker, add_catalogue, app, client, make_config,  # noqa: F401
                                    pg_available)


class CountingRanker(PriceRanker):
    """A ranker that can report readiness, like Triton's, and counts how often it is asked."""

    def __init__(self) -> None:
        super().__init__()
        self.readiness_checks = 0

    def is_ready(self) -> bool:
        self.readiness_checks += 1
        return True


def test_health_checks_the_database_and_ranker_once_per_cache_period(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ranker = CountingRanker()
    app = create_app(make_config(tmp_path, HEALTH_CACHE_S=60.0), ranker=ranker)
    store = app.extensions["recsys_store"]
    pings: list[int] = []
    real_ping = store.ping
    monkeypatch.setattr(store, "ping", lambda: (pings.append(1), real_ping())[1])
    client = app.test_client()
    now = [1000.0]
    app.extensions["recsys_health"].clock = lambda: now[0]
    answers = [client.get("/health") for _ in range(50)]
    assert all(a.status_code == 200 and a.json["ranker"] == "ready" for a in answers)
    assert (len(pings), ranker.readiness_checks) == (1, 1)
    now[0] += 60.0  # the cached answer has expired
    assert client.get("/health").status_code == 200
    assert (len(pings), ranker.readiness_checks) == (2, 2)


def test_retry_after_is_sent_only_with_429(tmp_path: Path) -> None:
    client = create_app(make_config(tmp_path, RATELIMIT_APPLICATION="2 per minute")).test_client()
    ok = client.get("/customers")
    assert ok.status_code == 200 and "Retry-After" not in ok.headers
    assert "X-RateLimit-Remaining" in ok.headers
    client.get("/customers")
    refused = client.get("/customers")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0


@pytest.mark.parametrize("method", ["post", "put", "patch"])
def test_emails_are_validated_on_every_write(client: FlaskClient, method: str) -> None:
    assert client.post("/customers", json={"id": 1, "email": "ada@example.com"}).status_code == 201
    path = "/customers" if method == "post" else "/customers/1"
    for bad in ("not-an-email", "ada@", "@example.com", "a b@example.com"):
        resp = getattr(client, method)(path, json={"email": bad})
        assert resp.status_code == 422 and resp.json["error"]["field"] == "email", bad
    assert client.get("/customers/1").json["email"] == "ada@example.com"
    good = getattr(client, method)(path, json={"email": "grace@hopper.org"})
    assert good.status_code in (200, 201) and good.json["email"] == "grace@hopper.org"


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_plain_postgresql_urls_start_the_api(tmp_path: Path, pg_available: bool, scheme: str) -> None:
    if not pg_available:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    url = PG_URL.replace("postgresql+psycopg2://", f"{scheme}://")
    schema = f"recsys_api_test_{uuid.uuid4().hex[:12]}"
    app = create_app(make_config(tmp_path, DATABASE_URL=url, DATABASE_SCHEMA=schema))
    try:
        client = app.test_client()
        assert client.get("/health").json["database"] == "ok"
        assert client.post("/customers", json={"id": 1}).status_code == 201
    finally:
        app.extensions["recsys_store"].dispose()
        store = Store(PG_URL, schema=schema)
        store.drop_all()
        store.dispose()


def test_warm_up_does_the_first_requests_work_before_it_arrives(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ranker = PriceRanker()
    app = create_app(make_config(tmp_path), ranker=ranker)
    add_catalogue(app.test_client())
    app.extensions["recsys_catalogue"].invalidate()  # as in a freshly started worker
    loads: list[int] = []
    real_load = api.queries.product_rows
    monkeypatch.setattr(api.queries, "product_rows", lambda conn: (loads.append(1), real_load(conn))[1])
    warm_up(app)
    assert len(loads) == 1 and len(ranker.calls) == 1  # catalogue loaded, the ranker has ranked once
    first = app.test_client().get("/customers/2/recommendations?k=3")
    assert first.status_code == 200 and first.json["ranker"] == "triton"
    assert len(loads) == 1  # the first real request found the catalogue loaded


def test_warm_up_never_stops_a_worker(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("catalogue unavailable")

    monkeypatch.setattr(app.extensions["recsys_recommender"], "popular", broken)
    warm_up(app)  # logs, does not raise
