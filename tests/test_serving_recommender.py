"""The served recommender: exclusions and filters before the cut, full lists, modes, files, fitted ranker."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from etl import SyntheticConfig, generate
from models.classic import top_k
from serving.recommender import Recommender, blend
from training.compare import compare, served_lists
from training.errors import DataError
from training.quality import EventWeights, build_task, last_days_split
from training.ranker import FittedRecommender, RankerConfig, fit_recommender


@pytest.fixture(scope="module")
def fitted() -> tuple[FittedRecommender, object]:
    events = generate(SyntheticConfig(n_events=30_000, n_users=150, n_products=300, days=6, seed=3)).events
    split = last_days_split(events, 1)
    return fit_recommender(split.train, split.items, RankerConfig(epochs=3, pool_size=50)), split


def test_lists_are_full_and_never_hold_blocked_items(fitted) -> None:  # type: ignore[no-untyped-def]
    model, split = fitted
    rec = model.recommender
    task = build_task(split)
    rng = np.random.default_rng(0)
    blocked = rng.random((len(task.users), rec.n_items)) < 0.9  # filters + exclusions: 90% of the catalogue
    items, scores = rec.recommend(task.history, blocked, 10, model.scorer())
    eligible = (~blocked).sum(axis=1)
    assert all((items[r] >= 0).sum() == min(10, eligible[r]) for r in range(len(items)))
    assert not any(blocked[r, i] for r in range(len(items)) for i in items[r] if i >= 0)
    assert all(len(set(row[row >= 0].tolist())) == (row >= 0).sum() for row in items)  # distinct
    assert np.all(np.diff(np.nan_to_num(scores, nan=-np.inf), axis=1) <= 0)  # best first


def test_only_eligible_items_when_fewer_than_k(fitted) -> None:  # type: ignore[no-untyped-def]
    model, split = fitted
    rec = model.recommender
    blocked = np.ones((1, rec.n_items), dtype=bool)
    blocked[0, [3, 7]] = False
    items, _ = rec.recommend(build_task(split).history[:1], blocked, 10, model.scorer())
    assert sorted(items[0][items[0] >= 0].tolist()) == [3, 7] and (items[0] < 0).sum() == 8


def test_a_source_mode_serves_that_sources_order(fitted) -> None:  # type: ignore[no-untyped-def]
    model, split = fitted
    task = build_task(split)
    as_ease = replace(model.recommender, mode="popularity")
    items, _ = as_ease.recommend(task.history, task.excluded, 10, model.scorer())
    want = top_k(as_ease.sources["popularity"].score(task.history), task.excluded, 10)
    np.testing.assert_array_equal(items, want)


def test_saved_recommender_recommends_the_same(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model, split = fitted
    task = build_task(split)
    loaded = FittedRecommender.load(model.save(tmp_path / "rec"))
    assert (tmp_path / "rec" / "schema.json").is_file()
    np.testing.assert_array_equal(served_lists(loaded.recommender, loaded.scorer(), task, 10),
                                  served_lists(model.recommender, model.scorer(), task, 10))
    with pytest.raises(TypeError):
        (tmp_path / "bad.pkl").write_bytes(__import__("pickle").dumps({"not": "a recommender"}))
        Recommender.load(tmp_path / "bad.pkl")


def test_history_rows_use_the_fitted_event_weights(fitted) -> None:  # type: ignore[no-untyped-def]
    rec = fitted[0].recommender
    a, b = int(rec.items[0]), int(rec.items[1])
    row = rec.history(np.array([a, b, a, 10**15]), np.array(["view", "purchase", "cart", "view"]))
    got = dict(zip(rec.items[row.indices].tolist(), row.data.tolist()))
    w = rec.event_weights
    assert got == pytest.approx({a: w["view"] + w["cart"], b: w["purchase"]})  # unknown product ignored


def test_evidence_names_the_served_mode_and_every_source(fitted) -> None:  # type: ignore[no-untyped-def]
    rec = fitted[0].recommender
    scored = {k.split(".", 1)[1] for k in rec.evidence if k.startswith("valid_ndcg")}
    assert scored == {"ranker", *rec.sources} and rec.mode in scored
    # The best source alone is picked on every held-out user; the ranker is served only if it beats that
    # source on the decide users.
    held_out = {s: rec.evidence[f"held_out_ndcg_at_10.{s}"] for s in rec.sources}
    best_source = max(held_out, key=held_out.get)
    ranker_wins = rec.evidence["valid_ndcg_at_10.ranker"] > rec.evidence[f"valid_ndcg_at_10.{best_source}"]
    assert rec.mode == ("ranker" if ranker_wins else best_source)
    assert sum(rec.shares.values()) == pytest.approx(1.0)


def test_validation_users_split_into_disjoint_stop_and_decide_users() -> None:
    from training.ranker import split_validation

    valid = np.flatnonzero(np.random.default_rng(4).random(400) < 0.25)
    stop, decide = split_validation(valid, 0.5, seed=0)
    assert not set(stop.tolist()) & set(decide.tolist())
    np.testing.assert_array_equal(np.sort(np.concatenate([stop, decide])), valid)
    assert abs(len(decide) - len(valid) / 2) <= 1
    stop_again, decide_again = split_validation(valid, 0.5, seed=0)
    np.testing.assert_array_equal(decide_again, decide)  # seeded
    assert not np.array_equal(split_validation(valid, 0.5, seed=1)[1], decide)
    few_stop, few_decide = split_validation(valid[:3], 0.01, seed=0)
    assert len(few_decide) == 1 and len(few_stop) == 2  # at least one of each
    with pytest.raises(DataError, match="validation users"):
        split_validation(valid[:1], 0.5, seed=0)
    with pytest.raises(DataError, match="decide_fraction"):
        RankerConfig(decide_fraction=1.0)


def test_the_served_mode_is_decided_on_users_not_used_for_early_stopping(fitted) -> None:  # type: ignore[no-untyped-def]
    model, _ = fitted
    rec = model.recommender
    assert rec.evidence["stop_users"] > 0 and rec.evidence["decide_users"] > 0
    assert rec.evidence["stop_users"] + rec.evidence["decide_users"] == rec.evidence["valid_users"]
    # Their lists in the further cuts count too (never their training: valid users' lists are held out).
    assert rec.evidence["cuts"] > 1 and rec.evidence["decide_lists"] > rec.evidence["decide_users"]
    assert rec.evidence["stop_lists"] > rec.evidence["stop_users"]
    # Early stopping kept the best epoch on the stop users; the decision's ranker figure is another set's.
    assert rec.evidence["stop_ndcg_at_10.ranker"] == max(h["valid_ndcg_at_10"] for h in model.history)


def test_a_source_that_beats_the_ranker_on_the_decide_users_is_served() -> None:
    """An untrained ranker (random order within the pool, no blend to rescue it) loses to a source on
    the decide users: that source is served, unblended, and its figure is the one measured on them."""
    from training.ranker import _cut_lists, _sub_metrics, split_validation

    events = generate(SyntheticConfig(n_events=30_000, n_users=200, n_products=300, days=6, seed=5)).events
    items = np.unique(events["product_id"].to_numpy(np.int64))
    config = RankerConfig(epochs=0, cuts=1, pool_size=50, sources=("popularity", "item_knn"), blend_weights=())
    rec = fit_recommender(events, items, config).recommender
    assert rec.mode in ("popularity", "item_knn") and rec.blend_weight == 0.0 and rec.blend_source is None
    assert rec.evidence["valid_ndcg_at_10.ranker"] < rec.evidence[f"valid_ndcg_at_10.{rec.mode}"]
    # The figures are those of the decide users (not the stop users) of the first cut.
    first, _, _ = _cut_lists(events, items, config, EventWeights(), "seen", ("cart", "purchase"), None)
    is_valid = np.random.default_rng(config.seed).random(len(first.task.users)) < config.valid_fraction
    stop, decide = split_validation(np.flatnonzero(is_valid), config.decide_fraction, config.seed)
    assert rec.evidence["decide_users"] == len(decide) and rec.evidence["stop_users"] == len(stop)

    def ndcg(name: str, rows: np.ndarray) -> float:
        top = top_k(first.scores[name][rows], first.task.excluded[rows], 10)
        return float(_sub_metrics(first.task, rows, top, 10).ndcg.mean())

    for name in ("popularity", "item_knn"):
        assert rec.evidence[f"valid_ndcg_at_10.{name}"] == pytest.approx(ndcg(name, decide))
    assert any(ndcg(n, stop) != pytest.approx(ndcg(n, decide)) for n in ("popularity", "item_knn"))
    # Which source is served is picked on every held-out user (one cut here: the stop and decide users).
    every = {n: ndcg(n, np.sort(np.concatenate([stop, decide]))) for n in ("popularity", "item_knn")}
    assert rec.evidence["held_out_ndcg_at_10.popularity"] == pytest.approx(every["popularity"])
    assert rec.mode == max(every, key=every.get)


def test_comparison_holds_every_method_on_the_same_users(fitted) -> None:  # type: ignore[no-untyped-def]
    model, split = fitted
    task = build_task(split)
    result = compare(task, model.recommender, model.scorer(), baselines=("popularity", "item_knn", "als"), n_boot=200)
    assert set(result.results) == {"served", "popularity", "item_knn", "als"}
    assert all(len(r.metrics.ndcg) == len(task.users) for r in result.results.values())
    assert set(result.versus) == {"popularity", "item_knn", "als"}
    metrics = result.metrics()
    assert all(metrics[f"{m}.ndcg_at_10_ci_low"] <= metrics[f"{m}.ndcg_at_10"] <= metrics[f"{m}.ndcg_at_10_ci_high"]
               for m in result.results)


def test_the_sequential_source_stays_only_where_it_wins_held_out(fitted) -> None:  # type: ignore[no-untyped-def]
    rec = fitted[0].recommender
    dropped = {k.rsplit(".", 1)[1]: v for k, v in rec.evidence.items() if k.startswith("dropped_valid_ndcg")}
    assert ("sequential" in rec.sources) != bool(dropped)  # either served, or dropped with the figures why
    assert not dropped or dropped["sequential"] <= max(v for n, v in dropped.items() if n != "sequential")
    assert ("sequential" in rec.source_names) == any(n.startswith("sequential.") for n in rec.feature_names()[0])


def test_history_features_extend_the_inputs_named_in_the_schema(fitted) -> None:  # type: ignore[no-untyped-def]
    model, split = fitted
    task = build_task(split)
    rec = replace(model.recommender, history_features=("als_affinity", "knn_max"))
    scores = rec.source_scores(task.history[:5])
    pool = rec.pool(scores, task.excluded[:5])
    dense, sparse = rec.features(task.history[:5], scores, pool)
    names, _ = rec.feature_names()
    assert dense.shape[1] == rec.n_dense == len(names) == model.recommender.n_dense + 2
    assert [c["name"] for c in rec.schema()["columns"]][:-1] == names
    cosine, knn_max = dense[:, names.index("als_history_cosine")], dense[:, names.index("knn_history_max")]
    assert np.all(np.abs(cosine) <= 1.0 + 1e-5) and cosine.std() > 0 and np.all(knn_max >= 0) and knn_max.max() > 0
    # The shared columns are unchanged by the extra groups.
    plain, _ = model.recommender.features(task.history[:5], scores, pool)
    np.testing.assert_array_equal(dense[:, :model.recommender.n_dense], plain)


def test_a_blend_orders_by_ranker_logit_plus_weighted_source_score() -> None:
    probability = np.array([[0.9, 0.5, 0.1, 0.3]], dtype=np.float32)
    source_z = np.array([[-1.0, 0.0, 3.0, 0.0]], dtype=np.float32)
    valid = np.array([[True, True, True, False]])
    alone = blend(probability, source_z, valid, 0.0)
    assert np.argsort(-alone[0, :3]).tolist() == [0, 1, 2]  # weight 0: the ranker's order
    mixed = blend(probability, source_z, valid, 2.0)
    assert np.argmax(mixed[0, :3]) == 2  # a heavy weight lets the source's favourite win


def _pool_loop(rec: Recommender, scores: dict[str, np.ndarray], blocked) -> np.ndarray:  # type: ignore[no-untyped-def]
    """The pool as first written (a Python loop per row and item): what the vectorised `pool` must equal."""
    n = next(iter(scores.values())).shape[0]
    quota = {s: max(1, int(round(rec.shares.get(s, 0.0) * rec.pool_size))) for s in rec.source_names
             if rec.shares.get(s, 0.0) > 0}
    ranked = {s: top_k(scores[s], blocked, min(rec.pool_size, rec.n_items)) for s in rec.source_names}
    fill = top_k(np.broadcast_to(rec.popularity.astype(np.float32), (n, rec.n_items)).copy(), blocked,
                 min(rec.pool_size, rec.n_items))
    out = np.full((n, rec.pool_size), -1, dtype=np.int64)
    for r in range(n):
        chosen: dict[int, None] = {}
        for s, q in quota.items():
            taken = 0
            for item in ranked[s][r]:
                if taken >= q or len(chosen) >= rec.pool_size:
                    break
                if item >= 0 and item not in chosen:
                    chosen[int(item)] = None
                    taken += 1
        for source in [*sorted(quota, key=quota.get, reverse=True), None]:
            for item in (ranked[source][r] if source else fill[r]):
                if len(chosen) >= rec.pool_size:
                    break
                if item >= 0:
                    chosen.setdefault(int(item), None)
        out[r, :len(chosen)] = list(chosen)
    return out


@pytest.mark.parametrize("blocked_share", [0.0, 0.5, 0.97])
def test_the_vectorised_pool_equals_the_per_item_loop(fitted, blocked_share: float) -> None:  # type: ignore[no-untyped-def]
    model, split = fitted
    task = build_task(split)
    rng = np.random.default_rng(int(blocked_share * 100))
    for pool_size in (model.recommender.pool_size, 7, 1000):  # shares rounding over, under, past the catalogue
        rec = replace(model.recommender, pool_size=pool_size)
        scores = rec.source_scores(task.history)
        blocked = rng.random((len(task.users), rec.n_items)) < blocked_share
        blocked[0] = True  # a row with nothing eligible
        np.testing.assert_array_equal(rec.pool(scores, blocked), _pool_loop(rec, scores, blocked))
        np.testing.assert_array_equal(rec.pool(scores, task.excluded), _pool_loop(rec, scores, task.excluded))


def test_repeated_and_reloaded_scoring_gives_the_same_lists_and_scores(fitted, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Caches built at the first request (Mult-DAE's eval net, ALS's Gram matrix) change no answer."""
    model, split = fitted
    rec, task = model.recommender, build_task(split)
    first = rec.recommend(task.history, task.excluded, 10, model.scorer())
    again = rec.recommend(task.history, task.excluded, 10, model.scorer())
    reloaded = Recommender.load(rec.save(tmp_path)).recommend(task.history, task.excluded, 10, model.scorer())
    for items, scores in (again, reloaded):
        np.testing.assert_array_equal(items, first[0])
        np.testing.assert_array_equal(scores, first[1])


