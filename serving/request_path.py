"""One recommendation request: the customer's history -> candidates -> filter -> rank -> top k, popular
items as the fallback. What the API's `/customers/<id>/recommendations` calls.

With the deployed served recommender (`serving.recommender.TritonRecommender`, every bundle the
nightly run builds, an experiment's arms included) the candidates, filters and ranking are that
recommender's, as the nightly evaluator runs it in batch. Any other `Ranker` (no deployed bundle
makes one: the tests' rankers) scores a pool from the per-worker catalogue index
(`serving.catalogue`: session co-occurrence, the customer's categories, popularity): the catalogue
path. The history is read by the caller on every request
(`api.queries.history`), so a purchase is excluded from the very next recommendation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import zip_longest
from typing import TYPE_CHECKING, Protocol

import numpy as np
import pandas as pd

from serving.catalogue import NO_CATEGORY, CatalogueCache, CatalogueIndex, ProductFilter, Products
from serving.errors import RankerUnavailable

if TYPE_CHECKING:
    from serving.recommender import TritonRecommender

log = logging.getLogger(__name__)

CANDIDATES = 200  # products the ranker scores per request
CATALOGUE_SOURCES = ("co_occurring", "in_categories", "popular")  # _pool's lists, in its order


class Ranker(Protocol):
    """Scores products for a customer; raises serving.errors.RankerUnavailable when it cannot."""

    def score(self, customer_id: int, products: pd.DataFrame) -> np.ndarray:
        """products: columns product_id, category_id, brand, price; returns (len(products),) float scores."""
        ...


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


def limit_compute_threads(n: int) -> None:
    """Cap torch's intra-op pool and the process's BLAS and OpenMP pools at n threads, from now on.

    An API worker's requests take turns on one core; torch's and BLAS's default pools (a thread per core)
    in every worker make the workers' small per-request products contend for the same cores."""
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(n)
    threadpool_limits(n)


def _popular_why(n: int, where: ProductFilter) -> list[dict]:
    """Explanations of n popular items (the fallback and the top-up): popular, in the filtered category."""
    from serving.explain import popular

    return [popular(where.category_id, "popular").as_dict() for _ in range(n)]


def _popular_result(items: list[tuple[int, float]], where: ProductFilter, fallback: bool) -> Result:
    return Result(items, "popular", fallback, _popular_why(len(items), where))


@dataclass(frozen=True)
class History:
    """What one customer did, read fresh per request."""

    touched: set[int]
    purchased: set[int]
    events: list[tuple[int, str]]  # (product_id, event_type) in id order: the served recommender's input

    @classmethod
    def of(cls, events: Iterable[tuple[int, str]]) -> "History":
        """From the customer's (product_id, event_type) in id order."""
        events = list(events)
        return cls({p for p, _ in events}, {p for p, t in events if t == "purchase"}, events)

    def excluded(self, exclude: str) -> set[int]:
        return {"seen": self.touched, "purchased": self.purchased}.get(exclude, set())


def _pool(index: CatalogueIndex, history: History, req: Request, exclude: set[int],
          origin: dict[int, str] | None = None) -> list[int]:
    """Up to CANDIDATES distinct products from the three catalogue sources in turn (most personal
    first), so each is represented however long the others' lists are; excluded products left out.
    `origin`, when given, gets each product's source (its first list)."""
    ids: dict[int, None] = {}
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


class RequestRecommender:
    """Ties the catalogue cache, the customer's history and the ranker together for one app."""

    def __init__(self, cache: CatalogueCache) -> None:
        self.cache = cache
        # (catalogue snapshot, served items, rows, found) of the last served-path request
        self._rows_cache: tuple[Products, np.ndarray, np.ndarray, np.ndarray] | None = None

    def popular(self, k: int, where: ProductFilter = ProductFilter(),
                exclude: set[int] = frozenset()) -> list[tuple[int, float]]:
        with self.cache.lock:
            return self.cache.index().popular(k, where, exclude)

    def recommend(self, req: Request, history: History, ranker: Ranker | None) -> Result:
        """req's top k for the customer whose history is given; popular items without a ranker or history."""
        exclude = history.excluded(req.exclude)
        if ranker is None or not history.touched:
            return _popular_result(self.popular(req.k, req.where, exclude), req.where, False)
        if hasattr(ranker, "recommender"):  # serving.recommender.TritonRecommender: the evaluated path
            return self._recommend_served(req, ranker, history, exclude)
        with self.cache.lock:
            index = self.cache.index()
            origin: dict[int, str] = {}
            pool = _pool(index, history, req, exclude, origin)
            if not pool:
                return _popular_result(self.popular(req.k, req.where, exclude), req.where, False)
            products = index.products  # an immutable snapshot: safe to use once the lock is released
            rows, _ = products.rows_of(np.asarray(pool, dtype=np.int64))
        try:
            scores = self._score(ranker, req.customer_id, products, rows)
        except RankerUnavailable as exc:
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
        except RankerUnavailable as exc:
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

    @staticmethod
    def _score(ranker: Ranker, customer_id: int, products: Products, rows: np.ndarray) -> np.ndarray:
        scores = ranker.score(customer_id, products.features(products.ids[rows]))
        return np.asarray(scores, dtype=np.float64).reshape(-1)
