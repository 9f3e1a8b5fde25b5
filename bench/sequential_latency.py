"""Request-time cost of the sequential source: one customer's events -> ordered sequence -> next-item scores.

    python -m bench.sequential_latency [--items 10000] [--requests 2000] [--no-triton]

What the API worker adds per recommendation when the sequential source is served: building the
sequence from the customer's events (`Recommender.sequences`) and scoring the whole catalogue with
the exported model in ONNX Runtime (one thread, `serving.sequential_export.OnnxSequentialScorer`).
Baseline: the same model in PyTorch eager (one thread). With Triton (the default; `--no-triton` skips
it): the same model served as the repository's `sequential` model by a local Triton (Python backend,
onnxruntime, one thread) and called over HTTP per request, as the API calls it (`serving.triton_client.
TritonSequentialScorer`); a tiny DLRM stands in as the ranker the repository needs. Weights are untrained (latency does not
depend on them); the model has `training.sequential.SequentialConfig`'s default sizes. Appends p50
and p99 to bench/results/sequential_latency.json.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.report import RESULTS, add_common_options, append_results, stamp

OUT = RESULTS / "sequential_latency.json"


def main() -> int:
    import torch

    from models.sequential import SASRec, SASRecConfig, SequentialScorer
    from serving.sequences import sequence_of
    from serving.sequential_export import OnnxSequentialScorer, export_sequential
    from training.sequential import SequentialConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=2_000)
    parser.add_argument("--events", type=int, default=60, help="events per customer")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--no-triton", action="store_true", help="skip the Triton-served measurement")
    add_common_options(parser, OUT)
    args = parser.parse_args()
    c = SequentialConfig()
    torch.manual_seed(0)
    torch_scorer = SequentialScorer(SASRec(SASRecConfig(args.items, c.max_len, c.dim, c.heads, c.layers)))
    catalogue = np.arange(1_000_000, 1_000_000 + args.items, dtype=np.int64)
    rng = np.random.default_rng(0)
    requests = [(rng.choice(catalogue, args.events), rng.choice(["view", "cart", "purchase"], args.events))
                for _ in range(args.requests)]
    with tempfile.TemporaryDirectory() as tmp:
        export_sequential(torch_scorer, Path(tmp) / "sequential.onnx")
        onnx_scorer = OnnxSequentialScorer.replacing(torch_scorer, Path(tmp) / "sequential.onnx")

        def measure(scorer) -> np.ndarray:  # type: ignore[no-untyped-def]
            out = []
            for ids, types in requests[:50]:  # warm-up
                seq = sequence_of(catalogue, ids, types)
                scorer.score_sequences(seq.items, seq.kinds)
            for ids, types in requests:
                start = time.perf_counter()
                seq = sequence_of(catalogue, ids, types)
                scorer.score_sequences(seq.items, seq.kinds)
                out.append(time.perf_counter() - start)
            return np.array(out) * 1000.0

        onnx_ms, torch_ms = measure(onnx_scorer), measure(torch_scorer)
        triton_ms = None if args.no_triton else measure_triton(torch_scorer, Path(tmp), measure)
    common = {"benchmark": "sequential_latency", "unit": "ms", "device": f"cpu-{os.cpu_count()}core",
              **stamp("bench.sequential_latency", args.git_sha, modules=("numpy", "torch", "onnxruntime")),
              "config": {"items": args.items, "requests": args.requests, "events_per_customer": args.events,
                         "max_len": c.max_len, "dim": c.dim, "layers": c.layers, "heads": c.heads,
                         "baseline": "the same model in PyTorch eager, one thread"}}
    rows = []
    for q in (50, 99):
        value, base = float(np.percentile(onnx_ms, q)), float(np.percentile(torch_ms, q))
        rows.append(common | {"metric": f"sequence + onnx scores p{q}", "value": value, "baseline": base,
                              "ratio": base / value})
        print(f"p{q}: onnx {value:.3f} ms, torch {base:.3f} ms")
        if triton_ms is not None:
            served = float(np.percentile(triton_ms, q))
            rows.append(common | {"metric": f"sequence + triton scores p{q}", "value": served, "baseline": base,
                                  "ratio": base / served})
            print(f"p{q}: triton (http) {served:.3f} ms")
    if not args.no_write:
        append_results(args.out, rows)
    return 0


def measure_triton(scorer, folder: Path, measure) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Per-request ms of the sequence + scores from a local Triton serving the scorer's ONNX export."""
    import json

    import torch

    from models.dlrm import DLRM, DLRMConfig
    from models.saved import save_model
    from serving.export import export_onnx
    from serving.local_triton import start_server, stop_server
    from serving.triton_client import TritonClient, TritonSequentialScorer
    from serving.triton_repo import SEQUENTIAL_MODEL, build_repository, build_sequential_repository
    from bench.api_latency import free_port

    torch.manual_seed(0)
    ranker = save_model(DLRM(DLRMConfig(n_dense=2, cardinalities=[5], embedding_dim=4, bottom_mlp=[8], top_mlp=[8])),
                        folder / "dlrm.pt")
    schema = folder / "schema.json"
    schema.write_text(json.dumps({"continuous": ["a", "b"], "categorical": ["u"]}))
    repo = folder / "repo"
    build_repository(export_onnx(ranker, schema, folder / "model.onnx"), schema, repo)
    build_sequential_repository(folder / "sequential.onnx", repo)
    handle = start_server(repo, free_port(), free_port(), folder / "state")
    client = TritonClient(handle.http_url, SEQUENTIAL_MODEL, model_version="1")
    try:
        return measure(TritonSequentialScorer(client, scorer.n_items, scorer.max_len))
    finally:
        client.close()
        stop_server(folder / "state")


if __name__ == "__main__":
    raise SystemExit(main())
