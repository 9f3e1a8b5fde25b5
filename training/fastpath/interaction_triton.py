"""DLRM's pairwise dot interaction for CUDA in Triton: forward and backward without copies.

The dot interaction of `models.dlrm.InteractionArch` on the GPU (the math of `fastpath.forward`):
X = [dense (+ slot 0); embeddings] (F, dim) per sample, Z = X X^T, output [dense, Z's upper
triangle]; backward dX = (dZ + dZ^T) X. The batched-matmul version writes X into a padded copy
(B, 32, dim), writes the (B, 32, 32) products and the (B, 32, 32) symmetric gradient to memory and
reads each back; here one program per few samples (`launch.InteractionLaunch`) loads each
sample's rows once (rows past F masked, so F is padded to a power of two only in registers),
computes the F x F dots on tensor cores and writes only the pairs (forward), or gathers
dZ + dZ^T straight from the output gradient and writes only dX (backward). Bytes per sample at
F=27, dim 128, bf16: forward reads 6.9 kB and writes 1 kB, backward reads 7.9 kB and writes 7.2 kB.

Both are `torch.library.triton_op`s, so torch.compile traces through them and CUDA graphs capture
them; `dot_interaction` has autograd registered. Inputs: dense (B, dim), embedded (B, F, dim) whose
slot 0 is added to dense (`lead`, the layout `TrainStep` looks rows up in) or (B, F - 1, dim).
Given the table and the batch's ids as well, both kernels read the rows from the table
themselves (fp32 rows cast in registers) and `embedded` only carries the gradient back: the
step then writes and reads no looked-up copy at all.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from training.fastpath.launch import InteractionLaunch, interaction_launch


@triton.jit
def _features(dense_ptr, emb_ptr, ids_ptr, b, rows, cols, F, n_emb, dim, LEAD: tl.constexpr, GATHER: tl.constexpr):
    """Sample b's (F_P, DIM_P) feature rows: dense (+ slot 0 when LEAD) then the embeddings.

    GATHER: the embeddings are rows ids[b] (F - 1 of them) of the table at `emb_ptr`, cast to
    the dense vector's dtype here, the same rounding as a looked-up copy.
    """
    col_ok = cols < dim
    d = tl.load(dense_ptr + b * dim + cols, mask=col_ok, other=0.0)
    if GATHER:
        ok = (rows >= 1) & (rows < F)
        idx = tl.load(ids_ptr + b * (F - 1) + rows - 1, mask=ok, other=0).to(tl.int64)
        x = tl.load(emb_ptr + idx[:, None] * dim + cols[None, :], mask=ok[:, None] & col_ok[None, :], other=0.0)
        x = tl.where(rows[:, None] == 0, d[None, :], x.to(d.dtype))
    else:
        emb_row = rows if LEAD else rows - 1
        ok = (emb_row >= 0) & (emb_row < n_emb)
        x = tl.load(emb_ptr + (b * n_emb + emb_row)[:, None] * dim + cols[None, :],
                    mask=ok[:, None] & col_ok[None, :], other=0.0)
        # Same rounding as adding the bf16 tensors in torch: fp32 sum, one cast.
        x = tl.where(rows[:, None] == 0, (x.to(tl.float32) + d.to(tl.float32)[None, :]).to(x.dtype), x)
    return x, d


@triton.jit
def _pair_index(lo, hi, F):
    """Position of pair (lo, hi), lo < hi < F, in the row-major upper triangle."""
    return lo * F - lo * (lo + 1) // 2 + hi - lo - 1


@triton.jit
def _forward_kernel(
    dense_ptr, emb_ptr, ids_ptr, out_ptr, B, F, n_emb, dim, out_stride,
    F_P: tl.constexpr, DIM_P: tl.constexpr, SAMPLES_: tl.constexpr, LEAD: tl.constexpr, IEEE: tl.constexpr,
    GATHER: tl.constexpr, COLS: tl.constexpr,
):
    rows = tl.arange(0, F_P)
    i, j = rows[:, None], rows[None, :]
    upper = (i < j) & (j < F)
    pair = _pair_index(i, j, F)
    start = tl.program_id(0).to(tl.int64) * SAMPLES_
    for b in range(start, tl.minimum(start + SAMPLES_, B)):
        out = out_ptr + b * out_stride
        z = tl.zeros((F_P, F_P), dtype=tl.float32)
        # Z = sum over column blocks of X_block X_block^T (one block when COLS == DIM_P)
        for block in tl.static_range(DIM_P // COLS):
            cols = block * COLS + tl.arange(0, COLS)
            x, d = _features(dense_ptr, emb_ptr, ids_ptr, b, rows, cols, F, n_emb, dim, LEAD, GATHER)
            if IEEE:
                z = tl.dot(x, tl.trans(x), z, input_precision="tf32x3")
            else:
                z = tl.dot(x, tl.trans(x), z)
            tl.store(out + cols, d, mask=cols < dim)
        tl.store(out + dim + pair, z.to(out_ptr.dtype.element_ty), mask=upper)


@triton.jit
def _backward_kernel(
    grad_ptr, dense_ptr, emb_ptr, ids_ptr, grad_dense_ptr, grad_emb_ptr, B, F, n_emb, dim, grad_stride,
    F_P: tl.constexpr, DIM_P: tl.constexpr, SAMPLES_: tl.constexpr, LEAD: tl.constexpr, IEEE: tl.constexpr,
    GATHER: tl.constexpr, COLS: tl.constexpr,
):
    rows = tl.arange(0, F_P)
    i, j = rows[:, None], rows[None, :]
    off_diagonal = (i != j) & (i < F) & (j < F)
    # dZ + dZ^T: entry (i, j) and (j, i) both read the gradient of pair (min, max); diagonal 0.
    pair = _pair_index(tl.minimum(i, j), tl.maximum(i, j), F)
    emb_row = rows if LEAD else rows - 1
    emb_ok = (emb_row >= 0) & (emb_row < n_emb)
    start = tl.program_id(0).to(tl.int64) * SAMPLES_
    for b in range(start, tl.minimum(start + SAMPLES_, B)):
        grad = grad_ptr + b * grad_stride
        sym = tl.load(grad + dim + pair, mask=off_diagonal, other=0.0).to(dense_ptr.dtype.element_ty)
        # dX = (dZ + dZ^T) X, one block of columns at a time (one block when COLS == DIM_P)
        for block in tl.static_range(DIM_P // COLS):
            cols = block * COLS + tl.arange(0, COLS)
            col_ok = cols < dim
            x, _ = _features(dense_ptr, emb_ptr, ids_ptr, b, rows, cols, F, n_emb, dim, LEAD, GATHER)
            if IEEE:
                gx = tl.dot(sym, x, input_precision="tf32x3")
            else:
                gx = tl.dot(sym, x)  # (F_P, COLS) fp32
            tl.store(grad_emb_ptr + (b * n_emb + emb_row)[:, None] * dim + cols[None, :],
                     gx.to(grad_emb_ptr.dtype.element_ty), mask=emb_ok[:, None] & col_ok[None, :])
            # Row 0 is the dense vector's gradient through the dots; the output also passed it through.
            g0 = tl.sum(tl.where(rows[:, None] == 0, gx, 0.0), axis=0)
            passed = tl.load(grad + cols, mask=col_ok, other=0.0).to(tl.float32)
            tl.store(grad_dense_ptr + b * dim + cols, (g0 + passed).to(grad_dense_ptr.dtype.element_ty), mask=col_ok)


def _launch_shape(
    dense: torch.Tensor, embedded: torch.Tensor, table: torch.Tensor | None, ids: torch.Tensor | None, n_features: int,
    samples: int,
) -> tuple[int, int, int, int, bool]:
    batch, n_emb, dim = embedded.shape
    if dense.shape != (batch, dim) or dense.dtype != embedded.dtype:
        raise ValueError(f"dense {tuple(dense.shape)} {dense.dtype} does not match embedded "
                         f"{tuple(embedded.shape)} {embedded.dtype}")
    if (table is None) != (ids is None):
        raise ValueError("table and ids go together")
    if table is not None and ids is not None:
        if n_emb != n_features or ids.shape != (batch, n_features - 1) or table.shape[1:] != (dim,):
            raise ValueError(f"ids {tuple(ids.shape)} and table {tuple(table.shape)} do not match "
                             f"(B, F, dim) = {tuple(embedded.shape)}")
    return batch, n_emb, dim, triton.cdiv(batch, samples), embedded.dtype == torch.float32


def _sizes(n_features: int, dim: int, columns: int | None) -> dict[str, int]:
    # tl.dot needs every side >= 16
    dim_p = max(16, triton.next_power_of_2(dim))
    return {"F_P": max(16, triton.next_power_of_2(n_features)), "DIM_P": dim_p, "COLS": min(columns or dim_p, dim_p)}


def _rows_source(
    embedded: torch.Tensor, table: torch.Tensor | None, ids: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(rows pointer, ids pointer, GATHER): the table and its ids, or `embedded` itself."""
    if table is None or ids is None:
        return embedded, embedded, False  # the ids pointer is not read
    return table.contiguous(), ids.contiguous(), True


