"""The served recommendation path over arrays: candidate sources -> exclusions and filters -> ranker -> top k.

One code path for the API (a batch of one customer, the ranker on Triton) and the offline evaluator
(thousands of users, the ranker in-process): both call `Recommender.recommend`. A customer is a row
of weighted interactions over the catalogue (fresh from the database in the API), so a new event
changes the next answer without retraining.

Candidate sources are classic models (`models.classic`) and, where fitted, the sequential model
(`models.sequential`, fed the customer's latest events in order: `serving.sequences`), each contributing its best items to a pool
of `pool_size` in proportion to its measured share; the ranker (a DLRM) re-orders the pool from
features of every source's view of each candidate. `mode` says what orders the final list: the
ranker, or one source alone when the ranker did not beat it on held-out users (training.ranker).
"""

from __future__ import annotations

import functools
import pickle
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import scipy.sparse as sp

from models.classic import ItemScorer, Popularity, index_of, top_k, top_k_in_order
from serving.sequences import Sequences, sequence_of

if TYPE_CHECKING:
    from serving.explain import Explanation
    from serving.triton_client import TritonClient

# dense (n_pairs, n_dense) float32, sparse (n_pairs, n_sparse) int64 -> (n_pairs,) scores
PairScorer = Callable[[np.ndarray, np.ndarray], np.ndarray]
RECOMMENDER_FILE = "recommender.pkl"
_STACKED_CELLS = 1 << 22  # `Recommender.ranked` stacks the sources' score rows up to this many cells (16 MiB float32)
N_ITEM_STATS = 3
# Optional user-history feature groups (`Recommender.history_features`): name -> its dense columns.
HISTORY_FEATURES: dict[str, tuple[str, ...]] = {
    # cosine between the candidate's ALS item factors and the user's history centroid in that space
    "als_affinity": ("als_history_cosine",),
    # largest item-kNN similarity between the candidate and any one item of the user's history
    "knn_max": ("knn_history_max",),
}


def item_statistics(views: np.ndarray, carts: np.ndarray, purchases: np.ndarray) -> np.ndarray:
    """(n_items, N_ITEM_STATS) float32 from per-item event counts: smoothed conversion of a view into a
    cart or purchase, log carts + purchases, log views. What a product's page does once it is seen,
    independent of how often it is shown."""
    wanted = carts + purchases
    prior = (wanted.sum() + 1.0) / (views.sum() + wanted.sum() + 2.0)  # shrink rare items to the shop's rate
    conversion = (wanted + 10.0 * prior) / (views + 10.0)
    # Counts relative to the catalogue's mean: the ranker is trained on an earlier, smaller slice of
    # events than the one it serves from, and absolute counts would shift between the two.
    return np.stack([conversion / prior, _relative_log(wanted), _relative_log(views)], axis=1).astype(np.float32)


def _relative_log(counts: np.ndarray) -> np.ndarray:
    return np.log1p(counts) - np.log1p(counts.mean() if len(counts) else 0.0)


