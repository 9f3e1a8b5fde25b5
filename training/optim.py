"""Sparse-friendly optimizers for the fused embedding table and the learning-rate schedule.

The embedding table is updated only where a batch touched it: the trainer looks rows up from a
detached table, takes the gradient of that lookup ((n, dim), or the (B, W, dim) tensor whose last
n / B slots are the ids') and hands it here with the row ids. On CUDA with Triton the row-wise
Adagrad runs as fused kernels (`training.fastpath.rowwise_triton`: sort, segment-sum with the update of
each distinct row fused in, one read-modify-write per row); without Triton duplicate ids are
merged with a sort plus fixed-size segment sums. Both have static shapes and never wait on the
host (safe for CUDA graphs). On the CPU, where a host sync costs nothing, the ids are sorted, each
distinct id's gradients are summed by `embedding_bag` (a parallel, vectorised gather-sum that reads
the gradient rows where they lie) and only the distinct rows are read and written; in compiled
(long) runs one inductor kernel updates narrow rows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from training.fastpath.launch import RowwiseLaunch

log = logging.getLogger(__name__)


def fused_kernel_available(device: torch.device) -> bool:
    """True when the Triton row-wise Adagrad can run on `device` (CUDA with Triton installed)."""
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401  # the CUDA wheels of torch ship it; source builds may not
    except ImportError:
        log.warning("triton is not installed: row-wise Adagrad falls back to torch scatter-adds")
        return False
    return True


def merge_duplicate_rows(
    ids: torch.Tensor, grads: torch.Tensor, n_rows: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum the gradients of repeated ids. ids (n,), grads (n, dim) -> rows (n,), summed (n, dim).

    The first `n_unique` slots hold each distinct id once with its summed gradient; the other
    slots hold a zero gradient and point at spread-out rows of the `n_rows`-row table, so adding
    them anywhere changes nothing and no single row becomes an atomic-add hot spot.
    """
    sorted_ids, order = torch.sort(ids)
    is_first = torch.ones_like(sorted_ids, dtype=torch.bool)
    is_first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    slot_sorted = torch.cumsum(is_first, 0) - 1
    # Summing in input order (not sorted order) keeps neighbouring adds on different slots.
    slot = torch.empty_like(slot_sorted).scatter_(0, order, slot_sorted)
    summed = torch.zeros_like(grads).index_add_(0, slot, grads)
    rows = torch.remainder(torch.arange(ids.numel(), device=ids.device), n_rows)
    rows.scatter_(0, slot_sorted, sorted_ids)
    return rows, summed


class RowWiseAdagrad:
    """Adagrad with one accumulator per table row (the mean of the squared row gradient).

    Memory is one float per row instead of one per weight, as in FBGEMM's row-wise Adagrad.
    """

    def __init__(
        self,
        weight: torch.Tensor,
        lr: float,
        eps: float = 1e-8,
        initial_accumulator: float = 0.0,
        fused: bool | None = None,
        compile: bool = False,
        launch: RowwiseLaunch | None = None,
    ):
        """`fused`: the Triton kernel (None: where it runs, CUDA with Triton); `launch`: its
        settings for every row width instead of `fastpath.launch.rowwise_launch`'s table."""
        self.weight = weight
        self.lr = lr
        self.eps = eps
        self.state_sum = torch.full((weight.shape[0],), initial_accumulator, dtype=torch.float32, device=weight.device)
        if fused is None:
            fused = fused_kernel_available(weight.device)
        self._kernel = None
        if fused:
            from training.fastpath.rowwise_triton import FusedRowWiseAdagradKernel

            self._kernel = FusedRowWiseAdagradKernel(launch)
        # CPU, `compile` (long runs): inductor reads each distinct row's summed gradient twice (mean
        # square, step) where the eager ops below make ~5 passes and `index_add_` sorts the rows
        # again. But it writes the table rows back in a second pass (it does not fuse a gather and
        # a scatter of one tensor): a second cache miss per row, which costs more than it saves
        # above 128-byte rows (bench/README-train.md, CPU).
        narrow_rows = weight.shape[-1] * weight.element_size() <= 128
        self._compiled_rows = (
            torch.compile(update_distinct_rows, dynamic=False)
            if compile and narrow_rows and weight.device.type == "cpu"
            else None
        )

    @property
    def fused(self) -> bool:
        return self._kernel is not None

    @torch.no_grad()
    def step(self, ids: torch.Tensor, grads: torch.Tensor, lr: float | torch.Tensor | None = None) -> None:
        """ids (n,) int64 rows of the table, grads (n, dim) gradient of each looked-up row, or
        (B, W, dim) whose last n / B slots of each batch row are those gradients (`id_rows`).

        `lr` may be a 1-element tensor on the table's device, so a captured CUDA graph can follow
        a learning-rate schedule by refilling it.
        """
        lr = self.lr if lr is None else lr
        if self._kernel is not None:
            self._kernel(self.weight, self.state_sum, ids, grads, lr, self.eps)
            return
        if ids.device.type == "cpu":
            rows, summed = sum_by_id(ids, grads)
            if self._compiled_rows is not None:
                # One graph for every step: the number of distinct rows varies, lr is an input.
                torch._dynamo.maybe_mark_dynamic(rows, 0)
                torch._dynamo.maybe_mark_dynamic(summed, 0)
                lr_tensor = torch.as_tensor(lr, dtype=torch.float32)
                self._compiled_rows(self.weight, self.state_sum, rows, summed, lr_tensor, self.eps)
                return
            summed = summed.float()
            # `rows` are distinct: read the state once, write it back, add each row's step once.
            mean_square = torch.linalg.vector_norm(summed, dim=1).square_().div_(summed.shape[1])
            state = self.state_sum.index_select(0, rows).add_(mean_square)
            self.state_sum.index_copy_(0, rows, state)
            scale = state.sqrt_().add_(self.eps).reciprocal_().mul_(-lr)
            self.weight.index_add_(0, rows, summed.mul_(scale.unsqueeze(1)).to(self.weight.dtype))
            return
        rows, summed = merge_duplicate_rows(ids, id_rows(ids, grads).float(), self.weight.shape[0])
        self.state_sum.index_add_(0, rows, summed.pow(2).mean(dim=1))
        scale = -lr / (self.state_sum[rows].sqrt() + self.eps)
        self.weight.index_add_(0, rows, (summed * scale.unsqueeze(1)).to(self.weight.dtype))

    def state_dict(self) -> dict[str, object]:
        return {"kind": "rowwise_adagrad", "lr": self.lr, "eps": self.eps, "state_sum": self.state_sum}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.lr = float(state["lr"])  # type: ignore[arg-type]
        self.eps = float(state["eps"])  # type: ignore[arg-type]
        self.state_sum.copy_(state["state_sum"])  # type: ignore[arg-type]


