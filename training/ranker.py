"""Fit the served recommender: candidate sources, their pool shares, and a DLRM that re-ranks the pool.

The ranker learns next-interaction prediction: the training events are split once more per user
(each user's last sessions are the ranker's targets), the sources are fitted on the earlier part,
and the DLRM is trained listwise (softmax over each user's candidate pool, the pool's popular-by-
construction items being the negatives) to put the items the user went on to interact with first.
Held-out users decide whether the ranker is served at all: if one source alone orders its list
better, that source is served (`Recommender.mode`). They are split in two: "stop" users pick the
ranker's epoch and its blend; "decide" users, untouched by those choices, compare the ranker so chosen
with the best source alone, since a figure maximised over epochs and blends on the users that then judge
it would favour the ranker. Sources alone (which is best, whether the sequential one stays) are compared
on every held-out user: a source's figure is maximised over nothing. The sources are then refitted on
all events.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from models.classic import CLASSIC, ItemScorer, top_k
from models.dlrm import DLRM, DLRMConfig, save_model
from models.saved import load_model
from models.sequential import SequentialScorer
from serving.recommender import HISTORY_FEATURES, PairScorer, Recommender, blend, item_statistics
from serving.sequential_export import SEQUENTIAL_ONNX, export_sequential
from training.errors import DataError
from training.sequential import SequentialConfig, fit_sequential
from training.quality import (SPLITS, EventWeights, Exclude, ListMetrics, Split, Task, before_last_session,
                              build_task, interaction_matrix, list_metrics, session_rest_split, user_holdout)

log = logging.getLogger(__name__)

MODEL_FILE = "ranker.pt"
SEQUENTIAL = "sequential"  # the source name of models.sequential's SASRec (trained by training.sequential)
SCHEMA_FILE = "schema.json"  # the ranker's inputs, as export and Triton read them


@dataclass(frozen=True)
class RankerConfig:
    """How the served recommender is fitted; chosen on the synthetic shop, reported on every data set."""

    # mult_dae added on measurement (bench/quality_variants.py): synthetic 0.1199 vs 0.1173-0.1189 (3 seeds)
    # without it, Instacart 0.0594 vs 0.0581; never worse on either.
    sources: tuple[str, ...] = ("item_knn", "als", "ease", "popularity", "mult_dae", SEQUENTIAL)
    ease_max_items: int = 4_000  # EASE scores a request with a dense (items x items) product: 64 MB and a few ms at 4k
    source_params: dict[str, dict] = field(default_factory=dict)  # name -> constructor arguments
    sequential: SequentialConfig = SequentialConfig()  # the sequential source's model and training
    # "held_out": the sequential source stays only if, alone, it beats every classic source on the
    # held-out users of the first cut (else the ranker is trained and served without it); "always": kept.
    keep_sequential: str = "held_out"
    # The ranker's targets and every held-out decision (sequential kept, served mode, blend) use this
    # split of the training events, the same kind the evaluation measures: "user_holdout" (each user's
    # last `holdout_fraction` of sessions) or "session_rest" (the rest of the last session from its
    # first half: the real-time, next-in-session question; training.quality.session_rest_split).
    split: str = "user_holdout"
    pool_size: int = 100  # 100 and 200 tied on the synthetic shop (bench/quality.py); 100 costs half
    holdout_fraction: float = 0.2  # of each user's training sessions: the ranker's targets
    # Of the ranker's users: held out from its training. 0.5, not 0.25, since they are halved below (stop,
    # decide): 0.25 left 60 decide users on Instacart; served NDCG@10 at 0.5 vs 0.25 (bench.quality):
    # synthetic 0.1212 vs 0.1196, at 1.6M events 0.1261 vs 0.1254, Instacart 0.0589 vs 0.0586.
    valid_fraction: float = 0.5
    # Of those validation users: the "decide" users, who alone judge the ranker against the best source; the
    # rest ("stop") choose the ranker's epoch and its blend, so that judgement is not biased by them. Sources
    # alone (which is best, whether the sequential one stays) are compared on every validation user.
    decide_fraction: float = 0.5
    cuts: int = 3  # holdouts stacked back in time, each a list per user for the ranker
    epochs: int = 30
    patience: int = 5
    batch_users: int = 128
    learning_rate: float = 1e-2
    embedding_dim: int = 16
    k: int = 10
    seed: int = 0
    history_features: tuple[str, ...] = ()  # serving.recommender.HISTORY_FEATURES groups
    # Weights tried on held-out users for ranker + weight * source (0, the ranker alone, always competes);
    # with the Mult-DAE source: synthetic 0.1213 vs 0.1199 without, Instacart 0.0593 vs 0.0594 (a tie).
    blend_weights: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0)

    def __post_init__(self) -> None:
        unknown = [s for s in self.sources if s not in CLASSIC and s != SEQUENTIAL]
        if unknown or not self.sources:
            raise DataError(f"unknown candidate sources {unknown}; choose from {sorted([*CLASSIC, SEQUENTIAL])}")
        if self.keep_sequential not in ("held_out", "always"):
            raise DataError(f"keep_sequential must be 'held_out' or 'always', got {self.keep_sequential!r}")
        if not 0.0 < self.decide_fraction < 1.0:
            raise DataError(f"decide_fraction must lie strictly between 0 and 1, got {self.decide_fraction}")
        if self.split not in SPLITS:
            raise DataError(f"split must be one of {SPLITS}, got {self.split!r}")
        bad = [g for g in self.history_features if g not in HISTORY_FEATURES]
        needs = {"als_affinity": "als", "knn_max": "item_knn"}
        bad += [g for g in self.history_features if g in needs and needs[g] not in self.sources]
        if bad:
            raise DataError(f"history features {bad} are unknown or lack their source; choose from "
                            f"{sorted(HISTORY_FEATURES)} with its source ({needs}) among `sources`")


@dataclass
class FittedRecommender:
    recommender: Recommender
    ranker: DLRM | None
    history: list[dict] = field(default_factory=list)  # one row per ranker epoch: epoch, valid ndcg

    def scorer(self) -> PairScorer | None:
        return None if self.ranker is None else torch_scorer(self.ranker)

    def save(self, folder: Path) -> Path:
        folder = Path(folder)
        self.recommender.save(folder)
        (folder / SCHEMA_FILE).write_text(json.dumps(self.recommender.schema(), indent=2))
        if self.ranker is not None:
            save_model(self.ranker, folder / MODEL_FILE)
        sequential = self.recommender.sources.get(SEQUENTIAL)
        if isinstance(sequential, SequentialScorer):  # what the API serves it from, parity-checked
            export_sequential(sequential, folder / SEQUENTIAL_ONNX)
        return folder

    @classmethod
    def load(cls, folder: Path) -> "FittedRecommender":
        folder = Path(folder)
        ranker = load_model(folder / MODEL_FILE) if (folder / MODEL_FILE).exists() else None
        return cls(Recommender.load(folder), ranker)


def torch_scorer(model: DLRM, batch: int = 65536) -> PairScorer:
    """The ranker in-process (the offline evaluator's stand-in for Triton: same weights, and the same
    sigmoid as the exported scoring head, so float32 saturation ties the same pairs)."""
    model.eval()

    def score(dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        out = np.empty(len(dense), dtype=np.float32)
        with torch.no_grad():
            for s in range(0, len(dense), batch):
                out[s:s + batch] = torch.sigmoid(model(torch.from_numpy(dense[s:s + batch]),
                                                       torch.from_numpy(sparse[s:s + batch]))).float().numpy()
        return out

    return score


def fit_sources(events: pd.DataFrame, split: Split, config: RankerConfig,
                weights: EventWeights) -> tuple[dict[str, ItemScorer], np.ndarray]:
    """Every configured source fitted on all users' weighted interactions in `events`."""
    users = np.unique(events["user_id"].to_numpy(np.int64))
    matrix = interaction_matrix(events, users, split, weights)
    names = [n for n in config.sources if (n != "ease" or len(split.items) <= config.ease_max_items) and n in CLASSIC]
    sources: dict[str, ItemScorer] = {name: CLASSIC[name](**config.source_params.get(name, {})).fit(matrix)
                                      for name in names}
    if SEQUENTIAL in config.sources:  # ordered events, not the weighted matrix
        sources[SEQUENTIAL] = fit_sequential(events, split.items, config.sequential)
    popularity = np.asarray((matrix > 0).sum(axis=0)).ravel().astype(np.float64)
    return sources, popularity


