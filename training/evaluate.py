"""Offline evaluation: AUC/logloss on test rows and top-K ranking against a popularity baseline."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contracts import SCHEMA_FILE
from models.saved import load_model
from training.data import part_files, load_schema, load_split
from training.errors import DataError
from training.metrics import auc, coverage, logloss, ranking_metrics
from training.trainer import predict

log = logging.getLogger(__name__)

SESSION_COLUMN = "user_session_raw"


@dataclass(frozen=True)
class EvalInputs:
    """Train rows (for the popularity baseline) and test rows, plus the shared schema."""

    train_dir: Path
    test_dir: Path
    schema_path: Path

    @classmethod
    def from_etl_dir(cls, etl_dir: Path) -> "EvalInputs":
        etl_dir = Path(etl_dir)
        return cls(etl_dir / "train", etl_dir / "test", etl_dir / SCHEMA_FILE)


@dataclass(frozen=True)
class EvalReport:
    """Model and popularity-baseline metrics on the same test candidates."""

    k: int
    auc: float
    logloss: float
    recall_at_k: float
    ndcg_at_k: float
    mrr_at_k: float
    coverage_at_k: float
    baseline_recall_at_k: float
    baseline_ndcg_at_k: float
    baseline_mrr_at_k: float
    baseline_coverage_at_k: float
    n_test_rows: int
    n_ranked_users: int
    n_candidates: int

    def to_dict(self) -> dict[str, float]:
        """Flat metric names with K spelled out, e.g. `recall_at_10`, `baseline_ndcg_at_10`."""
        return {name.replace("_at_k", f"_at_{self.k}"): value for name, value in asdict(self).items()}


def evaluate(model_path: Path, data: EvalInputs, k: int = 10) -> EvalReport:
    """Score the test split with the model at `model_path` and compare with popularity.

    Ranking: for each test session with at least one purchase (each test user when the split
    has no `user_session_raw` column), candidates are the distinct products seen in it (scored by
    the mean over that pair's impressions), relevant when purchased. Sessions rather than users:
    a user who saw a product in several sessions had several chances to buy it, which rewards
    popularity for view counts the ranker cannot know. Popularity scores a product by its
    purchases in the train split.
    """
    if k < 1:
        raise DataError(f"k must be >= 1, got {k}")
    schema = load_schema(data.schema_path)
    test = load_split(data.test_dir, schema, with_raw_ids=True)
    train = load_split(data.train_dir, schema, with_raw_ids=True)
    model = load_model(model_path)
    probabilities = predict(model, test)
    labels = test.label.numpy()

    sessions = _session_codes(data.test_dir)
    groups = sessions if sessions is not None else test.user_id_raw
    rows = pd.DataFrame(
        {"user": groups, "item": test.product_id_raw, "score": probabilities, "label": labels}
    )
    pairs = rows.groupby(["user", "item"], sort=True).agg(score=("score", "mean"), label=("label", "max")).reset_index()
    buyers = pairs.groupby("user")["label"].transform("max") > 0
    candidates = pairs[buyers.to_numpy()]
    purchases = pd.Series(train.label.numpy(), index=train.product_id_raw).groupby(level=0).sum()
    popularity = candidates["item"].map(purchases).fillna(0.0).to_numpy()

    catalogue = len(np.union1d(train.product_id_raw, test.product_id_raw))
    args = (candidates["user"].to_numpy(), candidates["item"].to_numpy())
    relevance = candidates["label"].to_numpy() > 0
    model_rank = ranking_metrics(*args, candidates["score"].to_numpy(), relevance, k)
    base_rank = ranking_metrics(*args, popularity, relevance, k)
    report = EvalReport(
        k=k,
        auc=auc(labels, probabilities),
        logloss=logloss(labels, probabilities),
        recall_at_k=model_rank.recall,
        ndcg_at_k=model_rank.ndcg,
        mrr_at_k=model_rank.mrr,
        coverage_at_k=coverage(model_rank.top_k_items, catalogue),
        baseline_recall_at_k=base_rank.recall,
        baseline_ndcg_at_k=base_rank.ndcg,
        baseline_mrr_at_k=base_rank.mrr,
        baseline_coverage_at_k=coverage(base_rank.top_k_items, catalogue),
        n_test_rows=len(test),
        n_ranked_users=model_rank.n_groups,
        n_candidates=len(candidates),
    )
    log.info("evaluation: %s", report.to_dict())
    return report


def _session_codes(split_dir: Path) -> np.ndarray | None:
    """Integer codes of `user_session_raw` in `load_split`'s row order, or None when absent."""
    files = part_files(Path(split_dir))
    if not files or SESSION_COLUMN not in pq.read_schema(files[0]).names:
        return None
    table = pa.concat_tables([pq.read_table(f, columns=[SESSION_COLUMN]) for f in files])
    codes, _ = pd.factorize(table.column(SESSION_COLUMN).to_pandas())
    return codes.astype(np.int64)
