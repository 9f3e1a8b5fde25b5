"""Hybrid-parallel DLRM for torchrun: DDP for the MLPs, embedding tables sharded table-wise.

Each rank owns whole tables (balanced by rows) and a slice of every global batch. A step:
all-gather the sparse ids of the global batch; each rank looks up its own tables for all rows;
an all-to-all sends every rank the embeddings of its rows; the replicated dense part (wrapped in
DDP) runs forward/backward; the reverse all-to-all (autograd through the collective) returns the
embedding gradients to the owners, which apply a row-wise Adagrad to touched rows only.
Works with gloo on CPU and nccl on GPUs. Launch:
    torchrun --nproc_per_node=2 -m training.distributed --data ETL_DIR --out OUT_DIR
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_to_all_single
from torch.nn.parallel import DistributedDataParallel

from training.data import BatchIterator, load_schema, load_split
from training.dlrm import DLRM, DLRMConfig, save_model
from training.optim import RowWiseAdagrad

log = logging.getLogger(__name__)


def plan_tables(cardinalities: list[int], world_size: int) -> list[list[int]]:
    """Table indices per rank: largest tables first, each to the rank with the fewest rows."""
    plan: list[list[int]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for t in sorted(range(len(cardinalities)), key=lambda t: -cardinalities[t]):
        r = min(range(world_size), key=lambda r: (load[r], r))
        plan[r].append(t)
        load[r] += cardinalities[t]
    return [sorted(p) for p in plan]


class _DenseParts(nn.Module):
    """The replicated part of the DLRM: dense (b, n_dense), embedded (b, n_sparse, dim) -> (b,)."""

    def __init__(self, model: DLRM) -> None:
        super().__init__()
        self.dense_arch, self.interaction, self.over_arch = model.dense_arch, model.interaction, model.over_arch

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        return self.over_arch(self.interaction(self.dense_arch(dense), embedded))


@dataclass
class ShardedStepConfig:
    lr: float = 1e-3
    embedding_lr: float = 0.05


class ShardedDLRM:
    """One rank's share of a DLRM: its tables, a DDP-wrapped dense part and both optimizers.

    Every rank builds the full model from the same seed and keeps only its tables, so the start
    is identical to a single-process model (memory at init is that of the full model).
    """

    def __init__(self, config: DLRMConfig, seed: int, step_config: ShardedStepConfig, device: torch.device) -> None:
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        torch.manual_seed(seed)
        self.full = DLRM(config)
        self.plan = plan_tables(config.cardinalities, self.world)
        self.mine = self.plan[self.rank]
        offsets = [0, *torch.tensor(config.cardinalities).cumsum(0).tolist()]
        fused = self.full.sparse_arch.embedding.weight.detach()
        local = [fused[offsets[t] : offsets[t + 1]] for t in self.mine]
        self.table = torch.cat(local).to(device) if local else torch.empty(0, config.embedding_dim, device=device)
        local_offsets = [0, *torch.tensor([config.cardinalities[t] for t in self.mine]).cumsum(0).tolist()][:-1]
        self.local_offsets = torch.tensor(local_offsets, dtype=torch.long, device=device)
        # Position of each table in the order the all-to-all delivers them (rank by rank).
        delivered = [t for p in self.plan for t in p]
        self.restore = torch.tensor([delivered.index(t) for t in range(len(config.cardinalities))], device=device)
        self.dim = config.embedding_dim
        self.dense = _DenseParts(self.full).to(device)
        self.ddp = DistributedDataParallel(self.dense)
        self.dense_opt = torch.optim.Adam(self.dense.parameters(), lr=step_config.lr)
        self.sparse_opt = RowWiseAdagrad(self.table, step_config.embedding_lr)

    def step(self, dense: torch.Tensor, sparse: torch.Tensor, label: torch.Tensor) -> float:
        """One step on this rank's slice (b rows; equal b on every rank). Returns the global mean loss."""
        b = sparse.shape[0]
        gathered = [torch.empty_like(sparse) for _ in range(self.world)]
        dist.all_gather(gathered, sparse)
        global_sparse = torch.cat(gathered)  # (world*b, n_sparse)
        ids = global_sparse[:, self.mine] + self.local_offsets  # (world*b, mine)
        looked_up = F.embedding(ids, self.table).requires_grad_(True)  # (world*b, mine, dim)
        sizes_in = [b * len(self.mine) * self.dim] * self.world
        sizes_out = [b * len(p) * self.dim for p in self.plan]
        received = all_to_all_single(
            torch.empty(sum(sizes_out), device=sparse.device), looked_up.reshape(-1), sizes_out, sizes_in
        )
        pieces = [c.reshape(b, len(p), self.dim) for c, p in zip(received.split(sizes_out), self.plan)]
        embedded = torch.cat(pieces, dim=1)[:, self.restore]  # (b, n_sparse, dim) in table order
        loss = F.binary_cross_entropy_with_logits(self.ddp(dense, embedded), label)
        self.dense_opt.zero_grad(set_to_none=True)
        loss.backward()  # DDP averages MLP grads over ranks; embedding grads come back via all-to-all
        self.dense_opt.step()
        if self.mine:
            # Each rank's loss is a mean over b rows; the global loss is their mean, hence / world.
            self.sparse_opt.step(ids.reshape(-1), looked_up.grad.reshape(-1, self.dim) / self.world)
        total = loss.detach().clone()
        dist.all_reduce(total)
        return float(total) / self.world

    def gather_model(self) -> DLRM | None:
        """The full model on rank 0 (tables collected from their owners); None elsewhere."""
        tables: list[torch.Tensor | None] = [None] * self.world
        dist.all_gather_object(tables, self.table.cpu())
        if self.rank != 0:
            return None
        cards = self.full.config.cardinalities
        by_table: dict[int, torch.Tensor] = {}
        for p, t in zip(self.plan, tables):
            for i, chunk in zip(p, t.split([cards[i] for i in p])):  # type: ignore[union-attr]
                by_table[i] = chunk
        model = self.full.cpu()  # its dense modules are the trained ones (shared with self.dense)
        model.sparse_arch.embedding.weight.data.copy_(torch.cat([by_table[i] for i in range(len(cards))]))
        return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="torchrun ... -m training.distributed")
    parser.add_argument("--data", type=Path, required=True, help="ETL output dir (train/, schema.json)")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=4096, help="per rank")
    parser.add_argument("--embedding-dim", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")  # rank/world come from torchrun
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    schema = load_schema(args.data / "schema.json")
    rows = load_split(args.data / "train", schema)
    config = DLRMConfig(schema.n_dense, list(schema.cardinalities), embedding_dim=args.embedding_dim)
    model = ShardedDLRM(config, args.seed, ShardedStepConfig(), device)
    # Every rank walks the same shuffled global batches and takes its own contiguous slice.
    batches = BatchIterator(rows, args.batch_size * world, seed=args.seed, drop_last=True)
    for epoch in range(args.epochs):
        losses = []
        for batch in batches.epoch(epoch):
            part = slice(rank * args.batch_size, (rank + 1) * args.batch_size)
            losses.append(model.step(batch.dense[part].to(device), batch.sparse[part].to(device), batch.label[part].to(device)))
        if rank == 0:
            log.info("epoch %d mean loss %.4f over %d steps", epoch, sum(losses) / max(1, len(losses)), len(losses))
    full = model.gather_model()
    if full is not None:
        save_model(full, args.out / "model.pt")
        log.info("saved %s", args.out / "model.pt")
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
