"""Every method on one evaluation task: the served recommender beside the classic baselines, same users, same k.

The nightly evaluate stage and `bench/quality.py` both call `compare`, so the figures in MLflow and in
`bench/results/quality.json` come from one protocol (training.quality).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import scipy.sparse as sp

from models.classic import CLASSIC, index_of
from serving.recommender import PairScorer, Recommender
from training.quality import (Interval, MethodResult, Task, bootstrap, interaction_matrix, list_metrics,
                              paired_difference, top_k_lists, with_intervals)

log = logging.getLogger(__name__)

SERVED = "served"
BASELINES: tuple[str, ...] = ("popularity", "item_knn", "als", "ease")
EASE_MAX_ITEMS = 20_000  # EASE's dense items x items inverse: above this the baseline is skipped, and said so


@dataclass
class Comparison:
    """Per-method results on one task, and the served path's paired NDCG difference to each baseline."""

    k: int
    n_users: int
    n_items: int
    results: dict[str, MethodResult]
    versus: dict[str, Interval] = field(default_factory=dict)  # baseline -> NDCG(served) - NDCG(baseline)
    skipped: dict[str, str] = field(default_factory=dict)  # method -> why it did not run

    @property
    def best_baseline(self) -> str:
        names = [n for n in self.results if n in BASELINES]
        return max(names, key=lambda n: self.results[n].metrics.ndcg.mean())

    def metrics(self) -> dict[str, float]:
        """Flat `<method>.<metric>` figures for MLflow and JSON (served path first)."""
        out: dict[str, float] = {"eval_users": float(self.n_users), "catalogue_items": float(self.n_items)}
        for name, result in self.results.items():
            out.update({f"{name}.{key}": value for key, value in result.summary().items()})
        for name, ci in self.versus.items():
            out[f"served_minus_{name}.ndcg_at_{self.k}"] = ci.mean
            out[f"served_minus_{name}.ndcg_at_{self.k}_ci_low"] = ci.low
            out[f"served_minus_{name}.ndcg_at_{self.k}_ci_high"] = ci.high
        return out


def _timed(name: str, lists: Callable[[], np.ndarray], task: Task, k: int, n_boot: int) -> MethodResult:
    start = time.perf_counter()
    top = lists()
    result = MethodResult(name, list_metrics(task, top, k), time.perf_counter() - start)
    log.info("%s: ndcg@%d %.4f (%d users, %.1f s)", name, k, result.metrics.ndcg.mean(), len(task.users),
             result.seconds)
    return with_intervals(result, n_boot)


def served_lists(recommender: Recommender, ranker: PairScorer | None, task: Task, k: int,
                 batch: int = 256) -> np.ndarray:
    """The served path in batch: the same `Recommender.recommend` the API calls, exclusions of the task.

    A recommender fitted on another catalogue (a champion re-evaluated on tonight's task) sees the
    task's histories in its own columns; products new tonight are unknown to it, as they would be
    when it serves, and products it lists that tonight's catalogue lacks count as misses.
    """
    same = np.array_equal(recommender.items, task.split.items)
    to_rec = index_of(recommender.items, task.split.items)  # task column -> recommender column
    known = np.flatnonzero(to_rec >= 0)
    out = np.full((len(task.users), k), -1, dtype=np.int64)
    for start in range(0, len(task.users), batch):
        rows = np.arange(start, min(start + batch, len(task.users)))
        history, excluded = task.history[rows], task.excluded[rows]
        sequences = None if task.sequences is None else task.sequences[rows]
        if not same:
            history = _reindex(history[:, known], to_rec[known], recommender.n_items)
            excluded = _reindex(excluded[:, known], to_rec[known], recommender.n_items).astype(bool)
            sequences = None if sequences is None else sequences.reindexed(to_rec)
        items, _ = recommender.recommend(history, excluded, k, ranker, sequences=sequences)
        if not same:
            items = np.where(items >= 0, index_of(task.split.items, recommender.items[np.maximum(items, 0)]), -1)
        out[rows] = items
    return out


def versus_champion(task: Task, challenger_ndcg: np.ndarray, recommender: Recommender, ranker: PairScorer | None,
                    k: int = 10, n_boot: int = 1000) -> tuple[np.ndarray, Interval]:
    """The registered champion's served path on tonight's task, next to the challenger: the champion's
    NDCG@k per user (task order) and the bootstrap interval of the paired (challenger - champion) mean."""
    champion = list_metrics(task, served_lists(recommender, ranker, task, k), k).ndcg
    challenger = np.asarray(challenger_ndcg, dtype=np.float64)
    if challenger.shape != champion.shape:
        raise ValueError(f"challenger has {challenger.shape} per-user values, the task {champion.shape}")
    return champion, bootstrap(challenger - champion, n_boot)


def _reindex(matrix: sp.csr_matrix, columns: np.ndarray, n_columns: int) -> sp.csr_matrix:
    """The same cells with column j moved to columns[j], in a matrix of n_columns."""
    coo = matrix.tocoo()
    return sp.csr_matrix((coo.data, (coo.row, columns[coo.col])), shape=(matrix.shape[0], n_columns))


def oracle_scorer(truth: Any, task: Task) -> Callable[[np.ndarray], np.ndarray]:
    """The synthetic shop's planted interest (`etl.synthetic.GroundTruth.interest`) as a full-catalogue
    scorer over the task's columns: the ceiling every method is compared with on that data."""
    order = np.argsort(truth.product_ids)
    cols = index_of(truth.product_ids[order], task.split.items)
    if (cols < 0).any():
        raise ValueError(f"{int((cols < 0).sum())} catalogue products are missing from the synthetic truth")

    def score(rows: np.ndarray) -> np.ndarray:
        return truth.interest(task.users[rows])[:, order][:, cols].astype(np.float32)

    return score


def compare(task: Task, recommender: Recommender | None, ranker: PairScorer | None, k: int = 10,
            baselines: tuple[str, ...] = BASELINES, extra: dict[str, Callable[[np.ndarray], np.ndarray]] | None = None,
            n_boot: int = 1000) -> Comparison:
    """Fit each baseline on the task's training events (all users), rank the full catalogue for the
    task's users, and score the served recommender's lists the same way. `extra`: more full-catalogue
    scorers by name (e.g. the synthetic shop's oracle), called with task rows."""
    results: dict[str, MethodResult] = {}
    skipped: dict[str, str] = {}
    if recommender is not None:
        results[SERVED] = _timed(SERVED, lambda: served_lists(recommender, ranker, task, k), task, k, n_boot)
    train_users = np.unique(task.split.train["user_id"].to_numpy(np.int64))
    matrix = interaction_matrix(task.split.train, train_users, task.split, task.weights)
    for name in baselines:
        if name == "ease" and task.n_items > EASE_MAX_ITEMS:
            skipped[name] = f"{task.n_items} items > {EASE_MAX_ITEMS} (dense items x items inverse)"
            continue

        def lists(scorer_class=CLASSIC[name]) -> np.ndarray:  # fit time is part of the method's cost
            scorer = scorer_class().fit(matrix)
            return top_k_lists(lambda rows: scorer.score(task.history[rows]), task, k)

        results[name] = _timed(name, lists, task, k, n_boot)
    for name, score_rows in (extra or {}).items():
        results[name] = _timed(name, lambda f=score_rows: top_k_lists(f, task, k), task, k, n_boot)
    comparison = Comparison(k, len(task.users), task.n_items, results, skipped=skipped)
    if SERVED in results:
        for name in results:
            if name != SERVED:
                comparison.versus[name] = paired_difference(results[SERVED].metrics, results[name].metrics, n_boot)
    return comparison
