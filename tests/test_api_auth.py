"""API keys and roles (auth off when none are configured) and per-key rate limits on memory and Redis."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select

from api import create_app
from api.auth import KeyRing, create_key, hash_key
from api.store import ApiKey
from tests.test_api_support import REDIS_URL, app, client, make_config  # noqa: F401

KEYS = "r-key-123:read,i-key-456:ingest,a-key-789:admin"


@pytest.fixture
def secured(tmp_path: Path) -> FlaskClient:
    return create_app(make_config(tmp_path, API_KEYS=KEYS)).test_client()


def test_auth_is_off_when_no_keys_are_configured(client: FlaskClient) -> None:
    assert client.post("/customers", json={"id": 1}).status_code == 201
    assert client.delete("/customers/1").status_code == 204


def test_missing_or_unknown_key_is_401_naming_the_header(secured: FlaskClient) -> None:
    for headers in ({}, {"X-API-Key": "guess"}):
        resp = secured.get("/customers", headers=headers)
        assert resp.status_code == 401 and resp.json["error"]["field"] == "X-API-Key"


def test_health_and_spec_are_public(secured: FlaskClient) -> None:
    assert secured.get("/health").status_code == 200
    assert secured.get("/openapi.json").status_code == 200


@pytest.mark.parametrize(("key", "method", "path", "body", "status"), [
    ("r-key-123", "get", "/customers", None, 200),
    ("r-key-123", "post", "/customers", {"id": 5}, 403),
    ("i-key-456", "post", "/customers", {"id": 5}, 201),
    ("i-key-456", "delete", "/customers/1", None, 403),
    ("a-key-789", "delete", "/customers/1", None, 204),
    ("a-key-789", "get", "/customers/1", None, 200),
])
def test_roles_gate_methods(secured: FlaskClient, key: str, method: str, path: str, body: dict | None,
                            status: int) -> None:
    secured.post("/customers", json={"id": 1}, headers={"X-API-Key": "a-key-789"})
    resp = getattr(secured, method)(path, json=body, headers={"X-API-Key": key})
    assert resp.status_code == status
    if status == 403:
        assert "needs" in resp.json["error"]["detail"]


def test_created_keys_are_stored_hashed_and_turn_auth_on(app: Flask) -> None:
    client = app.test_client()
    store = app.extensions["recsys_store"]
    key = create_key(store, "ingest", "test-pepper")
    with store.session() as session:
        stored = session.scalars(select(ApiKey.key_hash)).all()
    assert stored == [hash_key(key, "test-pepper")] and key not in stored
    assert client.get("/customers").status_code == 401
    assert client.post("/customers", json={}, headers={"X-API-Key": key}).status_code == 201
    assert client.delete("/customers/1", headers={"X-API-Key": key}).status_code == 403


def test_key_spec_with_unknown_role_is_rejected() -> None:
    with pytest.raises(ValueError, match="role"):
        KeyRing.parse("k:superuser", "p")
    assert len(KeyRing.parse("a:read, b:admin", "p").hashes) == 2


def test_rate_limit_is_per_key_and_answers_429_json(tmp_path: Path) -> None:
    c = create_app(make_config(tmp_path, API_KEYS=KEYS, RATELIMIT_APPLICATION="3 per minute")).test_client()
    for _ in range(3):
        assert c.get("/customers", headers={"X-API-Key": "r-key-123"}).status_code == 200
    limited = c.get("/customers", headers={"X-API-Key": "r-key-123"})
    assert limited.status_code == 429 and limited.json["error"]["status"] == 429
    assert "Retry-After" in limited.headers
    # Another key has its own bucket.
    assert c.get("/customers", headers={"X-API-Key": "a-key-789"}).status_code == 200


def test_memory_limits_start_no_timer_threads_and_drop_expired_counters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading
    import time

    from api.ratelimit import InlineExpiryMemoryStorage

    app = create_app(make_config(tmp_path, API_KEYS=KEYS, RATELIMIT_APPLICATION="1000 per minute"))
    storage = app.extensions["recsys_limiter"].storage
    assert isinstance(storage, InlineExpiryMemoryStorage)
    c = app.test_client()
    started: list[threading.Thread] = []
    real_start = threading.Thread.start
    monkeypatch.setattr(threading.Thread, "start", lambda self: (started.append(self), real_start(self))[1])
    for _ in range(50):  # limits' own MemoryStorage starts a timer thread every 10 ms of hits
        assert c.get("/customers", headers={"X-API-Key": "r-key-123"}).status_code == 200
    assert c.get("/customers", headers={"X-API-Key": "a-key-789"}).status_code == 200
    assert started == []
    assert len(storage.storage) == 2  # one counter per key
    later = time.time() + 120  # both one-minute windows are over
    monkeypatch.setattr(time, "time", lambda: later)
    assert c.get("/customers", headers={"X-API-Key": "r-key-123"}).status_code == 200
    assert list(storage.storage.values()) == [1]  # the idle key's counter was swept, the other restarted


def test_rate_limit_is_shared_through_redis(tmp_path: Path) -> None:
    redis = pytest.importorskip("redis")
    conn = redis.Redis.from_url(REDIS_URL)
    try:
        conn.ping()
    except redis.exceptions.ConnectionError:
        pytest.skip("Redis not reachable at " + REDIS_URL)
    prefix = f"recsys-test-{uuid.uuid4().hex}"
    config = make_config(tmp_path, RATELIMIT_STORAGE_URI=REDIS_URL, RATELIMIT_APPLICATION="2 per minute",
                         RATELIMIT_KEY_PREFIX=prefix)
    try:
        # Two app instances (think: two gunicorn workers) draw on one Redis bucket.
        first = create_app(config).test_client()
        second = create_app(config).test_client()
        assert first.get("/customers").status_code == 200
        assert second.get("/customers").status_code == 200
        assert first.get("/customers").status_code == 429
        assert any(conn.scan_iter(match=f"*{prefix}*"))
    finally:
        for key in conn.scan_iter(match=f"*{prefix}*"):
            conn.delete(key)


def _limited(tmp_path: Path, **overrides: object) -> FlaskClient:
    config = {"API_KEYS": KEYS, "RATELIMIT_APPLICATION": "3 per minute", "AUTH_FAILURE_LIMIT": "1000 per minute",
              **overrides}
    return create_app(make_config(tmp_path, **config)).test_client()


def test_unverified_keys_share_their_address_bucket(tmp_path: Path) -> None:
    c = _limited(tmp_path)
    statuses = [c.get("/customers", headers={"X-API-Key": f"random-{i}"}).status_code for i in range(5)]
    assert statuses == [401, 401, 401, 429, 429]  # a fresh random key is no fresh bucket
    # A verified key has its own bucket, untouched by the address's.
    assert c.get("/customers", headers={"X-API-Key": "r-key-123"}).status_code == 200


def test_with_auth_off_sent_keys_do_not_choose_the_bucket(tmp_path: Path) -> None:
    c = _limited(tmp_path, API_KEYS="")
    statuses = [c.get("/customers", headers={"X-API-Key": f"random-{i}"}).status_code for i in range(5)]
    assert statuses == [200, 200, 200, 429, 429]


def test_a_key_has_one_budget_across_endpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Through the documented setting, as an operator sets it.
    monkeypatch.setenv("RECSYS_RATELIMIT_DEFAULT", "3 per minute")
    config = make_config(tmp_path, API_KEYS=KEYS, AUTH_FAILURE_LIMIT="1000 per minute")
    del config["RATELIMIT_APPLICATION"]
    c = create_app(config).test_client()
    key = {"X-API-Key": "a-key-789"}
    paths = ["/customers", "/products", "/interactions", "/products/popular", "/customers/1/recommendations"]
    assert [c.get(p, headers=key).status_code for p in paths] == [200, 200, 200, 429, 429]
    assert c.post("/customers", json={}, headers=key).status_code == 429
    assert c.get("/health").status_code == 200  # public, outside the budget


def test_failed_authentications_are_limited_per_address(tmp_path: Path) -> None:
    c = _limited(tmp_path, RATELIMIT_APPLICATION="1000 per minute", AUTH_FAILURE_LIMIT="3 per minute")
    here = {"REMOTE_ADDR": "10.0.0.1"}
    guesses = [c.get("/customers", headers={"X-API-Key": f"guess-{i}"}, environ_base=here) for i in range(3)]
    assert [g.status_code for g in guesses] == [401, 401, 401]
    blocked = c.get("/customers", headers={"X-API-Key": "guess-3"}, environ_base=here)
    assert blocked.status_code == 429 and blocked.json["error"]["field"] == "X-API-Key"
    assert 0 < int(blocked.headers["Retry-After"]) <= 61
    assert c.get("/customers", environ_base=here).status_code == 429  # a missing key is a failure too
    # Even a right key from that address waits: a blocked address cannot keep testing guesses.
    assert c.get("/customers", headers={"X-API-Key": "r-key-123"}, environ_base=here).status_code == 429
    elsewhere = {"REMOTE_ADDR": "10.0.0.2"}
    assert c.get("/customers", headers={"X-API-Key": "guess-4"}, environ_base=elsewhere).status_code == 401
    assert c.get("/customers", headers={"X-API-Key": "r-key-123"}, environ_base=elsewhere).status_code == 200


def test_forwarded_addresses_count_only_behind_a_trusted_proxy(tmp_path: Path) -> None:
    def statuses(client: FlaskClient) -> list[int]:
        return [client.get("/customers", headers={"X-Forwarded-For": f"10.1.0.{i}"}).status_code for i in range(5)]

    direct = _limited(tmp_path / "direct", API_KEYS="")
    assert statuses(direct) == [200, 200, 200, 429, 429]  # a forged header picks no fresh bucket
    proxied = _limited(tmp_path / "proxied", API_KEYS="", TRUSTED_PROXIES=1)
    assert statuses(proxied) == [200] * 5  # behind nginx: each client has its own address's bucket


def test_guesses_from_a_blocked_address_cost_no_database_lookup(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    app.config["AUTH_FAILURE_LIMIT"] = "2 per minute"
    create_key(app.extensions["recsys_store"], "read", "test-pepper")  # auth on, through a stored key
    stored = app.extensions["recsys_stored_keys"]
    lookups: list[str] = []
    real_role = stored.role
    monkeypatch.setattr(stored, "role", lambda digest, look_up=True: (
        lookups.append(digest) if look_up else None, real_role(digest, look_up))[1])
    c = app.test_client()
    assert [c.get("/customers", headers={"X-API-Key": f"guess-{i}"}).status_code for i in range(2)] == [401, 401]
    assert len(lookups) == 2
    assert [c.get("/customers", headers={"X-API-Key": f"more-{i}"}).status_code for i in range(20)] == [429] * 20
    assert len(lookups) == 2
