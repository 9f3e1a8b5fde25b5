"""Reads of the store that recommendations need: the catalogue for the per-worker index, a customer's
history, and similar products (item-item cosine over shared sessions and customers, in SQL)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy import Float, Select, String, bindparam, case, cast, func, literal, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, aliased

from api.store import Interaction, Product, Store
from serving.catalogue import InteractionRow

FETCH_CHUNK = 20_000
HISTORY = select(Interaction.product_id, Interaction.event_type).where(
    Interaction.customer_id == bindparam("customer_id")).order_by(Interaction.id)


def history(store: Store, customer_id: int) -> list[tuple[int, str]]:
    """The customer's (product_id, event_type) in id order, read fresh: a purchase counts at once."""
    with store.engine.connect() as conn:
        return [(int(p), str(t)) for p, t in conn.execute(HISTORY, {"customer_id": customer_id}).all()]


def products_fingerprint(conn: Connection) -> tuple:
    """Aggregates that change when a product is added, removed or edited (one scan, no rows sent back).

    An edit that keeps every aggregate equal (a brand renamed to one of the same length) is missed
    until the next full rebuild (serving.catalogue.CacheConfig.rebuild_s).
    """
    # Sums run in floating point: REES46 category ids near 2**63 overflow an integer sum in SQLite.
    stmt = select(func.count(), func.max(Product.id), func.sum(Product.price),
                  func.sum(case((Product.available.is_(True), 1), else_=0)),
                  func.sum(cast(Product.category_id, Float)), func.sum(func.length(Product.brand)),
                  func.sum(cast(Product.id, Float) * Product.price))
    return tuple(conn.execute(stmt).one())


def product_rows(conn: Connection) -> list[tuple]:
    """Every product as (id, category_id, brand, price, available): serving.catalogue.PRODUCT_FIELDS."""
    stmt = select(Product.id, Product.category_id, Product.brand, Product.price, Product.available)
    return [tuple(row) for row in conn.execute(stmt).all()]


def interactions_after(conn: Connection, after_id: int) -> Iterable[InteractionRow]:
    """Interactions with id > after_id in id order, streamed in chunks (Core, no ORM objects)."""
    stmt = (select(Interaction.id, Interaction.product_id, Interaction.event_type)
            .where(Interaction.id > after_id).order_by(Interaction.id))
    result = conn.execute(stmt)
    while chunk := result.fetchmany(FETCH_CHUNK):
        yield from chunk


@dataclass(frozen=True)
class _ConnectionReads:
    """serving.catalogue.CatalogueReads on one open connection."""

    conn: Connection

    def fingerprint(self) -> tuple:
        return products_fingerprint(self.conn)

    def products(self) -> list[tuple]:
        return product_rows(self.conn)

    def interactions(self, after_id: int) -> Iterable[InteractionRow]:
        return interactions_after(self.conn, after_id)


@dataclass(frozen=True)
class StoreCatalogue:
    """The store as a serving.catalogue.CatalogueSource: each refresh reads on one connection."""

    store: Store

    @contextmanager
    def read(self) -> Iterator[_ConnectionReads]:
        with self.store.engine.connect() as conn:
            yield _ConnectionReads(conn)


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
