"""Launch settings of the fused segment-sum + row-wise Adagrad kernel (`training/fastpath/rowwise_triton.py`), CUDA.

For configs b (dim 128) and a (dim 16) at batch 65536 (Criteo Kaggle tables), times the whole
update the step runs (sort, numbering, segment-sum + update, split rows) on the step's own
inputs: the fused fp32 table, the batch's 26 ids per sample and their bf16 gradients in the
interaction's (B, 27, dim) layout. Sweeps positions per program (chunk) x columns per block x
warps x chunks per program. Appends one row per config to `bench/results/rowwise_sweep.json`
(`value` = the kept setting's ms, `baseline` = the fastest setting's, ratio = baseline / value);
the launch table by row width (`training/fastpath/launch.py`: `ROWWISE_WIDE_ROWS`,
`ROWWISE_NARROW_ROWS`) comes from here.

    python -m bench.rowwise_sweep --git-sha $(git rev-parse --short HEAD)
"""

from __future__ import annotations

import itertools
import sys

import torch

from bench.interaction_sweep import cuda_ms, run_sweeps, sweep_parser
from bench.train_throughput import configs, make_batches


def sweep(key: str, batch: int) -> list[dict]:
    from training.fastpath.launch import RowwiseLaunch
    from training.fastpath.rowwise_triton import FusedRowWiseAdagradKernel

    dev = torch.device("cuda")
    cfg = configs(None)[key]
    dim = cfg.embedding_dim
    (_, sparse, _), = make_batches(cfg, batch, 1, dev)
    offsets = torch.tensor([0, *cfg.cardinalities[:-1]], device=dev).cumsum(0)
    ids = (sparse + offsets).reshape(-1)
    weight = torch.empty(sum(cfg.cardinalities), dim, device=dev).uniform_(-0.05, 0.05)
    state = torch.zeros(weight.shape[0], device=dev)
    grads = torch.randn(batch, 1 + len(cfg.cardinalities), dim, device=dev, dtype=torch.bfloat16) * 1e-3
    kept = tuple(FusedRowWiseAdagradKernel().launch(dim))[:4]
    rows = []
    dim_p = max(16, 1 << (dim - 1).bit_length())
    for chunk, columns, warps, per in itertools.product((16, 32, 64), (16, 32, 64, 128), (1, 2, 4, 8), (1, 8)):
        if columns > dim_p or (warps == 1 and chunk == 64) or (warps == 8 and chunk == 16):
            continue
        kernel = FusedRowWiseAdagradKernel(RowwiseLaunch(chunk=chunk, columns=columns, warps=warps, per_program=per))
        ms = cuda_ms(lambda: kernel(weight, state, ids, grads, 0.01, 1e-8))
        rows.append({"chunk": chunk, "columns": columns, "warps": warps, "per_program": per, "ms": ms,
                     "kept": (chunk, columns, warps, per) == kept})
        print(f"{key} chunk {chunk} columns {columns} warps {warps} per_program {per}: {ms:.3f} ms", flush=True)
    return rows


def summarise(key: str, batch: int, found: list[dict], meta: dict) -> dict:
    """The kept setting's time against the fastest setting of the sweep (ratio = baseline / value)."""
    settings = ("chunk", "columns", "warps", "per_program")
    best = min(found, key=lambda r: r["ms"])
    kept = next(r for r in found if r["kept"])
    print(f"{key}: fastest {[best[k] for k in settings]} {best['ms']:.3f} ms; kept {[kept[k] for k in settings]} {kept['ms']:.3f} ms")
    return {
        "benchmark": "rowwise_sweep", "metric": "update_ms", "value": kept["ms"], "unit": "ms",
        "baseline": best["ms"], "ratio": best["ms"] / kept["ms"],
        "config": {"name": f"{key}_dim{configs(None)[key].embedding_dim}", "batch_size": batch,
                   "kept": [kept[k] for k in settings], "fastest": [best[k] for k in settings]},
        "settings": [{k: r[k] for k in (*settings, "ms")} for r in found],
    } | meta


def main(argv: list[str] | None = None) -> int:
    args = sweep_parser(__doc__, "rowwise_sweep.json").parse_args(argv)
    return run_sweeps(args, lambda key, meta: [summarise(key, args.batch_size, sweep(key, args.batch_size), meta)])


if __name__ == "__main__":
    sys.exit(main())
