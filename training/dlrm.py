"""The DLRM ranking model (Naumov et al., 2019): bottom MLP, embeddings, dot interaction, top MLP.

Built from small modules in the torchrec manner so each part can be read and tested alone:
`DenseArch` (bottom MLP), `SparseArch` (embedding tables), `InteractionArch` (pairwise dots) or
`CrossNetArch` (DCN-v2 cross layers), `OverArch` (top MLP).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# The Triton kernels run only on CUDA builds of torch (which ship triton). Elsewhere they are not
# imported even where triton is installed (the test environment has it): importing it costs ~2 s
# per process.
interaction_triton = None
if torch.version.cuda is not None:
    try:
        from training import interaction_triton
    except ImportError:  # a CUDA build without triton (source builds): the batched-matmul path
        interaction_triton = None


def mlp(sizes: list[int], last_activation: bool = True) -> nn.Sequential:
    """Linear layers of the given widths with ReLU between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(n_in, n_out))
        if i < len(sizes) - 2 or last_activation:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@dataclass
class DLRMConfig:
    """Constructor arguments of `DLRM`; saved next to the weights so a model reloads alone."""

    n_dense: int
    cardinalities: list[int]
    embedding_dim: int = 16
    bottom_mlp: list[int] = field(default_factory=lambda: [64, 32])
    top_mlp: list[int] = field(default_factory=lambda: [64, 32])
    interaction: str = "dot"  # "dot" (pairwise dots) or "dcn" (DCN-v2 cross layers)
    n_cross_layers: int = 2  # only used by "dcn"

    def __post_init__(self) -> None:
        if self.interaction not in ("dot", "dcn"):
            raise ValueError(f"interaction must be 'dot' or 'dcn', got {self.interaction!r}")


class DenseArch(nn.Module):
    """Bottom MLP: dense (B, n_dense) -> (B, dim)."""

    # CUDA: give the first layer zero input columns (and weight columns) up to a multiple of 8, so
    # cuBLAS runs it on Hopper kernels: with K = 13 it took sm75 ones, 62 us forward and 82 us for
    # the weight gradient at batch 65536 (H200), ~5% of config b's step. Same products and sums.
    align_input: bool = True

    def __init__(self, n_dense: int, hidden: list[int], dim: int) -> None:
        super().__init__()
        self.mlp = mlp([n_dense, *hidden, dim])

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        n_pad = -dense.shape[1] % 8
        if not (dense.is_cuda and self.align_input and n_pad):
            return self.mlp(dense)
        first = self.mlp[0]
        x = F.linear(F.pad(dense, (0, n_pad)), F.pad(first.weight, (0, n_pad)), first.bias)
        return self.mlp[1:](x)


class SparseArch(nn.Module):
    """One embedding table per categorical feature: sparse (B, n_sparse) -> (B, n_sparse, dim).

    The tables are stored as one fused table with per-feature row offsets, so the lookup is a
    single gather instead of a Python loop over features.
    """

    def __init__(self, cardinalities: list[int], dim: int) -> None:
        super().__init__()
        offsets = torch.tensor([0, *cardinalities[:-1]], dtype=torch.long).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.embedding = nn.Embedding(int(sum(cardinalities)), dim)
        nn.init.uniform_(self.embedding.weight, -0.05, 0.05)

    def ids(self, sparse: torch.Tensor) -> torch.Tensor:
        """Per-feature indices (B, n_sparse) -> rows of the fused table (B, n_sparse)."""
        return sparse + self.offsets

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.ids(sparse))


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
        # dimensions and cuBLAS picks its Hopper tensor-core kernels (F=27 fell back to sm75 ones).
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
        # CPU: index_select along dim 1 runs a loop per row (8.7 ms at B=16384); gather with the
        # index broadcast over the batch is one vectorised pass (2.0 ms).
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
        else:  # CPU: index_copy_ along dim 1 loops per row; one broadcast gather is ~1.4x faster
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


