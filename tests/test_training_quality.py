"""The full-catalogue protocol: splits, exclusions, list metrics computed by hand, bootstrap intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.errors import DataError
from training.quality import (EventWeights, before_last_session, bootstrap, build_task, interaction_matrix,
                              last_days_split, list_metrics, session_rest_split, user_holdout, window_split)


def _events(rows: list[tuple[int, int, str, str, str]]) -> pd.DataFrame:
    """(user, product, event_type, ISO time, session) rows."""
    frame = pd.DataFrame(rows, columns=["user_id", "product_id", "event_type", "event_time", "user_session"])
    frame["event_time"] = pd.to_datetime(frame["event_time"], utc=True)
    return frame


@pytest.fixture
def shop() -> pd.DataFrame:
    return _events([
        (1, 10, "view", "2026-01-01 10:00", "a"), (1, 11, "purchase", "2026-01-01 10:05", "a"),
        (1, 12, "view", "2026-01-02 09:00", "b"), (1, 13, "cart", "2026-01-05 09:00", "c"),
        (1, 10, "purchase", "2026-01-05 09:01", "c"),
        (2, 11, "view", "2026-01-01 11:00", "d"), (2, 14, "purchase", "2026-01-05 12:00", "e"),
        (3, 10, "purchase", "2026-01-05 08:00", "f"),  # only test events: a cold user
    ])


def test_user_holdout_keeps_each_users_last_sessions_whole(shop: pd.DataFrame) -> None:
    split = user_holdout(shop, test_fraction=0.34)
    assert set(split.test["user_session"]) == {"c", "e"}  # user 1: 1 of 3 sessions; user 2: 1 of 2
    assert "f" in set(split.train["user_session"])  # a single-session user stays in train
    assert len(split.train) + len(split.test) == len(shop)
    assert list(split.items) == [10, 11, 12, 13, 14]


def test_seen_items_are_excluded_and_not_counted_relevant(shop: pd.DataFrame) -> None:
    task = build_task(last_days_split(shop, 1), exclude="seen")
    # user 1 re-bought 10 (seen) and carted 13: only 13 is relevant; user 3 has no history (cold)
    assert task.users.tolist() == [1, 2]
    relevant = {int(u): set(task.split.items[task.relevant[i].indices].tolist()) for i, u in enumerate(task.users)}
    assert relevant == {1: {13}, 2: {14}}
    assert set(task.split.items[task.excluded[0].indices].tolist()) == {10, 11, 12}
    assert task.n_skipped_cold == 1
    none = build_task(last_days_split(shop, 1), exclude="none")
    assert set(none.split.items[none.relevant[0].indices].tolist()) == {10, 13}


def test_history_rows_sum_configured_event_weights(shop: pd.DataFrame) -> None:
    task = build_task(last_days_split(shop, 1), EventWeights(view=0.5, cart=2.0, purchase=3.0))
    row = dict(zip(task.split.items[task.history[0].indices].tolist(), task.history[0].data.tolist()))
    assert row == {10: 0.5, 11: 3.0, 12: 0.5}
    assert EventWeights.parse("view=0,purchase=2") == EventWeights(view=0.0, cart=0.5, purchase=2.0)
    with pytest.raises(ValueError, match="click"):  # contracts.ContractError
        EventWeights.parse("click=1")


def test_list_metrics_match_hand_computed_values(shop: pd.DataFrame) -> None:
    task = build_task(last_days_split(shop, 1), exclude="seen")
    cols = {int(p): i for i, p in enumerate(task.split.items)}
    # user 1's relevant item 13 at rank 2; user 2's relevant 14 absent, one slot empty
    top = np.array([[cols[14], cols[13], -1], [cols[13], -1, -1]])
    m = list_metrics(task, top, 3)
    assert m.ndcg.tolist() == pytest.approx([1 / np.log2(3), 0.0])
    assert m.recall.tolist() == [1.0, 0.0] and m.hit.tolist() == [1.0, 0.0]
    assert m.mrr.tolist() == pytest.approx([0.5, 0.0])
    assert m.coverage == pytest.approx(2 / 5)
    assert m.short_lists == 1.0


def test_bootstrap_interval_covers_the_mean_and_narrows_with_more_users() -> None:
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.1, 1, 100), rng.normal(0.1, 1, 10_000)
    a, b = bootstrap(small), bootstrap(large)
    assert a.low < small.mean() < a.high and b.low < large.mean() < b.high
    assert (b.high - b.low) < (a.high - a.low) / 5
    assert bootstrap(np.full(50, 0.2)).excludes_zero() and not bootstrap(rng.normal(0, 1, 50)).excludes_zero()


def test_a_split_without_test_events_is_refused(shop: pd.DataFrame) -> None:
    with pytest.raises(DataError, match="test"):
        window_split(shop, pd.Timestamp("2030-01-01", tz="UTC"))


def test_session_rest_split_holds_out_the_second_half_of_each_users_last_session() -> None:
    events = _events([
        (1, 10, "view", "2026-01-01 10:00", "a"),
        (1, 11, "view", "2026-01-03 09:00", "b"), (1, 12, "view", "2026-01-03 09:01", "b"),
        (1, 13, "cart", "2026-01-03 09:02", "b"), (1, 14, "purchase", "2026-01-03 09:03", "b"),
        (1, 15, "cart", "2026-01-03 09:04", "b"),
        (2, 11, "view", "2026-01-02 11:00", "c"), (2, 16, "cart", "2026-01-02 11:01", "c"),
        (3, 10, "view", "2026-01-01 08:00", "d"), (3, 12, "purchase", "2026-01-04 08:00", "e"),
    ])
    split = session_rest_split(events)
    assert split.kind == "session_rest"
    test = set(zip(split.test["user_id"], split.test["product_id"]))
    # user 1: 5 events in the last session, the first 2 are history, the last 3 are to be predicted;
    # user 2: a session of 2 events, 1 and 1; user 3: a last session of one event stays in train
    assert test == {(1, 13), (1, 14), (1, 15), (2, 16)}
    assert len(split.train) + len(split.test) == len(events)
    task = build_task(split, exclude="seen")
    relevant = {int(u): set(split.items[task.relevant[i].indices].tolist()) for i, u in enumerate(task.users)}
    assert relevant == {1: {13, 14, 15}, 2: {16}}
    # the sequences the sequential source reads end with the session's first half, in time order
    last = task.sequences.items[0][-3:] - 1
    assert split.items[last].tolist() == [10, 11, 12]
    earlier = before_last_session(events)
    assert set(earlier["user_session"]) == {"a", "d"}


def test_the_nightly_session_split_asks_the_rest_of_each_users_last_session_in_the_held_out_days() -> None:
    events = _events([
        (1, 10, "view", "2026-01-01 10:00", "a"),
        (1, 11, "cart", "2026-01-05 08:00", "b"),  # an earlier session in the held-out day: neither side
        (1, 12, "view", "2026-01-05 09:00", "c"), (1, 13, "view", "2026-01-05 09:01", "c"),
        (1, 14, "cart", "2026-01-05 09:02", "c"), (1, 15, "purchase", "2026-01-05 09:03", "c"),
        (2, 11, "view", "2026-01-02 11:00", "d"), (2, 16, "view", "2026-01-05 11:00", "e"),
        (2, 17, "cart", "2026-01-05 11:01", "e"),
        (3, 10, "purchase", "2026-01-03 08:00", "f"),  # nothing in the held-out day
    ])
    split = last_days_split(events, 1, by="session_rest")
    assert split.kind == "window_session_rest"
    assert set(zip(split.test["user_id"], split.test["product_id"])) == {(1, 14), (1, 15), (2, 17)}
    # history: everything before the day, plus the first half of each user's last session in it
    assert set(zip(split.train["user_id"], split.train["product_id"])) == {(1, 10), (1, 12), (1, 13), (2, 11),
                                                                            (2, 16), (3, 10)}
    task = build_task(split, exclude="seen")
    relevant = {int(u): set(split.items[task.relevant[i].indices].tolist()) for i, u in enumerate(task.users)}
    assert relevant == {1: {14, 15}, 2: {17}}
    # the baselines (training.compare) score the task's history: it holds the half session, as the served path's does
    first_user = interaction_matrix(split.train, task.users, split, task.weights)[0]
    assert set(split.items[first_user.indices].tolist()) == {10, 12, 13}
    assert (task.history != interaction_matrix(split.train, task.users, split, task.weights)).nnz == 0
    assert split.items[task.sequences.items[0][-3:] - 1].tolist() == [10, 12, 13]
    # the window split, the default, keeps today's behaviour: every relevant event of the day is a target
    window = last_days_split(events, 1)
    assert window.kind == "window" and (1, 11) in set(zip(window.test["user_id"], window.test["product_id"]))
    with pytest.raises(DataError, match="evaluation split must be one of"):
        last_days_split(events, 1, by="sessions")


def test_session_rest_split_uses_calendar_days_without_session_ids(shop: pd.DataFrame) -> None:
    split = session_rest_split(shop.drop(columns="user_session"))
    # user 1's last day (2026-01-05) has two events: the cart of 13 is history, the purchase of 10 test
    assert set(zip(split.test["user_id"], split.test["product_id"])) == {(1, 10)}


def test_session_rest_split_needs_a_session_of_two_events() -> None:
    single = _events([(1, 10, "view", "2026-01-01 10:00", "a"), (2, 11, "view", "2026-01-02 10:00", "b")])
    with pytest.raises(DataError, match="session_rest split left"):
        session_rest_split(single)
