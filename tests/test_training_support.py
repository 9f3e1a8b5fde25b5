"""Writes small ETL outputs (Parquet parts + schema.json per docs/CONTRACTS.md) for training tests."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

CATEGORICAL = ["user_id", "product_id", "category_id", "brand"]
CONTINUOUS = ["price", "noise"]


@dataclass(frozen=True)
class PlantedData:
    """Sizes of a synthetic ETL output whose purchase logit is a rank-`rank` user x product dot."""

    n_users: int = 150
    n_products: int = 120
    n_categories: int = 12
    n_brands: int = 9
    rank: int = 3
    strength: float = 2.5
    rows: tuple[int, int, int] = (24000, 5000, 5000)  # train, valid, test
    seed: int = 7


def write_etl_output(root: Path, spec: PlantedData = PlantedData(), parts: int = 2) -> Path:
    """Write `{train,valid,test}/part-*.parquet` and `schema.json` under `root`; return `root`.

    User and item factors are centred, so neither users nor items alone predict a purchase much:
    a model needs the interaction (the DLRM's dot products) to do well.
    """
    rng = np.random.default_rng(spec.seed)
    users = rng.normal(size=(spec.n_users, spec.rank))
    items = rng.normal(size=(spec.n_products, spec.rank))
    users -= users.mean(0)
    items -= items.mean(0)
    item_bias = rng.normal(scale=0.3, size=spec.n_products)
    category_of = rng.integers(0, spec.n_categories, spec.n_products)
    brand_of = rng.integers(0, spec.n_brands, spec.n_products)
    price_of = rng.lognormal(3.0, 0.5, spec.n_products)
    root = Path(root)
    for split, n in zip(("train", "valid", "test"), spec.rows):
        u = rng.integers(0, spec.n_users, n)
        p = rng.integers(0, spec.n_products, n)
        logit = spec.strength * (users[u] * items[p]).sum(1) / np.sqrt(spec.rank) + item_bias[p] - 1.0
        label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        frame = pd.DataFrame(
            {
                # 0 is reserved for missing/out-of-vocabulary, so encoded ids start at 1.
                "user_id": u + 1,
                "product_id": p + 1,
                "category_id": category_of[p] + 1,
                "brand": brand_of[p] + 1,
                "price": ((np.log(price_of[p]) - 3.0) / 0.5).astype(np.float32),
                "noise": rng.normal(size=n).astype(np.float32),
                "label": label,
                "user_id_raw": (u + 1000).astype(np.int64),
                "product_id_raw": (p + 5000).astype(np.int64),
            }
        )
        out = root / split
        out.mkdir(parents=True, exist_ok=True)
        for i, chunk in enumerate(np.array_split(np.arange(n), parts)):
            frame.iloc[chunk].to_parquet(out / f"part-{i:05d}.parquet", index=False)
    cards = [spec.n_users + 1, spec.n_products + 1, spec.n_categories + 1, spec.n_brands + 1]
    columns = [
        {"name": n, "tags": ["categorical"], "cardinality": c, "embedding_dim": 16, "dtype": "int64"}
        for n, c in zip(CATEGORICAL, cards)
    ]
    columns += [{"name": n, "tags": ["continuous"], "dtype": "float32"} for n in CONTINUOUS]
    columns.append({"name": "label", "tags": ["target"], "dtype": "float32"})
    schema = {"columns": columns, "categorical": CATEGORICAL, "continuous": CONTINUOUS, "target": "label"}
    (root / "schema.json").write_text(json.dumps(schema))
    return root


def test_written_output_follows_the_etl_contract(tmp_path: Path) -> None:
    root = write_etl_output(tmp_path, PlantedData(rows=(100, 50, 50)), parts=3)
    schema = json.loads((root / "schema.json").read_text())
    assert len(sorted((root / "train").glob("part-*.parquet"))) == 3
    frame = pd.concat(pd.read_parquet(f) for f in sorted((root / "train").glob("part-*.parquet")))
    assert len(frame) == 100
    cards = {c["name"]: c["cardinality"] for c in schema["columns"] if "cardinality" in c}
    for name in schema["categorical"]:
        assert frame[name].between(1, cards[name] - 1).all()
    assert set(frame["label"].unique()) <= {0.0, 1.0}
