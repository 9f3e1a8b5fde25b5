"""API exception hierarchy and the one JSON problem format every error response uses."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, jsonify
from pydantic import ValidationError
from sqlalchemy.exc import DataError, IntegrityError, OperationalError
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """Base of all API errors; carries the HTTP status and the offending field, if any."""

    status = 400
    title = "Bad Request"

    def __init__(self, detail: str, field: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.field = field


class InvalidRequest(ApiError):
    status, title = 400, "Bad Request"


class Unauthorized(ApiError):
    status, title = 401, "Unauthorized"


class Forbidden(ApiError):
    status, title = 403, "Forbidden"


class NotFound(ApiError):
    status, title = 404, "Not Found"


class Conflict(ApiError):
    status, title = 409, "Conflict"


class PayloadTooLarge(ApiError):
    status, title = 413, "Payload Too Large"


class UnsupportedMediaType(ApiError):
    status, title = 415, "Unsupported Media Type"


class Unprocessable(ApiError):
    status, title = 422, "Unprocessable Entity"


class TooManyRequests(ApiError):
    status, title = 429, "Too Many Requests"

    def __init__(self, detail: str, retry_after_s: int, field: str | None = None) -> None:
        super().__init__(detail, field)
        self.retry_after_s = retry_after_s


def problem(status: int, title: str, detail: str, field: str | None = None) -> Response:
    body: dict[str, Any] = {"status": status, "title": title, "detail": detail, "field": field}
    response = jsonify({"error": body})
    response.status_code = status
    return response


def field_of(loc: tuple[int | str, ...]) -> str | None:
    """Dotted path of a pydantic error location, e.g. ('items', 3, 'price') -> 'items.3.price'."""
    parts = [str(p) for p in loc if p != "__root__"]
    return ".".join(parts) or None


def from_validation_error(exc: ValidationError) -> ApiError:
    """Malformed JSON is a 400; a well-formed body with bad fields is a 422 naming the first field."""
    first = exc.errors(include_url=False)[0]
    if first["type"] == "json_invalid":
        return InvalidRequest(f"request body is not valid JSON: {first['msg']}")
    field = field_of(tuple(first["loc"]))
    return Unprocessable(f"{field or 'body'}: {first['msg']}", field=field)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def _api_error(exc: ApiError) -> Response:
        response = problem(exc.status, exc.title, exc.detail, exc.field)
        if isinstance(exc, TooManyRequests):
            response.headers["Retry-After"] = str(exc.retry_after_s)
        return response

    @app.errorhandler(ValidationError)
    def _validation_error(exc: ValidationError) -> Response:
        err = from_validation_error(exc)
        return problem(err.status, err.title, err.detail, err.field)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        detail = exc.description or exc.name
        if status == 429:
            detail = f"rate limit exceeded ({exc.description}); retry later"
        response = problem(status, exc.name, detail)
        # Keep headers werkzeug/Flask-Limiter attach (Allow, Retry-After).
        for key, value in exc.get_headers():
            if key.lower() != "content-type":
                response.headers[key] = value
        return response

    @app.errorhandler(IntegrityError)
    def _integrity_error(exc: IntegrityError) -> Response:
        # Two writers racing for the same id or a row deleted under a reference end up here.
        log.info("integrity error: %s", exc.orig)
        return problem(409, "Conflict", "the change conflicts with rows written concurrently; retry")

    @app.errorhandler(DataError)
    def _data_error(exc: DataError) -> Response:
        return problem(422, "Unprocessable Entity", f"the database rejected a value: {exc.orig}")

    @app.errorhandler(OperationalError)
    def _database_down(exc: OperationalError) -> Response:
        log.error("database error: %s", exc.orig)
        return problem(503, "Service Unavailable", "the database is unreachable; retry later")
