"""Variants of the served recommender on the quality benchmark's split: what each change adds, per data set.

    python -m bench.quality_variants --datasets synthetic --variants base,affinity
    python -m bench.quality_variants --datasets instacart --variants base,affinity --no-write

Same protocol as `bench.quality` (per-user temporal holdout, full catalogue, seen excluded, NDCG@10),
same evaluated users. Each variant is a set of `RankerConfig` overrides (VARIANTS below) fitted on the
training part only; the classic baselines are computed once per data set (cached under var/bench/) so
every variant is compared with the same figures. Appends one row per (data set, variant) to
bench/results/quality_variants.json: NDCG@10, the ratio to the best baseline, the share of the oracle's
NDCG (synthetic shop), and the paired difference to the `base` variant's lists with its bootstrap interval.
Variants are chosen on the synthetic shop and reported on every data set; none is tuned per data set.
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import time

import numpy as np

from bench.quality import DATASETS
from bench.report import REPO, RESULTS, add_common_options, append_results, stamp

log = logging.getLogger("bench.quality_variants")
CACHE = REPO / "var" / "bench"

VARIANTS: dict[str, dict] = {
    "base": {},
    "affinity": {"history_features": ("als_affinity",)},
    "knn_max": {"history_features": ("knn_max",)},
    "affinity+knn_max": {"history_features": ("als_affinity", "knn_max")},
    "cuts5": {"cuts": 5},
    "pool200": {"pool_size": 200},
    "blend": {"blend_weights": (0.25, 0.5, 1.0, 2.0)},
    "seed1": {"seed": 1},
    "seed2": {"seed": 2},
    "knn_shrink300": {"source_params": {"item_knn": {"shrink": 300.0}}},
    "mult_dae": {"sources": ("item_knn", "als", "ease", "popularity", "mult_dae")},
}


def _baselines(name: str, task, truth, k: int) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Per-user NDCG@k of every baseline (and the oracle) on this task, cached by data set and users."""
    from training.compare import compare, oracle_scorer

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"baselines-{name}-{len(task.users)}-{task.n_items}-k{k}.pkl"
    if path.exists():
        return pickle.loads(path.read_bytes())
    extra = {"oracle": oracle_scorer(truth, task)} if truth is not None else {}
    comparison = compare(task, None, None, k=k, extra=extra, n_boot=10)
    out = {m: r.metrics.ndcg for m, r in comparison.results.items()}
    path.write_bytes(pickle.dumps(out))
    return out


def main() -> int:
    from training.compare import BASELINES, served_lists
    from training.quality import build_task, list_metrics, paired_difference, user_holdout
    from training.ranker import RankerConfig, fit_recommender

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--variants", default="base", help=f"comma list of {sorted(VARIANTS)}")
    parser.add_argument("--k", type=int, default=10)
    add_common_options(parser, RESULTS / "quality_variants.json")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    rows = []
    for name in args.datasets.split(","):
        events, truth = DATASETS[name]()
        split = user_holdout(events, test_fraction=0.2)
        task = build_task(split, exclude="seen")
        base = _baselines(name, task, truth, args.k)
        best = max((m for m in base if m in BASELINES), key=lambda m: base[m].mean())
        reference = None
        for variant in args.variants.split(","):
            start = time.perf_counter()
            fitted = fit_recommender(split.train, split.items, RankerConfig(k=args.k, **VARIANTS[variant]))
            top = served_lists(fitted.recommender, fitted.scorer(), task, args.k)
            ndcg = list_metrics(task, top, args.k)
            seconds = time.perf_counter() - start
            cached = CACHE / f"lists-{name}-{len(task.users)}-{variant}.pkl"
            cached.write_bytes(pickle.dumps(ndcg))
            base_lists = CACHE / f"lists-{name}-{len(task.users)}-base.pkl"
            if variant == "base" or reference is None:
                reference = pickle.loads(base_lists.read_bytes()) if base_lists.exists() else ndcg
            diff = paired_difference(ndcg, reference)
            value = float(ndcg.ndcg.mean())
            row = {"benchmark": "quality_variants", "metric": f"{variant} ndcg@{args.k}", "unit": f"ndcg@{args.k}",
                   "value": value, "baseline": float(base[best].mean()), "baseline_method": best,
                   "ratio": value / float(base[best].mean()),
                   "config": {"dataset": name, "variant": variant, "overrides": VARIANTS[variant],
                              "users": len(task.users), "served_mode": fitted.recommender.mode,
                              "evidence": fitted.recommender.evidence},
                   "figures": {"minus_reference": diff.mean, "minus_reference_ci": [diff.low, diff.high],
                               "reference_variant": "base" if base_lists.exists() else args.variants.split(",")[0], "fit_and_eval_seconds": seconds,
                               **({"share_of_oracle": value / float(base["oracle"].mean())} if "oracle" in base
                                  else {}),
                               **{f"{m}_ndcg": float(v.mean()) for m, v in base.items()}},
                   "device": f"cpu-{os.cpu_count()}core",
                   **stamp("bench.quality_variants", args.git_sha, modules=("numpy", "torch", "implicit"))}
            rows.append(row)
            oracle = f" {row['figures']['share_of_oracle']:.1%} of oracle" if "oracle" in base else ""
            print(f"{name:10s} {variant:18s} ndcg {value:.4f} x{row['ratio']:.3f} of {best}{oracle} "
                  f"mode {fitted.recommender.mode} vs-ref {diff.mean:+.4f} [{diff.low:+.4f},{diff.high:+.4f}] "
                  f"{seconds:.0f}s", flush=True)
    if not args.no_write:
        append_results(args.out, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
