"""The DLRM ranking model (Naumov et al., 2019): bottom MLP, embeddings, dot interaction, top MLP.

Built from small modules in the torchrec manner so each part can be read and tested alone:
`DenseArch` (bottom MLP), `SparseArch` (embedding tables), `InteractionArch` (pairwise dots) or
`CrossNetArch` (DCN-v2 cross layers), `OverArch` (top MLP). This is the math only; the training
step runs the same math faster (`training.fastpath`), and export and serving run this.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from models import ModelError


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
            raise ModelError(f"interaction must be 'dot' or 'dcn', got {self.interaction!r}")


class DenseArch(nn.Module):
    """Bottom MLP: dense (B, n_dense) -> (B, dim)."""

    def __init__(self, n_dense: int, hidden: list[int], dim: int) -> None:
        super().__init__()
        self.mlp = mlp([n_dense, *hidden, dim])

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.mlp(dense)


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


class InteractionArch(nn.Module):
    """Pairwise dot products of the dense vector and all embeddings (upper triangle).

    (B, dim) and (B, n_sparse, dim) -> (B, dim + F*(F-1)/2) with F = n_sparse + 1.
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(n_features, n_features, offset=1)
        # Flat positions in the (F, F) dot matrix: index_select's backward is a cheap index_add,
        # while advanced indexing `dots[:, rows, cols]` backpropagates through a sort.
        self.register_buffer("pairs", rows * n_features + cols, persistent=False)
        self.n_features = n_features

    @property
    def n_pairs(self) -> int:
        return int(self.pairs.numel())

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        features = torch.cat([dense.unsqueeze(1), embedded], dim=1)  # (B, F, dim)
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
        self.interaction: InteractionArch | CrossNetArch
        if config.interaction == "dcn":
            self.interaction = CrossNetArch(n_features, dim, config.n_cross_layers)
            n_over = self.interaction.n_out
        else:
            self.interaction = InteractionArch(n_features)
            n_over = dim + self.interaction.n_pairs
        self.over_arch = OverArch(n_over, config.top_mlp)

    def forward_embedded(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """dense (B, n_dense) and already looked-up embeddings (B, n_sparse, dim) -> logits (B,).

        Training looks rows up from a detached table and calls this, so the sparse optimizer
        updates only the touched rows instead of materialising a gradient for the whole table.
        """
        return self.over_arch(self.interaction(self.dense_arch(dense), embedded))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(dense, self.sparse_arch(sparse))


def save_model(model: DLRM, path: Path) -> Path:
    """Write weights and constructor arguments to one file (no `kind`: the first format, kept)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, path)
    return path
