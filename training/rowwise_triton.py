"""Fused row-wise Adagrad for CUDA in two Triton kernels: segment-sum of sorted ids, then update.

The math is `RowWiseAdagrad.step` exactly (sum the gradients of repeated ids, add the mean of
the squared row gradient to the row's accumulator, move the row by -lr * g / (sqrt(acc) + eps)),
but only the distinct rows are read and written, each once, in the manner of FBGEMM's
table-batched-embedding backward:

1. sort the ids (int32 keys when the table has < 2^31 rows: fewer radix passes), number the
   distinct ids 0..n_unique-1 in sorted order;
2. `_segment_sum_kernel`: each program takes CHUNK consecutive sorted positions, gathers their
   gradient rows, sums the rows of each distinct id inside the chunk with one one-hot matrix
   product (tensor cores, exact for 0/1 weights) and atomically adds the per-id sums into a
   persistent zeroed (capacity, dim) fp32 buffer. A hot id therefore costs one atomic row per
   chunk instead of one per occurrence;
3. `_apply_kernel`: one row per distinct id reads its summed gradient, updates accumulator and
   weight row in place (64-bit offsets: the table may exceed 2^31 elements), and writes zeros
   back into the buffer so the next step needs no memset.

Shapes are static and nothing waits on the host, so the update can be captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

CHUNK = 64  # sorted positions per segment-sum program (the one-hot product is CHUNK x CHUNK)
APPLY_ROWS = 16  # distinct rows per update program


@triton.jit
def _segment_sum_kernel(
    order_ptr, slot_ptr, grad_ptr, out_ptr, n, dim,
    DIM_P: tl.constexpr, CHUNK_: tl.constexpr, IEEE: tl.constexpr,
):
    pid = tl.program_id(0)
    pos = pid * CHUNK_ + tl.arange(0, CHUNK_)
    valid = pos < n
    cols = tl.arange(0, DIM_P)
    col_ok = cols < dim
    slot = tl.load(slot_ptr + pos, mask=valid, other=0)
    src = tl.load(order_ptr + pos, mask=valid, other=0).to(tl.int64)
    base = tl.load(slot_ptr + pid * CHUNK_)
    # Slots are sorted and step by 0 or 1, so inside a chunk they span at most CHUNK values.
    local = tl.where(valid, slot - base, -1)
    g = tl.load(grad_ptr + src[:, None] * dim + cols[None, :], mask=valid[:, None] & col_ok[None, :], other=0.0)
    rows = tl.arange(0, CHUNK_)
    onehot = (rows[:, None] == local[None, :]).to(g.dtype)  # (CHUNK local ids, CHUNK positions)
    if IEEE:
        summed = tl.dot(onehot, g, input_precision="ieee")
    else:
        summed = tl.dot(onehot, g)  # bf16/fp16 operands, fp32 accumulation: exact products
    n_local = tl.max(local, axis=0) + 1
    target = (base + rows).to(tl.int64)
    tl.atomic_add(
        out_ptr + target[:, None] * dim + cols[None, :], summed,
        mask=(rows < n_local)[:, None] & col_ok[None, :], sem="relaxed",
    )


@triton.jit
def _apply_kernel(
    unique_ptr, n_unique_ptr, summed_ptr, weight_ptr, state_ptr, lr_ptr, eps, dim,
    DIM_P: tl.constexpr, ROWS: tl.constexpr,
):
    pid = tl.program_id(0)
    u = pid * ROWS + tl.arange(0, ROWS)
    live = u < tl.load(n_unique_ptr)
    cols = tl.arange(0, DIM_P)
    mask = live[:, None] & (cols < dim)[None, :]
    row = tl.load(unique_ptr + u, mask=live, other=0).to(tl.int64)
    at = u.to(tl.int64)[:, None] * dim + cols[None, :]
    g = tl.load(summed_ptr + at, mask=mask, other=0.0)
    acc = tl.load(state_ptr + row, mask=live, other=0.0) + tl.sum(g * g, axis=1) / dim
    tl.store(state_ptr + row, acc, mask=live)
    scale = -tl.load(lr_ptr) / (tl.sqrt(acc) + eps)
    w_at = weight_ptr + row[:, None] * dim + cols[None, :]
    w = tl.load(w_at, mask=mask, other=0.0)
    tl.store(w_at, (w.to(tl.float32) + g * scale[:, None]).to(w.dtype), mask=mask)
    tl.store(summed_ptr + at, tl.zeros_like(g), mask=mask)


class FusedRowWiseAdagradKernel:
    """Owns the scratch buffer; `__call__(weight, state_sum, ids, grads, lr)` updates in place.

    ids (n,) int64 rows of `weight` (rows, dim); grads (n, dim) fp32/bf16/fp16; lr a float or a
    0-d/1-element fp32 CUDA tensor (a tensor lets a captured CUDA graph follow an LR schedule).
    """

    def __init__(self) -> None:
        self.summed: torch.Tensor | None = None
        self._lr: torch.Tensor | None = None

    def _buffer(self, capacity: int, dim: int, device: torch.device) -> torch.Tensor:
        if self.summed is None or self.summed.shape[0] < capacity or self.summed.shape[1] != dim:
            self.summed = torch.zeros((capacity, dim), dtype=torch.float32, device=device)
        return self.summed

    def _lr_tensor(self, lr: float | torch.Tensor, device: torch.device) -> torch.Tensor:
        if isinstance(lr, torch.Tensor):
            return lr.reshape(1).to(device=device, dtype=torch.float32)
        if self._lr is None:
            self._lr = torch.empty(1, dtype=torch.float32, device=device)
        return self._lr.fill_(lr)

    def __call__(
        self,
        weight: torch.Tensor,
        state_sum: torch.Tensor,
        ids: torch.Tensor,
        grads: torch.Tensor,
        lr: float | torch.Tensor,
        eps: float,
    ) -> None:
        n, dim = grads.shape
        if n == 0:
            return
        keys = ids.to(torch.int32) if weight.shape[0] < 2**31 else ids
        sorted_ids, order = torch.sort(keys)
        is_first = torch.ones_like(sorted_ids, dtype=torch.bool)
        torch.ne(sorted_ids[1:], sorted_ids[:-1], out=is_first[1:])
        slot = torch.cumsum(is_first, 0, dtype=torch.int32) - 1
        n_unique = slot[-1:] + 1
        capacity = min(n, weight.shape[0])
        unique = torch.empty(capacity, dtype=sorted_ids.dtype, device=ids.device)
        # Every writer of one slot writes the same id, so the duplicate scatter is well defined.
        unique.scatter_(0, slot.long(), sorted_ids)
        summed = self._buffer(capacity, dim, ids.device)
        grads = grads.contiguous()
        dim_p = max(16, triton.next_power_of_2(dim))
        _segment_sum_kernel[(triton.cdiv(n, CHUNK),)](
            order, slot, grads, summed, n, dim,
            DIM_P=dim_p, CHUNK_=CHUNK, IEEE=grads.dtype == torch.float32, num_warps=4,
        )
        _apply_kernel[(triton.cdiv(capacity, APPLY_ROWS),)](
            unique, n_unique, summed, weight, state_sum, self._lr_tensor(lr, ids.device), eps, dim,
            DIM_P=dim_p, ROWS=APPLY_ROWS, num_warps=4,
        )
