"""The SQL reference of the API's in-memory catalogue index (serving.catalogue.CatalogueIndex): popularity,
the customer's categories and session co-occurrence computed by aggregating the interactions table.
Test-only: the index must give the same lists (tests/test_api_cache.py, tests/test_api_recommend.py)."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import Select, case, func, select
from sqlalchemy.orm import Session, aliased

from api.store import Interaction, Product
from serving.catalogue import DEFAULT_WEIGHTS, MAX_SESSIONS, ProductFilter


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


def in_customer_categories(session: Session, customer_id: int, limit: int, where: ProductFilter,
                           weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> list[int]:
    """Popular products from the categories the customer interacted with."""
    categories = (
        select(Product.category_id)
        .join(Interaction, Interaction.product_id == Product.id)
        .where(Interaction.customer_id == customer_id, Product.category_id.is_not(None))
        .distinct()
    )
    pop = _popularity(weights)
    score = func.coalesce(pop.c.score, 0.0)
    stmt = (
        select(Product.id)
        .outerjoin(pop, pop.c.product_id == Product.id)
        .where(Product.category_id.in_(categories))
        .order_by(score.desc(), Product.id)
    )
    return [int(p) for p in session.scalars(_filtered(stmt, where).limit(limit))]


def co_occurring(session: Session, customer_id: int, limit: int, where: ProductFilter) -> list[int]:
    """Products seen in the same sessions as the customer's products, by number of shared sessions."""
    mine = aliased(Interaction)
    other = aliased(Interaction)
    # Products the customer touched, then other products that share any session with them.
    touched = select(mine.product_id).where(mine.customer_id == customer_id).distinct().subquery()
    sessions_with_touched = (
        select(other.session)
        .where(other.product_id.in_(select(touched.c.product_id)), other.session.is_not(None))
        .distinct()
        .limit(MAX_SESSIONS)
        .subquery()
    )
    shared = func.count(func.distinct(Interaction.session))
    stmt = (
        select(Product.id)
        .join(Interaction, Interaction.product_id == Product.id)
        .where(
            Interaction.session.in_(select(sessions_with_touched.c.session)),
            Product.id.not_in(select(touched.c.product_id)),
        )
        .group_by(Product.id)
        .order_by(shared.desc(), Product.id)
    )
    return [int(p) for p in session.scalars(_filtered(stmt, where).limit(limit))]
