"""The served OpenAPI document matches the app: schemathesis drives every operation in-process (WSGI)."""

from __future__ import annotations

import re
import tempfile
import uuid
from datetime import datetime, timezone
from pathlib import Path

import hypothesis.configuration
import schemathesis
from hypothesis import HealthCheck, settings

from api import create_app
from api.idempotency import KEY_PATTERN
from api.schemas import EARLIEST_EVENT_TIME
from tests.test_api_support import PG_URL, PriceRanker, _postgres_reachable, add_catalogue, make_config

_DIR = Path(tempfile.mkdtemp(prefix="recsys-api-openapi-"))
# Hypothesis keeps caches in ./.hypothesis by default; keep the repo clean.
hypothesis.configuration.set_hypothesis_home_dir(_DIR / "hypothesis")
# One app for the whole run: schemathesis loads the schema at import time to parametrize the test.
APP = create_app(make_config(_DIR), ranker=PriceRanker())
add_catalogue(APP.test_client())
schema = schemathesis.openapi.from_wsgi("/openapi.json", APP)
# A bulk request over maxItems is refused with 413 (Payload Too Large), which is a rejection too.
_rejection = schema.config.checks.negative_data_rejection
_rejection.expected_statuses = [*_rejection.expected_statuses, "413"]

# The same run on PostgreSQL with auth on, every request carrying an admin key (so deletes are allowed and
# every write path is reached). Skipped, and said so, where no PostgreSQL answers.
ADMIN_KEY = "openapi-admin-" + uuid.uuid4().hex
PG_SCHEMA = f"recsys_openapi_{uuid.uuid4().hex[:12]}"
PG_APP = create_app(make_config(_DIR / "pg", DATABASE_URL=PG_URL, DATABASE_SCHEMA=PG_SCHEMA,
                                API_KEYS=f"{ADMIN_KEY}:admin"), ranker=PriceRanker()) \
    if _postgres_reachable() else None
if PG_APP is not None:
    add_catalogue(PG_APP.test_client(), headers={"X-API-Key": ADMIN_KEY})
    pg_schema = schemathesis.openapi.from_wsgi("/openapi.json", PG_APP)
    _pg_rejection = pg_schema.config.checks.negative_data_rejection
    _pg_rejection.expected_statuses = [*_pg_rejection.expected_statuses, "413"]
else:  # the spec of the SQLite app stands in only so the test below collects; it is skipped
    pg_schema = schema


def _fresh_idempotency_key(case: schemathesis.Case) -> None:
    """The app lives across examples and hypothesis repeats small keys ("0"): a valid key reused with another
    body is rightly a 422, so each generated valid key is made unique; malformed ones stay as generated."""
    key = (case.headers or {}).get("Idempotency-Key")
    if isinstance(key, str) and re.fullmatch(KEY_PATTERN, key):
        case.headers["Idempotency-Key"] = f"{key[:160]}-{uuid.uuid4().hex}"


@schema.hook("map_body")
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


if PG_APP is not None:
    pg_schema.hook("map_body")(_event_times_in_range)


def test_spec_lists_every_route_of_the_app() -> None:
    spec = APP.test_client().get("/openapi.json").json
    documented = {(path, method.upper()) for path, ops in spec["paths"].items() for method in ops
                  if method != "parameters"}
    served = set()
    for rule in APP.url_map.iter_rules():
        if rule.endpoint in {"static", "openapi.spec"}:
            continue
        path = rule.rule.replace("<id:ident>", "{ident}")
        served |= {(path, m) for m in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
def test_api_conforms_to_its_openapi_spec(case: schemathesis.Case) -> None:
    _fresh_idempotency_key(case)
    case.call_and_validate()


@pg_schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
          database=None)
def test_api_conforms_to_its_openapi_spec_on_postgresql_with_an_admin_key(case: schemathesis.Case) -> None:
    import pytest

    if PG_APP is None:
        pytest.skip(f"PostgreSQL not reachable at {PG_URL}")
    _fresh_idempotency_key(case)
    case.headers = {**(case.headers or {}), "X-API-Key": ADMIN_KEY}
    case.call_and_validate()


def teardown_module() -> None:
    if PG_APP is not None:
        store = PG_APP.extensions["recsys_store"]
        store.drop_all()
        store.dispose()
