"""Classic recommenders: each scorer's formula on tiny matrices, fold-in scoring, and top-K selection."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models import ModelError
from models.classic import ALS, CLASSIC, EASE, ItemKNN, MultDAE, Popularity, fit_all, top_k, top_k_in_order

# Small enough that every scorer fits in well under a second on a shared 2-core box.
SMALL = {"als": {"factors": 4, "iterations": 5}, "item_knn": {"neighbours": 3}, "ease": {"l2": 10.0},
         "mult_dae": {"hidden": 8, "epochs": 20}}


@pytest.fixture
def interactions() -> sp.csr_matrix:
    """(30 users, 12 items) weights drawn from purchase/cart/view values."""
    rng = np.random.default_rng(7)
    dense = rng.choice([0.0, 0.0, 0.0, 0.1, 0.5, 1.0], size=(30, 12))
    return sp.csr_matrix(dense)


@pytest.fixture
def planted_blocks() -> sp.csr_matrix:
    """(60 users, 40 items): users 0-29 touch only items 0-19 (block A), users 30-59 only items 20-39."""
    rng = np.random.default_rng(3)
    dense = np.zeros((60, 40))
    dense[:30, :20] = rng.random((30, 20)) < 0.4
    dense[30:, 20:] = rng.random((30, 20)) < 0.4
    return sp.csr_matrix(dense)


def test_popularity_orders_items_by_total_weight() -> None:
    matrix = sp.csr_matrix(np.array([[1.0, 0.1, 0.0], [1.0, 0.0, 0.5], [0.0, 0.1, 0.5]]))
    scores = Popularity().fit(matrix).score(sp.csr_matrix((2, 3)))
    assert np.allclose(scores, [[2.0, 0.2, 1.0]] * 2)
    assert top_k(scores, None, 3)[0].tolist() == [0, 2, 1]


def test_item_knn_similarities_are_cosine_with_shrink_in_the_denominator() -> None:
    matrix = np.array(
        [[1.0, 1.0, 0.0, 0.0, 1.0], [1.0, 0.0, 1.0, 0.0, 0.0], [0.0, 1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0, 1.0]]
    )
    shrink = 2.0
    similarity = ItemKNN(neighbours=10, shrink=shrink).fit(sp.csr_matrix(matrix)).score(sp.identity(5, format="csr"))
    # By hand: items 0 and 1 share user 0, both columns have norm sqrt(2): 1 / (2 + 2).
    assert similarity[0, 1] == pytest.approx(0.25)
    # Items 2 and 3 share user 2; norms sqrt(2) and sqrt(2): 1 / 4; items 0 and 3 share nobody.
    assert similarity[2, 3] == pytest.approx(0.25) and similarity[0, 3] == 0.0
    norms = np.linalg.norm(matrix, axis=0)
    expected = (matrix.T @ matrix) / (np.outer(norms, norms) + shrink)
    np.fill_diagonal(expected, 0.0)
    assert np.allclose(similarity, expected)


def test_item_knn_keeps_only_the_top_neighbours_per_item_and_blocks_do_not_change_results(
    interactions: sp.csr_matrix,
) -> None:
    eye = sp.identity(12, format="csr")
    full = ItemKNN(neighbours=12, shrink=1.0).fit(interactions).score(eye)
    two = ItemKNN(neighbours=2, shrink=1.0).fit(interactions).score(eye)
    blocked = ItemKNN(neighbours=2, shrink=1.0, block_columns=5).fit(interactions).score(eye)
    assert all((two[:, j] != 0).sum() <= 2 for j in range(12))
    # Each kept value is one of that column's two largest in the full matrix.
    assert all(np.isclose(np.sort(two[:, j])[-2:], np.sort(full[:, j])[-2:]).all() for j in range(12))
    assert np.array_equal(two, blocked)


def test_ease_matches_the_closed_form_and_has_a_zero_diagonal() -> None:
    rng = np.random.default_rng(11)
    matrix = (rng.random((25, 8)) < 0.3).astype(float)
    l2 = 5.0
    precision = np.linalg.inv(matrix.T @ matrix + l2 * np.eye(8))
    expected = np.eye(8) - precision / np.diag(precision)
    weights = EASE(l2=l2).fit(sp.csr_matrix(matrix)).score(sp.identity(8, format="csr"))
    assert np.allclose(weights, expected, atol=1e-5)
    assert np.all(np.diag(weights) == 0.0)


def test_ease_refuses_catalogues_above_max_items(interactions: sp.csr_matrix) -> None:
    with pytest.raises(ValueError, match="max_items=10"):
        EASE(max_items=10).fit(interactions)


def test_als_ranks_a_users_own_block_above_the_other_block(planted_blocks: sp.csr_matrix) -> None:
    als = ALS(factors=4, iterations=10, random_state=1).fit(planted_blocks)
    # A fresh block-A customer who touched three block-A items, folded in at score time.
    history = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 0], [0, 5, 9])), shape=(1, 40))
    scores = als.score(history)[0]
    unseen_a = [i for i in range(20) if i not in (0, 5, 9)]
    pairs = [scores[a] > scores[b] for a in unseen_a for b in range(20, 40)]
    assert np.mean(pairs) >= 0.9
    training_users = als.score(planted_blocks)
    a_first = [(training_users[u, :20].mean() > training_users[u, 20:].mean()) == (u < 30) for u in range(60)]
    assert all(a_first)


def test_als_fits_are_identical_for_the_same_seed(planted_blocks: sp.csr_matrix) -> None:
    first = ALS(factors=4, iterations=5, random_state=5).fit(planted_blocks).score(planted_blocks)
    second = ALS(factors=4, iterations=5, random_state=5).fit(planted_blocks).score(planted_blocks)
    assert np.array_equal(first, second)


def test_mult_dae_ranks_a_users_own_block_above_the_other_block_and_is_seeded(planted_blocks: sp.csr_matrix) -> None:
    dae = MultDAE(hidden=8, epochs=60, learning_rate=1e-2, random_state=2).fit(planted_blocks)
    history = sp.csr_matrix(([1.0, 1.0, 1.0], ([0, 0, 0], [20, 25, 29])), shape=(1, 40))  # a fresh block-B customer
    scores = dae.score(history)[0]
    unseen_b = [i for i in range(20, 40) if i not in (20, 25, 29)]
    assert np.mean([scores[b] > scores[a] for b in unseen_b for a in range(20)]) >= 0.9
    again = MultDAE(hidden=8, epochs=60, learning_rate=1e-2, random_state=2).fit(planted_blocks)
    assert np.array_equal(again.score(planted_blocks), dae.score(planted_blocks))


@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_every_scorer_folds_in_a_user_unseen_at_fit_time(name: str, interactions: sp.csr_matrix) -> None:
    scorer = fit_all(interactions, names=[name], params=SMALL)[name]
    fresh = sp.csr_matrix(([1.0, 0.5, 0.1], ([0, 0, 1], [2, 7, 11])), shape=(2, 12))
    scores = scorer.score(fresh)
    assert scorer.name == name and scorer.n_items == 12
    assert scores.shape == (2, 12) and scores.dtype == np.float32
    assert np.isfinite(scores).all()  # seen items get scores too: excluding them is the caller's job
    assert np.array_equal(scores, scorer.score(fresh))


@pytest.mark.parametrize("name", sorted(CLASSIC))
def test_scoring_before_fit_or_with_the_wrong_width_says_what_to_do(name: str, interactions: sp.csr_matrix) -> None:
    with pytest.raises(ModelError, match="call fit"):
        CLASSIC[name]().score(sp.csr_matrix((1, 12)))
    scorer = fit_all(interactions, names=[name], params=SMALL)[name]
    with pytest.raises(ModelError, match="fitted on 12"):
        scorer.score(sp.csr_matrix((1, 13)))


def test_fit_all_rejects_unknown_names(interactions: sp.csr_matrix) -> None:
    with pytest.raises(ModelError, match="unknown classic scorer"):
        fit_all(interactions, names=["popularity", "svd"])


def test_top_k_never_returns_excluded_items_and_pads_with_minus_one() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.6], [0.1, 0.2, 0.3, 0.4]], dtype=np.float32)
    exclude = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 1, 1, 1]]))
    assert top_k(scores, exclude, 3).tolist() == [[1, 3, -1], [0, -1, -1]]
    assert top_k(scores, None, 6).tolist() == [[0, 1, 2, 3, -1, -1], [3, 2, 1, 0, -1, -1]]
    picked = top_k(np.random.default_rng(0).random((50, 30)), sp.eye(50, 30, format="csr"), 10)
    assert all(row not in picked[row] for row in range(30))


def test_top_k_breaks_ties_by_lower_item_index() -> None:
    scores = np.array([[0.5, 1.0, 0.5, 1.0, 0.5, 0.5, 0.2]], dtype=np.float32)
    assert top_k(scores, None, 4).tolist() == [[1, 3, 0, 2]]
    assert top_k(np.zeros((2, 100), dtype=np.float32), None, 3).tolist() == [[0, 1, 2], [0, 1, 2]]


def test_top_k_equals_sorting_every_eligible_item_by_score_then_index() -> None:
    """The reference order, spelled out: eligible items by score (best first), ties to the lower index, -1 after."""
    rng = np.random.default_rng(11)
    for trial in range(40):
        n, m = int(rng.integers(1, 5)), int(rng.integers(1, 120))
        scores = (rng.integers(0, 4, (n, m)) if trial % 2 else rng.normal(size=(n, m))).astype(np.float32)
        blocked = rng.random((n, m)) < rng.random()
        for k in (1, 7, 200):
            want = np.full((n, k), -1, dtype=np.int64)
            for r in range(n):
                ranked = sorted(np.flatnonzero(~blocked[r]).tolist(), key=lambda i: (-scores[r, i], i))[:k]
                want[r, :len(ranked)] = ranked
            np.testing.assert_array_equal(top_k(scores, blocked, k), want)
            np.testing.assert_array_equal(top_k(scores, sp.csr_matrix(blocked), k), want)


@pytest.mark.parametrize("kind", ["normal", "few_values", "mostly_zero", "ordered", "mostly_excluded"])
def test_top_k_on_long_rows_equals_the_reference_order(kind: str) -> None:
    """Rows far longer than k take top_k's sampled bound; ties en masse and heavy exclusion its full pass:
    both give the reference order (eligible items by score, ties to the lower index, -1 after)."""
    rng = np.random.default_rng(len(kind))
    n, m = 3, 5000
    scores = {"normal": rng.normal(size=(n, m)), "few_values": rng.integers(0, 3, (n, m)),
              "mostly_zero": np.where(rng.random((n, m)) < 0.99, 0.0, rng.random((n, m))),
              "ordered": np.sort(rng.normal(size=(n, m)), axis=1),
              "mostly_excluded": rng.normal(size=(n, m))}[kind].astype(np.float32)
    blocked = rng.random((n, m)) < (0.995 if kind == "mostly_excluded" else 0.02)
    for k in (1, 10, 100):
        want = np.full((n, k), -1, dtype=np.int64)
        for r in range(n):
            eligible = np.flatnonzero(~blocked[r])
            ranked = eligible[np.lexsort((eligible, -scores[r, eligible]))][:k]
            want[r, :len(ranked)] = ranked
        np.testing.assert_array_equal(top_k(scores, blocked, k), want)
        np.testing.assert_array_equal(top_k(scores, sp.csr_matrix(blocked), k), want)


def test_top_k_in_order_equals_top_k_of_the_shared_scores(interactions: sp.csr_matrix) -> None:
    popularity = Popularity().fit(interactions)
    rng = np.random.default_rng(5)
    blocked = rng.random((4, interactions.shape[1])) < 0.5
    blocked[0] = True  # nothing eligible
    scores = popularity.score(sp.csr_matrix((4, interactions.shape[1]), dtype=np.float32))
    for k in (1, 5, 20):
        np.testing.assert_array_equal(top_k_in_order(popularity.order(), blocked, 4, k), top_k(scores, blocked, k))
        np.testing.assert_array_equal(top_k_in_order(popularity.order(), None, 4, k), top_k(scores, None, k))


def test_item_knn_contributions_are_the_history_weights_times_the_similarities(interactions: sp.csr_matrix) -> None:
    knn = ItemKNN(neighbours=4).fit(interactions)
    history = interactions[3]
    items = np.array([5, 0, 11, 5, 2])  # repeated on purpose
    seen, parts = knn.contributions(history, items)
    dense = knn.similarity().toarray()
    np.testing.assert_array_equal(seen, history.indices)
    np.testing.assert_array_equal(parts, (history.data[:, None] * dense[history.indices][:, items]).astype(np.float32))
    np.testing.assert_allclose(parts.sum(axis=0), knn.score(history)[0, items], rtol=1e-6)


def test_mult_dae_scores_are_the_torch_nets_forward_pass(interactions: sp.csr_matrix) -> None:
    """`score` runs the fitted net in numpy over the history's cells: the torch eval pass up to float32 rounding."""
    import torch
    import torch.nn.functional as F

    dae = MultDAE(**SMALL["mult_dae"]).fit(interactions)
    net = dae._net(interactions.shape[1])
    net.load_state_dict(dae._state)
    rows = sp.vstack([interactions, sp.csr_matrix((1, interactions.shape[1]))]).tocsr()  # an empty row too
    with torch.no_grad():
        want = net.eval()(F.normalize(torch.from_numpy(rows.toarray().astype(np.float32)), dim=1)).numpy()
    got = dae.score(rows)
    assert got.dtype == np.float32 and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
