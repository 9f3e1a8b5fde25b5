"""Recommendation quality on the full catalogue: the served path against classic baselines, per data set.

    python -m bench.quality                       # every data set, appends to bench/results/quality.json
    python -m bench.quality --datasets instacart --max-users 2000

For each data set: a per-user temporal holdout (each user's last 20% of sessions), items seen in
training excluded (the API's default), relevant = test carts and purchases. The served recommender
(`training.ranker.fit_recommender` on the training part only) and every baseline (`training.compare`)
rank the whole catalogue for the same users; the synthetic shop adds its oracle (the planted truth).
Mult-DAE (models.classic.MultDAE, one of the served path's sources) is reported alone too; it is not a
classic baseline, so `baseline` below stays the best of popularity, item-kNN, ALS and EASE.
One JSON object per (data set, method): `value` = NDCG@10, `baseline` = the best classic baseline's
NDCG@10 on the same users, `ratio` = value / baseline, with Recall/MRR/HitRate, intervals, coverage,
popularity bias and wall time in `figures`. Hyperparameters are the defaults of `RankerConfig` and
`models.classic`, chosen on the synthetic shop and not changed per data set.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from collections.abc import Callable

import pandas as pd

from bench.report import RESULTS, add_common_options, append_results, stamp

log = logging.getLogger("bench.quality")


def synthetic_events(seed: int = 7) -> tuple[pd.DataFrame, Callable | None]:
    """A shop of 2,000 customers and 3,000 products over 28 days, with the oracle's scorer."""
    from etl.synthetic import SyntheticConfig, generate

    data = generate(SyntheticConfig(n_events=400_000, n_users=2_000, n_products=3_000, days=28, seed=seed))
    return data.events, data.truth


def instacart_events() -> tuple[pd.DataFrame, None]:
    from etl.readers import read_instacart_sample

    return read_instacart_sample(), None


DATASETS: dict[str, Callable[[], tuple[pd.DataFrame, object]]] = {
    "synthetic": synthetic_events,
    "instacart": instacart_events,
}


def run(name: str, max_users: int | None, k: int, sha: str | None = None) -> list[dict]:
    from training.compare import BASELINES, SERVED, compare, oracle_scorer
    from training.quality import build_task, user_holdout
    from training.ranker import RankerConfig, fit_recommender

    started = time.perf_counter()
    events, truth = DATASETS[name]()
    split = user_holdout(events, test_fraction=0.2)
    task = build_task(split, exclude="seen", max_users=max_users)
    fit_start = time.perf_counter()
    fitted = fit_recommender(split.train, split.items, RankerConfig(k=k))
    fit_seconds = time.perf_counter() - fit_start
    extra = {"oracle": oracle_scorer(truth, task)} if truth is not None else {}
    sequential = fitted.recommender.sources.get("sequential")
    if sequential is not None and task.sequences is not None:  # the sequential source alone, as served
        seqs = task.sequences
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
        "config": {"dataset": name, "split": "user_holdout(0.2 of sessions)", "exclude": "seen",
                   "relevant": list(task.relevant_events), "k": k, "users": len(task.users),
                   "items": task.n_items, "events": len(events), "served_mode": fitted.recommender.mode,
                   "shares": fitted.recommender.shares, "evidence": fitted.recommender.evidence},
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
    parser.add_argument("--max-users", type=int, default=None, help="subsample evaluated users (seeded)")
    parser.add_argument("--k", type=int, default=10)
    add_common_options(parser, RESULTS / "quality.json")
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows: list[dict] = []
    for name in args.datasets.split(","):
        rows += run(name.strip(), args.max_users, args.k, args.git_sha)
        for row in rows:
            if row["config"]["dataset"] == name:
                print(f"{name:10s} {row['method']:10s} ndcg@{args.k} {row['value']:.4f}  x{row['ratio']:.2f} "
                      f"of {row['baseline_method']}  recall {row['figures'][f'recall_at_{args.k}']:.4f}")
    if not args.no_write:
        append_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