def item_stats_of(events: pd.DataFrame, split: Split) -> np.ndarray:
    """`serving.recommender.item_statistics` of the catalogue from the events' counts per type."""
    cols = split.item_index(events["product_id"].to_numpy(np.int64))
    counts = {t: np.bincount(cols[(events["event_type"] == t).to_numpy() & (cols >= 0)], minlength=len(split.items))
              for t in ("view", "cart", "purchase")}
    return item_statistics(counts["view"].astype(np.float64), counts["cart"].astype(np.float64),
                           counts["purchase"].astype(np.float64))


def _shares(recommender: Recommender, task: Task) -> dict[str, float]:
    """Pool share of each source by its recall within a full pool on held-out users (its contribution)."""
    scores = recommender.source_scores(task.history, task.sequences)
    found = {}
    for name in recommender.source_names:
        top = top_k(scores[name], task.excluded, recommender.pool_size)
        found[name] = float(list_metrics(task, top, recommender.pool_size).recall.mean())
    total = sum(found.values())
    return {n: (v / total if total > 0 else 1.0 / len(found)) for n, v in found.items()}


@dataclass
class _Lists:
    """One cut's candidate pools with features and labels, for the ranker's training or validation."""

    task: Task
    pool: np.ndarray  # (n_users, pool_size)
    dense: torch.Tensor  # (n_users, pool_size, n_dense)
    sparse: torch.Tensor  # (n_users, pool_size, 1)
    labels: np.ndarray  # (n_users, pool_size) bool
    scores: dict[str, np.ndarray]


