"""Fused row-wise Adagrad for CUDA in Triton: segment-sum of sorted ids with the update fused in.

The math is `training.optim.RowWiseAdagrad.step` exactly (sum the gradients of repeated ids, add the mean of
the squared row gradient to the row's accumulator, move the row by -lr * g / (sqrt(acc) + eps)),
but only the distinct rows are read and written, each once, in the manner of FBGEMM's
table-batched-embedding backward:

1. sort the ids (int32 keys when the table has < 2^31 rows: fewer radix passes), number the
   distinct ids 0..n_unique-1 in sorted order;
2. `_segment_sum_kernel`: each program takes a chunk of consecutive sorted positions (several
   chunks in a software-pipelined loop, so that the next chunk's gathers are in flight while one
   is summed and applied), gathers their gradient rows and sums the rows of each distinct id
   inside the chunk with one one-hot matrix product (tensor cores, exact for 0/1 weights), a
   block of columns at a time (narrower blocks than the row: the sums are formed twice, once for
   the rows' squared norms and once to move the rows, which keeps each program small enough for
   many to share an SM; sizes from `launch.rowwise_launch`). An id whose run of sorted positions lies
   wholly inside the chunk (almost all of them) is updated right there: accumulator and weight
   row (64-bit offsets: the table may exceed 2^31 elements) read and written once, no scratch.
   Only the (at most two) ids whose runs cross the chunk's edges atomically add their partial
   sums into a persistent zeroed (capacity, dim) fp32 buffer, so a hot id costs one atomic row
   per chunk instead of one per occurrence;
3. `_apply_split_kernel`: one row per chunk boundary that a run crosses (the run's first one)
   reads the summed gradient, updates accumulator and weight row, and writes zeros back into the
   buffer so the next step needs no memset.

The gradient may be the rows of a wider (B, W, dim) tensor whose
last n/B slots belong to the ids (the interaction writes the dense vector's gradient into slot
0 of the same product). Shapes are static and nothing waits on the host, so the update can be
captured in a CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from training.fastpath.launch import RowwiseLaunch, rowwise_launch

APPLY_ROWS = 16  # chunk boundaries per update program of `_apply_split_kernel`


@triton.jit
def _row_scale(row, sq, live, state_ptr, lr_ptr, eps, dim):
    """acc += sq / dim for the `live` rows of `row` (sq: each row's summed squared gradient); -lr / (sqrt(acc) + eps)."""
    acc = tl.load(state_ptr + row, mask=live, other=0.0) + sq / dim
    tl.store(state_ptr + row, acc, mask=live)
    return -tl.load(lr_ptr) / (tl.sqrt(acc) + eps)


@triton.jit
def _move_rows(row, g, scale, live, cols, col_ok, weight_ptr, dim):
    """w += g * scale over the columns `cols` of the `live` rows of `row`."""
    mask = live[:, None] & col_ok[None, :]
    w_at = weight_ptr + row[:, None] * dim + cols[None, :]
    w = tl.load(w_at, mask=mask, other=0.0)
    tl.store(w_at, (w.to(tl.float32) + g * scale[:, None]).to(w.dtype), mask=mask)


@triton.jit
def _update_rows(row, g, live, cols, col_ok, weight_ptr, state_ptr, lr_ptr, eps, dim):
    """acc += mean(g^2); w -= lr * g / (sqrt(acc) + eps) for the `live` rows of `row`."""
    scale = _row_scale(row, tl.sum(g * g, axis=1), live, state_ptr, lr_ptr, eps, dim)
    _move_rows(row, g, scale, live, cols, col_ok, weight_ptr, dim)


@triton.jit
def _segment_sum_kernel(
    order_ptr, slot_ptr, unique_ptr, grad_ptr, out_ptr, weight_ptr, state_ptr, lr_ptr, eps,
    n, dim, n_ids, width, n_chunks,
    DIM_P: tl.constexpr, CHUNK_: tl.constexpr, IEEE: tl.constexpr, STRIDED: tl.constexpr,
    PER_PROGRAM: tl.constexpr, STAGES: tl.constexpr, COLS: tl.constexpr,
):
    # PER_PROGRAM consecutive chunks per program: the loop lets Triton issue the next chunk's
    # (indirect) gradient loads while this one is summed and applied.
    if PER_PROGRAM == 1:
        _segment_sum_chunk(
            tl.program_id(0), order_ptr, slot_ptr, unique_ptr, grad_ptr, out_ptr, weight_ptr, state_ptr, lr_ptr,
            eps, n, dim, n_ids, width, DIM_P, CHUNK_, IEEE, STRIDED, COLS,
        )
    else:
        first = tl.program_id(0) * PER_PROGRAM
        for chunk in tl.range(first, tl.minimum(first + PER_PROGRAM, n_chunks), num_stages=STAGES):
            _segment_sum_chunk(
                chunk, order_ptr, slot_ptr, unique_ptr, grad_ptr, out_ptr, weight_ptr, state_ptr, lr_ptr, eps,
                n, dim, n_ids, width, DIM_P, CHUNK_, IEEE, STRIDED, COLS,
            )


@triton.jit
def _sum_columns(first, onehot, src, valid, grad_ptr, dim, COLS: tl.constexpr, IEEE: tl.constexpr):
    """Columns first..first+COLS of the chunk's per-id gradient sums: one-hot x gathered rows."""
    cols = first + tl.arange(0, COLS)
    col_ok = cols < dim
    g = tl.load(grad_ptr + src[:, None] * dim + cols[None, :], mask=valid[:, None] & col_ok[None, :], other=0.0)
    if IEEE:
        # fp32 gradients: the one-hot is exact in tf32, and tf32x3 splits g into a high and a low
        # tf32 part (~22 mantissa bits kept) on tensor cores; "ieee" (FMA) is far slower (bench/README-train.md).
        summed = tl.dot(onehot.to(g.dtype), g, input_precision="tf32x3")
    else:
        summed = tl.dot(onehot.to(g.dtype), g)  # bf16/fp16 operands, fp32 accumulation: exact products
    return summed, cols, col_ok


@triton.jit
def _segment_sum_chunk(
    pid, order_ptr, slot_ptr, unique_ptr, grad_ptr, out_ptr, weight_ptr, state_ptr, lr_ptr, eps,
    n, dim, n_ids, width,
    DIM_P: tl.constexpr, CHUNK_: tl.constexpr, IEEE: tl.constexpr, STRIDED: tl.constexpr,
    COLS: tl.constexpr,
):
    start = pid * CHUNK_
    pos = start + tl.arange(0, CHUNK_)
    valid = pos < n
    slot = tl.load(slot_ptr + pos, mask=valid, other=0)
    src = tl.load(order_ptr + pos, mask=valid, other=0).to(tl.int64)
    if STRIDED:
        # id i is slot (width - n_ids) + i % n_ids of batch row i // n_ids in the (B, width, dim) gradient
        src = (src // n_ids) * width + (width - n_ids) + src % n_ids
    base = tl.load(slot_ptr + start)
    # Slots are sorted and step by 0 or 1, so inside a chunk they span at most CHUNK_ values.
    local = tl.where(valid, slot - base, -1)
    rows = tl.arange(0, CHUNK_)
    onehot = rows[:, None] == local[None, :]  # (CHUNK_ local ids, CHUNK_ positions)
    n_local = tl.max(local, axis=0) + 1
    live = rows < n_local
    target = (base + rows).to(tl.int64)
    # Only the first local id can continue a run from the previous chunk, only the last one can
    # continue into the next; every other run is complete here and is applied now.
    prev = tl.load(slot_ptr + start - 1, mask=pid > 0, other=-1)
    end = start + CHUNK_
    nxt = tl.load(slot_ptr + end, mask=end < n, other=-1)
    split = ((rows == 0) & (prev == base)) | ((rows == n_local - 1) & (nxt == base + n_local - 1))
    whole = live & ~split
    row = tl.load(unique_ptr + target, mask=whole, other=0).to(tl.int64)
    live = live & split
    if COLS == DIM_P:
        summed, cols, col_ok = _sum_columns(0, onehot, src, valid, grad_ptr, dim, COLS, IEEE)
        _update_rows(row, summed, whole, cols, col_ok, weight_ptr, state_ptr, lr_ptr, eps, dim)
        tl.atomic_add(out_ptr + target[:, None] * dim + cols[None, :], summed,
                      mask=live[:, None] & col_ok[None, :], sem="relaxed")
    else:
        # Column blocks: less live state per program (more programs per SM), at the price of
        # summing each block twice: once for the rows' squared norms, once to move the rows.
        sq = tl.zeros([CHUNK_], dtype=tl.float32)
        for block in tl.static_range(DIM_P // COLS):
            summed, cols, col_ok = _sum_columns(block * COLS, onehot, src, valid, grad_ptr, dim, COLS, IEEE)
            sq += tl.sum(summed * summed, axis=1)
        scale = _row_scale(row, sq, whole, state_ptr, lr_ptr, eps, dim)
        for block in tl.static_range(DIM_P // COLS):
            summed, cols, col_ok = _sum_columns(block * COLS, onehot, src, valid, grad_ptr, dim, COLS, IEEE)
            _move_rows(row, summed, scale, whole, cols, col_ok, weight_ptr, dim)
            tl.atomic_add(out_ptr + target[:, None] * dim + cols[None, :], summed,
                          mask=live[:, None] & col_ok[None, :], sem="relaxed")


@triton.jit
def _finish_rows(u, live, unique_ptr, summed_ptr, weight_ptr, state_ptr, lr_ptr, eps, dim, DIM_P: tl.constexpr):
    """Update the rows of slots `u` from their summed gradient, then zero it for the next step."""
    cols = tl.arange(0, DIM_P)
    col_ok = cols < dim
    mask = live[:, None] & col_ok[None, :]
    row = tl.load(unique_ptr + u, mask=live, other=0).to(tl.int64)
    at = u.to(tl.int64)[:, None] * dim + cols[None, :]
    g = tl.load(summed_ptr + at, mask=mask, other=0.0)
    _update_rows(row, g, live, cols, col_ok, weight_ptr, state_ptr, lr_ptr, eps, dim)
    tl.store(summed_ptr + at, tl.zeros_like(g), mask=mask)


@triton.jit
def _apply_split_kernel(
    slot_ptr, unique_ptr, summed_ptr, weight_ptr, state_ptr, lr_ptr, eps, dim, n_chunks,
    DIM_P: tl.constexpr, ROWS: tl.constexpr, CHUNK_: tl.constexpr,
):
    k = tl.program_id(0) * ROWS + tl.arange(0, ROWS) + 1  # boundary k lies before position k * CHUNK_
    ok = k < n_chunks
    p = k * CHUNK_
    right = tl.load(slot_ptr + p, mask=ok, other=-1)
    left = tl.load(slot_ptr + p - 1, mask=ok, other=-2)
    # A run that crosses several boundaries is finished at its first one only.
    earlier = tl.load(slot_ptr + p - CHUNK_ - 1, mask=ok & (k > 1), other=-3)
    live = ok & (left == right) & (earlier != right)
    _finish_rows(right, live, unique_ptr, summed_ptr, weight_ptr, state_ptr, lr_ptr, eps, dim, DIM_P)


class FusedRowWiseAdagradKernel:
    """Owns the scratch buffer; `__call__(weight, state_sum, ids, grads, lr, eps)` updates in place.

    ids (n,) int64 rows of `weight` (rows, dim); grads (n, dim), or (B, W, dim) whose last n / B
    slots of each batch row are the ids' gradients, fp32/bf16/fp16; lr a float or a
    0-d/1-element fp32 CUDA tensor (a tensor lets a captured CUDA graph follow an LR schedule).
    """

    def __init__(self, launch: RowwiseLaunch | None = None) -> None:
        self.fixed_launch = launch  # None: `launch.rowwise_launch` by the row width
        self.summed: torch.Tensor | None = None
        self._lr: torch.Tensor | None = None

    def launch(self, dim: int) -> RowwiseLaunch:
        """The segment-sum kernel's settings for rows of `dim`, columns capped at the padded row."""
        setting = self.fixed_launch or rowwise_launch(dim)
        return setting._replace(columns=min(setting.columns, max(16, triton.next_power_of_2(dim))))

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
        n, dim = ids.numel(), grads.shape[-1]
        if n == 0:
            return
        grads = grads.contiguous()
        strided = grads.dim() == 3
        width = grads.shape[1] if strided else 1
        n_ids = n // grads.shape[0] if strided else 1
        if strided and (n_ids * grads.shape[0] != n or n_ids > width):
            raise ValueError(f"{n} ids do not fit gradient slots of shape {tuple(grads.shape)}")
        keys = ids.to(torch.int32) if weight.shape[0] < 2**31 else ids
        sorted_ids, order = torch.sort(keys)
        is_first = torch.ones_like(sorted_ids, dtype=torch.bool)
        torch.ne(sorted_ids[1:], sorted_ids[:-1], out=is_first[1:])
        slot = torch.cumsum(is_first, 0, dtype=torch.int32) - 1
        capacity = min(n, weight.shape[0])
        unique = torch.empty(capacity, dtype=sorted_ids.dtype, device=ids.device)
        # Every writer of one slot writes the same id, so the duplicate scatter is well defined.
        unique.scatter_(0, slot.long(), sorted_ids)
        summed = self._buffer(capacity, dim, ids.device)
        lr_t = self._lr_tensor(lr, ids.device)
        dim_p = max(16, triton.next_power_of_2(dim))
        launch = self.launch(dim)
        n_chunks = triton.cdiv(n, launch.chunk)
        _segment_sum_kernel[(triton.cdiv(n_chunks, launch.per_program),)](
            order, slot, unique, grads, summed, weight, state_sum, lr_t, eps, n, dim, n_ids, width, n_chunks,
            DIM_P=dim_p, CHUNK_=launch.chunk, IEEE=grads.dtype == torch.float32, STRIDED=strided,
            PER_PROGRAM=launch.per_program, STAGES=launch.stages, COLS=launch.columns, num_warps=launch.warps,
        )
        _apply_split_kernel[(max(1, triton.cdiv(n_chunks - 1, APPLY_ROWS)),)](
            slot, unique, summed, weight, state_sum, lr_t, eps, dim, n_chunks,
            DIM_P=dim_p, ROWS=APPLY_ROWS, CHUNK_=launch.chunk, num_warps=4,
        )
