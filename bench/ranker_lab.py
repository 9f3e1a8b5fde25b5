"""Why the DLRM ranker ties Mult-DAE on the synthetic shop's test users: ranker and source variants on cached cuts.

    python -m bench.ranker_lab --dataset synthetic                  # every check, appends bench/results/ranker_lab.json
    python -m bench.ranker_lab --dataset instacart --checks features,ranker --no-write

`bench.quality_variants` refits everything per variant (about 5 minutes a row on the shared box). This lab
fits once what `training.ranker.fit_recommender` fits (the three stacked cuts' sources and candidate pools,
the sources on the whole training part and the benchmark's test users' pools; cached under var/bench/) and
then varies only what a check varies, so a ranker variant costs seconds and can be repeated over seeds.
Same split, users and metric as `bench.quality` (per-user holdout of the last 20% of sessions, full
catalogue, seen excluded, NDCG@10). The sequential source is left out: the held-out rule drops it on both
sets (README, "Real time").

Checks (choose on held-out/validation figures, report the test figures; never tune on test):
- features: each ranker input's mean over the pools and its shift on the relevant candidates, relevant items
  per user and history length, in each cut's lists against the test users' pools (the mismatch question).
- ranker: the ranker trained as `fit_recommender` trains it (listwise softmax, early stopping on the first
  cut's held-out users), seeds 0-2 per variant: base, no item-id embedding, first cut only, without the
  history-length input, checkpoint averaging, lr 3e-3, a linear listwise model (models.logreg, no item id)
  instead of the DLRM; plus an ensemble of 5 seeds on one fixed held-out split.
  Held-out NDCG@10 and test NDCG@10 with the paired 95% interval against Mult-DAE alone.
- sources: Mult-DAE variants on the validation split (sources fitted on the first cut's earlier sessions,
  scored on its later ones, all its users): hidden size, bagging of seeds, carts+purchases as the
  reconstruction target, and "later new items" as the target.
- taste (synthetic shop only, `--checks taste`): the planted interest with every item parameter exact and
  each test user's 2-d taste estimated from their training views: what history alone allows; and the Bayes
  ceiling (`bench.bayes_ceiling`: the posterior expectation of the interest given the user's views, carts and
  purchases under the exact generative model), the best any recommender can do in expectation.
- factorised (`--checks factorised`): the ceiling's form, interest = P(view | user) x P(cart or purchase |
  view, item), with both parts learned (no planted parameter): Mult-DAE fitted on impressions times each
  item's smoothed conversion rate, against the served Mult-DAE, on the test users.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from bench.bayes_ceiling import bayes_ceiling
from bench.quality import DATASETS
from bench.report import REPO, RESULTS, add_common_options, append_results, stamp
from contracts import EventWeights
from models.classic import MultDAE, index_of, multinomial_loss, top_k
from models.dlrm import DLRM, DLRMConfig
from models.logreg import LogisticRegression, LogisticRegressionConfig
from serving.recommender import Recommender
from training.quality import (ListMetrics, Split, Task, build_task, interaction_matrix, list_metrics,
                              paired_difference, user_holdout)
from training.ranker import (RankerConfig, _cut_lists, _Lists, _pool_labels, _rank, _sub_metrics, fit_sources, item_stats_of,
                             listwise_loss)

log = logging.getLogger("bench.ranker_lab")
CACHE = REPO / "var" / "bench"
K = 10
SOURCES = ("item_knn", "als", "ease", "popularity", "mult_dae")  # the served sources, less the dropped sequential


@dataclass
class Lab:
    """What fit_recommender fits, once: the cuts' lists (with the events their sources were fitted on) and the
    sources fitted on the whole training part with the test users' pools and features."""

    task: Task  # the benchmark's test users
    cuts: list[tuple[_Lists, object]]  # (lists, events the cut's sources were fitted on)
    final: Recommender
    scores: dict[str, np.ndarray]  # test users' full-catalogue scores per source
    pool: np.ndarray  # (n_test_users, pool_size)
    dense: np.ndarray  # (n_test_users * pool_size, n_dense)
    sparse: np.ndarray


