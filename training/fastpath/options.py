"""`FastPath`: how the training step runs the model's math. Every value trains the same model."""

from __future__ import annotations

from dataclasses import dataclass

from training.fastpath.launch import RowwiseLaunch


@dataclass(frozen=True)
class FastPath:
    """The fast step's implementation choices; the defaults are what `training.train()` runs.

    Each switch names one technique so that a benchmark can time the step without it
    (`bench/train_throughput.py` builds named values such as `FastPath(pad=False)`). Settings that
    do not apply to a device or model are ignored (Triton kernels off CUDA, huge pages off the
    CPU, the dot interaction's switches for a DCN or a logistic regression).
    """

    # Interaction backward through `_DotInteraction`: dX = (dZ + dZ^T) X in one batched product
    # instead of autograd's separate products, adds and copies.
    fused_interaction: bool = True
    # Look rows up into (B, 1 + n_sparse, dim) behind an empty slot, so that one product writes
    # the gradients of the dense vector and of every embedding (needs `fused_interaction`).
    lead_slot: bool = True
    # Batched-product path: pad F to a multiple of 8 with zero rows so cuBLAS takes tensor-core
    # kernels; None: on CUDA where rows are wider than 32 (narrow rows pay more for the padding).
    pad: bool | None = None
    # CUDA: the interaction as Triton kernels (`interaction_triton`; needs `fused_interaction`).
    triton_interaction: bool = True
    # CUDA, Triton interaction, rows of >= 256 bytes: its kernels read the rows from the table, so
    # the lookup writes no (B, F, dim) copy (needs `lead_slot`).
    rows_from_table: bool = True
    # CUDA: zero columns that widen the dense input to a multiple of 8, for cuBLAS's Hopper kernels.
    align_dense: bool = True
    # CUDA: the fused Triton row-wise Adagrad (`rowwise_triton`); False: torch sort + scatter-add.
    fused_rowwise: bool = True
    # CPU: keep freed memory in the process heap (`host.retain_freed_memory`; process-wide).
    retain_heap: bool = True
    # CPU: put the embedding table on 2 MB pages (`host.back_with_huge_pages`).
    huge_pages: bool = True
    # CUDA: the row update's launch settings for every row width instead of `launch.rowwise_launch`'s
    # table (benchmarks compare settings this way).
    rowwise_launch: RowwiseLaunch | None = None