def _cut_lists(events: pd.DataFrame, items: np.ndarray, config: RankerConfig, weights: EventWeights,
               exclude: Exclude, relevant_events: tuple[str, ...],
               shares: dict[str, float] | None) -> tuple[_Lists, Recommender, pd.DataFrame]:
    """Sources fitted on each user's earlier sessions, pools for the later ones; and the earlier events."""
    if config.split == "session_rest":
        inner, earlier = session_rest_split(events), before_last_session(events)
    else:
        inner = user_holdout(events, config.holdout_fraction)
        earlier = inner.train
    inner = Split(inner.train, inner.test, items, "ranker")
    task = build_task(inner, weights, exclude, relevant_events)
    sources, popularity = fit_sources(inner.train, inner, config, weights)
    rec = Recommender(items, sources, {n: 1.0 / len(sources) for n in sources}, popularity,
                      item_stats_of(inner.train, inner), config.pool_size,
                      history_features=tuple(config.history_features))
    rec.shares = shares or _shares(rec, task)
    scores = rec.source_scores(task.history, task.sequences)
    pool = rec.pool(scores, task.excluded)
    dense, sparse = rec.features(task.history, scores, pool)
    c = pool.shape[1]
    lists = _Lists(task, pool, torch.from_numpy(dense).view(len(pool), c, -1),
                   torch.from_numpy(sparse).view(len(pool), c, -1), _pool_labels(task, pool), scores)
    return lists, rec, earlier


