"""Products blueprint: CRUD plus popular and similar products."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from api import queries
from api.resources import get_or_404, parse_query, register_crud, store
from api.schemas import ProductBulk, ProductCreate, ProductList, ProductOut, ProductUpdate, TopKQuery
from api.store import Product

bp = Blueprint("products", __name__, url_prefix="/products")
register_crud(bp, Product, ProductOut, ProductCreate, ProductBulk, ProductUpdate)


def _scored(items: list[tuple[int, float]]) -> dict:
    return ProductList(items=[{"product_id": p, "score": s} for p, s in items]).model_dump()


@bp.get("/popular")
def popular() -> ResponseReturnValue:
    query = parse_query(TopKQuery)
    return jsonify(_scored(current_app.extensions["recsys_recommender"].popular(query.k)))


@bp.get("/<id:ident>/similar")
def similar(ident: int) -> ResponseReturnValue:
    """Products that share sessions or customers with this one, most shared first."""
    query = parse_query(TopKQuery)
    with store().session() as session:
        get_or_404(session, Product, ident)
        return jsonify(_scored(queries.similar_products(session, ident, query.k)))
