"""Table-wise sharded DLRM over 2 gloo processes matches single-process training."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from training.dlrm import DLRM, DLRMConfig
from training.distributed import ShardedDLRM, ShardedStepConfig, plan_tables
from training.optim import RowWiseAdagrad

CONFIG = DLRMConfig(n_dense=3, cardinalities=[50, 7, 30, 11, 3], embedding_dim=4, bottom_mlp=[8], top_mlp=[8])
WORLD, PER_RANK, STEPS, SEED = 2, 32, 4, 5


def batches() -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(9)
    n = WORLD * PER_RANK
    out = []
    for _ in range(STEPS):
        sparse = torch.stack([torch.randint(0, c, (n,), generator=g) for c in CONFIG.cardinalities], dim=1)
        out.append((torch.randn(n, 3, generator=g), sparse, (torch.rand(n, generator=g) < 0.3).float()))
    return out


def _worker(rank: int, port: int, out: Path) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))  # torchrun would set these
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    model = ShardedDLRM(CONFIG, SEED, ShardedStepConfig(lr=1e-2, embedding_lr=0.1), torch.device("cpu"))
    part = slice(rank * PER_RANK, (rank + 1) * PER_RANK)
    losses = [model.step(d[part], s[part], y[part]) for d, s, y in batches()]
    full = model.gather_model()
    if rank == 0:
        torch.save({"losses": losses, "state": full.state_dict()}, out)
    dist.barrier()
    dist.destroy_process_group()


def single_process() -> tuple[list[float], dict[str, torch.Tensor]]:
    torch.manual_seed(SEED)
    model = DLRM(CONFIG)
    table = model.sparse_arch.embedding.weight
    dense_opt = torch.optim.Adam([p for p in model.parameters() if p is not table], lr=1e-2)
    sparse_opt = RowWiseAdagrad(table, 0.1)
    losses = []
    for dense, sparse, label in batches():
        ids = model.sparse_arch.ids(sparse)
        embedded = F.embedding(ids, table.detach()).requires_grad_(True)
        loss = F.binary_cross_entropy_with_logits(model.forward_embedded(dense, embedded), label)
        dense_opt.zero_grad()
        loss.backward()
        dense_opt.step()
        sparse_opt.step(ids.reshape(-1), embedded.grad.reshape(ids.numel(), -1))
        losses.append(float(loss.detach()))
    return losses, model.state_dict()


def test_tables_are_balanced_by_rows_and_each_owned_once() -> None:
    plan = plan_tables([100, 10, 60, 50, 5], 2)
    assert sorted(t for p in plan for t in p) == [0, 1, 2, 3, 4]
    assert plan == [[0, 1, 4], [2, 3]]  # 115 rows vs 110: greedy, largest first


def test_two_gloo_ranks_train_like_one_process(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "rank0.pt"
    mp.spawn(_worker, args=(port, out), nprocs=WORLD, join=True)
    result = torch.load(out, weights_only=False)
    losses, state = single_process()
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(losses), rtol=1e-4, atol=1e-5)
    for name, tensor in state.items():
        torch.testing.assert_close(result["state"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    assert result["losses"][0] != result["losses"][-1]  # it did train
