"""Idempotency-Key on POST: retries get the first answer and write nothing twice, on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from api import create_app
from tests.test_api_support import make_config, pg_available, store_config  # noqa: F401  (fixtures)

KEYS = "i-key-one:ingest,i-key-two:ingest"


@pytest.fixture
def both(store_config: dict) -> Iterator[FlaskClient]:
    app = create_app({**store_config, "TESTING": False})
    client = app.test_client()
    yield client
    app.extensions["recsys_store"].dispose()


def _key() -> dict[str, str]:
    return {"Idempotency-Key": str(uuid.uuid4())}


CREATES = [
    ("/customers", {"name": "Ada"}, "/customers"),
    ("/products", {"name": "lamp", "price": 3.5}, "/products"),
    ("/customers/bulk", {"items": [{"name": "a"}, {"name": "b"}]}, "/customers"),
    ("/interactions", {"customer_id": 1, "product_id": 1, "event_type": "view"}, "/interactions"),
    ("/interactions/bulk", {"items": [{"customer_id": 1, "product_id": 1, "event_type": "cart"}]}, "/interactions"),
]


@pytest.mark.parametrize(("path", "body", "listing"), CREATES)
def test_a_retry_with_the_same_key_returns_the_first_answer_and_writes_once(
        both: FlaskClient, path: str, body: dict, listing: str) -> None:
    both.post("/customers", json={"id": 1})
    both.post("/products", json={"id": 1})
    before = both.get(listing).json["total"]
    headers = _key()
    first = both.post(path, json=body, headers=headers)
    retry = both.post(path, json=body, headers=headers)
    assert first.status_code == 201
    assert (retry.status_code, retry.json) == (first.status_code, first.json)
    assert retry.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    added = len(body.get("items", [body]))
    assert both.get(listing).json["total"] == before + added
    # Without a key, the same body is a new request.
    assert both.post(path, json=body).status_code == 201
    assert both.get(listing).json["total"] == before + 2 * added


def test_the_same_key_with_another_body_is_422(both: FlaskClient) -> None:
    headers = _key()
    assert both.post("/customers", json={"name": "Ada"}, headers=headers).status_code == 201
    other = both.post("/customers", json={"name": "Grace"}, headers=headers)
    assert other.status_code == 422 and other.json["error"]["field"] == "Idempotency-Key"
    elsewhere = both.post("/products", json={"name": "Ada"}, headers=headers)
    assert elsewhere.status_code == 422
    assert both.get("/customers").json["total"] == 1 and both.get("/products").json["total"] == 0
    # Key order and 3 vs 3.0 do not make a different request.
    headers = _key()
    assert both.post("/products", data='{"price": 3, "name": "x"}', content_type="application/json",
                     headers=headers).status_code == 201
    assert both.post("/products", data='{"name": "x", "price": 3.0}', content_type="application/json",
                     headers=headers).headers.get("Idempotent-Replayed") == "true"


def test_a_failed_request_records_nothing(both: FlaskClient) -> None:
    headers = _key()
    event = {"customer_id": 7, "product_id": 7, "event_type": "view"}
    assert both.post("/interactions", json=event, headers=headers).status_code == 409
    both.post("/customers", json={"id": 7})
    both.post("/products", json={"id": 7})
    assert both.post("/interactions", json=event, headers=headers).status_code == 201


def test_keys_are_scoped_per_api_key(store_config: dict) -> None:
    app = create_app({**store_config, "API_KEYS": KEYS})
    client = app.test_client()
    shared = _key()["Idempotency-Key"]
    one = client.post("/customers", json={"name": "one"}, headers={"X-API-Key": "i-key-one", "Idempotency-Key": shared})
    two = client.post("/customers", json={"name": "one"}, headers={"X-API-Key": "i-key-two", "Idempotency-Key": shared})
    assert one.status_code == two.status_code == 201 and one.json["id"] != two.json["id"]
    assert "Idempotent-Replayed" not in two.headers
    app.extensions["recsys_store"].dispose()


@pytest.mark.parametrize("bad", ["", "has space", "x" * 201, "caf\u00e9"])
def test_malformed_keys_are_422_naming_the_header(both: FlaskClient, bad: str) -> None:
    resp = both.post("/customers", json={}, headers={"Idempotency-Key": bad.encode().decode("latin-1")})
    assert resp.status_code == 422 and resp.json["error"]["field"] == "Idempotency-Key"
    assert both.get("/customers").json["total"] == 0


def test_concurrent_retries_with_one_key_write_once(tmp_path: Path) -> None:
    app = create_app(make_config(tmp_path))
    headers = _key()
    answers: list[tuple[int, dict]] = []

    def send() -> None:
        resp = app.test_client().post("/customers/bulk", json={"items": [{"name": "a"}] * 5}, headers=headers)
        answers.append((resp.status_code, resp.json))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(answers) == 6 and all(answer == answers[0] for answer in answers) and answers[0][0] == 201
    assert app.test_client().get("/customers").json["total"] == 5
    app.extensions["recsys_store"].dispose()
