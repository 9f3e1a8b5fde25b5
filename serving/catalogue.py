"""Per-worker in-memory catalogue: product attributes, popularity and session co-occurrence, refreshed on a TTL.

The recommendation path reads candidates from here instead of aggregating the interactions table on
every request. Popularity and co-occurrence are folded in incrementally (interactions with an id above
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
from array import array
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
MAX_SESSIONS = 1000  # sessions scanned for co-occurrence, bounding the work on busy products
PRODUCT_FIELDS = ("id", "category_id", "brand", "price", "available")  # a product row, in this order
InteractionRow = tuple[int, int, int, str, "str | None"]  # (id, customer_id, product_id, event_type, session)


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
        # Dense codes per category, so "in these categories" is a table lookup rather than np.isin.
        codes, uniques = pd.factorize(self.category)
        self.category_code = codes.astype(np.int64)
        self.category_codes = {int(c): i for i, c in enumerate(uniques)}

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

    def features(self, product_ids: list[int] | np.ndarray) -> pd.DataFrame:
        """What a ranker scores: product_id, category_id (nullable Int64), brand, price, in the given order."""
        rows, found = self.rows_of(np.asarray(product_ids, dtype=np.int64))
        if not found.all():
            raise KeyError(f"products {np.asarray(product_ids)[~found][:5].tolist()} are not in the catalogue")
        category = self.category[rows]
        return pd.DataFrame({
            "product_id": self.ids[rows],
            "category_id": pd.arrays.IntegerArray(category, category == NO_CATEGORY),
            "brand": self.brand[rows],
            "price": self.price[rows],
        })


def _ranges(indptr: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Positions indptr[r]..indptr[r+1]-1 of every r in `rows`, concatenated, without a Python loop."""
    starts, lengths = indptr[rows], indptr[rows + 1] - indptr[rows]
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(lengths.sum())


