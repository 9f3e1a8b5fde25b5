"""Per-worker in-memory catalogue: product attributes and popularity, refreshed on a TTL.

The recommendation path reads availability, prices and categories (the request's filters) and the
popular items (the fallback, the top-up, `/products/popular`) from here instead of querying the
database on every request. Popularity is folded in incrementally (interactions with an id above
the last one seen); products are reloaded whole on their own TTL; a periodic full rebuild picks up
interactions that were edited or deleted. What must be exact per request (a customer's own history,
so "exclude purchased") is never served from here.

The rows come from a `CatalogueSource` (the API's store: `api.queries.StoreCatalogue`); this module
knows no database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd

from contracts import EventWeights

log = logging.getLogger(__name__)

NO_CATEGORY = -1  # category ids are >= 0, so -1 stands for NULL in the int64 array
DEFAULT_WEIGHTS: Mapping[str, float] = EventWeights().as_dict()
PRODUCT_FIELDS = ("id", "category_id", "brand", "price", "available")  # a product row, in this order
InteractionRow = tuple[int, int, str]  # (id, product_id, event_type)


@dataclass(frozen=True)
class ProductFilter:
    """Constraints every returned product must satisfy (besides being available)."""

    category_id: int | None = None
    min_price: float | None = None
    max_price: float | None = None


class CatalogueReads(Protocol):
    """The three reads a refresh makes, on one connection (so they see one state of the store)."""

    def fingerprint(self) -> tuple:
        """Aggregates of the products that change when a product is added, removed or edited."""
        ...

    def products(self) -> Iterable[tuple]:
        """Every product as a row of PRODUCT_FIELDS."""
        ...

    def interactions(self, after_id: int) -> Iterable[InteractionRow]:
        """Interactions with an id above after_id, in id order."""
        ...


class CatalogueSource(Protocol):
    """Where the catalogue comes from: `read()` opens one consistent set of reads."""

    def read(self) -> AbstractContextManager[CatalogueReads]: ...


@dataclass(frozen=True)
class CacheConfig:
    """How stale each part of the catalogue may get; 0 checks the database on every request."""

    interactions_ttl_s: float = 1.0  # popularity and co-occurrence pick up new interactions this often
    products_ttl_s: float = 5.0  # new products, price and availability changes show up this often
    rebuild_s: float = 600.0  # full rebuild (edited/deleted interactions); 0 = never
    # Popularity's weight per event type (contracts.EventWeights from RECSYS_EVENT_WEIGHTS), as the nightly
    # training weighs events.
    event_weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_WEIGHTS))


class Products:
    """Immutable snapshot of the products table as arrays, sorted by id."""

    def __init__(self, frame: pd.DataFrame) -> None:
        frame = frame.sort_values("id", kind="stable").reset_index(drop=True)
        self.ids = frame["id"].to_numpy(dtype=np.int64)
        self.category = frame["category_id"].fillna(NO_CATEGORY).to_numpy(dtype=np.int64)
        self.brand = frame["brand"].astype(object).where(frame["brand"].notna(), None).to_numpy(dtype=object)
        self.price = frame["price"].fillna(0.0).to_numpy(dtype=np.float64)
        self.available = frame["available"].fillna(False).to_numpy(dtype=bool)

    @classmethod
    def from_rows(cls, rows: Iterable[tuple]) -> "Products":
        """From rows of PRODUCT_FIELDS (what `CatalogueReads.products` yields)."""
        return cls(pd.DataFrame(list(rows), columns=list(PRODUCT_FIELDS)))

    def __len__(self) -> int:
        return len(self.ids)

    def rows_of(self, product_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, found): where each id sits in the arrays, and whether it is in the catalogue at all."""
        rows = np.searchsorted(self.ids, product_ids)
        found = rows < len(self.ids)
        found[found] = self.ids[rows[found]] == product_ids[found]
        return rows, found

    def mask(self, rows: np.ndarray, where: ProductFilter) -> np.ndarray:
        """Boolean mask over `rows` (positions) of products that are available and pass `where`."""
        keep = self.available[rows]
        if where.category_id is not None:
            keep &= self.category[rows] == where.category_id
        if where.min_price is not None:
            keep &= self.price[rows] >= where.min_price
        if where.max_price is not None:
            keep &= self.price[rows] <= where.max_price
        return keep


