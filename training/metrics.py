"""Ranking and classification metrics on numpy arrays: AUC, logloss, Recall/NDCG/MRR@K, coverage."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks with ties sharing their average rank, O(n log n)."""
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Boundaries of runs of equal values; each run gets the mean of the ranks it spans.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_rank = (starts + ends + 1) / 2.0
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U); ties count one half. NaN if one class is absent."""
    labels = np.asarray(labels).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy of probabilities clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), eps, 1 - eps)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


@dataclass(frozen=True)
class RankingMetrics:
    """Means over groups with at least one relevant candidate."""

    recall: float
    ndcg: float
    mrr: float
    n_groups: int
    top_k_items: np.ndarray  # distinct items that appear in some group's top K


def ranking_metrics(
    groups: np.ndarray, items: np.ndarray, scores: np.ndarray, relevance: np.ndarray, k: int
) -> RankingMetrics:
    """Recall@K, NDCG@K (binary gains) and MRR@K over candidates grouped by `groups`.

    Each row is one (group, item) candidate. Within a group candidates are ordered by score,
    descending; equal scores keep their input order (stable sort) so results are reproducible.
    Recall@K is hits in the top K over the group's relevant count; groups without any relevant
    candidate are skipped.
    """
    groups = np.asarray(groups).ravel()
    items = np.asarray(items).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    relevance = np.asarray(relevance).astype(bool).ravel()
    if not len(groups):
        return RankingMetrics(float("nan"), float("nan"), float("nan"), 0, np.empty(0, dtype=items.dtype))
    # lexsort sorts by the last key first: group, then descending score, then input position.
    order = np.lexsort((np.arange(len(groups)), -scores, groups))
    g, rel, it = groups[order], relevance[order], items[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, len(g)])
    position = np.arange(len(g)) - np.repeat(starts, sizes)  # 0-based rank inside the group
    group_index = np.repeat(np.arange(len(starts)), sizes)
    in_top = position < k
    n_rel = np.bincount(group_index, weights=rel, minlength=len(starts))
    hits = np.bincount(group_index, weights=rel & in_top, minlength=len(starts))
    gains = np.where(rel & in_top, 1.0 / np.log2(position + 2.0), 0.0)
    dcg = np.bincount(group_index, weights=gains, minlength=len(starts))
    discounts = np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))
    ideal = np.where(n_rel > 0, discounts[np.minimum(n_rel, k).astype(int) - 1], 1.0)
    first_hit = np.full(len(starts), np.inf)
    np.minimum.at(first_hit, group_index[rel & in_top], position[rel & in_top])
    rr = np.where(np.isfinite(first_hit), 1.0 / (first_hit + 1.0), 0.0)
    keep = n_rel > 0
    if not keep.any():
        return RankingMetrics(float("nan"), float("nan"), float("nan"), 0, np.unique(it[in_top]))
    return RankingMetrics(
        recall=float(np.mean(hits[keep] / n_rel[keep])),
        ndcg=float(np.mean(dcg[keep] / ideal[keep])),
        mrr=float(np.mean(rr[keep])),
        n_groups=int(keep.sum()),
        top_k_items=np.unique(it[in_top & np.repeat(keep, sizes)]),
    )


def coverage(recommended_items: np.ndarray, catalogue_size: int) -> float:
    """Share of the catalogue that appears in at least one top-K list."""
    if catalogue_size <= 0:
        return float("nan")
    return float(len(np.unique(recommended_items)) / catalogue_size)
