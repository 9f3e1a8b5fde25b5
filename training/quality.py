"""The full-catalogue evaluation protocol: time splits, top-k list metrics per user, bootstrap intervals.

Every method (the served recommender, each classic baseline, an oracle) is judged the same way:
for each test user it returns a top-k list over the whole catalogue, items excluded as the API
excludes them (`seen`, `purchased` or `none` in the training part), and the list is scored against
the items the user interacted with in the test part. Metrics are kept per user, so intervals and
paired differences between methods come from the same users.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from contracts import EventWeights
from models.classic import index_of, top_k
from serving.sequences import Sequences, sequences_of_events
from training.errors import DataError

Exclude = Literal["seen", "purchased", "none"]
EXCLUDE_CHOICES: tuple[str, ...] = ("seen", "purchased", "none")


@dataclass(frozen=True)
class Split:
    """Events before and after the cut, on one item index (the catalogue every method ranks over).

    `train` holds every user's events before the cut; `test` the events that are to be predicted.
    `items` are the raw product ids of the catalogue (train and test products), sorted.
    """

    train: pd.DataFrame  # columns user_id, product_id, event_type, event_time (+ anything else)
    test: pd.DataFrame
    items: np.ndarray  # (n_items,) int64 raw product ids, sorted
    kind: str  # "user_holdout", "session_rest", "window" or "window_session_rest"

    def item_index(self, product_ids: np.ndarray) -> np.ndarray:
        """Column of each product id in `items`, -1 for products outside the catalogue."""
        return index_of(self.items, product_ids)


def _check_events(events: pd.DataFrame) -> None:
    missing = {"user_id", "product_id", "event_type", "event_time"} - set(events.columns)
    if missing:
        raise DataError(f"events lack columns {sorted(missing)}")


def user_holdout(events: pd.DataFrame, test_fraction: float = 0.2, min_sessions: int = 2) -> Split:
    """Per-user temporal holdout: each user's last `test_fraction` of *sessions* (at least one) is test.

    Sessions, not single events, so a basket or a browsing session is never split across the cut;
    users with a single session stay in train only.
    """
    _check_events(events)
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    ev = events.sort_values(["user_id", "event_time"], kind="stable").reset_index(drop=True)
    session = _sessions_of(ev)
    # Order of each session within its user by first event time.
    first = ev.assign(_s=session).groupby(["user_id", "_s"], sort=False)["event_time"].min().rename("_t").reset_index()
    first["_rank"] = first.groupby("user_id")["_t"].rank(method="first")
    first["_n"] = first.groupby("user_id")["_s"].transform("size")
    n_test = np.maximum(1, np.floor(first["_n"] * test_fraction)).astype(int)
    first["_test"] = (first["_rank"] > first["_n"] - n_test) & (first["_n"] >= min_sessions)
    flag = ev.assign(_s=session).merge(first[["user_id", "_s", "_test"]], on=["user_id", "_s"], how="left")["_test"]
    is_test = flag.fillna(False).to_numpy(dtype=bool)
    return _split(ev[~is_test], ev[is_test], "user_holdout")


def _sessions_of(ev: pd.DataFrame) -> pd.Series:
    """Each event's session: `user_session` where the data has it, else the calendar day (UTC)."""
    return ev["user_session"] if "user_session" in ev else ev["event_time"].dt.floor("D").astype(str)


def _last_session_positions(events: pd.DataFrame) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Events sorted by (user, time); per event: in the user's last session?, its place in that session
    (0 = first event) and the session's event count (both 0 outside the last session)."""
    ev = events.sort_values(["user_id", "event_time"], kind="stable").reset_index(drop=True)
    session = _sessions_of(ev)
    start = ev.assign(_s=session).groupby(["user_id", "_s"], sort=False)["event_time"].transform("min")
    # The last session is the one that starts last (two starting at the same instant count as one).
    last_start = start.groupby(ev["user_id"]).transform("max")
    in_last = (start == last_start).to_numpy()
    keys = pd.Series(np.where(in_last, ev["user_id"].to_numpy(np.int64), -1))
    position = np.where(in_last, keys.groupby(keys).cumcount().to_numpy(), 0)
    size = np.where(in_last, keys.groupby(keys).transform("size").to_numpy(), 0)
    return ev, in_last, position, size


