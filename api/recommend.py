"""Recommendations: retrieve candidates -> filter -> rank with the ranker -> top k, popular items as fallback.

Candidates come first from the ranker's retrieval model when its bundle ships one (two-tower top-N),
then from the per-worker catalogue index (session co-occurrence, the customer's categories,
popularity); the customer's own history is read from the database on every request, so a purchase
is excluded from the very next recommendation.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd
from sqlalchemy import bindparam, select

from api.candidates import ProductFilter
from api.catalogue import NO_CATEGORY, CatalogueCache, CatalogueIndex, Products
from api.store import Interaction, Store

if TYPE_CHECKING:
    from serving.recommender import TritonRecommender

log = logging.getLogger(__name__)

CANDIDATES = 200  # products the ranker scores per request
CATALOGUE_SOURCES = ("co_occurring", "in_categories", "popular")  # _pool's lists, in its order
RETRIEVED = 100  # of those, at most this many from the retrieval model, ahead of the catalogue sources


class Ranker(Protocol):
    """Scores products for a customer; raises serving.errors.RankerUnavailable when it cannot."""

    def score(self, customer_id: int, products: pd.DataFrame) -> np.ndarray:
        """products: columns product_id, category_id, brand, price; returns (len(products),) float scores."""
        ...


def ranker_unavailable_error() -> type[Exception]:
    """serving.errors.RankerUnavailable, imported lazily so the API runs where serving is not installed."""
    try:
        return importlib.import_module("serving.errors").RankerUnavailable
    except (ImportError, AttributeError):
        log.warning("serving.errors.RankerUnavailable not importable; only ranker errors of that name fall back")
        return _MissingRankerUnavailable


class _MissingRankerUnavailable(Exception):
    """Placeholder that never matches; stands in while serving.errors is absent."""


@dataclass(frozen=True)
class Request:
    customer_id: int
    k: int
    where: ProductFilter
    exclude: str = "seen"  # "seen", "purchased" or "none": the evaluation excludes the same (RECSYS_EXCLUDE)


@dataclass(frozen=True)
class Result:
    items: list[tuple[int, float]]  # (product_id, score), best first, distinct
    ranker: str  # "triton" or "popular"
    fallback: bool
    explanations: list[dict] = field(default_factory=list)  # per item, serving.explain.Explanation.as_dict()


def _popular_why(n: int, where: ProductFilter) -> list[dict]:
    """Explanations of n popular items (the fallback and the top-up): popular, in the filtered category."""
    from serving.explain import popular

    return [popular(where.category_id, "popular").as_dict() for _ in range(n)]


def _popular_result(items: list[tuple[int, float]], where: ProductFilter, fallback: bool) -> Result:
    return Result(items, "popular", fallback, _popular_why(len(items), where))


@dataclass(frozen=True)
class History:
    """What one customer did, read fresh per request through (customer_id, event_type, product_id)."""

    touched: set[int]
    purchased: set[int]
    events: list[tuple[int, str]]  # (product_id, event_type) in id order: the served recommender's input

    def excluded(self, exclude: str) -> set[int]:
        return {"seen": self.touched, "purchased": self.purchased}.get(exclude, set())


HISTORY = select(Interaction.product_id, Interaction.event_type).where(
    Interaction.customer_id == bindparam("customer_id")).order_by(Interaction.id)


def read_history(store: Store, customer_id: int) -> History:
    touched: set[int] = set()
    purchased: set[int] = set()
    with store.engine.connect() as conn:
        events = [(int(p), str(t)) for p, t in conn.execute(HISTORY, {"customer_id": customer_id}).all()]
    for product_id, event_type in events:
        touched.add(product_id)
        if event_type == "purchase":
            purchased.add(product_id)
    return History(touched, purchased, events)


def _retrieved(index: CatalogueIndex, retrieved: list[int], req: Request, exclude: set[int]) -> list[int]:
    """Retrieval candidates that are in the catalogue, available, pass the request's filter and not excluded."""
    if not retrieved:
        return []
    ids = np.asarray(retrieved, dtype=np.int64)
    rows, found = index.products.rows_of(ids)
    keep = found.copy()
    keep[found] = index.products.mask(rows[found], req.where)
    return [pid for pid in ids[keep].tolist() if pid not in exclude]