@triton_op("dlrm::dot_interaction", mutates_args=())
def dot_interaction(
    dense: torch.Tensor,
    embedded: torch.Tensor,
    n_features: int,
    table: torch.Tensor | None = None,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, dim), (B, F or F - 1, dim) -> (B, dim + F (F - 1) / 2), in embedded's dtype.

    With `table` (rows, dim) and `ids` (B, F - 1), the kernels read the embeddings as rows
    ids[b] of the table, in both passes, and `embedded` (B, F, dim) only receives their gradient
    (in the leading-slot layout): its values are never read. This saves the looked-up copy,
    written once and read twice (at config b, batch 65536: 436 MB each way).
    """
    return forward_with(interaction_launch(dense.shape[-1]), dense, embedded, n_features, table, ids)


def forward_with(
    launch: InteractionLaunch,
    dense: torch.Tensor,
    embedded: torch.Tensor,
    n_features: int,
    table: torch.Tensor | None = None,
    ids: torch.Tensor | None = None,
) -> torch.Tensor:
    """`dot_interaction`'s forward with the given launch settings (the sweep times settings this way)."""
    batch, n_emb, dim, grid, ieee = _launch_shape(dense, embedded, table, ids, n_features, launch.samples)
    rows, row_ids, gather = _rows_source(embedded, table, ids)
    n_out = dim + n_features * (n_features - 1) // 2
    out = embedded.new_empty(batch, n_out)
    wrap_triton(_forward_kernel)[(grid,)](
        dense, rows, row_ids, out, batch, n_features, n_emb, dim, out.stride(0),
        **_sizes(n_features, dim, launch.forward_columns), SAMPLES_=launch.samples, LEAD=n_emb == n_features,
        IEEE=ieee, GATHER=gather, num_warps=launch.warps, num_stages=launch.stages,
    )
    return out


