"""Two-tower retrieval: learn user and product vectors (`models.two_tower`) from ETL impressions.

Training is in-batch sampled softmax over positive (user, product) pairs with the log-Q
correction (Yi et al., RecSys 2019): in-batch negatives are drawn in proportion to popularity, so
subtracting log q(item) from each logit makes the loss an unbiased estimate of the full softmax
and the learnt score keeps popularity in it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.nn import functional as F

from models.two_tower import ITEM_COLUMNS, MODEL_FILE, USER_COLUMN, TwoTower, TwoTowerConfig, load_two_tower, save_two_tower
from serving.candidate_index import CATALOGUE_FILE, build_candidate_index
from training.data import InteractionTensors, Schema, load_schema, load_split
from training.errors import ConfigError, DataError
from training.metrics import coverage, ranking_metrics

log = logging.getLogger(__name__)


def _columns(schema: Schema) -> dict[str, int]:
    """Position of each retrieval column in the sparse tensor, checked against the schema."""
    where = {name: i for i, name in enumerate(schema.categorical)}
    missing = [c for c in (USER_COLUMN, *ITEM_COLUMNS) if c not in where]
    if missing:
        raise DataError(f"schema.json has no categorical columns {missing}; retrieval needs {[USER_COLUMN, *ITEM_COLUMNS]}")
    return where


def _catalogue_rows(tensors: InteractionTensors, where: dict[str, int]) -> pd.DataFrame:
    assert tensors.product_id_raw is not None
    frame = pd.DataFrame({c: tensors.sparse[:, where[c]].numpy() for c in ITEM_COLUMNS})
    frame.insert(0, "product_id_raw", tensors.product_id_raw)
    return frame


def catalogue_from_etl(etl_dir: Path) -> pd.DataFrame:
    """Every product in the train/valid/test splits: raw id + encoded item columns, one row each."""
    etl_dir = Path(etl_dir)
    schema = load_schema(etl_dir / "schema.json")
    where = _columns(schema)
    frames = [_catalogue_rows(load_split(etl_dir / s, schema, with_raw_ids=True), where)
              for s in ("train", "valid", "test") if (etl_dir / s).is_dir()]
    if not frames:
        raise DataError(f"{etl_dir} has no train/valid/test split directories; run the ETL first")
    # First occurrence wins: the encoding of a product is the same in every split.
    return pd.concat(frames).drop_duplicates("product_id_raw").sort_values("product_id_raw").reset_index(drop=True)


@dataclass
class RetrievalConfig:
    """How the two-tower model is trained."""

    dim: int = 16
    embedding_dim: int = 32
    item_mlp: list[int] = field(default_factory=lambda: [64])
    user_mlp: list[int] = field(default_factory=list)
    # Few epochs on purpose: on ~5k purchases more passes overfit the user embeddings and the
    # top-K lists drift from popularity towards noise (30 epochs fell below the baseline).
    epochs: int = 10
    batch_size: int = 512
    learning_rate: float = 0.01
    weight_decay: float = 1e-5  # decoupled (AdamW) decay on every parameter
    view_weight: float = 0.0  # loss weight of viewed-but-not-bought impressions; 0 drops them
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ConfigError(f"need epochs >= 1 and batch_size >= 2 (in-batch negatives); got {self.epochs}, {self.batch_size}")
        if self.view_weight < 0 or self.temperature <= 0 or self.learning_rate <= 0:
            raise ConfigError("view_weight must be >= 0, temperature and learning_rate > 0; "
                              f"got {self.view_weight}, {self.temperature}, {self.learning_rate}")


@dataclass
class RetrievalResult:
    """Where the model and the catalogue it was trained on were written, and per-epoch losses."""

    model_path: Path
    catalogue_path: Path
    history: list[dict[str, float]]


def in_batch_softmax_loss(user_vecs: torch.Tensor, item_vecs: torch.Tensor, item_keys: torch.Tensor,
                          log_q: torch.Tensor, weights: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Weighted sampled-softmax loss with in-batch negatives and log-Q correction.

    user_vecs (B, d), item_vecs (B, d): row i is a positive pair. item_keys (B,) identify items so
    another row's copy of row i's positive is not counted as its negative. log_q (B,) is the log
    probability that each item appears as an in-batch sample. weights (B,) scale each row's loss.
    """
    logits = user_vecs @ item_vecs.T / temperature - log_q[None, :]
    same = item_keys[:, None] == item_keys[None, :]
    logits = logits.masked_fill(same & ~torch.eye(len(item_keys), dtype=torch.bool, device=logits.device), -torch.inf)
    target = torch.arange(len(item_keys), device=logits.device)
    per_row = F.cross_entropy(logits, target, reduction="none")
    return (per_row * weights).sum() / weights.sum()


