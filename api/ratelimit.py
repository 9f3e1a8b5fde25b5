"""Rate-limit storage for Flask-Limiter: `memory://` counters expired inline instead of by a timer thread.

`limits`' MemoryStorage restarts a `threading.Timer` (10 ms) whenever a hit finds the last one
finished, so a busy gunicorn worker starts about a hundred threads a second, and the request that
starts one waits until the new thread has run. Here expired counters are dropped by the request
itself, at most once a second; counting, windows and limits are the library's own.
"""

from __future__ import annotations

import time

from flask import Response
from limits.storage.memory import MemoryStorage

SWEEP_EVERY_S = 1.0
SCHEME = "recsys-memory"


class InlineExpiryMemoryStorage(MemoryStorage):
    """MemoryStorage whose expiry runs in the calling thread; registered with `limits` as recsys-memory://."""

    STORAGE_SCHEME = [SCHEME]

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: str) -> None:
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self.timer.cancel()  # the one timer the base class starts is not needed either
        self._next_sweep = 0.0

    # Overrides MemoryStorage's private scheduler (name-mangled), called on every counter change.
    def _MemoryStorage__schedule_expiry(self) -> None:
        now = time.time()
        if now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY_S
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


def storage_uri(uri: str) -> str:
    """The URI to give Flask-Limiter: memory:// is served by InlineExpiryMemoryStorage, others as given."""
    return SCHEME + uri[len("memory"):] if uri.startswith("memory://") else uri


def retry_after_only_when_refused(response: Response) -> Response:
    """after_request hook: Flask-Limiter puts Retry-After on every limited response, 200s included, where
    it tells clients to back off for no reason; it belongs to 429 (and 503) only."""
    if response.status_code not in (429, 503):
        response.headers.pop("Retry-After", None)
    return response
