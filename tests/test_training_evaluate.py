"""Offline evaluation: model vs popularity on the same grouped candidates."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.test_training_support import write_etl_output
from models.dlrm import DLRM, DLRMConfig, save_model
from training import EvalInputs, TrainConfig, TrainInputs, evaluate, train
from training.errors import DataError

SCHEMA = {
    "columns": [
        {"name": "user_id", "tags": ["categorical", "user"], "cardinality": 10, "embedding_dim": 4, "dtype": "int64"},
        {"name": "product_id", "tags": ["categorical", "item"], "cardinality": 10, "embedding_dim": 4, "dtype": "int64"},
        {"name": "price", "tags": ["continuous", "item"], "dtype": "float32"},
        {"name": "label", "tags": ["target"], "dtype": "float32"},
    ],
    "categorical": ["user_id", "product_id"],
    "continuous": ["price"],
    "target": "label",
}


def write_split(root: Path, split: str, rows: list[tuple[int, int, float]]) -> None:
    """rows: (user_raw, product_raw, label); encoded ids are raw ids here (all < 10)."""
    frame = pd.DataFrame(rows, columns=["user_id_raw", "product_id_raw", "label"])
    frame["user_id"] = frame["user_id_raw"]
    frame["product_id"] = frame["product_id_raw"]
    frame["price"] = 0.0
    frame = frame.astype({"label": "float32", "price": "float32"})
    (root / split).mkdir(parents=True)
    frame.to_parquet(root / split / "part-00000.parquet", index=False)


def test_popularity_baseline_ranks_by_train_purchases_on_buyers_candidates(tmp_path: Path) -> None:
    # Train purchases: product 1 three times, product 2 once, product 3 never.
    write_split(tmp_path, "train", [(5, 1, 1), (6, 1, 1), (7, 1, 1), (5, 2, 1), (6, 3, 0), (7, 2, 0)])
    # Test: user 1 buys 3 (least popular); user 2 buys 2 (second); user 4 buys nothing -> not ranked.
    write_split(tmp_path, "test", [(1, 1, 0), (1, 2, 0), (1, 3, 1), (2, 1, 0), (2, 2, 1), (2, 2, 0), (4, 1, 0)])
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    model_path = save_model(DLRM(DLRMConfig(1, [10, 10], embedding_dim=4)), tmp_path / "model.pt")
    report = evaluate(model_path, EvalInputs.from_etl_dir(tmp_path), k=2)
    assert report.n_test_rows == 7 and report.n_ranked_users == 2
    assert report.n_candidates == 5  # user 2 saw product 2 twice: one candidate
    assert report.baseline_recall_at_k == pytest.approx(0.5)  # user 1 misses, user 2 hits at rank 2
    assert report.baseline_mrr_at_k == pytest.approx(0.25)
    assert report.baseline_coverage_at_k == pytest.approx(2 / 3)  # products 1 and 2 of {1, 2, 3}
    flat = report.to_dict()
    assert flat["baseline_recall_at_2"] == report.baseline_recall_at_k
    assert {"auc", "logloss", "recall_at_2", "ndcg_at_2", "mrr_at_2", "coverage_at_2"} <= set(flat)
    with pytest.raises(DataError, match="k must be"):
        evaluate(model_path, EvalInputs.from_etl_dir(tmp_path), k=0)


def test_trained_dlrm_ranks_better_than_popularity_on_planted_data(tmp_path: Path) -> None:
    root = write_etl_output(tmp_path / "etl")
    config = TrainConfig(epochs=4, batch_size=512, embedding_dim=8, bottom_mlp=[16], top_mlp=[32], lr=1e-2,
                         embedding_lr=0.2, device="cpu", seed=1)
    result = train(TrainInputs.from_etl_dir(root), config, tmp_path / "run")
    report = evaluate(result.model_path, EvalInputs.from_etl_dir(root), k=10)
    assert report.auc > 0.75
    assert report.ndcg_at_k > report.baseline_ndcg_at_k + 0.1
    assert report.recall_at_k > report.baseline_recall_at_k
