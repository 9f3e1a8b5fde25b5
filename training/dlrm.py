"""The DLRM ranking model (Naumov et al., 2019): bottom MLP, embeddings, dot interaction, top MLP.

Built from small modules in the torchrec manner so each part can be read and tested alone:
`DenseArch` (bottom MLP), `SparseArch` (embedding tables), `InteractionArch` (pairwise dots),
`OverArch` (top MLP).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn


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

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        return self.embedding(sparse + self.offsets)


class InteractionArch(nn.Module):
    """Pairwise dot products of the dense vector and all embeddings (upper triangle).

    (B, dim) and (B, n_sparse, dim) -> (B, dim + F*(F-1)/2) with F = n_sparse + 1.
    """

    def __init__(self, n_features: int) -> None:
        super().__init__()
        rows, cols = torch.triu_indices(n_features, n_features, offset=1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    @property
    def n_pairs(self) -> int:
        return int(self.rows.numel())

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        features = torch.cat([dense.unsqueeze(1), embedded], dim=1)  # (B, F, dim)
        dots = torch.bmm(features, features.transpose(1, 2))  # (B, F, F)
        return torch.cat([dense, dots[:, self.rows, self.cols]], dim=1)


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
        self.interaction = InteractionArch(len(config.cardinalities) + 1)
        self.over_arch = OverArch(dim + self.interaction.n_pairs, config.top_mlp)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.over_arch(self.interaction(self.dense_arch(dense), self.sparse_arch(sparse)))


def save_model(model: DLRM, path: Path) -> Path:
    """Write weights and constructor arguments to one file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"config": asdict(model.config), "state_dict": model.state_dict()}, path)
    return path


def load_model(path: Path, map_location: str | torch.device = "cpu") -> DLRM:
    """Rebuild a model saved by `save_model`, in eval mode."""
    blob = torch.load(Path(path), map_location=map_location, weights_only=True)
    model = DLRM(DLRMConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval()
