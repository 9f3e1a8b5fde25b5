"""What an online experiment adds to GET /customers/<id>/recommendations, in-process (Flask test client).

Three apps on the same shop (tests/shop.py: 120 customers, 72 products, a deterministic ranker), one
request at a time, interleaved in rounds so machine load hits all alike:
  baseline   : the request path before experiments (no assignment, no impression row)
  no_exp     : today's path with no running experiment (one impression row per response)
  experiment : a running two-arm experiment with a holdout (assignment + the arm's ranker + impression)
Writes bench/results/experiment_overhead.json (p50 and p99 per app; ratio = baseline / value).

    python -m bench.experiment_overhead --requests 3000
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from api import create_app
from api.experiments import NO_EXPERIMENT, Experiments, create_experiment
from bench.report import RESULTS, add_common_options, append_results, stamp
from tests.shop import PreferenceRanker, ShopTruth, open_shop
from tests.test_api_support import make_config


class _Before(Experiments):
    """The request path as it was before experiments: no lookup, no impression row."""

    def assign(self, customer_id: int):  # type: ignore[no-untyped-def]
        return NO_EXPERIMENT

    def log_impression(self, assignment, customer_id, items):  # type: ignore[no-untyped-def]
        return None


def _app(root: Path, kind: str, truth: ShopTruth):  # type: ignore[no-untyped-def]
    root.mkdir(parents=True)
    ranker = PreferenceRanker(truth)
    app = create_app(make_config(root, RATELIMIT_ENABLED=False), ranker=ranker,
                     arm_rankers=lambda version: PreferenceRanker(truth))
    open_shop(app.test_client(), truth)
    if kind == "baseline":
        app.extensions["recsys_experiments"] = _Before(app.extensions["recsys_store"], 5.0, None)
    if kind == "experiment":
        create_experiment(app.extensions["recsys_store"], "bench", {"control": "1", "treatment": "2"},
                          {"control": 0.45, "treatment": 0.45}, 0.1, "control", {})
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000, help="per app")
    add_common_options(parser, RESULTS / "experiment_overhead.json")
    args = parser.parse_args()
    logging.disable(logging.WARNING)
    truth = ShopTruth()
    tmp = Path(tempfile.mkdtemp(prefix="bench-exp-"))
    kinds = ("baseline", "no_exp", "experiment")
    clients = {k: _app(tmp / k, k, truth).test_client() for k in kinds}
    rng = np.random.default_rng(0)
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for k in kinds:  # warm-up: catalogue caches, rankers
        for c in range(1, 30):
            clients[k].get(f"/customers/{c}/recommendations?k=10")
    for _ in range(args.requests):
        customer = int(rng.integers(1, truth.n_customers + 1))
        for k in kinds:
            start = time.perf_counter()
            got = clients[k].get(f"/customers/{customer}/recommendations?k=10")
            times[k].append(time.perf_counter() - start)
            assert got.status_code == 200
    common = {"device": f"cpu-{len(os.sched_getaffinity(0))}core",
              **stamp("bench.experiment_overhead", args.git_sha, ("numpy", "flask", "sqlalchemy"))}
    config = {"transport": "in-process Flask test client, sequential", "database": "sqlite (WAL)",
              "requests_per_app": args.requests, "k": 10,
              "ranker": "tests.shop.PreferenceRanker (served path, no Triton)",
              "baseline": "same path without experiment lookup or impression row (pre-experiment behaviour)"}
    rows = []
    for q in (50, 99):
        base = float(np.percentile(times["baseline"], q) * 1000)
        for k in ("no_exp", "experiment"):
            value = float(np.percentile(times[k], q) * 1000)
            rows.append({"benchmark": "experiment_overhead", "metric": f"recommend_p{q}_{k}", "value": round(value, 3),
                         "unit": "ms", "baseline": round(base, 3), "ratio": round(base / value, 3),
                         "config": config, **common})
    append_results(args.out, rows)
    for r in rows:
        print(f"{r['metric']:32s} {r['value']:8.3f} ms  baseline {r['baseline']:8.3f} ms  ratio {r['ratio']:.3f}")


if __name__ == "__main__":
    main()
