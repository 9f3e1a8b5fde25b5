"""Idempotency-Key on POST: a retried create returns the first answer instead of writing a duplicate.

The first successful answer is stored (api.store.IdempotencyRecord) in the same transaction as the rows
it reports, per caller (the verified API key; one shared scope with auth off). A retry with the same key
and the same request gets that answer back (status and body, header `Idempotent-Replayed: true`); the
same key with a different request is a 422. Two requests racing with one key: the second one's insert
of the key fails on the primary key once the first commits, and it replays the first answer.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Response, current_app, jsonify, request
from pydantic import BaseModel
from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api import auth
from api.errors import Unprocessable
from api.store import IdempotencyRecord, Store, utcnow

HEADER = "Idempotency-Key"
# Printable ASCII without spaces, as the spec states it (UUIDs and the like).
KEY_PATTERN = r"^[\x21-\x7E]{1,200}$"
_KEY = re.compile(KEY_PATTERN)
# Expired records are deleted by the write path at most this often per worker.
PURGE_EVERY_S = 60.0

Work = Callable[[Session], tuple[dict[str, Any], int]]


def requested_key() -> str | None:
    """The request's Idempotency-Key, None without one; a malformed key is a 422 naming the header."""
    key = request.headers.get(HEADER)
    if key is None:
        return None
    if not _KEY.match(key):
        raise Unprocessable(f"{HEADER} must be 1-200 printable ASCII characters without spaces", field=HEADER)
    return key


def scope() -> str:
    """Keys are per caller: one client's key never answers another's request."""
    who = auth.caller()
    return who.key_hash[:32] if who.key_hash else "-"


def fingerprint(payload: BaseModel) -> str:
    """The request as validated (key order and 3.0-vs-3 do not matter), with its method and path."""
    text = f"{request.method} {request.path}\n{payload.model_dump_json()}"
    return hashlib.sha256(text.encode()).hexdigest()


class Idempotency:
    """Runs a create with or without a key; one per app, holding the TTL and the purge clock."""

    def __init__(self, store: Store, ttl_s: float) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self._next_purge = 0.0

    def run(self, payload: BaseModel, work: Work) -> Response | tuple[Response, int]:
        """`work(session)` writes and returns (body, status); it commits with the key's record, or not at all."""
        key = requested_key()
        if key is None:
            with self.store.session() as session:
                body, status = work(session)
            return jsonify(body), status
        owner, print_ = scope(), fingerprint(payload)
        try:
            with self.store.session() as session:
                replayed = self._replay(session, owner, key, print_)
                if replayed is not None:
                    return replayed
                body, status = work(session)
                session.add(IdempotencyRecord(scope=owner, key=key, fingerprint=print_, status=status,
                                              body=json.dumps(body), created_at=utcnow()))
                self._purge_if_due(session)
        except IntegrityError:
            # Either a concurrent request with this key committed first (replay its answer), or the write
            # itself conflicted (no record: the 409 stands).
            with self.store.session() as session:
                replayed = self._replay(session, owner, key, print_)
            if replayed is None:
                raise
            return replayed
        return jsonify(body), status

    def _replay(self, session: Session, owner: str, key: str, print_: str) -> Response | None:
        record = session.get(IdempotencyRecord, (owner, key))
        if record is None:
            return None
        if record.created_at < utcnow() - timedelta(seconds=self.ttl_s):
            session.delete(record)  # expired: the key is free again
            session.flush()
            return None
        if record.fingerprint != print_:
            raise Unprocessable(f"{HEADER} {key!r} was already used for a different request; "
                                "use a new key for a new request", field=HEADER)
        response = current_app.response_class(record.body, status=record.status, mimetype="application/json")
        response.headers["Idempotent-Replayed"] = "true"
        return response

    def _purge_if_due(self, session: Session) -> None:
        now = time.monotonic()
        if now < self._next_purge:
            return
        self._next_purge = now + PURGE_EVERY_S
        cutoff = utcnow() - timedelta(seconds=self.ttl_s)
        session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.created_at < cutoff))