class Sessions:
    """Which products appeared in which sessions, kept as pairs and packed on demand into two CSR layouts."""

    def __init__(self) -> None:
        self.session_code: dict[str, int] = {}
        self.product_code: dict[int, int] = {}
        self.code_pid = array("q")
        self._pairs_s = array("q")  # appended as interactions arrive; duplicates are dropped when packed
        self._pairs_p = array("q")
        self._packed: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None

    def add(self, session: str, product_id: int) -> None:
        s = self.session_code.setdefault(session, len(self.session_code))
        p = self.product_code.get(product_id)
        if p is None:
            p = self.product_code[product_id] = len(self.code_pid)
            self.code_pid.append(product_id)
        self._pairs_s.append(s)
        self._pairs_p.append(p)
        self._packed = None

    def _pack(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(session -> product codes) and (product code -> sessions) as indptr/indices arrays."""
        if self._packed is None:
            n_s, n_p = len(self.session_code), len(self.code_pid)
            key = np.unique(np.frombuffer(self._pairs_s, dtype=np.int64) * n_p
                            + np.frombuffer(self._pairs_p, dtype=np.int64))
            s, p = key // n_p, key % n_p  # sorted by session, then product
            session_ptr = np.concatenate([[0], np.cumsum(np.bincount(s, minlength=n_s))])
            product_ptr = np.concatenate([[0], np.cumsum(np.bincount(p, minlength=n_p))])
            self._packed = (session_ptr, p, product_ptr, s[np.argsort(p, kind="stable")])
        return self._packed

    def shared_counts(self, product_ids: Iterable[int], max_sessions: int) -> tuple[np.ndarray, np.ndarray]:
        """(product codes, number of shared sessions) over the first `max_sessions` sessions holding any of
        `product_ids`; the given products themselves are left out. `code_pid[code]` is a code's product id."""
        codes = [self.product_code[p] for p in product_ids if p in self.product_code]
        if not codes:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        session_ptr, session_products, product_ptr, product_sessions = self._pack()
        code_arr = np.asarray(codes, dtype=np.int64)
        chosen = np.zeros(len(self.session_code), dtype=bool)
        chosen[product_sessions[_ranges(product_ptr, code_arr)]] = True
        sessions = np.flatnonzero(chosen)[:max_sessions]
        counts = np.bincount(session_products[_ranges(session_ptr, sessions)], minlength=len(self.code_pid))
        counts[codes] = 0
        hit = np.flatnonzero(counts)
        return hit, counts[hit]


class CatalogueIndex:
    """Products plus interaction aggregates; mutated only under CatalogueCache's lock."""

    def __init__(self, products: Products, event_weights: Mapping[str, float] = DEFAULT_WEIGHTS) -> None:
        self.products = products
        self.event_weights = dict(event_weights)
        self.popularity: dict[int, float] = {}
        self.sessions = Sessions()
        self.customers: set[int] = set()  # customers with at least one interaction
        self.last_interaction_id = 0
        self._order = np.empty(0, dtype=np.int64)
        self._score = np.empty(0, dtype=np.float64)
        self._code_rows = np.empty(0, dtype=np.int64)
        self._code_rows_of: tuple[Products, int] | None = None  # (products, number of session codes) they map

    def add_interactions(self, rows: Iterable[InteractionRow]) -> int:
        """Fold (id, customer_id, product_id, event_type, session) rows in; returns how many."""
        n = 0
        popularity, customers, sessions, weights = self.popularity, self.customers, self.sessions, self.event_weights
        for iid, customer_id, product_id, event_type, session in rows:
            n += 1
            self.last_interaction_id = max(self.last_interaction_id, iid)
            customers.add(customer_id)
            popularity[product_id] = popularity.get(product_id, 0.0) + weights.get(event_type, 0.0)
            if session is not None:
                sessions.add(session, product_id)
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

    def categories_of(self, product_ids: Iterable[int]) -> set[int]:
        """Categories of the given products that are in the catalogue (NULL categories left out)."""
        rows, found = self.products.rows_of(np.fromiter(product_ids, dtype=np.int64))
        return set(self.products.category[rows[found]].tolist()) - {NO_CATEGORY}

    def in_categories(self, categories: set[int], limit: int, where: ProductFilter) -> list[int]:
        """Popular products from `categories`, best first."""
        if not categories:
            return []
        wanted = np.zeros(len(self.products.category_codes) + 1, dtype=bool)
        wanted[[self.products.category_codes[c] for c in categories if c in self.products.category_codes]] = True
        rows = self._order[self.products.mask(self._order, where)]
        rows = rows[wanted[self.products.category_code[rows]]]
        return self.products.ids[rows[:limit]].tolist()

    def _rows_of_codes(self) -> np.ndarray:
        """Catalogue row of each session product code (-1: not in the catalogue), remapped only when the
        products or the set of codes changed, so a request looks its candidates up by indexing."""
        n_codes = len(self.sessions.code_pid)
        if self._code_rows_of is None or self._code_rows_of[0] is not self.products or self._code_rows_of[1] != n_codes:
            rows, found = self.products.rows_of(np.frombuffer(self.sessions.code_pid, dtype=np.int64))
            self._code_rows = np.where(found, rows, -1)
            self._code_rows_of = (self.products, n_codes)
        return self._code_rows

    def co_occurring(self, touched: set[int], limit: int, where: ProductFilter) -> list[int]:
        """Products sharing sessions with `touched` (not themselves touched), by number of shared sessions."""
        codes, counts = self.sessions.shared_counts(touched, MAX_SESSIONS)
        rows = self._rows_of_codes()[codes]
        found = rows >= 0
        rows, counts = rows[found], counts[found]
        keep = self.products.mask(rows, where)
        rows, counts = rows[keep], counts[keep]
        if len(rows) > limit:  # only counts up to the limit-th largest can make the cut: sort just those
            cut = len(counts) - limit
            head = counts >= np.partition(counts, cut)[cut]
            rows, counts = rows[head], counts[head]
        order = np.lexsort((self.products.ids[rows], -counts))[:limit]
        return self.products.ids[rows[order]].tolist()


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
        log.info("catalogue index built: %d products, %d interactions, %d sessions in %.0f ms",
                 len(index.products), n, len(index.sessions.session_code), (time.perf_counter() - started) * 1e3)

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