def build_lab(name: str) -> Lab:
    path = CACHE / f"ranker-lab-{name}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    events, _ = DATASETS[name]()
    split = user_holdout(events, test_fraction=0.2)
    task = build_task(split, exclude="seen")
    config = RankerConfig(sources=SOURCES, k=K)
    weights, relevant = EventWeights(), ("cart", "purchase")
    first, rec, earlier = _cut_lists(split.train, split.items, config, weights, "seen", relevant, None)
    cuts = [(first, earlier)]
    for _ in range(config.cuts - 1):
        lists, _, earlier = _cut_lists(earlier, split.items, config, weights, "seen", relevant, rec.shares)
        cuts.append((lists, earlier))
    whole = Split(split.train, split.train.iloc[:0], split.items, "full")
    sources, popularity = fit_sources(split.train, whole, config, weights)
    final = Recommender(split.items, sources, rec.shares, popularity, item_stats_of(split.train, whole),
                        config.pool_size)
    scores = final.source_scores(task.history)
    pool = final.pool(scores, task.excluded)
    dense, sparse = final.features(task.history, scores, pool)
    lab = Lab(task, [(c[0], c[1]) for c in cuts], final, scores, pool, dense, sparse)
    CACHE.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(lab, protocol=pickle.HIGHEST_PROTOCOL))
    return lab


# ------------------------------------------------------------------------------------------ features
def feature_shift(lab: Lab) -> list[dict]:
    """Per set (test, cut0, cut1, ...): relevant items per user, in the pool per user, history length, and per
    ranker input its mean over the pools and (mean over relevant candidates - mean over all)."""
    names = lab.final.feature_names()[0]
    n, c = lab.pool.shape
    sets = [("test", lab.dense.reshape(n, c, -1), _pool_labels(lab.task, lab.pool), lab.task)]
    sets += [(f"cut{i}", lists.dense.numpy(), lists.labels, lists.task) for i, (lists, _) in enumerate(lab.cuts)]
    rows = []
    for tag, dense, labels, task in sets:
        mean = dense.reshape(-1, dense.shape[2]).mean(axis=0)
        shift = dense[labels].mean(axis=0) - mean
        rows.append({"set": tag, "users": len(task.users),
                     "relevant_per_user": float(np.diff(task.relevant.indptr).mean()),
                     "relevant_in_pool_per_user": float(labels.sum(axis=1).mean()),
                     "history_length": float(np.diff(task.history.indptr).mean()),
                     "mean": dict(zip(names, mean.round(3).tolist())),
                     "relevant_minus_all": dict(zip(names, shift.round(3).tolist()))})
    return rows


# ------------------------------------------------------------------------------------------ ranker
@dataclass(frozen=True)
class RankerVariant:
    cuts: tuple[int, ...] = (0, 1, 2)  # which cuts' lists train the ranker
    item_id: bool = True  # the DLRM's item embedding sees the product (False: every product is "unknown")
    drop: tuple[str, ...] = ()  # ranker inputs left out (feature names)
    average: int = 0  # average the weights of the epochs within this distance of the best one
    learning_rate: float = 1e-2
    epochs: int = 30
    patience: int = 5
    linear: bool = False  # models.logreg instead of the DLRM: a learned weighted sum of the inputs (+ item weight)


RANKER_VARIANTS: dict[str, RankerVariant] = {
    "base": RankerVariant(),
    "no_item_id": RankerVariant(item_id=False),
    "first_cut_only": RankerVariant(cuts=(0,)),
    "no_history_length": RankerVariant(drop=("log_history_length",)),
    "checkpoint_average": RankerVariant(average=2),
    "lr3e-3": RankerVariant(learning_rate=3e-3, epochs=60, patience=8),
    # the listwise weighted sum of the same inputs, no item id: does the DLRM add anything to a source ensemble?
    "linear": RankerVariant(linear=True, item_id=False, epochs=60, patience=8),
}


