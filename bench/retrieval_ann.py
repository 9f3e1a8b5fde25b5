"""Candidate retrieval: exact inner-product top-k against the faiss IVF index, per API query.

`serving.candidate_index.CandidateIndex` searches exactly below `ANN_MIN_ITEMS` products and through
faiss IVF-Flat above. For catalogue sizes around and beyond that threshold this measures, in one
run on the same vectors: build time, the median time of one query (one user, top 100, as the API
asks) for both, and the IVF's recall@100 against the exact result.

Vectors: a two-tower of the project's default size (dim 32 + bias slot) with random users whose
tastes vary and item vectors drawn around 200 cluster centres (learnt item vectors cluster by
category); the timings do not depend on the values, the recall does a little.

    python -m bench.retrieval_ann --sizes 50000,200000,1000000
"""

from __future__ import annotations

import argparse
import logging
import platform
import statistics
import time

import numpy as np
import torch

from bench.report import RESULTS, add_common_options, append_results, command, git_sha, now
from models.two_tower import TwoTower, TwoTowerConfig
from serving.candidate_index import CandidateIndex

log = logging.getLogger("bench.retrieval_ann")


def catalogue(n_items: int, n_users: int, seed: int = 0) -> tuple[TwoTower, np.ndarray, torch.Tensor]:
    torch.manual_seed(seed)
    config = TwoTowerConfig(n_users=n_users, n_products=10, n_categories=3, n_brands=3)
    model = TwoTower(config).eval()
    with torch.no_grad():
        model.user_embedding.weight.normal_(0.0, 1.0)
    centres = torch.randn(200, config.dim + 1)
    vectors = centres[torch.randint(0, 200, (n_items,))] + 0.3 * torch.randn(n_items, config.dim + 1)
    return model, np.arange(n_items, dtype=np.int64), vectors


def per_query_ms(index: CandidateIndex, users: np.ndarray, k: int) -> tuple[float, np.ndarray]:
    times, found = [], []
    for user in users:
        began = time.perf_counter()
        ids, _ = index.top_k(np.array([user]), k)
        times.append(time.perf_counter() - began)
        found.append(ids[0])
    return statistics.median(times) * 1e3, np.stack(found)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="50000,200000,1000000")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=100)
    add_common_options(parser, RESULTS / "retrieval_ann.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    torch.set_num_threads(2)
    users = np.arange(args.queries, dtype=np.int64)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        model, ids, vectors = catalogue(n, args.queries)
        exact = CandidateIndex(model, ids, vectors, ann_min_items=n + 1)
        began = time.perf_counter()
        ivf = CandidateIndex(model, ids, vectors, ann_min_items=n)
        build_s = time.perf_counter() - began
        exact_ms, want = per_query_ms(exact, users, args.k)
        ivf_ms, got = per_query_ms(ivf, users, args.k)
        recall = float(np.mean([len(set(g) & set(w)) / args.k for g, w in zip(got.tolist(), want.tolist())]))
        log.info("%d items: exact %.2f ms, IVF %.2f ms (recall@%d %.3f, build %.1f s)", n, exact_ms, ivf_ms, args.k, recall, build_s)
        rows.append({
            "benchmark": "retrieval_ann", "metric": "query_ms_p50", "value": ivf_ms, "unit": "ms",
            "baseline": exact_ms, "ratio": exact_ms / ivf_ms, f"recall_at_{args.k}": recall, "build_s": build_s,
            "config": {"products": n, "k": args.k, "queries": args.queries, "dim": vectors.shape[1],
                       "index": f"faiss IVF-Flat inner product, nprobe {ivf._ann.nprobe} of {ivf._ann.nlist} lists",  # type: ignore[attr-defined]
                       "baseline": "exact: torch matmul + topk (CandidateIndex below ANN_MIN_ITEMS)"},
            "device": f"cpu-{torch.get_num_threads()}core {platform.processor() or platform.machine()}",
            "torch": torch.__version__, "command": command("bench.retrieval_ann", argv),
            "date": now(), "git_sha": args.git_sha or git_sha(),
        })
    append_results(args.out, rows)
    for row in rows:
        print(f"{row['config']['products']:>9} products: IVF {row['value']:.2f} ms vs exact {row['baseline']:.2f} ms "
              f"({row['ratio']:.1f}x), recall@{args.k} {row[f'recall_at_{args.k}']:.3f}, build {row['build_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
