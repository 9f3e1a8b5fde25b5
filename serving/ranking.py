"""Ranks a customer's candidate products with the served DLRM: encode with the bundle, score on Triton."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from serving.bundle import ServingBundle
from serving.errors import BundleError
from serving.triton_client import Protocol, TritonClient

PRODUCT_COLUMNS = ("product_id", "category_id", "brand", "price")


class TritonRankingService:
    """What the API calls: `score(customer_id, products)` -> purchase probabilities (n_products,)."""

    def __init__(self, bundle_dir: Path, triton_url: str, protocol: Protocol = "http", timeout_s: float = 5.0) -> None:
        self.bundle = ServingBundle.load(Path(bundle_dir))
        self.client = TritonClient(triton_url, self.bundle.deployment.model_name, protocol, timeout_s)

    def score(self, customer_id: int, products: pd.DataFrame) -> np.ndarray:
        """float32 scores in the row order of `products`; raises `RankerUnavailable` if Triton is down."""
        missing = [c for c in PRODUCT_COLUMNS if c not in products.columns]
        if missing:
            raise BundleError(f"products lack columns {missing}; expected {list(PRODUCT_COLUMNS)}")
        if len(products) == 0:
            return np.empty(0, dtype=np.float32)
        pairs = products[list(PRODUCT_COLUMNS)].reset_index(drop=True)
        pairs.insert(0, "user_id", np.int64(customer_id))
        dense, sparse = self.bundle.encode(pairs)
        return self.client.score(dense, sparse)

    def is_ready(self) -> bool:
        return self.client.is_ready()

    def close(self) -> None:
        self.client.close()