def train_retrieval(etl_dir: Path, config: RetrievalConfig, out_dir: Path) -> RetrievalResult:
    """Train on the train split's impressions; write `two_tower.pt` and `catalogue.parquet` to out_dir."""
    etl_dir, out_dir = Path(etl_dir), Path(out_dir)
    schema = load_schema(etl_dir / "schema.json")
    where = _columns(schema)
    card = dict(zip(schema.categorical, schema.cardinalities))
    train = load_split(etl_dir / "train", schema, with_raw_ids=False)
    label = train.label.numpy() > 0
    weight = np.where(label, 1.0, config.view_weight).astype(np.float32)
    keep = weight > 0
    if not label.any():
        raise DataError(f"the train split in {etl_dir} has no purchases (label 1); nothing to learn from")
    users = train.sparse[keep, where[USER_COLUMN]]
    items = train.sparse[keep][:, [where[c] for c in ITEM_COLUMNS]]
    weights = torch.from_numpy(weight[keep])
    # q(item): share of training rows carrying the item, i.e. how often it is an in-batch sample.
    counts = torch.bincount(items[:, 0], minlength=card["product_id"]).double()
    log_q = torch.log(counts / counts.sum()).float()

    torch.manual_seed(config.seed)
    model = TwoTower(TwoTowerConfig(
        n_users=card[USER_COLUMN], n_products=card["product_id"], n_categories=card["category_id"],
        n_brands=card["brand"], dim=config.dim, embedding_dim=config.embedding_dim,
        item_mlp=list(config.item_mlp), user_mlp=list(config.user_mlp)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    n = len(users)
    history: list[dict[str, float]] = []
    model.train()
    for epoch in range(config.epochs):
        order = torch.randperm(n, generator=generator)
        total, batches = 0.0, 0
        for lo in range(0, n, config.batch_size):
            idx = order[lo:lo + config.batch_size]
            if len(idx) < 2:
                continue
            loss = in_batch_softmax_loss(model.user_vectors(users[idx]), model.item_vectors(items[idx]),
                                         items[idx, 0], log_q[items[idx, 0]], weights[idx], config.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach())
            batches += 1
        history.append({"epoch": epoch, "loss": total / max(batches, 1)})
        log.info("retrieval epoch %d loss %.4f", epoch, history[-1]["loss"])
    model.eval()
    model_path = save_two_tower(model, out_dir / MODEL_FILE)
    catalogue_path = out_dir / CATALOGUE_FILE
    catalogue_from_etl(etl_dir).to_parquet(catalogue_path, index=False)
    return RetrievalResult(model_path, catalogue_path, history)


def _top_k_metrics(users: np.ndarray, top_ids: np.ndarray, relevant: pd.DataFrame, k: int,
                   catalogue_size: int) -> dict[str, float]:
    """Recall/NDCG/MRR@K and coverage of per-user top-K lists against (user, item) relevant pairs."""
    listed = pd.DataFrame({"user": np.repeat(users, top_ids.shape[1]), "item": top_ids.ravel(),
                           "score": -np.tile(np.arange(top_ids.shape[1], dtype=np.float64), len(users))})
    listed = listed[listed["item"] >= 0]
    rows = listed.merge(relevant.assign(rel=True), on=["user", "item"], how="outer")
    # Relevant items outside the list rank after it, so they count in the denominator only.
    rows["score"] = rows["score"].fillna(-np.inf)
    rows["rel"] = rows["rel"].astype("boolean").fillna(False).astype(bool)
    result = ranking_metrics(rows["user"].to_numpy(), rows["item"].to_numpy(), rows["score"].to_numpy(),
                             rows["rel"].to_numpy(), k)
    return {"recall": result.recall, "ndcg": result.ndcg, "mrr": result.mrr,
            "coverage": coverage(listed["item"].to_numpy(), catalogue_size)}


def evaluate_retrieval(model_path: Path, etl_dir: Path, k: int = 10) -> dict[str, float]:
    """Full-catalogue top-K for every test user with a purchase, model vs train-purchase popularity.

    Relevant items are the products the user bought in the test split; the catalogue is every
    product in any split. Nothing is excluded, because repeat purchases are legitimate hits.
    Returns flat names: recall_at_10, ndcg_at_10, mrr_at_10, coverage_at_10, the same with a
    `baseline_` prefix, and n_users, catalogue_size.
    """
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    etl_dir = Path(etl_dir)
    schema = load_schema(etl_dir / "schema.json")
    where = _columns(schema)
    test = load_split(etl_dir / "test", schema, with_raw_ids=True)
    train = load_split(etl_dir / "train", schema, with_raw_ids=True)
    catalogue = catalogue_from_etl(etl_dir)
    bought = test.label.numpy() > 0
    if not bought.any():
        raise DataError(f"the test split in {etl_dir} has no purchases; nothing to evaluate against")
    # Users are grouped by raw id: rare users share a hashed encoded id but not their purchases.
    relevant = pd.DataFrame({"user": test.user_id_raw[bought], "item": test.product_id_raw[bought]}).drop_duplicates()
    encoded = pd.Series(test.sparse[:, where[USER_COLUMN]].numpy(), index=test.user_id_raw)
    encoded = encoded[~encoded.index.duplicated()]
    users = np.unique(relevant["user"].to_numpy())

    index = build_candidate_index(load_two_tower(model_path), catalogue)
    model_ids, _ = index.top_k(encoded.loc[users].to_numpy(), k)
    purchases = pd.Series(train.label.numpy(), index=train.product_id_raw).groupby(level=0).sum()
    popularity = catalogue["product_id_raw"].map(purchases).fillna(0.0).to_numpy()
    # Stable sort: ties keep catalogue order, so the baseline is deterministic.
    popular = catalogue["product_id_raw"].to_numpy()[np.argsort(-popularity, kind="stable")[:k]]
    baseline_ids = np.tile(popular, (len(users), 1))

    n = len(catalogue)
    model_m = _top_k_metrics(users, model_ids, relevant, k, n)
    base_m = _top_k_metrics(users, baseline_ids, relevant, k, n)
    report = {f"{name}_at_{k}": value for name, value in model_m.items()}
    report |= {f"baseline_{name}_at_{k}": value for name, value in base_m.items()}
    report |= {"n_users": float(len(users)), "catalogue_size": float(n)}
    log.info("retrieval evaluation: %s", report)
    return report