@dataclass
class Recommender:
    """Fitted candidate sources and how their candidates are pooled and ordered.

    items: (n_items,) raw product ids, sorted; the column order of every matrix here.
    shares: source name -> share of the pool it fills (sums to 1).
    mode: "ranker" (the DLRM re-orders the pool) or a source name (that source's order is served).
    """

    items: np.ndarray
    sources: dict[str, ItemScorer]
    shares: dict[str, float]
    popularity: np.ndarray  # (n_items,) training users per item
    item_stats: np.ndarray  # (n_items, N_ITEM_STATS) float32: `item_statistics` of the fit data
    pool_size: int = 200
    mode: str = "ranker"
    evidence: dict[str, float] = field(default_factory=dict)  # held-out figures behind `mode` and `shares`
    event_weights: dict[str, float] = field(default_factory=dict)  # event type -> weight of a history row
    history_features: tuple[str, ...] = ()  # HISTORY_FEATURES groups appended to the ranker's inputs
    blend_source: str | None = None  # in ranker mode, this source's pool-standardised score is added ...
    blend_weight: float = 0.0  # ... with this weight to the ranker's pool-standardised logit (0: ranker alone)

    @property
    def n_items(self) -> int:
        return len(self.items)

    @property
    def source_names(self) -> list[str]:
        return sorted(self.sources)

    @property
    def n_dense(self) -> int:
        return 2 * len(self.sources) + 2 + N_ITEM_STATS + len(self._history_columns())

    def _history_columns(self) -> list[str]:
        return [c for group in self.history_features for c in HISTORY_FEATURES[group]]

    @property
    def cardinalities(self) -> list[int]:
        return [self.n_items + 1]  # item code 0 stands for "unknown"

    def feature_names(self) -> tuple[list[str], list[str]]:
        """(continuous, categorical) names of the ranker's inputs, in `features` order."""
        dense = [f"{name}.{part}" for name in self.source_names for part in ("score_z", "inverse_rank")]
        dense += ["log_popularity", "log_history_length", "conversion", "log_wanted", "log_views"]
        return dense + self._history_columns(), ["product"]

    def schema(self) -> dict:
        """schema.json of the ranker's inputs (docs/CONTRACTS.md layout), for export and Triton."""
        continuous, categorical = self.feature_names()
        columns = [{"name": c, "tags": ["continuous"], "dtype": "float32"} for c in continuous]
        columns += [{"name": "product", "tags": ["categorical", "item"], "cardinality": self.n_items + 1,
                     "dtype": "int64"}]
        return {"columns": columns, "continuous": continuous, "categorical": categorical, "target": "relevant"}

    def history(self, product_ids: np.ndarray, event_types: np.ndarray) -> sp.csr_matrix:
        """(1, n_items) weighted row of one customer's events; products outside the catalogue are ignored."""
        cols = index_of(self.items, np.asarray(product_ids, dtype=np.int64))
        weights = np.array([self.event_weights.get(str(t), 0.0) for t in event_types], dtype=np.float32)
        keep = (cols >= 0) & (weights > 0)
        cols, weights = cols[keep], weights[keep]
        order = np.argsort(cols, kind="stable")  # each product's events together, in the order they came
        cols, weights = cols[order], weights[order]
        first = np.flatnonzero(np.r_[True, cols[1:] != cols[:-1]]) if len(cols) else np.zeros(0, dtype=np.int64)
        # canonical CSR built directly (sorted, summed duplicates): no COO conversion per request
        return sp.csr_matrix((np.add.reduceat(weights, first) if len(cols) else weights, cols[first],
                              np.array([0, len(first)])), shape=(1, self.n_items))

    def sequences(self, product_ids: np.ndarray, event_types: np.ndarray) -> Sequences:
        """(1, length) ordered latest events of one customer (ids in time order), for the sequential source."""
        return sequence_of(self.items, product_ids, event_types)

    def blocked(self, allowed: np.ndarray, excluded_ids: np.ndarray) -> np.ndarray:
        """(1, n_items) bool: items not `allowed` (a mask over `items`) or among `excluded_ids`."""
        out = ~np.asarray(allowed, dtype=bool).copy()
        cols = index_of(self.items, np.asarray(excluded_ids, dtype=np.int64))
        out[cols[cols >= 0]] = True
        return out[None, :]

    # ------------------------------------------------------------------------------ candidates
    def source_scores(self, history: sp.csr_matrix, sequences: Sequences | None = None) -> dict[str, np.ndarray]:
        """Every source's (n_rows, n_items) full-catalogue scores for these histories; a sequential source
        reads `sequences` (the same rows' events in order), or the history's items unordered without them."""
        out = {}
        for name in self.source_names:
            source = self.sources[name]
            by_sequence = getattr(source, "score_sequences", None)
            if by_sequence is not None and sequences is not None:
                out[name] = np.asarray(by_sequence(sequences.items, sequences.kinds), dtype=np.float32)
            else:
                out[name] = np.asarray(source.score(history), dtype=np.float32)
        return out

    def ranked(self, scores: dict[str, np.ndarray], blocked: sp.csr_matrix | np.ndarray) -> dict[str, np.ndarray]:
        """Each pooled source's (n_rows, min(pool_size, n_items)) best non-blocked items (`top_k`): what
        `pool` draws from, and what `explain` reads an item's rank by each source from."""
        take = min(self.pool_size, self.n_items)
        out, scored = {}, []
        for name in self._quota():  # a source with no share adds nothing
            source = self.sources.get(name)
            if isinstance(source, Popularity) and np.array_equal(scores[name], np.broadcast_to(
                    source.weights, scores[name].shape)):  # its scores, the same in every row: one fixed order
                out[name] = top_k_in_order(source.order(), blocked, len(scores[name]), take)
            else:
                scored.append(name)
        n = len(scores[scored[0]]) if scored else 0
        if scored and len(scored) * n * self.n_items <= _STACKED_CELLS:
            # One top_k over all these sources' rows (top_k works row by row: the same lists as a call per
            # source, for a fraction of the calls' fixed cost, which is most of it for one customer).
            dense_blocked = blocked.toarray() if sp.issparse(blocked) else np.asarray(blocked, dtype=bool)
            tops = top_k(np.concatenate([scores[name] for name in scored]), np.tile(dense_blocked, (len(scored), 1)),
                         take)
            out.update({name: tops[j * n:(j + 1) * n] for j, name in enumerate(scored)})
        else:
            out.update({name: top_k(scores[name], blocked, take) for name in scored})
        return {name: out[name] for name in self._quota()}

    def _quota(self) -> dict[str, int]:
        return {s: max(1, int(round(self.shares.get(s, 0.0) * self.pool_size))) for s in self.source_names
                if self.shares.get(s, 0.0) > 0}

    def pool(self, scores: dict[str, np.ndarray], blocked: sp.csr_matrix | np.ndarray,
             ranked: dict[str, np.ndarray] | None = None) -> np.ndarray:
        """(n_rows, pool_size) distinct item indices, -1 padded: each source's best non-blocked items
        in turn up to its share, then any source's next best, then popularity, so a pool is short
        only when fewer items are eligible. `ranked`: `self.ranked(scores, blocked)` when the caller has it."""
        n = next(iter(scores.values())).shape[0]
        quota = self._quota()
        ranked = self.ranked(scores, blocked) if ranked is None else ranked
        out = np.full((n, self.pool_size), -1, dtype=np.int64)
        chosen = np.zeros((n, self.n_items + 1), dtype=bool)  # column n_items: the -1 padding, never free
        chosen[:, -1] = True
        count = np.zeros(n, dtype=np.int64)
        # each source's share first (in name order), then the rest by share order, then popularity
        turns: list[tuple[np.ndarray | None, int]] = [(ranked[s], q) for s, q in quota.items()]
        turns += [(ranked[s], self.pool_size) for s in sorted(quota, key=quota.get, reverse=True)]
        turns.append((None, self.pool_size))  # popularity: computed only when a pool is still short
        rows = np.arange(n)[:, None]
        for candidates, limit in turns:
            if count.min(initial=self.pool_size) >= self.pool_size:
                break  # every pool is full
            if candidates is None:
                candidates = self._popular_pool(blocked, n)
            # a source's list is distinct items, so only earlier turns can have taken one of them
            free = ~chosen[rows, candidates]
            rank = np.cumsum(free, axis=1)  # 1-based position among this list's free items
            r, c = np.nonzero(free & (rank <= np.minimum(limit, self.pool_size - count)[:, None]))
            picked = candidates[r, c]
            out[r, count[r] + rank[r, c] - 1] = picked
            chosen[r, picked] = True
            count += np.bincount(r, minlength=n)
        return out

    def _popular_pool(self, blocked: sp.csr_matrix | np.ndarray, n: int) -> np.ndarray:
        """(n_rows, min(pool_size, n_items)) the most popular non-blocked items per row, -1 padded:
        `top_k` of `popularity`, from an order computed once per recommender."""
        return top_k_in_order(self._popularity_order, blocked, n, min(self.pool_size, self.n_items))

    @functools.cached_property
    def _log_popularity(self) -> np.ndarray:
        """The ranker's log_popularity input of every item, computed once per recommender."""
        return _relative_log(self.popularity)

    @functools.cached_property
    def _popularity_order(self) -> np.ndarray:
        """Item indices by popularity, most first, ties to the lower index (`top_k`'s order)."""
        return np.argsort(-self.popularity.astype(np.float32), kind="stable")

    # ------------------------------------------------------------------------------ features
    def features(self, history: sp.csr_matrix, scores: dict[str, np.ndarray],
                 pool: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """dense (n_rows * pool_size, n_dense) float32 and sparse (n_rows * pool_size, 1) int64.

        Per source: the candidate's score standardised within the user's pool and 1 / (1 + its rank
        by that source inside the pool); then log item popularity, log history length and the item's
        `item_statistics`. Within-user scaling keeps features comparable between sources fitted on
        more or less data.
        """
        n, c = pool.shape
        valid = pool >= 0
        safe = np.where(valid, pool, 0)
        rows = np.arange(n)[:, None]
        dense = np.zeros((n, c, self.n_dense), dtype=np.float32)
        base = 2 * len(self.source_names)
        if base:  # every source at once: (n_sources, n, c), each row's statistics along the last axis
            s = np.stack([scores[name][rows, safe] for name in self.source_names])
            mean, std = _masked_mean_std(s, valid)
            z = np.nan_to_num((s - mean) / np.where(std > 0, std, 1.0))  # padding cells: zeroed below
            order = np.argsort(-np.where(valid, s, -np.inf), axis=2, kind="stable")
            rank = np.empty_like(order)
            np.put_along_axis(rank, order, np.broadcast_to(np.arange(c), order.shape), axis=2)
            dense[:, :, 0:base:2] = z.transpose(1, 2, 0)
            dense[:, :, 1:base:2] = 1.0 / (1.0 + rank.transpose(1, 2, 0))
        dense[:, :, base] = self._log_popularity[safe]
        dense[:, :, base + 1] = np.log1p(np.diff(history.indptr))[:, None]
        dense[:, :, base + 2:base + 2 + N_ITEM_STATS] = self.item_stats[safe]
        at = base + 2 + N_ITEM_STATS
        for group in self.history_features:
            width = len(HISTORY_FEATURES[group])
            dense[:, :, at:at + width] = self._history_group(group, history, safe)
            at += width
        dense[~valid] = 0.0
        sparse = np.where(valid, pool + 1, 0)[:, :, None].astype(np.int64)
        return dense.reshape(n * c, self.n_dense), sparse.reshape(n * c, 1)

    def _history_group(self, group: str, history: sp.csr_matrix, pool: np.ndarray) -> np.ndarray:
        """(n_rows, pool_size, width) float32 of one HISTORY_FEATURES group for the pool's candidates."""
        n, c = pool.shape
        if group == "als_affinity":
            factors = self.sources["als"].item_factors  # (n_items, f)
            unit = factors / np.maximum(np.linalg.norm(factors, axis=1, keepdims=True), 1e-12)
            weights = sp.csr_matrix(history, dtype=np.float32)
            centroid = np.asarray(weights @ unit)  # (n, f) history-weighted sum of unit item vectors
            centroid /= np.maximum(np.linalg.norm(centroid, axis=1, keepdims=True), 1e-12)
            return np.einsum("nf,ncf->nc", centroid, unit[pool])[:, :, None].astype(np.float32)
        if group == "knn_max":
            similarity = self.sources["item_knn"].similarity()  # (n_items, n_items) CSR, row = history item
            out = np.zeros((n, c), dtype=np.float32)
            for r in range(n):
                seen = history.indices[history.indptr[r]:history.indptr[r + 1]]
                if len(seen):
                    out[r] = similarity[seen][:, pool[r]].max(axis=0).toarray().ravel()
            return out[:, :, None]
        raise ValueError(f"unknown history feature group {group!r}; choose from {sorted(HISTORY_FEATURES)}")

    # ------------------------------------------------------------------------------ the path
    def recommend(self, history: sp.csr_matrix, blocked: sp.csr_matrix | np.ndarray, k: int,
                  ranker: PairScorer | None, scores: dict[str, np.ndarray] | None = None,
                  sequences: Sequences | None = None,
                  ranked: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(n_rows, k) item indices best first (-1 where fewer than k are eligible) and their scores.

        history: (n_rows, n_items) weighted interactions; blocked: (n_rows, n_items) bool of items not
        to recommend (exclusions and filters, applied before the cut to k). Without a ranker, or in a
        source mode, the pool is ordered by that source (or the first source by share). `scores`: the
        `source_scores` of `history` when the caller already has them (to explain the list after).
        sequences: the same rows' latest events in order (`serving.sequences`), read by a sequential source.
        ranked: `self.ranked(scores, blocked)` when the caller has it (to explain the list after).
        """
        scores = self.source_scores(history, sequences) if scores is None else scores
        if self.mode != "ranker" or ranker is None:
            name = self.mode if self.mode in self.sources else max(self.shares, key=self.shares.get)
            items = top_k(scores[name], blocked, k)
            return items, _gather(scores[name], items)
        pool = self.pool(scores, blocked, ranked)
        dense, sparse = self.features(history, scores, pool)
        ranked = np.asarray(ranker(dense, sparse), dtype=np.float32).reshape(pool.shape)
        if self.blend_weight and self.blend_source in self.sources:
            ranked = blend(ranked, dense.reshape(*pool.shape, -1)[:, :, 2 * self.source_names.index(self.blend_source)],
                           pool >= 0, self.blend_weight)
        ranked = np.where(pool >= 0, ranked, -np.inf)
        order = np.argsort(-ranked, axis=1, kind="stable")[:, :k]
        items = np.take_along_axis(pool, order, axis=1)
        out_scores = np.take_along_axis(ranked, order, axis=1)
        items = np.where(np.isfinite(out_scores), items, -1)
        if items.shape[1] < k:  # a catalogue smaller than k
            items = np.pad(items, ((0, 0), (0, k - items.shape[1])), constant_values=-1)
            out_scores = np.pad(out_scores, ((0, 0), (0, k - out_scores.shape[1])), constant_values=-np.inf)
        return items, np.where(items >= 0, out_scores, np.nan)

    def explain(self, history: sp.csr_matrix, blocked: sp.csr_matrix | np.ndarray, items: np.ndarray,
                scores: dict[str, np.ndarray], events: dict[int, str] | None = None,
                category_id: int | None = None,
                ranked: dict[str, np.ndarray] | None = None) -> list["Explanation"]:
        """Why each of one customer's recommended `items` (indices, -1 skipped) is there
        (`serving.explain`): the source that ranks it best, and the history items behind its score.
        ranked: `self.ranked(scores, blocked)` when the caller has it (the ranks are then read off it)."""
        from serving.explain import explain

        row = blocked[:1].toarray() if sp.issparse(blocked) else np.asarray(blocked)[:1]
        return explain(self.sources, self.items, history, {n: s[0] for n, s in scores.items()},
                       row[0], items, self.shares, events, category_id, self.mode,
                       None if ranked is None else {n: r[0] for n, r in ranked.items()})

    # ------------------------------------------------------------------------------ files
    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / RECOMMENDER_FILE
        with open(path, "wb") as fh:
            pickle.dump(self, fh, protocol=pickle.HIGHEST_PROTOCOL)
        return path

    @staticmethod
    def load(folder: Path) -> "Recommender":
        path = Path(folder)
        path = path / RECOMMENDER_FILE if path.is_dir() else path
        with open(path, "rb") as fh:
            recommender = pickle.load(fh)  # our own artifact, written by training.ranker
        if not isinstance(recommender, Recommender):
            raise TypeError(f"{path} holds a {type(recommender).__name__}, not a Recommender")
        return recommender


def blend(probability: np.ndarray, source_z: np.ndarray, valid: np.ndarray, weight: float) -> np.ndarray:
    """(n_rows, pool) ranking value: the ranker's logit standardised within each pool plus `weight` times a
    source's score standardised within the pool (`features`' score_z). Scale-free, so a weight chosen on
    held-out users means the same on any data set."""
    p = np.clip(probability.astype(np.float64), 1e-7, 1 - 1e-7)
    logit = np.log(p) - np.log1p(-p)
    mean, std = _masked_mean_std(logit, valid)
    z = np.where(valid, np.nan_to_num((logit - mean) / np.where(std > 0, std, 1.0)), 0.0)
    return (z + weight * source_z).astype(np.float32)


def _masked_mean_std(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation along the last axis (kept) over the cells where `valid` (broadcast
    against `values`): NaN where a row has none. The operations of np.nanmean / np.nanstd on `values`
    with NaN in the other cells, in their order and dtypes (so the same floats), without their
    per-call copies and checks, which cost more than the arithmetic on a pool of 100."""
    valid = np.broadcast_to(valid, values.shape)
    cells = np.where(valid, values, 0)
    count = np.sum(valid, axis=-1, dtype=np.intp, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.sum(cells, axis=-1, keepdims=True)
        np.divide(mean, count, out=mean, casting="unsafe")
        deviation = np.where(valid, cells - mean, 0)
        np.multiply(deviation, deviation, out=deviation)
        var = np.sum(deviation, axis=-1, keepdims=True)
        np.divide(var, count, out=var, casting="unsafe")
    var[count <= 0] = np.nan
    return mean, np.sqrt(var)


def _gather(scores: np.ndarray, items: np.ndarray) -> np.ndarray:
    safe = np.where(items >= 0, items, 0)
    return np.where(items >= 0, np.take_along_axis(scores, safe, axis=1), np.nan)


SequentialOn = Literal["auto", "triton", "worker"]
SEQUENTIAL_ON: tuple[str, ...] = ("auto", "triton", "worker")


def sequential_runs_on(choice: str, repo_dir: Path, triton_model: str | None, has_onnx: bool) -> str | None:
    """Where a served bundle's sequential source runs: "triton", "worker" (ONNX Runtime in the API
    process), or None (neither ships: the pickled PyTorch scorer stays).

    The model is small (one customer's sequence costs ~0.1 ms of ONNX Runtime on one CPU thread), while a
    Triton round trip costs ~0.5 ms of Triton's CPU (HTTP, the dynamic batcher, the Python-backend stub)
    and ~0.4 ms of the client's, measured on the benchmark's world (README, "Latency"). So "auto" sends it to
    Triton only where Triton runs it on a GPU (the repository's instance group is KIND_GPU), where batching
    customers together pays; on CPU it runs in the worker. An explicit choice is kept where the bundle
    ships what it needs, else the other place serves.
    """
    if choice not in SEQUENTIAL_ON:
        raise ValueError(f"sequential_on must be one of {SEQUENTIAL_ON}, got {choice!r}")
    on_triton = triton_model is not None
    if choice == "auto" and on_triton:
        from serving.triton_repo import instance_kind

        choice = "triton" if instance_kind(repo_dir, triton_model) == "KIND_GPU" else "worker"
    if choice == "worker" and has_onnx:
        return "worker"
    if on_triton:
        return "triton"
    return "worker" if has_onnx else None


class TritonRecommender:
    """What the API holds for a bundle that ships a recommender: its `Recommender`, ranked on Triton
    (the `serving.request_path.ServedRecommender` of every deployment).

    `recommend_explained` is the request-time call of the path the evaluator runs in batch: one
    customer's events -> weighted history row -> `Recommender.recommend` with Triton as the pair scorer.
    Raises `serving.errors.RankerUnavailable` when Triton cannot answer (the API then falls back).
    """

    def __init__(self, recommender: Recommender, client: "TritonClient") -> None:
        self.recommender = recommender
        self.client = client

    @classmethod
    def from_bundle(cls, bundle_dir: Path, triton_url: str, protocol: str = "http",
                    timeout_s: float = 5.0, pin_version: bool = False,
                    sequential_on: SequentialOn = "auto") -> "TritonRecommender":
        """The bundle's recommender ranked by its Triton model. sequential_on: where the sequential source's
        model runs (`sequential_runs_on`): "triton" (the repository's `sequential` model, beside the ranker),
        "worker" (ONNX Runtime on the same ONNX file in this process) or "auto" (Triton when that model's
        instance group is on a GPU, else the worker)."""
        from serving.bundle import RECOMMENDER_DIR, REPO_DIR, ServingBundle
        from serving.triton_client import TritonClient as Client

        from serving.sequential_export import SEQUENTIAL_ONNX, OnnxSequentialScorer
        from serving.triton_client import TritonSequentialScorer

        bundle = ServingBundle.load(Path(bundle_dir))
        deployment = bundle.deployment
        folder = Path(bundle_dir) / (deployment.recommender or RECOMMENDER_DIR)
        recommender = Recommender.load(folder)
        sequential = recommender.sources.get("sequential")
        if sequential is not None:
            where = sequential_runs_on(sequential_on, Path(bundle_dir) / REPO_DIR, deployment.sequential_model,
                                       (folder / SEQUENTIAL_ONNX).is_file())
            if where == "triton":  # beside the ranker, same version
                recommender.sources["sequential"] = TritonSequentialScorer(
                    Client(triton_url, deployment.sequential_model, protocol, timeout_s,  # type: ignore[arg-type]
                           model_version=str(deployment.triton_version)), sequential.n_items, sequential.max_len)
            elif where == "worker":  # ONNX Runtime in the worker, not torch
                recommender.sources["sequential"] = OnnxSequentialScorer.replacing(sequential, folder / SEQUENTIAL_ONNX)
        version = str(deployment.triton_version) if pin_version else ""  # pinned: an experiment's arm
        return cls(recommender, Client(triton_url, deployment.model_name, protocol, timeout_s,  # type: ignore[arg-type]
                                       model_version=version))

    @property
    def items(self) -> np.ndarray:
        """The product ids it can recommend (`Recommender.items`): what `allowed` masks."""
        return self.recommender.items

    def recommend_explained(self, product_ids: np.ndarray, event_types: np.ndarray, allowed: np.ndarray,
                            excluded_ids: np.ndarray, k: int,
                            category_id: int | None = None) -> list[tuple[int, float, "Explanation"]]:
        """Up to k (product_id, score, explanation) best first; `allowed` masks `items` (available,
        passing the request's filters), `excluded_ids` are never returned. The score is the ranker's
        probability that the customer interacts with the product next, its blend with a source (see
        `blend`) when `blend_weight` is set, or the serving source's score in a source mode. Each item's
        `serving.explain.Explanation` is computed for these k only; category_id: the request's category
        filter, named by popular items' explanations."""
        from serving.explain import strongest_events

        rec = self.recommender
        scorer = None if rec.mode != "ranker" else self.client.score
        history, blocked = rec.history(product_ids, event_types), rec.blocked(allowed, excluded_ids)
        scores = rec.source_scores(history, rec.sequences(product_ids, event_types))
        # each source's top list: the pool's input, and where explain reads each item's rank
        ranked = rec.ranked(scores, blocked) if scorer is not None else None
        items, out_scores = rec.recommend(history, blocked, k, scorer, scores, ranked=ranked)
        keep = items[0] >= 0
        why = rec.explain(history, blocked, items[0][keep], scores,
                          strongest_events(product_ids, event_types, rec.event_weights), category_id, ranked)
        return [(int(p), float(s), e) for p, s, e in zip(rec.items[items[0][keep]], out_scores[0][keep], why)]

    def is_ready(self) -> bool:
        return bool(self.client.is_ready())

    def close(self) -> None:
        self.client.close()
        sequential = self.recommender.sources.get("sequential")
        if hasattr(sequential, "close"):  # the Triton sequential model's connection
            sequential.close()
