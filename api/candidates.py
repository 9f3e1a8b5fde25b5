"""Candidate retrieval from the interactions table: popularity, the customer's categories, session co-occurrence."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import Select, String, case, cast, func, literal, select
from sqlalchemy.orm import Session, aliased

from api.store import Interaction, Product
from contracts import EventWeights

DEFAULT_WEIGHTS: Mapping[str, float] = EventWeights().as_dict()
MAX_SESSIONS = 1000  # sessions scanned for co-occurrence, bounding the query on busy products


@dataclass(frozen=True)
class ProductFilter:
    """Constraints every returned product must satisfy."""

    category_id: int | None = None
    min_price: float | None = None
    max_price: float | None = None

    def apply(self, stmt: Select) -> Select:
        stmt = stmt.where(Product.available.is_(True))
        if self.category_id is not None:
            stmt = stmt.where(Product.category_id == self.category_id)
        if self.min_price is not None:
            stmt = stmt.where(Product.price >= self.min_price)
        if self.max_price is not None:
            stmt = stmt.where(Product.price <= self.max_price)
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
    stmt = where.apply(stmt).limit(limit)
    return [(int(pid), float(s)) for pid, s in session.execute(stmt)]


def purchased(session: Session, customer_id: int) -> set[int]:
    stmt = select(Interaction.product_id).where(
        Interaction.customer_id == customer_id, Interaction.event_type == "purchase"
    ).distinct()
    return {int(p) for p in session.scalars(stmt)}


def has_history(session: Session, customer_id: int) -> bool:
    stmt = select(Interaction.id).where(Interaction.customer_id == customer_id).limit(1)
    return session.scalar(stmt) is not None


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
    return [int(p) for p in session.scalars(where.apply(stmt).limit(limit))]


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
    return [int(p) for p in session.scalars(where.apply(stmt).limit(limit))]


SIMILAR_CANDIDATES = 500  # most-shared products re-scored by cosine, bounding the work on busy products


def _contexts(product_ids: Select | list[int] | None = None):  # type: ignore[no-untyped-def]
    """(pid, ctx) rows: the sessions (`s:<id>`) and customers (`c:<id>`) each product appears in."""
    by_session = select(Interaction.product_id.label("pid"), (literal("s:") + Interaction.session).label("ctx")) \
        .where(Interaction.session.is_not(None))
    by_customer = select(Interaction.product_id.label("pid"),
                         (literal("c:") + cast(Interaction.customer_id, String)).label("ctx"))
    if product_ids is not None:
        by_session = by_session.where(Interaction.product_id.in_(product_ids))
        by_customer = by_customer.where(Interaction.product_id.in_(product_ids))
    return by_session.union(by_customer).subquery()


def similar_products(session: Session, product_id: int, limit: int) -> list[tuple[int, float]]:
    """Item-item similarity: (product_id, score) with score = |C(a) & C(b)| / sqrt(|C(a)| |C(b)|), the
    cosine of the two products' context sets C (the sessions and customers they appear in), in [0, 1].
    Raw shared counts would rank popular products first for every anchor; the cosine does not."""
    anchor = aliased(Interaction)
    by_session = (
        select(Interaction.product_id.label("pid"), (literal("s:") + anchor.session).label("ctx"))
        .join(anchor, (anchor.session == Interaction.session) & anchor.session.is_not(None))
        .where(anchor.product_id == product_id, Interaction.product_id != product_id)
    )
    by_customer = (
        select(Interaction.product_id.label("pid"), (literal("c:") + cast(anchor.customer_id, String)).label("ctx"))
        .join(anchor, anchor.customer_id == Interaction.customer_id)
        .where(anchor.product_id == product_id, Interaction.product_id != product_id)
    )
    pairs = by_session.union(by_customer).subquery()
    shared = func.count().label("shared")
    stmt = (
        select(Product.id, shared)
        .join(pairs, pairs.c.pid == Product.id)
        .where(Product.available.is_(True))
        .group_by(Product.id)
        .order_by(shared.desc(), Product.id)
        .limit(SIMILAR_CANDIDATES)
    )
    shared_with = {int(p): float(n) for p, n in session.execute(stmt)}
    if not shared_with:
        return []
    contexts = _contexts([product_id, *shared_with])
    sizes = {int(p): float(n) for p, n in session.execute(
        select(contexts.c.pid, func.count()).group_by(contexts.c.pid))}
    own = sizes.get(product_id, 0.0)
    scored = [(p, n / math.sqrt(own * sizes[p])) for p, n in shared_with.items() if own > 0 and sizes.get(p)]
    scored.sort(key=lambda item: (-item[1], item[0]))
    return scored[:limit]
