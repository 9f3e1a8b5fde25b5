"""Health blueprint: database reachability and ranker readiness; 503 only when the database is down."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from api.schemas import Health

bp = Blueprint("health", __name__)


def _ranker_state(ranker: object | None) -> str:
    """"none": popular items only; rankers that can report readiness (Triton) say "ready"/"unavailable"."""
    if ranker is None:
        return "none"
    is_ready = getattr(ranker, "is_ready", None)
    if is_ready is None:
        return "configured"
    try:
        return "ready" if is_ready() else "unavailable"
    except Exception:  # an unreachable server may raise instead of answering False
        return "unavailable"


class HealthCheck:
    """The last answer of /health, kept `ttl_s` seconds per worker.

    /health needs no key and is exempt from rate limits (load balancers poll it), yet each check runs
    a database query and asks Triton; cached, a flood of checks costs one of each per second.
    Concurrent callers wait for the one check in flight instead of starting their own.
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._lock = threading.Lock()
        self._last: tuple[float, dict[str, Any], int] | None = None

    def result(self) -> tuple[dict[str, Any], int]:
        with self._lock:
            now = self.clock()
            if self._last is None or now - self._last[0] >= self.ttl_s:
                self._last = (now, *_check())
            return self._last[1], self._last[2]


def _check() -> tuple[dict[str, Any], int]:
    db_ok = current_app.extensions["recsys_store"].ping()
    ranker_state = _ranker_state(current_app.extensions["recsys_ranker"].get())
    body = Health(
        status="ok" if db_ok and ranker_state != "unavailable" else "degraded",
        database="ok" if db_ok else "unreachable",
        ranker=ranker_state,
    )
    return body.model_dump(), 200 if db_ok else 503


@bp.get("/health")
def health() -> ResponseReturnValue:
    body, status = current_app.extensions["recsys_health"].result()
    return jsonify(body), status
