"""The SQL reference of the API's in-memory catalogue index (serving.catalogue.CatalogueIndex): popularity
computed by aggregating the interactions table. Test-only: the index must give the same lists
(tests/test_api_cache.py)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session

from api.store import Interaction, Product
from serving.catalogue import DEFAULT_WEIGHTS, ProductFilter


def _filtered(stmt: Select, where: ProductFilter) -> Select:
    """stmt restricted to available products that pass `where`."""
    stmt = stmt.where(Product.available.is_(True))
    if where.category_id is not None:
        stmt = stmt.where(Product.category_id == where.category_id)
    if where.min_price is not None:
        stmt = stmt.where(Product.price >= where.min_price)
    if where.max_price is not None:
        stmt = stmt.where(Product.price <= where.max_price)
    return stmt


def event_weight(weights: Mapping[str, float]):  # type: ignore[no-untyped-def]
    """SQL weight of one interaction (contracts.EventWeights, RECSYS_EVENT_WEIGHTS); unknown types weigh 0."""
    return case(*((Interaction.event_type == name, float(w)) for name, w in weights.items()), else_=0.0)


def _popularity(weights: Mapping[str, float] = DEFAULT_WEIGHTS):  # type: ignore[no-untyped-def]
    """Weighted event count per product, aggregated over the (product_id, event_type) index alone."""
    return (
        select(Interaction.product_id.label("product_id"), func.sum(event_weight(weights)).label("score"))
        .group_by(Interaction.product_id)
        .subquery()
    )


def popular(session: Session, limit: int, where: ProductFilter = ProductFilter(),
            exclude: set[int] = frozenset(), weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> list[tuple[int, float]]:
    """Available products by weighted interaction count, then (for a cold store) by id; (product_id, score)."""
    pop = _popularity(weights)
    score = func.coalesce(pop.c.score, 0.0).label("score")
    stmt = (
        select(Product.id, score)
        .outerjoin(pop, pop.c.product_id == Product.id)
        .order_by(score.desc(), Product.id)
    )
    if exclude:
        stmt = stmt.where(Product.id.not_in(exclude))
    stmt = _filtered(stmt, where).limit(limit)
    return [(int(pid), float(s)) for pid, s in session.execute(stmt)]


def purchased(session: Session, customer_id: int) -> set[int]:
    stmt = select(Interaction.product_id).where(
        Interaction.customer_id == customer_id, Interaction.event_type == "purchase"
    ).distinct()
    return {int(p) for p in session.scalars(stmt)}