class CatalogueIndex:
    """Products plus their popularity; mutated only under CatalogueCache's lock."""

    def __init__(self, products: Products, event_weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> None:
        self.products = products
        self.event_weights = dict(event_weights)
        self.popularity: dict[int, float] = {}
        self.last_interaction_id = 0
        self._order = np.empty(0, dtype=np.int64)
        self._score = np.empty(0, dtype=np.float64)

    def add_interactions(self, rows: Iterable[InteractionRow]) -> int:
        """Fold (id, product_id, event_type) rows in; returns how many."""
        n = 0
        popularity, weights = self.popularity, self.event_weights
        for iid, product_id, event_type in rows:
            n += 1
            self.last_interaction_id = max(self.last_interaction_id, iid)
            popularity[product_id] = popularity.get(product_id, 0.0) + weights.get(event_type, 0.0)
        return n

    def reorder(self) -> None:
        """Recompute the popularity order: score descending, then id (as the SQL reference orders)."""
        ids = self.products.ids
        self._score = np.fromiter((self.popularity.get(p, 0.0) for p in ids.tolist()), dtype=np.float64,
                                  count=len(ids))
        self._order = np.lexsort((ids, -self._score)).astype(np.int64)

    def popular(self, limit: int, where: ProductFilter, exclude: set[int] = frozenset()) -> list[tuple[int, float]]:
        rows = self._order[self.products.mask(self._order, where)]
        if exclude:
            # Only the head can be displaced by excluded ids, so test just enough of it.
            head = rows[: limit + len(exclude)]
            rows = head[~np.isin(self.products.ids[head], np.fromiter(exclude, dtype=np.int64))]
        rows = rows[:limit]
        return list(zip(self.products.ids[rows].tolist(), self._score[rows].tolist()))


class CatalogueCache:
    """Hands out a fresh-enough CatalogueIndex; one per app (so one per gunicorn worker), thread-safe.

    `clock` is injectable so tests move time instead of sleeping.
    """

    def __init__(self, source: CatalogueSource, config: CacheConfig = CacheConfig(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self.config = config
        self.clock = clock
        self.lock = threading.RLock()  # queries and refreshes both hold it: refresh mutates in place
        self._index: CatalogueIndex | None = None
        self._products_at = self._interactions_at = self._built_at = float("-inf")
        self._fingerprint: tuple | None = None

    def invalidate(self) -> None:
        """Reload everything on the next use (e.g. after a bulk load in this process)."""
        with self.lock:
            self._index = None

    def index(self) -> CatalogueIndex:
        """The index, refreshed first where a TTL has run out. Call it with `lock` held while reading."""
        with self.lock:
            now = self.clock()
            cfg = self.config
            if self._index is None or (cfg.rebuild_s > 0 and now - self._built_at >= cfg.rebuild_s):
                self._rebuild(now)
            else:
                if now - self._products_at >= cfg.products_ttl_s:
                    self._reload_products(now)
                if now - self._interactions_at >= cfg.interactions_ttl_s:
                    self._fold_new_interactions(now)
            assert self._index is not None
            return self._index

    def _rebuild(self, now: float) -> None:
        started = time.perf_counter()
        with self.source.read() as read:
            self._fingerprint = read.fingerprint()
            index = CatalogueIndex(Products.from_rows(read.products()), self.config.event_weights)
            n = index.add_interactions(read.interactions(0))
        index.reorder()
        self._index = index
        self._built_at = self._products_at = self._interactions_at = now
        log.info("catalogue index built: %d products, %d interactions in %.0f ms",
                 len(index.products), n, (time.perf_counter() - started) * 1e3)

    def _reload_products(self, now: float) -> None:
        assert self._index is not None
        self._products_at = now
        with self.source.read() as read:
            fingerprint = read.fingerprint()
            if fingerprint == self._fingerprint:
                return
            self._fingerprint = fingerprint
            self._index.products = Products.from_rows(read.products())
        self._index.reorder()

    def _fold_new_interactions(self, now: float) -> None:
        assert self._index is not None
        with self.source.read() as read:
            n = self._index.add_interactions(read.interactions(self._index.last_interaction_id))
        self._interactions_at = now
        if n:
            self._index.reorder()