def test_masked_mean_and_deviation_are_numpys_nan_functions_bit_for_bit() -> None:
    """`features` and `blend` standardise within each pool with `_masked_mean_std`: the same floats as
    np.nanmean / np.nanstd on the pool with NaN in its padding (what they computed before)."""
    from serving.recommender import _masked_mean_std

    rng = np.random.default_rng(2)
    for dtype in (np.float32, np.float64):
        values = (rng.normal(size=(3, 5, 100)) * 7).astype(dtype)
        valid = rng.random((5, 100)) < 0.8
        valid[1] = True
        valid[2, 3:] = False  # a short pool
        valid[4] = False  # an empty one: NaN, as numpy says
        mean, std = _masked_mean_std(values, valid)
        with np.errstate(all="ignore"), pytest.warns(RuntimeWarning):
            padded = np.where(valid, values, np.nan)
            want_mean, want_std = np.nanmean(padded, axis=2, keepdims=True), np.nanstd(padded, axis=2, keepdims=True)
        np.testing.assert_array_equal(mean, want_mean)
        np.testing.assert_array_equal(std, want_std)
        assert mean.dtype == want_mean.dtype == dtype


def test_ranked_lists_are_each_sources_top_k(fitted) -> None:  # type: ignore[no-untyped-def]
    """One top_k over all sources' rows (and popularity's fixed order) gives each source's own top_k."""
    import serving.recommender as served

    model, split = fitted
    rec, task = model.recommender, build_task(split)
    scores = rec.source_scores(task.history)
    take = min(rec.pool_size, rec.n_items)
    for blocked in (task.excluded, np.random.default_rng(1).random((len(task.users), rec.n_items)) < 0.9):
        want = {name: top_k(scores[name], blocked, take) for name in rec.source_names if rec.shares.get(name, 0) > 0}
        got = rec.ranked(scores, blocked)
        assert list(got) == list(want)
        for name in want:
            np.testing.assert_array_equal(got[name], want[name])
        stacked, served._STACKED_CELLS = served._STACKED_CELLS, 0  # one call per source instead
        try:
            for name, lists in rec.ranked(scores, blocked).items():
                np.testing.assert_array_equal(lists, want[name])
        finally:
            served._STACKED_CELLS = stacked


