"""Logistic regression on the DLRM's features: a weight per category (dim-1 embedding) + linear dense."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from models.dlrm import SparseArch


@dataclass
class LogisticRegressionConfig:
    """Constructor arguments of `LogisticRegression`."""

    n_dense: int
    cardinalities: list[int]


class LogisticRegression(nn.Module):
    """dense (B, n_dense) float32, sparse (B, n_sparse) int64 -> logits (B,); no interactions.

    Shares `SparseArch` (dim 1) with the DLRM so the same trainer and sparse optimizer drive it.
    """

    def __init__(self, config: LogisticRegressionConfig) -> None:
        super().__init__()
        self.config = config
        self.sparse_arch = SparseArch(config.cardinalities, 1)
        nn.init.zeros_(self.sparse_arch.embedding.weight)
        self.linear = nn.Linear(config.n_dense, 1)

    def forward_embedded(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        """dense (B, n_dense), embedded (B, n_sparse, 1) -> logits (B,)."""
        return self.linear(dense).squeeze(-1) + embedded.sum(dim=(1, 2))

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.forward_embedded(dense, self.sparse_arch(sparse))


def save_logreg(model: LogisticRegression, path: Path) -> Path:
    """Write weights and constructor arguments with kind "logreg"; `models.saved.load_model` reads it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "logreg", "config": asdict(model.config), "state_dict": model.state_dict()}, path)
    return path
