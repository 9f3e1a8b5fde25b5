"""Drift between nights on the synthetic shop: PSI (registry.drift) of the next day's night on the same
shop, and of a night on a shop whose customers convert more, against last night.

    python -m bench.drift            # appends to bench/results/drift.json

Per shop: last night = a 6-day window, tonight = the window one day later (same generator), shifted =
the same window of the generator with base_logit -2 -> -0.5. value = the shifted night's largest gated
PSI, baseline = the unshifted night's; the levels under the default thresholds and every figure's PSI
are kept in `figures`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import pandas as pd

from bench.report import RESULTS, add_common_options, append_results, stamp

SHOPS = {
    "small": dict(n_events=24_000, n_users=1000, n_products=300, days=7, seed=3),  # tests/test_drift.py's shop
    "medium": dict(n_events=100_000, n_users=2000, n_products=300, days=7, seed=3),
}
SHIFT = {"base_logit": -0.5}


def night_profile(events: pd.DataFrame, first_day: int) -> tuple[dict[str, np.ndarray], int]:
    from registry.drift import dlrm_item_embeddings, profile
    from training.quality import build_task, last_days_split
    from training.ranker import RankerConfig, fit_recommender

    when = pd.to_datetime(events["event_time"])
    start = when.min().normalize() + pd.Timedelta(days=first_day)
    split = last_days_split(events[(when >= start) & (when < start + pd.Timedelta(days=6))], 1)
    fitted = fit_recommender(split.train, split.items, RankerConfig(epochs=1, cuts=1, pool_size=30))
    task = build_task(split)
    return profile(fitted.recommender, fitted.scorer(), task.history, task.excluded,
                   dlrm_item_embeddings(fitted.ranker)), len(task.users)


def run(name: str, sha: str | None = None) -> dict:
    from etl import SyntheticConfig, generate
    from registry.drift import compare_profiles

    started = time.perf_counter()
    shop = SHOPS[name]
    events = generate(SyntheticConfig(**shop)).events
    last, users = night_profile(events, 0)
    same, _ = night_profile(events, 1)
    shifted, _ = night_profile(generate(SyntheticConfig(**shop | SHIFT)).events, 1)
    a, b = compare_profiles(last, same), compare_profiles(last, shifted)
    value, base = b.metrics()["drift_psi_max"], a.metrics()["drift_psi_max"]
    return {
        "benchmark": "drift", "metric": "largest gated PSI, shifted night (baseline: unshifted night)",
        "value": value, "unit": "psi", "baseline": base, "ratio": value / base if base > 0 else float("nan"),
        "config": {"name": name, **shop, "shift": SHIFT, "window_days": 6, "evaluated_users": users,
                   "ranker": "epochs=1, cuts=1, pool_size=30", "warn": a.warn, "block": a.block},
        "figures": {"unshifted": {"level": a.level, "worst": a.worst, "psi": a.psi},
                    "shifted": {"level": b.level, "worst": b.worst, "psi": b.psi}},
        "device": f"cpu-{os.cpu_count()}core", **stamp("bench.drift", sha, ("numpy", "torch")),
        "wall_seconds": time.perf_counter() - started,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shops", default=",".join(SHOPS), help=f"comma list of {sorted(SHOPS)}")
    parser.add_argument("--no-write", action="store_true")
    add_common_options(parser, RESULTS / "drift.json")
    args = parser.parse_args()
    rows = []
    for name in args.shops.split(","):
        row = run(name.strip(), args.git_sha)
        rows.append(row)
        f = row["figures"]
        print(f"{name}: unshifted {f['unshifted']['level']} {f['unshifted']['worst']}, "
              f"shifted {f['shifted']['level']} {f['shifted']['worst']}")
    if not args.no_write:
        append_results(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