def id_rows(ids: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
    """(n, dim) gradients of `ids` from (n, dim), or from (B, W, dim) whose last n / B slots of
    each batch row hold them (the interaction's one-product backward puts the dense gradient's
    slot first)."""
    if grads.dim() == 2:
        return grads
    n_ids = _check_id_slots(ids, grads)
    return grads[:, grads.shape[1] - n_ids :].reshape(ids.numel(), grads.shape[2])


def _check_id_slots(ids: torch.Tensor, grads: torch.Tensor) -> int:
    """The number of id slots per batch row of a (B, W, dim) gradient; ValueError if they don't fit."""
    n_ids = ids.numel() // grads.shape[0]
    if n_ids * grads.shape[0] != ids.numel() or n_ids > grads.shape[1]:
        raise ValueError(f"{ids.numel()} ids do not fit gradient slots of shape {tuple(grads.shape)}")
    return n_ids


def update_distinct_rows(
    weight: torch.Tensor, state_sum: torch.Tensor, rows: torch.Tensor, summed: torch.Tensor,
    lr: torch.Tensor, eps: float,
) -> None:
    """Row-wise Adagrad of distinct `rows` (u,) with their summed gradients (u, dim), written for
    torch.compile (CPU): the state and the rows are gathered, updated and written back in place."""
    summed = summed.float()
    state = state_sum[rows] + summed.square().mean(1)
    state_sum[rows] = state
    weight[rows] += summed * (-lr / (state.sqrt() + eps)).unsqueeze(1)


def sum_by_id(ids: torch.Tensor, grads: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ids (u,) ascending and the sum of each one's gradients (u, dim) in their dtype (CPU).

    `grads` is (n, dim), or (B, W, dim) whose last n / B slots of each batch row are the ids'
    gradients (`id_rows`); those are read in place, without copying them out first. A sort groups
    equal ids; `embedding_bag(mode="sum")` then gathers and sums each group's rows in one
    parallel pass, where `index_add_` with repeated ids would run on one thread.
    """
    lead = 0
    if grads.dim() == 3:
        _check_id_slots(ids, grads)
        # Sort ids laid out like the gradient's slots, the leading slots marked -1: the sort's
        # order then indexes the (B * W, dim) gradient rows directly, after the B * lead marks.
        batch, width, dim = grads.shape
        lead = batch * (width - ids.numel() // batch)
        ids = torch.cat([ids.new_full((batch, width - ids.numel() // batch), -1), ids.view(batch, -1)], 1).view(-1)
        grads = grads.reshape(batch * width, dim)
    sorted_ids, order = torch.sort(ids)
    rows, counts = torch.unique_consecutive(sorted_ids[lead:], return_counts=True)
    starts = counts.cumsum(0).sub_(counts)
    # Sums in the gradient's dtype: for bf16 gradients the bag accumulates in fp32 and rounds each
    # sum to bf16 once (exact for ids seen once; 2^-9 relative for repeated ids, the size of the
    # gradients' own rounding). Upcasting the gradient first cost a pass over it; the update
    # upcasts the sums as it reads them.
    return rows, F.embedding_bag(order[lead:], grads, starts, mode="sum")


class SparseSGD:
    """Plain SGD on the touched rows; duplicates simply add up, as in the reference DLRM."""

    def __init__(self, weight: torch.Tensor, lr: float):
        self.weight = weight
        self.lr = lr

    @torch.no_grad()
    def step(self, ids: torch.Tensor, grads: torch.Tensor, lr: float | torch.Tensor | None = None) -> None:
        """ids (n,) and grads (n, dim) or (B, W, dim), as `RowWiseAdagrad.step`."""
        lr = self.lr if lr is None else lr
        grads = id_rows(ids, grads)
        if isinstance(lr, torch.Tensor):
            self.weight.index_add_(0, ids, (grads * -lr).to(self.weight.dtype))
        else:
            self.weight.index_add_(0, ids, grads.to(self.weight.dtype), alpha=-lr)

    def state_dict(self) -> dict[str, object]:
        return {"kind": "sgd", "lr": self.lr}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.lr = float(state["lr"])  # type: ignore[arg-type]


@dataclass(frozen=True)
class LRSchedule:
    """Linear warm-up for `warmup_steps`, then `decay` ("none", "linear", "cosine") to `min_ratio`."""

    warmup_steps: int
    total_steps: int
    decay: str = "cosine"
    min_ratio: float = 0.1

    def factor(self, step: int) -> float:
        if self.warmup_steps > 0 and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.decay == "none":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.decay == "linear":
            shape = 1.0 - progress
        else:
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.min_ratio + (1.0 - self.min_ratio) * shape
