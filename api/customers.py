"""Customers blueprint: CRUD plus `GET /customers/<id>/recommendations`."""

from __future__ import annotations

from flask import Blueprint, current_app, jsonify
from flask.typing import ResponseReturnValue

from api import queries
from api.resources import parse_query, register_crud, store
from api.schemas import CustomerBulk, CustomerCreate, CustomerOut, CustomerUpdate, RecommendQuery, Recommendations
from api.store import Customer
from serving.catalogue import ProductFilter
from serving.request_path import History, Request

bp = Blueprint("customers", __name__, url_prefix="/customers")
register_crud(bp, Customer, CustomerOut, CustomerCreate, CustomerBulk, CustomerUpdate)


@bp.get("/<id:ident>/recommendations")
def recommendations(ident: int) -> ResponseReturnValue:
    """Top-k products for a customer; unknown customers get popular items, a down ranker sets `fallback`."""
    query = parse_query(RecommendQuery)
    req = Request(
        customer_id=ident,
        k=query.k,
        where=ProductFilter(query.category_id, query.min_price, query.max_price),
        exclude=query.exclusion(current_app.config.get("EXCLUDE", "seen")),
    )
    experiments = current_app.extensions["recsys_experiments"]
    assignment = experiments.assign(ident)  # one cached lookup and a hash (api.experiments)
    ranker = experiments.ranker(assignment, current_app.extensions["recsys_ranker"].get())
    history = History.of(queries.history(store(), ident))
    result = current_app.extensions["recsys_recommender"].recommend(req, history, ranker)
    body = Recommendations(
        customer_id=ident,
        items=[{"product_id": p, "score": s, "explanation": why}
               for (p, s), why in zip(result.items, result.explanations, strict=True)],
        ranker=result.ranker,
        fallback=result.fallback,
        recommendation_id=experiments.log_impression(assignment, ident, [p for p, _ in result.items]),
        arm=assignment.arm,
        experiment_id=assignment.experiment_id,
    )
    return jsonify(body.model_dump())
