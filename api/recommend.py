"""Recommendations: retrieve candidates -> filter -> rank with the ranker -> top k, popular items as fallback."""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from api import candidates
from api.candidates import ProductFilter
from api.store import Product

log = logging.getLogger(__name__)

CANDIDATES_PER_SOURCE = 200


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
    exclude_purchased: bool


@dataclass(frozen=True)
class Result:
    items: list[tuple[int, float]]  # (product_id, score), best first, distinct
    ranker: str  # "triton" or "popular"
    fallback: bool


def recommend(session: Session, req: Request, ranker: Ranker | None) -> Result:
    exclude = candidates.purchased(session, req.customer_id) if req.exclude_purchased else set()
    if ranker is None or not candidates.has_history(session, req.customer_id):
        return Result(candidates.popular(session, req.k, req.where, exclude), "popular", False)

    ids: dict[int, None] = {}  # insertion-ordered set keeps candidates distinct
    for pid, _ in candidates.popular(session, CANDIDATES_PER_SOURCE, req.where, exclude):
        ids[pid] = None
    for pid in candidates.in_customer_categories(session, req.customer_id, CANDIDATES_PER_SOURCE, req.where):
        ids[pid] = None
    for pid in candidates.co_occurring(session, req.customer_id, CANDIDATES_PER_SOURCE, req.where):
        ids[pid] = None
    pool = [pid for pid in ids if pid not in exclude]
    if not pool:
        return Result([], "triton", False)

    frame = _features(session, pool)
    try:
        scores = np.asarray(ranker.score(req.customer_id, frame), dtype=np.float64).reshape(-1)
    except ranker_unavailable_error() as exc:
        log.warning("ranker unavailable for customer %s, serving popular items: %s", req.customer_id, exc)
        return Result(candidates.popular(session, req.k, req.where, exclude), "popular", True)
    if scores.shape[0] != len(frame):
        raise ValueError(f"ranker returned {scores.shape[0]} scores for {len(frame)} products")
    order = np.argsort(-scores, kind="stable")[: req.k]
    items = [(int(frame.product_id.iat[i]), float(scores[i])) for i in order]
    return Result(items, "triton", False)


def _features(session: Session, product_ids: list[int]) -> pd.DataFrame:
    rows = session.execute(
        select(Product.id, Product.category_id, Product.brand, Product.price).where(Product.id.in_(product_ids))
    ).all()
    frame = pd.DataFrame(rows, columns=["product_id", "category_id", "brand", "price"])
    # Keep the retrieval order so equal scores break ties by candidate rank.
    position = {pid: i for i, pid in enumerate(product_ids)}
    frame["_pos"] = frame.product_id.map(position)
    frame = frame.sort_values("_pos").drop(columns="_pos").reset_index(drop=True)
    frame["product_id"] = frame.product_id.astype("int64")
    frame["category_id"] = frame.category_id.astype("Int64")
    frame["price"] = frame.price.astype("float64")
    return frame
