"""Small served recommenders for the API and experiment tests: `serving.request_path.ServedRecommender`
without Triton, the path every deployment takes. Each scores a fixed list of products from the
customer's events; `TableRecommender` does the masking, exclusion and cut to k as the real one does."""

from __future__ import annotations

import numpy as np

from serving.explain import Explanation


class TableRecommender:
    """Recommends among `items` by `scores(product_ids, event_types)`, best first, ties to the earlier item."""

    def __init__(self, items: list[int] | np.ndarray) -> None:
        self._items = np.asarray(items, dtype=np.int64)

    @property
    def items(self) -> np.ndarray:
        return self._items

    def scores(self, product_ids: np.ndarray, event_types: np.ndarray) -> np.ndarray:
        """(len(items),) float scores for the customer whose events these are."""
        raise NotImplementedError

    def recommend_explained(self, product_ids: np.ndarray, event_types: np.ndarray, allowed: np.ndarray,
                            excluded_ids: np.ndarray, k: int,
                            category_id: int | None = None) -> list[tuple[int, float, Explanation]]:
        scores = np.asarray(self.scores(product_ids, event_types), dtype=np.float64)
        if scores.shape != self._items.shape:
            raise ValueError(f"{type(self).__name__} gave {scores.shape} scores for {len(self._items)} items")
        eligible = np.flatnonzero(np.asarray(allowed, dtype=bool) & ~np.isin(self._items, excluded_ids))
        best = eligible[np.argsort(-scores[eligible], kind="stable")[:k]]
        why = Explanation(type(self).__name__, "recommended", "Recommended for you")
        return [(int(self._items[i]), float(scores[i]), why) for i in best]