def _pool(index: CatalogueIndex, history: History, req: Request, exclude: set[int],
          retrieved: Sequence[int] = (), origin: dict[int, str] | None = None) -> list[int]:
    """Up to CANDIDATES distinct products: the retrieval model's first, then the three catalogue sources
    in turn (most personal first), so each is represented however long the others' lists are;
    excluded products left out. `origin`, when given, gets each product's source (its first list)."""
    ids: dict[int, None] = dict.fromkeys(_retrieved(index, list(retrieved), req, exclude)[:RETRIEVED])
    if origin is not None:
        origin.update(dict.fromkeys(ids, "retrieval"))
    sources = [
        index.co_occurring(history.touched, CANDIDATES, req.where),
        index.in_categories(index.categories_of(history.touched), CANDIDATES, req.where),
        [pid for pid, _ in index.popular(CANDIDATES, req.where, exclude)],
    ]
    # insertion-ordered dict keeps candidates distinct
    for batch in zip_longest(*sources):
        if len(ids) >= CANDIDATES:
            break
        for name, pid in zip(CATALOGUE_SOURCES, batch):
            if pid is not None and pid not in exclude:
                ids[pid] = None
                if origin is not None:
                    origin.setdefault(pid, name)
    return list(ids)[:CANDIDATES]


def _catalogue_why(ranked: list[tuple[int, float]], origin: dict[int, str], products: Products,
                   history: History, where: ProductFilter) -> list[dict]:
    """Explanations of the catalogue path's items by the list that brought each into the pool
    (serving.explain.catalogue): a category's items name the customer's products in that category."""
    from serving.explain import catalogue

    rows, found = products.rows_of(np.asarray([p for p, _ in ranked], dtype=np.int64))
    category = np.where(found, products.category[np.where(found, rows, 0)], NO_CATEGORY)
    touched = np.fromiter(dict.fromkeys(p for p, _ in reversed(history.events)), dtype=np.int64)  # latest first
    t_rows, t_found = products.rows_of(touched)
    t_category = np.where(t_found, products.category[np.where(t_found, t_rows, 0)], NO_CATEGORY)
    out = []
    for (pid, _), cat in zip(ranked, category.tolist()):
        name = origin.get(pid, "popular")
        same = touched[t_category == cat].tolist() if name == "in_categories" and cat != NO_CATEGORY else []
        out.append(catalogue(name, None if cat == NO_CATEGORY else int(cat), same, where.category_id).as_dict())
    return out


