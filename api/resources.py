"""Shared request plumbing for the resource blueprints: body/query parsing, lookups, pagination and CRUD routes."""

from __future__ import annotations

from collections.abc import Callable
import itertools
from typing import Any, TypeVar

from flask import Blueprint, current_app, jsonify, request
from flask.typing import ResponseReturnValue
from pydantic import BaseModel
from pydantic_core import from_json
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.routing import BaseConverter

from api.errors import Conflict, NotFound, PayloadTooLarge, UnsupportedMediaType
from api.idempotency import HEADER as IDEMPOTENCY_HEADER
from api.idempotency import Idempotency
from api.schemas import MAX_ID, MIN_ID, BulkResult, PageQuery
from api.store import Base, Store

M = TypeVar("M", bound=BaseModel)
# Hook run on validated items before insert (e.g. checking that referenced rows exist).
Precheck = Callable[[Session, list[BaseModel]], None]


class IdConverter(BaseConverter):
    """`<id:ident>`: ASCII digits only (werkzeug's `int` takes any Unicode digit, e.g. full-width ones).

    The range is checked by `check_path_ids`, not here: a converter that refuses a value makes
    werkzeug answer 405 for the other methods of the path instead of 404.
    """

    regex = r"[0-9]+"
    weight = 50

    def to_python(self, value: str) -> int:
        return int(value)

    def to_url(self, value: int) -> str:
        return str(int(value))


def check_path_ids() -> None:
    """before_request hook (after auth and limits): a path id outside the BIGINT ids the store holds
    names no row, so it is a 404 before any query sees it (SQLite raises OverflowError on it)."""
    ident = (request.view_args or {}).get("ident")
    if isinstance(ident, int) and not MIN_ID <= ident <= MAX_ID:
        raise NotFound(f"id {ident} is outside {MIN_ID}..{MAX_ID}, so nothing has it", field="id")


def store() -> Store:
    return current_app.extensions["recsys_store"]


def idempotency() -> Idempotency:
    return current_app.extensions["recsys_idempotency"]


def parse_body(model: type[M]) -> M:
    """Validate the JSON body against `model` (strict, no unknown fields); errors become 400/415/422."""
    if request.mimetype != "application/json":
        raise UnsupportedMediaType(f"send the body as application/json, not {request.mimetype or 'nothing'!r}")
    context = {"event_time_skew_s": current_app.config["EVENT_TIME_SKEW_S"]}
    return model.model_validate_json(request.get_data(cache=False) or b"", context=context)


def parse_query(model: type[M]) -> M:
    return model.model_validate(request.args.to_dict())


def get_or_404(session: Session, orm: type[Base], ident: int) -> Any:
    found = session.get(orm, ident) if 1 <= ident <= MAX_ID else None
    if found is None:
        raise NotFound(f"{orm.__tablename__[:-1]} {ident} does not exist", field="id")
    return found


def to_json(out: type[BaseModel], obj: Any) -> dict[str, Any]:
    # Timestamps are aware UTC datetimes here (the store's UtcDateTime, the schemas' EventTime): "...Z".
    return out.model_validate(obj).model_dump(mode="json")


def paginate(session: Session, orm: type[Base], out: type[BaseModel], query: PageQuery,
             where: list[Any] | None = None) -> dict[str, Any]:
    conditions = where or []
    total = session.scalar(select(func.count()).select_from(orm).where(*conditions)) or 0
    stmt = select(orm).where(*conditions).order_by(orm.id).limit(query.limit).offset(query.offset)  # type: ignore[attr-defined]
    items = [to_json(out, row) for row in session.scalars(stmt)]
    return {"items": items, "total": total, "limit": query.limit, "offset": query.offset}


def check_bulk_size(n: int) -> None:
    limit = int(current_app.config["BULK_LIMIT"])
    if n > limit:
        raise PayloadTooLarge(f"{n} items in one request; send at most {limit} per request", field="items")


