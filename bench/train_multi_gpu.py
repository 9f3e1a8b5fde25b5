"""Many GPUs: the sharded DLRM (`training/distributed.py`) on 1 and N GPUs, in one run.

Every measurement runs under torchrun (one process per GPU, NCCL), first with 1 process, then
with N, so each figure has its 1-GPU baseline from the same run:
- quality: `python -m training.distributed` on the same data with the same global batch, seed
  and schedule on 1 and N GPUs; validation/test AUC of both (target: within 0.002) and the
  generator's oracle AUC when the data has `oracle.json` (from `bench/train_quality.py prepare`);
- scaling: samples/s of the sharded step on the Criteo Kaggle tables of `train_throughput.py`
  (configs a and b), random batches generated on each GPU, the same batch per GPU on 1 and N GPUs;
  efficiency = rate_N / (N * rate_1) (weak scaling);
- memory: one table larger than a per-process GPU memory cap
  (`torch.cuda.set_per_process_memory_fraction`, standing in for a smaller GPU): on 1 GPU it
  runs out of memory, on N GPUs the table is cut into row ranges and trains.
Appends one JSON object per figure to bench/results/train_multi_gpu.json. Needs only torch (and
pyarrow for the quality data), so it runs on the bare GPU machine:

    python -m bench.train_multi_gpu --gpus 2 --data DATA --git-sha $(git rev-parse --short HEAD)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist

from bench.report import REPO, RESULTS, add_common_options, append_results, command, git_sha, now
from bench.train_throughput import N_DENSE, configs
from models.dlrm import DLRMConfig
from training.distributed import ShardedDLRM, ShardedStepConfig, end_rank, init_process_group, sync

log = logging.getLogger("bench.train_multi_gpu")


# ---------------------------------------------------------------- workers (one per GPU, torchrun)


def _random_batch(cards: list[int], batch: int, device: torch.device, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator(device=device).manual_seed(seed)
    dense = torch.randn(batch, N_DENSE, device=device, generator=g)
    sparse = torch.stack([torch.randint(0, c, (batch,), device=device, generator=g) for c in cards], dim=1)
    return dense, sparse, (torch.rand(batch, device=device, generator=g) < 0.25).float()


def _timed_steps(model: ShardedDLRM, batches: list[tuple[torch.Tensor, ...]], warmup: int, steps: int) -> float:
    """Seconds for `steps` steps, the slowest rank's."""
    device = batches[0][0].device
    for i in range(warmup):
        model.step(*batches[i % len(batches)])
    sync(device)
    dist.barrier()
    began = time.perf_counter()
    for i in range(steps):
        model.step(*batches[i % len(batches)])
    sync(device)
    seconds = torch.tensor([time.perf_counter() - began], device=batches[0][0].device)
    dist.all_reduce(seconds, op=dist.ReduceOp.MAX)
    return float(seconds)


def scaling_worker(args: argparse.Namespace, device: torch.device) -> dict:
    cfg = configs(None)[args.config]
    config = DLRMConfig(N_DENSE, cfg.cardinalities, cfg.embedding_dim, cfg.bottom_mlp, cfg.top_mlp)
    model = ShardedDLRM(config, 0, ShardedStepConfig(bf16=args.precision == "bf16"), device, init_device=device)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    rank, world = dist.get_rank(), dist.get_world_size()
    batches = [_random_batch(cfg.cardinalities, args.batch_size, device, seed=1000 * rank + i) for i in range(4)]
    seconds = _timed_steps(model, batches, args.warmup, args.steps)
    if args.profile and rank == 0:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(5):
                model.step(*batches[i % len(batches)])
            sync(device)
        print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=25), flush=True)
    elif args.profile:
        for i in range(5):
            model.step(*batches[i % len(batches)])
    peaks: list[int | None] = [None] * world
    dist.all_gather_object(peaks, torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0)
    return {"samples_per_s": args.steps * args.batch_size * world / seconds, "seconds": seconds,
            "peak_memory_bytes_per_rank": peaks, "plan_rows_per_rank": [sum(s.rows for s in p) for p in model.plan]}


