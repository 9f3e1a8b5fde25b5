"""OpenAPI 3.1 document served at /openapi.json, generated from the pydantic models the views validate with."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from api import schemas as s
from api.idempotency import HEADER as IDEMPOTENCY_HEADER
from api.idempotency import KEY_PATTERN

bp = Blueprint("openapi", __name__)

REF = "#/components/schemas/{model}"
PROBLEM_STATUSES = {"400": "Malformed request", "401": "Missing or unknown API key", "403": "Role too low",
                    "404": "Not found", "409": "Conflict with existing rows", "413": "Payload too large",
                    "415": "Body is not JSON", "422": "Invalid field", "429": "Rate limit exceeded",
                    "503": "Database unreachable"}
REQUEST_MODELS = [s.CustomerCreate, s.CustomerUpdate, s.CustomerBulk, s.ProductCreate, s.ProductUpdate,
                  s.ProductBulk, s.InteractionCreate, s.InteractionUpdate, s.InteractionBulk]
RESPONSE_MODELS = [s.CustomerOut, s.CustomerPage, s.ProductOut, s.ProductPage, s.InteractionOut,
                   s.InteractionPage, s.BulkResult, s.Recommendations, s.ProductList, s.Health, s.Problem,
                   s.ExperimentOut, s.ExperimentList]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _json(model: type[BaseModel]) -> dict[str, Any]:
    return {"application/json": {"schema": _ref(model)}}


def _query_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    props = model.model_json_schema()["properties"]
    return [{"name": name, "in": "query", "required": False, "schema": schema} for name, schema in props.items()]


def _path_id() -> dict[str, Any]:
    # The bounds the `id` route converter enforces: ASCII digits, BIGINT range; outside them is a 404.
    return {"name": "ident", "in": "path", "required": True,
            "schema": {"type": "integer", "minimum": s.MIN_ID, "maximum": s.MAX_ID}}


def _idempotency_key() -> dict[str, Any]:
    return {"name": IDEMPOTENCY_HEADER, "in": "header", "required": False,
            "description": "retries with the same key and body get the first answer (per API key, "
                           "kept RECSYS_IDEMPOTENCY_TTL_S); the same key with another body is a 422",
            "schema": {"type": "string", "pattern": KEY_PATTERN}}


def _op(summary: str, ok: str, out: type[BaseModel] | None, body: type[BaseModel] | None = None,
        params: list[dict[str, Any]] | None = None, public: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {ok: {"description": summary}}
    if out is not None:
        responses[ok]["content"] = _json(out)
    for code, text in PROBLEM_STATUSES.items():
        responses[code] = {"description": text, "content": _json(s.Problem)}
    op: dict[str, Any] = {"summary": summary, "responses": responses, "parameters": params or []}
    if body is not None:
        op["requestBody"] = {"required": True, "content": _json(body)}
    if public:
        op["security"] = []
    return op


def _resource(name: str, out, page, create, bulk, update, page_query=s.PageQuery) -> dict[str, Any]:
    one = f"/{name}/{{ident}}"
    return {
        f"/{name}": {
            "get": _op(f"List {name} (limit/offset, with total)", "200", page, params=_query_params(page_query)),
            "post": _op(f"Create one of {name}", "201", out, create, params=[_idempotency_key()]),
        },
        f"/{name}/bulk": {"post": _op(f"Create many {name} in one request", "201", s.BulkResult, bulk,
                                      params=[_idempotency_key()])},
        one: {
            "parameters": [_path_id()],
            "get": _op(f"Read one of {name}", "200", out),
            "put": _op(f"Replace one of {name}", "200", out, update),
            "patch": _op(f"Change fields of one of {name}", "200", out, update),
            "delete": _op(f"Delete one of {name}", "204", None),
        },
    }


def build_spec(bulk_limit: int) -> dict[str, Any]:
    pairs = [(m, "validation") for m in REQUEST_MODELS] + [(m, "serialization") for m in RESPONSE_MODELS]
    _, defs = models_json_schema(pairs, ref_template=REF)
    schemas = defs.get("$defs", {})
    for bulk in (s.CustomerBulk, s.ProductBulk, s.InteractionBulk):
        # The limit is configuration, so the served spec states the running app's value.
        schemas[bulk.__name__]["properties"]["items"]["maxItems"] = bulk_limit
    paths: dict[str, Any] = {}
    paths.update(_resource("customers", s.CustomerOut, s.CustomerPage, s.CustomerCreate, s.CustomerBulk,
                           s.CustomerUpdate))
    paths.update(_resource("products", s.ProductOut, s.ProductPage, s.ProductCreate, s.ProductBulk,
                           s.ProductUpdate))
    paths.update(_resource("interactions", s.InteractionOut, s.InteractionPage, s.InteractionCreate,
                           s.InteractionBulk, s.InteractionUpdate, s.InteractionPageQuery))
    paths["/customers/{ident}/recommendations"] = {"parameters": [_path_id()], "get": _op(
        "Top-k products for a customer", "200", s.Recommendations, params=_query_params(s.RecommendQuery))}
    paths["/products/popular"] = {"get": _op("Most interacted-with available products", "200", s.ProductList,
                                             params=_query_params(s.TopKQuery))}
    paths["/products/{ident}/similar"] = {"parameters": [_path_id()], "get": _op(
        "Products sharing sessions or customers with this one", "200", s.ProductList,
        params=_query_params(s.TopKQuery))}
    paths["/experiments"] = {"get": _op("Online experiments, newest first, with live figures per arm", "200",
                                        s.ExperimentList)}
    paths["/experiments/{experiment_id}"] = {
        "parameters": [{"name": "experiment_id", "in": "path", "required": True,
                        "schema": {"type": "string", "pattern": s.EXPERIMENT_ID_PATTERN}}],
        "get": _op("One experiment: state, arms, shares, live figures, last decision", "200", s.ExperimentOut)}
    health = _op("Database and ranker status", "200", s.Health, public=True)
    health["responses"]["503"] = {"description": "Database unreachable", "content": _json(s.Health)}
    paths["/health"] = {"get": health}
    return {
        "openapi": "3.1.0",
        "info": {"title": "recsys-platform API", "version": "1.0.0",
                 "description": "Customers, products, interactions and recommendations."},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        # `{}` because keys are optional: the embedded setup runs with auth off.
        "security": [{"apiKey": []}, {}],
    }


@bp.get("/openapi.json")
def spec() -> ResponseReturnValue:
    return jsonify(build_spec(int(current_app.config["BULK_LIMIT"])))
