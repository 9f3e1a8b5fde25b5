"""One recommendation request: the customer's history -> candidates -> filter -> rank -> top k, popular
items as the fallback and the top-up. What the API's `/customers/<id>/recommendations` calls.

The candidates, filters and ranking are the `ServedRecommender`'s (every bundle the nightly run
builds, an experiment's arms included, is served by `serving.recommender.TritonRecommender`), as the
nightly evaluator runs them in batch; this module masks the recommender's items by the per-worker
catalogue (`serving.catalogue`: availability, the request's filters) and tops a short list up with
popular items. The history is read by the caller on every request (`api.queries.history`), so a
purchase is excluded from the very next recommendation.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from serving.catalogue import CatalogueCache, ProductFilter, Products
from serving.errors import RankerUnavailable

if TYPE_CHECKING:
    from serving.explain import Explanation

log = logging.getLogger(__name__)


class ServedRecommender(Protocol):
    """What the request path asks of a recommender: `serving.recommender.TritonRecommender` in every
    deployment (the tests' recommenders implement it too)."""

    @property
    def items(self) -> np.ndarray:
        """(n_items,) int64 product ids it can recommend, in the order `recommend_explained`'s `allowed` masks.
        The same array object while the recommender lives (the path caches its catalogue rows by identity)."""
        ...

    def recommend_explained(self, product_ids: np.ndarray, event_types: np.ndarray, allowed: np.ndarray,
                            excluded_ids: np.ndarray, k: int,
                            category_id: int | None = None) -> list[tuple[int, float, Explanation]]:
        """Up to k (product_id, score, explanation), best first, distinct, from the customer's events
        (product_ids, event_types in id order); only items where `allowed` (over `items`) is True and
        never `excluded_ids`; category_id: the request's category filter, for the explanations.
        Raises serving.errors.RankerUnavailable when it cannot rank now."""
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


class RequestRecommender:
    """Ties the catalogue cache, the customer's history and the served recommender together for one app."""

    def __init__(self, cache: CatalogueCache) -> None:
        self.cache = cache
        # (catalogue snapshot, recommender items, rows, found) of the last request
        self._rows_cache: tuple[Products, np.ndarray, np.ndarray, np.ndarray] | None = None

    def popular(self, k: int, where: ProductFilter = ProductFilter(),
                exclude: set[int] = frozenset()) -> list[tuple[int, float]]:
        with self.cache.lock:
            return self.cache.index().popular(k, where, exclude)

    def recommend(self, req: Request, history: History, served: ServedRecommender | None) -> Result:
        """req's top k for the customer whose history is given: the served recommender's candidates,
        exclusions and filters, ranking (as the evaluator runs them); a list short of k (few eligible
        products known to the model) is topped up with popular ones. Popular items without a
        recommender or history, and (flagged as a fallback) when it cannot rank now."""
        exclude = history.excluded(req.exclude)
        if served is None or not history.touched:
            return _popular_result(self.popular(req.k, req.where, exclude), req.where, False)
        with self.cache.lock:
            products = self.cache.index().products  # an immutable snapshot: safe to use once the lock is released
        rows, found = self._served_rows(products, served.items)
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
        ranked = [(p, s) for p, s, _ in explained]
        items = self._top_up(ranked, req, exclude)
        why = [e.as_dict() for _, _, e in explained] + _popular_why(len(items) - len(ranked), req.where)
        return Result(items, "triton", False, why)

    def _top_up(self, ranked: list[tuple[int, float]], req: Request, exclude: set[int]) -> list[tuple[int, float]]:
        """A list short of k while eligible products remain gets the most popular of them appended."""
        if len(ranked) >= req.k:
            return ranked
        return ranked + self.popular(req.k - len(ranked), req.where, exclude | {p for p, _ in ranked})

    def _served_rows(self, products: Products, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`products.rows_of(items)`, found once per catalogue snapshot and recommender (both immutable)."""
        cached = self._rows_cache
        if cached is None or cached[0] is not products or cached[1] is not items:
            cached = self._rows_cache = (products, items, *products.rows_of(items))  # one tuple: thread-safe swap
        return cached[2], cached[3]
