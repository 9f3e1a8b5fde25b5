"""API keys with roles (read < ingest < admin): hashing, parsing, creation and the per-request check."""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask, current_app, g, request
from sqlalchemy import select

from api.errors import Forbidden, InvalidRequest, Unauthorized
from api.store import ApiKey, Store

log = logging.getLogger(__name__)

ROLES = ("read", "ingest", "admin")
RANK = {role: i for i, role in enumerate(ROLES)}
HEADER = "X-API-Key"
PUBLIC_ENDPOINTS = {"health.health", "openapi.spec", "static"}
# Stored keys (and their absence) are looked up once per this many seconds per worker, not per request:
# a key created or deleted with the CLI takes effect within it.
KEY_CACHE_TTL_S = 5.0
# Writes need ingest; deletes change the catalogue irreversibly, so they need admin.
METHOD_ROLE = {"GET": "read", "HEAD": "read", "OPTIONS": "read", "POST": "ingest", "PUT": "ingest",
               "PATCH": "ingest", "DELETE": "admin"}


@functools.lru_cache(maxsize=4096)
def hash_key(key: str, pepper: str) -> str:
    """HMAC-SHA256 of the key under a server-side pepper; keys are random, so no per-key salt is needed.

    Memoised: a worker sees the same few keys on every request (auth and the rate-limit bucket).
    """
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class KeyRing:
    """Hashes of the keys given in configuration, mapped to their roles."""

    hashes: dict[str, str]
    pepper: str

    @classmethod
    def parse(cls, spec: str, pepper: str) -> "KeyRing":
        """Parse "key:role,key:role"; a bad entry raises ValueError (showing only the key's first characters)."""
        hashes: dict[str, str] = {}
        for entry in filter(None, (e.strip() for e in spec.split(","))):
            key, sep, role = entry.rpartition(":")
            if not sep or not key or role not in RANK:
                raise ValueError(f"api_keys entry {entry[:4]}...: expected 'key:role' with role in {ROLES}")
            hashes[hash_key(key, pepper)] = role
        return cls(hashes, pepper)


def create_key(store: Store, role: str, pepper: str) -> str:
    """Create a random key with `role`, store its hash, and return the key (shown once)."""
    if role not in RANK:
        raise ValueError(f"role must be one of {ROLES}, got {role!r}")
    key = secrets.token_urlsafe(32)
    with store.session() as session:
        session.add(ApiKey(key_hash=hash_key(key, pepper), role=role))
    return key


class StoredKeys:
    """TTL cache over the api_keys table: role per key hash (misses too) and whether any key exists."""

    def __init__(self, store: Store, ttl_s: float = KEY_CACHE_TTL_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.clock = clock
        self._roles: dict[str, tuple[float, str | None]] = {}
        self._any: tuple[float, bool] | None = None
        self._lock = threading.Lock()

    def role(self, key_hash: str) -> str | None:
        now = self.clock()
        hit = self._roles.get(key_hash)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        with self.store.engine.connect() as conn:
            role = conn.execute(select(ApiKey.role).where(ApiKey.key_hash == key_hash)).scalar()
        with self._lock:
            if len(self._roles) > 10_000:  # unknown keys must not grow the cache without bound
                self._roles.clear()
            self._roles[key_hash] = (now, role)
        return role

    def any(self) -> bool:
        now = self.clock()
        if self._any is not None and now - self._any[0] < self.ttl_s:
            return self._any[1]
        with self.store.engine.connect() as conn:
            found = conn.execute(select(ApiKey.key_hash).limit(1)).scalar() is not None
        self._any = (now, found)
        return found


def authenticate() -> None:
    """before_request hook: no keys configured anywhere -> auth off; else require a key of enough role."""
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return
    ring: KeyRing = current_app.extensions["recsys_keyring"]
    stored: StoredKeys = current_app.extensions["recsys_stored_keys"]
    if not ring.hashes and not stored.any():
        g.role = "admin"
        return
    presented = request.headers.get(HEADER)
    if not presented:
        raise Unauthorized(f"missing {HEADER} header", field=HEADER)
    digest = hash_key(presented, ring.pepper)
    role = ring.hashes.get(digest) or stored.role(digest)
    if role is None:
        raise Unauthorized(f"unknown API key in {HEADER}", field=HEADER)
    needed = METHOD_ROLE.get(request.method)
    if needed is None:
        raise InvalidRequest(f"method {request.method} not supported")
    if RANK[role] < RANK[needed]:
        raise Forbidden(f"key role {role!r} cannot {request.method}; needs {needed!r} or higher", field=HEADER)
    g.role = role


def rate_limit_key() -> str:
    """Per-key buckets (the hash, never the raw key); anonymous callers share a bucket per address."""
    presented = request.headers.get(HEADER)
    if presented:
        ring: KeyRing = current_app.extensions["recsys_keyring"]
        return "key:" + hash_key(presented, ring.pepper)[:32]
    return "ip:" + (request.remote_addr or "unknown")


def init_app(app: Flask, ring: KeyRing, cache_ttl_s: float = KEY_CACHE_TTL_S) -> None:
    app.extensions["recsys_keyring"] = ring
    app.extensions["recsys_stored_keys"] = StoredKeys(app.extensions["recsys_store"], cache_ttl_s)
    app.before_request(authenticate)
