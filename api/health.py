"""Health blueprint: database reachability and ranker readiness; 503 only when the database is down."""

from __future__ import annotations

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


@bp.get("/health")
def health() -> ResponseReturnValue:
    db_ok = current_app.extensions["recsys_store"].ping()
    ranker_state = _ranker_state(current_app.extensions["recsys_ranker"].get())
    body = Health(
        status="ok" if db_ok and ranker_state != "unavailable" else "degraded",
        database="ok" if db_ok else "unreachable",
        ranker=ranker_state,
    )
    return jsonify(body.model_dump()), 200 if db_ok else 503
