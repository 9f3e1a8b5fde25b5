"""Triton ranker for the API that encodes each product and each customer once per bundle, not per request.

`serving.ranking.TritonRankingService` runs the fitted ETL workflow over all (customer, product) pairs
on every call (~20 ms, whatever the row count). The workflow's columns are either user columns
(tagged "user" in schema.json, computed from user_id alone) or item columns (tagged "item", from the
product's attributes), so a pair's encoding is the product's cached row with the customer's cached
user columns written over it. The split is checked once against the full encoding before it is used;
a bundle whose columns cannot be split falls back to encoding every pair.

A bundle that ships the two-tower retrieval model (`retrieval/two_tower.pt` + `catalogue.parquet`)
also yields candidates: the customer's encoded `user_id` (the same Categorify the ranker applies)
searched against the catalogue's item vectors, loaded once per bundle.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from serving.bundle import RETRIEVAL_DIR, SCHEMA_FILE, ServingBundle
from serving.ranking import PRODUCT_COLUMNS
from serving.triton_client import Protocol, TritonClient

if TYPE_CHECKING:
    from api.catalogue import CatalogueIndex, Products
    from serving.candidate_index import CandidateIndex

log = logging.getLogger(__name__)

PARITY_ROWS = 16  # rows compared against the full encoding before the split is trusted
PARITY_ATOL = 1e-6
USER_COLUMN = "user_id"  # the workflow column the retrieval model's user tower embeds


class RankingError(Exception):
    """The products handed to the ranker lack a column it needs; the message names them."""


def _column_roles(bundle: ServingBundle) -> dict[str, str] | None:
    """"user"/"item" for every model input column from schema.json's tags; None if any has neither."""
    doc = json.loads((bundle.path / SCHEMA_FILE).read_text())
    tags = {c["name"]: set(c.get("tags", ())) for c in doc.get("columns", [])}
    roles = {}
    for name in (*bundle.schema.continuous, *bundle.schema.categorical):
        found = tags.get(name, set()) & {"user", "item"}
        if len(found) != 1:
            log.warning("model input %r is tagged %s, not one of user/item; encoding every pair per request",
                        name, sorted(tags.get(name, ())))
            return None
        roles[name] = found.pop()
    return roles


