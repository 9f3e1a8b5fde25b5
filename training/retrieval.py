"""Two-tower retrieval: learn user and product vectors from ETL impressions and serve top-K candidates.

The user tower embeds `user_id`; the item tower embeds `product_id`, `category_id` and `brand`
and runs them through an MLP, so products too rare for their own id (hashed OOV buckets) are
still placed by their category and brand. Training is in-batch sampled softmax over positive
(user, product) pairs with the log-Q correction (Yi et al., RecSys 2019): in-batch negatives are
drawn in proportion to popularity, so subtracting log q(item) from each logit makes the loss an
unbiased estimate of the full softmax and the learnt score keeps popularity in it.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from training.data import InteractionTensors, Schema, load_schema, load_split
from training.errors import ConfigError, DataError
from training.metrics import coverage, ranking_metrics

log = logging.getLogger(__name__)

USER_COLUMN = "user_id"
ITEM_COLUMNS = ("product_id", "category_id", "brand")  # item tower inputs, in this order
CATALOGUE_COLUMNS = ["product_id_raw", *ITEM_COLUMNS]
MODEL_FILE = "two_tower.pt"
CATALOGUE_FILE = "catalogue.parquet"


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
            raise ConfigError(f"TwoTowerConfig sizes must be >= 1; got {bad}")


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
        raise DataError(f"no retrieval model at {path}; run train_retrieval first")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("kind") != "two_tower":
        raise DataError(f"{path} is not a two-tower model file (kind={payload.get('kind') if isinstance(payload, dict) else None!r})")
    model = TwoTower(TwoTowerConfig(**payload["config"]))
    model.load_state_dict(payload["state_dict"])
    return model.eval()


# Exact search below this many products; an inverted-file index (faiss IVF-Flat, inner-product
# metric) from here on. Exact top-k on 2 CPU cores costs ~1.5 ms per query at 200k products and
# grows linearly; IVF scans ~1/10 of the lists (bench/retrieval_ann.py has the figures).
ANN_MIN_ITEMS = 50_000


@dataclass
class CandidateIndex:
    """Item vectors of a catalogue for maximum-inner-product search: exact (a matrix product and
    top-k) for catalogues under `ann_min_items`, approximate through faiss IVF-Flat above.

    IVF clusters the items (k-means, 4 sqrt(N) lists) and scans the lists whose centroids score
    best for the query. It was chosen over HNSW because inner product is not a metric: an HNSW
    graph, even on the L2-reduced vectors, found 62-95% of the exact top 50 where IVF found 97%+.
    """

    model: TwoTower
    product_ids: np.ndarray  # (N,) int64 raw product ids, row order of item_vectors
    item_vectors: torch.Tensor  # (N, dim + 1) float32
    chunk_size: int = 4096  # users scored per matrix product; bounds the (chunk, N) score block
    ann_min_items: int = ANN_MIN_ITEMS
    probe_fraction: float = 0.1  # share of the IVF lists scanned per query (recall vs time)
    _ann: object | None = field(default=None, init=False, repr=False)
    _position: dict[int, int] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        n = len(self.product_ids)
        if n >= self.ann_min_items:
            import faiss  # only large catalogues pay for the import

            vectors = np.ascontiguousarray(self.item_vectors.detach().float().cpu().numpy())
            n_lists = int(min(4 * np.sqrt(n), n / 39, 65536))  # k-means wants >= 39 points per list
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(vectors.shape[1]), vectors.shape[1], n_lists,
                                       faiss.METRIC_INNER_PRODUCT)
            index.train(vectors)
            index.add(vectors)
            index.nprobe = max(32, int(n_lists * self.probe_fraction))
            self._ann = index
            log.info("IVF index over %d products: %d lists, %d probed", n, n_lists, index.nprobe)

    @property
    def approximate(self) -> bool:
        return self._ann is not None

    def _row_of(self, product: int) -> int | None:
        if self._position is None:
            self._position = {int(p): i for i, p in enumerate(self.product_ids)}
        return self._position.get(product)

    def top_k(self, user_encoded_ids: np.ndarray, k: int,
              exclude: dict[int, set[int]] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best `k` raw product ids per user: ids (U, k) int64 and scores (U, k) float32.

        `user_encoded_ids` are encoded `user_id` values (as in the ETL output or the workflow's
        transform); `exclude` maps such a user id to raw product ids it must not get (e.g. already
        bought). When fewer than k products remain, the tail is padded with id -1 and score -inf.
        """
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        users = np.asarray(user_encoded_ids, dtype=np.int64).ravel()
        ids = np.full((len(users), k), -1, dtype=np.int64)
        scores = np.full((len(users), k), -np.inf, dtype=np.float32)
        device = self.item_vectors.device
        with torch.no_grad():
            for lo in range(0, len(users), self.chunk_size):
                chunk = users[lo:lo + self.chunk_size]
                queries = self.model.user_vectors(torch.from_numpy(chunk).to(device))
                search = self._search_ann if self._ann is not None else self._search_exact
                search(queries, chunk, k, exclude or {}, ids[lo:lo + len(chunk)], scores[lo:lo + len(chunk)])
        return ids, scores

    def _search_exact(self, queries: torch.Tensor, users: np.ndarray, k: int, exclude: dict[int, set[int]],
                      ids: np.ndarray, scores: np.ndarray) -> None:
        block = queries @ self.item_vectors.T
        rows, cols = [], []
        for r, user in enumerate(users):
            for product in exclude.get(int(user), ()):
                col = self._row_of(int(product))
                if col is not None:
                    rows.append(r)
                    cols.append(col)
        if rows:
            block[torch.tensor(rows), torch.tensor(cols)] = -torch.inf
        k_eff = min(k, len(self.product_ids))
        top = torch.topk(block, k_eff, dim=1)
        top_scores = top.values.float().cpu().numpy()
        top_ids = self.product_ids[top.indices.cpu().numpy()]
        top_ids[~np.isfinite(top_scores)] = -1
        ids[:, :k_eff] = top_ids
        scores[:, :k_eff] = top_scores

    def _search_ann(self, queries: torch.Tensor, users: np.ndarray, k: int, exclude: dict[int, set[int]],
                    ids: np.ndarray, scores: np.ndarray) -> None:
        """Fetch k plus the most any of these users excludes, then drop the excluded ids."""
        fetch = min(k + max((len(exclude.get(int(u), ())) for u in users), default=0), len(self.product_ids))
        found_scores, found_rows = self._ann.search(  # type: ignore[attr-defined]
            np.ascontiguousarray(queries.float().cpu().numpy()), fetch)
        for r, user in enumerate(users):
            banned = exclude.get(int(user), set())
            keep = [(row, score) for row, score in zip(found_rows[r], found_scores[r])
                    if row >= 0 and int(self.product_ids[row]) not in banned][:k]
            if keep:  # faiss returns them best first
                ids[r, :len(keep)] = self.product_ids[[row for row, _ in keep]]
                scores[r, :len(keep)] = [score for _, score in keep]


def build_candidate_index(model: TwoTower, products_frame: pd.DataFrame) -> CandidateIndex:
    """Embed every catalogue row once; `products_frame` has `CATALOGUE_COLUMNS` (encoded + raw id).

    Build the frame with `catalogue_from_etl`, or for new products by encoding raw
    (product_id, category_id, brand) with the fitted `etl.Workflow` and keeping the raw id.
    """
    missing = [c for c in CATALOGUE_COLUMNS if c not in products_frame.columns]
    if missing:
        raise DataError(f"products frame lacks columns {missing}; need {CATALOGUE_COLUMNS}")
    frame = products_frame.drop_duplicates("product_id_raw")
    items = torch.from_numpy(frame[list(ITEM_COLUMNS)].to_numpy(dtype=np.int64))
    model.eval()
    with torch.no_grad():
        vectors = model.item_vectors(items.to(next(model.parameters()).device))
    return CandidateIndex(model, frame["product_id_raw"].to_numpy(dtype=np.int64), vectors)


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
