"""Interactions blueprint: CRUD of events; a reference to a missing customer or product is a 409 conflict."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from flask import Blueprint, jsonify
from flask.typing import ResponseReturnValue

from api.errors import Conflict
from api.resources import parse_body, register_crud, store, to_json
from api.schemas import InteractionBulk, InteractionCreate, InteractionOut, InteractionPageQuery, InteractionUpdate
from api.store import Customer, Impression, Interaction, Product, utcnow

bp = Blueprint("interactions", __name__, url_prefix="/interactions")


def _references_exist(session: Session, items: list[BaseModel]) -> None:
    single = len(items) == 1
    for attr, orm in (("customer_id", Customer), ("product_id", Product)):
        wanted = {getattr(item, attr) for item in items}
        known = set(session.scalars(select(orm.id).where(orm.id.in_(wanted))))
        missing = wanted - known
        if missing:
            index = next(i for i, item in enumerate(items) if getattr(item, attr) in missing)
            field = attr if single else f"items.{index}.{attr}"
            raise Conflict(f"{attr} {getattr(items[index], attr)} does not exist; create it first", field=field)
    wanted = {item.recommendation_id for item in items if getattr(item, "recommendation_id", None) is not None}
    if wanted:
        known = set(session.scalars(select(Impression.id).where(Impression.id.in_(wanted))))
        missing = wanted - known
        if missing:
            index = next(i for i, item in enumerate(items) if getattr(item, "recommendation_id", None) in missing)
            field = "recommendation_id" if single else f"items.{index}.recommendation_id"
            raise Conflict(f"recommendation_id {getattr(items[index], 'recommendation_id')} names no recommendation "
                           "response; send the id a GET /customers/<id>/recommendations returned", field=field)


def _event_time_defaults(row: dict[str, Any]) -> dict[str, Any]:
    if "event_time" in row and row["event_time"] is None:
        row["event_time"] = utcnow()
    return row


def _filters(query: Any) -> list[Any]:
    where = []
    if query.customer_id is not None:
        where.append(Interaction.customer_id == query.customer_id)
    if query.product_id is not None:
        where.append(Interaction.product_id == query.product_id)
    return where


INSERT = insert(Interaction.__table__)


def create_one() -> ResponseReturnValue:
    """POST /interactions, the hot write path: one Core INSERT, group-committed with the inserts of
    concurrent requests (Store.insert_one), no ORM unit of work, no read-back.

    The foreign keys prove that the customer and product exist, so the happy path runs no lookups;
    only when the insert is refused are they run, to name the missing reference in the 409.
    """
    item = parse_body(InteractionCreate)
    row = _event_time_defaults(item.model_dump())
    try:
        new_id = store().insert_one(INSERT, row)
    except IntegrityError:
        with store().session() as session:
            _references_exist(session, [item])
        raise
    return jsonify(to_json(InteractionOut, {"id": new_id, **row})), 201


register_crud(
    bp, Interaction, InteractionOut, InteractionCreate, InteractionBulk, InteractionUpdate,
    page=InteractionPageQuery, numbered=False, precheck=_references_exist, defaults=_event_time_defaults,
    filters=_filters, create_one=create_one,
)
