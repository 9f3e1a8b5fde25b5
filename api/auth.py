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
from limits import parse as parse_limit
from sqlalchemy import select

from api.errors import Forbidden, InvalidRequest, TooManyRequests, Unauthorized
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

    def role(self, key_hash: str, look_up: bool = True) -> str | None:
        """The key's role; a hash not cached is looked up in the database unless `look_up` is False."""
        now = self.clock()
        hit = self._roles.get(key_hash)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        if not look_up:
            return None
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


@dataclass(frozen=True)
class Caller:
    """Who sent the request: `role` None for callers without a valid key (or everyone, with auth off)."""

    auth_on: bool
    role: str | None
    key_hash: str | None


def caller() -> Caller:
    """The request's verified identity, resolved once per request (rate limits and auth both ask)."""
    found = g.get("recsys_caller")
    if found is not None:
        return found
    ring: KeyRing = current_app.extensions["recsys_keyring"]
    stored: StoredKeys = current_app.extensions["recsys_stored_keys"]
    presented = request.headers.get(HEADER)
    if not ring.hashes and not stored.any():
        found = Caller(auth_on=False, role=None, key_hash=None)
    elif presented:
        digest = hash_key(presented, ring.pepper)
        role = ring.hashes.get(digest) or stored.role(digest, look_up=False)
        # An address blocked for failed authentications is refused anyway: its guesses cost no query.
        if role is None and _auth_failures_blocked() is None:
            role = stored.role(digest)
        found = Caller(auth_on=True, role=role, key_hash=digest if role else None)
    else:
        found = Caller(auth_on=True, role=None, key_hash=None)
    g.recsys_caller = found
    return found


def _client_address() -> str:
    return request.remote_addr or "unknown"


def _auth_failures_blocked() -> int | None:
    """Seconds until this address may try keys again, or None while it is under AUTH_FAILURE_LIMIT."""
    limiter = current_app.extensions["recsys_limiter"]
    item = parse_limit(current_app.config["AUTH_FAILURE_LIMIT"])
    ids = (current_app.config.get("RATELIMIT_KEY_PREFIX", "recsys-api"), "auth-failures", _client_address())
    if limiter.limiter.test(item, *ids):
        return None
    reset_at = limiter.limiter.get_window_stats(item, *ids).reset_time
    return max(1, int(reset_at - time.time()) + 1)


def _count_auth_failure() -> None:
    limiter = current_app.extensions["recsys_limiter"]
    item = parse_limit(current_app.config["AUTH_FAILURE_LIMIT"])
    limiter.limiter.hit(item, current_app.config.get("RATELIMIT_KEY_PREFIX", "recsys-api"), "auth-failures",
                        _client_address())


def authenticate() -> None:
    """before_request hook: no keys configured anywhere -> auth off; else require a key of enough role.

    Failed attempts are counted per address: past AUTH_FAILURE_LIMIT the address gets 429 for every
    request (valid key or not) until the window ends, so keys cannot be guessed at the request rate.
    """
    if request.endpoint in PUBLIC_ENDPOINTS or request.endpoint is None:
        return
    who = caller()
    if not who.auth_on:
        g.role = "admin"
        return
    # Checked before the key's verdict is used: a blocked address learns nothing about further guesses.
    blocked_s = _auth_failures_blocked()
    if blocked_s is not None:
        raise TooManyRequests(f"too many failed authentications from this address; retry in {blocked_s} s",
                              retry_after_s=blocked_s, field=HEADER)
    if who.role is None:
        _count_auth_failure()
        if not request.headers.get(HEADER):
            raise Unauthorized(f"missing {HEADER} header", field=HEADER)
        raise Unauthorized(f"unknown API key in {HEADER}", field=HEADER)
    needed = METHOD_ROLE.get(request.method)
    if needed is None:
        raise InvalidRequest(f"method {request.method} not supported")
    if RANK[who.role] < RANK[needed]:
        raise Forbidden(f"key role {who.role!r} cannot {request.method}; needs {needed!r} or higher", field=HEADER)
    g.role = who.role


def rate_limit_key() -> str:
    """The bucket of a request: a verified key's (by its hash, never the raw key), else the address's.

    An unverified key must not choose its bucket: random keys would each get a fresh one. With auth off
    every caller is anonymous, so the header is ignored.
    """
    who = caller()
    if who.key_hash is not None:
        return "key:" + who.key_hash[:32]
    return "ip:" + _client_address()


def init_app(app: Flask, ring: KeyRing, cache_ttl_s: float = KEY_CACHE_TTL_S) -> None:
    app.extensions["recsys_keyring"] = ring
    app.extensions["recsys_stored_keys"] = StoredKeys(app.extensions["recsys_store"], cache_ttl_s)
    app.before_request(authenticate)
