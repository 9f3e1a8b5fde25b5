"""Why each recommended item is there: the candidate source that put it in the pool, and the evidence.

Computed only for the k items a customer is shown, from the source scores the served path already
computed (`Recommender.recommend`): per item, the source that ranks it best among the items the
request allows is its origin (the pool takes each source's best items first). What the front end
gets per item:

| source     | kind                  | evidence (at most 3 product ids)                                     |
|------------|-----------------------|----------------------------------------------------------------------|
| item_knn   | because_you_viewed    | history items h with the largest history[h] * S[h, i] (their share of the item's score) |
| ease       | goes_with_your_items  | history items h with the largest history[h] * B[h, i]                 |
| als        | similar_to_history    | history items with the largest share of the fold-in score (Hu et al. 2008, section 5): near the item in the customer's factor metric |
| popularity | popular / popular_in_category | none: the item is among the most interacted-with (in the requested category) |
| other      | recommended           | none (a source without a per-item decomposition)                      |

Only history items that add to the score (a positive share) are evidence; a source whose score has
no positive share from the history says so with an empty list. The reason text says what the
customer did with the first evidence item (viewed, added to the cart, bought).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

MAX_EVIDENCE = 3
POPULARITY = "popularity"
KINDS: dict[str, str] = {
    "item_knn": "because_you_viewed",
    "ease": "goes_with_your_items",
    "als": "similar_to_history",
    POPULARITY: "popular",
}
ALL_KINDS = ("because_you_viewed", "goes_with_your_items", "similar_to_history", "popular", "popular_in_category",
             "recommended")
VERBS = {"purchase": "bought", "cart": "added to your cart", "view": "viewed"}


@dataclass(frozen=True)
class Explanation:
    """Why one item is recommended: the source that put it in the pool, a kind the front end renders,
    a readable reason and the customer's own products behind it (product ids, strongest first)."""

    source: str
    kind: str
    reason: str
    evidence: list[int] = field(default_factory=list)
    category_id: int | None = None  # the category of a popular_in_category explanation

    def as_dict(self) -> dict[str, Any]:
        # By hand, not dataclasses.asdict (which deep-copies field by field): ten per response.
        return {"source": self.source, "kind": self.kind, "reason": self.reason, "evidence": list(self.evidence),
                "category_id": self.category_id}


class Decomposable(Protocol):
    """A source whose score of an item splits over one history row's items (models.classic)."""

    def contributions(self, history: sp.csr_matrix, items: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


def popular(category_id: int | None = None, source: str = POPULARITY) -> Explanation:
    """Popular items: the popularity source's, the API's popular fallback, and its top-up."""
    if category_id is not None:
        return Explanation(source, "popular_in_category", f"Popular in category {category_id}", [], int(category_id))
    return Explanation(source, "popular", "Popular with other customers", [])


def origins(scores: Mapping[str, np.ndarray], blocked: np.ndarray, items: np.ndarray,
            shares: Mapping[str, float] | None = None,
            ranked: Mapping[str, np.ndarray] | None = None) -> list[str]:
    """The source that ranks each of `items` (indices into one row) best among the non-blocked items.

    scores: source -> (n_items,) one row's scores; blocked: (n_items,) bool. Rank = items scored
    higher, plus equal ones at a lower index (the order `models.classic.top_k` breaks ties in).
    Equal ranks go to a personal source before popularity, then to the larger pool share.
    ranked: source -> that row's `top_k` list under the same `blocked` (what the pool was built from,
    `Recommender.ranked`), optional: an item's rank is then its position in the list, and the
    catalogue is counted only for a source whose list lacks the item where that could still matter.
    """
    shares = shares or {}
    names = [s for s in sorted(scores) if shares.get(s, 1.0) > 0] or sorted(scores)
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    if not names:
        return []
    ranks = np.full((len(names), len(items)), -1, dtype=np.int64)  # -1: not known yet
    floor = np.zeros((len(names), 1), dtype=np.int64)  # a rank not in a source's list is at least this
    for j, name in enumerate(names):
        top = None if ranked is None else ranked.get(name)
        if top is not None:
            top = np.asarray(top).reshape(-1)
            hit = top[None, :] == items[:, None]  # (len(items), list length); lists hold distinct items
            ranks[j] = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)
            floor[j] = np.count_nonzero(top >= 0)  # the list's items are exactly the ones ranked before
    best_known = np.where(ranks >= 0, ranks, np.iinfo(np.int64).max).min(axis=0)
    # Count where the rank is unknown and might not lose: no list, or a list no longer than the best known rank.
    count = (ranks < 0) & (floor <= best_known[None, :])
    if count.any():
        eligible = ~np.asarray(blocked, dtype=bool).reshape(-1)
        index = np.flatnonzero(eligible)
        for j, name in enumerate(names):
            at = np.flatnonzero(count[j])
            if not len(at):
                continue
            row = np.asarray(scores[name]).reshape(-1)
            values = row[index]  # the eligible items' scores, one (len(at), n_eligible) comparison per source
            target = row[items[at]][:, None]
            ranks[j, at] = np.count_nonzero((values > target) | ((values == target) & (index < items[at, None])),
                                            axis=1)
    ranks = np.where(ranks >= 0, ranks, np.iinfo(np.int64).max)  # not counted: it cannot win
    out = []
    for i in range(len(items)):
        keys = [(int(ranks[j, i]), name == POPULARITY, -shares.get(name, 0.0), name) for j, name in enumerate(names)]
        out.append(min(keys)[3])
    return out