def session_rest_split(events: pd.DataFrame) -> Split:
    """Next items within a session: each user's last session is cut after its first half of events.

    Train holds every event before the user's last session plus the first half (at least one event,
    in time order) of that session; test is the rest of the session, which `build_task` turns into
    the relevant items (its carts and purchases by default). A last session of a single event stays
    in train. This is the real-time question: given what the customer did so far today, what next?
    """
    _check_events(events)
    ev, in_last, position, size = _last_session_positions(events)
    is_test = in_last & (size >= 2) & (position >= np.maximum(1, size // 2))
    return _split(ev[~is_test], ev[is_test], "session_rest")


def before_last_session(events: pd.DataFrame) -> pd.DataFrame:
    """Every user's events before their last session (the history an earlier `session_rest_split` cut sees)."""
    _check_events(events)
    ev, in_last, _, _ = _last_session_positions(events)
    return ev[~in_last].reset_index(drop=True)


SPLITS: tuple[str, ...] = ("user_holdout", "session_rest")


def window_split(events: pd.DataFrame, test_start: pd.Timestamp) -> Split:
    """Events from `test_start` on are test: the nightly run's held-out window."""
    _check_events(events)
    is_test = (events["event_time"] >= test_start).to_numpy()
    return _split(events[~is_test], events[is_test], "window")


def window_session_split(events: pd.DataFrame, test_start: pd.Timestamp) -> Split:
    """The held-out window asked the real-time question (`session_rest_split` inside the window).

    Train holds every event before `test_start` plus, for each user, the first half (at least one
    event) of their last session in the window; test is the rest of that session. The window's other
    events (a user's earlier sessions in it) are neither history nor target: they are dropped, so the
    recommender fitted on the events before `test_start` meets the same history as at serving time,
    where the API receives the session's latest events with the request.
    """
    _check_events(events)
    before = events[(events["event_time"] < test_start).to_numpy()]
    held = events[(events["event_time"] >= test_start).to_numpy()]
    ev, in_last, position, size = _last_session_positions(held)
    is_test = in_last & (size >= 2) & (position >= np.maximum(1, size // 2))
    first_half = in_last & ~is_test
    return _split(pd.concat([before, ev[first_half]], ignore_index=True), ev[is_test], "window_session_rest")


EVAL_SPLITS: tuple[str, ...] = ("window", "session_rest")  # how the nightly asks its held-out days


def held_out_start(events: pd.DataFrame, days: int) -> pd.Timestamp:
    """Midnight (UTC) starting the last `days` calendar days of the events."""
    return events["event_time"].max().floor("D") - pd.Timedelta(days=days - 1)


def last_days_split(events: pd.DataFrame, days: int, by: str = "window") -> Split:
    """The last `days` calendar days (UTC) of the events are held out: all of them are test (`window`),
    or each user's last session in them is cut after its first half (`session_rest`, window_session_split)."""
    _check_events(events)
    if days < 1:
        raise DataError(f"test days must be >= 1, got {days}")
    if by not in EVAL_SPLITS:
        raise DataError(f"evaluation split must be one of {EVAL_SPLITS}, got {by!r}")
    start = held_out_start(events, days)
    return window_split(events, start) if by == "window" else window_session_split(events, start)


def _split(train: pd.DataFrame, test: pd.DataFrame, kind: str) -> Split:
    if train.empty or test.empty:
        raise DataError(f"{kind} split left {len(train)} train and {len(test)} test events; need both")
    items = np.union1d(train["product_id"].to_numpy(np.int64), test["product_id"].to_numpy(np.int64))
    return Split(train.reset_index(drop=True), test.reset_index(drop=True), items, kind)


def interaction_matrix(events: pd.DataFrame, users: np.ndarray, split: Split,
                       weights: EventWeights) -> sp.csr_matrix:
    """(len(users), n_items) float32: summed event weights of each listed user (sorted ids) per catalogue item."""
    users = np.asarray(users, dtype=np.int64)
    if np.any(users[1:] < users[:-1]):
        raise DataError("users must be sorted ascending")
    rows = index_of(users, events["user_id"].to_numpy(np.int64))
    cols = split.item_index(events["product_id"].to_numpy(np.int64))
    keep = (rows >= 0) & (cols >= 0)
    w = weights.of(events["event_type"])
    matrix = sp.csr_matrix((w[keep], (rows[keep], cols[keep])), shape=(len(users), len(split.items)),
                           dtype=np.float32)
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return matrix


def exclusion_matrix(events: pd.DataFrame, users: np.ndarray, split: Split, exclude: Exclude) -> sp.csr_matrix:
    """Boolean (len(users), n_items): the items each user may not be recommended, as the API excludes them."""
    if exclude not in EXCLUDE_CHOICES:
        raise DataError(f"exclude must be one of {EXCLUDE_CHOICES}, got {exclude!r}")
    if exclude == "none":
        return sp.csr_matrix((len(users), len(split.items)), dtype=bool)
    chosen = events if exclude == "seen" else events[events["event_type"] == "purchase"]
    ones = EventWeights(view=1.0, cart=1.0, purchase=1.0, remove_from_cart=1.0)
    return interaction_matrix(chosen, users, split, ones).astype(bool)


@dataclass(frozen=True)
class Task:
    """What is to be predicted: for each test user, the relevant items not excluded by the training part."""

    split: Split
    users: np.ndarray  # (n_users,) raw user ids, sorted, each with history and at least one relevant item
    history: sp.csr_matrix  # (n_users, n_items) weighted training interactions
    excluded: sp.csr_matrix  # (n_users, n_items) bool
    relevant: sp.csr_matrix  # (n_users, n_items) bool
    exclude: Exclude
    weights: EventWeights
    relevant_events: tuple[str, ...]
    n_skipped_cold: int  # test users without training history (the API serves them popular items)
    item_popularity: np.ndarray  # (n_items,) training users per item: what `popularity_bias` is measured by
    sequences: Sequences | None = None  # each user's latest training events in time order (sequential source)

    @property
    def n_items(self) -> int:
        return len(self.split.items)

    def subset(self, rows: np.ndarray) -> "Task":
        return replace(self, users=self.users[rows], history=self.history[rows], excluded=self.excluded[rows],
                       relevant=self.relevant[rows],
                       sequences=None if self.sequences is None else self.sequences[rows])


def build_task(split: Split, weights: EventWeights = EventWeights(), exclude: Exclude = "seen",
               relevant_events: Iterable[str] = ("cart", "purchase"), max_users: int | None = None,
               seed: int = 0) -> Task:
    """Test users with training history and at least one relevant, not excluded item in the test part.

    `relevant_events`: test events that make an item relevant (default: carts and purchases; the
    product's goal); `max_users` subsamples users (seeded) to bound the cost on large data.
    """
    relevant_events = tuple(relevant_events)
    test = split.test[split.test["event_type"].isin(relevant_events)]
    train_users = np.unique(split.train["user_id"].to_numpy(np.int64))
    test_users = np.unique(test["user_id"].to_numpy(np.int64))
    users = np.intersect1d(test_users, train_users)
    cold = len(test_users) - len(users)
    if max_users is not None and len(users) > max_users:
        users = np.sort(np.random.default_rng(seed).choice(users, max_users, replace=False))
    excluded = exclusion_matrix(split.train, users, split, exclude)
    ones = EventWeights(view=1.0, cart=1.0, purchase=1.0, remove_from_cart=1.0)
    relevant = interaction_matrix(test, users, split, ones).astype(bool)
    relevant = (relevant.astype(np.int8) - relevant.multiply(excluded).astype(np.int8)).astype(bool)
    relevant.eliminate_zeros()
    has = np.diff(relevant.indptr) > 0
    users = users[has]
    return Task(split, users, interaction_matrix(split.train, users, split, weights), excluded[has], relevant[has],
                exclude, weights, relevant_events, cold, item_popularity(split),
                sequences_of_events(split.train, users, split.items))


# ---------------------------------------------------------------------------------------------- metrics

@dataclass(frozen=True)
class ListMetrics:
    """Per-user metrics of one method's top-k lists (arrays aligned with `Task.users`)."""

    k: int
    ndcg: np.ndarray
    recall: np.ndarray
    mrr: np.ndarray
    hit: np.ndarray
    coverage: float  # share of the catalogue that appears in some list
    popularity: float  # mean over list entries of the item's share of training interactions, / catalogue mean
    short_lists: float  # share of lists with fewer than k items

    def mean(self) -> dict[str, float]:
        return {f"ndcg_at_{self.k}": float(self.ndcg.mean()), f"recall_at_{self.k}": float(self.recall.mean()),
                f"mrr_at_{self.k}": float(self.mrr.mean()), f"hitrate_at_{self.k}": float(self.hit.mean()),
                f"coverage_at_{self.k}": self.coverage, f"popularity_bias_at_{self.k}": self.popularity,
                f"short_lists_at_{self.k}": self.short_lists}


def list_metrics(task: Task, top: np.ndarray, k: int) -> ListMetrics:
    """Score (n_users, >=k) item indices, best first, -1 for an empty slot, against `task.relevant`.

    NDCG uses binary gains and the ideal list of min(k, n_relevant) hits; Recall@k divides by
    min(k, n_relevant) so a perfect list scores 1 whatever the number of relevant items.
    """
    top = np.asarray(top)[:, :k]
    if top.shape[0] != len(task.users):
        raise DataError(f"{top.shape[0]} lists for {len(task.users)} users")
    rel = task.relevant
    hits = np.zeros(top.shape, dtype=bool)
    for r in range(top.shape[0]):  # one searchsorted per user; indices of a CSR row are sorted
        row = rel.indices[rel.indptr[r]:rel.indptr[r + 1]]
        if len(row):
            at = np.clip(np.searchsorted(row, top[r]), 0, len(row) - 1)
            hits[r] = (row[at] == top[r]) & (top[r] >= 0)
    n_rel = np.diff(rel.indptr).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = (hits * discounts[: top.shape[1]]).sum(axis=1)
    ideal = np.cumsum(discounts)[np.minimum(n_rel, k).astype(int) - 1]
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), -1)
    listed = top[top >= 0]
    item_pop = task.item_popularity
    pop_mean = item_pop.mean() if item_pop.size else 1.0
    return ListMetrics(
        k=k,
        ndcg=dcg / ideal,
        recall=hits.sum(axis=1) / np.minimum(n_rel, k),
        mrr=np.divide(1.0, first + 1.0, out=np.zeros(len(first)), where=first >= 0),
        hit=hits.any(axis=1).astype(np.float64),
        coverage=float(len(np.unique(listed)) / max(task.n_items, 1)),
        popularity=float(item_pop[listed].mean() / pop_mean) if listed.size and pop_mean > 0 else float("nan"),
        short_lists=float(((top >= 0).sum(axis=1) < k).mean()),
    )


def item_popularity(split: Split) -> np.ndarray:
    """(n_items,) count of distinct training users per catalogue item."""
    cols = split.item_index(split.train["product_id"].to_numpy(np.int64))
    pairs = pd.DataFrame({"u": split.train["user_id"].to_numpy(np.int64), "i": cols}).drop_duplicates()
    return np.bincount(pairs["i"][pairs["i"] >= 0], minlength=len(split.items)).astype(np.float64)


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def bootstrap(values: np.ndarray, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap over users of the mean of `values` (per-user metric, or paired difference)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return Interval(float("nan"), float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    # Resampling counts instead of indices: (n_boot, n) multinomial weights, one matmul.
    counts = rng.multinomial(values.size, np.full(values.size, 1.0 / values.size), size=n_boot)
    means = counts @ values / values.size
    alpha = (1.0 - level) / 2.0
    return Interval(float(values.mean()), float(np.quantile(means, alpha)), float(np.quantile(means, 1 - alpha)))


@dataclass
class MethodResult:
    name: str
    metrics: ListMetrics
    seconds: float = 0.0
    intervals: dict[str, Interval] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        out = self.metrics.mean()
        for key, ci in self.intervals.items():
            out[f"{key}_ci_low"], out[f"{key}_ci_high"] = ci.low, ci.high
        out["seconds"] = self.seconds
        return out


def with_intervals(result: MethodResult, n_boot: int = 1000, seed: int = 0) -> MethodResult:
    k = result.metrics.k
    for name in ("ndcg", "recall", "mrr", "hit"):
        key = f"{'hitrate' if name == 'hit' else name}_at_{k}"
        result.intervals[key] = bootstrap(getattr(result.metrics, name), n_boot, seed=seed)
    return result


def paired_difference(a: ListMetrics, b: ListMetrics, n_boot: int = 1000, seed: int = 0) -> Interval:
    """Bootstrap interval of mean NDCG(a) - NDCG(b) over the same users."""
    return bootstrap(a.ndcg - b.ndcg, n_boot, seed=seed)


def top_k_lists(score_rows: Callable[[np.ndarray], np.ndarray], task: Task, k: int,
                batch: int = 512) -> np.ndarray:
    """(n_users, k) best items per user from a full-catalogue scorer, excluded items never listed.

    `score_rows(rows)` returns (len(rows), n_items) scores for the task's users at `rows`.
    """
    out = np.full((len(task.users), k), -1, dtype=np.int64)
    for start in range(0, len(task.users), batch):
        rows = np.arange(start, min(start + batch, len(task.users)))
        out[rows] = top_k(np.asarray(score_rows(rows), dtype=np.float32), task.excluded[rows], k)
    return out