def fit_recommender(train_events: pd.DataFrame, items: np.ndarray, config: RankerConfig = RankerConfig(),
                    weights: EventWeights = EventWeights(), exclude: Exclude = "seen",
                    relevant_events: tuple[str, ...] = ("cart", "purchase")) -> FittedRecommender:
    """Sources, shares, ranker and served mode from `train_events` (nothing after them is read).

    Cut 1 holds out each user's last sessions; its users are split into ranker-training and
    validation users, and these into stop and decide users (`RankerConfig.decide_fraction`). Each
    further cut repeats the holdout on the events before the previous one, giving the ranker more lists
    from the same users (validation users' lists excluded).
    """
    torch.manual_seed(config.seed)
    items = np.asarray(items, dtype=np.int64)
    first, rec, earlier = _cut_lists(train_events, items, config, weights, exclude, relevant_events, None)
    if len(first.task.users) < 10:
        raise DataError(f"only {len(first.task.users)} users have ranker targets; need at least 10")
    rng = np.random.default_rng(config.seed)
    is_valid = rng.random(len(first.task.users)) < config.valid_fraction
    valid_users = set(first.task.users[is_valid].tolist())
    valid_rows = np.flatnonzero(is_valid)
    stop_rows, decide_rows = split_validation(valid_rows, config.decide_fraction, config.seed)
    sequential_evidence = _sequential_loses(first, valid_rows, config)  # sources alone: every held-out user
    if sequential_evidence:  # refit the cut without it: the ranker's features must match what is served
        log.info("sequential source dropped: held-out ndcg@%d %s", config.k, sequential_evidence)
        config = replace(config, sources=tuple(s for s in config.sources if s != SEQUENTIAL))
        first, rec, earlier = _cut_lists(train_events, items, config, weights, exclude, relevant_events, None)
    training = [(first, np.flatnonzero(~is_valid))]
    # Each cut's lists of the stop and of the decide users (their lists in every cut: more evidence).
    stop_users, decide_users = first.task.users[stop_rows], first.task.users[decide_rows]
    stop, decide = [(first, stop_rows)], [(first, decide_rows)]
    for _ in range(config.cuts - 1):
        try:
            more, _, earlier = _cut_lists(earlier, items, config, weights, exclude, relevant_events, rec.shares)
        except DataError:  # too little history left for another cut
            break
        training.append((more, np.flatnonzero([u not in valid_users for u in more.task.users.tolist()])))
        for held, users in ((stop, stop_users), (decide, decide_users)):
            in_cut = np.flatnonzero(np.isin(more.task.users, users))
            if len(in_cut):
                held.append((more, in_cut))
    dense = torch.cat([t.dense[rows] for t, rows in training])
    sparse = torch.cat([t.sparse[rows] for t, rows in training])
    labels = np.concatenate([t.labels[rows] for t, rows in training])
    valid_mask = torch.from_numpy(np.concatenate([t.pool[rows] >= 0 for t, rows in training]))
    trainable = np.flatnonzero(labels.any(axis=1))
    labels_t = torch.from_numpy(labels)
    model = DLRM(DLRMConfig(n_dense=rec.n_dense, cardinalities=rec.cardinalities,
                            embedding_dim=config.embedding_dim, bottom_mlp=[64, 32], top_mlp=[64, 32]))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    c = first.pool.shape[1]

    def valid_ndcg() -> float:  # the stop users': early stopping
        return float(_blend_ndcg(stop, _probabilities(model, stop), rec, None, 0.0, config.k).mean())

    best, best_state, stale, history = -1.0, None, 0, []
    for epoch in range(config.epochs):
        model.train()
        order = trainable[rng.permutation(len(trainable))]
        for start in range(0, len(order), config.batch_users):
            rows = torch.from_numpy(order[start:start + config.batch_users])
            logits = model(dense[rows].reshape(-1, dense.shape[2]),
                           sparse[rows].reshape(-1, sparse.shape[2])).view(len(rows), c)
            logits = logits.masked_fill(~valid_mask[rows], float("-inf"))
            loss = listwise_loss(logits, labels_t[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        ndcg = valid_ndcg()
        history.append({"epoch": epoch, f"valid_ndcg_at_{config.k}": ndcg, "train_loss": float(loss.detach())})
        log.info("ranker epoch %d: valid ndcg@%d %.4f", epoch, config.k, ndcg)
        if ndcg > best:
            best, best_state, stale = ndcg, {k: v.clone() for k, v in model.state_dict().items()}, 0
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)

    # The ranker's blend is chosen on the stop users too. The best source alone is chosen on every held-out
    # user (a source's figure is not maximised over anything, so the stop users add evidence, not bias); the
    # decide users alone then compare the ranker so chosen with that source, the ranker served only if it wins.
    blend_source, blend_weight, blended = None, 0.0, best
    if config.blend_weights:
        blend_source, blend_weight, blended = _choose_blend(model, stop, rec, config)
    per_list = {"ranker": _blend_ndcg(decide, _probabilities(model, decide), rec, blend_source, blend_weight, config.k)}
    per_list |= {name: _source_ndcg(decide, name, config.k) for name in rec.source_names}
    evidence = {name: float(values.mean()) for name, values in per_list.items()}
    held_out = {name: float(np.concatenate([_source_ndcg(stop, name, config.k), per_list[name]]).mean())
                for name in rec.source_names}
    best_source = max(held_out, key=held_out.get)
    mode = "ranker" if evidence["ranker"] > evidence[best_source] else best_source
    if mode != "ranker":
        blend_source, blend_weight = None, 0.0
    margin = per_list["ranker"] - per_list[best_source]  # paired, per list: how sure the decision is
    log.info("served mode %s (decide users' ndcg@%d over %d lists: %s; best source on every held-out user: %s "
             "%s; ranker - %s %.4f +- %.4f)", mode, config.k, len(margin), {k: round(v, 4) for k, v in evidence.items()},
             best_source, {k: round(v, 4) for k, v in held_out.items()}, best_source, margin.mean(), _se(margin))

    split = Split(train_events, train_events.iloc[:0], items, "full")
    full_sources, full_popularity = fit_sources(train_events, split, config, weights)
    final = Recommender(items, full_sources, rec.shares, full_popularity, item_stats_of(train_events, split),
                        config.pool_size, mode,
                        {f"valid_ndcg_at_{config.k}.{k}": v for k, v in evidence.items()}
                        | {f"share.{k}": v for k, v in rec.shares.items()}
                        | {f"dropped_valid_ndcg_at_{config.k}.{k}": v for k, v in sequential_evidence.items()}
                        | {f"held_out_ndcg_at_{config.k}.{k}": v for k, v in held_out.items()}
                        | {"ranker_lists": float(len(trainable)), "valid_users": float(len(valid_rows)),
                           "stop_users": float(len(stop_rows)), "decide_users": float(len(decide_rows)),
                           "stop_lists": float(sum(len(r) for _, r in stop)),
                           "decide_lists": float(sum(len(r) for _, r in decide)),
                           f"stop_ndcg_at_{config.k}.ranker": best, "cuts": float(len(training)),
                           "ranker_minus_best_source": float(margin.mean()),
                           "ranker_minus_best_source_se": _se(margin)},
                        asdict(weights), tuple(config.history_features), blend_source, blend_weight)
    if config.blend_weights:
        final.evidence.update({"blend_weight": blend_weight, f"blend_valid_ndcg_at_{config.k}": blended}
                              | ({f"blend.{blend_source}": 1.0} if blend_source else {}))
    return FittedRecommender(final, model, history)


def split_validation(valid_rows: np.ndarray, decide_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(stop rows, decide rows): disjoint, sorted, together `valid_rows`, about `decide_fraction` of them
    deciding and at least one of each (its own generator: the ranker's training order is unchanged)."""
    if len(valid_rows) < 2:
        raise DataError(f"only {len(valid_rows)} validation users; need at least 2 (raise valid_fraction)")
    n_decide = min(max(round(len(valid_rows) * decide_fraction), 1), len(valid_rows) - 1)
    decide = np.zeros(len(valid_rows), dtype=bool)
    decide[np.random.default_rng([seed, 1]).permutation(len(valid_rows))[:n_decide]] = True
    return valid_rows[~decide], valid_rows[decide]


def _sequential_loses(first: _Lists, valid_rows: np.ndarray, config: RankerConfig) -> dict[str, float]:
    """Held-out NDCG@k of each source alone when the sequential one is to be dropped (it loses to a
    classic source on the first cut's validation users); {} when it stays or is not configured."""
    if SEQUENTIAL not in first.scores or config.keep_sequential == "always":
        return {}
    ndcg = {name: float(_sub_metrics(first.task, valid_rows, top_k(scores[valid_rows], first.task.excluded[valid_rows],
                                                                   config.k), config.k).ndcg.mean())
            for name, scores in first.scores.items()}
    best_other = max(v for n, v in ndcg.items() if n != SEQUENTIAL)
    return ndcg if ndcg[SEQUENTIAL] <= best_other else {}


Held = list[tuple[_Lists, np.ndarray]]  # held-out lists: (a cut's lists, the rows of the held-out users in it)


def _choose_blend(model: DLRM, held: Held, rec: Recommender, config: RankerConfig) -> tuple[str | None, float, float]:
    """The (source, weight) whose blend with the ranker orders the held-out pools best; weight 0
    (ranker alone) unless a blend beats it."""
    probabilities = _probabilities(model, held)
    best = (None, 0.0, float(_blend_ndcg(held, probabilities, rec, None, 0.0, config.k).mean()))
    for name in rec.source_names:
        for weight in config.blend_weights:
            value = float(_blend_ndcg(held, probabilities, rec, name, weight, config.k).mean())
            if value > best[2]:
                best = (name, float(weight), value)
    log.info("blend: %s weight %.2f (stop users' ndcg@%d %.4f)", best[0], best[1], config.k, best[2])
    return best


def _probabilities(model: DLRM, held: Held) -> list[np.ndarray]:
    """Per held-out part, (len(rows), pool_size): the ranker's probability of each candidate."""
    model.eval()
    out = []
    with torch.no_grad():
        for lists, rows in held:
            n, c = lists.pool[rows].shape
            logits = model(lists.dense[rows].reshape(n * c, -1), lists.sparse[rows].reshape(n * c, -1))
            out.append(torch.sigmoid(logits).view(n, c).numpy())
    return out


def _blend_ndcg(held: Held, probabilities: list[np.ndarray], rec: Recommender, source: str | None,
                weight: float, k: int) -> np.ndarray:
    """NDCG@k of each held-out list ordered as served: by the ranker's probability, or by
    `serving.recommender.blend` with `source` at `weight`."""
    out = []
    for (lists, rows), probability in zip(held, probabilities):
        pool = lists.pool[rows]
        valid = pool >= 0
        values = probability
        if source is not None and weight:
            values = blend(probability, lists.dense[rows][:, :, 2 * rec.source_names.index(source)].numpy(),
                           valid, weight)
        order = np.argsort(-np.where(valid, values, -np.inf), axis=1, kind="stable")[:, :k]
        out.append(_sub_metrics(lists.task, rows, np.take_along_axis(pool, order, axis=1), k).ndcg)
    return np.concatenate(out)


def _source_ndcg(held: Held, name: str, k: int) -> np.ndarray:
    """NDCG@k of each held-out list ordered by the source `name` alone over the whole catalogue."""
    return np.concatenate([_sub_metrics(lists.task, rows, top_k(lists.scores[name][rows], lists.task.excluded[rows], k),
                                        k).ndcg for lists, rows in held])


def _se(values: np.ndarray) -> float:
    """Standard error of the mean of `values`."""
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")


def listwise_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The ranker's objective: cross-entropy of the softmax over each pool (padding at -inf) against the
    pool's relevant items, spread evenly over them: next interactions, the pool's other items as negatives."""
    target = labels.float()
    target = target / target.sum(dim=1, keepdim=True)
    return -(target * F.log_softmax(logits, dim=1).nan_to_num(neginf=0.0)).sum(dim=1).mean()


def _pool_labels(task: Task, pool: np.ndarray) -> np.ndarray:
    """(n_users, pool_size) bool: the candidate is one of the user's relevant items."""
    rel = task.relevant
    out = np.zeros(pool.shape, dtype=bool)
    for r in range(pool.shape[0]):
        row = rel.indices[rel.indptr[r]:rel.indptr[r + 1]]
        if len(row):
            out[r] = np.isin(pool[r], row) & (pool[r] >= 0)
    return out


def _rank(model: DLRM, dense: torch.Tensor, sparse: torch.Tensor, pool: np.ndarray, k: int) -> np.ndarray:
    model.eval()
    n, c = pool.shape
    with torch.no_grad():
        logits = model(dense.reshape(n * c, -1), sparse.reshape(n * c, -1)).view(n, c).numpy()
    logits = np.where(pool >= 0, logits, -np.inf)
    order = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(pool, order, axis=1)


def _sub_metrics(task: Task, rows: np.ndarray, top: np.ndarray, k: int) -> ListMetrics:
    return list_metrics(task.subset(rows), top, k)