def evidence(source: Decomposable, history: sp.csr_matrix, item: int,
             limit: int = MAX_EVIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """(history item indices, their contributions) with a positive share of `item`'s score, largest first."""
    return evidence_of(source, history, np.array([item], dtype=np.int64), limit)[0]


def evidence_of(source: Decomposable, history: sp.csr_matrix, items: np.ndarray,
                limit: int = MAX_EVIDENCE) -> list[tuple[np.ndarray, np.ndarray]]:
    """`evidence` of each of `items`, from one `contributions` call (one slice, one solve) for them all."""
    seen, shares = source.contributions(history, np.asarray(items, dtype=np.int64))
    out = []
    for share in shares.T:
        order = np.lexsort((seen, -share))  # largest share first, lower index on ties
        order = order[share[order] > 0][:limit]
        out.append((seen[order], share[order]))
    return out


def _names(ids: list[int]) -> str:
    names = [f"product {p}" for p in ids]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _reason(kind: str, ids: list[int], verb: str) -> str:
    """The sentence: the verb is what the customer did with the first (strongest) evidence product."""
    if not ids:
        return {"because_you_viewed": "Chosen by customers with a history like yours",
                "goes_with_your_items": "Goes with the products in your history",
                "similar_to_history": "Similar to your history"}.get(kind, "Recommended for you")
    first, rest = f"product {ids[0]}", (f" and {_names(ids[1:])}" if len(ids) > 1 else "")
    if kind == "because_you_viewed":
        return f"Because you {verb} {first}{rest and ' (and' + rest[4:] + ')'}: customers who did also chose this"
    if kind == "goes_with_your_items":
        return f"Goes with {first}, which you {verb}{rest and ', and with' + rest[4:]}"
    return f"Similar to {first}, which you {verb}{rest and ', and to' + rest[4:]}"


def explain(sources: Mapping[str, object], item_ids: np.ndarray, history: sp.csr_matrix,
            scores: Mapping[str, np.ndarray], blocked: np.ndarray, items: np.ndarray,
            shares: Mapping[str, float] | None = None, events: Mapping[int, str] | None = None,
            category_id: int | None = None, mode: str = "ranker",
            ranked: Mapping[str, np.ndarray] | None = None) -> list[Explanation]:
    """One explanation per recommended item index in `items` (one customer; -1 entries are skipped).

    sources: name -> fitted source; item_ids: (n_items,) product ids of the columns; history: (1,
    n_items) the customer's weighted row; scores: name -> (1, n_items) or (n_items,) each source's
    scores the path ranked with; blocked: the request's (1, n_items) exclusions and filters; events:
    product id -> the customer's strongest event type on it (for the reason's verb); category_id: the
    request's category filter; mode: a source name when that source alone orders the served list;
    ranked: the row's top list per source under `blocked`, when the caller has them (see `origins`).
    """
    items = np.asarray(items, dtype=np.int64).reshape(-1)
    items = items[items >= 0]
    row_scores = {name: np.asarray(s).reshape(-1) for name, s in scores.items()}
    if mode in row_scores:
        named = [mode] * len(items)
    else:
        named = origins(row_scores, blocked, items, shares, ranked)
    found: dict[int, np.ndarray] = {}  # position in `items` -> evidence, one contributions call per source
    for name in set(named) - {POPULARITY}:
        if hasattr(sources.get(name), "contributions"):
            at = [i for i, n in enumerate(named) if n == name]
            for i, (seen, _) in zip(at, evidence_of(sources[name], history, items[at])):  # type: ignore[arg-type]
                found[i] = seen
    out = []
    for i, name in enumerate(named):
        if name == POPULARITY:
            out.append(popular(category_id, name))
            continue
        kind = KINDS.get(name, "recommended")
        ids: list[int] = []
        if i in found:
            ids = [int(p) for p in np.asarray(item_ids)[found[i]]]
        verb = VERBS.get((events or {}).get(ids[0], ""), "interacted with") if ids else ""
        out.append(Explanation(name, kind, _reason(kind, ids, verb), ids))
    return out


def strongest_events(product_ids: np.ndarray, event_types: np.ndarray,
                     weights: Mapping[str, float]) -> dict[int, str]:
    """product id -> the event type of the customer's heaviest event on it (purchase over cart over view)."""
    out: dict[int, str] = {}
    for pid, kind in zip(np.asarray(product_ids).tolist(), np.asarray(event_types).tolist()):
        pid, kind = int(pid), str(kind)
        if weights.get(kind, 0.0) > 0 and weights.get(kind, 0.0) > weights.get(out.get(pid, ""), 0.0):
            out[pid] = kind
    return out
