"""Recommendation latency of the Flask API, in-process (WSGI test client, no network), on a seeded store.

    python bench/api_latency.py --events 100000 --requests 300 --workdir /tmp/api_bench

Seeds SQLite from `etl.synthetic` events with the API's own seed(), then times
GET /customers/<id>/recommendations?k=10 for random customers through the full path (candidates from
popularity, categories and session co-occurrence -> filters -> an in-process numpy ranker -> top k).
The baseline is the same request on an app without a ranker (popular items only), so the ratio
(baseline/value) says what candidate retrieval and ranking cost on top of the popular fallback.
Appends one JSON object per measurement to bench/results/api_latency.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api import create_app  # noqa: E402
from api.seed import seed  # noqa: E402
from api.store import Store  # noqa: E402
from etl.synthetic import SyntheticConfig, generate  # noqa: E402


class NumpyRanker:
    """Stands in for Triton: a fixed random linear score of the product features (cost ~ a vector op)."""

    def score(self, customer_id: int, products: pd.DataFrame) -> np.ndarray:
        rng = np.random.default_rng(customer_id)
        w = rng.normal(size=2)
        return w[0] * np.log1p(products["price"].to_numpy(np.float64)) + w[1] * (products["product_id"] % 7)


def _time_requests(client, customers: np.ndarray, k: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    client.get(f"/customers/{int(customers[0])}/recommendations?k={k}")  # warm caches and the pool
    latencies = []
    for cid in customers:
        start = time.perf_counter()
        resp = client.get(f"/customers/{int(cid)}/recommendations?k={k}")
        latencies.append(time.perf_counter() - start)
        assert resp.status_code == 200, resp.json
    return np.asarray(latencies) * 1000.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/api_bench"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "api_latency.json")
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    db = args.workdir / "api.db"
    db.unlink(missing_ok=True)
    events = generate(SyntheticConfig(n_events=args.events, seed=0)).events
    events_path = args.workdir / "events.parquet"
    events.to_parquet(events_path)
    store = Store(f"sqlite:///{db}")
    store.init_db()
    t0 = time.perf_counter()
    seeded = seed(store, events_path)
    seed_s = time.perf_counter() - t0
    store.dispose()

    config = {"DATABASE_URL": f"sqlite:///{db}", "API_KEYS": "", "RATELIMIT_ENABLED": False,
              "SERVING_DIR": str(args.workdir / "serving")}
    customers = np.random.default_rng(1).choice(events.user_id.unique(), size=args.requests)
    ranked = _time_requests(create_app(config, ranker=NumpyRanker()).test_client(), customers, args.k)
    popular = _time_requests(create_app(config).test_client(), customers, args.k)

    common = {
        "benchmark": "api_latency",
        "unit": "ms",
        "config": {"events": args.events, "requests": args.requests, "k": args.k, "database": "sqlite",
                   "customers": seeded.customers, "products": seeded.products,
                   "seed_rows_per_s": round(seeded.interactions / seed_s), "transport": "in-process WSGI"},
        "device": "cpu-2core",
        "command": " ".join([sys.executable, *sys.argv]),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_sha": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                  text=True, check=False).stdout.strip(),
    }
    rows = []
    for q in (50, 95):
        value, baseline = float(np.percentile(ranked, q)), float(np.percentile(popular, q))
        rows.append({**common, "metric": f"recommendations_p{q}", "value": round(value, 3),
                     "baseline": round(baseline, 3), "ratio": round(baseline / value, 3)})
    existing = json.loads(args.out.read_text()) if args.out.exists() else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(existing + rows, indent=2) + "\n")
    for row in rows:
        print(f"{row['metric']}: {row['value']} ms (popular-only baseline {row['baseline']} ms)")


if __name__ == "__main__":
    main()