def test_a_history_row_is_canonical_with_each_products_events_summed(fitted) -> None:  # type: ignore[no-untyped-def]
    model, _ = fitted
    rec = model.recommender
    pids = rec.items[[4, 1, 4, 9, 1, 4]].tolist() + [-5]  # repeats, and a product outside the catalogue
    kinds = np.array(["view", "cart", "purchase", "remove_from_cart", "view", "view", "view"], dtype=object)
    row = rec.history(np.array(pids), kinds)
    weight = {k: rec.event_weights.get(k, 0.0) for k in kinds}
    want = sp.csr_matrix(([weight[k] for k in kinds[:-1]], (np.zeros(6, dtype=int), [4, 1, 4, 9, 1, 4])),
                         shape=(1, rec.n_items), dtype=np.float32)
    want.sum_duplicates()
    want.eliminate_zeros()  # remove_from_cart weighs 0: not part of the row
    assert row.has_canonical_format and row.dtype == np.float32
    np.testing.assert_array_equal(row.indices, want.indices)
    np.testing.assert_array_equal(row.data, want.data)
    assert rec.history(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=object)).nnz == 0


def test_the_session_split_decides_on_the_rest_of_each_users_last_session() -> None:
    """RankerConfig.split='session_rest': the first cut's users (whose held-out users decide whether the
    sequential source stays) are those with targets in the rest of their last session."""
    from training.quality import session_rest_split
    from training.sequential import SequentialConfig

    events = generate(SyntheticConfig(n_events=80_000, n_users=400, n_products=300, days=14, seed=2,
                                      session_focus=0.8)).events
    config = RankerConfig(epochs=1, cuts=1, pool_size=30, split="session_rest",
                          sources=("popularity", "item_knn", "sequential"),
                          sequential=SequentialConfig(epochs=1, min_steps=1))
    items = np.unique(events["product_id"].to_numpy(np.int64))
    rec = fit_recommender(events, items, config).recommender
    first_cut = build_task(session_rest_split(events))
    valid = int((np.random.default_rng(config.seed).random(len(first_cut.users)) < config.valid_fraction).sum())
    assert rec.evidence["valid_users"] == valid
    decided = {k for k in rec.evidence if k.startswith(("valid_ndcg", "dropped_valid_ndcg"))}
    assert any(k.endswith(".sequential") for k in decided)  # measured on those users, kept or dropped
    with pytest.raises(DataError, match="split must be one of"):
        RankerConfig(split="last_day")