def train_ranker(lab: Lab, variant: RankerVariant, seed: int, split_seed: int | None = None,
                 config: RankerConfig = RankerConfig()) -> dict:
    """fit_recommender's ranker training with the variant's changes; held-out NDCG@10 and test logits.
    split_seed: the held-out users' draw (default: `seed`, as fit_recommender draws it)."""
    torch.manual_seed(seed)
    first = lab.cuts[0][0]
    rng = np.random.default_rng(seed if split_seed is None else split_seed)
    is_valid = rng.random(len(first.task.users)) < config.valid_fraction
    if split_seed is not None:
        rng = np.random.default_rng(seed + 1000)
    valid_users = set(first.task.users[is_valid].tolist())
    valid_rows = np.flatnonzero(is_valid)
    names = lab.final.feature_names()[0]
    keep = [j for j, name in enumerate(names) if name not in variant.drop]

    def inputs(dense: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return dense[..., keep], sparse if variant.item_id else torch.zeros_like(sparse)

    parts = []
    for i in variant.cuts:
        lists = lab.cuts[i][0]
        rows = np.flatnonzero([u not in valid_users for u in lists.task.users.tolist()])
        dense, sparse = inputs(lists.dense[rows], lists.sparse[rows])
        parts.append((dense, sparse, lists.labels[rows], lists.pool[rows] >= 0))
    dense, sparse = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    labels = torch.from_numpy(np.concatenate([p[2] for p in parts]))
    valid_mask = torch.from_numpy(np.concatenate([p[3] for p in parts]))
    trainable = np.flatnonzero(labels.any(dim=1).numpy())
    held_dense, held_sparse = inputs(first.dense[valid_rows], first.sparse[valid_rows])
    model: torch.nn.Module
    if variant.linear:
        model = LogisticRegression(LogisticRegressionConfig(n_dense=len(keep), cardinalities=lab.final.cardinalities))
    else:
        model = DLRM(DLRMConfig(n_dense=len(keep), cardinalities=lab.final.cardinalities,
                                embedding_dim=config.embedding_dim, bottom_mlp=[64, 32], top_mlp=[64, 32]))
    optimizer = torch.optim.Adam(model.parameters(), lr=variant.learning_rate)
    c = first.pool.shape[1]

    def held_out() -> float:
        top = _rank(model, held_dense, held_sparse, first.pool[valid_rows], K)  # type: ignore[arg-type]
        return float(_sub_metrics(first.task, valid_rows, top, K).ndcg.mean())

    best, best_epoch, stale, states = -1.0, 0, 0, []
    for epoch in range(variant.epochs):
        model.train()
        order = trainable[rng.permutation(len(trainable))]
        for start in range(0, len(order), config.batch_users):
            rows = torch.from_numpy(order[start:start + config.batch_users])
            logits = model(dense[rows].reshape(-1, len(keep)), sparse[rows].reshape(-1, 1)).view(len(rows), c)
            logits = logits.masked_fill(~valid_mask[rows], float("-inf"))
            loss = listwise_loss(logits, labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        ndcg = held_out()
        states.append({k: v.clone() for k, v in model.state_dict().items()})
        if ndcg > best:
            best, best_epoch, stale = ndcg, epoch, 0
        else:
            stale += 1
            if stale >= variant.patience:
                break
    chosen = states[max(0, best_epoch - variant.average):best_epoch + variant.average + 1]
    model.load_state_dict({k: sum(s[k] for s in chosen) / len(chosen) for k in chosen[0]})
    best = held_out()
    model.eval()
    n = lab.pool.shape[0]
    test_dense, test_sparse = inputs(torch.from_numpy(lab.dense).view(n, c, -1), torch.from_numpy(lab.sparse).view(n, c, -1))
    with torch.no_grad():
        test_logits = model(test_dense.reshape(n * c, -1), test_sparse.reshape(n * c, -1)).view(n, c).numpy()
        held_logits = model(held_dense.reshape(-1, len(keep)), held_sparse.reshape(-1, 1)).view(len(valid_rows), c).numpy()
    return {"held_out": best, "epoch": best_epoch, "test_logits": test_logits, "held_logits": held_logits,
            "valid_rows": valid_rows}


def _ordered(pool: np.ndarray, values: np.ndarray) -> np.ndarray:
    order = np.argsort(-np.where(pool >= 0, values, -np.inf), axis=1, kind="stable")[:, :K]
    return np.take_along_axis(pool, order, axis=1)


def _standardised(logits: np.ndarray) -> np.ndarray:
    return (logits - logits.mean(axis=1, keepdims=True)) / (logits.std(axis=1, keepdims=True) + 1e-9)


def _versus(metrics: ListMetrics, reference: ListMetrics) -> dict:
    diff = paired_difference(metrics, reference)
    return {"test_ndcg": float(metrics.ndcg.mean()), "minus_mult_dae": diff.mean,
            "minus_mult_dae_ci": [diff.low, diff.high]}


def ranker_checks(lab: Lab, variants: list[str], seeds: int) -> list[dict]:
    reference = list_metrics(lab.task, top_k(lab.scores["mult_dae"], lab.task.excluded, K), K)
    rows = []
    for name in (v for v in variants if v != "ensemble"):
        for seed in range(seeds):
            result = train_ranker(lab, RANKER_VARIANTS[name], seed)
            row = {"check": "ranker", "variant": name, "seed": seed, "held_out_ndcg": result["held_out"],
                   "best_epoch": result["epoch"],
                   **_versus(list_metrics(lab.task, _ordered(lab.pool, result["test_logits"]), K), reference)}
            rows.append(row)
            print(f"ranker {name:20s} seed {seed}: held-out {row['held_out_ndcg']:.4f} test {row['test_ndcg']:.4f} "
                  f"vs Mult-DAE {row['minus_mult_dae']:+.4f} [{row['minus_mult_dae_ci'][0]:+.4f}, "
                  f"{row['minus_mult_dae_ci'][1]:+.4f}]", flush=True)
    if "ensemble" not in variants:
        return rows
    # An ensemble of seeds (standardised logits averaged), all members on one held-out split so it can choose.
    first = lab.cuts[0][0]
    test, held = [], []
    for seed in range(5):
        result = train_ranker(lab, RANKER_VARIANTS["base"], seed, split_seed=0)
        test.append(_standardised(result["test_logits"]))
        held.append(_standardised(result["held_logits"]))
        rows_v = result["valid_rows"]
        held_ndcg = float(_sub_metrics(first.task, rows_v, _ordered(first.pool[rows_v], np.mean(held, axis=0)), K).ndcg.mean())
        row = {"check": "ranker", "variant": f"ensemble_of_{seed + 1}", "seed": 0, "held_out_ndcg": held_ndcg,
               **_versus(list_metrics(lab.task, _ordered(lab.pool, np.mean(test, axis=0)), K), reference)}
        rows.append(row)
        print(f"ranker ensemble of {seed + 1}: held-out {held_ndcg:.4f} test {row['test_ndcg']:.4f} "
              f"vs Mult-DAE {row['minus_mult_dae']:+.4f}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------ sources
class _TargetDAE(MultDAE):
    """Mult-DAE whose input is the weighted history and whose likelihood is over `targets` rows (same users),
    with `masked` cells (items already seen) left out of the softmax."""

    def fit_targets(self, inputs: sp.csr_matrix, targets: sp.csr_matrix,
                    masked: sp.csr_matrix | None = None) -> "_TargetDAE":
        n_items = inputs.shape[1]
        generator = torch.Generator().manual_seed(self.random_state)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.random_state)
            net = self._net(n_items)
        encoder, decoder = net[0], net[2]
        optimizer = torch.optim.Adam(net.parameters(), lr=self.learning_rate)
        norms = np.sqrt(np.asarray(inputs.multiply(inputs).sum(axis=1)).ravel())
        unit = (sp.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ inputs).tocsr()
        rows = torch.from_numpy(np.flatnonzero((np.diff(inputs.indptr) > 0) & (np.diff(targets.indptr) > 0)))
        for _ in range(self.epochs):
            order = rows[torch.randperm(len(rows), generator=generator)].numpy()
            for start in range(0, len(order), self.batch_size):
                batch = order[start:start + self.batch_size]
                logits = decoder(self.dropped_hidden(unit[batch], encoder, generator))
                if masked is not None:
                    logits = logits.masked_fill(torch.from_numpy(masked[batch].toarray()), -1e9)
                loss = multinomial_loss(logits, targets[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        return self.keep(net, n_items)


def source_checks(lab: Lab) -> list[dict]:
    """Mult-DAE variants fitted on the first cut's earlier events, NDCG@10 on all its users' later ones."""
    lists, earlier = lab.cuts[0]
    task = lists.task
    users = np.unique(earlier["user_id"].to_numpy(np.int64))
    split = Split(earlier, earlier.iloc[:0], task.split.items, "validation")
    inputs = interaction_matrix(earlier, users, split, EventWeights())

    def ndcg(scores: np.ndarray) -> float:
        return float(list_metrics(task, top_k(scores, task.excluded, K), K).ndcg.mean())

    rows = []

    def record(name: str, value: float, seconds: float) -> None:
        rows.append({"check": "source", "variant": name, "validation_ndcg": value, "seconds": seconds})
        print(f"source {name:45s} validation ndcg {value:.4f} ({seconds:.0f} s)", flush=True)

    record("mult_dae (served: hidden 64, lr 1e-3, 100 epochs)", ndcg(lists.scores["mult_dae"]), 0.0)
    for hidden, lr in ((2, 1e-3), (4, 1e-3), (8, 1e-3), (16, 1e-3), (4, 1e-2), (8, 1e-2), (16, 1e-2)):
        start = time.perf_counter()
        value = ndcg(MultDAE(hidden=hidden, learning_rate=lr).fit(inputs).score(task.history))
        record(f"mult_dae hidden {hidden} lr {lr:g}", value, time.perf_counter() - start)
    start, bag = time.perf_counter(), 0.0
    for seed in range(5):
        bag = bag + MultDAE(random_state=seed).fit(inputs).score(task.history).astype(np.float64)
        if seed in (2, 4):
            record(f"mult_dae bag of {seed + 1} seeds (mean logits)", ndcg(bag), time.perf_counter() - start)
    for view in (0.0, 0.05):
        start = time.perf_counter()
        targets = interaction_matrix(earlier, users, split, EventWeights(view=view, cart=0.5, purchase=1.0))
        value = ndcg(_TargetDAE().fit_targets(inputs, targets).score(task.history))
        record(f"mult_dae target carts+purchases (view weight {view:g})", value, time.perf_counter() - start)
    # Later new items as the target: input = earlier sessions, target = later carts/purchases of unseen items,
    # from three stacked per-user holdouts of the same events (as the ranker's lists are built).
    start = time.perf_counter()
    x, y, seen, events = [], [], [], earlier
    for _ in range(3):
        inner = user_holdout(events, 0.2)
        inner_task = build_task(Split(inner.train, inner.test, task.split.items, "future"), exclude="seen")
        x.append(inner_task.history)
        y.append(inner_task.relevant.astype(np.float32))
        seen.append(inner_task.excluded)
        events = inner.train
    x_all, y_all, seen_all = (sp.vstack(m).tocsr() for m in (x, y, seen))
    for epochs in (30, 100):
        value = ndcg(_TargetDAE(epochs=epochs).fit_targets(x_all, y_all, seen_all).score(task.history))
        record(f"mult_dae target later new items ({epochs} epochs)", value, time.perf_counter() - start)
    return rows


def _headline(row: dict) -> dict:
    """The results file's common fields (metric, value, unit, baseline, ratio) of one check's row."""
    if row["check"] in ("ranker", "factorised"):  # test NDCG@10 against Mult-DAE alone on the same users
        value, baseline = row["test_ndcg"], row["test_ndcg"] - row["minus_mult_dae"]
        metric = f"{row['variant']} seed {row.get('seed', 0)} test ndcg@{K}"
    elif row["check"] == "taste":  # against nothing: a ceiling
        value, baseline, metric = row["test_ndcg"], None, f"{row['variant']} test ndcg@{K}"
    elif row["check"] == "source":  # validation NDCG@10 against the served Mult-DAE's
        value, baseline, metric = row["validation_ndcg"], None, f"{row['variant']} validation ndcg@{K}"
    else:  # relevant items per user in the set's lists
        value, baseline, metric = row["relevant_per_user"], None, f"{row['set']} relevant items per user"
    return {"metric": metric, "value": value, "unit": "ndcg@10" if row["check"] != "features" else "items",
            "baseline": baseline, "ratio": value / baseline if baseline else None}


def taste_check(lab: Lab, steps: int = 300) -> list[dict]:
    """Synthetic shop only: how far history can take a ranker. The planted interest scored with every planted
    item parameter exact and each test user's 2-d taste estimated from their training views (maximum a
    posteriori under the planted view model, N(0, 1) prior; user bias left at its mean), beside the oracle."""
    from etl.synthetic import GroundTruth

    _, truth = DATASETS["synthetic"]()
    if not isinstance(truth, GroundTruth):
        raise ValueError("the taste check needs the synthetic shop's planted truth")
    task, c = lab.task, truth.config
    order = np.argsort(truth.product_ids)
    cols = index_of(truth.product_ids[order], task.split.items)  # task column -> truth row (sorted ids)
    pop, vec = truth.product_popularity[order][cols], truth.product_vec[order][cols]
    bias, price = truth.product_bias[order][cols], truth.price_z[order][cols]
    train = task.split.train[task.split.train["event_type"] == "view"]
    rows = index_of(task.users, train["user_id"].to_numpy(np.int64))
    items = index_of(task.split.items, train["product_id"].to_numpy(np.int64))
    ok = (rows >= 0) & (items >= 0)
    views = torch.from_numpy(sp.csr_matrix((np.ones(int(ok.sum())), (rows[ok], items[ok])),
                                           shape=(len(task.users), task.n_items)).toarray())
    p, v = torch.from_numpy(pop), torch.from_numpy(vec)
    mix = c.preference_mix

    def view_probability(u: torch.Tensor) -> torch.Tensor:  # GroundTruth.interest's view part
        a = c.interaction_scale * u @ v.T
        w = p[None] * torch.exp(a - a.max(dim=1, keepdim=True).values)
        return (1 - mix) * p[None] + mix * w / w.sum(dim=1, keepdim=True)

    taste = torch.zeros(len(task.users), vec.shape[1], dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.Adam([taste], lr=0.05)
    for _ in range(steps):
        loss = (-(views * torch.log(view_probability(taste))).sum() + 0.5 * (taste ** 2).sum()) / len(task.users)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    estimated = taste.detach().numpy()
    user = truth.user_index(task.users)

    def interest(u: np.ndarray, user_bias: np.ndarray) -> np.ndarray:
        view = view_probability(torch.from_numpy(u)).numpy()
        logit = (c.base_logit + user_bias[:, None] + bias[None] + c.interaction_scale * u @ vec.T
                 + c.price_coef * price[None])
        bought = 1.0 / (1.0 + np.exp(-logit))
        return (view * (bought + (1 - bought) * 0.06)).astype(np.float32)

    out = []
    for name, u, user_bias in (("oracle", truth.user_vec[user], truth.user_bias[user]),
                               ("true taste, mean user bias", truth.user_vec[user], np.zeros(len(user))),
                               ("taste estimated from training views", estimated, np.zeros(len(user))),
                               ("no taste (item part only)", np.zeros_like(estimated), np.zeros(len(user)))):
        value = float(list_metrics(task, top_k(interest(u, user_bias), task.excluded, K), K).ndcg.mean())
        out.append({"check": "taste", "variant": name, "test_ndcg": value})
        print(f"taste {name:40s} test ndcg {value:.4f}", flush=True)
    corr = [float(np.corrcoef(estimated[:, d], truth.user_vec[user][:, d])[0, 1]) for d in range(estimated.shape[1])]
    print(f"taste estimated vs planted, correlation per dimension {np.round(corr, 3).tolist()}", flush=True)
    out[2]["taste_correlation"] = corr
    ceiling = bayes_ceiling(truth, task)
    value = float(list_metrics(task, top_k(ceiling.expected_interest, task.excluded, K), K).ndcg.mean())
    out.append({"check": "taste", "variant": "bayes ceiling (posterior expectation from views, carts, purchases)",
                "test_ndcg": value})
    print(f"taste {out[-1]['variant']:40s} test ndcg {value:.4f}", flush=True)
    return out


def factorised_check(lab: Lab, prior: float = 10.0) -> list[dict]:
    """Interest = P(view | user) x P(cart or purchase | view, item), both learned: Mult-DAE (the served
    hyperparameters) fitted on every training user's impressions (views; every event where the data has no
    views), times each item's conversion rate (impressions that became a cart or purchase, shrunk to the
    catalogue's rate with `prior` pseudo-impressions); the served Mult-DAE on the weighted history, and that
    times the same rate, beside it. Test NDCG@10 of the benchmark's users against the served Mult-DAE."""
    task = lab.task
    train, split = task.split.train, task.split
    users = np.unique(train["user_id"].to_numpy(np.int64))
    has_views = bool(train["event_type"].eq("view").any())
    seen = EventWeights(view=1.0, cart=0.0 if has_views else 1.0, purchase=0.0 if has_views else 1.0,
                        remove_from_cart=0.0)
    impression = train.groupby(["user_session", "product_id"])["event_type"].agg(
        lambda kinds: bool(kinds.isin(["cart", "purchase"]).any()))
    cols = split.item_index(impression.index.get_level_values("product_id").to_numpy(np.int64))
    ok = cols >= 0
    shown = np.bincount(cols[ok], minlength=task.n_items).astype(np.float64)
    converted = np.bincount(cols[ok], weights=impression.to_numpy()[ok].astype(np.float64), minlength=task.n_items)
    rate = (converted + prior * converted.sum() / shown.sum()) / (shown + prior)

    def log_softmax(logits: np.ndarray) -> np.ndarray:
        shifted = logits - logits.max(axis=1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))

    served = lab.scores["mult_dae"]
    views = MultDAE().fit(interaction_matrix(train, users, split, seen)).score(
        interaction_matrix(train, task.users, split, seen))
    reference = list_metrics(task, top_k(served, task.excluded, K), K)
    rows = []
    for name, scores in (("mult_dae weighted x conversion", log_softmax(served) + np.log(rate)[None]),
                         ("mult_dae impressions", views),
                         ("mult_dae impressions x conversion", log_softmax(views) + np.log(rate)[None])):
        row = {"check": "factorised", "variant": name,
               **_versus(list_metrics(task, top_k(scores, task.excluded, K), K), reference)}
        rows.append(row)
        print(f"factorised {name:35s} test {row['test_ndcg']:.4f} vs Mult-DAE {row['minus_mult_dae']:+.4f} "
              f"[{row['minus_mult_dae_ci'][0]:+.4f}, {row['minus_mult_dae_ci'][1]:+.4f}]", flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic", choices=sorted(DATASETS))
    parser.add_argument("--checks", default="features,ranker,sources", help="comma list of features, ranker, sources, taste, factorised")
    parser.add_argument("--variants", default=",".join([*RANKER_VARIANTS, "ensemble"]),
                        help=f"comma list of {sorted(RANKER_VARIANTS)} and ensemble (5 seeds, one held-out split)")
    parser.add_argument("--seeds", type=int, default=3)
    add_common_options(parser, RESULTS / "ranker_lab.json")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    lab = build_lab(args.dataset)
    print(f"lab ready in {time.perf_counter() - start:.0f} s", flush=True)
    checks = args.checks.split(",")
    rows: list[dict] = []
    if "features" in checks:
        rows += [{"check": "features", **r} for r in feature_shift(lab)]
        for r in rows:
            print(f"features {r['set']:5s} users {r['users']} relevant/user {r['relevant_per_user']:.2f} in pool "
                  f"{r['relevant_in_pool_per_user']:.2f} history {r['history_length']:.1f}", flush=True)
    if "ranker" in checks:
        rows += ranker_checks(lab, args.variants.split(","), args.seeds)
    if "sources" in checks:
        rows += source_checks(lab)
    if "taste" in checks:
        rows += taste_check(lab)
    if "factorised" in checks:
        rows += factorised_check(lab)
    common = {"benchmark": "ranker_lab", "dataset": args.dataset, "device": f"cpu-{os.cpu_count()}core",
              **stamp("bench.ranker_lab", args.git_sha, modules=("numpy", "torch"))}
    if not args.no_write:
        append_results(args.out, [common | _headline(row) | row for row in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
