"""Explanations of served items: the origin source, and history items that really make up the score."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.classic import fit_all
from serving.explain import ALL_KINDS, explain, origins, strongest_events
from serving.recommender import N_ITEM_STATS, Recommender

N_USERS, N_ITEMS, K = 300, 60, 5


@pytest.fixture(scope="module")
def recommender() -> Recommender:
    """Classic sources fitted on a shop with planted item groups; product ids are not column indices."""
    rng = np.random.default_rng(7)
    group = rng.integers(0, 4, N_USERS)
    rows, cols = [], []
    for u in range(N_USERS):
        liked = rng.choice(np.arange(group[u] * 15, group[u] * 15 + 15), 6, replace=False)
        noise = rng.choice(N_ITEMS, 2, replace=False)
        for i in (*liked, *noise):
            rows.append(u)
            cols.append(int(i))
    weights = rng.choice([1.0, 2.0, 4.0], len(rows)).astype(np.float32)
    matrix = sp.csr_matrix((weights, (rows, cols)), shape=(N_USERS, N_ITEMS))
    sources = fit_all(matrix, params={"ease": {"l2": 50.0}})
    return Recommender(items=np.arange(N_ITEMS, dtype=np.int64) * 10 + 1000, sources=sources,
                       shares={"item_knn": 0.3, "als": 0.3, "ease": 0.3, "popularity": 0.1},
                       popularity=np.asarray((matrix > 0).sum(axis=0), dtype=np.float32).ravel(),
                       item_stats=np.zeros((N_ITEMS, N_ITEM_STATS), dtype=np.float32),
                       event_weights={"view": 1.0, "cart": 2.0, "purchase": 4.0})


def _served(rec: Recommender, mode: str) -> tuple[Recommender, sp.csr_matrix, np.ndarray, np.ndarray, list]:
    """A customer of group 1 with five products, the k items `mode` serves, and their explanations."""
    served = Recommender(**{**rec.__dict__, "mode": mode})
    pids = served.items[[15, 17, 20, 22, 40]]
    kinds = np.array(["view", "purchase", "view", "cart", "view"], dtype=object)
    history = served.history(pids, kinds)
    blocked = served.blocked(np.ones(N_ITEMS, dtype=bool), pids)
    scores = served.source_scores(history)
    items, _ = served.recommend(history, blocked, K, None, scores)
    why = served.explain(history, blocked, items[0], scores, strongest_events(pids, kinds, served.event_weights))
    return served, history, items[0], pids, why


@pytest.mark.parametrize("source, kind", [("item_knn", "because_you_viewed"), ("ease", "goes_with_your_items"),
                                          ("als", "similar_to_history")])
def test_evidence_is_the_customers_products_that_make_up_the_score(recommender, source: str, kind: str) -> None:  # type: ignore[no-untyped-def]
    rec, history, items, pids, why = _served(recommender, source)
    scorer = rec.sources[source]
    assert len(why) == K and all(e.source == source and e.kind == kind for e in why)
    assert sum(len(e.evidence) for e in why) >= K  # these neighbours are explained by the customer's products
    for item, e in zip(items, why):
        assert 1 <= len(e.evidence) <= 3 and set(e.evidence) <= set(pids.tolist())
        seen, share = scorer.contributions(history, np.array([item]))
        by_pid = dict(zip(rec.items[seen].tolist(), share[:, 0].tolist()))
        # The shares really make up the score, and the evidence holds the largest positive ones, in order.
        assert sum(by_pid.values()) == pytest.approx(float(scorer.score(history)[0, item]), rel=1e-4, abs=1e-5)
        strongest = sorted((p for p in by_pid if by_pid[p] > 0), key=lambda p: -by_pid[p])[:3]
        assert e.evidence == strongest
        assert f"product {e.evidence[0]}" in e.reason
        if source != "als":  # linear in the history: dropping the evidence lowers the score by its share
            kept = sp.csr_matrix(history.toarray() * ~np.isin(rec.items, e.evidence))
            drop = float(scorer.score(history)[0, item] - scorer.score(kept)[0, item])
            assert drop == pytest.approx(sum(by_pid[p] for p in e.evidence), rel=1e-4) and drop > 0


def test_reason_names_what_the_customer_did_with_the_evidence(recommender) -> None:  # type: ignore[no-untyped-def]
    rec, _, _, pids, why = _served(recommender, "item_knn")
    did = {int(pids[0]): "viewed", int(pids[1]): "bought", int(pids[2]): "viewed", int(pids[3]): "added to your cart",
           int(pids[4]): "viewed"}
    assert all(e.reason.startswith(f"Because you {did[e.evidence[0]]} product {e.evidence[0]}") for e in why)


def test_popular_items_say_popular_and_name_the_filtered_category(recommender) -> None:  # type: ignore[no-untyped-def]
    rec, history, items, _, why = _served(recommender, "popularity")
    assert {(e.source, e.kind, tuple(e.evidence)) for e in why} == {("popularity", "popular", ())}
    blocked = np.zeros((1, N_ITEMS), dtype=bool)
    in_category = rec.explain(history, sp.csr_matrix(blocked), items, rec.source_scores(history), category_id=12)
    assert all(e.kind == "popular_in_category" and e.category_id == 12 and "12" in e.reason for e in in_category)
    assert {e.kind for e in why + in_category} <= set(ALL_KINDS)


def test_origin_is_the_source_ranking_the_item_best_among_allowed_items() -> None:
    scores = {"als": np.array([0.9, 0.8, 0.1, 0.5]), "item_knn": np.array([0.0, 0.3, 0.2, 0.1]),
              "popularity": np.array([5.0, 1.0, 9.0, 9.0])}
    blocked = np.array([False, False, False, False])
    # item 0: als rank 0; item 1: als 1, knn 0 -> knn; item 2: popularity 0; item 3 ties popularity with
    # item 2 (lower index first -> rank 1) and is als's rank 2 -> popularity.
    assert origins(scores, blocked, np.array([0, 1, 2, 3])) == ["als", "item_knn", "popularity", "popularity"]
    blocked = np.array([True, False, True, False])  # blocked items do not count ahead of an item
    assert origins(scores, blocked, np.array([1, 3])) == ["als", "popularity"]
    # equal ranks: a personal source before popularity
    assert origins({"popularity": np.array([2.0, 1.0]), "ease": np.array([1.0, 0.0])}, np.zeros(2, bool),
                   np.array([0])) == ["ease"]


def test_a_source_without_a_decomposition_is_explained_without_evidence(recommender) -> None:  # type: ignore[no-untyped-def]
    rec = recommender
    history = rec.history(rec.items[[1, 2]], np.array(["view", "view"]))
    scores = {"sequential": np.linspace(0, 1, N_ITEMS)}
    why = explain({"sequential": object()}, rec.items, history, scores, np.zeros(N_ITEMS, bool), np.array([59, -1]))
    assert len(why) == 1 and why[0].kind == "recommended" and why[0].evidence == []


def test_the_api_schema_lists_exactly_the_kinds_serving_produces() -> None:
    from typing import get_args

    from api.schemas import ExplanationKind

    assert get_args(ExplanationKind) == ALL_KINDS


def test_origins_equal_the_per_item_count_they_replace() -> None:
    """The vectorised `origins` names the same source as counting, item by item, the eligible items ranked above."""
    rng = np.random.default_rng(4)
    n = 300
    scores = {name: rng.integers(0, 6, n).astype(np.float32) for name in ("als", "item_knn", "popularity")}  # many ties
    shares = {"als": 0.5, "item_knn": 0.3, "popularity": 0.2}
    blocked = rng.random(n) < 0.3
    items = rng.choice(np.flatnonzero(~blocked), size=25, replace=False)
    index = np.arange(n)
    want = []
    for item in items:
        keys = []
        for name in sorted(scores):
            row, value = scores[name], scores[name][item]
            rank = int(np.count_nonzero(~blocked & ((row > value) | ((row == value) & (index < item)))))
            keys.append((rank, name == "popularity", -shares[name], name))
        want.append(min(keys)[3])
    assert origins(scores, blocked, items, shares) == want
    assert len(set(want)) > 1  # the case exercises more than one source


def test_origins_read_off_the_top_lists_equal_counting_the_catalogue() -> None:
    """With each source's top list (what the pool was built from), ranks come from the lists; the catalogue is
    counted only where a list cannot settle it. The answer is the same as counting everything."""
    from models.classic import top_k

    rng = np.random.default_rng(9)
    n = 400
    for trial in range(30):
        scores = {name: (rng.integers(0, 5, n) if trial % 2 else rng.normal(size=n)).astype(np.float32)
                  for name in ("als", "item_knn", "popularity", "sequential")}
        shares = {"als": 0.4, "item_knn": 0.3, "popularity": 0.2, "sequential": 0.0 if trial % 3 == 0 else 0.1}
        blocked = rng.random(n) < 0.3
        take = int(rng.choice([3, 20, 100]))  # short lists leave items of the pool unranked by some sources
        ranked = {name: top_k(s[None, :], blocked[None, :], take)[0] for name, s in scores.items()
                  if shares[name] > 0}
        pooled = np.unique(np.concatenate([r[r >= 0] for r in ranked.values()]))
        items = rng.choice(np.concatenate([pooled, np.flatnonzero(~blocked)[:5]]), size=10, replace=False)
        assert origins(scores, blocked, items, shares, ranked) == origins(scores, blocked, items, shares)


def test_an_explanation_as_a_dict_holds_every_field() -> None:
    from dataclasses import asdict

    from serving.explain import Explanation

    why = Explanation("item_knn", "because_you_viewed", "Because you viewed product 3", [3, 4], None)
    assert why.as_dict() == asdict(why)
    assert why.as_dict()["evidence"] is not why.evidence  # a copy: the response cannot change the explanation
