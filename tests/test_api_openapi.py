"""The served OpenAPI document matches the app: schemathesis drives every operation in-process (WSGI)."""

from __future__ import annotations

import re
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import hypothesis.configuration
import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from api import create_app
from api.idempotency import KEY_PATTERN
from api.schemas import EARLIEST_EVENT_TIME
from tests.test_api_support import PG_URL, PriceRanker, _postgres_reachable, add_catalogue, make_config

_DIR = Path(tempfile.mkdtemp(prefix="recsys-api-openapi-"))
# Hypothesis keeps caches in ./.hypothesis by default; keep the repo clean.
hypothesis.configuration.set_hypothesis_home_dir(_DIR / "hypothesis")
# One app per database x auth setting for the whole run: schemathesis loads each schema at import time to
# parametrize its test. Auth off (no key needed), and auth on with every request carrying an admin key (so
# deletes are allowed and every write path is reached); SQLite and PostgreSQL (skipped, and said so, where no
# PostgreSQL answers). APP is the SQLite app with auth off.
ADMIN_KEY = "openapi-admin-" + uuid.uuid4().hex
_PG = _postgres_reachable()
_PG_SCHEMAS: list[str] = []


def _target(backend: str, keyed: bool):  # type: ignore[no-untyped-def]
    if backend == "postgresql" and not _PG:
        return None
    name = f"{backend}-{'key' if keyed else 'open'}"
    overrides: dict = {"API_KEYS": f"{ADMIN_KEY}:admin"} if keyed else {}
    if backend == "postgresql":
        _PG_SCHEMAS.append(f"recsys_openapi_{uuid.uuid4().hex[:12]}")
        overrides |= {"DATABASE_URL": PG_URL, "DATABASE_SCHEMA": _PG_SCHEMAS[-1]}
    (_DIR / name).mkdir(parents=True, exist_ok=True)
    app = create_app(make_config(_DIR / name, **overrides), ranker=PriceRanker())
    add_catalogue(app.test_client(), headers={"X-API-Key": ADMIN_KEY} if keyed else None)
    return app


TARGETS = {(backend, keyed): _target(backend, keyed) for backend in ("sqlite", "postgresql") for keyed in (False, True)}
APP = TARGETS[("sqlite", False)]


def _schema_of(app):  # type: ignore[no-untyped-def]
    spec = schemathesis.openapi.from_wsgi("/openapi.json", app)
    # A bulk request over maxItems is refused with 413 (Payload Too Large), which is a rejection too.
    rejection = spec.config.checks.negative_data_rejection
    rejection.expected_statuses = [*rejection.expected_statuses, "413"]
    return spec


def _fresh_idempotency_key(case: schemathesis.Case) -> None:
    """The app lives across examples and hypothesis repeats small keys ("0"): a valid key reused with another
    body is rightly a 422, so each generated valid key is made unique; malformed ones stay as generated."""
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and re.fullmatch(KEY_PATTERN, key):
        case.headers["Idempotency-Key"] = f"{key[:160]}-{uuid.uuid4().hex}"


def _event_times_in_range(context: object, body: object) -> object:
    """JSON Schema cannot bound a date-time by "now" (event_time's description states 1970 .. now + skew):
    generated times outside that range are moved into it; malformed ones are left for the negative checks."""
    for item in body.get("items", [body]) if isinstance(body, dict) else []:
        if isinstance(item, dict) and isinstance(item.get("event_time"), str):
            try:
                when = datetime.fromisoformat(item["event_time"].replace("Z", "+00:00"))
            except ValueError:
                continue
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
            if not EARLIEST_EVENT_TIME <= when <= datetime.now(timezone.utc):
                item["event_time"] = "2026-01-01T12:00:00+02:00"
    return body


def test_spec_lists_every_route_of_the_app() -> None:
    spec = APP.test_client().get("/openapi.json").json
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops
                  if method != "parameters"}
    served = set()
    for rule in APP.url_map.iter_rules():
        if rule.endpoint in {"static", "openapi.spec"}:
            continue
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)  # <id:ident> -> {ident}, <name> -> {name}
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served


def _conformance_test(backend: str, keyed: bool):  # type: ignore[no-untyped-def]
    app = TARGETS[(backend, keyed)]
    spec = _schema_of(app if app is not None else APP)  # an absent backend's test collects, then skips
    spec.hook("map_body")(_event_times_in_range)

    @spec.parametrize()
    @settings(max_examples=12 if (backend, keyed) == ("sqlite", False) else 6, deadline=None,
              suppress_health_check=list(HealthCheck), derandomize=True, database=None)
    def test(case: schemathesis.Case) -> None:
        if app is None:
            pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
        _fresh_idempotency_key(case)
        if keyed:
            case.headers = {**(case.headers or {}), "X-API-Key": ADMIN_KEY}
        case.call_and_validate()

    return test


test_api_conforms_to_its_openapi_spec = _conformance_test("sqlite", False)
test_api_conforms_to_its_openapi_spec_on_sqlite_with_an_admin_key = _conformance_test("sqlite", True)
test_api_conforms_to_its_openapi_spec_on_postgresql = _conformance_test("postgresql", False)
test_api_conforms_to_its_openapi_spec_on_postgresql_with_an_admin_key = _conformance_test("postgresql", True)


def teardown_module() -> None:
    for app in TARGETS.values():
        if app is not None:
            store = app.extensions["recsys_store"]
            if store.engine.url.get_backend_name() == "postgresql":
                store.drop_all()
            store.dispose()
