"""Re-scoring a registered champion on the challenger's evaluation users, for the promotion gate."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from registry.promotion import Reevaluate
from registry.tracking import tracking

logger = logging.getLogger(__name__)

RECOMMENDER_ARTIFACT = "recommender"  # the run's folder holding recommender.pkl, ranker.pt, schema.json


def reevaluator(tracking_uri: str, model_name: str, task: Any, challenger_ndcg: np.ndarray, k: int = 10,
                n_boot: int = 1000) -> Reevaluate:
    """A `reevaluate` for `promote`: the champion's served path on `task` (a training.quality.Task),
    paired per user with the challenger's NDCG@k on the same users (`challenger_ndcg`, in task order)."""
    from training.compare import served_lists  # heavy (torch); only needed on this path
    from training.quality import bootstrap, list_metrics
    from training.ranker import FittedRecommender

    def reevaluate(model_uri: str) -> dict[str, float]:
        version = model_uri.rsplit("/", 1)[-1]
        with tracking(tracking_uri) as client, tempfile.TemporaryDirectory() as tmp:
            run_id = client.get_model_version(model_name, version).run_id
            local = Path(client.download_artifacts(run_id, RECOMMENDER_ARTIFACT, tmp))
            fitted = FittedRecommender.load(local)
            lists = served_lists(fitted.recommender, fitted.scorer(), task, k)
        champion = list_metrics(task, lists, k).ndcg
        diff = bootstrap(np.asarray(challenger_ndcg) - champion, n_boot)
        logger.info("champion %s re-evaluated on %d users: ndcg@%d %.4f", model_uri, len(champion), k,
                    champion.mean())
        return {f"champion_ndcg_at_{k}": float(champion.mean()), "diff": diff.mean, "diff_ci_low": diff.low,
                "diff_ci_high": diff.high, "users": float(len(champion))}

    return reevaluate
