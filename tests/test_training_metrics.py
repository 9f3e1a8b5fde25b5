"""Metrics against brute-force reference implementations written here."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from training.metrics import auc, coverage, logloss, ranking_metrics


def brute_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pairwise_count_including_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 8, 300).astype(float)  # many ties
    assert auc(labels, scores) == pytest.approx(brute_auc(labels, scores), abs=1e-12)


def test_auc_extremes_and_single_class() -> None:
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9])) == 0.0
    assert math.isnan(auc(np.ones(5), np.arange(5.0)))


def test_logloss_matches_the_formula_and_clips() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.6, 0.5])
    expected = -np.mean([math.log(0.9), math.log(0.8), math.log(0.6), math.log(0.5)])
    assert logloss(y, p) == pytest.approx(expected)
    assert math.isfinite(logloss(np.array([1, 0]), np.array([0.0, 1.0])))


def brute_ranking(groups, items, scores, relevance, k):
    recalls, ndcgs, rrs, top = [], [], [], set()
    for g in dict.fromkeys(groups.tolist()):
        idx = [i for i in range(len(groups)) if groups[i] == g]
        # stable order: higher score first, then input position
        ranked = sorted(idx, key=lambda i: (-scores[i], i))[:k]
        n_rel = sum(relevance[i] for i in idx)
        if n_rel == 0:
            continue
        top.update(items[i] for i in ranked)
        hits = [bool(relevance[i]) for i in ranked]
        recalls.append(sum(hits) / n_rel)
        dcg = sum(1 / math.log2(r + 2) for r, h in enumerate(hits) if h)
        ideal = sum(1 / math.log2(r + 2) for r in range(min(n_rel, k)))
        ndcgs.append(dcg / ideal)
        rrs.append(next((1 / (r + 1) for r, h in enumerate(hits) if h), 0.0))
    return np.mean(recalls), np.mean(ndcgs), np.mean(rrs), len(recalls), top


@pytest.mark.parametrize("k", [1, 3, 10])
def test_ranking_metrics_match_a_per_group_loop(k: int) -> None:
    rng = np.random.default_rng(k)
    n = 400
    groups = rng.integers(0, 40, n)
    items = rng.integers(0, 60, n)
    scores = rng.integers(0, 5, n).astype(float)
    relevance = rng.random(n) < 0.2
    got = ranking_metrics(groups, items, scores, relevance, k)
    recall, ndcg, mrr, n_groups, top = brute_ranking(groups, items, scores, relevance, k)
    assert got.n_groups == n_groups
    assert got.recall == pytest.approx(recall)
    assert got.ndcg == pytest.approx(ndcg)
    assert got.mrr == pytest.approx(mrr)
    assert set(got.top_k_items.tolist()) == top


def test_perfect_ranking_scores_one_and_coverage_counts_distinct_items() -> None:
    groups = np.array([1, 1, 1, 2, 2])
    items = np.array([10, 11, 12, 10, 13])
    relevance = np.array([0, 1, 0, 1, 0])
    got = ranking_metrics(groups, items, np.array([0.1, 0.9, 0.2, 0.8, 0.3]), relevance, k=1)
    assert (got.recall, got.ndcg, got.mrr) == (1.0, 1.0, 1.0)
    assert coverage(got.top_k_items, 8) == pytest.approx(2 / 8)
    worst = ranking_metrics(groups, items, np.array([0.9, 0.1, 0.2, 0.1, 0.3]), relevance, k=1)
    assert (worst.recall, worst.mrr) == (0.0, 0.0)