class InteractionArch(nn.Module):
    """Pairwise dot products of the dense vector and all embeddings (upper triangle).

    (B, dim) and (B, n_sparse, dim) -> (B, dim + F*(F-1)/2) with F = n_sparse + 1.
    In training mode the backward is `_DotInteraction`'s (same math, fewer passes over memory:
    on the 2-core CPU in bf16 +30-33% samples/s at dim 128, +1-4% at dim 16); `fused_backward`
    True/False forces it on/off. `embedded` may also be (B, F, dim) with a leading
    slot that is added to the dense vector before the dots (zero from `TrainStep`'s lookup, so
    the output is unchanged): the fused backward then writes the gradients of dense and
    embeddings with one product (`TrainStep` looks rows up that way). On CUDA the same math runs
    in the Triton kernels of `training.interaction_triton` (no padded copy of the features and no
    (F, F) products in memory; H200, config b: forward + backward 2.4 -> 0.9 ms at batch 65536).
    """

    fused_backward: bool | None = None
    # CUDA: the Triton kernels of `training.interaction_triton` (no padded copy, no (F, F) buffers
    # in memory); False keeps the batched-matmul path below (for comparison in the benchmark).
    triton: bool = True
    # Fused path only: pad F to a multiple of 8 with zero rows; None = on CUDA when dim > 32
    # (measured on an H100: +33% samples/s at dim 128, -9% at dim 16 where the padding bytes cost
    # more). The CPU's bf16 bmm gains nothing from it and would do (32/27)^2 the work.
    pad: bool | None = None

    def __init__(self, n_features: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(n_features, n_features, offset=1)
        # Flat positions in the (F, F) dot matrix: index_select's backward is a cheap index_add,
        # while advanced indexing `dots[:, rows, cols]` backpropagates through a sort.
        self.register_buffer("pairs", rows * n_features + cols, persistent=False)
        self.register_buffer("pairs_t", cols * n_features + rows, persistent=False)
        self.n_features = n_features
        width = -(-n_features // 8) * 8
        self.n_pad = width - n_features
        self.register_buffer("pairs_padded", rows * width + cols, persistent=False)
        self.register_buffer("pairs_padded_t", cols * width + rows, persistent=False)

    @property
    def n_pairs(self) -> int:
        return int(self.pairs.numel())

    def uses_fused_backward(self, embedded: torch.Tensor) -> bool:
        """Whether `forward` would run `_DotInteraction` for this input."""
        fused = True if self.fused_backward is None else self.fused_backward
        return bool(fused and self.training and torch.is_grad_enabled())

    def uses_triton(self, device: torch.device) -> bool:
        """Whether `forward` would run the Triton kernels for inputs on `device`."""
        return bool(device.type == "cuda" and self.triton and interaction_triton is not None and self.fused_backward is not False)

    def forward(
        self, dense: torch.Tensor, embedded: torch.Tensor, rows_from: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """`rows_from` = (table, ids (B, n_sparse)): the Triton path reads the embeddings from the
        table itself, and `embedded` (B, F, dim) only receives their gradient (see `TrainStep`)."""
        lead = embedded.shape[1] == self.n_features
        if rows_from is not None:
            if not self.uses_triton(embedded.device):
                raise ValueError("reading rows from the table needs the Triton interaction (CUDA)")
            return interaction_triton.dot_interaction(dense, embedded, self.n_features, *rows_from)
        if self.uses_triton(embedded.device):
            return interaction_triton.dot_interaction(dense, embedded.to(dense.dtype), self.n_features)
        if self.uses_fused_backward(embedded):
            pad = (embedded.is_cuda and embedded.shape[-1] > 32) if self.pad is None else self.pad
            if pad and self.n_pad:
                return _DotInteraction.apply(dense, embedded, self.pairs_padded, self.pairs_padded_t, self.n_pad, lead)
            return _DotInteraction.apply(dense, embedded, self.pairs, self.pairs_t, 0, lead)
        first = dense + embedded[:, 0] if lead else dense
        features = torch.cat([first.unsqueeze(1), embedded[:, 1:] if lead else embedded], dim=1)  # (B, F, dim)
        dots = torch.bmm(features, features.transpose(1, 2))  # (B, F, F)
        return torch.cat([dense, dots.flatten(1).index_select(1, self.pairs)], dim=1)


class CrossNetArch(nn.Module):
    """DCN-v2 cross layers (Wang et al., 2021) over the concatenated features.

    (B, dim) and (B, n_sparse, dim) -> (B, F*dim) with x_{l+1} = x0 * (W_l x_l + b_l) + x_l.
    """

    def __init__(self, n_features: int, dim: int, n_layers: int) -> None:
        super().__init__()
        width = n_features * dim
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(n_layers))
        self.n_out = width

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        x0 = torch.cat([dense.unsqueeze(1), embedded], dim=1).flatten(1)  # (B, F*dim)
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x


class OverArch(nn.Module):
    """Top MLP: interaction output -> one logit per row, (B,)."""

    def __init__(self, n_in: int, hidden: list[int]) -> None:
        super().__init__()
        self.mlp = mlp([n_in, *hidden, 1], last_activation=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x).squeeze(-1)


class DLRM(nn.Module):
    """dense (B, n_dense) float32, sparse (B, n_sparse) int64 -> logits (B,)."""

    def __init__(self, config: DLRMConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embedding_dim
        self.dense_arch = DenseArch(config.n_dense, config.bottom_mlp, dim)
        self.sparse_arch = SparseArch(config.cardinalities, dim)
        n_features = len(config.cardinalities) + 1
        self.interaction: nn.Module
        if config.interaction == "dcn":
            self.interaction = CrossNetArch(n_features, dim, config.n_cross_layers)
            n_over = self.interaction.n_out
        else:
            self.interaction = InteractionArch(n_features)
            n_over = dim + self.interaction.n_pairs
        self.over_arch = OverArch(n_over, config.top_mlp)

    def forward_embedded(
        self, dense: torch.Tensor, embedded: torch.Tensor, rows_from: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """dense (B, n_dense) and already looked-up embeddings (B, n_sparse, dim) -> logits (B,).

        The trainer calls this with a detached lookup so the sparse optimizer can update only the
        touched rows instead of materialising a gradient for the whole table. `rows_from` (table,
        ids): the dot interaction's Triton kernels read the rows themselves, and `embedded` only
        receives their gradient (`InteractionArch.forward`).
        """
        if rows_from is None:
            return self.over_arch(self.interaction(self.dense_arch(dense), embedded))
        return self.over_arch(self.interaction(self.dense_arch(dense), embedded, rows_from))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(dense, self.sparse_arch(sparse))


def save_model(model: DLRM, path: Path) -> Path:
    """Write weights and constructor arguments to one file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, path)
    return path