def memory_worker(args: argparse.Namespace, device: torch.device) -> dict:
    """Cap every process at `cap_gib` and train a table of `big_rows` rows (split in row ranges of
    at most big_rows / world) for a few steps; report an out-of-memory error instead of failing."""
    total = torch.cuda.get_device_properties(device).total_memory
    torch.cuda.set_per_process_memory_fraction(args.cap_gib * 2**30 / total, device)
    world = dist.get_world_size()
    cards = [args.big_rows, 1000, 1000]
    config = DLRMConfig(N_DENSE, cards, args.dim, [512, 256], [512, 256])
    outcome: dict = {"table_bytes": args.big_rows * args.dim * 4, "cap_bytes": args.cap_gib * 2**30}
    try:
        model = ShardedDLRM(config, 0, ShardedStepConfig(max_shard_rows=-(-args.big_rows // world)), device)
        batches = [_random_batch(cards, args.batch_size, device, seed=7 * dist.get_rank() + i) for i in range(2)]
        losses = [float(model.global_mean(model.step(*b))) for b in batches * 5]
        outcome |= {"trained_steps": len(losses), "losses": losses,
                    "shard_rows_per_rank": [sum(s.rows for s in p) for p in model.plan]}
        failed = torch.zeros(1, device=device)
    except torch.OutOfMemoryError as exc:
        outcome |= {"out_of_memory": str(exc).splitlines()[0][:300]}
        failed = torch.ones(1, device=device)
    if world > 1:
        dist.all_reduce(failed)  # every rank must agree, or the others would hang in a collective
    outcome["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    outcome["ranks_out_of_memory"] = int(failed.item())
    return outcome


def worker(argv: list[str]) -> NoReturn:
    parser = argparse.ArgumentParser(prog="train_multi_gpu.py worker")
    parser.add_argument("kind", choices=["scaling", "memory"])
    parser.add_argument("--report", type=Path, required=True)
    parser.add_argument("--config", default="a")
    parser.add_argument("--batch-size", type=int, default=16384, help="per GPU")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--cap-gib", type=float, default=8.0)
    parser.add_argument("--big-rows", type=int, default=24_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--profile", action="store_true", help="rank 0 prints the top ops of 5 steps")
    args = parser.parse_args(argv)
    device = init_process_group()
    result = (scaling_worker if args.kind == "scaling" else memory_worker)(args, device)
    if dist.get_rank() == 0:
        args.report.write_text(json.dumps(result, indent=2) + "\n")
    end_rank()


# ---------------------------------------------------------------- driver


def torchrun(n: int, module_args: list[str], report: Path, timeout_s: int = 900) -> dict:
    """Run `module_args` under torchrun with n processes; the JSON its rank 0 wrote to `report`."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", *module_args,
           "--report", str(report)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="4")
    log.info("%s", " ".join(cmd))
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s)
    if "--profile" in module_args:
        print(done.stdout[-12000:])
    if done.returncode != 0:
        raise RuntimeError(f"torchrun with {n} processes failed:\n{done.stderr[-4000:]}")
    return json.loads(report.read_text())


def quality(data: Path, gpus: int, args: argparse.Namespace, tmp: Path) -> dict:
    runs = {}
    for n in (1, gpus):
        runs[n] = torchrun(n, ["-m", "training.distributed", "--data", str(data), "--out", str(tmp / f"q{n}"),
                               "--epochs", str(args.epochs), "--batch-size", str(args.global_batch // n),
                               "--lr", str(args.lr), "--embedding-lr", str(args.embedding_lr),
                               "--lr-decay", "cosine", "--seed", "0"], tmp / f"quality{n}.json")
    oracle_path = data / "oracle.json"
    oracle = json.loads(oracle_path.read_text())["oracle_auc"] if oracle_path.is_file() else {}
    one, many = runs[1], runs[gpus]
    return {
        "benchmark": "train_multi_gpu", "metric": "test_auc", "value": many["test_auc"], "unit": "AUC", "baseline": one["test_auc"],
        "ratio": many["test_auc"] / one["test_auc"], "difference": abs(many["test_auc"] - one["test_auc"]),
        "target": "within 0.002 of 1 GPU",
        "config": {"gpus": gpus, "data": str(data), "epochs": args.epochs, "global_batch": args.global_batch,
                   "lr": args.lr, "embedding_lr": args.embedding_lr, "lr_decay": "cosine",
                   "oracle_auc": oracle, "runs": {str(n): r for n, r in runs.items()}},
    }


def scaling(gpus: int, config: str, batch: int, precision: str, args: argparse.Namespace, tmp: Path) -> dict:
    rates = {n: torchrun(n, ["-m", "bench.train_multi_gpu", "worker", "scaling", "--config", config, "--batch-size", str(batch),
                             "--steps", str(args.steps), "--precision", precision, *(["--profile"] if args.profile else [])],
                         tmp / f"scaling{config}{batch}{n}.json") for n in (1, gpus)}
    one, many = rates[1]["samples_per_s"], rates[gpus]["samples_per_s"]
    return {
        "benchmark": "train_multi_gpu", "metric": "samples_per_s", "value": many, "unit": "samples/s",
        "baseline": one, "ratio": many / one, "scaling_efficiency": many / (gpus * one),
        "config": {"gpus": gpus, "config": config, "batch_per_gpu": batch, "tables": "criteo-kaggle",
                   "precision": precision,
                   "step": "training.distributed.ShardedDLRM (eager, NCCL all-to-all + DDP)",
                   "runs": {str(n): r for n, r in rates.items()}},
    }


def memory(gpus: int, args: argparse.Namespace, tmp: Path) -> dict:
    runs = {n: torchrun(n, ["-m", "bench.train_multi_gpu", "worker", "memory", "--cap-gib", str(args.cap_gib),
                            "--big-rows", str(args.big_rows)], tmp / f"memory{n}.json") for n in (1, gpus)}
    return {
        "benchmark": "train_multi_gpu", "metric": "trains_table_larger_than_gpu_memory_cap",
        "value": "trained" if runs[gpus].get("trained_steps") else "failed", "unit": "outcome",
        "baseline": "out of memory" if runs[1].get("out_of_memory") else "trained",
        "ratio": None,
        "config": {"gpus": gpus, "big_rows": args.big_rows, "dim": 128, "cap_gib": args.cap_gib,
                   "runs": {str(n): r for n, r in runs.items()}},
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["worker"]:
        worker(argv[1:])  # ends the process
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    parser.add_argument("--data", type=Path, default=None, help="ETL output (or train_quality.py prepare output)")
    parser.add_argument("--parts", default="quality,scaling,memory")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--global-batch", type=int, default=8192)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--embedding-lr", type=float, default=0.1)
    parser.add_argument("--configs", default="a,b")
    parser.add_argument("--batch-sizes", default="16384,65536", help="per GPU")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--precisions", default="fp32,bf16", help="scaling: comma list of fp32, bf16")
    parser.add_argument("--profile", action="store_true", help="scaling: print the top ops of rank 0")
    parser.add_argument("--cap-gib", type=float, default=8.0)
    parser.add_argument("--big-rows", type=int, default=24_000_000, help="rows of the dim-128 table (24M: 12.3 GB)")
    add_common_options(parser, RESULTS / "train_multi_gpu.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.gpus < 2 or not torch.cuda.is_available():
        parser.error(f"needs at least 2 CUDA GPUs, found {torch.cuda.device_count()}")
    parts = args.parts.split(",")
    meta = {"device": f"{args.gpus}x {torch.cuda.get_device_name(0)}", "torch": torch.__version__,
            "nccl": ".".join(map(str, torch.cuda.nccl.version())), "git_sha": args.git_sha or git_sha(),
            "command": command("bench.train_multi_gpu", argv)}
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if "quality" in parts and args.data is not None:
            rows.append(quality(args.data, args.gpus, args, tmp))
        if "scaling" in parts:
            rows += [scaling(args.gpus, c, int(b), p, args, tmp) for c in args.configs.split(",")
                     for b in args.batch_sizes.split(",") for p in args.precisions.split(",")]
        if "memory" in parts:
            rows.append(memory(args.gpus, args, tmp))
    date = now()
    rows = [row | meta | {"date": date} for row in rows]
    append_results(args.out, rows)
    for row in rows:
        extra = {k: row[k] for k in ("difference", "scaling_efficiency") if k in row}
        print(row["metric"], row["config"].get("config", ""), row["config"].get("batch_per_gpu", ""), row["config"].get("precision", ""),
              row["value"], "vs 1 GPU", row["baseline"], extra)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
