"""Hybrid-parallel DLRM for torchrun: DDP for the MLPs, embedding tables sharded across ranks.

Tables are cut into shards: a table with more rows than `max_shard_rows` is split into row ranges
(row-wise sharding, so one table may be larger than any single GPU), and shards are assigned to
ranks balanced by rows (table-wise placement). Each rank owns its shards and a slice of every
global batch. A step: all-gather the sparse ids of the global batch; each rank looks up its shards
for all rows (a row-range shard returns zeros for ids outside its range); an all-to-all sends every
rank the embeddings of its rows, where the shards of one table are summed; the replicated dense
part (wrapped in DDP) runs forward/backward; the reverse all-to-all (autograd through the
collective) returns the embedding gradients to the owners, which apply a row-wise Adagrad to the
touched rows only. Works with gloo on CPU and nccl on GPUs. Launch:
    torchrun --nproc_per_node=2 -m training.distributed --data ETL_DIR --out OUT_DIR
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NoReturn

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_to_all_single
from torch.nn.parallel import DistributedDataParallel

from models.dlrm import DLRM, DLRMConfig, InteractionArch, save_model
from settings import configure_logging
from training.data import BatchIterator, InteractionTensors, load_schema, load_split
from training.fastpath import FastPath
from training.fastpath.forward import FastInteraction, dense_forward
from training.metrics import auc
from training.optim import LRSchedule, RowWiseAdagrad

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of table `table`."""

    table: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_shards(cardinalities: list[int], world_size: int, max_shard_rows: int | None = None) -> list[list[Shard]]:
    """Shards per rank. Tables above `max_shard_rows` (default: an even share of all rows, so no
    rank is forced over its share by one table) are split into equal row ranges; shards go largest
    first to the rank with the fewest rows."""
    limit = max_shard_rows or math.ceil(sum(cardinalities) / world_size)
    shards: list[Shard] = []
    for t, rows in enumerate(cardinalities):
        parts = math.ceil(rows / limit)
        bounds = [rows * i // parts for i in range(parts + 1)]
        shards += [Shard(t, lo, hi) for lo, hi in zip(bounds, bounds[1:])]
    plan: list[list[Shard]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for shard in sorted(shards, key=lambda s: (-s.rows, s.table, s.start)):
        r = min(range(world_size), key=lambda r: (load[r], r))
        plan[r].append(shard)
        load[r] += shard.rows
    return [sorted(p, key=lambda s: (s.table, s.start)) for p in plan]


class _DenseParts(nn.Module):
    """The replicated part of the DLRM: dense (b, n_dense), embedded (b, n_sparse, dim) -> (b,).

    The model's arches with the single-process step's interaction (fused backward; Triton on
    CUDA) and aligned dense input (`training.fastpath.forward`).
    """

    def __init__(self, model: DLRM) -> None:
        super().__init__()
        self.dense_arch, self.interaction, self.over_arch = model.dense_arch, model.interaction, model.over_arch
        if isinstance(model.interaction, InteractionArch):
            self.interaction = FastInteraction(model.interaction.n_features, FastPath())

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return self.over_arch(self.interaction(dense_forward(self.dense_arch, dense, align=True), embedded))


@dataclass
class ShardedStepConfig:
    lr: float = 1e-3
    embedding_lr: float = 0.05
    max_shard_rows: int | None = None
    bf16: bool = False  # autocast the dense part; looked-up rows and their gradients travel in bf16


class ShardedDLRM:
    """One rank's share of a DLRM: its shards, a DDP-wrapped dense part and both optimizers.

    Every rank builds the full model from the same seed on `init_device` (default the CPU) and
    keeps only its shards on `device`, so the start is identical to a single-process model
    (memory at init is that of the full model there; afterwards `device` holds only the shards).
    """

    def __init__(self, config: DLRMConfig, seed: int, step_config: ShardedStepConfig, device: torch.device,
                 init_device: torch.device | None = None) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(seed)
        with init_device or torch.device("cpu"):
            self.full = DLRM(config)
        self.n_tables, self.dim = len(config.cardinalities), config.embedding_dim
        self.plan = plan_shards(config.cardinalities, self.world, step_config.max_shard_rows)
        self.mine = self.plan[self.rank]
        offsets = [0, *torch.tensor(config.cardinalities).cumsum(0).tolist()]
        fused = self.full.sparse_arch.embedding.weight.detach()
        local = [fused[offsets[s.table] + s.start : offsets[s.table] + s.stop] for s in self.mine]
        self.table = torch.cat(local).to(device) if local else torch.empty(0, self.dim, device=device)
        del local, fused
        self.full.sparse_arch.embedding.weight.data = torch.empty(0, self.dim)  # the shards hold the rows now

        def column(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        self.tables = column([s.table for s in self.mine])
        self.starts = column([s.start for s in self.mine])
        self.stops = column([s.stop for s in self.mine])
        self.local_offsets = column([0, *torch.tensor([s.rows for s in self.mine]).cumsum(0).tolist()][: len(self.mine)])
        self.partial = any(s.rows < config.cardinalities[s.table] for s in self.mine)
        # The table of each shard in the order the all-to-all delivers them (rank by rank).
        self.delivered = column([s.table for p in self.plan for s in p])
        whole = len(self.delivered) == self.n_tables
        self.permutation = column([self.delivered.tolist().index(t) for t in range(self.n_tables)]) if whole else None
        self.dense = _DenseParts(self.full).to(device)
        self.ddp = DistributedDataParallel(self.dense)
        self.dense_opt = torch.optim.Adam(self.dense.parameters(), lr=step_config.lr)
        self.sparse_opt = RowWiseAdagrad(self.table, step_config.embedding_lr)
        self.base_lr = step_config.lr
        self.autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=step_config.bf16)
        self.wire_dtype = torch.bfloat16 if step_config.bf16 else self.table.dtype

    def _lookup(self, global_sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Local rows (world*b, mine), the looked-up leaf and what to send (zeros outside a shard)."""
        ids = global_sparse[:, self.tables]
        inside = (ids >= self.starts) & (ids < self.stops)
        rows = torch.where(inside, ids - self.starts + self.local_offsets, self.local_offsets)
        looked_up = F.embedding(rows, self.table).to(self.wire_dtype).requires_grad_(True)  # (world*b, mine, dim)
        sent = looked_up * inside.unsqueeze(-1) if self.partial else looked_up
        return rows, looked_up, sent

    def step(self, dense: torch.Tensor, sparse: torch.Tensor, label: torch.Tensor, lr_factor: float = 1.0) -> torch.Tensor:
        """One step on this rank's slice (b rows; equal b on every rank). Returns this rank's
        loss (a detached 0-d tensor; no host sync)."""
        b = sparse.shape[0]
        gathered = [torch.empty_like(sparse) for _ in range(self.world)]
        dist.all_gather(gathered, sparse)
        rows, looked_up, sent = self._lookup(torch.cat(gathered))
        sizes_in = [b * len(self.mine) * self.dim] * self.world
        sizes_out = [b * len(p) * self.dim for p in self.plan]
        received = all_to_all_single(
            torch.empty(sum(sizes_out), device=sparse.device, dtype=self.wire_dtype), sent.reshape(-1), sizes_out, sizes_in
        )
        pieces = torch.cat([c.reshape(b, len(p), self.dim) for c, p in zip(received.split(sizes_out), self.plan)], dim=1)
        if self.permutation is not None:  # one shard per table: reorder instead of summing
            embedded = pieces[:, self.permutation]
        else:
            embedded = pieces.new_zeros(b, self.n_tables, self.dim).index_add(1, self.delivered, pieces)
        with self.autocast:
            logits = self.ddp(dense, embedded)
        loss = F.binary_cross_entropy_with_logits(logits.float(), label)
        self.dense_opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages MLP grads over ranks; embedding grads come back via all-to-all
        for group in self.dense_opt.param_groups:
            group["lr"] = self.base_lr * lr_factor
        self.dense_opt.step()
        if self.mine:
            # Each rank's loss is a mean over b rows; the global loss is their mean, hence / world.
            # Ids outside a row-range shard got a zero gradient: Adagrad leaves their row as it is.
            self.sparse_opt.step(rows.reshape(-1), looked_up.grad.reshape(-1, self.dim) / self.world,
                                 lr=self.sparse_opt.lr * lr_factor)
        return loss.detach()

    def global_mean(self, losses: torch.Tensor) -> torch.Tensor:
        """The mean over ranks of per-rank losses (any shape): the loss of the global batch."""
        total = losses.detach().clone()
        dist.all_reduce(total)
        return total / self.world

    def gather_model(self) -> DLRM | None:
        """The full model on rank 0 (shards collected from their owners); None elsewhere."""
        tables: list[torch.Tensor | None] = [None] * self.world
        dist.all_gather_object(tables, self.table.cpu())
        if self.rank != 0:
            return None
        cards = self.full.config.cardinalities
        offsets = [0, *torch.tensor(cards).cumsum(0).tolist()]
        model = copy.deepcopy(self.full).cpu()  # its dense modules are the trained ones (shared with self.dense)
        weight = torch.empty(sum(cards), self.dim)
        model.sparse_arch.embedding.weight.data = weight
        for shards, table in zip(self.plan, tables):
            for s, chunk in zip(shards, table.split([s.rows for s in shards])):  # type: ignore[union-attr]
                weight[offsets[s.table] + s.start : offsets[s.table] + s.stop] = chunk
        return model


@dataclass
class RunReport:
    """What rank 0 writes after a run (`--report`)."""

    world_size: int
    backend: str
    device: str
    epochs: int
    global_batch: int
    steps: int
    samples_per_s_last_epoch: float
    epoch_seconds: list[float]
    epoch_loss: list[float]
    peak_memory_bytes_per_rank: list[int]
    valid_auc: float | None
    test_auc: float | None
    plan_rows_per_rank: list[int]


def _auc(model: DLRM, split_dir: Path, schema_path: Path, device: torch.device) -> float | None:
    from training.trainer import predict

    if not split_dir.is_dir():
        return None
    data = load_split(split_dir, load_schema(schema_path)).to(device)
    return auc(data.label.cpu().numpy(), predict(model.to(device), data))


def train_sharded(args: argparse.Namespace, device: torch.device) -> RunReport | None:
    """Train on `args.data` with every rank in the process group; rank 0 returns the report."""
    rank, world = dist.get_rank(), dist.get_world_size()
    schema = load_schema(args.data / "schema.json")
    rows: InteractionTensors = load_split(args.data / "train", schema).to(device)
    config = DLRMConfig(schema.n_dense, list(schema.cardinalities), embedding_dim=args.embedding_dim)
    model = ShardedDLRM(config, args.seed, ShardedStepConfig(args.lr, args.embedding_lr, args.max_shard_rows, args.precision == "bf16"), device)
    # Every rank walks the same shuffled global batches and takes its own contiguous slice.
    batches = BatchIterator(rows, args.batch_size * world, seed=args.seed, drop_last=True)
    schedule = LRSchedule(args.warmup_steps, len(batches) * args.epochs, args.lr_decay)
    part = slice(rank * args.batch_size, (rank + 1) * args.batch_size)
    step, seconds, epoch_loss = 0, [], []
    for epoch in range(args.epochs):
        sync(device)
        began, losses = time.perf_counter(), []
        for batch in batches.epoch(epoch):
            losses.append(model.step(batch.dense[part], batch.sparse[part], batch.label[part], schedule.factor(step)))
            step += 1
        mean = float(model.global_mean(torch.stack(losses)).mean()) if losses else float("nan")
        sync(device)
        seconds.append(time.perf_counter() - began)
        epoch_loss.append(mean)
        if rank == 0:
            log.info("epoch %d: loss %.4f, %d steps, %.1f s", epoch, mean, len(losses), seconds[-1])
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
    peaks: list[int | None] = [None] * world
    dist.all_gather_object(peaks, peak)
    full = model.gather_model()
    if full is None:
        return None
    save_model(full, args.out / "model.pt")
    log.info("saved %s", args.out / "model.pt")
    return RunReport(
        world_size=world, backend=dist.get_backend(), device=str(device), epochs=args.epochs,
        global_batch=args.batch_size * world, steps=step,
        samples_per_s_last_epoch=len(batches) * args.batch_size * world / seconds[-1] if seconds else 0.0,
        epoch_seconds=seconds, epoch_loss=epoch_loss, peak_memory_bytes_per_rank=[int(p or 0) for p in peaks],
        valid_auc=_auc(full, args.data / "valid", args.data / "schema.json", device),
        test_auc=_auc(full, args.data / "test", args.data / "schema.json", device),
        plan_rows_per_rank=[sum(s.rows for s in p) for p in model.plan],
    )


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (for timing); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def end_rank(code: int = 0) -> NoReturn:
    """End this rank after its last collective: a barrier, then the process exits at once.

    Not destroy_process_group() nor a normal exit: both free the gloo process group with the GIL
    held, and its destructor joins gloo's worker threads while one of them may still be freeing a
    finished work's tensors, which needs the GIL: a deadlock, caught in this project's 2-rank test
    about once in 30 runs (main thread in ~ProcessGroupGloo -> std::thread::join, worker in
    ~AsyncBarrierWork -> ~AsyncAllgatherWork -> decref -> gil_scoped_acquire; the same shape as
    pytorch/pytorch#190489). Past the barrier no rank waits on another, so output is flushed and the
    process ends with os._exit; the OS closes the connections.
    """
    dist.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def init_process_group() -> torch.device:
    """nccl with one GPU per rank when CUDA is there, gloo on CPU; rank/world from torchrun."""
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    if not cuda:
        return torch.device("cpu")
    device = torch.device("cuda", dist.get_rank() % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrun ... -m training.distributed")
    parser.add_argument("--data", type=Path, required=True, help="ETL output dir (train/, valid/, test/, schema.json)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4096, help="per rank")
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--embedding-lr", type=float, default=0.05)
    parser.add_argument("--lr-decay", choices=["none", "linear", "cosine"], default="none")
    parser.add_argument("--warmup-steps", type=int, default=0)
    parser.add_argument("--max-shard-rows", type=int, default=None, help="split tables with more rows (row-wise)")
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--report", type=Path, default=None, help="rank 0 writes a JSON RunReport here")
    args = parser.parse_args(argv)
    configure_logging()
    device = init_process_group()
    args.out.mkdir(parents=True, exist_ok=True)
    report = train_sharded(args, device)
    if report is not None and args.report is not None:
        args.report.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    end_rank(main())  # a rank that raised exits the normal way, with its traceback
