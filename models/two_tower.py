"""The two-tower retrieval model: user and product vectors whose inner product scores a pair.

The user tower embeds `user_id`; the item tower embeds `product_id`, `category_id` and `brand`
and runs them through an MLP, so products too rare for their own id (hashed OOV buckets) are
still placed by their category and brand. `training.retrieval` trains it; serving searches its
item vectors (`serving.candidate_index`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from models import ModelError

USER_COLUMN = "user_id"
ITEM_COLUMNS = ("product_id", "category_id", "brand")  # item tower inputs, in this order
MODEL_FILE = "two_tower.pt"


@dataclass
class TwoTowerConfig:
    """Constructor arguments of `TwoTower`; cardinalities come from schema.json."""

    n_users: int
    n_products: int
    n_categories: int
    n_brands: int
    dim: int = 32  # output vector size of both towers (before the bias slot)
    embedding_dim: int = 32
    item_mlp: list[int] = field(default_factory=lambda: [64])
    user_mlp: list[int] = field(default_factory=list)  # empty: the user vector is the embedding

    def __post_init__(self) -> None:
        sizes = {"n_users": self.n_users, "n_products": self.n_products,
                 "n_categories": self.n_categories, "n_brands": self.n_brands,
                 "dim": self.dim, "embedding_dim": self.embedding_dim}
        bad = {k: v for k, v in sizes.items() if v < 1}
        if bad:
            raise ModelError(f"TwoTowerConfig sizes must be >= 1; got {bad}")


def _tower(n_in: int, hidden: list[int], n_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        n_in = width
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class TwoTower(nn.Module):
    """users (B,) int64 -> (B, dim + 1); items (N, 3) int64 [product, category, brand] -> (N, dim + 1).

    The score is the plain inner product of the two outputs. The last slot is 1 on the user side
    and a learnt per-item bias on the item side, so popularity fits in the dot product and the
    catalogue can be searched by maximum inner product (exactly here, or by an ANN index).
    """

    def __init__(self, config: TwoTowerConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.user_embedding = nn.Embedding(c.n_users, c.embedding_dim if c.user_mlp else c.dim)
        self.user_mlp = _tower(c.embedding_dim, c.user_mlp, c.dim) if c.user_mlp else nn.Identity()
        self.product_embedding = nn.Embedding(c.n_products, c.embedding_dim)
        self.category_embedding = nn.Embedding(c.n_categories, c.embedding_dim)
        self.brand_embedding = nn.Embedding(c.n_brands, c.embedding_dim)
        self.item_mlp = _tower(3 * c.embedding_dim, c.item_mlp, c.dim + 1)
        for table in (self.user_embedding, self.product_embedding, self.category_embedding, self.brand_embedding):
            nn.init.normal_(table.weight, std=0.05)

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        """users (B,) int64 encoded `user_id` -> (B, dim + 1) float32."""
        u = self.user_mlp(self.user_embedding(users))
        return torch.cat([u, torch.ones_like(u[:, :1])], dim=1)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """items (N, 3) int64 encoded [product_id, category_id, brand] -> (N, dim + 1) float32."""
        x = torch.cat([self.product_embedding(items[:, 0]), self.category_embedding(items[:, 1]),
                       self.brand_embedding(items[:, 2])], dim=1)
        return self.item_mlp(x)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """users (B,), items (B, 3) -> scores (B,) of the matching pairs."""
        return (self.user_vectors(users) * self.item_vectors(items)).sum(dim=1)


def save_two_tower(model: TwoTower, path: Path) -> Path:
    """Write weights and constructor arguments in one file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"kind": "two_tower", "config": asdict(model.config), "state_dict": model.state_dict()}, path)
    return path


def load_two_tower(path: Path, map_location: str | torch.device = "cpu") -> TwoTower:
    """Rebuild a `TwoTower` saved by `save_two_tower`, in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no retrieval model at {path}; run train_retrieval first")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("kind") != "two_tower":
        raise ModelError(f"{path} is not a two-tower model file (kind={payload.get('kind') if isinstance(payload, dict) else None!r})")
    model = TwoTower(TwoTowerConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()
