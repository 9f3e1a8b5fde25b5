"""Fixtures and helpers shared by the API tests: apps on a temporary SQLite store, test recommenders, a catalogue."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, text

from api import create_app
from api.store import Store
from tests.recommenders import TableRecommender

PG_URL = "postgresql+psycopg2://postgres@127.0.0.1:5432/test"
REDIS_URL = "redis://127.0.0.1:6379"


def make_config(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    """Config that touches nothing outside tmp_path: SQLite file, memory rate limits, auth off."""
    config: dict[str, Any] = {
        "TESTING": True,
        "DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}",
        "DATABASE_SCHEMA": None,
        "RATELIMIT_STORAGE_URI": "memory://",
        "RATELIMIT_APPLICATION": "10000 per minute",
        "RATELIMIT_KEY_PREFIX": f"recsys-test-{uuid.uuid4().hex}",
        "API_KEYS": "",
        "API_KEY_PEPPER": "test-pepper",
        "SERVING_DIR": str(tmp_path / "serving"),
        "TRITON_URL": "127.0.0.1:1",
        "BULK_LIMIT": 50,
    }
    config.update(overrides)
    return config


def _postgres_reachable() -> bool:
    try:
        with create_engine(PG_URL, connect_args={"connect_timeout": 3}).connect() as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def pg_available() -> bool:
    return _postgres_reachable()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_config(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict]:
    """App config on SQLite, or on the local PostgreSQL in a throw-away schema dropped afterwards."""
    if request.param == "sqlite":
        yield make_config(tmp_path)
        return
    if not request.getfixturevalue("pg_available"):
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    schema = f"recsys_api_test_{uuid.uuid4().hex[:12]}"
    config = make_config(tmp_path, DATABASE_URL=PG_URL, DATABASE_SCHEMA=schema)
    try:
        yield config
    finally:
        store = Store(PG_URL, schema=schema)
        store.drop_all()
        store.dispose()


# add_catalogue's products: category 1: products 1-4 (prices 10, 20, 30, 40); category 2: products 5-8
# (5, 15, 25, 35); category 3: products 9-10 (50, 60), product 10 unavailable.
PRODUCTS = ([{"id": i, "name": f"p{i}", "category_id": 1, "brand": "a", "price": 10.0 * i} for i in range(1, 5)]
            + [{"id": i, "name": f"p{i}", "category_id": 2, "brand": "b", "price": 10.0 * (i - 4) - 5}
               for i in range(5, 9)]
            + [{"id": 9, "category_id": 3, "price": 50.0},
               {"id": 10, "category_id": 3, "price": 60.0, "available": False}])


class PriceRanker(TableRecommender):
    """Deterministic served recommender over add_catalogue's products: cheaper products score higher;
    records the events it was given per request."""

    def __init__(self) -> None:
        super().__init__([p["id"] for p in PRODUCTS])
        self.prices = np.array([p["price"] for p in PRODUCTS], dtype=np.float64)
        self.calls: list[list[tuple[int, str]]] = []

    def scores(self, product_ids: np.ndarray, event_types: np.ndarray) -> np.ndarray:
        self.calls.append(list(zip(product_ids.tolist(), event_types.tolist())))
        return 1.0 / (1.0 + self.prices)


class DownRanker(TableRecommender):
    """A served recommender whose Triton is gone: raises the serving package's RankerUnavailable."""

    def __init__(self) -> None:
        super().__init__([p["id"] for p in PRODUCTS])

    def scores(self, product_ids: np.ndarray, event_types: np.ndarray) -> np.ndarray:
        from serving.errors import RankerUnavailable

        raise RankerUnavailable("127.0.0.1:1", "dlrm", "connection refused")


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    application = create_app(make_config(tmp_path))
    yield application
    application.extensions["recsys_store"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def add_catalogue(client: FlaskClient, headers: dict[str, str] | None = None) -> None:
    """PRODUCTS (three categories), four customers and sessions with known co-occurrence."""
    assert client.post("/products/bulk", json={"items": PRODUCTS}, headers=headers).status_code == 201
    customers = [{"id": i, "name": f"c{i}"} for i in range(1, 5)]
    assert client.post("/customers/bulk", json={"items": customers}, headers=headers).status_code == 201
    events = [
        (1, 1, "purchase", "s1"), (1, 2, "view", "s1"), (1, 5, "view", "s2"),
        (2, 1, "view", "s3"), (2, 3, "purchase", "s3"), (2, 6, "cart", "s3"),
        (3, 6, "purchase", "s4"), (3, 7, "view", "s4"), (3, 10, "purchase", "s4"), (3, 9, "view", "s4"),
    ]
    items = [{"customer_id": c, "product_id": p, "event_type": e, "session": s} for c, p, e, s in events]
    assert client.post("/interactions/bulk", json={"items": items}, headers=headers).status_code == 201