def insert_rows(session: Session, orm: type[Base], items: list[BaseModel], numbered: bool,
                defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> list[int]:
    """Insert validated items; client ids must be new and distinct, missing ids follow the current maximum."""
    rows = [item.model_dump() for item in items]
    if numbered:
        given = [r["id"] for r in rows if r.get("id") is not None]
        seen: set[int] = set()
        for i, r in enumerate(rows):
            if r.get("id") is not None:
                if r["id"] in seen:
                    raise Conflict(f"id {r['id']} appears twice in this request", field=f"items.{i}.id")
                seen.add(r["id"])
        if given:
            taken = set(session.scalars(select(orm.id).where(orm.id.in_(given))))  # type: ignore[attr-defined]
            if taken:
                first = next(i for i, r in enumerate(rows) if r.get("id") in taken)
                field = "id" if len(rows) == 1 else f"items.{first}.id"
                raise Conflict(f"{orm.__tablename__} with ids {sorted(taken)[:10]} already exist", field=field)
        top = max(session.scalar(select(func.max(orm.id))) or 0, max(seen, default=0))  # type: ignore[attr-defined]
        fresh = itertools.count(top + 1)
        for r in rows:
            if r.get("id") is None:
                r["id"] = next(fresh)
                if r["id"] > MAX_ID:
                    raise Conflict(f"no id left above the current maximum {top}; send explicit ids", field="id")
    objs = [orm(**(defaults(r) if defaults else r)) for r in rows]
    session.add_all(objs)
    session.flush()
    return [int(o.id) for o in objs]  # type: ignore[attr-defined]


def register_crud(bp: Blueprint, orm: type[Base], out: type[BaseModel], create: type[BaseModel],
                  bulk: type[BaseModel], update: type[BaseModel], page: type[PageQuery] = PageQuery,
                  numbered: bool = True, precheck: Precheck | None = None,
                  defaults: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                  filters: Callable[[PageQuery], list[Any]] | None = None,
                  create_one: Callable[[], ResponseReturnValue] | None = None) -> None:
    """Register create (single, bulk), read, replace, patch, delete and list routes for one resource.

    `create_one` replaces the generic single-item create (a resource with a hot write path brings its own).
    """

    def create_generic() -> ResponseReturnValue:
        item = parse_body(create)

        def write(session: Session) -> tuple[dict[str, Any], int]:
            if precheck:
                precheck(session, [item])
            (new_id,) = insert_rows(session, orm, [item], numbered, defaults)
            return to_json(out, session.get(orm, new_id)), 201

        return idempotency().run(item, write)

    def create_route() -> ResponseReturnValue:
        # A request with an Idempotency-Key takes the transactional path, which records the answer.
        if create_one is not None and IDEMPOTENCY_HEADER not in request.headers:
            return create_one()
        return create_generic()

    def create_bulk() -> ResponseReturnValue:
        # Check the count before validating items so a huge batch is refused cheaply. pydantic's
        # parser bounds nesting depth (json.loads raises RecursionError on deep arrays); a body it
        # cannot parse is left to parse_body, which answers 400.
        raw = None
        if request.mimetype == "application/json":
            try:
                raw = from_json(request.get_data(cache=True))
            except ValueError:
                raw = None
        if isinstance(raw, dict) and isinstance(raw.get("items"), list):
            check_bulk_size(len(raw["items"]))
        payload = parse_body(bulk)
        items = payload.items  # type: ignore[attr-defined]
        check_bulk_size(len(items))

        def write(session: Session) -> tuple[dict[str, Any], int]:
            if precheck:
                precheck(session, items)
            ids = insert_rows(session, orm, items, numbered, defaults)
            return BulkResult(created=len(ids), ids=ids).model_dump(), 201

        return idempotency().run(payload, write)

    def read(ident: int) -> ResponseReturnValue:
        with store().session() as session:
            return jsonify(to_json(out, get_or_404(session, orm, ident)))

    def modify(ident: int) -> ResponseReturnValue:
        changes = parse_body(update)
        fields = changes.model_fields_set if request.method == "PATCH" else set(type(changes).model_fields)
        values = changes.model_dump()
        if defaults:
            values = defaults(values)
        with store().session() as session:
            obj = get_or_404(session, orm, ident)
            for name in fields:
                setattr(obj, name, values[name])
            session.flush()
            body = to_json(out, obj)
        return jsonify(body)

    def delete(ident: int) -> ResponseReturnValue:
        with store().session() as session:
            session.delete(get_or_404(session, orm, ident))
        return "", 204

    def listing() -> ResponseReturnValue:
        query = parse_query(page)
        with store().session() as session:
            return jsonify(paginate(session, orm, out, query, filters(query) if filters else None))

    bp.add_url_rule("", "create", create_route, methods=["POST"])
    bp.add_url_rule("/bulk", "create_bulk", create_bulk, methods=["POST"])
    bp.add_url_rule("", "list", listing, methods=["GET"])
    bp.add_url_rule("/<id:ident>", "read", read, methods=["GET"])
    bp.add_url_rule("/<id:ident>", "modify", modify, methods=["PUT", "PATCH"])
    bp.add_url_rule("/<id:ident>", "delete", delete, methods=["DELETE"])