class Recommender:
    """Ties the catalogue cache, the customer's history and the ranker together for one app."""

    def __init__(self, store: Store, cache: CatalogueCache) -> None:
        self.store = store
        self.cache = cache
        self._prepared: set[int] = set()  # ids of rankers already listening to catalogue reloads
        # (catalogue snapshot, served items, rows, found) of the last served-path request
        self._rows_cache: tuple[Products, np.ndarray, np.ndarray, np.ndarray] | None = None

    def _attach(self, ranker: Ranker | None) -> None:
        """Let a ranker that caches encodings (api.ranking.EncodedRanker) prepare on each catalogue reload."""
        prepare = getattr(ranker, "prepare", None)
        if prepare is None or id(ranker) in self._prepared:
            return
        with self.cache.lock:
            self._prepared.add(id(ranker))
            self.cache.listeners.append(prepare)
            try:
                prepare(self.cache.index())
            except Exception:  # unprepared, the ranker still encodes what it meets, request by request
                log.exception("ranker %r could not prepare on the catalogue", ranker)

    def popular(self, k: int, where: ProductFilter = ProductFilter(),
                exclude: set[int] = frozenset()) -> list[tuple[int, float]]:
        with self.cache.lock:
            return self.cache.index().popular(k, where, exclude)

    def recommend(self, req: Request, ranker: Ranker | None) -> Result:
        history = read_history(self.store, req.customer_id)
        exclude = history.excluded(req.exclude)
        if ranker is None or not history.touched:
            return _popular_result(self.popular(req.k, req.where, exclude), req.where, False)
        if hasattr(ranker, "recommender"):  # serving.recommender.TritonRecommender: the evaluated path
            return self._recommend_served(req, ranker, history, exclude)
        self._attach(ranker)
        retrieved = self._retrieve(ranker, req.customer_id, exclude)
        with self.cache.lock:
            index = self.cache.index()
            origin: dict[int, str] = {}
            pool = _pool(index, history, req, exclude, retrieved, origin)
            if not pool:
                return _popular_result(self.popular(req.k, req.where, exclude), req.where, False)
            products = index.products  # an immutable snapshot: safe to use once the lock is released
            rows, _ = products.rows_of(np.asarray(pool, dtype=np.int64))
        try:
            scores = self._score(ranker, req.customer_id, products, rows)
        except ranker_unavailable_error() as exc:
            log.warning("ranker unavailable for customer %s, serving popular items: %s", req.customer_id, exc)
            return _popular_result(self.popular(req.k, req.where, exclude), req.where, True)
        if scores.shape[0] != len(rows):
            raise ValueError(f"ranker returned {scores.shape[0]} scores for {len(rows)} products")
        order = np.argsort(-scores, kind="stable")[: req.k]
        ids = products.ids[rows]
        ranked = [(int(ids[i]), float(scores[i])) for i in order]
        why = _catalogue_why(ranked, origin, products, history, req.where)
        return self._explained_top_up(ranked, why, req, exclude)

    def _explained_top_up(self, ranked: list[tuple[int, float]], why: list[dict], req: Request,
                          exclude: set[int]) -> Result:
        """A ranked Result, topped up with popular items (explained as popular) when short of k."""
        items = self._top_up(ranked, req, exclude)
        return Result(items, "triton", False, why + _popular_why(len(items) - len(ranked), req.where))

    def _top_up(self, ranked: list[tuple[int, float]], req: Request, exclude: set[int]) -> list[tuple[int, float]]:
        """A list short of k while eligible products remain gets the most popular of them appended."""
        if len(ranked) >= req.k:
            return ranked
        return ranked + self.popular(req.k - len(ranked), req.where, exclude | {p for p, _ in ranked})

    def _recommend_served(self, req: Request, served: "TritonRecommender", history: History,
                          exclude: set[int]) -> Result:
        """Candidates, exclusions and filters, ranking: `serving.recommender`, as the evaluator runs it;
        a list short of k (few eligible products known to the model) is topped up with popular ones."""
        with self.cache.lock:
            products = self.cache.index().products
        rows, found = self._served_rows(products, served.recommender.items)
        allowed = found.copy()
        allowed[found] = products.mask(rows[found], req.where)
        pids = np.fromiter((p for p, _ in history.events), dtype=np.int64, count=len(history.events))
        kinds = np.array([t for _, t in history.events], dtype=object)
        try:
            explained = served.recommend_explained(pids, kinds, allowed, np.fromiter(exclude, dtype=np.int64),
                                                   req.k, req.where.category_id)
        except ranker_unavailable_error() as exc:
            log.warning("ranker unavailable for customer %s, serving popular items: %s", req.customer_id, exc)
            return _popular_result(self.popular(req.k, req.where, exclude), req.where, True)
        return self._explained_top_up([(p, s) for p, s, _ in explained], [e.as_dict() for _, _, e in explained],
                                      req, exclude)

    def _served_rows(self, products: Products, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`products.rows_of(items)`, found once per catalogue snapshot and recommender (both immutable)."""
        cached = self._rows_cache
        if cached is None or cached[0] is not products or cached[1] is not items:
            cached = self._rows_cache = (products, items, *products.rows_of(items))  # one tuple: thread-safe swap
        return cached[2], cached[3]

    def _retrieve(self, ranker: Ranker, customer_id: int, exclude: set[int]) -> list[int]:
        """The ranker's retrieval candidates (api.ranking.EncodedRanker.candidates); [] when it has none or fails."""
        candidates = getattr(ranker, "candidates", None)
        if candidates is None:
            return []
        with self.cache.lock:
            products = self.cache.index().products  # immutable snapshot, read after the lock is released
        try:
            # Ask for extra: some retrieved products may be unavailable or filtered out of this request.
            return list(candidates(customer_id, products, 2 * RETRIEVED, exclude))
        except Exception as exc:  # retrieval is an extra source; the catalogue sources still answer
            log.warning("retrieval candidates failed for customer %s: %s", customer_id, exc)
            return []

    @staticmethod
    def _score(ranker: Ranker, customer_id: int, products: Products, rows: np.ndarray) -> np.ndarray:
        # A ranker that reads the catalogue arrays directly (EncodedRanker) skips building a DataFrame.
        score_catalogue = getattr(ranker, "score_catalogue", None)
        if score_catalogue is not None:
            scores = score_catalogue(customer_id, products, rows)
        else:
            scores = ranker.score(customer_id, products.features(products.ids[rows]))
        return np.asarray(scores, dtype=np.float64).reshape(-1)