def _normalised(products: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(product_id, category_id with -1 for missing, brand with None for missing, price) as arrays."""
    ids = products["product_id"].to_numpy(dtype=np.int64)
    # Via Int64, not float: REES46 category ids (~2**61) do not survive a round trip through float64.
    category = products["category_id"].astype("Int64").to_numpy(dtype=np.int64, na_value=-1)
    brand = products["brand"].to_numpy(dtype=object)
    missing = pd.isna(brand)
    if missing.any():
        brand = brand.copy()
        brand[missing] = None
    price = products["price"].to_numpy(dtype=np.float64)
    return ids, category, brand, price


class _ItemTable:
    """Encoded rows of products keyed by id, with the attributes they were encoded from."""

    def __init__(self, n_dense: int, n_sparse: int) -> None:
        self.rows: dict[int, int] = {}
        self._ids = np.empty(0, dtype=np.int64)  # ids sorted, with their rows: lookups are one searchsorted
        self._id_rows = np.empty(0, dtype=np.int64)
        self.dense = np.empty((0, n_dense), dtype=np.float32)
        self.sparse = np.empty((0, n_sparse), dtype=np.int64)
        self.category = np.empty(0, dtype=np.int64)
        self.brand = np.empty(0, dtype=object)
        self.price = np.empty(0, dtype=np.float64)

    def lookup(self, ids: np.ndarray, category: np.ndarray, brand: np.ndarray, price: np.ndarray) -> np.ndarray:
        """Row of each product, or -1 where it was never encoded or its attributes changed since."""
        at = np.searchsorted(self._ids, ids)
        known = at < len(self._ids)
        known[known] = self._ids[at[known]] == ids[known]
        rows = np.where(known, self._id_rows[np.minimum(at, max(len(self._ids) - 1, 0))] if len(self._ids) else -1, -1)
        r = rows[known]
        same = (self.category[r] == category[known]) & (self.price[r] == price[known]) & (self.brand[r] == brand[known])
        rows[np.flatnonzero(known)[~same]] = -1
        return rows

    def add(self, ids: np.ndarray, category: np.ndarray, brand: np.ndarray, price: np.ndarray,
            dense: np.ndarray, sparse: np.ndarray) -> None:
        start = len(self.dense)
        if start > 4 * max(len(self.rows), 1024):  # superseded rows pile up on a churning catalogue
            self._compact()
            start = len(self.dense)
        self.dense = np.concatenate([self.dense, dense])
        self.sparse = np.concatenate([self.sparse, sparse])
        self.category = np.concatenate([self.category, category])
        self.brand = np.concatenate([self.brand, brand])
        self.price = np.concatenate([self.price, price])
        for i, pid in enumerate(ids.tolist()):
            self.rows[pid] = start + i
        self._reindex()

    def _reindex(self) -> None:
        self._ids = np.fromiter(self.rows.keys(), dtype=np.int64, count=len(self.rows))
        self._id_rows = np.fromiter(self.rows.values(), dtype=np.int64, count=len(self.rows))
        order = np.argsort(self._ids)
        self._ids, self._id_rows = self._ids[order], self._id_rows[order]

    def _compact(self) -> None:
        live = np.fromiter(self.rows.values(), dtype=np.int64, count=len(self.rows))
        self.dense, self.sparse = self.dense[live], self.sparse[live]
        self.category, self.brand, self.price = self.category[live], self.brand[live], self.price[live]
        self.rows = {pid: i for i, pid in enumerate(self.rows)}
        self._reindex()


class EncodedRanker:
    """What the API calls: `score(customer_id, products)` -> purchase probabilities (n_products,) from Triton.

    Raises `serving.errors.RankerUnavailable` when Triton cannot answer (the API then falls back).
    """

    def __init__(self, bundle: ServingBundle, client: TritonClient, max_customers: int = 500_000) -> None:
        self.bundle = bundle
        self.client = client
        self.max_customers = max_customers
        self.columns = (*bundle.schema.continuous, *bundle.schema.categorical)
        roles = _column_roles(bundle)
        self.separable = roles is not None
        n_dense = bundle.schema.n_dense
        roles = roles or {}
        self._user_dense = np.array([i for i, c in enumerate(bundle.schema.continuous) if roles.get(c) == "user"],
                                    dtype=np.int64)
        self._user_sparse = np.array([i for i, c in enumerate(bundle.schema.categorical) if roles.get(c) == "user"],
                                     dtype=np.int64)
        self._items = _ItemTable(n_dense, bundle.schema.n_sparse)
        self._users: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._verified = False
        self._lock = threading.Lock()
        self._retrieval: CandidateIndex | None = None
        self._retrieval_loaded = False  # tried once per bundle, whether or not it worked
        self._retrieval_lock = threading.Lock()

    @classmethod
    def from_bundle(cls, bundle_dir: Path, triton_url: str, protocol: Protocol = "http",
                    timeout_s: float = 5.0, pin_version: bool = False) -> "EncodedRanker":
        bundle = ServingBundle.load(Path(bundle_dir))
        version = str(bundle.deployment.triton_version) if pin_version else ""  # pinned: an experiment's arm
        return cls(bundle, TritonClient(triton_url, bundle.deployment.model_name, protocol, timeout_s,
                                        model_version=version))

    def _encode(self, user_ids: np.ndarray, products: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        pairs = products[list(PRODUCT_COLUMNS)].reset_index(drop=True)
        pairs.insert(0, "user_id", user_ids)
        return self.bundle.encode(pairs)

    def _encode_items(self, products: pd.DataFrame, stale: np.ndarray) -> None:
        part = products.iloc[np.flatnonzero(stale)]
        ids, category, brand, price = _normalised(part)
        # The user columns of these rows are overwritten per request; any customer id will do here.
        dense, sparse = self._encode(np.zeros(len(part), dtype=np.int64), part)
        self._items.add(ids, category, brand, price, dense, sparse)

    def _encode_users(self, customer_ids: list[int], like: pd.DataFrame) -> None:
        # Item columns of these rows are discarded, so one real product row stands in for all.
        filler = like.iloc[np.zeros(len(customer_ids), dtype=np.int64)]
        dense, sparse = self._encode(np.asarray(customer_ids, dtype=np.int64), filler)
        while len(self._users) + len(customer_ids) > self.max_customers and self._users:
            self._users.pop(next(iter(self._users)))  # oldest first: dicts keep insertion order
        for i, cid in enumerate(customer_ids):
            self._users[int(cid)] = (dense[i, self._user_dense], sparse[i, self._user_sparse])

    def features(self, customer_id: int, products: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """dense (B, n_dense) float32 and sparse (B, n_sparse) int64 for the customer and `products`."""
        missing = [c for c in PRODUCT_COLUMNS if c not in products.columns]
        if missing:
            raise RankingError(f"products lack columns {missing}; expected {list(PRODUCT_COLUMNS)}")
        return self._assemble(customer_id, _normalised(products), lambda: products)

    def _assemble(self, customer_id: int, attrs: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                  frame: Callable[[], pd.DataFrame]) -> tuple[np.ndarray, np.ndarray]:
        """Rows from the caches; `frame()` (built only when something must be encoded) gives the raw products."""
        if not self.separable:
            return self._encode(np.full(len(attrs[0]), customer_id, dtype=np.int64), frame())
        with self._lock:
            rows = self._items.lookup(*attrs)
            if (rows < 0).any():
                self._encode_items(frame(), rows < 0)
                rows = self._items.lookup(*attrs)
            if customer_id not in self._users:
                self._encode_users([customer_id], frame())
            user_dense, user_sparse = self._users[customer_id]
            dense, sparse = self._items.dense[rows], self._items.sparse[rows]  # fancy indexing copies
            if not self._verified and not self._verify(customer_id, frame()):
                return self._encode(np.full(len(attrs[0]), customer_id, dtype=np.int64), frame())
        dense[:, self._user_dense] = user_dense
        sparse[:, self._user_sparse] = user_sparse
        return dense, sparse

    def _verify(self, customer_id: int, products: pd.DataFrame) -> bool:
        """Compare the assembled rows with the workflow's own encoding of the same pairs, once."""
        head = products.head(PARITY_ROWS)
        want_dense, want_sparse = self._encode(np.full(len(head), customer_id, dtype=np.int64), head)
        rows = self._items.lookup(*_normalised(head))
        dense, sparse = self._items.dense[rows], self._items.sparse[rows]
        dense[:, self._user_dense], sparse[:, self._user_sparse] = self._users[customer_id]
        bad = [c for i, c in enumerate(self.bundle.schema.continuous)
               if not np.allclose(dense[:, i], want_dense[:, i], atol=PARITY_ATOL)]
        bad += [c for i, c in enumerate(self.bundle.schema.categorical) if not (sparse[:, i] == want_sparse[:, i]).all()]
        if bad:
            self.separable = False
            log.error("columns %s of %s depend on both customer and product; encoding every pair per request",
                      bad, self.bundle.path)
            return False
        self._verified = True
        return True

    def score(self, customer_id: int, products: pd.DataFrame) -> np.ndarray:
        """float32 scores in the row order of `products`; raises RankerUnavailable if Triton is down."""
        if len(products) == 0:
            return np.empty(0, dtype=np.float32)
        dense, sparse = self.features(customer_id, products)
        return self.client.score(dense, sparse)

    def score_catalogue(self, customer_id: int, products: "Products", rows: np.ndarray) -> np.ndarray:
        """Like `score` for the catalogue snapshot's products at `rows`, without building a DataFrame."""
        if len(rows) == 0:
            return np.empty(0, dtype=np.float32)
        attrs = (products.ids[rows], products.category[rows], products.brand[rows], products.price[rows])
        dense, sparse = self._assemble(customer_id, attrs, lambda: products.features(attrs[0]))
        return self.client.score(dense, sparse)

    def prepare(self, index: "CatalogueIndex") -> None:
        """Catalogue listener: encode new or changed products and customers not seen yet, in two batches."""
        if not self.separable or len(index.products) == 0:
            return
        frame = index.products.features(index.products.ids)
        with self._lock:
            stale = self._items.lookup(*_normalised(frame)) < 0
            if stale.any():
                self._encode_items(frame, stale)
            new = [c for c in index.customers if c not in self._users][: self.max_customers]
            if new:
                self._encode_users(new, frame)
        if stale.any() or new:
            log.info("ranker prepared %d products and %d customers", int(stale.sum()), len(new))

    def retrieval(self) -> "CandidateIndex | None":
        """The bundle's two-tower candidate index, loaded on first use; None when absent or broken."""
        if not self._retrieval_loaded:
            with self._retrieval_lock:
                if not self._retrieval_loaded:
                    self._retrieval = self._load_retrieval()
                    self._retrieval_loaded = True
        return self._retrieval

    def _load_retrieval(self) -> "CandidateIndex | None":
        folder = self.bundle.path / (self.bundle.deployment.retrieval or RETRIEVAL_DIR)
        if USER_COLUMN not in self.bundle.schema.categorical:
            log.info("bundle %s has no %r column; no retrieval candidates", self.bundle.path, USER_COLUMN)
            return None
        try:
            # Imported here: torch is only needed when a bundle ships a retrieval model.
            from models.two_tower import MODEL_FILE, load_two_tower
            from serving.candidate_index import CATALOGUE_FILE, build_candidate_index

            if not (folder / MODEL_FILE).is_file():
                log.info("bundle %s ships no retrieval model; candidates come from the catalogue only",
                         self.bundle.path)
                return None
            index = build_candidate_index(load_two_tower(folder / MODEL_FILE),
                                          pd.read_parquet(folder / CATALOGUE_FILE))
        except Exception as exc:  # a broken retrieval model must not cost the ranker: go on without it
            log.error("could not load the retrieval model in %s (%s); candidates come from the catalogue only",
                      folder, exc)
            return None
        log.info("retrieval model of %s loaded: %d products", self.bundle.path, len(index.product_ids))
        return index

    def _user_code(self, customer_id: int, products: "Products") -> int:
        """The customer's encoded user_id, from the user cache or one workflow transform."""
        column = self.bundle.schema.categorical.index(USER_COLUMN)
        cached_at = np.flatnonzero(self._user_sparse == column)
        if self.separable and len(cached_at):
            with self._lock:
                if customer_id not in self._users:
                    self._encode_users([customer_id], products.features(products.ids[:1]))
                _, user_sparse = self._users[customer_id]
            return int(user_sparse[cached_at[0]])
        # Item columns of this row are ignored, so the first catalogue product stands in.
        _, sparse = self._encode(np.array([customer_id], dtype=np.int64), products.features(products.ids[:1]))
        return int(sparse[0, column])

    def candidates(self, customer_id: int, products: "Products", limit: int,
                   exclude: set[int] = frozenset()) -> list[int]:
        """Up to `limit` raw product ids from the retrieval model, best first, none of `exclude`;
        [] when the bundle has no retrieval model. Ids may be absent from `products`: callers filter."""
        index = self.retrieval()
        if index is None or len(products) == 0 or limit < 1:
            return []
        code = self._user_code(customer_id, products)
        ids, _ = index.top_k(np.array([code], dtype=np.int64), limit, {code: set(exclude)} if exclude else None)
        return [int(p) for p in ids[0] if p >= 0]

    def is_ready(self) -> bool:
        return self.client.is_ready()

    def close(self) -> None:
        self.client.close()
