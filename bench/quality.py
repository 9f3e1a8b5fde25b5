"""Recommendation quality on the full catalogue: the served path against classic baselines, per data set.

    python -m bench.quality                       # every data set, appends to bench/results/quality.json
    python -m bench.quality --datasets instacart --max-users 2000
    python -m bench.quality --splits session_rest  # the next-in-session rows only

For each data set and split: `user_holdout` (each user's last 20% of sessions) and `session_rest`
(history = everything before the last session plus its first half, relevant = the rest of that
session: the next-in-session question the real-time sequential source is for); items seen in
training excluded (the API's default), relevant = test carts and purchases. The served recommender
is fitted with the same kind of split for its held-out decisions (`RankerConfig.split`). The served recommender
(`training.ranker.fit_recommender` on the training part only) and every baseline (`training.compare`)
rank the whole catalogue for the same users; the synthetic shops add their oracle (the planted truth,
which does not know the session's category), and the plain shop its Bayes ceiling (`bench.bayes_ceiling`:
the planted model's posterior expectation from each customer's training history, the best any recommender
can do in expectation). The sequential source alone is reported on every split,
fitted for the row when the served recommender dropped it.
Mult-DAE (models.classic.MultDAE, one of the served path's sources) is reported alone too; it is not a
classic baseline, so `baseline` below stays the best of popularity, item-kNN, ALS and EASE.
One JSON object per (data set, method): `value` = NDCG@10, `baseline` = the best classic baseline's
NDCG@10 on the same users, `ratio` = value / baseline, with Recall/MRR/HitRate, intervals, coverage,
popularity bias and wall time in `figures`. Hyperparameters are the defaults of `RankerConfig` and
`models.classic`, chosen on the synthetic shop and not changed per data set or split.
`synthetic_intent` is the same shop with session intent (`SyntheticConfig.session_focus`
= 0.7, set before any figure was seen: 70% of a session's impressions within one category picked by
the customer's taste), the pattern real browsing sessions show and the plain shop lacks.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable
from dataclasses import replace

import pandas as pd

from bench.report import RESULTS, add_common_options, append_results, stamp

log = logging.getLogger("bench.quality")


INTENT_FOCUS = 0.7  # synthetic_intent's session_focus, fixed before its first run


SYNTHETIC_EVENTS = 400_000  # the synthetic shops' default size


def synthetic_events(seed: int = 7, session_focus: float = 0.0,
                     n_events: int = SYNTHETIC_EVENTS) -> tuple[pd.DataFrame, Callable | None]:
    """A shop of 2,000 customers and 3,000 products over 28 days, with its planted truth; `n_events` above the
    default gives the same customers and products longer histories."""
    from etl.synthetic import SyntheticConfig, generate

    data = generate(SyntheticConfig(n_events=n_events, n_users=2_000, n_products=3_000, days=28, seed=seed,
                                    session_focus=session_focus))
    return data.events, data.truth


def synthetic_intent_events(n_events: int = SYNTHETIC_EVENTS) -> tuple[pd.DataFrame, Callable | None]:
    """The same shop whose sessions follow a category (`INTENT_FOCUS` of their impressions)."""
    return synthetic_events(session_focus=INTENT_FOCUS, n_events=n_events)


def instacart_events() -> tuple[pd.DataFrame, None]:
    from etl.readers import read_instacart_sample

    return read_instacart_sample(), None


SYNTHETIC = ("synthetic", "synthetic_intent")  # the shops with a planted truth (and a size)
DATASETS: dict[str, Callable[..., tuple[pd.DataFrame, object]]] = {
    "synthetic": synthetic_events,
    "instacart": instacart_events,
    "synthetic_intent": synthetic_intent_events,
}
SPLIT_LABELS = {"user_holdout": "user_holdout(0.2 of sessions)",
                "session_rest": "session_rest(last session: first half history, rest test)"}


def run(name: str, max_users: int | None, k: int, sha: str | None = None,
        split_kind: str = "user_holdout", sequential_epochs: int | None = None,
        synthetic_size: int = SYNTHETIC_EVENTS) -> list[dict]:
    from training.compare import BASELINES, SERVED, compare, oracle_scorer
    from training.quality import before_last_session, build_task, session_rest_split, user_holdout
    from training.ranker import SEQUENTIAL, RankerConfig, fit_recommender
    from training.sequential import fit_sequential

    started = time.perf_counter()
    events, truth = DATASETS[name](n_events=synthetic_size) if name in SYNTHETIC else DATASETS[name]()
    split = session_rest_split(events) if split_kind == "session_rest" else user_holdout(events, test_fraction=0.2)
    task = build_task(split, exclude="seen", max_users=max_users)
    config = RankerConfig(k=k, split=split_kind)
    if sequential_epochs is not None:  # a variant of the sequential source's training length, recorded below
        config = replace(config, sequential=replace(config.sequential, epochs=sequential_epochs))
    # The session split's training part ends with the half sessions being asked about; the recommender is
    # fitted on the events before them (whole sessions, as a nightly run sees them), so its own held-out
    # cuts are whole last sessions too (279 ranker users on the synthetic shop instead of 75). The half
    # sessions are still each user's history and sequence at scoring time; the baselines fit on all of it.
    fit_events = before_last_session(split.train) if split_kind == "session_rest" else split.train
    fit_start = time.perf_counter()
    fitted = fit_recommender(fit_events, split.items, config)
    fit_seconds = time.perf_counter() - fit_start
    extra = {"oracle": oracle_scorer(truth, task)} if truth is not None else {}
    if truth is not None and truth.config.session_focus == 0:  # its posterior models independent impressions
        from bench.bayes_ceiling import ceiling_scorer

        extra["bayes_ceiling"] = ceiling_scorer(truth, task)  # the best any recommender can do from the history
    sequential = fitted.recommender.sources.get(SEQUENTIAL)
    if sequential is None:  # dropped by the held-out rule: fitted here so its row is still reported
        sequential = fit_sequential(fit_events, split.items, config.sequential)
    seqs = task.sequences
    if seqs is not None:  # the sequential source alone, as served
        extra["sequential"] = lambda rows: sequential.score_sequences(seqs.items[rows], seqs.kinds[rows])
    # mult_dae (a candidate source of the served path) is reported beside the classic baselines so the
    # served path is also compared with its best source alone; the targets' "best baseline" stays classic.
    comparison = compare(task, fitted.recommender, fitted.scorer(), k=k, extra=extra,
                         baselines=BASELINES + ("mult_dae",))
    wall = time.perf_counter() - started
    best = comparison.best_baseline
    best_ndcg = float(comparison.results[best].metrics.ndcg.mean())
    common = {
        "benchmark": "quality", "unit": "ndcg@10", "device": f"cpu-{os.cpu_count()}core",
        **stamp("bench.quality", sha, modules=("numpy", "torch", "implicit")),
        "config": {"dataset": name, "split": SPLIT_LABELS[split_kind], "exclude": "seen",
                   "relevant": list(task.relevant_events), "k": k, "users": len(task.users),
                   "items": task.n_items, "events": len(events), "served_mode": fitted.recommender.mode,
                   "shares": fitted.recommender.shares, "evidence": fitted.recommender.evidence,
                   "sequential_served": SEQUENTIAL in fitted.recommender.sources,
                   "sequential_epochs": config.sequential.epochs},
    }
    rows = []
    for method, result in comparison.results.items():
        value = float(result.metrics.ndcg.mean())
        figures = result.summary()
        if method == SERVED:
            figures["fit_seconds"] = fit_seconds
            figures.update({f"minus_{b}": ci.mean for b, ci in comparison.versus.items()})
            figures.update({f"minus_{b}_ci": [ci.low, ci.high] for b, ci in comparison.versus.items()})
        rows.append(common | {"metric": f"{method} ndcg@{k}", "method": method, "value": value,
                              "baseline": best_ndcg, "baseline_method": best,
                              "ratio": value / best_ndcg if best_ndcg > 0 else float("nan"),
                              "figures": figures, "wall_seconds": wall, "skipped": comparison.skipped})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS), help=f"comma list of {sorted(DATASETS)}")
    parser.add_argument("--splits", default=",".join(SPLIT_LABELS), help=f"comma list of {sorted(SPLIT_LABELS)}")
    parser.add_argument("--max-users", type=int, default=None, help="subsample evaluated users (seeded)")
    parser.add_argument("--sequential-epochs", type=int, default=None,
                        help="train the sequential source this many epochs instead of SequentialConfig's default")
    parser.add_argument("--synthetic-events", type=int, default=SYNTHETIC_EVENTS,
                        help="events of the synthetic shops (the same customers and products: longer histories)")
    parser.add_argument("--k", type=int, default=10)
    add_common_options(parser, RESULTS / "quality.json")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows: list[dict] = []
    splits = [s.strip() for s in args.splits.split(",")]
    unknown = sorted(set(splits) - set(SPLIT_LABELS)) + sorted({n.strip() for n in args.datasets.split(",")} - set(DATASETS))
    if unknown:
        parser.error(f"unknown split or data set: {unknown}")
    for name in args.datasets.split(","):
        for split_kind in splits:
            new = run(name.strip(), args.max_users, args.k, args.git_sha, split_kind, args.sequential_epochs,
                      args.synthetic_events)
            rows += new
            for row in new:
                ci = row["figures"].get(f"ndcg_at_{args.k}_ci_low"), row["figures"].get(f"ndcg_at_{args.k}_ci_high")
                print(f"{name:16s} {split_kind:12s} {row['method']:10s} ndcg@{args.k} {row['value']:.4f} "
                      f"[{ci[0]:.4f}, {ci[1]:.4f}]  x{row['ratio']:.2f} of {row['baseline_method']}  "
                      f"recall {row['figures'][f'recall_at_{args.k}']:.4f}", flush=True)
    if not args.no_write:
        append_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