@triton_op("dlrm::dot_interaction_backward", mutates_args=())
def dot_interaction_backward(
    grad_out: torch.Tensor,
    dense: torch.Tensor,
    embedded: torch.Tensor,
    n_features: int,
    table: torch.Tensor | None = None,
    ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of `dot_interaction`'s dense and embedded inputs, contiguous, in their dtype."""
    return backward_with(interaction_launch(dense.shape[-1]), grad_out, dense, embedded, n_features, table, ids)


def backward_with(
    launch: InteractionLaunch,
    grad_out: torch.Tensor,
    dense: torch.Tensor,
    embedded: torch.Tensor,
    n_features: int,
    table: torch.Tensor | None = None,
    ids: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`dot_interaction_backward` with the given launch settings."""
    batch, n_emb, dim, grid, ieee = _launch_shape(dense, embedded, table, ids, n_features, launch.samples)
    rows, row_ids, gather = _rows_source(embedded, table, ids)
    grad_out = grad_out.to(embedded.dtype)
    if grad_out.stride(1) != 1:
        grad_out = grad_out.contiguous()
    grad_dense, grad_emb = torch.empty_like(dense), torch.empty_like(embedded)
    wrap_triton(_backward_kernel)[(grid,)](
        grad_out, dense, rows, row_ids, grad_dense, grad_emb, batch, n_features, n_emb, dim, grad_out.stride(0),
        **_sizes(n_features, dim, launch.backward_columns), SAMPLES_=launch.samples, LEAD=n_emb == n_features,
        IEEE=ieee, GATHER=gather, num_warps=launch.warps, num_stages=launch.stages,
    )
    return grad_dense, grad_emb


def _setup_context(ctx, inputs, output) -> None:  # noqa: ANN001  # torch.library's hook signature
    dense, embedded, n_features, table, ids = inputs
    # With a table, the backward reads the rows from it again: the step updates the table only
    # after the backward.
    ctx.save_for_backward(dense, embedded, table, ids)
    ctx.n_features = n_features


def _backward(ctx, grad_out: torch.Tensor):  # noqa: ANN001, ANN202
    dense, embedded, table, ids = ctx.saved_tensors
    grad_dense, grad_emb = dot_interaction_backward(grad_out, dense, embedded, ctx.n_features, table, ids)
    return grad_dense, grad_emb, None, None, None


dot_interaction.register_autograd(_backward, setup_context=_setup_context)
