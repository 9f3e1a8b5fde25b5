"""The DLRM forward the training step runs: the model's own arches, with a faster interaction and dense input.

`models.dlrm` holds the math (what export and serving run). Training needs the same outputs and
gradients with fewer passes over memory: `FastInteraction` computes the dot interaction's
backward in one batched product (`_DotInteraction`) or, on CUDA, in the Triton kernels of
`interaction_triton`, and `dense_forward` widens the dense input for cuBLAS's tensor-core
kernels. `StepForward` puts them together for `TrainStep`. `FastPath` picks what runs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.dlrm import DLRM, DenseArch, InteractionArch
from training.fastpath.options import FastPath

# The Triton kernels run only on CUDA builds of torch (which ship triton). Elsewhere they are not
# imported even where triton is installed (the test environment has it): importing it takes
# seconds per process.
interaction_triton = None
if torch.version.cuda is not None:
    try:
        from training.fastpath import interaction_triton
    except ImportError:  # a CUDA build without triton (source builds): the batched-matmul path
        interaction_triton = None


class _DotInteraction(torch.autograd.Function):
    """Forward as `InteractionArch`; backward in one or two batched products.

    With X = [dense; embedded] (B, F, dim) and Z = X X^T, dX = (dZ + dZ^T) X. Autograd's bmm
    backward would write dZ X and dZ^T X separately, add them, then copy the embedded slice into
    a fresh gradient; here the gradient of `embedded` is written once, contiguous, by one bmm.
    When `embedded` carries a leading slot (B, F, dim) (`lead` True: slot 0 is added to the
    dense vector before the dots; the lookup leaves it zero), the gradient of that slot is the
    dense vector's gradient through the dots, so one bmm writes the gradients of slot 0 and all
    embeddings together, contiguous, and the dense gradient is slot 0 plus the pass-through part.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, dense: torch.Tensor, embedded: torch.Tensor, pairs: torch.Tensor, pairs_t: torch.Tensor, n_pad: int,
        lead: bool = False,
    ) -> torch.Tensor:
        # `n_pad` zero rows make F a multiple of 8, so the (F, F) products have aligned leading
        # dimensions and cuBLAS picks its tensor-core kernels (F=27 fell back to older ones).
        batch, _, dim = embedded.shape
        if lead:
            parts = [(dense + embedded[:, 0]).unsqueeze(1), embedded[:, 1:].to(dense.dtype)]
        else:
            parts = [dense.unsqueeze(1), embedded.to(dense.dtype)]
        if n_pad:
            parts.append(dense.new_zeros(batch, n_pad, dim))
        features = torch.cat(parts, dim=1)  # (B, width, dim), width = F + n_pad
        dots = torch.bmm(features, features.transpose(1, 2))  # (B, width, width)
        ctx.save_for_backward(features, pairs, pairs_t)
        ctx.dtypes = (dense.dtype, embedded.dtype)
        ctx.n_sparse = embedded.shape[1] - int(lead)
        ctx.lead = lead
        flat = dots.flatten(1)
        # CPU: index_select along dim 1 runs a loop per row; gather with the index broadcast over
        # the batch is one vectorised pass.
        picked = flat.index_select(1, pairs) if flat.is_cuda else flat.gather(1, pairs.expand(batch, -1))
        return torch.cat([dense, picked], dim=1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        features, pairs, pairs_t = ctx.saved_tensors
        batch, width, dim = features.shape
        # dZ + dZ^T written straight into one buffer: `pairs` (upper triangle) and `pairs_t` (its
        # mirror) are disjoint and skip the diagonal, so every entry is one copied value, no adds.
        if features.is_cuda:
            grad_pairs = grad_out[:, dim:].to(features.dtype)
            sym = grad_pairs.new_zeros(batch, width * width)
            sym.index_copy_(1, pairs, grad_pairs).index_copy_(1, pairs_t, grad_pairs)
            sym = sym.view(batch, width, width)
        else:  # CPU: index_copy_ along dim 1 loops per row; one broadcast gather is faster
            source = torch.zeros(width * width, dtype=torch.long, device=pairs.device)
            n_pairs = torch.arange(dim, dim + pairs.numel(), device=pairs.device)
            source.index_copy_(0, pairs, n_pairs).index_copy_(0, pairs_t, n_pairs)
            sym = grad_out.to(features.dtype).gather(1, source.expand(batch, -1)).view(batch, width, width)
            # Off the pairs the gather read grad_out[:, 0]: zero the diagonal; padding columns meet
            # the zero padding rows of `features` and padding rows are never read below.
            sym.diagonal(dim1=1, dim2=2).zero_()
        dense_dtype, embedded_dtype = ctx.dtypes
        if ctx.lead:
            grad_all = torch.bmm(sym[:, : 1 + ctx.n_sparse], features)  # (B, F, dim), contiguous
            grad_dense = grad_all[:, 0] + grad_out[:, :dim]
            return grad_dense.to(dense_dtype), grad_all.to(embedded_dtype), None, None, None, None
        grad_embedded = torch.bmm(sym[:, 1 : 1 + ctx.n_sparse], features)  # (B, n_sparse, dim), contiguous
        grad_dense = torch.bmm(sym[:, :1], features).squeeze(1) + grad_out[:, :dim]
        return grad_dense.to(dense_dtype), grad_embedded.to(embedded_dtype), None, None, None, None


class FastInteraction(nn.Module):
    """`InteractionArch`'s output and gradients, for training.

    (B, dim) and (B, n_sparse, dim) -> (B, dim + F*(F-1)/2) with F = n_sparse + 1. `embedded` may
    also be (B, F, dim) with a leading slot that is added to the dense vector before the dots
    (zero from `TrainStep`'s lookup, so the output is unchanged): the fused backward then writes
    the gradients of dense and embeddings with one product. With gradients enabled the backward
    is `_DotInteraction`'s (or, on CUDA, the Triton kernels'), as `fast` asks; without, autograd's.
    """

    def __init__(self, n_features: int, fast: FastPath) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(n_features, n_features, offset=1)
        self.register_buffer("pairs", rows * n_features + cols, persistent=False)
        self.register_buffer("pairs_t", cols * n_features + rows, persistent=False)
        self.n_features = n_features
        width = -(-n_features // 8) * 8
        self.n_pad = width - n_features
        self.register_buffer("pairs_padded", rows * width + cols, persistent=False)
        self.register_buffer("pairs_padded_t", cols * width + rows, persistent=False)
        self.fast = fast

    def uses_triton(self, device: torch.device) -> bool:
        """Whether `forward` runs the Triton kernels for inputs on `device`."""
        fast = self.fast
        return device.type == "cuda" and fast.fused_interaction and fast.triton_interaction and interaction_triton is not None

    def forward(
        self, dense: torch.Tensor, embedded: torch.Tensor, rows_from: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """`rows_from` = (table, ids (B, n_sparse)): the Triton kernels read the embeddings from the
        table themselves, and `embedded` (B, F, dim) only receives their gradient (see `TrainStep`)."""
        lead = embedded.shape[1] == self.n_features
        if rows_from is not None:
            if not self.uses_triton(embedded.device):
                raise ValueError("reading rows from the table needs the Triton interaction (CUDA)")
            return interaction_triton.dot_interaction(dense, embedded, self.n_features, *rows_from)
        if self.uses_triton(embedded.device):
            return interaction_triton.dot_interaction(dense, embedded.to(dense.dtype), self.n_features)
        if self.fast.fused_interaction and torch.is_grad_enabled():
            pad = (embedded.is_cuda and embedded.shape[-1] > 32) if self.fast.pad is None else self.fast.pad
            if pad and self.n_pad:
                return _DotInteraction.apply(dense, embedded, self.pairs_padded, self.pairs_padded_t, self.n_pad, lead)
            return _DotInteraction.apply(dense, embedded, self.pairs, self.pairs_t, 0, lead)
        first = dense + embedded[:, 0] if lead else dense
        features = torch.cat([first.unsqueeze(1), embedded[:, 1:] if lead else embedded], dim=1)  # (B, F, dim)
        dots = torch.bmm(features, features.transpose(1, 2))  # (B, F, F)
        return torch.cat([dense, dots.flatten(1).index_select(1, self.pairs)], dim=1)


def dense_forward(arch: DenseArch, dense: torch.Tensor, align: bool) -> torch.Tensor:
    """`arch(dense)`; with `align` on CUDA the first layer sees the input and its weight widened by
    zero columns to a multiple of 8, so cuBLAS runs it on tensor-core kernels (K = 13 took older
    ones). Same products and sums."""
    n_pad = -dense.shape[1] % 8
    if not (align and dense.is_cuda and n_pad):
        return arch(dense)
    first = arch.mlp[0]
    x = F.linear(F.pad(dense, (0, n_pad)), F.pad(first.weight, (0, n_pad)), first.bias)
    return arch.mlp[1:](x)


class StepForward(nn.Module):
    """`(dense (B, n_dense), embedded, rows_from=None) -> logits (B,)`: the model's
    `forward_embedded` as the training step runs it (`FastInteraction`, `dense_forward`).

    Models other than a dot-interaction DLRM (a DCN, a logistic regression) keep their own
    interaction; a DLRM still gets the aligned dense input.
    """

    def __init__(self, model: nn.Module, fast: FastPath) -> None:
        super().__init__()
        self.model = model
        self.align = fast.align_dense
        self.interaction: FastInteraction | None = None
        if isinstance(model, DLRM) and isinstance(model.interaction, InteractionArch):
            device = model.interaction.pairs.device
            self.interaction = FastInteraction(model.interaction.n_features, fast).to(device)

    def forward(
        self, dense: torch.Tensor, embedded: torch.Tensor, rows_from: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        model = self.model
        if not isinstance(model, DLRM):
            return model.forward_embedded(dense, embedded)
        x = dense_forward(model.dense_arch, dense, self.align)
        if self.interaction is None:
            return model.over_arch(model.interaction(x, embedded))
        if rows_from is None:
            return model.over_arch(self.interaction(x, embedded))
        return model.over_arch(self.interaction(x, embedded, rows_from))
