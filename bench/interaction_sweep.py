"""Launch settings of the dot-interaction Triton kernels (`training/fastpath/interaction_triton.py`), CUDA.

For configs b (dim 128) and a (dim 16) at batch 65536 (Criteo Kaggle tables, F = 27), times the
forward and the backward kernel alone, reading the rows from the fp32 table (`gather`, what the
step does at dim >= 64) and from a looked-up bf16 copy (`copy`), for samples per program x warps
x pipeline stages x columns per block of the rows (`--columns`, both kernels; forward and
backward are timed apart). Appends one row per config and way of reading the rows to
`bench/results/interaction_sweep.json`; the launch table by row width
(`training/fastpath/launch.py`: `INTERACTION_WIDE_ROWS`, `INTERACTION_NARROW_ROWS`) comes from here.

    python -m bench.interaction_sweep --git-sha $(git rev-parse --short HEAD)
    python -m bench.interaction_sweep --configs b --samples 8,16 --warps 1,2,4 --stages 3 --columns 32,64,128
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Callable

import torch

from bench.report import RESULTS, add_common_options, append_results, command, git_sha, now
from bench.train_throughput import configs, device_name, make_batches


def cuda_ms(fn, n: int = 20) -> float:  # noqa: ANN001
    """Mean milliseconds per call of `fn` on the current CUDA stream, after 3 warm-up calls."""
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(n):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / n


def sweep(key: str, batch: int, grid: dict[str, list[int]]) -> list[dict]:
    from training.fastpath import interaction_triton as it  # needs triton, which CUDA builds of torch ship
    from training.fastpath.launch import InteractionLaunch, interaction_launch

    dev = torch.device("cuda")
    cfg = configs(None)[key]
    dim, n_features = cfg.embedding_dim, len(cfg.cardinalities) + 1
    (_, sparse, _), = make_batches(cfg, batch, 1, dev)
    offsets = torch.tensor([0, *cfg.cardinalities[:-1]], device=dev).cumsum(0)
    ids = (sparse + offsets).contiguous()
    table = torch.randn(sum(cfg.cardinalities), dim, device=dev) * 0.05
    dense = torch.randn(batch, dim, device=dev, dtype=torch.bfloat16)
    carrier = torch.empty(batch, n_features, dim, device=dev, dtype=torch.bfloat16)
    copy = torch.cat([torch.zeros(batch, 1, dim, device=dev), table[ids]], 1).to(torch.bfloat16)
    grad = torch.randn(batch, dim + n_features * (n_features - 1) // 2, device=dev, dtype=torch.bfloat16)
    kept = interaction_launch(dim)
    settings = [InteractionLaunch(s, w, st, c, c) for s, w, st, c in itertools.product(
        grid["samples"], grid["warps"], grid["stages"], [c or None for c in grid["columns"]])]
    rows = []
    for setting in ([kept] if kept not in settings else []) + settings:
        times = {
            "fwd_gather": cuda_ms(lambda: it.forward_with(setting, dense, carrier, n_features, table, ids)),
            "bwd_gather": cuda_ms(lambda: it.backward_with(setting, grad, dense, carrier, n_features, table, ids)),
            "fwd_copy": cuda_ms(lambda: it.forward_with(setting, dense, copy, n_features)),
            "bwd_copy": cuda_ms(lambda: it.backward_with(setting, grad, dense, copy, n_features)),
        }
        samples, warps, stages, fwd_cols, bwd_cols = setting
        rows.append({"config": key, "dim": dim, "batch_size": batch, "samples": samples, "warps": warps,
                     "stages": stages, "forward_columns": fwd_cols, "backward_columns": bwd_cols, "ms": times,
                     "kept": setting == kept})
        print(key, tuple(setting), {k: round(v, 3) for k, v in times.items()}, flush=True)
    return rows


def summarise(key: str, batch: int, found: list[dict], meta: dict) -> list[dict]:
    """One result per way of reading the rows: the kept setting's forward + backward time, against
    the fastest setting of the sweep (`baseline`; ratio = baseline / value, as for every time in
    bench/results: 1.0 when the kept setting is the fastest, below 1 by how much it is slower)."""
    out = []
    for kind, rows in (("gather", "fp32 table"), ("copy", "looked-up bf16 copy")):
        setting = ("samples", "warps", "stages", "forward_columns", "backward_columns")
        total = {tuple(r[k] for k in setting): r["ms"][f"fwd_{kind}"] + r["ms"][f"bwd_{kind}"] for r in found}
        best = min(total, key=total.__getitem__)
        kept = next(tuple(r[k] for k in setting) for r in found if r["kept"])
        print(f"{key} {rows}: best {setting} {best} {total[best]:.3f} ms; kept {kept} {total[kept]:.3f} ms")
        out.append({
            "benchmark": "interaction_sweep", "metric": "forward_plus_backward_ms", "value": total[kept], "unit": "ms",
            "baseline": total[best], "ratio": total[best] / total[kept],
            "config": {"name": f"{key}_dim{found[0]['dim']}", "batch_size": batch, "rows": rows,
                       "kept": list(kept), "fastest": list(best)},
            "settings": [{k: r[k] for k in setting} | {"ms": r["ms"]} for r in found],
        } | meta)
    return out


def sweep_parser(doc: str, results: str) -> argparse.ArgumentParser:
    """The options every kernel sweep takes; results: the file under bench/results/, named as the sweep."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="b,a")
    parser.add_argument("--batch-size", type=int, default=65536)
    parser.set_defaults(module="bench." + results.removesuffix(".json"))
    return add_common_options(parser, RESULTS / results)


def run_sweeps(args: argparse.Namespace, rows_for: Callable[[str, dict], list[dict]]) -> int:
    """Sweep each of `args.configs` (rows_for(config key, run metadata) -> result rows) and append
    the rows to `args.out`; the metadata: machine, versions, command and date."""
    if not torch.cuda.is_available():
        print("needs a CUDA GPU", file=sys.stderr)
        return 2
    import triton

    meta = {"device": device_name(torch.device("cuda")), "torch": torch.__version__, "triton": triton.__version__,
            "command": command(args.module), "date": now(), "git_sha": args.git_sha or git_sha()}
    rows = []
    for key in args.configs.split(","):
        rows += rows_for(key, meta)
        torch.cuda.empty_cache()
    append_results(args.out, rows)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = sweep_parser(__doc__, "interaction_sweep.json")
    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    parser.add_argument("--samples", type=ints, default=[4, 8, 16], help="samples per program")
    parser.add_argument("--warps", type=ints, default=[2, 4, 8])
    parser.add_argument("--stages", type=ints, default=[2, 3, 4])
    parser.add_argument("--columns", type=ints, default=[0], help="columns per block of the rows, both kernels (0: whole rows)")
    args = parser.parse_args(argv)
    grid = {"samples": args.samples, "warps": args.warps, "stages": args.stages, "columns": args.columns}
    return run_sweeps(args, lambda key, meta: summarise(key, args.batch_size, sweep(key, args.batch_size, grid), meta))


if __name__ == "__main__":
    sys.exit(main())
